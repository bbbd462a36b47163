//! The claims of a relay access token.

use serde::{Deserialize, Serialize};

/// Claims carried by every relay access token.
///
/// Times are Unix seconds. `aud` is a list because other OIDC providers issue arrays;
/// a single audience is written as a plain string, as RFC 7519 allows. Claims that other
/// providers may omit (`client_id`, `scope`, `iat`, `nbf`, `jti`) default to empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the authority's discovered `issuer`.
    pub iss: String,
    /// Audiences; a relying service accepts the token when its own is among them.
    #[serde(with = "one_or_many")]
    pub aud: Vec<String>,
    /// Subject: for tenant clients the tenant's canonical name.
    pub sub: String,
    /// OAuth2 client the token was issued to.
    #[serde(default)]
    pub client_id: String,
    /// Tenant the client acts for; `None` for operator clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Immutable id of that tenant. The relay binds tunnels and client calls to it, so a
    /// deleted and re-created tenant of the same name is a different tenant. Absent from
    /// tokens of other identity providers (accepted only with name binding allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Id of the credential (client secret) the token was issued for: the relay stops
    /// accepting the token, and closes its tunnels, once that credential is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<String>,
    /// Granted scopes, space separated (RFC 8693 `scope` claim).
    #[serde(default)]
    pub scope: String,
    /// Issued at.
    #[serde(default)]
    pub iat: i64,
    /// Not before.
    #[serde(default)]
    pub nbf: i64,
    /// Expires at.
    pub exp: i64,
    /// Unique token id.
    #[serde(default)]
    pub jti: String,
}

impl Claims {
    /// Whether `scope` is among the granted scopes (exact, case-sensitive match).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }

    /// Whether `audience` is among the token's audiences.
    pub fn has_audience(&self, audience: &str) -> bool {
        self.aud.iter().any(|a| a == audience)
    }
}

/// `aud` as a string when there is one audience, an array otherwise; reads both.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub fn serialize<S: Serializer>(aud: &[String], s: S) -> Result<S::Ok, S::Error> {
        match aud {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(scope: &str) -> Claims {
        Claims {
            iss: "http://idp".into(),
            aud: vec!["relay".into()],
            sub: "acme".into(),
            client_id: "acme".into(),
            tenant: Some("acme".into()),
            tenant_id: Some("0193-acme".into()),
            secret_id: Some("0193-secret".into()),
            scope: scope.into(),
            iat: 1,
            nbf: 1,
            exp: 2,
            jti: "j".into(),
        }
    }

    #[test]
    fn scopes_match_whole_words_only() {
        let c = claims("connector  client");
        assert!(c.has_scope("connector"));
        assert!(c.has_scope("client"));
        assert!(!c.has_scope("conn"));
        assert!(!c.has_scope(""));
    }

    #[test]
    fn single_audience_is_a_string_and_arrays_are_read() {
        let json = serde_json::to_value(claims("client")).expect("serialize");
        assert_eq!(json["aud"], "relay");

        let mut json = json;
        json["aud"] = serde_json::json!(["other", "relay"]);
        let back: Claims = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back.aud, ["other", "relay"]);
        assert!(back.has_audience("relay"));
    }
}
