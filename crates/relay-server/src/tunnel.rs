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
use crate::registry::{Tunnel, TunnelAuth, TunnelBody};
use crate::responses::{Body, error};

const MAX_FRAME_SIZE: u32 = 1 << 20;
/// A stream may hold at most 1/32 of the connection window: responses whose clients stall
/// (until `client_write_timeout` resets them) leave the tunnel room for everybody else.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;

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
        tracing::info!(%remote, "Tunnel refused: the token lacks scope connector.");
        return error(
            StatusCode::FORBIDDEN,
            "scope-missing",
            "the token lacks scope `connector` (a client credential cannot open tunnels)",
        );
    }
    // The validator allows clock-skew leeway; a tunnel never starts on an expired token.
    if claims.exp <= relay_store::now_ms() / 1000 {
        return error(
            StatusCode::UNAUTHORIZED,
            "token-expired",
            "the token has expired",
        );
    }
    let tenant = match crate::credentials::bind_tunnel(state, &claims).await {
        Ok(tenant) => tenant,
        Err(refusal) => {
            tracing::info!(%remote, tenant = claims.tenant.as_deref().unwrap_or("-"), reason = refusal.code(), "Tunnel refused.");
            return refusal.response();
        }
    };
    // A renewal names the tunnel it replaces: only one opened with the same secret, so no
    // other credential of the tenant can drain it. It may take a place beyond the tenant's
    // cap, since the old tunnel gives its place back once drained.
    let replaces = header_text(&req, &headers::TUNNEL_REPLACES);
    let old = state
        .registry
        .replaceable(&tenant.id, &replaces, claims.secret_id.as_deref());
    let cap = tenant.max_tunnels + usize::from(old.is_some());
    let Some(slot) = state.registry.reserve(&tenant.id, cap) else {
        return tunnel_limit(state, &tenant, remote);
    };
    let auth = TunnelAuth {
        tenant_id: tenant.id.clone(),
        tenant_name: tenant.key.clone(),
        secret_id: claims.secret_id.clone(),
        expires_at: claims.exp,
    };
    // Renewal before the token's expiry, at 90 % of its lifetime at the latest (connectors
    // renew at 80 %): the tunnel is drained, then cut at the expiry itself.
    let lifetime = if claims.iat > 0 {
        (claims.exp - claims.iat).max(0)
    } else {
        0
    };
    let retire_lead = Duration::from_secs(u64::try_from((lifetime / 10).min(30)).unwrap_or(0));
    let machine = header_text(&req, &headers::CONNECTOR_MACHINE);
    let version = header_text(&req, &headers::CONNECTOR_VERSION);
    let state2 = state.clone();
    let id = uuid::Uuid::new_v4().to_string();
    let tunnel_id = id.clone();
    let on_upgrade = hyper::upgrade::on(req);
    state.tasks.spawn(async move {
        // The tenant's place is held until this task ends: upgrade, handshake and tunnel.
        let _slot = slot;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::info!(%remote, error = %e, "Tunnel upgrade failed.");
                return;
            }
        };
        let keep_alive = state2.config.tunnel.keep_alive_interval;
        let kill = tokio_util::sync::CancellationToken::new();
        let upgraded = crate::killable::Killable::new(upgraded, kill.clone());
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
        let expires = instant_of(auth.expires_at);
        let retire_at = expires.checked_sub(retire_lead).unwrap_or(expires);
        let tunnel = Arc::new(Tunnel::new(id.clone(), auth, machine.clone(), version.clone(), remote.to_string(), sender, kill));
        let tenant_key = tenant.key.clone();
        record_opened(&state2, &tunnel, &tenant.name);
        state2.registry.add(tunnel.clone());
        // A tunnel whose upgrade was accepted just before shutdown began may register after
        // `drain_all` took its list: it drains itself, instead of holding the shutdown for
        // the whole grace period.
        if state2.draining.is_cancelled() {
            drain(&tunnel, relay_proto::Drain::default());
        }
        if let Some(cross) = &state2.cross {
            cross.tunnel_up(&state2, &tenant);
        }
        tracing::info!(tenant = %tenant_key, tunnel = %id, %remote, %machine, %version, "Connector connected.");
        if let Some(old) = old {
            tracing::info!(tenant = %tenant_key, tunnel = %old.id, by = %id, "Tunnel renewed; draining the old one.");
            drain(&old, relay_proto::Drain::default());
        }
        let mut conn = Box::pin(conn);
        let mut retired = false;
        let ended = loop {
            tokio::select! {
                result = conn.as_mut() => break match result {
                    Ok(()) => "disconnected",
                    Err(e) => {
                        tracing::info!(tenant = %tenant_key, tunnel = %id, error = %e, "Connector lost.");
                        "lost"
                    }
                },
                () = tunnel.kill.cancelled() => break "closed by the relay",
                () = tokio::time::sleep_until(expires) => {
                    tracing::info!(tenant = %tenant_key, tunnel = %id, "The tunnel's token expired; closing it.");
                    break "token expired";
                }
                () = tokio::time::sleep_until(retire_at), if !retired => {
                    retired = true;
                    tracing::info!(tenant = %tenant_key, tunnel = %id, "The tunnel's token expires soon; asking the connector to renew.");
                    drain(&tunnel, relay_proto::Drain::default());
                }
            }
        };
        // On kill or expiry the byte stream fails: requests still in flight fail at once
        // instead of running on revoked credentials.
        tunnel.kill.cancel();
        drop(conn);
        tunnel.closed.cancel();
        state2.registry.remove(&tunnel);
        if let Some(cross) = &state2.cross
            && !state2.registry.has_tunnels(&tenant.id)
        {
            cross.tunnels_gone(&tenant.id);
        }
        if ended != "lost" {
            tracing::info!(tenant = %tenant_key, tunnel = %id, reason = ended, "Connector disconnected.");
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
    if let Ok(v) = HeaderValue::from_str(&tunnel_id) {
        h.insert(headers::TUNNEL_ID, v);
    }
    response
}

/// `429 tunnel-limit`: the tenant holds `max_tunnels` on this node already.
fn tunnel_limit(
    state: &AppState,
    tenant: &crate::tenants::TenantEntry,
    remote: SocketAddr,
) -> Response<Body> {
    if state.tunnel_refusals.begins(&tenant.id) {
        tracing::warn!(tenant = %tenant.key, %remote, max_tunnels = tenant.max_tunnels, "Tunnel refused: the tenant holds its maximum of tunnels on this node (logged once a minute per tenant).");
    }
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "tunnel-limit",
        format!(
            "the tenant already holds {} tunnels on this relay node (tenant setting max_tunnels)",
            tenant.max_tunnels
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    response
}

/// The `Instant` of a unix time in seconds (now, when it has passed).
fn instant_of(unix_secs: i64) -> tokio::time::Instant {
    let left_ms = unix_secs.saturating_mul(1000) - relay_store::now_ms();
    tokio::time::Instant::now() + Duration::from_millis(u64::try_from(left_ms).unwrap_or(0))
}

/// Stops giving the tunnel requests, then asks its connector to move to a new tunnel. The
/// order matters: every request sent before the drain is already on the wire ahead of it, so
/// the connector's `GOAWAY` never refuses a request the relay has just dispatched.
pub(crate) fn drain(tunnel: &Tunnel, drain: relay_proto::Drain) {
    tunnel.retire();
    let body = serde_json::to_vec(&drain).unwrap_or_default();
    crate::livepush::send_control(tunnel, relay_proto::CONTROL_DRAIN, bytes::Bytes::from(body));
}

/// Cuts a tunnel whose credentials are no longer valid.
pub(crate) fn close(tunnel: &Tunnel, reason: &str) {
    if !tunnel.kill.is_cancelled() {
        tracing::info!(tenant = %tunnel.auth.tenant_name, tunnel = %tunnel.id, %reason, "Closing tunnel.");
        tunnel.retire();
        tunnel.kill.cancel();
    }
}

fn record_opened(state: &Arc<AppState>, tunnel: &Tunnel, tenant_name: &str) {
    let now = relay_store::now_ms();
    let record = relay_store::NewConnection {
        id: tunnel.id.clone(),
        tenant_id: tunnel.auth.tenant_id.clone(),
        tenant_name: tenant_name.to_owned(),
        secret_id: tunnel.auth.secret_id.clone(),
        expires_at: Some(tunnel.auth.expires_at.saturating_mul(1000)),
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
        drain(tunnel, relay_proto::Drain::default());
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
