//! The connector endpoint: authenticate, upgrade, and drive the reversed HTTP/2 connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use relay_proto::headers;
use relay_token::TokenError;

use crate::AppState;
use crate::registry::{Tunnel, TunnelBody};
use crate::responses::{Body, error};

const MAX_FRAME_SIZE: u32 = 1 << 20;
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// `GET /connector`: checks the bearer token and answers `101`, then serves the tunnel in
/// the background.
pub async fn accept(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Body> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case(relay_proto::UPGRADE_PROTOCOL)) {
        return error(
            StatusCode::BAD_REQUEST,
            "upgrade-required",
            format!(
                "the tunnel endpoint needs `Upgrade: {}`",
                relay_proto::UPGRADE_PROTOCOL
            ),
        );
    }
    if state.draining.is_cancelled() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this relay node is shutting down",
        );
    }
    let Some(token) = bearer(&req) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "token-missing",
            "a bearer token is required",
        );
    };
    let claims = match state.validator.validate(token).await {
        Ok(claims) => claims,
        Err(TokenError::Unavailable(e)) => {
            tracing::warn!(error = %e, "Token authority unreachable; refusing tunnel.");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "authority-unavailable",
                "token authority unreachable",
            );
        }
        Err(e) => {
            tracing::info!(%remote, error = %e, "Tunnel refused: invalid token.");
            return error(
                StatusCode::UNAUTHORIZED,
                "token-invalid",
                "the token is not valid",
            );
        }
    };
    if !claims.has_scope(relay_token::SCOPE_CONNECTOR) {
        return error(
            StatusCode::FORBIDDEN,
            "scope-missing",
            "the token lacks scope `connector`",
        );
    }
    let Some(tenant_name) = claims.tenant.clone() else {
        return error(
            StatusCode::FORBIDDEN,
            "tenant-missing",
            "the token is not a tenant's token",
        );
    };
    let tenant = match state.tenants.get(&tenant_name).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => {
            return error(
                StatusCode::FORBIDDEN,
                "tenant-unknown",
                "the token's tenant does not exist",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "Configuration database unavailable; refusing tunnel.");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "configuration store unavailable",
            );
        }
    };
    let machine = header_text(&req, &headers::CONNECTOR_MACHINE);
    let version = header_text(&req, &headers::CONNECTOR_VERSION);
    let state2 = state.clone();
    let tenant_key = tenant.key.clone();
    let tenant_id = tenant.id.clone();
    let on_upgrade = hyper::upgrade::on(req);
    state.tasks.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::info!(%remote, error = %e, "Tunnel upgrade failed.");
                return;
            }
        };
        let keep_alive = state2.config.tunnel.keep_alive_interval;
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_frame_size(MAX_FRAME_SIZE)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buf_size(1 << 20)
            .keep_alive_interval(keep_alive)
            .keep_alive_timeout(keep_alive)
            .keep_alive_while_idle(true)
            .handshake::<_, TunnelBody>(upgraded)
            .await;
        let (sender, conn) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                tracing::info!(%remote, error = %e, "Tunnel handshake failed.");
                return;
            }
        };
        let id = uuid::Uuid::new_v4().to_string();
        let tunnel = Arc::new(Tunnel::new(id.clone(), tenant_key.clone(), machine.clone(), version.clone(), remote.to_string(), sender));
        record_opened(&state2, &tunnel, &tenant_id);
        state2.registry.add(tunnel.clone());
        if let Some(cross) = &state2.cross {
            cross.tunnel_up(&state2, &tenant);
        }
        tracing::info!(tenant = %tenant_key, tunnel = %id, %remote, %machine, %version, "Connector connected.");
        let result = conn.await;
        tunnel.closed.cancel();
        state2.registry.remove(&tunnel);
        if let Some(cross) = &state2.cross
            && !state2.registry.has_tunnels(&tenant_key)
        {
            cross.tunnels_gone(&tenant_key);
        }
        match result {
            Ok(()) => tracing::info!(tenant = %tenant_key, tunnel = %id, "Connector disconnected."),
            Err(e) => tracing::info!(tenant = %tenant_key, tunnel = %id, error = %e, "Connector lost."),
        }
        let store = state2.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.record_connection_closed(&id, relay_store::now_ms()).await {
                tracing::warn!(error = %e, "Cannot record closed connection.");
            }
        });
    });
    let mut response = Response::new(crate::responses::full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::UPGRADE,
        HeaderValue::from_static(relay_proto::UPGRADE_PROTOCOL),
    );
    response
}

fn record_opened(state: &Arc<AppState>, tunnel: &Tunnel, tenant_id: &str) {
    let now = relay_store::now_ms();
    let record = relay_store::NewConnection {
        id: tunnel.id.clone(),
        tenant_id: tenant_id.to_owned(),
        origin_id: Some(state.origin_id.clone()),
        remote_addr: tunnel.remote.clone(),
        connector_version: Some(tunnel.version.clone()),
        machine_name: Some(tunnel.machine.clone()),
        connected_at: now,
    };
    let store = state.store.clone();
    tokio::spawn(async move {
        if let Err(e) = store.record_connection_opened(&record).await {
            tracing::warn!(error = %e, "Cannot record connection.");
        }
    });
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn header_text(req: &Request<Incoming>, name: &http::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Asks every connector to move, then waits until their tunnels are gone or `grace` passed.
pub async fn drain_all(state: &Arc<AppState>, grace: Duration) {
    let tunnels = state.registry.all();
    if tunnels.is_empty() {
        return;
    }
    tracing::info!(tunnels = tunnels.len(), "Asking connectors to move.");
    for tunnel in &tunnels {
        let mut sender = tunnel.sender.clone();
        let request = Request::post(format!("http://tunnel{}", relay_proto::CONTROL_DRAIN))
            .body(crate::relay::empty_tunnel_body());
        if let Ok(request) = request {
            tokio::spawn(async move {
                let _ = sender.send_request(request).await;
            });
        }
    }
    let all_closed = futures_util::future::join_all(tunnels.iter().map(|t| t.closed.cancelled()));
    if tokio::time::timeout(grace, all_closed).await.is_err() {
        tracing::warn!("Some tunnels were still open at the end of the shutdown grace.");
    }
}

/// Re-exported so the bearer parsing can be shared with client authentication.
pub(crate) fn bearer_token(req: &Request<Incoming>) -> Option<&str> {
    bearer(req)
}
