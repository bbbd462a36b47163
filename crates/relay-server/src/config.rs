//! Relay server configuration: `relay-server --config F` plus `RELAY_SERVER__…` overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_core::config::ConfigError;
pub use relay_core::database::DatabaseConfig;
use relay_core::telemetry::LogConfig;
use relay_proto::discovery::TunnelSettings;
use serde::Deserialize;

pub const ENV_PREFIX: &str = "RELAY_SERVER";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: ListenConfig,
    /// Public base URL (`https://relay.example.com`) when behind a proxy; otherwise derived
    /// from each request's `Host`.
    #[serde(default)]
    pub public_url: Option<String>,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub relay: RelayConfig,
    #[serde(default)]
    pub tunnel: TunnelConfig,
    #[serde(default)]
    pub body_store: BodyStoreConfig,
    #[serde(default)]
    pub bus: BusConfig,
    /// Time in-flight requests get to finish after SIGTERM.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Public listener: relay paths, tunnel endpoint, discovery, health.
    pub public: SocketAddr,
    /// When set, the token service runs in this process on this address (monolithic mode).
    pub identity: Option<SocketAddr>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            public: SocketAddr::from(([127, 0, 0, 1], 5000)),
            identity: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Base URL of the token authority; its OIDC discovery document names the JWKS.
    pub authority: String,
    /// Audience tunnel and client tokens must carry.
    pub audience: String,
    /// Token endpoint announced to connectors; default `{authority}/connect/token`.
    pub token_endpoint: Option<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            authority: "http://127.0.0.1:5002".into(),
            audience: "relay".into(),
            token_endpoint: None,
        }
    }
}

/// Server-wide defaults of the relay path; tenants may override some of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// How long a request waits for a connector of its tenant before `503`.
    #[serde(with = "humantime_serde")]
    pub connector_wait: Duration,
    /// Longest life of a request in the relay (waiting + target work) before `504`.
    #[serde(with = "humantime_serde")]
    pub request_expiry: Duration,
    /// Largest request body accepted (bytes); larger ones get `413`. None: no limit.
    pub max_body_bytes: Option<u64>,
    /// `Retry-After` seconds sent with `503` when no connector is connected.
    pub retry_after_secs: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            connector_wait: Duration::from_secs(2),
            request_expiry: Duration::from_secs(120),
            max_body_bytes: None,
            retry_after_secs: 5,
        }
    }
}

/// Tunnel settings announced to connectors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_min_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        let d = TunnelSettings::default();
        TunnelConfig {
            keep_alive_interval: d.keep_alive_interval,
            reconnect_min_delay: d.reconnect_min_delay,
            reconnect_max_delay: d.reconnect_max_delay,
        }
    }
}

impl TunnelConfig {
    pub fn settings(&self) -> TunnelSettings {
        TunnelSettings {
            keep_alive_interval: self.keep_alive_interval,
            reconnect_min_delay: self.reconnect_min_delay,
            reconnect_max_delay: self.reconnect_max_delay,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodyStoreConfig {
    /// Directory for spooled bodies (`queue` mode; shared volume in multi-node set-ups).
    pub path: PathBuf,
}

impl Default for BodyStoreConfig {
    fn default() -> Self {
        BodyStoreConfig {
            path: PathBuf::from("bodies"),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    pub kind: BusKind,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// Single node: requests stay in this process.
    #[default]
    Memory,
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = relay_core::config::load(path, ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        if !self.identity.authority.starts_with("http://")
            && !self.identity.authority.starts_with("https://")
        {
            return Err(ConfigError::key(
                "identity.authority",
                "must be an http:// or https:// URL",
            ));
        }
        if let Some(public) = &self.public_url
            && !public.starts_with("http://")
            && !public.starts_with("https://")
        {
            return Err(ConfigError::key(
                "public_url",
                "must be an http:// or https:// URL",
            ));
        }
        if self.relay.request_expiry.is_zero() {
            return Err(ConfigError::key("relay.request_expiry", "must be positive"));
        }
        if self.tunnel.keep_alive_interval < Duration::from_secs(1) {
            return Err(ConfigError::key(
                "tunnel.keep_alive_interval",
                "must be at least 1s",
            ));
        }
        if self.tunnel.reconnect_max_delay < self.tunnel.reconnect_min_delay {
            return Err(ConfigError::key(
                "tunnel.reconnect_max_delay",
                "must not be smaller than tunnel.reconnect_min_delay",
            ));
        }
        Ok(())
    }

    /// The token endpoint connectors are told to use.
    pub fn token_endpoint(&self) -> String {
        self.identity.token_endpoint.clone().unwrap_or_else(|| {
            format!(
                "{}/connect/token",
                self.identity.authority.trim_end_matches('/')
            )
        })
    }
}
