//! [`ApiError`]: every failure answer of the API, as JSON `{"error", "message", "field"?}`.
//!
//! Internal causes are logged once here and answered as a bare 500; "not yours" answers
//! exactly like "not found".

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
pub(crate) use relay_core::error_chain;
use relay_store::StoreError;
use serde::Serialize;

/// Why `relay-management` could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error(transparent)]
    Config(#[from] relay_core::config::ConfigError),
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
    #[error("identity.ca_file: {0}")]
    Tls(#[from] relay_core::tls::TlsError),
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn unauthorized(message: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// Malformed request (not JSON, bad query syntax): 400.
    pub fn bad_request(field: Option<&str>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "bad_request", message);
        e.field = field.map(str::to_owned);
        e
    }

    /// Well-formed but invalid value of one field: 422.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
        e.field = Some(field.to_owned());
        e
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "token authority unreachable; retry later",
        )
    }

    /// The configuration database failed or did not answer: 503.
    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "configuration database unavailable; retry later",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the service log",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::not_found(),
            StoreError::Conflict => Self::conflict("already exists"),
            StoreError::Invalid { field, message } => Self::invalid(field, message),
            other => {
                tracing::error!(error = %error_chain(&other), "Database operation failed.");
                if matches!(other, StoreError::Pool(_) | StoreError::PoolTimeout) {
                    Self::store_unavailable()
                } else {
                    Self::internal()
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code,
            message: &self.message,
            field: self.field.as_deref(),
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"relay-management\""),
            );
        }
        response
    }
}
