//! `queue` mode on a single node: the body is spooled to the body store, the client gets
//! `202 Accepted`, and the request is delivered when a connector is available — unless it
//! expires first, in which case it is dropped, never executed late.
//!
//! The spool lives in the node's memory and body directory, so it does not survive a restart;
//! durable queueing across nodes is the broker's job (see `docs/architecture.md`).

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::TryStreamExt;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use relay_proto::headers;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::AppState;
use crate::config::RelayConfig;
use crate::registry::TunnelBody;
use crate::responses::{Body, error, json};
use crate::tenants::TenantEntry;

pub async fn enqueue(
    state: &Arc<AppState>,
    tenant: &Arc<TenantEntry>,
    request: Request<TunnelBody>,
    request_id: String,
    progress: Arc<crate::body::Progress>,
) -> Response<Body> {
    let (parts, mut body) = request.into_parts();
    let relay = &state.config.relay;
    if let Some(refused) = disk_floor(state) {
        return refused;
    }
    // A place in the tenant's and the node's count, and the head's bytes against the quota:
    // a flood of empty requests is bounded as much as one of big bodies. Released by `Drop`,
    // also on every failure below.
    let mut reserved = match Reservation::admit(&state.spool, &tenant.id, relay) {
        Ok(reserved) => reserved,
        Err(full) => return full.response(state, relay),
    };
    if !reserved.take(head_bytes(&parts), relay.spool_quota_bytes) {
        return Failure::Quota.response(state, relay, tenant, &progress);
    }
    let empty = http_body::Body::is_end_stream(&body)
        || parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
    let path = (!empty).then(|| {
        state
            .config
            .body_store
            .path
            .join(format!("{request_id}.body"))
    });
    let written = async {
        let Some(path) = &path else {
            // No file for an empty body; a body that arrives anyway is a client error.
            return match body.frame().await {
                None => Ok(()),
                Some(_) => Err(Failure::Client),
            };
        };
        let mut file = relay_core::files::private_write_options()
            .open(path)
            .await
            .map_err(Failure::Store)?;
        let mut since_check = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Failure::Client)?;
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                if !reserved.take(n, relay.spool_quota_bytes) {
                    return Err(Failure::Quota);
                }
                since_check += n;
                if since_check >= FREE_CHECK_EVERY {
                    since_check = 0;
                    if free_bytes(&state.config.body_store.path)
                        .is_some_and(|free| free < relay.spool_min_free_bytes)
                    {
                        return Err(Failure::DiskFull);
                    }
                }
                file.write_all(data).await.map_err(Failure::Store)?;
            }
        }
        file.flush().await.map_err(Failure::Store)
    }
    .await;
    if let Err(failure) = written {
        // Nothing half-written stays behind.
        if let Some(path) = &path {
            let _ = tokio::fs::remove_file(path).await;
            if let Failure::Store(e) = &failure {
                tracing::error!(path = %path.display(), error = %e, "Cannot spool request body.");
            }
        }
        return failure.response(state, relay, tenant, &progress);
    }
    let deadline = tokio::time::Instant::now() + tenant.request_expiry;
    let delivery = Delivery {
        state: state.clone(),
        tenant: tenant.clone(),
        parts,
        path,
        request_id: request_id.clone(),
        _reserved: reserved,
    };
    state.tasks.spawn(delivery.run(deadline));
    accepted(&request_id)
}

/// `202 Accepted` with the request id in the body and in `x-relay-request-id`.
pub fn accepted(request_id: &str) -> Response<Body> {
    let mut response = json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "request_id": request_id }),
    );
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        response.headers_mut().insert(headers::REQUEST_ID, v);
    }
    response
}

enum Failure {
    Client,
    Quota,
    DiskFull,
    Store(std::io::Error),
}

impl Failure {
    fn response(
        &self,
        state: &AppState,
        relay: &RelayConfig,
        tenant: &TenantEntry,
        progress: &crate::body::Progress,
    ) -> Response<Body> {
        match self {
            Failure::Client if progress.too_large() => crate::relay::too_large(
                crate::relay::body_limit(relay, tenant, crate::relay::Mode::Queue)
                    .unwrap_or_default(),
            ),
            Failure::Client => error(
                StatusCode::BAD_REQUEST,
                "body-incomplete",
                "the request body ended early",
            ),
            Failure::Quota => error(
                StatusCode::INSUFFICIENT_STORAGE,
                "spool-quota",
                format!(
                    "the tenant's queued requests would exceed {} bytes; retry when they were delivered",
                    relay.spool_quota_bytes
                ),
            ),
            Failure::DiskFull => disk_full(state),
            Failure::Store(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "spool-failed",
                "the request could not be queued",
            ),
        }
    }
}

/// Bytes a queued request's head keeps in memory (counted against the spool quota).
fn head_bytes(parts: &http::request::Parts) -> u64 {
    let headers: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    let uri = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    (headers + uri + HEAD_OVERHEAD) as u64
}

/// What a queued request costs in memory beyond its headers (task, parts, bookkeeping).
const HEAD_OVERHEAD: usize = 1024;

/// How often (in bytes written) the free space is checked again while a body is spooled.
const FREE_CHECK_EVERY: u64 = 8 << 20;

/// Queued requests and their bytes per tenant id on this node, and the node's count.
#[derive(Default)]
pub struct Usage(std::sync::Mutex<Counts>);

#[derive(Default)]
struct Counts {
    tenants: std::collections::HashMap<String, Held>,
    requests: usize,
}

#[derive(Default, Clone, Copy)]
struct Held {
    requests: usize,
    bytes: u64,
}

impl Usage {
    /// Requests queued on this node now.
    pub fn requests(&self) -> usize {
        self.0.lock().map(|c| c.requests).unwrap_or(0)
    }
}

/// Which count is full.
enum Full {
    Tenant,
    Node,
}

impl Full {
    fn response(&self, state: &AppState, relay: &RelayConfig) -> Response<Body> {
        let (status, code, message) = match self {
            Full::Tenant => (
                StatusCode::TOO_MANY_REQUESTS,
                "queue-full",
                format!(
                    "the tenant already has {} requests queued on this relay; retry when they were delivered",
                    relay.queue_max_requests_per_tenant
                ),
            ),
            Full::Node => (
                StatusCode::SERVICE_UNAVAILABLE,
                "queue-node-full",
                format!(
                    "this relay already holds {} queued requests; retry later",
                    relay.queue_max_requests
                ),
            ),
        };
        state.spool_events.refused(code);
        let mut response = error(status, code, message);
        if let Ok(v) = http::HeaderValue::from_str(&relay.retry_after_secs.to_string()) {
            response.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        response
    }
}

/// A request's place in [`Usage`] (and its bytes), given back on drop.
struct Reservation {
    usage: Arc<Usage>,
    tenant: String,
    bytes: u64,
}

impl Reservation {
    /// One more request of `tenant`, unless the tenant's or the node's count is full.
    fn admit(usage: &Arc<Usage>, tenant: &str, relay: &RelayConfig) -> Result<Reservation, Full> {
        let Ok(mut counts) = usage.0.lock() else {
            return Err(Full::Node);
        };
        if counts.requests >= relay.queue_max_requests {
            return Err(Full::Node);
        }
        let held = counts.tenants.entry(tenant.to_owned()).or_default();
        if held.requests >= relay.queue_max_requests_per_tenant {
            return Err(Full::Tenant);
        }
        held.requests += 1;
        counts.requests += 1;
        Ok(Reservation {
            usage: usage.clone(),
            tenant: tenant.to_owned(),
            bytes: 0,
        })
    }

    /// Counts `n` more bytes unless that would pass `quota`.
    fn take(&mut self, n: u64, quota: u64) -> bool {
        let Ok(mut counts) = self.usage.0.lock() else {
            return false;
        };
        let held = counts.tenants.entry(self.tenant.clone()).or_default();
        if held.bytes.saturating_add(n) > quota {
            return false;
        }
        held.bytes += n;
        self.bytes += n;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.usage.0.lock() {
            counts.requests = counts.requests.saturating_sub(1);
            if let Some(held) = counts.tenants.get_mut(&self.tenant) {
                held.bytes = held.bytes.saturating_sub(self.bytes);
                held.requests = held.requests.saturating_sub(1);
                if held.requests == 0 {
                    counts.tenants.remove(&self.tenant);
                }
            }
            if counts.requests == 0 {
                // A flood that drained leaves no empty table behind.
                counts.tenants.shrink_to_fit();
            }
        }
    }
}

/// Free bytes for unprivileged users on the file system of `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// `503` when the body directory is below its free-space floor, before anything is written.
fn disk_floor(state: &AppState) -> Option<Response<Body>> {
    let free = free_bytes(&state.config.body_store.path)?;
    (free < state.config.relay.spool_min_free_bytes).then(|| disk_full(state))
}

fn disk_full(state: &AppState) -> Response<Body> {
    if state.spool_events.begins("spool-full") {
        tracing::warn!(path = %state.config.body_store.path.display(), min_free = state.config.relay.spool_min_free_bytes, "Body directory below its free-space floor; queue requests refused (logged once per episode).");
    }
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "spool-full",
        "the relay cannot store queued requests right now",
    );
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("30"),
    );
    response
}

struct Delivery {
    state: Arc<AppState>,
    tenant: Arc<TenantEntry>,
    parts: http::request::Parts,
    /// The spooled body; `None` for an empty one (no file).
    path: Option<PathBuf>,
    request_id: String,
    /// The body's bytes stay counted against the tenant's quota until the delivery ends.
    _reserved: Reservation,
}

impl Delivery {
    async fn run(self, deadline: tokio::time::Instant) {
        let outcome = tokio::time::timeout_at(deadline, self.deliver()).await;
        match outcome {
            Err(_) => self
                .state
                .spool_events
                .expired(&self.tenant.key, &self.request_id),
            Ok(Err(e)) => {
                tracing::info!(tenant = %self.tenant.key, request_id = %self.request_id, error = %e, "Queued request failed.")
            }
            Ok(Ok(status)) => {
                tracing::debug!(tenant = %self.tenant.key, request_id = %self.request_id, %status, "Queued request delivered.")
            }
        }
        if let Some(path) = &self.path
            && let Err(e) = tokio::fs::remove_file(path).await
        {
            tracing::warn!(path = %path.display(), error = %e, "Cannot delete spooled body.");
        }
    }

    async fn deliver(&self) -> Result<StatusCode, String> {
        loop {
            let tunnel = loop {
                if let Some(t) = self
                    .state
                    .registry
                    .acquire(&self.tenant.id, std::time::Duration::from_secs(3600))
                    .await
                {
                    break t;
                }
            };
            let body: TunnelBody = match &self.path {
                Some(path) => {
                    let file = tokio::fs::File::open(path)
                        .await
                        .map_err(|e| e.to_string())?;
                    let stream = ReaderStream::with_capacity(file, 64 * 1024)
                        .map_ok(Frame::data)
                        .map_err(|e| Box::new(e) as crate::registry::BoxError);
                    BodyExt::boxed(StreamBody::new(stream))
                }
                None => http_body_util::Empty::new().map_err(|e| match e {}).boxed(),
            };
            let request = Request::from_parts(self.parts.clone(), body);
            let _inflight = tunnel.begin();
            let mut sender = tunnel.sender.clone();
            match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let _ = response.into_body().collect().await;
                    return Ok(status);
                }
                // The tunnel died before answering: the connector may not have run it; try
                // the next tunnel while the request is still valid.
                Err(e) if tunnel.closed.is_cancelled() || sender.is_closed() => {
                    tracing::debug!(error = %e, "Tunnel lost during queued delivery; retrying.");
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// What a flood of queue requests did: counted for `/metrics`, logged once per episode.
#[derive(Default)]
pub struct QueueEvents {
    episodes: crate::episodes::Episodes,
    pub expired: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
}

impl QueueEvents {
    fn expired(&self, tenant: &str, request_id: &str) {
        self.expired
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.episodes.begins("expired") {
            tracing::info!(%tenant, %request_id, "Queued request expired undelivered (further expiries are only counted until a minute passes without one: relay_queue_expired_total).");
        }
    }

    fn refused(&self, code: &'static str) {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.episodes.begins(code) {
            tracing::warn!(%code, "Queue request refused at a bound (logged once per episode; relay_queue_refused_total counts them).");
        }
    }

    fn begins(&self, kind: &str) -> bool {
        self.episodes.begins(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(per_tenant: usize, node: usize) -> RelayConfig {
        RelayConfig {
            queue_max_requests_per_tenant: per_tenant,
            queue_max_requests: node,
            ..RelayConfig::default()
        }
    }

    #[test]
    fn counts_bound_requests_per_tenant_and_per_node() {
        let usage = Arc::new(Usage::default());
        let config = relay(2, 3);
        let a1 = Reservation::admit(&usage, "a", &config).ok();
        let a2 = Reservation::admit(&usage, "a", &config).ok();
        assert!(a1.is_some() && a2.is_some());
        assert!(matches!(
            Reservation::admit(&usage, "a", &config),
            Err(Full::Tenant)
        ));
        let b1 = Reservation::admit(&usage, "b", &config).ok();
        assert!(b1.is_some());
        assert!(matches!(
            Reservation::admit(&usage, "c", &config),
            Err(Full::Node)
        ));
        drop(a1);
        assert!(Reservation::admit(&usage, "c", &config).is_ok());
        drop((a2, b1));
        assert_eq!(usage.requests(), 0);
        assert!(
            usage
                .0
                .lock()
                .map(|c| c.tenants.is_empty())
                .unwrap_or(false)
        );
    }
}
