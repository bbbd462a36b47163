//! `relay-management`: the management REST API of Relay.
//!
//! JSON under `/management`: tenants (CRUD, paging, filter), per-tenant configuration,
//! client secrets, live connections across all nodes (and disconnecting one), nodes, and
//! the request log; its OpenAPI document at `/management/openapi.json` and a browsable page
//! at `/management/`. Every endpoint but those two needs a bearer token of the configured
//! authority (audience `relay-management`, scopes `management:read` / `management:write`)
//! or an API key. Tenant-scoped credentials see only their tenant; everything else answers
//! 404 exactly like a missing resource.
//!
//! Module map:
//! - `config`  — [`Config`] (`management.toml`, `RELAY_MANAGEMENT__*`).
//! - `auth`    — [`Principal`]: bearer tokens (JWKS via `relay_token::Validator`) and API keys.
//! - `credentials` — whether a token's management client, an API key's tenant and the
//!   credentials that created the key still exist and are active (store, 1 s cache).
//! - `error`   — [`ApiError`], the JSON error answers.
//! - `routes`  — [`router`]; `routes::tenants` (tenants and their configuration),
//!   `routes::secrets`, `routes::live` (connections, nodes, request log), `routes::body`
//!   (JSON and query parsing with field-level errors).
//! - `openapi` — the hand-written OpenAPI 3 document ([`openapi::ROUTES`] lists every route
//!   so a test can hold router and document together) and the HTML page.

pub mod config;
pub mod openapi;

mod auth;
mod credentials;
mod error;
mod routes;

use std::sync::Arc;

use relay_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::Principal;
pub use config::{Config, ENV_PREFIX};
pub use credentials::{CACHE_TTL, Credential, MAX_KEY_CHAIN};
pub use error::{ApiError, ManagementError};
pub use routes::router;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) store: Store,
    pub(crate) validator: relay_token::Validator,
    /// Recent answers about management credentials, shared by every request.
    pub(crate) credentials: Arc<credentials::CredentialStates>,
    /// Token authority base URL (announced in the OpenAPI document).
    pub(crate) authority: String,
}

impl AppState {
    /// State validating tokens of `config.identity` against its JWKS (over TLS for an
    /// `https://` authority).
    pub fn new(config: &Config, store: Store) -> Result<Self, relay_core::tls::TlsError> {
        Ok(Self {
            validator: relay_token::Validator::with_client(
                &config.identity.authority,
                &config.identity.audience,
                relay_core::https::client(config.identity.ca_file.as_deref())?,
            ),
            authority: config.identity.authority.clone(),
            credentials: Arc::default(),
            store,
        })
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled. `store` must be migrated.
pub async fn serve(
    config: Config,
    store: Store,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ManagementError> {
    config.validate()?;
    let state = AppState::new(&config, store)?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, authority = %config.identity.authority, "Management API listening.");
    }
    let gate = relay_core::conn::Gate::new("management", config.connections);
    let service = hyper_util::service::TowerToHyperService::new(router(state));
    relay_core::conn::serve(listener, gate, None, |_| service.clone(), shutdown).await;
    Ok(())
}
