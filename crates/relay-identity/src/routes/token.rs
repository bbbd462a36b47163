//! `POST /connect/token`: the OAuth2 client-credentials grant (RFC 6749 §4.4).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use relay_store::{CredentialScope, now_ms};
use std::time::Instant;

use relay_token::{
    AUDIENCE_MANAGEMENT, AUDIENCE_RELAY, Claims, SCOPE_CLIENT, SCOPE_CONNECTOR,
    SCOPE_MANAGEMENT_READ, SCOPE_MANAGEMENT_WRITE,
};
use serde::{Deserialize, Serialize};

use super::client_auth::client_credentials;
use crate::AppState;
use crate::error::OAuthError;
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
pub(crate) async fn issue(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&state, &headers, body).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(error = e.code(), "Token request refused.");
            e.into_response()
        }
    }
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
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
    if let Err(retry_after) = state.limiter().check(&credentials.id, Instant::now()) {
        tracing::info!(client_id = %credentials.id, reason = "rate limited", "Token request rejected.");
        return Err(OAuthError::rate_limited(retry_after));
    }
    let now = now_ms();
    if management {
        return management_token(state, &credentials.id, &credentials.secret, basic, scope).await;
    }
    let verified = match state
        .store()
        .verify_secret(&credentials.id, &credentials.secret, now, None)
        .await
    {
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

/// Authenticates a management client and issues a token for the management API, limited to
/// the scopes the client holds (and to its tenant, when it is tenant-scoped).
async fn management_token(
    state: &AppState,
    client_id: &str,
    secret: &str,
    basic: bool,
    scope: String,
) -> Result<Response, OAuthError> {
    let client = match state
        .store()
        .verify_management_client(client_id, secret, now_ms())
        .await
    {
        Ok(Some(client)) => client,
        Ok(None) => {
            // A tenant asking for management scopes authenticated fine but may not have them.
            if let Ok(Some(_)) = state
                .store()
                .verify_secret(client_id, secret, now_ms(), None)
                .await
            {
                return Err(OAuthError::invalid_scope());
            }
            tracing::info!(%client_id, reason = "bad credentials", "Management token request rejected.");
            return Err(OAuthError::invalid_client(basic));
        }
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "Verifying a management client failed.");
            return Err(OAuthError::server_error());
        }
    };
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
