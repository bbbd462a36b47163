//! `/management/tenants[/{name}[/config]]`: tenants and their configuration.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use relay_store::{AckMode, NewTenant, Tenant, TenantConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::body::{self, QueryParams};
use super::time;
use crate::error::ApiError;
use crate::{AppState, Principal};

/// Largest page.
pub(crate) const MAX_TAKE: i64 = 1000;
const DEFAULT_TAKE: i64 = 100;

#[derive(Serialize)]
pub(crate) struct TenantJson {
    id: String,
    name: String,
    display_name: Option<String>,
    description: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<Tenant> for TenantJson {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id,
            name: t.name,
            display_name: t.display_name,
            description: t.description,
            created_at: time(t.created_at),
            updated_at: time(t.updated_at),
        }
    }
}

/// The tenant named `name` if the caller may see it; 404 otherwise.
pub(crate) async fn visible_tenant(
    state: &AppState,
    principal: &Principal,
    name: &str,
) -> Result<Tenant, ApiError> {
    if !principal.may_see(name) {
        return Err(ApiError::not_found());
    }
    state
        .store
        .tenant_by_name(name)
        .await?
        .filter(|t| principal.may_see_tenant(t))
        .ok_or_else(ApiError::not_found)
}

pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require_read()?;
    let q = QueryParams::parse(query.as_deref(), &["skip", "take", "filter"])?;
    let skip = q.int("skip", 0, 0, i64::from(i32::MAX))?;
    let take = q.int("take", DEFAULT_TAKE, 1, MAX_TAKE)?;
    let filter = q.text("filter");
    if filter.is_some_and(|f| f.len() > 64) {
        return Err(ApiError::invalid("filter", "must be at most 64 characters"));
    }
    let (items, total) = match &principal.tenant_id {
        None => state.store.list_tenants_page(filter, skip, take).await?,
        Some(own) => {
            let mine = state.store.tenant_by_id(own).await?.filter(|t| {
                principal.may_see_tenant(t)
                    && filter.is_none_or(|f| {
                        t.name
                            .to_ascii_lowercase()
                            .contains(&f.to_ascii_lowercase())
                    })
            });
            let total = i64::from(mine.is_some());
            let page = mine
                .into_iter()
                .skip(usize::try_from(skip).unwrap_or(usize::MAX));
            (page.collect(), total)
        }
    };
    let items: Vec<TenantJson> = items.into_iter().map(TenantJson::from).collect();
    Ok(Json(
        json!({ "items": items, "total": total, "skip": skip, "take": take }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    principal.require_write()?;
    principal.require_global()?;
    let input: CreateTenant = body::json(&bytes)?;
    let tenant = state
        .store
        .create_tenant(NewTenant {
            name: input.name,
            display_name: input.display_name,
            description: input.description,
        })
        .await
        .map_err(|e| match e {
            relay_store::StoreError::Conflict => {
                ApiError::conflict("a tenant with this name exists (names ignore case)")
            }
            other => other.into(),
        })?;
    tracing::info!(tenant = %tenant.name, by = %principal.name, "Tenant created.");
    let location = format!("/management/tenants/{}", tenant.name);
    let mut response = (StatusCode::CREATED, Json(TenantJson::from(tenant))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

pub(crate) async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<TenantJson>, ApiError> {
    principal.require_read()?;
    Ok(Json(
        visible_tenant(&state, &principal, &name).await?.into(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateTenant {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// `PUT`: replaces display name and description (absent = cleared). The name cannot change.
pub(crate) async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<TenantJson>, ApiError> {
    principal.require_write()?;
    let tenant = visible_tenant(&state, &principal, &name).await?;
    let input: UpdateTenant = body::json(&bytes)?;
    if input
        .name
        .as_deref()
        .is_some_and(|n| !n.eq_ignore_ascii_case(&tenant.name))
    {
        return Err(ApiError::invalid("name", "a tenant cannot be renamed"));
    }
    let updated = state
        .store
        .update_tenant(&tenant.id, input.display_name, input.description)
        .await?;
    tracing::info!(tenant = %updated.name, by = %principal.name, "Tenant updated.");
    Ok(Json(updated.into()))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_write()?;
    let tenant = visible_tenant(&state, &principal, &name).await?;
    principal.require_global()?;
    if !state.store.delete_tenant(&tenant.id).await? {
        return Err(ApiError::not_found());
    }
    state.credentials.forget();
    tracing::info!(tenant = %tenant.name, by = %principal.name, "Tenant deleted.");
    Ok(StatusCode::NO_CONTENT)
}

/// The API shape of a tenant's configuration. `null` means "server default".
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigJson {
    #[serde(default)]
    keep_alive_interval: Option<String>,
    #[serde(default)]
    reconnect_min_delay: Option<String>,
    #[serde(default)]
    reconnect_max_delay: Option<String>,
    #[serde(default)]
    request_expiry: Option<String>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    concurrency_limit: Option<u32>,
    /// `disabled`, `connector-received`, `connector-finished` or `manual`.
    #[serde(default)]
    acknowledge_mode: Option<String>,
    #[serde(default)]
    tracing: Option<bool>,
    #[serde(default)]
    require_client_token: Option<bool>,
    /// Tunnels the tenant may hold on one relay node (server default: 32).
    #[serde(default)]
    max_tunnels: Option<u32>,
}

/// Highest `max_tunnels` a tenant may be given.
const MAX_TUNNELS_LIMIT: u32 = 1024;

fn human_ms(ms: Option<i64>) -> Option<String> {
    ms.and_then(|v| u64::try_from(v).ok())
        .map(|v| humantime::format_duration(std::time::Duration::from_millis(v)).to_string())
}

fn ack_api(mode: AckMode) -> String {
    mode.as_str().replace('_', "-")
}

impl From<TenantConfig> for ConfigJson {
    fn from(c: TenantConfig) -> Self {
        Self {
            keep_alive_interval: human_ms(c.keep_alive_interval_ms),
            reconnect_min_delay: human_ms(c.reconnect_min_delay_ms),
            reconnect_max_delay: human_ms(c.reconnect_max_delay_ms),
            request_expiry: human_ms(c.request_expiry_ms),
            max_body_bytes: c.max_body_bytes.and_then(|v| u64::try_from(v).ok()),
            concurrency_limit: c.concurrency_limit,
            acknowledge_mode: c.ack_mode.map(ack_api),
            tracing: c.tracing,
            require_client_token: c.require_client_auth,
            max_tunnels: c.max_tunnels,
        }
    }
}

/// Milliseconds of an optional duration field within `min..=max`.
fn ms_in(
    field: &str,
    value: Option<&str>,
    min: std::time::Duration,
    max: std::time::Duration,
) -> Result<Option<i64>, ApiError> {
    let Some(text) = value else {
        return Ok(None);
    };
    let d = body::duration(field, text)?;
    if d < min || d > max {
        return Err(ApiError::invalid(
            field,
            format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

impl ConfigJson {
    fn into_config(self) -> Result<TenantConfig, ApiError> {
        use std::time::Duration;
        let hour = Duration::from_secs(3600);
        let config = TenantConfig {
            keep_alive_interval_ms: ms_in(
                "keep_alive_interval",
                self.keep_alive_interval.as_deref(),
                Duration::from_secs(1),
                hour,
            )?,
            reconnect_min_delay_ms: ms_in(
                "reconnect_min_delay",
                self.reconnect_min_delay.as_deref(),
                Duration::ZERO,
                hour,
            )?,
            reconnect_max_delay_ms: ms_in(
                "reconnect_max_delay",
                self.reconnect_max_delay.as_deref(),
                Duration::from_millis(1),
                hour,
            )?,
            request_expiry_ms: ms_in(
                "request_expiry",
                self.request_expiry.as_deref(),
                Duration::from_millis(1),
                24 * hour,
            )?,
            max_body_bytes: match self.max_body_bytes {
                None => None,
                Some(v) => Some(
                    i64::try_from(v)
                        .map_err(|_| ApiError::invalid("max_body_bytes", "too large"))?,
                ),
            },
            concurrency_limit: match self.concurrency_limit {
                Some(n) if !(1..=65535).contains(&n) => {
                    return Err(ApiError::invalid(
                        "concurrency_limit",
                        "must be from 1 to 65535",
                    ));
                }
                other => other,
            },
            ack_mode: match self.acknowledge_mode.as_deref() {
                None => None,
                Some(m) => Some(m.replace('-', "_").parse::<AckMode>().map_err(|_| {
                    ApiError::invalid(
                        "acknowledge_mode",
                        "expected disabled, connector-received, connector-finished or manual",
                    )
                })?),
            },
            tracing: self.tracing,
            require_client_auth: self.require_client_token,
            max_tunnels: match self.max_tunnels {
                Some(n) if !(1..=MAX_TUNNELS_LIMIT).contains(&n) => {
                    return Err(ApiError::invalid(
                        "max_tunnels",
                        format!("must be from 1 to {MAX_TUNNELS_LIMIT}"),
                    ));
                }
                other => other,
            },
        };
        if let (Some(min), Some(max)) =
            (config.reconnect_min_delay_ms, config.reconnect_max_delay_ms)
            && min > max
        {
            return Err(ApiError::invalid(
                "reconnect_max_delay",
                "must not be less than reconnect_min_delay",
            ));
        }
        Ok(config)
    }
}

pub(crate) async fn get_config(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<ConfigJson>, ApiError> {
    principal.require_read()?;
    let tenant = visible_tenant(&state, &principal, &name).await?;
    Ok(Json(state.store.tenant_config(&tenant.id).await?.into()))
}

/// `PUT`: replaces the whole configuration (absent fields return to the server default).
/// Relay nodes pick the change up within their tenant refresh and push tunnel settings to
/// connected connectors.
pub(crate) async fn put_config(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<ConfigJson>, ApiError> {
    principal.require_write()?;
    let tenant = visible_tenant(&state, &principal, &name).await?;
    let input: ConfigJson = body::json(&bytes)?;
    let config = input.into_config()?;
    state.store.set_tenant_config(&tenant.id, &config).await?;
    tracing::info!(tenant = %tenant.name, by = %principal.name, "Tenant configuration changed.");
    Ok(Json(state.store.tenant_config(&tenant.id).await?.into()))
}
