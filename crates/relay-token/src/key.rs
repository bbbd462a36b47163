//! RSA signing keys and their public JWK form.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, RsaPrivateKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::TokenError;

/// Modulus size of generated keys.
pub const RSA_BITS: usize = 2048;
/// The only signing algorithm this crate issues or accepts.
pub const ALGORITHM: &str = "RS256";

/// An RSA-2048 private key with its key id.
///
/// The `kid` is the RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key, so it
/// is derived from the key itself and identical on every node that loads the same PEM.
/// `Debug` never prints key material.
pub struct KeyPair {
    kid: String,
    private: RsaPrivateKey,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl KeyPair {
    /// Generates a fresh key. Slow (hundreds of milliseconds): call it from
    /// `spawn_blocking` in async code, or use [`KeyPair::generate_async`].
    pub fn generate() -> Result<Self, TokenError> {
        let mut rng = rsa::rand_core::OsRng;
        let private = RsaPrivateKey::new(&mut rng, RSA_BITS)
            .map_err(|e| TokenError::Key(format!("generating RSA key: {e}")))?;
        Self::from_private(private)
    }

    /// [`KeyPair::generate`] on the blocking thread pool.
    pub async fn generate_async() -> Result<Self, TokenError> {
        tokio::task::spawn_blocking(Self::generate)
            .await
            .map_err(|e| TokenError::Key(format!("key generation task failed: {e}")))?
    }

    /// Loads an unencrypted PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, TokenError> {
        let private = RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|e| TokenError::Key(format!("parsing PKCS#8 RSA key: {e}")))?;
        if private.size() * 8 < RSA_BITS {
            return Err(TokenError::Key(format!(
                "RSA key has {} bits, at least {RSA_BITS} required",
                private.size() * 8
            )));
        }
        Self::from_private(private)
    }

    /// The private key as unencrypted PKCS#8 PEM, for storage in the config DB.
    pub fn to_pkcs8_pem(&self) -> Result<String, TokenError> {
        let pem = self
            .private
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| TokenError::Key(format!("encoding PKCS#8 RSA key: {e}")))?;
        Ok(pem.as_str().to_owned())
    }

    /// The key id written into the `kid` header of every token this key signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as published in the JWKS.
    pub fn public_jwk(&self) -> Jwk {
        self.jwk.clone()
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    fn from_private(private: RsaPrivateKey) -> Result<Self, TokenError> {
        let der = private
            .to_pkcs1_der()
            .map_err(|e| TokenError::Key(format!("encoding PKCS#1 RSA key: {e}")))?;
        let encoding = EncodingKey::from_rsa_der(der.as_bytes());
        let n = b64(private.n());
        let e = b64(private.e());
        let kid = thumbprint(&n, &e);
        let jwk = Jwk {
            kty: "RSA".into(),
            key_use: Some("sig".into()),
            alg: Some(ALGORITHM.into()),
            kid: Some(kid.clone()),
            n,
            e,
        };
        Ok(Self {
            kid,
            private,
            encoding,
            jwk,
        })
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A public RSA key in JWK form (RFC 7517). Only the members this crate needs; other
/// members of keys in a foreign JWKS are ignored when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type; `RSA` for every key this crate issues or accepts.
    pub kty: String,
    /// Intended use; `sig` for signing keys.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    /// Algorithm; `RS256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Key id, matched against the token header's `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Modulus, base64url without padding.
    pub n: String,
    /// Public exponent, base64url without padding.
    pub e: String,
}

/// A JWK set as served at `jwks_uri`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The published keys.
    pub keys: Vec<Jwk>,
}

fn b64(value: &BigUint) -> String {
    URL_SAFE_NO_PAD.encode(value.to_bytes_be())
}

/// RFC 7638 thumbprint: members in lexicographic order, no whitespace.
fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_roundtrip_keeps_kid_and_jwk() {
        let key = KeyPair::generate().expect("generate");
        let pem = key.to_pkcs8_pem().expect("export");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = KeyPair::from_pkcs8_pem(&pem).expect("import");
        assert_eq!(back.kid(), key.kid());
        assert_eq!(back.public_jwk(), key.public_jwk());

        let jwk = serde_json::to_value(key.public_jwk()).expect("serialize");
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(jwk["kid"], key.kid());
        assert!(!format!("{key:?}").contains("BEGIN"));
    }

    #[test]
    fn garbage_pem_is_a_key_error() {
        let err = KeyPair::from_pkcs8_pem("not a key").expect_err("must fail");
        assert!(matches!(err, TokenError::Key(_)));
    }
}
