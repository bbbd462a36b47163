//! `/management/connections`, `/management/nodes`, `/management/requests`: what the relay
//! nodes record in the shared database.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use relay_store::{RequestLogFilter, now_ms};
use serde_json::json;

use super::body::QueryParams;
use super::tenants::MAX_TAKE;
use super::{opt_time, time};
use crate::error::ApiError;
use crate::{AppState, Principal};

/// The request log's outcomes.
pub const OUTCOMES: [&str; 5] = ["succeeded", "failed", "expired", "aborted", "errored"];
/// A node whose heartbeat is older than this is shown as `stale` (the sweep of the relay
/// nodes marks it `stopped` soon after).
const STALE_AFTER_MS: i64 = 30_000;

/// Tenant names by id, restricted to what the caller may see.
async fn tenant_names(
    state: &AppState,
    principal: &Principal,
) -> Result<HashMap<String, String>, ApiError> {
    Ok(state
        .store
        .list_tenants()
        .await?
        .into_iter()
        .filter(|t| principal.may_see_tenant(t))
        .map(|t| (t.id, t.name))
        .collect())
}

pub(crate) async fn connections(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require_read()?;
    let q = QueryParams::parse(query.as_deref(), &["tenant"])?;
    let names = tenant_names(&state, &principal).await?;
    let wanted = q.text("tenant").map(str::to_ascii_lowercase);
    let items: Vec<serde_json::Value> = state
        .store
        .list_connections(true)
        .await?
        .into_iter()
        .filter_map(|c| {
            let tenant = names.get(&c.tenant_id)?;
            if wanted
                .as_deref()
                .is_some_and(|w| w != tenant.to_ascii_lowercase())
            {
                return None;
            }
            Some(json!({
                "id": c.id,
                "tenant": tenant,
                "node": c.origin_id,
                "remote_address": c.remote_addr,
                "connector_version": c.connector_version,
                "machine_name": c.machine_name,
                "connected_at": time(c.connected_at),
                "last_seen_at": time(c.last_seen_at),
            }))
        })
        .collect();
    Ok(Json(json!({ "items": items, "total": items.len() })))
}

/// `DELETE /management/connections/{id}`: asks the node holding the tunnel to close it
/// (the connector reconnects, with fresh credentials). 202: the node acts within seconds.
pub(crate) async fn disconnect(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_write()?;
    let names = tenant_names(&state, &principal).await?;
    let visible = state
        .store
        .list_connections(true)
        .await?
        .into_iter()
        .any(|c| c.id == id && names.contains_key(&c.tenant_id));
    if !visible || !state.store.request_disconnect(&id).await? {
        return Err(ApiError::not_found());
    }
    tracing::info!(connection = %id, by = %principal.name, "Disconnect requested.");
    Ok(StatusCode::ACCEPTED)
}

pub(crate) async fn nodes(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require_read()?;
    let now = now_ms();
    let items: Vec<serde_json::Value> = state
        .store
        .list_origins()
        .await?
        .into_iter()
        .map(|o| {
            let state = if o.stopped_at.is_some() {
                "stopped"
            } else if now - o.last_heartbeat_at > STALE_AFTER_MS {
                "stale"
            } else {
                "running"
            };
            json!({
                "id": o.id,
                "state": state,
                "started_at": time(o.started_at),
                "last_heartbeat_at": time(o.last_heartbeat_at),
                "stopped_at": opt_time(o.stopped_at),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items, "total": items.len() })))
}

pub(crate) async fn requests(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require_read()?;
    let q = QueryParams::parse(
        query.as_deref(),
        &["tenant", "from", "to", "outcome", "skip", "take"],
    )?;
    let skip = q.int("skip", 0, 0, i64::from(i32::MAX))?;
    let take = q.int("take", 100, 1, MAX_TAKE)?;
    let from = q.time("from")?;
    let to = q.time("to")?;
    let outcome = q.text("outcome").map(str::to_owned);
    if let Some(o) = &outcome
        && !OUTCOMES.contains(&o.as_str())
    {
        return Err(ApiError::invalid(
            "outcome",
            format!("expected one of {}", OUTCOMES.join(", ")),
        ));
    }
    let mut tenant = q.text("tenant").map(str::to_ascii_lowercase);
    if let Some(t) = &tenant
        && relay_store::validate_tenant_name(t).is_err()
    {
        return Err(ApiError::invalid("tenant", "not a valid tenant name"));
    }
    match (&principal.tenant, &tenant) {
        (Some(own), Some(t)) if own != t => return Err(ApiError::not_found()),
        (Some(own), None) => tenant = Some(own.clone()),
        _ => {}
    }
    // Rows are kept by tenant id: a re-created tenant of the same name starts with an empty
    // log, and its predecessor's rows stay out of its view.
    let tenant_id = match (&principal.tenant_id, &tenant) {
        (Some(own), _) => Some(own.clone()),
        (None, Some(name)) => match state.store.tenant_by_name(name).await? {
            Some(t) => Some(t.id),
            None => return Err(ApiError::not_found()),
        },
        (None, None) => None,
    };
    let filter = RequestLogFilter {
        tenant_id,
        from,
        to,
        outcome,
        skip,
        take,
    };
    let (rows, total) = state.store.list_request_log(&filter).await?;
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "tenant": r.tenant,
                "target": r.target,
                "method": r.method,
                "path": r.path,
                "status": r.status,
                "request_bytes": r.request_bytes,
                "response_bytes": r.response_bytes,
                "duration_ms": r.duration_ms,
                "outcome": r.outcome,
                "node": r.node,
                "started_at": time(r.started_at),
            })
        })
        .collect();
    Ok(Json(
        json!({ "items": items, "total": total, "skip": skip, "take": take }),
    ))
}
