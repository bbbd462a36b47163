//! The public relay path: `/{relay|queue|trace}/{tenant}/{target}/{path…}?{query}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use relay_proto::headers;

use crate::AppState;
use crate::body::{BodyBytes, Forwarded, LimitedBody, Progress};
use crate::registry::TunnelBody;
use crate::responses::{Body, error};
use crate::streams::{ConnStreams, StreamPermit};
use crate::tenants::TenantEntry;

/// How the client wants its request handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Request–response, streamed.
    Relay,
    /// Fire-and-forget: `202` once the request is handed over.
    Queue,
    /// Like `Relay`, plus diagnostic response headers.
    Trace,
}

impl Mode {
    pub fn parse(segment: &str) -> Option<Mode> {
        match segment {
            "relay" => Some(Mode::Relay),
            "queue" => Some(Mode::Queue),
            "trace" => Some(Mode::Trace),
            _ => None,
        }
    }
}

/// The parts of a relay path: tenant, target and the rest (`/…`, possibly `/`).
pub struct RelayPath<'a> {
    pub tenant: &'a str,
    pub target: &'a str,
    pub rest: &'a str,
}

/// Splits `{tenant}/{target}/{rest…}` (what follows `/{mode}/`).
pub fn split_path(after_mode: &str) -> Option<RelayPath<'_>> {
    let (tenant, after_tenant) = after_mode.split_once('/')?;
    let (target, rest) = match after_tenant.find('/') {
        Some(i) => (&after_tenant[..i], &after_tenant[i..]),
        None => (after_tenant, "/"),
    };
    (!tenant.is_empty() && !target.is_empty()).then_some(RelayPath {
        tenant,
        target,
        rest,
    })
}

/// Handles one relayed request end to end.
pub async fn handle(
    state: &Arc<AppState>,
    mode: Mode,
    req: Request<Incoming>,
    remote: SocketAddr,
    conn: &Arc<ConnStreams>,
    after_mode: &str,
) -> Response<Body> {
    let started = Instant::now();
    let Some(path) = split_path(after_mode) else {
        return error(
            StatusCode::NOT_FOUND,
            "path-invalid",
            "use /{mode}/{tenant}/{target}/{path}",
        );
    };
    if !relay_proto::is_valid_tenant_name(path.tenant) {
        return unknown_tenant();
    }
    if let Err(e) = relay_proto::path::check_rest_lenient(path.rest) {
        return error(StatusCode::BAD_REQUEST, "path-invalid", e.reason());
    }
    if let Some(coding) = unsupported_coding(&req) {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "transfer-coding-unsupported",
            format!("transfer coding '{coding}' is not supported (only chunked)"),
        );
    }
    if let Some(host) = req.headers().get(header::HOST)
        && !headers::is_valid_host(host.as_bytes())
    {
        return error(
            StatusCode::BAD_REQUEST,
            "host-invalid",
            "the Host header is not a host[:port]",
        );
    }
    if !relay_proto::is_valid_name(path.target) {
        return error(
            StatusCode::NOT_FOUND,
            "target-invalid",
            "target names are letters, digits, '_', '-' and '.'",
        );
    }
    let tenant = match state.tenants.get(path.tenant).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => return unknown_tenant(),
        Err(e) => {
            state.tenants.health.note(Err(&e));
            return store_unavailable();
        }
    };
    if tenant.require_client_auth
        && let Some(denied) = check_client_token(state, &tenant, &req).await
    {
        return denied;
    }
    let body_limit = body_limit(&state.config.relay, &tenant, mode);
    if let (Some(limit), Some(length)) = (body_limit, content_length(&req))
        && length > limit
    {
        return too_large(limit);
    }
    // Trace headers disclose the connector's machine and version: only where the tenant's
    // `tracing` setting allows them.
    let mode = if mode == Mode::Trace && !tenant.tracing {
        Mode::Relay
    } else {
        mode
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    let Some((progress, request)) = to_tunnel_request(
        req,
        &path,
        &Client {
            remote,
            proto: state.client_proto,
        },
        &request_id,
        mode,
        &tenant,
        body_limit,
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "path-invalid",
            "the request path is not valid",
        );
    };
    let deadline = tokio::time::Instant::now() + tenant.request_expiry;
    if mode == Mode::Queue {
        return match &state.cross {
            Some(cross) => cross.enqueue(&tenant, request, &request_id, deadline).await,
            None => crate::spool::enqueue(state, &tenant, request, request_id, progress).await,
        };
    }
    let permit = match StreamPermit::take(
        conn,
        &state.streams,
        remote.ip(),
        state.config.relay.max_streams_per_connection,
        state.config.relay.max_streams_per_source,
    ) {
        Ok(permit) => permit,
        Err(refused) => return refused.response(),
    };
    let wait = state.config.relay.connector_wait.min(tenant.request_expiry);
    let tunnel = match &state.cross {
        // Multi-node: a local tunnel is used directly (the shortcut), otherwise the broker
        // carries the request to a node that has one.
        Some(cross) => {
            let local = state.registry.acquire(&tenant.id, Duration::ZERO).await;
            match local.filter(|_| state.config.bus.local_shortcut) {
                Some(tunnel) => tunnel,
                None => {
                    if !cross.wait_for_consumer(&tenant.id, wait).await {
                        return no_connector(state);
                    }
                    let response = cross
                        .relay(&tenant, request, &request_id, mode, deadline)
                        .await;
                    let (parts, body) = response.into_parts();
                    let body = state.watchdog.watch(body, remote.ip(), request_id, permit);
                    return Response::from_parts(parts, body);
                }
            }
        }
        None => match state.registry.acquire(&tenant.id, wait).await {
            Some(tunnel) => tunnel,
            None => return no_connector(state),
        },
    };
    let mut request = request;
    if tenant.ack_mode == relay_store::AckMode::Manual {
        // Nothing to settle without the broker; the URL answers 204 until the request expires.
        let url = state.acks.url(
            state.config.public_url.as_deref(),
            &state.origin_id,
            &request_id,
        );
        request.headers_mut().insert(headers::ACKNOWLEDGE_URL, url);
        state.acks.hold(&request_id, None, tenant.request_expiry);
    }
    let _inflight = tunnel.begin();
    let mut sender = tunnel.sender.clone();
    let mut send = std::pin::pin!(sender.send_request(request));
    // The expiry counts from the end of the request body: while it streams, only a stall
    // (no byte for `body_idle_timeout`) ends the request, so big slow uploads work.
    let idle = state.config.relay.body_idle_timeout;
    let sent = tokio::select! {
        result = send.as_mut() => Some(result),
        forwarded = progress.forwarded(idle) => match forwarded {
            Forwarded::Done => None,
            Forwarded::Stalled => {
                tracing::info!(tenant = %tenant.key, request_id = %request_id, ?idle, "Request body stalled; request ended.");
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    format!("no byte of the request body for {}s", idle.as_secs_f64()),
                );
            }
        },
    };
    let sent = match sent {
        Some(result) => Ok(result),
        None => tokio::time::timeout(tenant.request_expiry, send).await,
    };
    let response = match sent {
        Err(_) => return expired(&tenant),
        Ok(Err(e)) => {
            if tenant.ack_mode == relay_store::AckMode::Manual {
                // No delivery to settle here; the acknowledge URL just stops answering 204.
                state.acks.release(&request_id);
            }
            if progress.too_large() {
                return too_large(body_limit.unwrap_or_default());
            }
            if progress.client_error() {
                // The client's framing, not the tunnel: a client error, logged as such.
                tracing::info!(tenant = %tenant.key, request_id = %request_id, error = %e, "Client request body broken.");
                return error(
                    StatusCode::BAD_REQUEST,
                    "body-invalid",
                    "the request body was malformed or ended early",
                );
            }
            tracing::info!(tenant = %tenant.key, target = %path.target, request_id = %request_id, error = %e, "Tunnel request failed.");
            return error(
                StatusCode::BAD_GATEWAY,
                "connector-lost",
                "the connector's tunnel failed during the request",
            );
        }
        Ok(Ok(response)) => response,
    };
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    if mode == Mode::Trace {
        let h = &mut parts.headers;
        insert(h, headers::REQUEST_ID, &request_id);
        insert(h, headers::TRACE_CONNECTOR_MACHINE, &tunnel.machine);
        insert(h, headers::TRACE_CONNECTOR_VERSION, &tunnel.version);
        insert(
            h,
            headers::TRACE_RELAY_DURATION,
            &started.elapsed().as_millis().to_string(),
        );
    } else {
        parts.headers.remove(headers::TARGET_DURATION);
    }
    let body = state.watchdog.watch(
        body.map_err(Into::into).boxed(),
        remote.ip(),
        request_id,
        permit,
    );
    Response::from_parts(parts, body)
}

/// Where a client request came from.
struct Client {
    remote: SocketAddr,
    /// `https` when clients reach the relay through TLS (`public_url`), else `http`.
    proto: &'static str,
}

/// Rewrites the client's request for the tunnel: `/{target}{rest}?{query}`, hop-by-hop and
/// spoofed `x-relay-*` headers removed, client metadata added. When the tenant requires client
/// tokens, the token was meant for the relay and is not passed on to the target.
fn to_tunnel_request(
    req: Request<Incoming>,
    path: &RelayPath<'_>,
    client: &Client,
    request_id: &str,
    mode: Mode,
    tenant: &TenantEntry,
    body_limit: Option<u64>,
) -> Option<(Arc<Progress>, Request<TunnelBody>)> {
    let (mut parts, body) = req.into_parts();
    let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("/{}{}?{q}", path.target, path.rest),
        None => format!("/{}{}", path.target, path.rest),
    };
    parts.uri = Uri::builder()
        .scheme("http")
        .authority("tunnel")
        .path_and_query(path_and_query)
        .build()
        .ok()?;
    parts.version = Version::HTTP_2;
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    headers::strip_relay_headers(h);
    h.remove(header::HOST);
    h.remove(header::EXPECT);
    insert(h, headers::REQUEST_ID, request_id);
    if tenant.require_client_auth {
        h.remove(header::AUTHORIZATION);
    }
    insert(h, headers::CLIENT_ADDR, &client.remote.ip().to_string());
    insert(h, headers::CLIENT_PROTO, client.proto);
    if let Some(host) = client_host {
        h.insert(headers::CLIENT_HOST, host);
    }
    if mode == Mode::Trace {
        h.insert(headers::TRACE, HeaderValue::from_static("1"));
    }
    let counter = parts.extensions.remove::<BodyBytes>();
    let (body, progress) = LimitedBody::new(body, body_limit, counter);
    Some((progress, Request::from_parts(parts, body.boxed())))
}

async fn check_client_token(
    state: &AppState,
    tenant: &TenantEntry,
    req: &Request<Incoming>,
) -> Option<Response<Body>> {
    let denied = || {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "client-token-required",
            "this tenant requires a valid bearer token",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let Some(token) = crate::tunnel::bearer_token(req) else {
        return Some(denied());
    };
    match state.validator.validate(token).await {
        // A connector credential's token has scope `connector` only: it is never a client
        // token. The token must name this tenant's id, and its credential be still valid.
        Ok(claims) if claims.has_scope(relay_token::SCOPE_CLIENT) => {
            match crate::credentials::client_token_bound(state, tenant, &claims).await {
                Ok(true) => None,
                Ok(false) => Some(denied()),
                Err(e) => {
                    state.tenants.health.note(Err(&e));
                    Some(store_unavailable())
                }
            }
        }
        Err(e) if e.is_unavailable() => Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "authority-unavailable",
            "token authority unreachable",
        )),
        _ => Some(denied()),
    }
}

/// The largest request body accepted: the tenant's limit, and in `queue` mode (which stores
/// the body) also `relay.queue_max_body_bytes`.
pub fn body_limit(
    config: &crate::config::RelayConfig,
    tenant: &TenantEntry,
    mode: Mode,
) -> Option<u64> {
    match (mode, tenant.max_body_bytes) {
        (Mode::Queue, Some(own)) => Some(own.min(config.queue_max_body_bytes)),
        (Mode::Queue, None) => Some(config.queue_max_body_bytes),
        (_, own) => own,
    }
}

/// A `Transfer-Encoding` coding other than `chunked` (the relay would drop it silently).
fn unsupported_coding(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .find(|c| !c.eq_ignore_ascii_case("chunked"))
        .map(|c| c.chars().take(32).collect())
}

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn insert(h: &mut http::HeaderMap, name: http::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// `504`: the request outlived the tenant's expiry in the relay.
pub fn expired(tenant: &TenantEntry) -> Response<Body> {
    error(
        StatusCode::GATEWAY_TIMEOUT,
        "request-expired",
        format!(
            "request expired after {}s in the relay",
            tenant.request_expiry.as_secs_f64()
        ),
    )
}

fn store_unavailable() -> Response<Body> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        "configuration store unavailable; retry later",
    )
}

pub fn unknown_tenant() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "tenant-unknown", "unknown tenant")
}

pub fn too_large(limit: u64) -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        format!("request body exceeds the limit of {limit} bytes"),
    )
}

pub fn no_connector(state: &AppState) -> Response<Body> {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no-connector",
        "no connector of this tenant is connected",
    );
    if let Ok(v) = HeaderValue::from_str(&state.config.relay.retry_after_secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_relay_paths() {
        let p = split_path("acme/web/a/b").expect("splits");
        assert_eq!((p.tenant, p.target, p.rest), ("acme", "web", "/a/b"));
        let p = split_path("acme/web").expect("splits");
        assert_eq!(p.rest, "/");
        let p = split_path("acme/web/").expect("splits");
        assert_eq!(p.rest, "/");
        assert!(split_path("acme").is_none());
        assert!(split_path("acme/").is_none());
        assert!(split_path("/web").is_none());
    }
}
