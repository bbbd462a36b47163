//! The public listener: HTTP/1.1 and h2c on one port, routes, graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use relay_core::conn::{Closer, Gate, Reason};
use relay_proto::discovery::DiscoveryDocument;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::AppState;
use crate::relay::Mode;
use crate::responses::{Body, error, json, text};

/// Accepts connections until `shutdown`, then drains tunnels and open connections within
/// the shutdown grace. `[connections] reserved_for_tunnels` of the slots are kept for tunnel
/// upgrades: a connection admitted into that reserve may only make one (see [`reserve_only`]).
pub async fn serve(state: Arc<AppState>, listener: TcpListener, shutdown: CancellationToken) {
    let gate = Gate::with_tunnel_reserve("public", state.config.connections);
    let mut builder = gate.limits().builder();
    builder
        .http2()
        .max_frame_size(1 << 20)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
    while let Some((stream, remote, permit)) = gate.accept(&listener, &shutdown).await {
        let _ = stream.set_nodelay(true);
        // The acceptor (certificate) current now; a SIGHUP reload affects later connections.
        let tls = match state.tls.as_ref().map(|tls| tls.acceptor()) {
            None => None,
            Some(Some(acceptor)) => Some(acceptor),
            Some(None) => continue,
        };
        let service_state = state.clone();
        let streams = Arc::new(crate::streams::ConnStreams::default());
        let reserve = permit
            .is_reserve()
            .then(|| (permit.gate().clone(), permit.closer()));
        let service = service_fn(move |req| {
            let state = service_state.clone();
            let streams = streams.clone();
            let refused = reserve
                .as_ref()
                .and_then(|(gate, closer)| reserve_only(gate, closer, &req));
            async move {
                if let Some(refused) = refused {
                    return Ok::<_, Infallible>(refused);
                }
                Ok(route(&state, req, remote, &streams).await)
            }
        });
        // Upgraded tunnels leave the connection task (and its idle watchdog) at the upgrade;
        // their own HTTP/2 PINGs keep them alive.
        connections.spawn(relay_core::conn::serve_stream(
            builder.clone(),
            stream,
            remote,
            permit,
            tls,
            service,
            shutdown.clone(),
        ));
    }
    drop(listener);
    state.draining.cancel();
    let grace = state.config.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(grace = ?grace, "Listener closed; draining.");
    let tunnels = crate::tunnel::drain_all(&state, grace);
    connections.close();
    let connections = async {
        if tokio::time::timeout_at(deadline, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("Client connections still open at the end of the shutdown grace.");
        }
    };
    tokio::join!(tunnels, connections);
}

/// On a tunnel-reserve slot: `None` for a tunnel upgrade, and for the discovery document
/// a connector fetches right before (answered, then the connection closes); else 503
/// `connections-full` with `Connection: close`, and the connection is told to close
/// (HTTP/2: GOAWAY).
fn reserve_only(gate: &Gate, closer: &Closer, req: &Request<Incoming>) -> Option<Response<Body>> {
    if req.method() == Method::GET && req.version() == http::Version::HTTP_11 {
        match req.uri().path() {
            relay_proto::TUNNEL_PATH => return None,
            relay_proto::DISCOVERY_PATH => {
                closer.close();
                return None;
            }
            _ => {}
        }
    }
    gate.count(Reason::ReserveNotTunnel);
    closer.close();
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "connections-full",
        "every client connection slot is in use; the rest are kept for connector tunnels",
    );
    let headers = response.headers_mut();
    if req.version() < http::Version::HTTP_2 {
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    Some(response)
}

async fn route(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    remote: SocketAddr,
    streams: &Arc<crate::streams::ConnStreams>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let trimmed = path.trim_start_matches('/');
    let (first, after) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    if let Some(mode) = Mode::parse(first) {
        let started = std::time::Instant::now();
        let response = crate::requestlog::relay(state, mode, req, remote, streams, after).await;
        let tenant = after.split('/').next().unwrap_or_default();
        return crate::metrics::finish(state, mode, tenant, started, response);
    }
    if first == crate::ack::PATH_SEGMENT && req.method() == Method::POST {
        return crate::ack::acknowledge(state, after).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, relay_proto::TUNNEL_PATH) => crate::tunnel::accept(state, req, remote).await,
        (&Method::GET, relay_proto::DISCOVERY_PATH) => {
            let mut response = json(StatusCode::OK, &discovery(state, &req));
            if state.config.public_url.is_none() {
                // Built from the client's `Host`: never let a cache serve it to anyone else.
                response.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
            }
            response
        }
        (&Method::GET, "/health/live") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/health/ready") => ready(state).await,
        (_, "/") => text(
            StatusCode::OK,
            "Relay server. Relay paths: /relay/{tenant}/{target}/{path}\n",
        ),
        _ => error(StatusCode::NOT_FOUND, "not-found", "no such endpoint"),
    }
}

fn discovery(state: &AppState, req: &Request<Incoming>) -> DiscoveryDocument {
    let base = match &state.config.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_else(|| state.config.listen.public.to_string());
            format!("{}://{host}", state.client_proto)
        }
    };
    DiscoveryDocument {
        server_version: crate::VERSION.to_owned(),
        authority: state.config.identity.authority.clone(),
        token_endpoint: state.config.token_endpoint(),
        tunnel_endpoint: format!("{base}{}", relay_proto::TUNNEL_PATH),
        settings: state.config.tunnel.settings(),
    }
}

async fn ready(state: &AppState) -> Response<Body> {
    if state.draining.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "draining", "shutting down");
    }
    let pinged = match tokio::time::timeout(READY_PING_TIMEOUT, state.store.ping()).await {
        Ok(result) => result,
        Err(_) => Err(relay_store::StoreError::PoolTimeout),
    };
    let health = &state.tenants.health;
    health.note(pinged.as_ref().map(drop));
    if health.is_reachable() {
        return text(StatusCode::OK, "ready\n");
    }
    // Known tenants keep working from the cache (and so do their tunnels); only new tenants,
    // new tunnels and the request log need the database.
    if state.tenants.keys().is_empty() {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "configuration store unreachable and no tenant cached",
        )
    } else {
        text(
            StatusCode::OK,
            "ready (degraded: database unreachable, serving from cache)\n",
        )
    }
}

/// How long readiness waits for the configuration database.
const READY_PING_TIMEOUT: Duration = Duration::from_secs(2);
