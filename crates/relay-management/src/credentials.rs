//! Whether a management credential still speaks for what issued it.
//!
//! A signature and an unexpired `exp` are not enough: a management client can be revoked
//! while its tokens (up to an hour) are unexpired, and a tenant can be deleted and its name
//! re-used by someone else. So before any action the caller is re-checked against the store:
//!
//! - a bearer token's management client (by the token's `secret_id`, or by `client_id` for
//!   an operator client, whose tokens carry no id) exists, is not revoked, was created before
//!   the token, and is bound to the token's `tenant_id`, which still exists;
//! - an API key is active, its tenant still exists, and so does every credential in the chain
//!   that created it (a key created by a token works only while that token's client does).
//!
//! Store answers are cached for at most [`CACHE_TTL`], so a revocation elsewhere takes effect
//! within it; this node's own deletions and revocations clear the cache at once. A store that
//! fails or does not answer within [`STORE_TIMEOUT`] fails the request with 503: a credential
//! not known to be active is never accepted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use relay_store::{ApiKeyInfo, ManagementClient, Store, StoreError, Tenant, now_ms};
use relay_token::Claims;

use crate::error::{ApiError, error_chain};

/// How long a store answer about a credential is trusted.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Longest wait for the store; a silent database counts as unavailable.
const STORE_TIMEOUT: Duration = Duration::from_secs(3);
/// Entries kept per cache at most (expired ones are pruned first).
const CACHE_MAX: usize = 4096;
/// Most keys above a key in its chain of keys created by keys; a key with this many above it
/// cannot create more.
pub const MAX_KEY_CHAIN: usize = 8;

/// What a caller authenticated with, as recorded on the API keys it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token of this management client (id).
    Client(String),
    /// This API key (id), with `depth` keys above it in the chain that created it.
    Key { id: String, depth: usize },
}

/// What went away, so that a credential is no longer accepted (all answered 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// The token's management client: revoked, deleted, or re-created after the token.
    Client,
    /// The credential's tenant.
    Tenant,
    /// A credential in the chain that created the API key.
    Creator,
}

impl From<Gone> for ApiError {
    fn from(r: Gone) -> Self {
        ApiError::unauthorized(match r {
            Gone::Client => "the management client this token was issued to was revoked or deleted",
            Gone::Tenant => {
                "the credential's tenant no longer exists; a re-created tenant of the same name needs its own credentials"
            }
            Gone::Creator => {
                "the credential that created this API key was revoked, expired or deleted"
            }
        })
    }
}

/// A management client as a token or a key's creator may use it.
pub struct ActiveClient {
    pub client: ManagementClient,
    /// The client's tenant, if it is tenant-scoped.
    pub tenant: Option<Tenant>,
}

/// Recent store answers about management credentials. One per service; cheap to share.
#[derive(Default)]
pub struct CredentialStates {
    clients_by_id: Recent<ManagementClient>,
    clients_by_name: Recent<ManagementClient>,
    keys: Recent<ApiKeyInfo>,
    tenants: Recent<Tenant>,
}

impl CredentialStates {
    /// Drops every cached answer (after this node deleted or revoked something).
    pub fn forget(&self) {
        self.clients_by_id.clear();
        self.clients_by_name.clear();
        self.keys.clear();
        self.tenants.clear();
    }

    /// The management client a validated token was issued to, if it still speaks for the
    /// token's tenant.
    pub async fn token_client(
        &self,
        store: &Store,
        claims: &Claims,
    ) -> Result<ActiveClient, ApiError> {
        let client = match &claims.secret_id {
            Some(id) => {
                self.clients_by_id
                    .get(id, || store.management_client(id))
                    .await?
            }
            None => {
                let name = claims.client_id.to_ascii_lowercase();
                self.clients_by_name
                    .get(&name, || store.management_client_by_name(&name))
                    .await?
            }
        };
        // A token older than its client was issued to an earlier client of that name.
        let client =
            client.filter(|c| c.tenant_id == claims.tenant_id && c.created_at / 1000 <= claims.iat);
        match client {
            Some(client) => Ok(self.active_client(store, client).await??),
            // A tenant's clients go with it: say which went first.
            None => match &claims.tenant_id {
                Some(id) if self.tenant(store, id).await?.is_none() => Err(Gone::Tenant.into()),
                _ => Err(Gone::Client.into()),
            },
        }
    }

    /// `client` with its tenant, unless revoked or its tenant is gone.
    async fn active_client(
        &self,
        store: &Store,
        client: ManagementClient,
    ) -> Result<Result<ActiveClient, Gone>, ApiError> {
        if client.revoked_at.is_some() {
            return Ok(Err(Gone::Client));
        }
        let tenant = match &client.tenant_id {
            None => None,
            Some(id) => match self.tenant(store, id).await? {
                Some(tenant) => Some(tenant),
                None => return Ok(Err(Gone::Tenant)),
            },
        };
        Ok(Ok(ActiveClient { client, tenant }))
    }

    /// The tenant with this id, if it exists.
    pub async fn tenant(&self, store: &Store, id: &str) -> Result<Option<Tenant>, ApiError> {
        self.tenants.get(id, || store.tenant_by_id(id)).await
    }

    /// Whether `key` is accepted: not revoked or expired, and its tenant and every creator
    /// still there (for lists; a store failure is an error, not a `false`).
    pub async fn key_usable(&self, store: &Store, key: &ApiKeyInfo) -> Result<bool, ApiError> {
        let now = now_ms();
        if key.revoked_at.is_some() || key.expires_at.is_some_and(|e| e <= now) {
            return Ok(false);
        }
        Ok(self.chain(store, key).await?.is_ok())
    }

    /// How many keys lie above `key` (active, just verified) in the chain that created it,
    /// if every credential in that chain is still active and its tenant still exists.
    pub async fn key_depth(&self, store: &Store, key: &ApiKeyInfo) -> Result<usize, ApiError> {
        Ok(self.chain(store, key).await??)
    }

    async fn chain(
        &self,
        store: &Store,
        key: &ApiKeyInfo,
    ) -> Result<Result<usize, Gone>, ApiError> {
        if let Some(id) = &key.tenant_id
            && self.tenant(store, id).await?.is_none()
        {
            return Ok(Err(Gone::Tenant));
        }
        let mut current = key.clone();
        for depth in 0..=MAX_KEY_CHAIN {
            if let Some(client) = &current.created_by_client {
                let Some(client) = self
                    .clients_by_id
                    .get(client, || store.management_client(client))
                    .await?
                else {
                    return Ok(Err(Gone::Creator));
                };
                let active = self.active_client(store, client).await?;
                return Ok(active.map(|_| depth).map_err(|_| Gone::Creator));
            }
            let Some(parent) = &current.created_by_key else {
                return Ok(Ok(depth));
            };
            let now = now_ms();
            let Some(parent) = self
                .keys
                .get(parent, || store.api_key(parent))
                .await?
                .filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > now))
            else {
                return Ok(Err(Gone::Creator));
            };
            if let Some(id) = &parent.tenant_id
                && self.tenant(store, id).await?.is_none()
            {
                return Ok(Err(Gone::Creator));
            }
            current = parent;
        }
        Ok(Err(Gone::Creator))
    }
}

/// A store failure while checking a credential: 503, whatever the cause, since the
/// credential could not be confirmed. Logged here, once.
pub fn unconfirmed(e: &StoreError) -> ApiError {
    tracing::warn!(error = %error_chain(e), "Configuration database unavailable; refusing the credential.");
    ApiError::store_unavailable()
}

/// `query`, or [`StoreError::PoolTimeout`] after [`STORE_TIMEOUT`].
pub async fn timed<T>(query: impl Future<Output = Result<T, StoreError>>) -> Result<T, ApiError> {
    tokio::time::timeout(STORE_TIMEOUT, query)
        .await
        .unwrap_or(Err(StoreError::PoolTimeout))
        .map_err(|e| unconfirmed(&e))
}

/// Answers of one lookup by key, each trusted for [`CACHE_TTL`]. Failures are not kept.
struct Recent<T> {
    seen: Mutex<HashMap<String, (Option<T>, Instant)>>,
}

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Recent<T> {
    async fn get<F, Fut>(&self, key: &str, fetch: F) -> Result<Option<T>, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, StoreError>>,
    {
        if let Some(found) = self.seen.lock().ok().and_then(|seen| {
            seen.get(key)
                .filter(|(_, at)| at.elapsed() < CACHE_TTL)
                .map(|(found, _)| found.clone())
        }) {
            return Ok(found);
        }
        let found = timed(fetch()).await?;
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= CACHE_MAX {
                seen.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            }
            if seen.len() < CACHE_MAX {
                seen.insert(key.to_owned(), (found.clone(), Instant::now()));
            }
        }
        Ok(found)
    }

    fn clear(&self) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.clear();
        }
    }
}
