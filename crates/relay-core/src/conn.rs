//! Connection limits of every listener: how many connections it holds (in all and per source
//! address), how long a connection may stay silent before its first byte, before its first
//! request head is complete, and without a request in flight, how long it may live at all;
//! HTTP/2 keep-alive (PING).
//!
//! - [`ConnectionLimits`]: the `[connections]` section (serde, humantime durations).
//! - [`gate`]: admission ([`Gate`], [`Permit`]): caps per listener and per source (IPv6 by
//!   /64), the tunnel reserve, eviction of the oldest idle connection at the cap, counters by
//!   [`Reason`] (`conn/stats.rs`: the counters and their metrics).
//! - [`Gate::accept`]: the accept loop. A refused connection is accepted and closed at once
//!   (no allocation, no task); accept errors (EMFILE) back off from 5 ms to 1 s instead of
//!   spinning.
//! - [`serve_stream`]: one accepted connection: first-byte wait, optional TLS handshake, then
//!   hyper (HTTP/1.1 and HTTP/2) under the idle watchdog and the lifetime bound.
//! - [`serve`]: the whole loop for listeners that need nothing else (identity, management,
//!   metrics).
//!
//! Idle means no request in flight: a request counts from its head until its response body
//! has been sent or dropped, so a slow target or a long streamed response is never cut. An
//! upgraded connection (the tunnel endpoint) leaves hyper's connection future and with it the
//! watchdog (and the lifetime bound); it keeps its [`Permit`] until the upgraded stream
//! closes and is never evicted.

pub mod gate;
mod stats;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use gate::Slot;
pub use gate::{Closer, Gate, Permit, source_key};
pub use stats::{Reason, render_metrics};

/// `[connections]`: caps and timeouts of a listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Open connections the listener holds at most; at the cap the oldest idle one makes
    /// room, and without an idle one a newcomer is accepted and closed at once.
    pub max_connections: usize,
    /// Open connections one source holds at most (an IPv4 address, an IPv6 /64; 0: no
    /// per-source cap).
    pub max_per_source: usize,
    /// relay-server's public listener: slots of `max_connections` kept for tunnel upgrades
    /// (default `max_connections / 16`). Other listeners reserve nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_for_tunnels: Option<usize>,
    /// Time a client connection may stay open in all; then it closes gracefully (HTTP/1.1:
    /// `Connection: close` on the current response; HTTP/2: GOAWAY). Not tunnels.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
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
            reserved_for_tunnels: None,
            max_lifetime: Duration::from_secs(3600),
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

    /// Slots kept for tunnel upgrades on relay-server's public listener.
    pub fn tunnel_reserve(&self) -> usize {
        self.reserved_for_tunnels
            .unwrap_or(self.max_connections / 16)
    }

    /// Checks the values; errors name `{section}.key`.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::key(
                format!("{section}.max_connections"),
                "must be at least 1",
            ));
        }
        if let Some(reserved) = self.reserved_for_tunnels
            && reserved >= self.max_connections
        {
            return Err(ConfigError::key(
                format!("{section}.reserved_for_tunnels"),
                format!(
                    "must be less than max_connections ({}): clients need a slot too",
                    self.max_connections
                ),
            ));
        }
        for (key, value) in [
            ("max_lifetime", self.max_lifetime),
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

/// Shortest and longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

impl Gate {
    /// The next admitted connection on `listener`, or `None` once `shutdown` is cancelled.
    /// Refused connections are closed at once; accept errors back off exponentially.
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
                    match self.admit(remote.ip()) {
                        Ok(permit) => return Some((stream, remote, permit)),
                        Err(reason) => {
                            drop(stream);
                            self.count(reason);
                        }
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

/// Requests on one connection, for its watchdog; in flight and idle-since live in its
/// gate [`Slot`] (eviction reads them too).
struct Activity {
    /// When the first request head is awaited from (after the first byte and TLS).
    started: Instant,
    requests: AtomicU64,
    slot: Arc<Slot>,
    /// Woken when the first request starts and whenever none is in flight any more.
    changed: Notify,
}

impl Activity {
    fn new(slot: Arc<Slot>) -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            slot,
            changed: Notify::new(),
        })
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
            if self.slot.in_flight() > 0 {
                notified.await;
                continue;
            }
            let since = self.slot.idle_since_ms();
            let deadline = self.slot.idle_since() + idle;
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = notified => continue,
            }
            if self.slot.in_flight() == 0 && self.slot.idle_since_ms() == since {
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
        activity.slot.start_request();
        if activity.requests.fetch_add(1, Ordering::AcqRel) == 0 {
            activity.changed.notify_one();
        }
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.slot.end_request() {
            self.0.changed.notify_one();
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

/// `service` with every request counted in `activity`. A `101` response marks the
/// connection upgraded (never evicted); a response on a closing connection (lifetime over,
/// evicted, [`Closer`]) gets `Connection: close` over HTTP/1.1.
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
        let http1 = req.version() < http::Version::HTTP_2;
        let future = self.inner.call(req);
        Box::pin(async move {
            let mut response = future.await?;
            let slot = &guard.0.slot;
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                slot.mark_upgraded();
            } else if http1 && slot.closing() {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok(response.map(|inner| TrackedBody {
                inner,
                guard: Some(guard),
            }))
        })
    }
}

/// Serves one accepted connection: waits for its first byte (`first_byte_timeout`), does the
/// TLS handshake when `tls` is given, then serves `service` until the connection ends,
/// misses `header_timeout` or `idle_timeout`, reaches `max_lifetime`, is evicted by its gate,
/// or `shutdown` is cancelled (then it closes gracefully: in-flight requests finish, HTTP/2
/// gets GOAWAY). The limits are those of the permit's [`Gate`].
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
    let limits = *permit.gate().limits();
    let slot = permit.slot().clone();
    let mut first = [0u8; 1];
    tokio::select! {
        peeked = tokio::time::timeout(limits.first_byte_timeout, stream.peek(&mut first)) => {
            match peeked {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) => {
                    tracing::debug!(%remote, "Closing a connection that sent nothing.");
                    return;
                }
            }
        }
        () = slot.close_requested() => return,
    }
    match tls {
        None => drive(builder, limits, stream, remote, permit, service, shutdown).await,
        Some(acceptor) => {
            let stream = tokio::select! {
                stream = crate::tls::handshake(&acceptor, stream, remote) => stream,
                () = slot.close_requested() => return,
            };
            let Some(stream) = stream else {
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
    let slot = permit.slot().clone();
    let gate = permit.gate().clone();
    let activity = Activity::new(slot.clone());
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
    let end_of_life = tokio::time::sleep_until(slot.admitted() + limits.max_lifetime);
    tokio::pin!(end_of_life);
    // Once set, the connection has been told to close gracefully and is left to finish.
    let mut closing = false;
    let ended = loop {
        tokio::select! {
            ended = conn.as_mut() => break ended,
            why = &mut expired => match why {
                Expired::Header => {
                    tracing::debug!(%remote, "Closing a connection whose request head did not arrive in time.");
                    return;
                }
                Expired::Idle => {
                    tracing::debug!(%remote, "Closing an idle connection.");
                    if !closing {
                        conn.as_mut().graceful_shutdown();
                    }
                    match tokio::time::timeout(limits.header_timeout, conn.as_mut()).await {
                        Ok(ended) => break ended,
                        Err(_) => return,
                    }
                }
            },
            () = &mut end_of_life, if !closing && !slot.is_upgraded() => {
                tracing::debug!(%remote, "Closing a connection at the end of its lifetime.");
                gate.count(Reason::Lifetime);
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = slot.close_requested(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
                if slot.is_evicted() {
                    tracing::debug!(%remote, "Closing an idle connection to make room.");
                    match tokio::time::timeout(limits.header_timeout, conn.as_mut()).await {
                        Ok(ended) => break ended,
                        Err(_) => return,
                    }
                }
            }
            () = shutdown.cancelled() => {
                if !closing {
                    conn.as_mut().graceful_shutdown();
                }
                break conn.as_mut().await;
            }
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

    #[test]
    fn a_reserve_as_large_as_the_cap_is_refused_by_key() {
        let limits = ConnectionLimits {
            max_connections: 16,
            reserved_for_tunnels: Some(16),
            ..ConnectionLimits::default()
        };
        let Err(ConfigError::Key { key, .. }) = limits.validate("connections") else {
            panic!("accepted a reserve that leaves clients no slot");
        };
        assert_eq!(key, "connections.reserved_for_tunnels");
        assert_eq!(ConnectionLimits::default().tunnel_reserve(), 1024);
        let zero = ConnectionLimits {
            max_lifetime: Duration::ZERO,
            ..ConnectionLimits::default()
        };
        let Err(ConfigError::Key { key, .. }) = zero.validate("connections") else {
            panic!("accepted a zero lifetime");
        };
        assert_eq!(key, "connections.max_lifetime");
    }

    /// Serves `drive` over an in-memory pipe; `/slow` answers once `release` is notified.
    async fn pipe_connection(
        gate: &Arc<Gate>,
        release: Arc<Notify>,
    ) -> (
        hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
        tokio::task::JoinHandle<()>,
    ) {
        let limits = *gate.limits();
        let permit = gate.admit([10, 0, 0, 9].into()).expect("a slot");
        let (client, server) = tokio::io::duplex(64 * 1024);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let release = release.clone();
            async move {
                if req.uri().path() == "/slow" {
                    release.notified().await;
                }
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"ok"),
                )))
            }
        });
        let remote: SocketAddr = ([10, 0, 0, 9], 4000).into();
        let task = tokio::spawn(drive(
            Arc::new(limits.builder()),
            limits,
            server,
            remote,
            permit,
            service,
            CancellationToken::new(),
        ));
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        (send, task)
    }

    fn get(path: &str) -> Request<http_body_util::Empty<bytes::Bytes>> {
        Request::get(path)
            .header(http::header::HOST, "relay")
            .body(http_body_util::Empty::new())
            .expect("request")
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_past_its_lifetime_closes_after_the_response_in_flight() {
        let gate = Gate::new(
            "test-lifetime",
            ConnectionLimits {
                max_lifetime: Duration::from_secs(10),
                ..ConnectionLimits::default()
            },
        );
        let release = Arc::new(Notify::new());
        let (mut send, task) = pipe_connection(&gate, release.clone()).await;
        let early = send.send_request(get("/fast")).await.expect("early");
        assert!(early.headers().get(http::header::CONNECTION).is_none());
        let slow = tokio::spawn(send.send_request(get("/slow")));
        // Paused clock: the sleep moves time past the lifetime while `/slow` is in flight.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!task.is_finished(), "the request in flight was cut");
        release.notify_one();
        let late = slow.await.expect("join").expect("the response in flight");
        assert_eq!(late.status(), http::StatusCode::OK);
        assert_eq!(late.headers()[http::header::CONNECTION], "close");
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the connection closed after the response")
            .expect("join");
        assert_eq!(gate.count_of(Reason::Lifetime), 1);
        assert_eq!(gate.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_past_its_lifetime_gets_goaway() {
        let limits = ConnectionLimits {
            max_lifetime: Duration::from_secs(10),
            ..ConnectionLimits::default()
        };
        let gate = Gate::new("test-lifetime-h2", limits);
        let permit = gate.admit([10, 0, 0, 8].into()).expect("a slot");
        let (client, server) = tokio::io::duplex(64 * 1024);
        let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, std::convert::Infallible>(Response::new(
                http_body_util::Empty::<bytes::Bytes>::new(),
            ))
        });
        let task = tokio::spawn(drive(
            Arc::new(limits.builder()),
            limits,
            server,
            ([10, 0, 0, 8], 4000).into(),
            permit,
            service,
            CancellationToken::new(),
        ));
        let (mut send, conn) = hyper::client::conn::http2::handshake::<
            _,
            _,
            http_body_util::Empty<bytes::Bytes>,
        >(TokioExecutor::new(), TokioIo::new(client))
        .await
        .expect("handshake");
        let conn = tokio::spawn(conn);
        let answer = send
            .send_request(
                Request::get("http://relay/")
                    .body(http_body_util::Empty::new())
                    .expect("request"),
            )
            .await
            .expect("an answer before the end of life");
        assert_eq!(answer.status(), http::StatusCode::OK);
        // Well inside the idle timeout (60 s), past the lifetime (10 s).
        tokio::time::timeout(Duration::from_secs(20), conn)
            .await
            .expect("the server ended the connection (GOAWAY)")
            .expect("join")
            .expect("a clean HTTP/2 close");
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the connection task ended")
            .expect("join");
        assert_eq!(gate.count_of(Reason::Lifetime), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicted_idle_connection_closes_and_a_busy_one_finishes() {
        let gate = Gate::new(
            "test-evicted-task",
            ConnectionLimits {
                max_connections: 2,
                max_per_source: 0,
                ..ConnectionLimits::default()
            },
        );
        let release = Arc::new(Notify::new());
        let (mut busy, busy_task) = pipe_connection(&gate, release.clone()).await;
        let slow = tokio::spawn(busy.send_request(get("/slow")));
        let (mut idle, idle_task) = pipe_connection(&gate, release.clone()).await;
        idle.send_request(get("/fast")).await.expect("fast");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let newcomer = gate.admit([10, 0, 0, 7].into());
        assert!(newcomer.is_ok(), "no room made at the cap");
        tokio::time::timeout(Duration::from_secs(1), idle_task)
            .await
            .expect("the evicted connection closed")
            .expect("join");
        assert!(!busy_task.is_finished());
        release.notify_one();
        let answer = slow.await.expect("join").expect("the busy one's response");
        assert_eq!(answer.status(), http::StatusCode::OK);
    }
}
