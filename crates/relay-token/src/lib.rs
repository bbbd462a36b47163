//! JWT issuing and validation for the relay services.
//!
//! `relay-identity` signs access tokens with [`KeyPair`]s it stores in the config DB and
//! publishes their [`Jwk`]s; `relay-server` and `relay-management` check tokens with a
//! [`Validator`] that discovers any OIDC authority's JWKS and caches its keys. RS256 only.
//!
//! Module map:
//! - `claims`    — [`Claims`], the payload of a relay access token, and scope helpers.
//! - `key`       — [`KeyPair`] (RSA-2048, PKCS#8 PEM, thumbprint `kid`), [`Jwk`], [`Jwks`].
//! - `sign`      — [`sign`] and the single-key verification used by the validator.
//! - `validator` — [`Validator`]: discovery, JWKS cache, rate-limited refresh on unknown `kid`.
//! - `fetch`     — the HTTP GET behind the validator, swappable connector.
//! - `error`     — [`TokenError`]: `Invalid` (answer 401) versus `Unavailable` (answer 503).

mod claims;
mod error;
mod fetch;
mod key;
mod sign;
mod validator;

pub use claims::Claims;
pub use error::TokenError;
pub use key::{ALGORITHM, Jwk, Jwks, KeyPair, RSA_BITS};
pub use sign::{LEEWAY_SECS, sign};
pub use validator::{MAX_CACHE_AGE, MIN_REFRESH_INTERVAL, Validator};

/// Audience of every token meant for the relay services.
pub const AUDIENCE_RELAY: &str = "relay";
/// Audience of tokens for the management API.
pub const AUDIENCE_MANAGEMENT: &str = "relay-management";
/// Scope of a connector opening a tunnel for its tenant.
pub const SCOPE_CONNECTOR: &str = "connector";
/// Scope of a public client calling a tenant that requires client authentication.
pub const SCOPE_CLIENT: &str = "client";
/// Scope for reading the management API.
pub const SCOPE_MANAGEMENT_READ: &str = "management:read";
/// Scope for changing anything through the management API.
pub const SCOPE_MANAGEMENT_WRITE: &str = "management:write";
