//! The `relay-management` configuration (`management.toml`, `RELAY_MANAGEMENT__*`).

use std::net::SocketAddr;

use relay_core::config::ConfigError;
pub use relay_core::database::DatabaseConfig;
use relay_core::telemetry::LogConfig;
use serde::Deserialize;

/// Environment prefix of overrides: `RELAY_MANAGEMENT__IDENTITY__AUTHORITY=http://id:5002`.
pub const ENV_PREFIX: &str = "RELAY_MANAGEMENT";

/// Everything `relay-management` reads at start. Only `[database]` is required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: ListenConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// `[connections]`: caps and timeouts of the listener's connections.
    #[serde(default)]
    pub connections: relay_core::conn::ConnectionLimits,
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// The management API (operators only; do not expose it to the internet).
    pub public: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            public: SocketAddr::from(([127, 0, 0, 1], 5004)),
        }
    }
}

/// `[identity]`: where bearer tokens come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Token authority (OIDC issuer); its JWKS validates bearer tokens.
    pub authority: String,
    /// Audience management tokens must carry.
    pub audience: String,
    /// PEM file of CA certificates trusted for an `https://` authority, instead of the
    /// system roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            authority: "http://127.0.0.1:5002".to_owned(),
            audience: relay_token::AUDIENCE_MANAGEMENT.to_owned(),
            ca_file: None,
        }
    }
}

impl Config {
    /// Defaults everywhere except the database URL (embedded use, tests).
    pub fn with_database_url(url: impl Into<String>) -> Self {
        Self {
            listen: ListenConfig::default(),
            database: DatabaseConfig::with_url(url),
            identity: IdentityConfig::default(),
            log: LogConfig::default(),
            connections: relay_core::conn::ConnectionLimits::default(),
        }
    }

    /// Checks values serde cannot; each error names its key. Reads no files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        self.connections.validate("connections")?;
        let a = &self.identity.authority;
        if !(a.starts_with("http://") || a.starts_with("https://")) {
            return Err(ConfigError::key(
                "identity.authority",
                "expected an http(s) URL",
            ));
        }
        if self.identity.audience.is_empty() {
            return Err(ConfigError::key("identity.audience", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            relay_core::config::load_from(text, "management.toml", ENV_PREFIX, Vec::new())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let config = load("[database]\nurl = \"sqlite:///tmp/x.db\"\n").expect("valid");
        assert_eq!(config.listen.public.to_string(), "127.0.0.1:5004");
        assert_eq!(config.identity.audience, "relay-management");
        for (text, key) in [
            (
                "[database]\nurl = \"sqlite://x\"\n[identity]\nauthority = \"id\"\n",
                "identity.authority",
            ),
            (
                "[database]\nurl = \"sqlite://x\"\n[listen]\nport = 1\n",
                "port",
            ),
            ("[listen]\npublic = \"127.0.0.1:1\"\n", "database"),
        ] {
            let err = load(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }
}
