//! Who is calling: a bearer token from the authority (validated against its JWKS) or an API
//! key (`Authorization: ApiKey rk_…` or `X-Api-Key: rk_…`), re-checked against the store
//! (see [`crate::credentials`]) and reduced to a [`Principal`].

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use relay_token::{SCOPE_MANAGEMENT_READ, SCOPE_MANAGEMENT_WRITE, TokenError};

use crate::AppState;
use crate::credentials::{Credential, timed};
use crate::error::ApiError;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Client id or API key name (for logs).
    pub name: String,
    pub read: bool,
    pub write: bool,
    /// Lower-cased name of the only tenant this caller may see, if scoped: the current
    /// name of the tenant with [`Principal::tenant_id`].
    pub tenant: Option<String>,
    /// Id of that tenant: a re-created tenant of the same name is another tenant, which the
    /// caller may not see.
    pub tenant_id: Option<String>,
    /// The credential used, recorded as the creator of API keys this caller creates.
    pub credential: Credential,
}

impl Principal {
    pub fn require_read(&self) -> Result<(), ApiError> {
        if self.read || self.write {
            Ok(())
        } else {
            Err(ApiError::forbidden("scope management:read required"))
        }
    }

    pub fn require_write(&self) -> Result<(), ApiError> {
        if self.write {
            Ok(())
        } else {
            Err(ApiError::forbidden("scope management:write required"))
        }
    }

    /// Whether the caller may see the tenant with this name (a quick check before lookup;
    /// [`Principal::may_see_tenant`] decides).
    pub fn may_see(&self, tenant_name: &str) -> bool {
        self.tenant
            .as_deref()
            .is_none_or(|t| t.eq_ignore_ascii_case(tenant_name))
    }

    /// Whether the caller may see this tenant: its own by id, or any when not scoped.
    pub fn may_see_tenant(&self, tenant: &relay_store::Tenant) -> bool {
        self.tenant_id.as_deref().is_none_or(|id| id == tenant.id)
    }

    /// Refuses tenant-scoped callers (operations that span tenants).
    pub fn require_global(&self) -> Result<(), ApiError> {
        if self.tenant.is_some() {
            Err(ApiError::forbidden(
                "a tenant-scoped credential cannot do this",
            ))
        } else {
            Ok(())
        }
    }
}

enum Presented<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
}

fn presented(headers: &HeaderMap) -> Result<Presented<'_>, ApiError> {
    if let Some(value) = headers.get("x-api-key") {
        let key = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("malformed X-Api-Key"))?;
        return Ok(Presented::ApiKey(key.trim()));
    }
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "a bearer token or API key is required",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Presented::Bearer(rest.trim()))
    } else if scheme.eq_ignore_ascii_case("apikey") {
        Ok(Presented::ApiKey(rest.trim()))
    } else {
        Err(ApiError::unauthorized(
            "use `Authorization: Bearer …` or `ApiKey …`",
        ))
    }
}

fn scopes_of(scopes: &str) -> (bool, bool) {
    let has = |s: &str| scopes.split_ascii_whitespace().any(|x| x == s);
    (has(SCOPE_MANAGEMENT_READ), has(SCOPE_MANAGEMENT_WRITE))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match presented(&parts.headers)? {
            Presented::Bearer(token) => {
                let claims = match state.validator.validate(token).await {
                    Ok(claims) => claims,
                    Err(TokenError::Unavailable(e)) => {
                        tracing::warn!(error = %e, "Token authority unreachable.");
                        return Err(ApiError::unavailable());
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "Bearer token rejected.");
                        return Err(ApiError::unauthorized("the token is not valid"));
                    }
                };
                if claims.tenant.is_some() && claims.tenant_id.is_none() {
                    // Issued before tenant ids were in tokens: it cannot tell which of
                    // several tenants of that name (over time) it was meant for.
                    return Err(ApiError::unauthorized(
                        "the token names no tenant id; request a new one",
                    ));
                }
                let active = state
                    .credentials
                    .token_client(&state.store, &claims)
                    .await?;
                // Only scopes the client still holds.
                let (read, write) = scopes_of(&claims.scope);
                let (held_read, held_write) = scopes_of(&active.client.scopes);
                Ok(Principal {
                    name: active.client.name,
                    read: read && held_read,
                    write: write && held_write,
                    tenant: active.tenant.as_ref().map(|t| t.name.to_ascii_lowercase()),
                    tenant_id: active.tenant.map(|t| t.id),
                    credential: Credential::Client(active.client.id),
                })
            }
            Presented::ApiKey(key) => {
                let Some(info) =
                    timed(state.store.verify_api_key(key, relay_store::now_ms())).await?
                else {
                    return Err(ApiError::unauthorized("the API key is not valid"));
                };
                let depth = state.credentials.key_depth(&state.store, &info).await?;
                let tenant = match &info.tenant_id {
                    None => None,
                    Some(id) => state.credentials.tenant(&state.store, id).await?,
                };
                let (read, write) = scopes_of(&info.scopes);
                Ok(Principal {
                    name: info.name,
                    read,
                    write,
                    tenant: tenant.map(|t| t.name.to_ascii_lowercase()),
                    tenant_id: info.tenant_id,
                    credential: Credential::Key { id: info.id, depth },
                })
            }
        }
    }
}
