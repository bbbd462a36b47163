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
    let path = state
        .config
        .body_store
        .path
        .join(format!("{request_id}.body"));
    let written = async {
        let mut file = relay_core::files::private_write_options()
            .open(&path)
            .await
            .map_err(Failure::Store)?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Failure::Client)?;
            if let Some(data) = frame.data_ref() {
                file.write_all(data).await.map_err(Failure::Store)?;
            }
        }
        file.flush().await.map_err(Failure::Store)
    }
    .await;
    if let Err(failure) = written {
        let _ = tokio::fs::remove_file(&path).await;
        return match failure {
            Failure::Client if progress.too_large() => {
                crate::relay::too_large(tenant.max_body_bytes.unwrap_or_default())
            }
            Failure::Client => error(
                StatusCode::BAD_REQUEST,
                "body-incomplete",
                "the request body ended early",
            ),
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
    Store(std::io::Error),
}

struct Delivery {
    state: Arc<AppState>,
    tenant: Arc<TenantEntry>,
    parts: http::request::Parts,
    path: PathBuf,
    request_id: String,
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
