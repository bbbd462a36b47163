//! The router: every route of [`crate::openapi::ROUTES`], a JSON 404 for the rest.

mod apikeys;
mod body;
mod live;
pub(crate) use live::OUTCOMES;
mod secrets;
mod tenants;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::AppState;
use crate::error::ApiError;

/// Largest accepted request body.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// All management routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/management", get(crate::openapi::page))
        .route("/management/", get(crate::openapi::page))
        .route("/management/openapi.json", get(crate::openapi::document))
        .route(
            "/management/tenants",
            get(tenants::list).post(tenants::create),
        )
        .route(
            "/management/tenants/{name}",
            get(tenants::show)
                .put(tenants::update)
                .delete(tenants::delete),
        )
        .route(
            "/management/tenants/{name}/config",
            get(tenants::get_config).put(tenants::put_config),
        )
        .route(
            "/management/tenants/{name}/secrets",
            get(secrets::list).post(secrets::create),
        )
        .route(
            "/management/tenants/{name}/secrets/{id}",
            axum::routing::delete(secrets::revoke),
        )
        .route("/management/connections", get(live::connections))
        .route(
            "/management/connections/{id}",
            axum::routing::delete(live::disconnect),
        )
        .route("/management/nodes", get(live::nodes))
        .route(
            "/management/apikeys",
            get(apikeys::list).post(apikeys::create),
        )
        .route(
            "/management/apikeys/{id}",
            axum::routing::delete(apikeys::revoke),
        )
        .route("/management/requests", get(live::requests))
        .fallback(|| async { ApiError::not_found().into_response() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds).
pub(crate) fn time(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or_default());
    humantime::format_rfc3339_millis(at).to_string()
}

pub(crate) fn opt_time(ms: Option<i64>) -> Option<String> {
    ms.map(time)
}
