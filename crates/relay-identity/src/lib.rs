//! `relay-identity`: the OAuth2 token service of Relay.
//!
//! Issues RS256 access tokens for the client-credentials grant (tenant name and client
//! secret in, `connector`/`client` scoped token out; management clients get
//! `management:read`/`management:write` tokens for the audience `relay-management`), publishes OpenID Connect discovery
//! and the JWKS, and rotates signing keys kept in the shared config DB so that any number
//! of nodes can run side by side. Relying services validate with `relay_token::Validator`.
//!
//! Module map:
//! - `config`   — [`Config`] (`identity.toml`, `RELAY_IDENTITY__*`), `validate()`, issuer.
//! - `state`    — [`AppState`]: config, store, in-memory keys; the rotation timer.
//! - `routes`   — [`router`]: `POST /connect/token`, `/.well-known/*`, `/health/*`.
//!   `routes::client_auth` parses HTTP Basic / form client credentials.
//! - `rotation` — the pure rotation plan over (keys, now, policy), unit-tested with
//!   explicit times.
//! - `keys`     — loading, creating and deleting keys in the DB; the in-memory key ring.
//! - `ratelimit` — token buckets per source address, per (`client_id`, source) for failed
//!   secret checks, and one for all unknown client ids at the token endpoint (429 +
//!   Retry-After).
//! - `hashing`  — the bounded pool secret checks run in, shared fairly between sources
//!   (503 + Retry-After past its queue or a source's share).
//! - `verified` — keyed digests of secrets that verified lately, recognised without argon2.
//! - `error`    — [`IdentityError`]; RFC 6749 §5.2 error answers.
//!
//! The service never migrates the database by itself (`relay-identity --migrate` or
//! `relayctl migrate` do), and never logs secrets or tokens.

mod config;
mod error;
mod hashing;
mod keys;
mod metrics;
mod ratelimit;
pub mod rotation;
mod routes;
mod state;
mod verified;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{
    Config, DatabaseConfig, ENV_PREFIX, HashingConfig, KeysConfig, ListenConfig, RateLimitConfig,
};
pub use error::IdentityError;
pub use routes::{DISCOVERY_PATH, JWKS_PATH, TOKEN_PATH, router};
pub use state::{AppState, ROTATION_TICK};

/// Serves the identity endpoints on `listener` until `shutdown` is cancelled, rotating
/// signing keys meanwhile. `store` must be connected and migrated. Returns once in-flight
/// requests have finished.
///
/// Without `public_url`, the issuer is `http://` + the listener's actual address, so a
/// listener bound to port 0 works.
pub async fn serve(
    mut config: Config,
    store: relay_store::Store,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), IdentityError> {
    if config.public_url.is_none()
        && let Ok(addr) = listener.local_addr()
    {
        config.listen.public = addr;
    }
    let metrics_listen = config.metrics.listen;
    let gate = relay_core::conn::Gate::new("identity", config.connections);
    let tls = config
        .tls
        .files()?
        .map(|(cert, key)| relay_core::tls::ReloadableAcceptor::start(cert, key, &shutdown))
        .transpose()?;
    let state = AppState::new(config, store).await?;
    if let Some(addr) = metrics_listen {
        let listener = relay_core::metrics::bind(addr)
            .await
            .map_err(IdentityError::Serve)?;
        let render: relay_core::metrics::Render = std::sync::Arc::new(metrics::render);
        tokio::spawn(relay_core::metrics::serve(
            listener,
            render,
            shutdown.clone(),
        ));
    }
    let rotation_stop = shutdown.child_token();
    let rotation = tokio::spawn({
        let state = state.clone();
        let stop = rotation_stop.clone();
        async move { state.run_key_rotation(stop).await }
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, issuer = %state.issuer(), "Identity service listening.");
    }
    // Plain and TLS alike under `[connections]`; handlers see the peer as axum's
    // `ConnectInfo<SocketAddr>`.
    let app = router(state);
    let make_service = move |remote: std::net::SocketAddr| {
        let app = hyper_util::service::TowerToHyperService::new(app.clone());
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(remote));
            hyper::service::Service::call(&app, req)
        })
    };
    relay_core::conn::serve(listener, gate, tls, make_service, shutdown).await;
    rotation_stop.cancel();
    if let Err(e) = rotation.await {
        tracing::warn!(error = %e, "Key rotation task ended abnormally.");
    }
    Ok(())
}
