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
    let path = state
        .config
        .body_store
        .path
        .join(format!("{request_id}.body"));
    // Bytes counted against the tenant's quota while the body is written and until the
    // delivery ends; released by `Drop`, also on every failure below.
    let mut reserved = Reservation {
        usage: state.spool.clone(),
        tenant: tenant.id.clone(),
        bytes: 0,
    };
    let written = async {
        let mut file = relay_core::files::private_write_options()
            .open(&path)
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
        let _ = tokio::fs::remove_file(&path).await;
        return match failure {
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
                    "the tenant's queued bodies would exceed {} bytes; retry when they were delivered",
                    relay.spool_quota_bytes
                ),
            ),
            Failure::DiskFull => disk_full(state),
            Failure::Store(e) => {
                tracing::error!(path = %path.display(), error = %e, "Cannot spool request body.");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "spool-failed",
                    "the request could not be queued",
                )
            }
        };
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

/// How often (in bytes written) the free space is checked again while a body is spooled.
const FREE_CHECK_EVERY: u64 = 8 << 20;

/// Bytes spooled per tenant id on this node.
#[derive(Default)]
pub struct Usage(std::sync::Mutex<std::collections::HashMap<String, u64>>);

/// A tenant's share of [`Usage`], given back on drop.
struct Reservation {
    usage: Arc<Usage>,
    tenant: String,
    bytes: u64,
}

impl Reservation {
    /// Counts `n` more bytes unless that would pass `quota`.
    fn take(&mut self, n: u64, quota: u64) -> bool {
        let Ok(mut usage) = self.usage.0.lock() else {
            return false;
        };
        let used = usage.entry(self.tenant.clone()).or_default();
        if used.saturating_add(n) > quota {
            return false;
        }
        *used += n;
        self.bytes += n;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut usage) = self.usage.0.lock()
            && let Some(used) = usage.get_mut(&self.tenant)
        {
            *used = used.saturating_sub(self.bytes);
            if *used == 0 {
                usage.remove(&self.tenant);
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
    tracing::warn!(path = %state.config.body_store.path.display(), min_free = state.config.relay.spool_min_free_bytes, "Body directory below its free-space floor; queue requests refused.");
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
    path: PathBuf,
    request_id: String,
    /// The body's bytes stay counted against the tenant's quota until the delivery ends.
    _reserved: Reservation,
}

impl Delivery {
    async fn run(self, deadline: tokio::time::Instant) {
        let outcome = tokio::time::timeout_at(deadline, self.deliver()).await;
        match outcome {
            Err(_) => {
                tracing::info!(tenant = %self.tenant.key, request_id = %self.request_id, "Queued request expired undelivered.")
            }
            Ok(Err(e)) => {
                tracing::info!(tenant = %self.tenant.key, request_id = %self.request_id, error = %e, "Queued request failed.")
            }
            Ok(Ok(status)) => {
                tracing::debug!(tenant = %self.tenant.key, request_id = %self.request_id, %status, "Queued request delivered.")
            }
        }
        if let Err(e) = tokio::fs::remove_file(&self.path).await {
            tracing::warn!(path = %self.path.display(), error = %e, "Cannot delete spooled body.");
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
            let file = tokio::fs::File::open(&self.path)
                .await
                .map_err(|e| e.to_string())?;
            let stream = ReaderStream::with_capacity(file, 64 * 1024)
                .map_ok(Frame::data)
                .map_err(|e| Box::new(e) as crate::registry::BoxError);
            let body: TunnelBody = BodyExt::boxed(StreamBody::new(stream));
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
