//! Whether a token still speaks for a tenant: its tenant id must exist and the credential
//! (client secret) it was issued for must still be valid.
//!
//! A signature and an expiry are not enough: a tenant can be deleted and its name re-used,
//! a secret can be revoked while its tokens are still unexpired. Tunnels are checked against
//! the store when they open and then every poll of `livepush` (tunnels whose credentials
//! went away are cut); client tokens on the request path are checked against a cache of
//! secret states that is at most [`SECRET_CACHE_TTL`] old.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use relay_store::{Store, StoreError};
use relay_token::Claims;

use crate::AppState;
use crate::responses::{Body, error};
use crate::tenants::TenantEntry;

/// How long a secret's state is trusted on the request path.
pub const SECRET_CACHE_TTL: Duration = Duration::from_secs(1);
/// Longest wait for the store when a tunnel opens; a silent database counts as unreachable.
const STORE_TIMEOUT: Duration = Duration::from_secs(3);
/// Cached secret states kept at most (expired ones are pruned first).
const SECRET_CACHE_MAX: usize = 4096;

/// Why a token is not accepted for a tunnel.
#[derive(Debug)]
pub enum Refusal {
    /// The token's tenant id does not exist (deleted, or never existed).
    TenantGone,
    /// The token's credential was revoked, expired or deleted.
    CredentialRevoked,
    /// The store does not answer and the credential was not known active before.
    CredentialUnknown,
    /// No `tenant_id` claim and name binding is not allowed.
    TenantIdMissing,
    /// The configuration store did not answer.
    Unavailable(StoreError),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::TenantGone => "tenant-gone",
            Refusal::CredentialRevoked => "credential-revoked",
            Refusal::CredentialUnknown => "credential-unknown",
            Refusal::TenantIdMissing => "tenant-id-missing",
            Refusal::Unavailable(_) => "store-unavailable",
        }
    }

    pub fn response(&self) -> Response<Body> {
        match self {
            Refusal::TenantGone => error(
                StatusCode::UNAUTHORIZED,
                self.code(),
                "the token's tenant no longer exists; a re-created tenant of the same name needs its own credentials",
            ),
            Refusal::CredentialRevoked => error(
                StatusCode::UNAUTHORIZED,
                self.code(),
                "the credential this token was issued for was revoked or has expired",
            ),
            Refusal::CredentialUnknown => error(
                StatusCode::UNAUTHORIZED,
                self.code(),
                "the configuration store is unreachable and this token's credential was not \
                 known to be valid before; retry when the store is back",
            ),
            Refusal::TenantIdMissing => error(
                StatusCode::UNAUTHORIZED,
                self.code(),
                "the token carries no tenant_id claim (see identity.allow_name_binding)",
            ),
            Refusal::Unavailable(e) => {
                tracing::warn!(error = %e, "Configuration database unavailable; refusing tunnel.");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    self.code(),
                    "configuration store unavailable",
                )
            }
        }
    }
}

/// The tenant a connector token opens a tunnel for, checked against the store (not the
/// cache: a tunnel is long-lived, and opening one is rare).
///
/// While the store is unreachable, a tenant this node already knows may still open tunnels
/// (as its requests keep flowing from the cache), but only with a credential known to be
/// active before the outage ([`TenantDirectory::known_active`]): revoked stays revoked. The
/// next poll after the store is back checks again and cuts the tunnel if the secret went away.
///
/// [`TenantDirectory::known_active`]: crate::tenants::TenantDirectory::known_active
pub async fn bind_tunnel(state: &AppState, claims: &Claims) -> Result<Arc<TenantEntry>, Refusal> {
    let looked_up = match (&claims.tenant_id, &claims.tenant) {
        (Some(id), _) => timed(state.tenants.by_id(id)).await,
        (None, Some(name)) if state.config.identity.allow_name_binding => {
            timed(state.tenants.get(name)).await
        }
        (None, _) => return Err(Refusal::TenantIdMissing),
    };
    let tenant = match looked_up {
        Ok(Some(tenant)) => tenant,
        Ok(None) => return Err(Refusal::TenantGone),
        Err(e) => {
            state.tenants.health.note(Err(&e));
            let cached = match (&claims.tenant_id, &claims.tenant) {
                (Some(id), _) => state.tenants.cached_by_id(id),
                (None, Some(name)) => state.tenants.cached(name),
                (None, None) => None,
            };
            let tenant = cached.ok_or(Refusal::Unavailable(e))?;
            // The store is down: the credential must have been known active before.
            if let Some(secret) = &claims.secret_id
                && !state.tenants.known_active(secret)
            {
                return Err(Refusal::CredentialUnknown);
            }
            return Ok(tenant);
        }
    };
    if let Some(secret) = &claims.secret_id {
        match timed(
            state
                .store
                .active_secrets(std::slice::from_ref(secret), relay_store::now_ms()),
        )
        .await
        {
            Ok(active) if active.contains(secret) => state.tenants.note_secret(secret, true),
            Ok(_) => {
                state.tenants.note_secret(secret, false);
                return Err(Refusal::CredentialRevoked);
            }
            Err(e) => {
                state.tenants.health.note(Err(&e));
                if !state.tenants.known_active(secret) {
                    return Err(Refusal::CredentialUnknown);
                }
            }
        }
    }
    Ok(tenant)
}

/// `query`, or [`StoreError::PoolTimeout`] after [`STORE_TIMEOUT`].
async fn timed<T>(
    query: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(STORE_TIMEOUT, query)
        .await
        .unwrap_or(Err(StoreError::PoolTimeout))
}

/// Whether a validated client token speaks for `tenant`: same tenant id (or, with name
/// binding allowed and no id in the token, the same name) and a credential still valid.
pub async fn client_token_bound(
    state: &AppState,
    tenant: &TenantEntry,
    claims: &Claims,
) -> Result<bool, StoreError> {
    let same_tenant = match &claims.tenant_id {
        Some(id) => *id == tenant.id,
        None => {
            state.config.identity.allow_name_binding
                && claims
                    .tenant
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(&tenant.name))
        }
    };
    if !same_tenant {
        return Ok(false);
    }
    match &claims.secret_id {
        Some(secret) => match timed(state.secrets.is_active(&state.store, secret)).await {
            Ok(active) => {
                state.tenants.note_secret(secret, active);
                Ok(active)
            }
            // A client known to be valid before the outage keeps working, as its tenant's
            // tunnels do; anything else is refused, never let through.
            Err(_) if state.tenants.known_active(secret) => Ok(true),
            Err(e) => Err(e),
        },
        None => Ok(true),
    }
}

/// Recent answers to "is this secret still valid?", so client tokens cost no query per
/// request, yet a revocation takes effect within [`SECRET_CACHE_TTL`] (plus the query).
#[derive(Default)]
pub struct SecretStates {
    seen: Mutex<HashMap<String, (bool, Instant)>>,
}

impl SecretStates {
    pub async fn is_active(&self, store: &Store, secret_id: &str) -> Result<bool, StoreError> {
        if let Some(active) = self.seen.lock().ok().and_then(|seen| {
            seen.get(secret_id)
                .filter(|(_, at)| at.elapsed() < SECRET_CACHE_TTL)
                .map(|(active, _)| *active)
        }) {
            return Ok(active);
        }
        let id = secret_id.to_owned();
        let active = store
            .active_secrets(std::slice::from_ref(&id), relay_store::now_ms())
            .await?
            .contains(&id);
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= SECRET_CACHE_MAX {
                seen.retain(|_, (_, at)| at.elapsed() < SECRET_CACHE_TTL);
            }
            if seen.len() < SECRET_CACHE_MAX {
                seen.insert(id, (active, Instant::now()));
            }
        }
        Ok(active)
    }
}
