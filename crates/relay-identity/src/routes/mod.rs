//! HTTP routes of the identity service.

mod client_auth;
mod token;
mod wellknown;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use wellknown::{DISCOVERY_PATH, JWKS_PATH, TOKEN_PATH};

use crate::AppState;

/// Token requests are a few parameters; anything larger is refused unread.
const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;

/// All endpoints: token, discovery, JWKS and health.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            TOKEN_PATH,
            post(token::issue).layer(DefaultBodyLimit::max(MAX_TOKEN_REQUEST_BYTES)),
        )
        .route(DISCOVERY_PATH, get(wellknown::discovery))
        .route(JWKS_PATH, get(wellknown::jwks))
        .route("/health/live", get(wellknown::live))
        .route("/health/ready", get(wellknown::ready))
        .layer(axum::middleware::from_fn(crate::metrics::record))
        .with_state(state)
}
