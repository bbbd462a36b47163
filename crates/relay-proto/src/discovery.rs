//! The discovery document a relay server publishes for connectors.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `GET /.well-known/relayserver-configuration`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiscoveryDocument {
    /// Version of the relay server.
    pub server_version: String,
    /// Base URL of the token authority (OIDC issuer).
    pub authority: String,
    /// Where connectors obtain their token (client credentials grant).
    pub token_endpoint: String,
    /// Absolute URL of the tunnel endpoint.
    pub tunnel_endpoint: String,
    #[serde(flatten)]
    pub settings: TunnelSettings,
}

/// Settings that govern one connector's tunnel; sent in the discovery document and pushed
/// over the tunnel when an operator changes them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelSettings {
    /// HTTP/2 PING interval on the tunnel; a peer silent for two intervals is dead.
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// Smallest delay before reconnecting after a tunnel is lost.
    #[serde(with = "humantime_serde")]
    pub reconnect_min_delay: Duration,
    /// Largest delay between reconnect attempts (the jittered back-off stops growing here).
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        TunnelSettings {
            keep_alive_interval: Duration::from_secs(15),
            reconnect_min_delay: Duration::from_millis(500),
            reconnect_max_delay: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_with_human_durations() {
        let doc = DiscoveryDocument {
            server_version: "0.1.0".into(),
            authority: "http://id".into(),
            token_endpoint: "http://id/connect/token".into(),
            tunnel_endpoint: "http://relay/connector".into(),
            settings: TunnelSettings::default(),
        };
        let json = serde_json::to_string(&doc).expect("serializes");
        assert!(json.contains("\"keep_alive_interval\":\"15s\""), "{json}");
        let back: DiscoveryDocument = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, doc);
    }
}
