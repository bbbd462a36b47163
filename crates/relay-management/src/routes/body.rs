//! Request parsing with field-level errors: JSON bodies (400 when not JSON, 422 naming the
//! field when a value has the wrong type or is unknown) and query strings.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Parses a JSON body into `T`.
pub(crate) fn json<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(None, "a JSON body is required"));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(None, format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            None,
            "the body must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." {
            unknown_field(&inner).unwrap_or_else(|| ".".to_owned())
        } else {
            path
        };
        ApiError::invalid(&field, inner)
    })
}

/// The field named in serde's "unknown field `x`" / "missing field `x`" messages.
fn unknown_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

/// Query parameters; a repeated parameter is a 400.
pub(crate) struct QueryParams(HashMap<String, String>);

impl QueryParams {
    pub(crate) fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
            .map_err(|e| ApiError::bad_request(None, format!("malformed query: {e}")))?;
        let mut map = HashMap::new();
        for (k, v) in pairs {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::bad_request(
                    Some(&k),
                    format!("unknown query parameter (allowed: {})", allowed.join(", ")),
                ));
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(ApiError::bad_request(Some(&k), "repeated query parameter"));
            }
        }
        Ok(Self(map))
    }

    pub(crate) fn text(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// An integer in `min..=max`, or `default` when absent.
    pub(crate) fn int(&self, key: &str, default: i64, min: i64, max: i64) -> Result<i64, ApiError> {
        match self.text(key) {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(
                    key,
                    format!("must be an integer from {min} to {max}"),
                )),
            },
        }
    }

    /// A point in time: RFC 3339 (`2026-01-31T12:00:00Z`) or unix milliseconds.
    pub(crate) fn time(&self, key: &str) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.text(key) else {
            return Ok(None);
        };
        if let Ok(ms) = v.parse::<i64>() {
            return Ok(Some(ms));
        }
        let at = humantime::parse_rfc3339_weak(v).map_err(|_| {
            ApiError::invalid(
                key,
                "expected RFC 3339 (2026-01-31T12:00:00Z) or unix milliseconds",
            )
        })?;
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| ApiError::invalid(key, "must be after 1970"))?
            .as_millis();
        Ok(Some(i64::try_from(ms).unwrap_or(i64::MAX)))
    }
}

/// Parses a humantime duration (`"15s"`, `"2m"`) for field `field`.
pub(crate) fn duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(text)
        .map_err(|e| ApiError::invalid(field, format!("expected a duration like \"15s\": {e}")))
}

/// Longest lifetime of a secret or API key.
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86400);

/// The expiry (unix ms) for an optional `expires_in` lifetime such as `"90d"`.
pub(crate) fn expiry(expires_in: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(text) = expires_in else {
        return Ok(None);
    };
    let d = duration("expires_in", text)?;
    if d.is_zero() || d > MAX_LIFETIME {
        return Err(ApiError::invalid(
            "expires_in",
            "must be between 1ms and 10 years",
        ));
    }
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    Ok(Some(relay_store::now_ms().saturating_add(ms)))
}

/// `201` with a body holding a credential shown this once: never cached.
pub(crate) fn created_once(body: serde_json::Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = (axum::http::StatusCode::CREATED, axum::Json(body)).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        name: String,
        n: Option<u32>,
    }

    #[test]
    fn errors_name_the_field() {
        let e = json::<T>(&Bytes::from_static(b"{\"name\": 1}")).expect_err("type");
        assert_eq!(e.status().as_u16(), 422);
        assert!(format!("{e:?}").contains("\"name\""), "{e:?}");
        let e = json::<T>(&Bytes::from_static(b"{\"name\":\"a\",\"x\":1}")).expect_err("unknown");
        assert!(format!("{e:?}").contains("Some(\"x\")"), "{e:?}");
        let e = json::<T>(&Bytes::from_static(b"{")).expect_err("syntax");
        assert_eq!(e.status().as_u16(), 400);
        let e = json::<T>(&Bytes::from_static(b"{}")).expect_err("missing");
        assert!(format!("{e:?}").contains("Some(\"name\")"), "{e:?}");
    }
}
