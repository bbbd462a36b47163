//! The `relay-identity` configuration (`identity.toml`, `RELAY_IDENTITY__*` overrides).

use std::net::SocketAddr;
use std::time::Duration;

use relay_core::config::ConfigError;
pub use relay_core::database::DatabaseConfig;
use relay_core::telemetry::LogConfig;
use serde::Deserialize;

/// Environment prefix of overrides: `RELAY_IDENTITY__KEYS__ROTATION_INTERVAL=7d`.
pub const ENV_PREFIX: &str = "RELAY_IDENTITY";

/// Everything `relay-identity` reads at start. Only `[database]` is required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: ListenConfig,
    pub database: DatabaseConfig,
    /// Base URL clients reach this service under, used as the token issuer (set it when
    /// behind a proxy). Default `http://{listen.public}` (`https://` with `[tls]`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Lifetime of issued access tokens.
    #[serde(default = "default_token_lifetime", with = "humantime_serde")]
    pub token_lifetime: Duration,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub hashing: HashingConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// `[metrics]`: the Prometheus listener (off unless `listen` is set).
    #[serde(default)]
    pub metrics: relay_core::metrics::MetricsConfig,
    /// `[tls]`: serve the token endpoint over TLS (certificate reloaded on SIGHUP).
    #[serde(default)]
    pub tls: relay_core::tls::TlsConfig,
    /// `[connections]`: caps and timeouts of the listener's connections.
    #[serde(default)]
    pub connections: relay_core::conn::ConnectionLimits,
}

/// `[rate_limit]`: token buckets at the token endpoint, to slow secret guessing and floods.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Failed secret checks one source address (IPv6: one /64) may make for one `client_id`
    /// at once. Only failures spend it, and each source has its own, so failures from
    /// elsewhere never lock a client out.
    pub burst: u32,
    /// Failed checks per minute a (`client_id`, source) pair regains.
    pub per_minute: u32,
    /// Requests one source address (IPv6: one /64) may make at once.
    pub per_source_burst: u32,
    /// Requests per minute a source address regains.
    pub per_source_per_minute: u32,
    /// Requests for client ids that do not exist, all of them together, at once.
    pub unknown_burst: u32,
    /// Requests per minute the unknown client ids regain together.
    pub unknown_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            burst: 20,
            per_minute: 60,
            per_source_burst: 200,
            per_source_per_minute: 600,
            unknown_burst: 10,
            unknown_per_minute: 60,
        }
    }
}

/// `[hashing]`: the pool secret checks (argon2id, 19 MiB and tens of milliseconds each) run
/// in, and the memory of recently verified secrets that spares them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashingConfig {
    /// Checks running at once; 0: one per core.
    pub workers: usize,
    /// Checks waiting for a worker; past them the token endpoint answers `503`.
    pub queue: usize,
    /// Checks (running plus waiting) one source address (IPv6: one /64) may hold at once;
    /// past it that source is answered `503` while others are still checked.
    pub per_source: usize,
    /// How long a secret that verified is recognised without a new hash (by a keyed digest;
    /// its revoked/expired state is still read from the database each time). 0: off.
    #[serde(with = "humantime_serde")]
    pub verified_ttl: Duration,
    /// Verified secrets remembered at most (the oldest are forgotten first).
    pub verified_entries: usize,
}

impl Default for HashingConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            queue: 16,
            per_source: 2,
            verified_ttl: Duration::from_secs(90 * 60),
            verified_entries: 10_000,
        }
    }
}

/// `[listen]`: socket addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Token, discovery, JWKS and health endpoints.
    pub public: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            public: SocketAddr::from(([127, 0, 0, 1], 5002)),
        }
    }
}

/// `[keys]`: signing-key rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// How long one key signs before its successor takes over.
    #[serde(with = "humantime_serde")]
    pub rotation_interval: Duration,
    /// How long a successor is published in the JWKS before it signs, so relying services
    /// know it before the first token arrives.
    #[serde(with = "humantime_serde")]
    pub publish_ahead: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            rotation_interval: Duration::from_secs(30 * 24 * 3600),
            publish_ahead: Duration::from_secs(3600),
        }
    }
}

fn default_token_lifetime() -> Duration {
    Duration::from_secs(3600)
}

impl Config {
    /// Defaults everywhere except the database URL (monolithic mode, tests).
    pub fn with_database_url(url: impl Into<String>) -> Self {
        Self {
            listen: ListenConfig::default(),
            database: DatabaseConfig::with_url(url),
            public_url: None,
            token_lifetime: default_token_lifetime(),
            keys: KeysConfig::default(),
            rate_limit: RateLimitConfig::default(),
            hashing: HashingConfig::default(),
            log: LogConfig::default(),
            metrics: relay_core::metrics::MetricsConfig::default(),
            tls: relay_core::tls::TlsConfig::default(),
            connections: relay_core::conn::ConnectionLimits::default(),
        }
    }

    /// Checks values serde cannot; each error names its key. Reads no files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        self.tls.files()?;
        self.connections.validate("connections")?;
        if let Some(url) = &self.public_url {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.contains(['?', '#']) || url.parse::<axum::http::Uri>().is_err() {
                return Err(ConfigError::key(
                    "public_url",
                    "expected an http(s) URL without query or fragment",
                ));
            }
        }
        // Short lifetimes are fine: connectors renew their tunnels before a token expires.
        if self.token_lifetime < Duration::from_secs(10)
            || self.token_lifetime > Duration::from_secs(24 * 3600)
        {
            return Err(ConfigError::key(
                "token_lifetime",
                "must be between 10s and 24h",
            ));
        }
        if self.keys.rotation_interval < Duration::from_secs(3600) {
            return Err(ConfigError::key(
                "keys.rotation_interval",
                "must be at least 1h",
            ));
        }
        if self.keys.publish_ahead >= self.keys.rotation_interval {
            return Err(ConfigError::key(
                "keys.publish_ahead",
                "must be shorter than keys.rotation_interval",
            ));
        }
        if self.rate_limit.burst == 0 || self.rate_limit.per_minute == 0 {
            return Err(ConfigError::key(
                "rate_limit.burst",
                "burst and per_minute must be at least 1",
            ));
        }
        let limits = &self.rate_limit;
        for (key, value) in [
            ("rate_limit.per_source_burst", limits.per_source_burst),
            (
                "rate_limit.per_source_per_minute",
                limits.per_source_per_minute,
            ),
            ("rate_limit.unknown_burst", limits.unknown_burst),
            ("rate_limit.unknown_per_minute", limits.unknown_per_minute),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be at least 1"));
            }
        }
        if self.hashing.workers > 256 || self.hashing.queue > 4096 {
            return Err(ConfigError::key(
                "hashing.workers",
                "workers at most 256 and queue at most 4096",
            ));
        }
        if self.hashing.per_source == 0 {
            return Err(ConfigError::key("hashing.per_source", "must be at least 1"));
        }
        if self.hashing.verified_ttl > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::key(
                "hashing.verified_ttl",
                "must be at most 24h (0 turns it off)",
            ));
        }
        if self.hashing.verified_entries > 1_000_000 {
            return Err(ConfigError::key(
                "hashing.verified_entries",
                "must be at most 1000000",
            ));
        }
        Ok(())
    }

    /// The token issuer: `public_url` without trailing slash, else `http://{listen.public}`.
    pub fn issuer(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.tls.cert_file.is_some() => format!("https://{}", self.listen.public),
            None => format!("http://{}", self.listen.public),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            relay_core::config::load_from(text, "identity.toml", ENV_PREFIX, Vec::new())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = load("[database]\nurl = \"sqlite:///tmp/x.db\"\n").expect("valid");
        assert_eq!(config.listen.public.to_string(), "127.0.0.1:5002");
        assert_eq!(config.issuer(), "http://127.0.0.1:5002");
        assert_eq!(config.token_lifetime, Duration::from_secs(3600));
        assert_eq!(
            config.keys.rotation_interval,
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(config.hashing.per_source, 2);
        assert_eq!(config.hashing.verified_ttl, Duration::from_secs(90 * 60));
        assert_eq!(config.hashing.verified_entries, 10_000);
        assert!(
            !format!("{config:?}").contains("/tmp/x.db"),
            "database URL is masked"
        );
    }

    #[test]
    fn durations_and_public_url_parse() {
        let config = load(
            "public_url = \"https://id.example.com/\"\ntoken_lifetime = \"15m\"\n\
             [database]\nurl = \"sqlite::memory:\"\n[keys]\nrotation_interval = \"7d\"\npublish_ahead = \"2h\"\n",
        )
        .expect("valid");
        assert_eq!(config.issuer(), "https://id.example.com");
        assert_eq!(config.token_lifetime, Duration::from_secs(900));
        assert_eq!(config.keys.publish_ahead, Duration::from_secs(7200));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[listen]\npublic = \"127.0.0.1:1\"\n", "database"),
            ("[database]\nurl = \"sqlite://x\"\nport = 1\n", "port"),
            (
                "token_lifetime = \"5s\"\n[database]\nurl = \"sqlite://x\"\n",
                "token_lifetime",
            ),
            (
                "public_url = \"ftp://x\"\n[database]\nurl = \"sqlite://x\"\n",
                "public_url",
            ),
            (
                "[database]\nurl = \"sqlite://x\"\n[keys]\npublish_ahead = \"31d\"\n",
                "keys.publish_ahead",
            ),
            ("[database]\n", "database.url"),
            (
                "[database]\nurl = \"sqlite://x\"\n[hashing]\nper_source = 0\n",
                "hashing.per_source",
            ),
            (
                "[database]\nurl = \"sqlite://x\"\n[hashing]\nverified_ttl = \"2d\"\n",
                "hashing.verified_ttl",
            ),
            (
                "[database]\nurl = \"sqlite://x\"\n[hashing]\nverified_cache = 1\n",
                "verified_cache",
            ),
        ];
        for (text, key) in cases {
            let err = load(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }
}
