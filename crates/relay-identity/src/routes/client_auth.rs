//! Client authentication at the token endpoint: HTTP Basic (`client_secret_basic`) or
//! form parameters (`client_secret_post`), never both (RFC 6749 §2.3.1).

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::OAuthError;

/// Authenticated-to-be client credentials.
pub(crate) struct Credentials {
    pub(crate) id: String,
    pub(crate) secret: String,
    /// Sent as HTTP Basic (`client_secret_basic`) rather than in the form.
    pub(crate) basic: bool,
}

/// Client credentials from HTTP Basic or the form (`client_secret_post`), not both.
/// `form_id` and `form_secret` are the non-empty form parameters, if any.
pub(crate) fn client_credentials(
    headers: &HeaderMap,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<Credentials, OAuthError> {
    match basic_credentials(headers)? {
        Some((id, secret)) => {
            if form_secret.is_some() {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method only",
                ));
            }
            if form_id.is_some_and(|f| f != id) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the authenticated client",
                ));
            }
            Ok(Credentials {
                id,
                secret,
                basic: true,
            })
        }
        None => match (form_id, form_secret) {
            (Some(id), Some(secret)) => Ok(Credentials {
                id: id.to_owned(),
                secret: secret.to_owned(),
                basic: false,
            }),
            _ => Err(OAuthError::invalid_request(
                "client_id and client_secret are required",
            )),
        },
    }
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
/// `Ok(None)` without a Basic header; a malformed one fails client authentication.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || OAuthError::invalid_client(true);
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let id = form_decode(id)
        .filter(|s| !s.is_empty())
        .ok_or_else(malformed)?;
    let secret = form_decode(secret)
        .filter(|s| !s.is_empty())
        .ok_or_else(malformed)?;
    Ok(Some((id, secret)))
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte.
fn form_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%3Ac%25").as_deref(), Some("a b:c%"));
        assert_eq!(form_decode("plain-_.~").as_deref(), Some("plain-_.~"));
        assert_eq!(form_decode("bad%2"), None);
        assert_eq!(form_decode("bad%+1"), None);
        assert_eq!(form_decode("%FF"), None, "not UTF-8");
    }

    #[test]
    fn basic_header_parsing() {
        let mut headers = HeaderMap::new();
        let encoded = STANDARD.encode("acme:s%2Bcret");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("header"),
        );
        let parsed = basic_credentials(&headers).ok().flatten();
        assert_eq!(parsed, Some(("acme".to_owned(), "s+cret".to_owned())));

        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(
            basic_credentials(&headers).err().map(|e| e.code()),
            Some("invalid_client")
        );

        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(matches!(basic_credentials(&headers), Ok(None)));
    }
}
