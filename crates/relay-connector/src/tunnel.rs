//! One tunnel to one relay server: discover, authenticate, upgrade, then serve HTTP/2.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use relay_proto::discovery::TunnelSettings;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::ConnectorError;
use crate::targets::{ResponseBody, relay_error};
use crate::{Shared, Slot};

/// How a served tunnel ended.
pub enum Ended {
    /// The process is shutting down; in-flight requests were given the grace period.
    Shutdown,
    /// The server asked us to move; the old tunnel finishes in the background.
    Drained,
    /// Its token is due for renewal: the tunnel keeps serving in the background until the
    /// new tunnel, opened as a replacement of this one (its id, if the server gave one), is
    /// up and the server drains this one (make-before-break).
    Renewing(Option<String>),
    /// The connection closed or failed.
    Lost(String),
}

/// HTTP/2 tuning of the tunnel: large frames and windows for bulk bodies, bounded memory.
const MAX_FRAME_SIZE: u32 = 1 << 20;
/// A stream (an upload a target does not read) may hold at most 1/32 of the connection
/// window, so stalled uploads cannot block the tunnel's other requests.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
const MAX_STREAMS: u32 = 2048;

/// Opens a tunnel to `relay_url` and serves it until it ends. `settings` is updated from the
/// discovery document, overridden by the tenant settings a server pushed (now or earlier):
/// reconnect delays apply to the next back-off, the keep-alive interval to the next tunnel
/// (HTTP/2 cannot change it on a live connection).
///
/// With `replaces`, the new tunnel asks the server to drain that (older) tunnel of ours once
/// it is up.
pub async fn connect_and_serve(
    shared: &Arc<Shared>,
    relay_url: &str,
    settings: &mut TunnelSettings,
    shutdown: &CancellationToken,
    replaces: Option<&str>,
    slot: &Arc<Slot>,
) -> Result<Ended, ConnectorError> {
    let doc = shared.control.discover(relay_url).await?;
    *settings = shared.pushed_settings().unwrap_or(doc.settings);
    let token = shared.tokens.token(&doc.token_endpoint).await?;
    let endpoint: Uri = doc.tunnel_endpoint.parse().map_err(|e| {
        ConnectorError::Protocol(format!("tunnel endpoint `{}`: {e}", doc.tunnel_endpoint))
    })?;
    let authority = endpoint
        .authority()
        .ok_or_else(|| {
            ConnectorError::Protocol(format!("tunnel endpoint `{endpoint}` has no host"))
        })?
        .clone();
    // TCP or TLS, directly or through the proxy; `TCP_NODELAY` is set.
    let stream = shared.dialer.dial(&endpoint).await?;

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectorError::Tunnel)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "Tunnel upgrade connection ended.");
        }
    });
    let path = endpoint
        .path_and_query()
        .map_or(relay_proto::TUNNEL_PATH, |p| p.as_str());
    let mut request = Request::get(path)
        .header(header::HOST, authority.as_str())
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", token.secret.expose()),
        )
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, relay_proto::UPGRADE_PROTOCOL)
        .header(
            relay_proto::headers::CONNECTOR_VERSION,
            env!("CARGO_PKG_VERSION"),
        )
        .header(
            relay_proto::headers::CONNECTOR_MACHINE,
            shared.machine.as_str(),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| ConnectorError::Protocol(e.to_string()))?;
    if let Some(old) = replaces.and_then(|id| http::HeaderValue::from_str(id).ok()) {
        request
            .headers_mut()
            .insert(relay_proto::headers::TUNNEL_REPLACES, old);
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(ConnectorError::Tunnel)?;
    match response.status() {
        StatusCode::SWITCHING_PROTOCOLS => {}
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            shared.tokens.invalidate();
            let code = response
                .headers()
                .get(relay_proto::headers::RELAY_ERROR)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("refused")
                .to_owned();
            let reason = body_text(response).await;
            return Err(ConnectorError::Rejected(format!(
                "relay refused the tunnel ({code}): {reason}"
            )));
        }
        status => {
            let reason = body_text(response).await;
            return Err(ConnectorError::Protocol(format!(
                "relay answered {status}: {reason}"
            )));
        }
    }
    let tunnel_id = response
        .headers()
        .get(relay_proto::headers::TUNNEL_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(ConnectorError::Tunnel)?;
    serve(
        shared,
        relay_url,
        slot,
        upgraded,
        settings,
        shutdown,
        Renewal {
            tunnel_id,
            at: token.refresh_at.into(),
            expires: token.expires_at.into(),
        },
    )
    .await
}

/// When and as what a served tunnel renews itself.
struct Renewal {
    /// The id the server gave this tunnel.
    tunnel_id: Option<String>,
    /// When to open the replacement (80 % of the token's lifetime).
    at: tokio::time::Instant,
    /// The token's expiry: the server cuts the tunnel then.
    expires: tokio::time::Instant,
}

async fn serve(
    shared: &Arc<Shared>,
    relay_url: &str,
    slot: &Arc<Slot>,
    io: hyper::upgrade::Upgraded,
    settings: &mut TunnelSettings,
    shutdown: &CancellationToken,
    renewal: Renewal,
) -> Result<Ended, ConnectorError> {
    let drain = Arc::new(Notify::new());
    let service = {
        let shared = shared.clone();
        let drain = drain.clone();
        service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            let drain = drain.clone();
            async move { Ok::<_, Infallible>(handle(&shared, req, &drain).await) }
        })
    };
    let keep_alive = settings.keep_alive_interval.max(Duration::from_secs(1));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_frame_size(MAX_FRAME_SIZE)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buf_size(1 << 20)
        .keep_alive_interval(keep_alive)
        .keep_alive_timeout(keep_alive)
        .serve_connection(io, service);
    let mut conn = Box::pin(conn);
    shared.tunnel_up(relay_url, slot);
    let down = scopeguard(shared.clone(), slot.clone());
    tracing::info!(tenant = %shared.tenant, "Tunnel established.");
    let ended = tokio::select! {
        result = conn.as_mut() => Ended::Lost(match result {
            Ok(()) => "closed by the server".to_owned(),
            Err(e) => e.to_string(),
        }),
        () = drain.notified() => Ended::Drained,
        () = shutdown.cancelled() => Ended::Shutdown,
        () = tokio::time::sleep_until(renewal.at) => Ended::Renewing(renewal.tunnel_id.clone()),
    };
    if let Some(new) = shared.pushed_settings() {
        *settings = new;
    }
    if matches!(ended, Ended::Lost(_)) {
        return Ok(ended);
    }
    if matches!(ended, Ended::Renewing(_)) {
        // Keeps serving until the server drains it (once the replacement is up), the token
        // expires (the server cuts it then), or the process stops.
        tracing::debug!(tenant = %shared.tenant, "Token due for renewal; opening a replacement tunnel.");
        let grace = shared.shutdown_grace;
        let shutdown = shutdown.clone();
        shared.background.spawn(async move {
            let _down = down;
            tokio::select! {
                _ = conn.as_mut() => return,
                () = drain.notified() => {}
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep_until(renewal.expires) => return,
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(grace, conn).await;
        });
        return Ok(ended);
    }
    conn.as_mut().graceful_shutdown();
    match ended {
        Ended::Drained => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        _ => {
            if tokio::time::timeout(shared.shutdown_grace, conn)
                .await
                .is_err()
            {
                tracing::warn!("In-flight requests did not finish within the shutdown grace.");
            }
        }
    }
    Ok(ended)
}

async fn handle(shared: &Shared, req: Request<Incoming>, drain: &Notify) -> Response<ResponseBody> {
    let path = req.uri().path();
    if let Some(control) = path.strip_prefix(relay_proto::CONTROL_PREFIX) {
        return match control {
            "drain" => {
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let request: relay_proto::Drain = body
                    .ok()
                    .filter(|b| !b.is_empty())
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                if request.renew_token {
                    tracing::info!(
                        "Tunnel disconnected by the relay; reconnecting with a new token."
                    );
                    shared.tokens.invalidate();
                } else {
                    tracing::info!("Relay server is draining this tunnel; moving to a new one.");
                }
                drain.notify_one();
                empty(StatusCode::NO_CONTENT)
            }
            "settings" => match req.into_body().collect().await.map(|b| b.to_bytes()) {
                Ok(bytes) => match serde_json::from_slice::<TunnelSettings>(&bytes) {
                    Ok(new) => {
                        tracing::info!(?new, "Tunnel settings updated by the server.");
                        shared.settings_pushed(new);
                        empty(StatusCode::NO_CONTENT)
                    }
                    Err(e) => relay_error(StatusCode::BAD_REQUEST, "bad-settings", e.to_string()),
                },
                Err(e) => relay_error(StatusCode::BAD_REQUEST, "bad-settings", e.to_string()),
            },
            _ => relay_error(
                StatusCode::NOT_FOUND,
                "unknown-control",
                format!("no control path {path}"),
            ),
        };
    }
    let Some(rest) = path.strip_prefix('/') else {
        return relay_error(
            StatusCode::BAD_REQUEST,
            "bad-path",
            "path must start with /".into(),
        );
    };
    let (target, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let tail = match req.uri().query() {
        Some(q) => format!("{tail}?{q}"),
        None => tail.to_owned(),
    };
    let target = target.to_owned();
    let started = std::time::Instant::now();
    crate::metrics::finish(started, shared.targets.call(&target, &tail, req).await)
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

async fn body_text(response: Response<Incoming>) -> String {
    let bytes = http_body_util::Limited::new(response.into_body(), 4096)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

/// Decrements the live-tunnel counts when a served tunnel ends, however it ends.
struct TunnelDown(Arc<Shared>, Arc<Slot>);

fn scopeguard(shared: Arc<Shared>, slot: Arc<Slot>) -> TunnelDown {
    TunnelDown(shared, slot)
}

impl Drop for TunnelDown {
    fn drop(&mut self) {
        self.0.tunnel_down(&self.1);
    }
}
