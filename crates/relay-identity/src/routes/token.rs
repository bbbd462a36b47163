//! `POST /connect/token`: the OAuth2 client-credentials grant (RFC 6749 §4.4).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use relay_store::{CredentialScope, MatchedSecret, SecretCandidates, now_ms};

use relay_token::{
    AUDIENCE_MANAGEMENT, AUDIENCE_RELAY, Claims, SCOPE_CLIENT, SCOPE_CONNECTOR,
    SCOPE_MANAGEMENT_READ, SCOPE_MANAGEMENT_WRITE,
};
use serde::{Deserialize, Serialize};

use super::client_auth::client_credentials;
use crate::AppState;
use crate::error::OAuthError;
use crate::hashing::{HashError, Lane};
use crate::metrics::{self, SecretCheck};
use crate::rotation::KEY_EXPIRY_LEEWAY_MS;
use crate::state::error_chain;

/// Scopes a tenant client may request. A credential grants exactly one of them.
const TENANT_SCOPES: [&str; 2] = [SCOPE_CONNECTOR, SCOPE_CLIENT];

/// Form parameters; unknown ones are ignored (RFC 6749 §3.2), repeated ones rejected.
#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    scope: String,
}

/// Authenticates the tenant client and answers with a signed access token.
///
/// Order of checks: the source address's bucket, then parsing, then a database lookup (no
/// hash yet: the tenant and its secrets that are neither revoked nor expired). A presented
/// secret that verified against one of those lately is accepted without a hash
/// ([`Verified`]). Otherwise the (client id, source) bucket, then at most one secret check
/// per stored credential of that one client id, in the bounded [`HashPool`] where each
/// source holds a share at most; only a failed check keeps the bucket's token spent. Checks
/// for a client id under attack (many failures from all sources) use the pool's small lane;
/// those from a source where a secret verified lately may use its reserve.
/// Unknown client ids share one bucket and the pool's one-place lane; see [`unknown_client`].
///
/// [`HashPool`]: crate::hashing::HashPool
/// [`Verified`]: crate::verified::Verified
pub(crate) async fn issue(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let source = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    match handle(&state, source, &headers, body).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(error = e.code(), "Token request refused.");
            e.into_response()
        }
    }
}

async fn handle(
    state: &AppState,
    source: Option<IpAddr>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    // Without a peer address (a router served without `ConnectInfo`) only the other limits
    // apply. Rejections in a flood are logged at debug: one line per request would flood the log.
    if let Some(ip) = source
        && let Err(retry_after) = state.limiter().check_source(ip, Instant::now())
    {
        tracing::debug!(source = %ip, reason = "rate limited (source address)", "Token request rejected.");
        return Err(OAuthError::rate_limited(retry_after));
    }
    if !is_form(headers) {
        return Err(OAuthError::invalid_request(
            "expected application/x-www-form-urlencoded",
        ));
    }
    let body =
        body.map_err(|_| OAuthError::invalid_request("request body unreadable or too large"))?;
    let form: TokenForm = serde_urlencoded::from_bytes(&body)
        .map_err(|_| OAuthError::invalid_request("malformed form body or repeated parameter"))?;
    match non_empty(form.grant_type.as_deref()) {
        None => return Err(OAuthError::invalid_request("grant_type is missing")),
        Some("client_credentials") => {}
        Some(_) => return Err(OAuthError::unsupported_grant_type()),
    }
    let management = is_management_request(form.scope.as_deref());
    let (scope, wanted) = if management {
        (management_scope(form.scope.as_deref())?, None)
    } else {
        (String::new(), tenant_scope(form.scope.as_deref())?)
    };
    let credentials = client_credentials(
        headers,
        non_empty(form.client_id.as_deref()),
        non_empty(form.client_secret.as_deref()),
    )?;
    let basic = credentials.basic;

    if relay_store::validate_tenant_name(&credentials.id).is_err() {
        tracing::info!(reason = "malformed client_id", "Token request rejected.");
        return Err(OAuthError::invalid_client(basic));
    }
    let caller = Caller {
        id: &credentials.id,
        source,
    };
    if management {
        return management_token(state, &caller, credentials.secret, basic, scope).await;
    }
    let now = now_ms();
    let candidates = state
        .store()
        .secret_candidates(&credentials.id, now, None)
        .await
        .map_err(|e| {
            tracing::error!(error = %error_chain(&e), "Looking up a client's secrets failed.");
            OAuthError::server_error()
        })?;
    let Some(candidates) = candidates.filter(|c| !c.is_empty()) else {
        return Err(unknown_client(state, &caller, credentials.secret, basic).await);
    };
    let matched = tenant_secret(state, &caller, candidates, credentials.secret).await?;
    let verified = match matched {
        None => Ok(None),
        Some(matched) => state.store().record_secret_use(matched, now).await,
    };
    let verified = match verified {
        Ok(Some(verified)) => verified,
        Ok(None) => {
            tracing::info!(client_id = %credentials.id, reason = "bad credentials", "Token request rejected.");
            return Err(OAuthError::invalid_client(basic));
        }
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "Verifying a client secret failed.");
            return Err(OAuthError::server_error());
        }
    };
    if wanted.is_some_and(|w| w != verified.scope) {
        tracing::info!(client_id = %credentials.id, reason = "scope not granted to this secret", "Token request rejected.");
        return Err(OAuthError::invalid_scope());
    }
    let scope = verified.scope.as_str().to_owned();
    let tenant = &verified.tenant;
    let (token, expires_in) = sign(
        state,
        &tenant.name,
        Some(TenantBinding {
            name: &tenant.name,
            id: &tenant.id,
            secret_id: &verified.secret_id,
        }),
        &scope,
        AUDIENCE_RELAY,
    )
    .await?;
    tracing::debug!(client_id = %tenant.name, scope = %scope, "Token issued.");
    Ok(token_response(token, expires_in, scope))
}

/// Who asks for a token: the client id as presented, from which source address.
struct Caller<'a> {
    id: &'a str,
    /// `None` when the router is served without peer addresses.
    source: Option<IpAddr>,
}

/// The tenant secret `secret` is among `candidates`: recognised from a recent match without
/// a hash, else by one check in the pool, which is then remembered.
async fn tenant_secret(
    state: &AppState,
    caller: &Caller<'_>,
    candidates: SecretCandidates,
    secret: String,
) -> Result<Option<MatchedSecret>, OAuthError> {
    let verified = state.verified();
    let digests: Vec<(String, [u8; 32])> = candidates
        .hashes()
        .map(|(id, phc)| (id.to_owned(), verified.digest(caller.id, id, phc, &secret)))
        .collect();
    let now = Instant::now();
    if let Some((secret_id, _)) = digests.iter().find(|(_, d)| verified.recognise(d, now)) {
        tracing::debug!(client_id = %caller.id, "Secret recognised from a recent check.");
        metrics::secret_check(SecretCheck::Remembered);
        if let Some(source) = caller.source {
            verified.source_proved(source, now);
        }
        return Ok(candidates.recently_matched(secret_id));
    }
    let proven = caller
        .source
        .is_some_and(|source| verified.proven_source(source, now));
    let matched = check_secret(
        state,
        caller,
        if proven { Lane::Proven } else { Lane::Known },
        move || candidates.check(&secret),
        Option::is_some,
    )
    .await?;
    if let Some(matched) = &matched
        && let Some((_, digest)) = digests.iter().find(|(id, _)| id == matched.secret_id())
    {
        let now = Instant::now();
        verified.insert(*digest, now);
        if let Some(source) = caller.source {
            verified.source_proved(source, now);
        }
    }
    Ok(matched)
}

/// Runs one secret check for `caller` in the bounded pool. Refused with `429` +
/// `Retry-After` while the caller's (client id, source) bucket is empty, and with `503` +
/// `Retry-After` when the pool's queue is full or the source holds its share. The bucket's
/// token stays spent only if the check ran and `matched` says it failed.
async fn check_secret<T, F>(
    state: &AppState,
    caller: &Caller<'_>,
    lane: Lane,
    check: F,
    matched: fn(&T) -> bool,
) -> Result<T, OAuthError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if let Err(retry_after) = state
        .limiter()
        .check(caller.id, caller.source, Instant::now())
    {
        tracing::info!(client_id = %caller.id, reason = "rate limited", "Token request rejected.");
        metrics::secret_check(SecretCheck::Limited);
        return Err(OAuthError::rate_limited(retry_after));
    }
    // Taken before the check so that concurrent checks for one id cannot all pass as "not
    // under attack"; only a failure keeps it spent.
    let attack_token = state.limiter().take_attack_token(caller.id, Instant::now());
    let lane = match lane {
        Lane::Known if !attack_token => Lane::Suspect,
        lane => lane,
    };
    let checked = state.hash_pool().run(lane, caller.source, check).await;
    let failed = checked.as_ref().is_ok_and(|t| !matched(t));
    state
        .limiter()
        .checked(caller.id, caller.source, failed, attack_token);
    match &checked {
        Ok(_) if failed => metrics::secret_check(SecretCheck::Failed),
        Ok(_) => metrics::secret_check(SecretCheck::Matched),
        Err(HashError::Busy) => metrics::secret_check(SecretCheck::Busy),
        Err(HashError::Failed) => {}
    }
    match checked {
        Ok(checked) => Ok(checked),
        Err(HashError::Busy) => {
            tracing::debug!(reason = "secret checks busy", "Token request rejected.");
            Err(OAuthError::busy())
        }
        Err(HashError::Failed) => {
            tracing::error!("A secret check failed (panicked).");
            Err(OAuthError::server_error())
        }
    }
}

/// The answer to an unknown client id: `invalid_client`, as for a wrong secret, after about
/// as long as a secret check takes. The (client id, source) bucket is spent as by a failed
/// check, so its `429` does not tell unknown ids from known ones either. The dummy check runs
/// only while the bucket shared by all unknown ids has a token and the pool's one-place lane
/// for them is free; otherwise a timer stands in for it. So random ids cost no more than one
/// pool place and a bounded rate of hashes, and the answer still does not tell whether the
/// client id exists (apart from timing differences under load).
async fn unknown_client(
    state: &AppState,
    caller: &Caller<'_>,
    secret: String,
    basic: bool,
) -> OAuthError {
    let client_id = caller.id;
    if let Err(retry_after) = state
        .limiter()
        .check(client_id, caller.source, Instant::now())
    {
        tracing::info!(%client_id, reason = "rate limited", "Token request rejected.");
        metrics::secret_check(SecretCheck::Limited);
        return OAuthError::rate_limited(retry_after);
    }
    metrics::secret_check(SecretCheck::Failed);
    let started = tokio::time::Instant::now();
    let hashed = state.limiter().check_unknown(Instant::now()).is_ok()
        && state
            .hash_pool()
            .run(Lane::Unknown, caller.source, move || {
                relay_store::verify_dummy(&secret)
            })
            .await
            .is_ok();
    if hashed {
        tracing::info!(%client_id, reason = "bad credentials", "Token request rejected.");
    } else {
        tokio::time::sleep_until(started + state.hash_pool().typical_check()).await;
        tracing::debug!(%client_id, reason = "unknown client, limited", "Token request rejected.");
    }
    OAuthError::invalid_client(basic)
}

/// Authenticates a management client and issues a token for the management API, limited to
/// the scopes the client holds (and to its tenant, when it is tenant-scoped). One secret
/// check: the management client's when one has this name, else the tenant's.
async fn management_token(
    state: &AppState,
    caller: &Caller<'_>,
    secret: String,
    basic: bool,
    scope: String,
) -> Result<Response, OAuthError> {
    let client_id = caller.id;
    let lookup_failed = |e: relay_store::StoreError| {
        tracing::error!(error = %error_chain(&e), "Looking up a management client failed.");
        OAuthError::server_error()
    };
    let candidate = state
        .store()
        .management_candidate(client_id)
        .await
        .map_err(lookup_failed)?;
    let client = match candidate {
        Some(candidate) => {
            check_secret(
                state,
                caller,
                Lane::Known,
                move || candidate.check(&secret),
                Option::is_some,
            )
            .await?
        }
        None => {
            // A tenant asking for management scopes authenticated fine but may not have them.
            let tenant = state
                .store()
                .secret_candidates(client_id, now_ms(), None)
                .await
                .map_err(lookup_failed)?;
            let Some(tenant) = tenant.filter(|t| !t.is_empty()) else {
                return Err(unknown_client(state, caller, secret, basic).await);
            };
            let check = move || tenant.check(&secret).is_some();
            if check_secret(state, caller, Lane::Known, check, |m| *m).await? {
                return Err(OAuthError::invalid_scope());
            }
            None
        }
    };
    let Some(client) = client else {
        tracing::info!(%client_id, reason = "bad credentials", "Management token request rejected.");
        return Err(OAuthError::invalid_client(basic));
    };
    let client = state
        .store()
        .record_management_use(client, now_ms())
        .await
        .map_err(|e| {
            tracing::error!(error = %error_chain(&e), "Verifying a management client failed.");
            OAuthError::server_error()
        })?;
    let held: Vec<&str> = client.scopes.split_ascii_whitespace().collect();
    if scope.split(' ').any(|s| !held.contains(&s)) {
        return Err(OAuthError::invalid_scope());
    }
    let tenant = match &client.tenant_id {
        None => None,
        Some(id) => match state.store().tenant_by_id(id).await {
            Ok(Some(t)) => Some(t),
            Ok(None) => return Err(OAuthError::invalid_client(basic)),
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "Looking up a client's tenant failed.");
                return Err(OAuthError::server_error());
            }
        },
    };
    let (token, expires_in) = sign(
        state,
        &client.name,
        tenant.as_ref().map(|t| TenantBinding {
            name: &t.name,
            id: &t.id,
            secret_id: &client.id,
        }),
        &scope,
        AUDIENCE_MANAGEMENT,
    )
    .await?;
    tracing::debug!(client_id = %client.name, scope = %scope, "Management token issued.");
    Ok(token_response(token, expires_in, scope))
}

fn token_response(token: String, expires_in: i64, scope: String) -> Response {
    let mut response = Json(TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in,
        scope,
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The tenant a token acts for: its name, its immutable id and the credential used.
struct TenantBinding<'a> {
    name: &'a str,
    id: &'a str,
    secret_id: &'a str,
}

/// Signs a token for `client`. Its lifetime is capped so that it never outlives its key's
/// presence in the JWKS (matters only after `token_lifetime` was raised).
async fn sign(
    state: &AppState,
    client: &str,
    tenant: Option<TenantBinding<'_>>,
    scope: &str,
    audience: &str,
) -> Result<(String, i64), OAuthError> {
    let mut ring = state.key_ring();
    if ring.signer(now_ms()).is_none() {
        if let Err(e) = state.rotate_keys().await {
            tracing::error!(error = %error_chain(&e), "No signing key, and creating one failed.");
        }
        ring = state.key_ring();
    }
    let now = now_ms();
    let Some(key) = ring.signer(now) else {
        return Err(OAuthError::temporarily_unavailable());
    };
    let now_s = now / 1000;
    let lifetime = i64::try_from(state.config().token_lifetime.as_secs()).unwrap_or(i64::MAX);
    let mut exp = now_s.saturating_add(lifetime);
    if let Some(key_expires) = key.schedule.expires_at {
        exp = exp.min((key_expires - KEY_EXPIRY_LEEWAY_MS) / 1000);
    }
    let claims = Claims {
        iss: state.issuer().to_owned(),
        aud: vec![audience.to_owned()],
        sub: client.to_owned(),
        client_id: client.to_owned(),
        tenant: tenant.as_ref().map(|t| t.name.to_owned()),
        tenant_id: tenant.as_ref().map(|t| t.id.to_owned()),
        secret_id: tenant.as_ref().map(|t| t.secret_id.to_owned()),
        scope: scope.to_owned(),
        iat: now_s,
        nbf: now_s,
        exp,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let token = relay_token::sign(&key.pair, &claims).map_err(|e| {
        tracing::error!(error = %error_chain(&e), "Signing a token failed.");
        OAuthError::server_error()
    })?;
    Ok((token, exp - now_s))
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

/// Scopes a management client may request.
const MANAGEMENT_SCOPES: [&str; 2] = [SCOPE_MANAGEMENT_READ, SCOPE_MANAGEMENT_WRITE];

/// Whether the request asks for any management scope (then the client is a management
/// client, not a tenant).
fn is_management_request(requested: Option<&str>) -> bool {
    requested.is_some_and(|r| {
        r.split_ascii_whitespace()
            .any(|s| s.starts_with("management:"))
    })
}

/// The requested management scopes, deduplicated, or `invalid_scope` if any other is mixed in.
fn management_scope(requested: Option<&str>) -> Result<String, OAuthError> {
    let mut granted: Vec<&str> = Vec::new();
    for scope in requested.unwrap_or_default().split_ascii_whitespace() {
        if !MANAGEMENT_SCOPES.contains(&scope) {
            return Err(OAuthError::invalid_scope());
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(granted.join(" "))
}

/// The one tenant scope requested (`None`: whatever the credential grants), or
/// `invalid_scope`: a credential grants exactly one, so asking for both can never succeed.
fn tenant_scope(requested: Option<&str>) -> Result<Option<CredentialScope>, OAuthError> {
    let mut wanted: Option<CredentialScope> = None;
    for scope in requested.unwrap_or_default().split_ascii_whitespace() {
        if !TENANT_SCOPES.contains(&scope) {
            return Err(OAuthError::invalid_scope());
        }
        let scope = scope
            .parse::<CredentialScope>()
            .map_err(|_| OAuthError::invalid_scope())?;
        if wanted.is_some_and(|w| w != scope) {
            return Err(OAuthError::invalid_scope());
        }
        wanted = Some(scope);
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_checked_and_deduplicated() {
        assert_eq!(tenant_scope(None).ok(), Some(None));
        assert_eq!(tenant_scope(Some("  ")).ok(), Some(None));
        assert_eq!(
            tenant_scope(Some("client client")).ok(),
            Some(Some(CredentialScope::Client))
        );
        assert!(
            tenant_scope(Some("client connector")).is_err(),
            "no credential grants both"
        );
        assert!(tenant_scope(Some("connector management:write")).is_err());
        assert!(is_management_request(Some("management:read")));
        assert!(!is_management_request(Some("connector")));
        assert_eq!(
            management_scope(Some("management:write management:read management:write"))
                .ok()
                .as_deref(),
            Some("management:write management:read")
        );
        assert!(management_scope(Some("management:read connector")).is_err());
    }
}
