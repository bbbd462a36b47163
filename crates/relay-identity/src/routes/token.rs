//! `POST /connect/token`: the OAuth2 client-credentials grant (RFC 6749 §4.4).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use relay_store::now_ms;
use relay_token::{AUDIENCE_RELAY, Claims, SCOPE_CLIENT, SCOPE_CONNECTOR};
use serde::{Deserialize, Serialize};

use super::client_auth::client_credentials;
use crate::AppState;
use crate::error::OAuthError;
use crate::rotation::KEY_EXPIRY_LEEWAY_MS;
use crate::state::error_chain;

/// Scopes a tenant client may request; the first is the default.
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
    let scope = granted_scope(form.scope.as_deref())?;
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
    let now = now_ms();
    let tenant = match state
        .store()
        .verify_secret(&credentials.id, &credentials.secret, now)
        .await
    {
        Ok(Some(tenant)) => tenant,
        Ok(None) => {
            tracing::info!(client_id = %credentials.id, reason = "bad credentials", "Token request rejected.");
            return Err(OAuthError::invalid_client(basic));
        }
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "Verifying a client secret failed.");
            return Err(OAuthError::server_error());
        }
    };

    let (token, expires_in) = sign(state, &tenant.name, &scope).await?;
    tracing::debug!(client_id = %tenant.name, scope = %scope, "Token issued.");
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
    Ok(response)
}

/// Signs a token for `client`. Its lifetime is capped so that it never outlives its key's
/// presence in the JWKS (matters only after `token_lifetime` was raised).
async fn sign(state: &AppState, client: &str, scope: &str) -> Result<(String, i64), OAuthError> {
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
        aud: vec![AUDIENCE_RELAY.to_owned()],
        sub: client.to_owned(),
        client_id: client.to_owned(),
        tenant: Some(client.to_owned()),
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

/// The requested scopes (default `connector`), deduplicated, or `invalid_scope`.
fn granted_scope(requested: Option<&str>) -> Result<String, OAuthError> {
    let requested = requested
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(TENANT_SCOPES[0]);
    let mut granted: Vec<&str> = Vec::new();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        if !TENANT_SCOPES.contains(&scope) {
            return Err(OAuthError::invalid_scope());
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(granted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_default_and_deduplicate() {
        assert_eq!(granted_scope(None).ok().as_deref(), Some("connector"));
        assert_eq!(granted_scope(Some("  ")).ok().as_deref(), Some("connector"));
        assert_eq!(
            granted_scope(Some("client connector client"))
                .ok()
                .as_deref(),
            Some("client connector")
        );
        assert!(granted_scope(Some("connector management:write")).is_err());
    }
}
