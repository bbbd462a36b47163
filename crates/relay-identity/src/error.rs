//! [`IdentityError`] (the library's failures) and [`OAuthError`] (token endpoint answers).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Why the identity service could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Config(#[from] relay_core::config::ConfigError),
    #[error("database operation failed")]
    Store(#[from] relay_store::StoreError),
    #[error("signing key operation failed")]
    Token(#[from] relay_token::TokenError),
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] relay_core::tls::TlsError),
}

/// A token endpoint error as specified by RFC 6749 §5.2: JSON `{error, error_description}`.
/// Descriptions are fixed texts; they never echo secrets and never reveal whether a tenant
/// exists.
#[derive(Debug)]
pub(crate) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: &'static str,
    /// Answer with `WWW-Authenticate: Basic` (the client tried HTTP Basic).
    basic_challenge: bool,
    /// `Retry-After` seconds (rate limited).
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body {
    error: &'static str,
    error_description: &'static str,
}

impl OAuthError {
    const fn new(status: StatusCode, error: &'static str, description: &'static str) -> Self {
        Self {
            status,
            error,
            description,
            basic_challenge: false,
            retry_after: None,
        }
    }

    /// Too many token requests for this client: 429 with `Retry-After`.
    pub(crate) const fn rate_limited(retry_after: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            error: "slow_down",
            description: "too many token requests for this client; retry later",
            basic_challenge: false,
            retry_after: Some(retry_after),
        }
    }

    pub(crate) const fn invalid_request(description: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub(crate) const fn unsupported_grant_type() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only the client_credentials grant is supported",
        )
    }

    pub(crate) const fn invalid_scope() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "a requested scope is not allowed for this client",
        )
    }

    /// The one answer for unknown client, wrong, expired or revoked secret.
    pub(crate) const fn invalid_client(basic_challenge: bool) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: "client authentication failed",
            basic_challenge,
            retry_after: None,
        }
    }

    pub(crate) const fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error; try again later",
        )
    }

    pub(crate) const fn temporarily_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "no signing key available; try again later",
        )
    }

    /// Every secret-check worker busy and the queue full: 503 with `Retry-After`.
    pub(crate) const fn busy() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: "too many token requests in progress; retry later",
            basic_challenge: false,
            retry_after: Some(1),
        }
    }

    /// The RFC 6749 error code, for logs.
    pub(crate) fn code(&self) -> &'static str {
        self.error
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.error,
            error_description: self.description,
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.basic_challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"relay-identity\""),
            );
        }
        response
    }
}
