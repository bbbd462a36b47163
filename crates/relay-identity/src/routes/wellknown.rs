//! Discovery document, JWKS and health endpoints.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use relay_store::now_ms;
use relay_token::{ALGORITHM, Jwks, SCOPE_CLIENT, SCOPE_CONNECTOR};
use serde::Serialize;

use crate::AppState;
use crate::state::error_chain;

/// Path of the token endpoint, relative to the issuer.
pub const TOKEN_PATH: &str = "/connect/token";
/// Path of the JWKS, relative to the issuer.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Path of the OpenID Connect discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// The subset of OpenID Connect Discovery 1.0 a client-credentials issuer needs.
#[derive(Serialize)]
pub(crate) struct Discovery {
    issuer: String,
    token_endpoint: String,
    jwks_uri: String,
    grant_types_supported: [&'static str; 1],
    token_endpoint_auth_methods_supported: [&'static str; 2],
    id_token_signing_alg_values_supported: [&'static str; 1],
    scopes_supported: [&'static str; 2],
}

pub(crate) async fn discovery(State(state): State<AppState>) -> Json<Discovery> {
    let issuer = state.issuer();
    Json(Discovery {
        issuer: issuer.to_owned(),
        token_endpoint: format!("{issuer}{TOKEN_PATH}"),
        jwks_uri: format!("{issuer}{JWKS_PATH}"),
        grant_types_supported: ["client_credentials"],
        token_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post"],
        id_token_signing_alg_values_supported: [ALGORITHM],
        scopes_supported: [SCOPE_CONNECTOR, SCOPE_CLIENT],
    })
}

/// Every key not yet expired: the signer, a published successor, retired keys whose
/// tokens may still be alive.
pub(crate) async fn jwks(State(state): State<AppState>) -> Json<Jwks> {
    Json(state.key_ring().jwks(now_ms()))
}

pub(crate) async fn live() -> &'static str {
    "ok"
}

/// Ready when the database answers and a key can sign.
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    if let Err(e) = state.store().ping().await {
        tracing::warn!(error = %error_chain(&e), "Readiness check: database unreachable.");
        return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response();
    }
    if state.key_ring().signer(now_ms()).is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no signing key").into_response();
    }
    "ok".into_response()
}
