//! `/management/apikeys[/{id}]`: API keys for automation. The plaintext (`rk_…`) is in the
//! creation answer only; only its SHA-256 is stored, lists never contain it.
//!
//! No escalation: a key never gets a scope its creator lacks, and a tenant-scoped caller
//! creates, sees and revokes keys of its own tenant only (its tenant by id: a re-created
//! tenant of the same name is not its own).
//!
//! No key outlives its creator: the key records the management client whose token, or the
//! key, that created it, and is refused once that creator is revoked, expired or deleted
//! (see [`crate::credentials`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use relay_store::{ApiKeyCreator, ApiKeyInfo};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body;
use super::{opt_time, time};
use crate::error::ApiError;
use crate::{AppState, Credential, MAX_KEY_CHAIN, Principal};

const READ: &str = "management:read";
const WRITE: &str = "management:write";

/// The key as listed; `tenant` is the tenant's name (`None`: all tenants); `active`: whether
/// it is accepted now (not revoked or expired, and its creators still active).
fn key_json(key: &ApiKeyInfo, tenant: Option<&str>, active: bool) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "scopes": key.scopes.split_ascii_whitespace().collect::<Vec<_>>(),
        "tenant": tenant,
        "created_at": time(key.created_at),
        "expires_at": opt_time(key.expires_at),
        "last_used_at": opt_time(key.last_used_at),
        "revoked_at": opt_time(key.revoked_at),
        "active": active,
    })
}

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    principal.require_read()?;
    let only = principal.tenant_id.clone();
    let mut items = Vec::new();
    // Tenant names by id, each looked up once however many keys share it.
    let mut names: std::collections::HashMap<String, Option<String>> = Default::default();
    for key in state.store.list_api_keys().await? {
        if only.is_some() && key.tenant_id != only {
            continue;
        }
        let tenant = match &key.tenant_id {
            Some(id) if !names.contains_key(id) => {
                let name = state.store.tenant_by_id(id).await?.map(|t| t.name);
                names.entry(id.clone()).or_insert(name).clone()
            }
            Some(id) => names.get(id).cloned().flatten(),
            None => None,
        };
        let active = state.credentials.key_usable(&state.store, &key).await?;
        items.push(key_json(&key, tenant.as_deref(), active));
    }
    Ok(Json(json!({ "total": items.len(), "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    /// Default: the caller's own scopes.
    #[serde(default)]
    scopes: Option<Vec<String>>,
    /// Restrict the key to this tenant.
    #[serde(default)]
    tenant: Option<String>,
    /// Lifetime, e.g. `"90d"`; default: no expiry.
    #[serde(default)]
    expires_in: Option<String>,
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    principal.require_write()?;
    let input: NewKey = body::json(&bytes)?;
    let mut read = false;
    let mut write = false;
    for scope in input
        .scopes
        .as_deref()
        .unwrap_or(&[READ.into(), WRITE.into()])
    {
        match scope.as_str() {
            READ => read = true,
            WRITE => write = true,
            _ => {
                return Err(ApiError::invalid(
                    "scopes",
                    format!("unknown scope '{scope}' (expected {READ} or {WRITE})"),
                ));
            }
        }
    }
    if !read && !write {
        return Err(ApiError::invalid("scopes", "name at least one scope"));
    }
    if (read && !(principal.read || principal.write)) || (write && !principal.write) {
        return Err(ApiError::forbidden(
            "a key cannot have a scope its creator lacks",
        ));
    }
    let tenant = match (&principal.tenant_id, input.tenant.as_deref()) {
        (Some(own), asked) => {
            let own = state
                .store
                .tenant_by_id(own)
                .await?
                .ok_or_else(ApiError::not_found)?;
            if asked.is_some_and(|a| !a.eq_ignore_ascii_case(&own.name)) {
                return Err(ApiError::not_found());
            }
            Some(own)
        }
        (None, Some(name)) => Some(
            state
                .store
                .tenant_by_name(name)
                .await?
                .ok_or_else(|| ApiError::invalid("tenant", format!("no tenant '{name}'")))?,
        ),
        (None, None) => None,
    };
    let creator = match &principal.credential {
        Credential::Client(id) => ApiKeyCreator::Client(id),
        Credential::Key { depth, .. } if *depth >= MAX_KEY_CHAIN => {
            return Err(ApiError::forbidden(format!(
                "this API key was created by a chain of {MAX_KEY_CHAIN} keys and cannot create more"
            )));
        }
        Credential::Key { id, .. } => ApiKeyCreator::Key(id),
    };
    let expires_at = body::expiry(input.expires_in.as_deref())?;
    let scopes = match (read, write) {
        (true, true) => format!("{READ} {WRITE}"),
        (false, true) => WRITE.to_owned(),
        _ => READ.to_owned(),
    };
    let (info, plaintext) = state
        .store
        .create_api_key_by(
            &input.name,
            &scopes,
            tenant.as_ref().map(|t| t.id.as_str()),
            expires_at,
            creator,
        )
        .await?;
    tracing::info!(key = %info.id, name = %info.name, by = %principal.name, "API key created.");
    let mut answer = key_json(&info, tenant.as_ref().map(|t| t.name.as_str()), true);
    answer["key"] = Value::String(plaintext);
    Ok(body::created_once(answer))
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_write()?;
    let only = principal.tenant_id.clone();
    if only.is_some() {
        let visible = state
            .store
            .list_api_keys()
            .await?
            .iter()
            .any(|k| k.id == id && k.tenant_id == only);
        if !visible {
            return Err(ApiError::not_found());
        }
    }
    if !state.store.revoke_api_key(&id).await? {
        return Err(ApiError::not_found());
    }
    state.credentials.forget();
    tracing::info!(key = %id, by = %principal.name, "API key revoked.");
    Ok(StatusCode::NO_CONTENT)
}
