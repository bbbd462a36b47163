//! The one error type of this crate.

/// Why a token could not be issued or accepted.
///
/// Callers map [`TokenError::Invalid`] to `401` and [`TokenError::Unavailable`] to `503`.
/// No message ever contains a token, a key or a secret, so all of them are safe to log.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token failed validation: malformed, bad signature, unknown key, wrong
    /// algorithm, issuer or audience, expired or not yet valid.
    #[error("token rejected: {0}")]
    Invalid(String),
    /// The authority (discovery document or JWKS) could not be reached or answered
    /// nonsense, so the token could not be checked either way.
    #[error("token authority unavailable: {0}")]
    Unavailable(String),
    /// Key material could not be generated, parsed or encoded.
    #[error("signing key error: {0}")]
    Key(String),
    /// Signing a token failed.
    #[error("signing failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

impl TokenError {
    /// `true` when the caller should answer `503` rather than `401`.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, TokenError::Unavailable(_))
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        TokenError::Invalid(reason.into())
    }

    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        TokenError::Unavailable(reason.into())
    }
}

/// Translates a `jsonwebtoken` validation failure into a short, log-safe reason.
pub(crate) fn invalid_from_jwt(err: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    let reason = match err.kind() {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidAlgorithm => "algorithm not allowed",
        ErrorKind::MissingRequiredClaim(_) => "required claim missing",
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => "malformed claims",
        ErrorKind::InvalidRsaKey(_) => "unusable key",
        _ => "malformed token",
    };
    TokenError::invalid(reason)
}
