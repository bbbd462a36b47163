//! The request log: one row per relayed request, written off the request path.
//!
//! [`relay`] wraps `relay::handle` (its one call site is in `public`): it notes method, path
//! and request size, and wraps the response body so the entry is completed when the body
//! ends or is dropped (bytes sent, duration, and `aborted` when the client went away). The
//! entry goes into a bounded channel with `try_send` — the request never waits for the
//! database; when the channel is full the entry is dropped and counted. A background task
//! inserts entries in batches (one transaction per ≤100 ms or [`BATCH`] rows), and another
//! purges entries older than `request_log.retention`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use relay_store::{RequestLogEntry, Store};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::AppState;
use crate::body::BodyBytes;
use crate::registry::BoxError;
use crate::relay::Mode;
use crate::responses::Body;

/// Entries written in one transaction at most.
/// Longest path stored (characters); longer ones are cut.
const MAX_LOGGED_PATH: usize = 256;
const BATCH: usize = 500;
/// Longest time an entry waits in the writer before its batch is written.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Entries waiting for the writer before new ones are dropped.
const QUEUE: usize = 10_000;
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Shortest time between two "entries dropped" warnings.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(60);

/// `[request_log]` of the server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLogConfig {
    /// `none`, `failed` (everything but `succeeded`) or `all`.
    pub level: LogLevel,
    /// Entries older than this are deleted (hourly, by every node).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Keep the query string in the logged path (it may hold personal data).
    pub include_query: bool,
}

impl Default for RequestLogConfig {
    fn default() -> Self {
        Self {
            level: LogLevel::All,
            retention: Duration::from_secs(7 * 86400),
            include_query: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    None,
    Failed,
    All,
}

/// The sending side, held by the server state.
pub(crate) struct RequestLog {
    handle: LogHandle,
    include_query: bool,
}

impl RequestLog {
    /// Starts the writer and purge tasks; `None` with level `none`.
    pub(crate) fn start(
        config: &RequestLogConfig,
        store: &Store,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Option<RequestLog> {
        if config.level == LogLevel::None {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tasks.spawn(write(store.clone(), rx, dropped.clone(), shutdown.clone()));
        tasks.spawn(purge(store.clone(), config.retention, shutdown.clone()));
        Some(RequestLog {
            handle: LogHandle {
                tx,
                dropped,
                level: config.level,
            },
            include_query: config.include_query,
        })
    }
}

/// Relays one request through `relay::handle` and logs it when its response ends.
pub(crate) async fn relay(
    state: &Arc<AppState>,
    mode: Mode,
    req: Request<Incoming>,
    remote: SocketAddr,
    conn: &Arc<crate::streams::ConnStreams>,
    after: &str,
) -> Response<Body> {
    let Some(log) = &state.request_log else {
        return crate::relay::handle(state, mode, req, remote, conn, after).await;
    };
    let started = Instant::now();
    let started_at = relay_store::now_ms();
    let mut parts = after.splitn(3, '/');
    let tenant = parts.next().unwrap_or_default().to_ascii_lowercase();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut path = format!("/{}", parts.next().unwrap_or_default());
    if log.include_query
        && let Some(q) = req.uri().query()
    {
        path = format!("{path}?{q}");
    }
    let method = req.method().as_str().to_owned();
    // The relay counts what it reads of the body into this as the body streams.
    let request_bytes = BodyBytes::default();
    let mut req = req;
    req.extensions_mut().insert(request_bytes.clone());
    let response = crate::relay::handle(state, mode, req, remote, conn, after).await;
    let code = response
        .headers()
        .get(relay_proto::headers::RELAY_ERROR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let outcome = head_outcome(response.status().as_u16(), code.as_deref());
    // Requests that name no existing tenant are counted in metrics, not stored: anybody can
    // send them, as many as they like.
    let Some(tenant_id) = state.tenants.cached_key(&tenant).map(|t| t.id.clone()) else {
        return response;
    };
    let tenant_id = Some(tenant_id);
    let entry = RequestLogEntry {
        id: uuid::Uuid::now_v7().to_string(),
        tenant: tenant.chars().take(64).collect(),
        target: target.chars().take(64).collect(),
        method: method.chars().take(16).collect(),
        path: path.chars().take(MAX_LOGGED_PATH).collect(),
        status: i64::from(response.status().as_u16()),
        request_bytes: None,
        response_bytes: None,
        duration_ms: 0,
        outcome: outcome.to_owned(),
        node: state.origin_id.clone(),
        started_at,
        tenant_id,
    };
    let sender = Pending {
        log: log.handle.clone(),
        entry: Some(entry),
        request_bytes,
        started,
        bytes: 0,
        ended: false,
    };
    response.map(|inner| {
        LoggedBody {
            inner,
            pending: sender,
        }
        .boxed()
    })
}

/// Outcome decided by the response head: the relay's own error code, else the status.
fn head_outcome(status: u16, code: Option<&str>) -> &'static str {
    match code {
        Some("request-expired" | "target-timeout") => "expired",
        Some("store-unavailable" | "authority-unavailable" | "spool-failed") => "errored",
        Some(_) => "failed",
        None if status >= 500 => "failed",
        None => "succeeded",
    }
}

#[derive(Clone)]
struct LogHandle {
    tx: mpsc::Sender<RequestLogEntry>,
    dropped: Arc<AtomicU64>,
    level: LogLevel,
}

impl LogHandle {
    /// Queues the entry without waiting; a full queue drops it (counted).
    fn submit(&self, entry: RequestLogEntry) {
        if self.level == LogLevel::Failed && entry.outcome == "succeeded" {
            return;
        }
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Pending {
    log: LogHandle,
    entry: Option<RequestLogEntry>,
    request_bytes: BodyBytes,
    started: Instant,
    bytes: u64,
    ended: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        if !self.ended && entry.outcome == "succeeded" {
            entry.outcome = "aborted".to_owned();
        }
        entry.response_bytes = Some(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        let read = self.request_bytes.0.load(Ordering::Relaxed);
        entry.request_bytes = Some(i64::try_from(read).unwrap_or(i64::MAX));
        entry.duration_ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.log.submit(entry);
    }
}

/// The response body, completing the log entry when it ends or is dropped.
struct LoggedBody {
    inner: Body,
    pending: Pending,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.pending.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.pending.ended = true;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(e) = this.pending.entry.as_mut() {
                    e.outcome = "failed".to_owned();
                }
                this.pending.ended = true;
            }
            Poll::Ready(None) => this.pending.ended = true,
            Poll::Pending => {}
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

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.pending.ended = true;
        }
    }
}

/// Writes entries in batches until shutdown, then flushes what is queued.
///
/// The writer wakes for the first entry of a batch, then sleeps [`FLUSH_EVERY`] while the
/// queue fills: entries sent meanwhile wake nobody, so logging costs no task wake-up per
/// request.
async fn write(
    store: Store,
    mut rx: mpsc::Receiver<RequestLogEntry>,
    dropped: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut drops = DropReport::default();
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            () = shutdown.cancelled() => 0,
        };
        if received == 0 {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(FLUSH_EVERY) => {}
            () = shutdown.cancelled() => {}
        }
        loop {
            while batch.len() < BATCH {
                let Ok(entry) = rx.try_recv() else { break };
                batch.push(entry);
            }
            if batch.is_empty() {
                break;
            }
            flush(&store, &mut batch, &dropped).await;
            drops.check(&dropped);
        }
    }
    rx.close();
    while let Ok(entry) = rx.try_recv() {
        batch.push(entry);
        if batch.len() >= BATCH {
            flush(&store, &mut batch, &dropped).await;
        }
    }
    flush(&store, &mut batch, &dropped).await;
}

/// Warns about dropped entries, at most once per [`DROP_REPORT_EVERY`] however long the
/// database fails.
#[derive(Default)]
struct DropReport {
    reported: u64,
    reported_at: Option<Instant>,
}

impl DropReport {
    fn check(&mut self, dropped: &AtomicU64) {
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped > self.reported
            && self
                .reported_at
                .is_none_or(|at| at.elapsed() >= DROP_REPORT_EVERY)
        {
            self.reported_at = Some(Instant::now());
            tracing::warn!(
                dropped = now_dropped - self.reported,
                "Request log entries dropped (writer behind or database failing)."
            );
            self.reported = now_dropped;
        }
    }
}

async fn flush(store: &Store, batch: &mut Vec<RequestLogEntry>, dropped: &AtomicU64) {
    if batch.is_empty() {
        return;
    }
    let entries = std::mem::replace(batch, Vec::with_capacity(BATCH));
    let count = entries.len() as u64;
    if let Err(e) = store.insert_request_log(entries).await {
        dropped.fetch_add(count, Ordering::Relaxed);
        tracing::debug!(error = %e, "Writing request log entries failed.");
    }
}

/// Deletes entries past the retention, at start and every hour.
async fn purge(store: Store, retention: Duration, shutdown: CancellationToken) {
    loop {
        let cutoff = relay_store::now_ms()
            .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        match store.purge_request_log(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "Request log purged."),
            Err(e) => tracing::warn!(error = %e, "Purging the request log failed."),
        }
        tokio::select! {
            () = tokio::time::sleep(PURGE_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::head_outcome;

    #[test]
    fn outcomes_from_the_head() {
        assert_eq!(head_outcome(200, None), "succeeded");
        assert_eq!(head_outcome(404, None), "succeeded");
        assert_eq!(head_outcome(500, None), "failed");
        assert_eq!(head_outcome(504, Some("request-expired")), "expired");
        assert_eq!(head_outcome(503, Some("no-connector")), "failed");
        assert_eq!(head_outcome(503, Some("store-unavailable")), "errored");
    }
}
