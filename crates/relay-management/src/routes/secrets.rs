//! `/management/tenants/{name}/secrets[/{id}]`: client secrets of a tenant. The plaintext is
//! in the creation answer only; lists never contain secrets or hashes.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use relay_store::{CredentialScope, SecretInfo, now_ms};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::body;
use super::tenants::visible_tenant;
use super::{opt_time, time};
use crate::error::ApiError;
use crate::{AppState, Principal};

#[derive(Serialize)]
struct SecretJson {
    id: String,
    /// `connector` or `client`.
    scope: String,
    created_at: String,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
    active: bool,
}

impl From<SecretInfo> for SecretJson {
    fn from(s: SecretInfo) -> Self {
        Self {
            active: s.is_active(now_ms()),
            id: s.id,
            scope: s.scope,
            created_at: time(s.created_at),
            expires_at: opt_time(s.expires_at),
            last_used_at: opt_time(s.last_used_at),
            revoked_at: opt_time(s.revoked_at),
        }
    }
}

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require_read()?;
    let tenant = visible_tenant(&state, &principal, &name).await?;
    let items: Vec<SecretJson> = state
        .store
        .list_secrets(&tenant.id)
        .await?
        .into_iter()
        .map(SecretJson::from)
        .collect();
    Ok(Json(json!({ "items": items, "total": items.len() })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateSecret {
    /// Lifetime, e.g. `"90d"`.
    #[serde(default)]
    expires_in: Option<String>,
    /// `connector` (default: opens tunnels) or `client` (calls tenants that require client
    /// tokens).
    #[serde(default)]
    scope: Option<String>,
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    principal.require_write()?;
    let tenant = visible_tenant(&state, &principal, &name).await?;
    let input: CreateSecret = if bytes.iter().all(u8::is_ascii_whitespace) {
        CreateSecret::default()
    } else {
        body::json(&bytes)?
    };
    let expires_at = body::expiry(input.expires_in.as_deref())?;
    let scope = match input.scope.as_deref() {
        None => CredentialScope::Connector,
        Some(s) => s
            .parse()
            .map_err(|m: String| ApiError::invalid("scope", m))?,
    };
    let (info, plaintext) = state
        .store
        .create_secret(&tenant.id, expires_at, scope)
        .await?;
    tracing::info!(tenant = %tenant.name, secret = %info.id, %scope, by = %principal.name, "Client secret created.");
    Ok(body::created_once(json!({
        "id": info.id,
        "scope": info.scope,
        "secret": plaintext,
        "created_at": time(info.created_at),
        "expires_at": opt_time(info.expires_at),
    })))
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    principal.require_write()?;
    let tenant = visible_tenant(&state, &principal, &name).await?;
    if !state.store.revoke_secret(&tenant.id, &id).await? {
        return Err(ApiError::not_found());
    }
    tracing::info!(tenant = %tenant.name, secret = %id, by = %principal.name, "Client secret revoked.");
    Ok(StatusCode::NO_CONTENT)
}
