//! Signing tokens and checking one token against one known key.

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};

use crate::error::invalid_from_jwt;
use crate::{Claims, KeyPair, TokenError};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Longer tokens are rejected before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Signs `claims` with `key` (RS256, `kid` header set to the key's id).
pub fn sign(key: &KeyPair, claims: &Claims) -> Result<String, TokenError> {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".into());
    header.kid = Some(key.kid().to_owned());
    jsonwebtoken::encode(&header, claims, key.encoding_key()).map_err(TokenError::Sign)
}

/// Reads the `kid` of a token after checking the header is one we could accept at all:
/// RS256, no `crit` extensions, a `kid` present. The signature is not checked here.
pub(crate) fn header_kid(token: &str) -> Result<String, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::invalid("token too long"));
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| TokenError::invalid("malformed token"))?;
    if header.alg != Algorithm::RS256 {
        return Err(TokenError::invalid("algorithm not allowed"));
    }
    if header.crit.is_some() {
        return Err(TokenError::invalid("unsupported critical header"));
    }
    header.kid.ok_or_else(|| TokenError::invalid("no key id"))
}

/// Checks signature, algorithm, issuer, audience and times of `token` against `key`.
pub(crate) fn verify(
    token: &str,
    key: &DecodingKey,
    issuer: &str,
    audience: &str,
) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| invalid_from_jwt(&e))
}
