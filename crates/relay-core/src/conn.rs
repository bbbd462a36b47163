//! Connection limits of every listener: how many connections it holds (in all and per source
//! address), how long a connection may stay silent before its first byte, before its first
//! request head is complete, and without a request in flight; HTTP/2 keep-alive (PING).
//!
//! - [`ConnectionLimits`]: the `[connections]` section (serde, humantime durations).
//! - [`Gate`]: the accept loop with the caps. At a cap a connection is accepted and closed at
//!   once (no allocation, no task); accept errors (EMFILE) back off from 5 ms to 1 s instead
//!   of spinning.
//! - [`serve_stream`]: one accepted connection: first-byte wait, optional TLS handshake, then
//!   hyper (HTTP/1.1 and HTTP/2) under the idle watchdog.
//! - [`serve`]: the whole loop for listeners that need nothing else (identity, management,
//!   metrics).
//!
//! Idle means no request in flight: a request counts from its head until its response body
//! has been sent or dropped, so a slow target or a long streamed response is never cut. An
//! upgraded connection (the tunnel endpoint) leaves hyper's connection future and with it the
//! watchdog; it keeps its [`Permit`] until the upgraded stream closes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ConfigError;

/// `[connections]`: caps and timeouts of a listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Open connections the listener holds at most; more are accepted and closed at once.
    pub max_connections: usize,
    /// Open connections one source IP address holds at most (0: no per-source cap).
    pub max_per_source: usize,
    /// Time from accept to the first byte from the client.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Time from the first byte (after TLS: from the handshake) until the first request head
    /// is complete.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a connection may stay open without a request in flight.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2: interval of the server's PINGs.
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// HTTP/2: time a PING may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 16_384,
            max_per_source: 512,
            first_byte_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

impl ConnectionLimits {
    /// The limits of the `/metrics` listeners (scraped by a few hosts).
    pub fn metrics() -> Self {
        ConnectionLimits {
            max_connections: 256,
            max_per_source: 64,
            ..ConnectionLimits::default()
        }
    }

    /// Checks the values; errors name `{section}.key`.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::key(
                format!("{section}.max_connections"),
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("first_byte_timeout", self.first_byte_timeout),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("keep_alive_interval", self.keep_alive_interval),
            ("keep_alive_timeout", self.keep_alive_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::key(
                    format!("{section}.{key}"),
                    "must be longer than 0 s",
                ));
            }
        }
        Ok(())
    }

    /// A hyper builder (HTTP/1.1 and HTTP/2) with these timeouts; callers may tune the
    /// HTTP/2 windows further. hyper's HTTP/1.1 header timer starts when it begins reading
    /// a head (for later requests: right after the previous response), so it is set to the
    /// idle timeout; the first head is bounded by `header_timeout` in [`serve_stream`].
    pub fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.idle_timeout.max(self.header_timeout));
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(self.keep_alive_interval)
            .keep_alive_timeout(self.keep_alive_timeout);
        builder
    }
}

/// The caps of one listener. Shared by its accept loop and the [`Permit`]s of its open
/// connections.
pub struct Gate {
    name: &'static str,
    limits: ConnectionLimits,
    open: AtomicUsize,
    sources: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
}

/// Shortest and longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

impl Gate {
    /// `name` labels log lines ("public", "identity", …).
    pub fn new(name: &'static str, limits: ConnectionLimits) -> Arc<Gate> {
        Arc::new(Gate {
            name,
            limits,
            open: AtomicUsize::new(0),
            sources: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused at a cap since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A permit for a connection from `ip`, or `None` at a cap.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        if self.limits.max_per_source > 0 {
            let Ok(mut sources) = self.sources.lock() else {
                self.open.fetch_sub(1, Ordering::Relaxed);
                return None;
            };
            let count = sources.entry(ip).or_insert(0);
            if *count >= self.limits.max_per_source {
                drop(sources);
                self.open.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            *count += 1;
        }
        Some(Permit {
            gate: self.clone(),
            ip,
        })
    }

    /// The next admitted connection on `listener`, or `None` once `shutdown` is cancelled.
    /// Connections over a cap are closed at once; accept errors back off exponentially.
    pub async fn accept(
        self: &Arc<Self>,
        listener: &TcpListener,
        shutdown: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr, Permit)> {
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => return None,
            };
            match accepted {
                Ok((stream, remote)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    if let Some(permit) = self.admit(remote.ip()) {
                        return Some((stream, remote, permit));
                    }
                    drop(stream);
                    if self
                        .refused
                        .fetch_add(1, Ordering::Relaxed)
                        .is_multiple_of(1024)
                    {
                        tracing::warn!(
                            listener = self.name,
                            %remote,
                            open = self.open(),
                            max_connections = self.limits.max_connections,
                            max_per_source = self.limits.max_per_source,
                            "Connection refused at the connection cap (logged once per 1024)."
                        );
                    }
                }
                Err(e) => {
                    if backoff == ACCEPT_BACKOFF.0 {
                        tracing::warn!(listener = self.name, error = %e, "Accept failed; backing off.");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return None,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                }
            }
        }
    }
}

/// One admitted connection; dropping it frees its place.
pub struct Permit {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.gate.limits.max_per_source > 0
            && let Ok(mut sources) = self.gate.sources.lock()
            && let Some(count) = sources.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                sources.remove(&self.ip);
            }
        }
        self.gate.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that holds its connection's [`Permit`] for as long as it lives (through an
/// HTTP upgrade too).
pub struct Permitted<T> {
    inner: T,
    _permit: Permit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Permitted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Permitted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Requests in flight on one connection, and since when none has been.
struct Activity {
    started: Instant,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` when `in_flight` last dropped to zero.
    idle_since_ms: AtomicU64,
    /// Woken when the first request starts and whenever `in_flight` drops to zero.
    changed: Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves when the connection should close: `Expired::Header` when the first request
    /// head did not arrive within `header`, `Expired::Idle` after `idle` without a request.
    /// Cancel-safe (holds no state outside `self`).
    async fn expired(&self, header: Duration, idle: Duration) -> Expired {
        loop {
            let notified = self.changed.notified();
            if self.requests.load(Ordering::Acquire) == 0 {
                tokio::select! {
                    () = tokio::time::sleep_until(self.started + header) => {
                        if self.requests.load(Ordering::Acquire) == 0 {
                            return Expired::Header;
                        }
                    }
                    () = notified => {}
                }
                continue;
            }
            if self.in_flight.load(Ordering::Acquire) > 0 {
                notified.await;
                continue;
            }
            let since = self.idle_since_ms.load(Ordering::Acquire);
            let deadline = self.started + Duration::from_millis(since) + idle;
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = notified => continue,
            }
            if self.in_flight.load(Ordering::Acquire) == 0
                && self.idle_since_ms.load(Ordering::Acquire) == since
            {
                return Expired::Idle;
            }
        }
    }
}

enum Expired {
    Header,
    Idle,
}

/// Counts one request in flight until dropped (with the response body).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        if activity.requests.fetch_add(1, Ordering::AcqRel) == 0 {
            activity.changed.notify_one();
        }
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = activity.now_ms();
        activity.idle_since_ms.store(now, Ordering::Release);
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.changed.notify_one();
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it ends.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.guard.take();
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `service` with every request counted in `activity`.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::start(&self.activity);
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|inner| TrackedBody {
                inner,
                guard: Some(guard),
            }))
        })
    }
}

/// Serves one accepted connection: waits for its first byte (`first_byte_timeout`), does the
/// TLS handshake when `tls` is given, then serves `service` until the connection ends,
/// misses `header_timeout` or `idle_timeout`, or `shutdown` is cancelled (then it closes
/// gracefully: in-flight requests finish, HTTP/2 gets GOAWAY).
/// The limits are those of the permit's [`Gate`].
pub async fn serve_stream<S, B>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    remote: SocketAddr,
    permit: Permit,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    shutdown: CancellationToken,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = permit.gate.limits;
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.first_byte_timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return,
        Err(_) => {
            tracing::debug!(%remote, "Closing a connection that sent nothing.");
            return;
        }
    }
    match tls {
        None => drive(builder, limits, stream, remote, permit, service, shutdown).await,
        Some(acceptor) => {
            let Some(stream) = crate::tls::handshake(&acceptor, stream, remote).await else {
                return;
            };
            drive(builder, limits, stream, remote, permit, service, shutdown).await;
        }
    }
}

async fn drive<I, S, B>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnectionLimits,
    io: I,
    remote: SocketAddr,
    permit: Permit,
    service: S,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Activity::new();
    let service = Tracked {
        inner: service,
        activity: activity.clone(),
    };
    let io = TokioIo::new(Permitted {
        inner: io,
        _permit: permit,
    });
    let conn = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    tokio::pin!(conn);
    let expired = activity.expired(limits.header_timeout, limits.idle_timeout);
    tokio::pin!(expired);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        why = &mut expired => {
            match why {
                Expired::Header => {
                    tracing::debug!(%remote, "Closing a connection whose request head did not arrive in time.");
                    return;
                }
                Expired::Idle => {
                    tracing::debug!(%remote, "Closing an idle connection.");
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(limits.header_timeout, conn.as_mut()).await {
                        Ok(ended) => ended,
                        Err(_) => return,
                    }
                }
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%remote, error = %e, "Client connection ended with an error.");
    }
}

/// Accepts on `listener` under `gate` until `shutdown`, serving each connection with the
/// service `make_service(remote)` (over TLS with the acceptor current at its arrival when
/// `tls` is given), then waits for open connections to finish.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    gate: Arc<Gate>,
    tls: Option<Arc<crate::tls::ReloadableAcceptor>>,
    make_service: F,
    shutdown: CancellationToken,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(gate.limits().builder());
    let tasks = TaskTracker::new();
    while let Some((stream, remote, permit)) = gate.accept(&listener, &shutdown).await {
        let acceptor = match &tls {
            Some(tls) => match tls.acceptor() {
                Some(acceptor) => Some(acceptor),
                None => continue,
            },
            None => None,
        };
        let service = make_service(remote);
        tasks.spawn(serve_stream(
            builder.clone(),
            stream,
            remote,
            permit,
            acceptor,
            service,
            shutdown.clone(),
        ));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_cap_frees_places_on_drop() {
        let gate = Gate::new(
            "test",
            ConnectionLimits {
                max_connections: 3,
                max_per_source: 2,
                ..ConnectionLimits::default()
            },
        );
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = gate.admit(a);
        let second = gate.admit(a);
        assert!(first.is_some() && second.is_some());
        assert!(gate.admit(a).is_none(), "third from one source");
        let third = gate.admit(b);
        assert!(third.is_some());
        assert!(gate.admit(b).is_none(), "over the listener cap");
        drop(first);
        let again = gate.admit(a);
        assert!(again.is_some());
        assert_eq!(gate.open(), 3);
        drop((second, third, again));
        assert_eq!(gate.open(), 0);
        assert!(gate.sources.lock().map(|s| s.is_empty()).unwrap_or(false));
    }

    #[test]
    fn zero_timeouts_are_refused_by_key() {
        let limits = ConnectionLimits {
            idle_timeout: Duration::ZERO,
            ..ConnectionLimits::default()
        };
        let Err(ConfigError::Key { key, .. }) = limits.validate("connections") else {
            panic!("accepted a zero idle timeout");
        };
        assert_eq!(key, "connections.idle_timeout");
    }
}
