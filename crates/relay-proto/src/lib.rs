//! The contract between relay server and connector.
//!
//! The connector opens `GET /connector` with its bearer token and an HTTP/1.1 `Upgrade` to
//! [`UPGRADE_PROTOCOL`]. After `101 Switching Protocols` the roles flip: the *server* speaks
//! HTTP/2 as a client over the upgraded byte stream, the connector serves HTTP/2. Each relayed
//! request is one HTTP/2 stream whose path is `/{target}/{path}?{query}`; control messages are
//! requests on paths under [`CONTROL_PREFIX`]. See `docs/protocol.md`.
//!
//! - [`headers`]: header names both sides agree on, and hop-by-hop filtering.
//! - [`discovery`]: the discovery document at [`DISCOVERY_PATH`].
//! - [`path`]: the check that keeps relayed paths under a target's base path.

pub mod discovery;
pub mod headers;
pub mod path;

/// Where connectors open their tunnel.
pub const TUNNEL_PATH: &str = "/connector";
/// The `Upgrade` token of the tunnel.
pub const UPGRADE_PROTOCOL: &str = "relay-tunnel/1";
/// Discovery document of a relay server.
pub const DISCOVERY_PATH: &str = "/.well-known/relayserver-configuration";
/// Control requests from server to connector live under this path; target names cannot
/// start with a dot, so these never collide with a target.
pub const CONTROL_PREFIX: &str = "/.relay/";
/// `POST` JSON [`discovery::TunnelSettings`]: new settings for this connector.
pub const CONTROL_SETTINGS: &str = "/.relay/settings";
/// `POST`, optionally with a JSON [`Drain`] body: this tunnel is no longer given requests;
/// open a new tunnel, then let this one finish.
pub const CONTROL_DRAIN: &str = "/.relay/drain";

/// Body of a [`CONTROL_DRAIN`] request. An empty body means all defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Drain {
    /// The connector must fetch a new token before it reconnects (an operator disconnected
    /// the tunnel): a cached token is not enough.
    #[serde(default)]
    pub renew_token: bool,
}

/// Whether `name` is a valid target name: 1–64 of `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Whether `name` is a valid tenant name: 1–64 of `[A-Za-z0-9_-]` (the store's rule).
pub fn is_valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("web-1.internal"));
        assert!(!is_valid_name(".relay"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(&"a".repeat(65)));
        assert!(is_valid_tenant_name("Acme_1-x"));
        assert!(!is_valid_tenant_name("a.b"));
    }
}
