//! Validating tokens against an authority's JWKS, with a key cache.
//!
//! The cache is an `Arc<KeyCache>` behind a `std::sync::RwLock` that is only held to
//! clone or swap the `Arc`, never across an await. Refreshes are serialised by an async
//! mutex and rate-limited: an unknown `kid` triggers at most one fetch per
//! [`MIN_REFRESH_INTERVAL`], so a flood of forged key ids cannot hammer the authority.
//! Keys older than [`MAX_CACHE_AGE`] are refreshed in the background while the cached ones
//! keep serving, so keys published ahead of use are known before the first token arrives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use crate::fetch::{FetchJson, HyperFetcher, get_json};
use crate::sign::{header_kid, verify};
use crate::{ALGORITHM, Claims, Jwk, Jwks, TokenError};

/// Minimum time between two fetches of the JWKS.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Age after which the cached key set is refreshed in the background.
pub const MAX_CACHE_AGE: Duration = Duration::from_secs(15 * 60);

/// Validates relay access tokens. Cheap to clone; clones share one key cache.
#[derive(Clone)]
pub struct Validator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let authority = self.inner.remote.as_ref().map(|r| r.discovery.as_str());
        f.debug_struct("Validator")
            .field("audience", &self.inner.audience)
            .field("discovery", &authority)
            .finish_non_exhaustive()
    }
}

struct Inner {
    audience: String,
    /// `None` for a fixed key set ([`Validator::from_jwks`]).
    remote: Option<Remote>,
    cache: RwLock<Arc<KeyCache>>,
    refresh: tokio::sync::Mutex<RefreshState>,
    background_refresh: AtomicBool,
    min_refresh_interval: Duration,
}

struct Remote {
    discovery: String,
    fetcher: Box<dyn FetchJson>,
}

#[derive(Default)]
struct KeyCache {
    issuer: Option<String>,
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    /// Issuer and JWKS URI, discovered once.
    discovered: Option<(String, Uri)>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl Validator {
    /// A validator for tokens issued by `authority` (base URL, e.g.
    /// `http://identity:5002`) for `audience`. Nothing is fetched until the first token.
    /// Plain HTTP only; use [`Validator::with_client`] for another connector.
    pub fn new(authority: &str, audience: &str) -> Self {
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Self::with_client(authority, audience, client)
    }

    /// Like [`Validator::new`] with a caller-supplied client (for example one with an
    /// HTTPS connector).
    pub fn with_client<C>(authority: &str, audience: &str, client: Client<C, Empty<Bytes>>) -> Self
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            authority.trim_end_matches('/')
        );
        let remote = Remote {
            discovery,
            fetcher: Box::new(HyperFetcher { client }),
        };
        Self::build(audience, Some(remote), KeyCache::default())
    }

    /// A validator over a fixed key set, never fetching anything (tests, embedded use).
    pub fn from_jwks(issuer: &str, audience: &str, jwks: &Jwks) -> Self {
        let keys = jwks
            .keys
            .iter()
            .filter_map(|jwk| usable_key(jwk).map(|key| (jwk.kid.clone().unwrap_or_default(), key)))
            .collect();
        let cache = KeyCache {
            issuer: Some(issuer.to_owned()),
            keys,
            fetched_at: Some(Instant::now()),
        };
        Self::build(audience, None, cache)
    }

    fn build(audience: &str, remote: Option<Remote>, cache: KeyCache) -> Self {
        Self {
            inner: Arc::new(Inner {
                audience: audience.to_owned(),
                remote,
                cache: RwLock::new(Arc::new(cache)),
                refresh: tokio::sync::Mutex::new(RefreshState::default()),
                background_refresh: AtomicBool::new(false),
                min_refresh_interval: MIN_REFRESH_INTERVAL,
            }),
        }
    }

    #[cfg(test)]
    fn with_min_refresh_interval(mut self, interval: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.min_refresh_interval = interval;
        }
        self
    }

    /// Checks `token` and returns its claims: RS256 signature by a key of the authority,
    /// `iss` equal to the discovered issuer, our audience in `aud`, `exp`/`nbf` within
    /// [`crate::LEEWAY_SECS`].
    ///
    /// Fails with [`TokenError::Unavailable`] only when the authority is needed and cannot
    /// be reached; every other failure is [`TokenError::Invalid`].
    pub async fn validate(&self, token: &str) -> Result<Claims, TokenError> {
        let kid = header_kid(token)?;
        let mut cache = self.snapshot();
        if cache.issuer.is_none() || !cache.keys.contains_key(&kid) {
            cache = self.refresh(Some(&kid)).await?;
        } else if self.is_stale(&cache) {
            self.spawn_background_refresh();
        }
        let issuer = cache
            .issuer
            .as_deref()
            .ok_or_else(|| TokenError::unavailable("issuer not yet discovered"))?;
        let key = cache
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::invalid("unknown key id"))?;
        verify(token, key, issuer, &self.inner.audience)
    }

    fn snapshot(&self) -> Arc<KeyCache> {
        self.inner
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_stale(&self, cache: &KeyCache) -> bool {
        self.inner.remote.is_some()
            && cache
                .fetched_at
                .is_none_or(|t| t.elapsed() >= MAX_CACHE_AGE)
    }

    fn spawn_background_refresh(&self) {
        if self.inner.background_refresh.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // Failures are logged in `refresh`; the stale keys keep serving meanwhile.
            let _ = this.refresh(None).await;
            this.inner
                .background_refresh
                .store(false, Ordering::Release);
        });
    }

    /// Fetches discovery (once) and the JWKS unless another caller just did, or the
    /// last attempt is younger than the minimum interval. `wanted` is the kid that made
    /// us look; `None` forces a refresh subject only to the rate limit.
    async fn refresh(&self, wanted: Option<&str>) -> Result<Arc<KeyCache>, TokenError> {
        let Some(remote) = &self.inner.remote else {
            return Ok(self.snapshot());
        };
        let mut state = self.inner.refresh.lock().await;
        let current = self.snapshot();
        let satisfied =
            current.issuer.is_some() && wanted.is_some_and(|k| current.keys.contains_key(k));
        if satisfied {
            return Ok(current);
        }
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.inner.min_refresh_interval)
        {
            return match current.issuer {
                Some(_) => Ok(current),
                None => Err(TokenError::unavailable("authority not reachable recently")),
            };
        }
        state.last_attempt = Some(Instant::now());
        match fetch_keys(remote, &mut state).await {
            Ok(fresh) => {
                tracing::debug!(keys = fresh.keys.len(), "Token signing keys refreshed.");
                let fresh = Arc::new(fresh);
                *self
                    .inner
                    .cache
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = fresh.clone();
                Ok(fresh)
            }
            Err(reason) => {
                tracing::warn!(authority = %remote.discovery, error = %reason, "Fetching token signing keys failed.");
                match current.issuer {
                    Some(_) if wanted.is_none_or(|k| current.keys.contains_key(k)) => Ok(current),
                    _ => Err(TokenError::Unavailable(reason)),
                }
            }
        }
    }
}

async fn fetch_keys(remote: &Remote, state: &mut RefreshState) -> Result<KeyCache, String> {
    let (issuer, jwks_uri) = match &state.discovered {
        Some(found) => found.clone(),
        None => {
            let found = discover(remote).await?;
            state.discovered = Some(found.clone());
            found
        }
    };
    let raw: RawJwks = get_json(remote.fetcher.as_ref(), jwks_uri).await?;
    let keys = raw
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(|jwk| usable_key(&jwk).map(|key| (jwk.kid.unwrap_or_default(), key)))
        .collect();
    Ok(KeyCache {
        issuer: Some(issuer),
        keys,
        fetched_at: Some(Instant::now()),
    })
}

async fn discover(remote: &Remote) -> Result<(String, Uri), String> {
    let uri: Uri = remote
        .discovery
        .parse()
        .map_err(|e| format!("invalid authority URL {}: {e}", remote.discovery))?;
    let discovery: Discovery = get_json(remote.fetcher.as_ref(), uri).await?;
    let jwks_uri = discovery
        .jwks_uri
        .parse()
        .map_err(|e| format!("invalid jwks_uri {}: {e}", discovery.jwks_uri))?;
    Ok((discovery.issuer, jwks_uri))
}

/// The decoding key of an RSA signing key with a `kid` fit for RS256, else `None`.
fn usable_key(jwk: &Jwk) -> Option<DecodingKey> {
    let fits = jwk.kty == "RSA"
        && jwk.kid.as_deref().is_some_and(|kid| !kid.is_empty())
        && jwk.key_use.as_deref().is_none_or(|u| u == "sig")
        && jwk.alg.as_deref().is_none_or(|a| a == ALGORITHM);
    if !fits {
        return None;
    }
    DecodingKey::from_rsa_components(&jwk.n, &jwk.e).ok()
}

#[cfg(test)]
mod tests;
