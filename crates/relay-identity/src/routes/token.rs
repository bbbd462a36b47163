//! `POST /connect/token`: the OAuth2 client-credentials grant (RFC 6749 §4.4).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use relay_store::now_ms;
use relay_token::{AUDIENCE_RELAY, Claims, SCOPE_CLIENT, SCOPE_CONNECTOR};
use serde::{Deserialize, Serialize};

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
    let credentials = client_credentials(headers, &form)?;
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

struct Credentials {
    id: String,
    secret: String,
    /// Sent as HTTP Basic (`client_secret_basic`) rather than in the form.
    basic: bool,
}

/// Client credentials from HTTP Basic or the form (`client_secret_post`), not both.
fn client_credentials(headers: &HeaderMap, form: &TokenForm) -> Result<Credentials, OAuthError> {
    let form_id = non_empty(form.client_id.as_deref());
    let form_secret = non_empty(form.client_secret.as_deref());
    match basic_credentials(headers)? {
        Some((id, secret)) => {
            if form_secret.is_some() {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method only",
                ));
            }
            if form_id.is_some_and(|f| f != id) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the authenticated client",
                ));
            }
            Ok(Credentials {
                id,
                secret,
                basic: true,
            })
        }
        None => match (form_id, form_secret) {
            (Some(id), Some(secret)) => Ok(Credentials {
                id: id.to_owned(),
                secret: secret.to_owned(),
                basic: false,
            }),
            _ => Err(OAuthError::invalid_request(
                "client_id and client_secret are required",
            )),
        },
    }
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
/// `Ok(None)` without a Basic header; a malformed one fails client authentication.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || OAuthError::invalid_client(true);
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let id = form_decode(id)
        .filter(|s| !s.is_empty())
        .ok_or_else(malformed)?;
    let secret = form_decode(secret)
        .filter(|s| !s.is_empty())
        .ok_or_else(malformed)?;
    Ok(Some((id, secret)))
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte.
fn form_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%3Ac%25").as_deref(), Some("a b:c%"));
        assert_eq!(form_decode("plain-_.~").as_deref(), Some("plain-_.~"));
        assert_eq!(form_decode("bad%2"), None);
        assert_eq!(form_decode("bad%+1"), None);
        assert_eq!(form_decode("%FF"), None, "not UTF-8");
    }

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

    #[test]
    fn basic_header_parsing() {
        let mut headers = HeaderMap::new();
        let encoded = STANDARD.encode("acme:s%2Bcret");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("header"),
        );
        let parsed = basic_credentials(&headers).ok().flatten();
        assert_eq!(parsed, Some(("acme".to_owned(), "s+cret".to_owned())));

        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(
            basic_credentials(&headers).err().map(|e| e.code()),
            Some("invalid_client")
        );

        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(matches!(basic_credentials(&headers), Ok(None)));
    }
}
