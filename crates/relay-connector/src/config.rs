//! Connector configuration: one TOML file plus `RELAY_CONNECTOR__…` environment overrides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use relay_core::config::ConfigError;
use relay_core::secret::Secret;
use relay_core::telemetry::LogConfig;
use relay_proto::path::EncodedSlashes;
use serde::Deserialize;

/// Prefix of environment overrides: `RELAY_CONNECTOR__TENANT=acme`.
pub const ENV_PREFIX: &str = "RELAY_CONNECTOR";

/// The whole connector configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL(s) of relay servers; the discovery document tells the connector the rest.
    pub relay_url: RelayUrls,
    /// Tenant name; also the OAuth2 `client_id`.
    pub tenant: String,
    /// The client secret, inline (prefer `secret_file`).
    #[serde(default)]
    pub secret: Option<Secret>,
    /// File holding the client secret (systemd credential).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Name this connector reports to the server; defaults to the host name.
    #[serde(default)]
    pub machine_name: Option<String>,
    /// Targets by name: `/relay/{tenant}/{name}/…` reaches `targets.{name}.url`.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    /// Whether the built-in `ping` and `echo` targets answer (a configured target with the
    /// same name always wins).
    #[serde(default = "yes")]
    pub builtin_targets: bool,
    /// Tunnels kept open to each relay URL (default 2). One HTTP/2 connection is driven by one
    /// task on each side, so a second tunnel lets a busy connector use more than one core, and
    /// losing one connection leaves the other carrying requests.
    #[serde(default = "default_tunnels")]
    pub tunnels_per_relay: u16,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub log: LogConfig,
    /// `[metrics]`: the Prometheus listener (off unless `listen` is set).
    #[serde(default)]
    pub metrics: relay_core::metrics::MetricsConfig,
    /// PEM file of the CA(s) trusted for `https://` relay, token and tunnel URLs, instead of
    /// the system's root store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// HTTP proxy (`http://[user:pass@]host:port`) for every outbound relay and identity
    /// connection, tunnelled with `CONNECT`. Overrides `HTTPS_PROXY`/`HTTP_PROXY`;
    /// `"none"` turns proxies off. `NO_PROXY` is honoured either way.
    #[serde(default)]
    pub proxy: Option<String>,
}

/// `relay_url = "…"` or `relay_url = ["…", "…"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RelayUrls {
    One(String),
    Many(Vec<String>),
}

impl RelayUrls {
    pub fn as_slice(&self) -> &[String] {
        match self {
            RelayUrls::One(url) => std::slice::from_ref(url),
            RelayUrls::Many(urls) => urls,
        }
    }
}

/// One target inside the private network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Base URL; the relayed path is appended to its path.
    pub url: String,
    /// Time allowed for the target to answer with a response head.
    #[serde(default = "default_target_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Follow 3xx answers of body-less requests instead of passing them through: only to the
    /// target's own origin (scheme, host and port), unless `redirect_origins` names more;
    /// never from `https` to `http`.
    #[serde(default)]
    pub follow_redirects: bool,
    /// Further origins (`https://login.example.com`, with a port where it is not the
    /// scheme's default) redirects may be followed to. `Authorization`, `Cookie` and
    /// `Proxy-Authorization` are dropped once a redirect leaves the target's origin.
    #[serde(default)]
    pub redirect_origins: Vec<String>,
    /// PEM CA certificates trusted for an `https://` target instead of the system roots (an
    /// internal CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `"reject"` (default) refuses `%2F` and `%25` in the path with `400 path-invalid`;
    /// `"pass"` passes them byte for byte when the path is otherwise safe (GitLab-style
    /// `group%2Fproject` ids, `100%25`).
    #[serde(default)]
    pub encoded_slashes: EncodedSlashes,
    /// Keep the client's own `Forwarded`, `X-Forwarded-*` and `X-Real-IP` (the connector's
    /// element is appended after theirs). Off by default: they are dropped, because a target
    /// that reads the first element would see a client of the client's choosing.
    #[serde(default)]
    pub trust_client_forwarded: bool,
}

/// A target with every optional key at its default, for code that builds a configuration
/// (`TargetConfig { url, ..Default::default() }`); the empty `url` fails `validate`.
impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            url: String::new(),
            timeout: default_target_timeout(),
            follow_redirects: false,
            redirect_origins: Vec::new(),
            ca_file: None,
            encoded_slashes: EncodedSlashes::default(),
            trust_client_forwarded: false,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_tunnels() -> u16 {
    2
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_target_timeout() -> Duration {
    Duration::from_secs(100)
}

impl Config {
    /// Loads and validates the file at `path` with environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = relay_core::config::load(path, ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: URLs, names, the secret's presence.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let urls = self.relay_url.as_slice();
        if urls.is_empty() {
            return Err(ConfigError::key(
                "relay_url",
                "at least one relay URL is required",
            ));
        }
        for url in urls {
            check_http_url(url).map_err(|m| ConfigError::key("relay_url", m))?;
        }
        if let Some(proxy) = &self.proxy
            && proxy != "none"
        {
            crate::dial::ProxyUrl::parse(proxy).map_err(|m| ConfigError::key("proxy", m))?;
        }
        if !relay_proto::is_valid_tenant_name(&self.tenant) {
            return Err(ConfigError::key(
                "tenant",
                "must be 1-64 characters of letters, digits, '_' or '-'",
            ));
        }
        match (&self.secret, &self.secret_file) {
            (None, None) => {
                return Err(ConfigError::key(
                    "secret_file",
                    "set `secret_file` (or `secret`)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::key(
                    "secret",
                    "set either `secret` or `secret_file`, not both",
                ));
            }
            _ => {}
        }
        if !(1..=16).contains(&self.tunnels_per_relay) {
            return Err(ConfigError::key(
                "tunnels_per_relay",
                "must be between 1 and 16",
            ));
        }
        for (name, target) in &self.targets {
            if !relay_proto::is_valid_name(name) {
                return Err(ConfigError::key(
                    format!("targets.{name}"),
                    "target names are 1-64 characters of letters, digits, '_', '-' or '.'",
                ));
            }
            check_http_url(&target.url)
                .map_err(|m| ConfigError::key(format!("targets.{name}.url"), m))?;
            if target.timeout.is_zero() {
                return Err(ConfigError::key(
                    format!("targets.{name}.timeout"),
                    "must be positive",
                ));
            }
        }
        Ok(())
    }

    /// The client secret, read from `secret_file` when given.
    pub fn read_secret(&self) -> Result<Secret, ConfigError> {
        match (&self.secret, &self.secret_file) {
            (Some(secret), _) => Ok(secret.clone()),
            (None, Some(path)) => {
                Secret::from_file(path).map_err(|e| ConfigError::key("secret_file", e.to_string()))
            }
            (None, None) => Err(ConfigError::key(
                "secret_file",
                "set `secret_file` (or `secret`)",
            )),
        }
    }
}

/// Relay and target URLs may be `http://` or `https://`.
fn check_http_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("`{url}` must start with http:// or https://"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            relay_core::config::load_from(text, "connector.toml", ENV_PREFIX, Vec::new())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn parses_the_documented_example() {
        let config = parse(
            r#"
            relay_url = "http://127.0.0.1:5000"
            tenant = "acme"
            secret = "s3cret"
            [targets.web]
            url = "http://127.0.0.1:8080/base"
            timeout = "30s"
            follow_redirects = false
            "#,
        )
        .expect("valid");
        assert_eq!(config.relay_url.as_slice(), ["http://127.0.0.1:5000"]);
        assert_eq!(config.targets["web"].timeout, Duration::from_secs(30));
        assert!(config.builtin_targets);
        assert_eq!(config.tunnels_per_relay, 2);
        assert_eq!(
            config.targets["web"].encoded_slashes,
            EncodedSlashes::Reject
        );
        assert!(!config.targets["web"].trust_client_forwarded);
    }

    #[test]
    fn target_policies_parse() {
        let config = parse(
            r#"
            relay_url = "http://127.0.0.1:5000"
            tenant = "acme"
            secret = "s3cret"
            [targets.gitlab]
            url = "http://gitlab.internal/api/v4"
            encoded_slashes = "pass"
            trust_client_forwarded = true
            "#,
        )
        .expect("valid");
        assert_eq!(
            config.targets["gitlab"].encoded_slashes,
            EncodedSlashes::Pass
        );
        assert!(config.targets["gitlab"].trust_client_forwarded);
    }

    #[test]
    fn accepts_a_list_of_relays() {
        let config =
            parse("relay_url = [\"http://a:1\", \"http://b:2\"]\ntenant = \"t\"\nsecret = \"x\"\n")
                .expect("valid");
        assert_eq!(config.relay_url.as_slice().len(), 2);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "relay_url = \"ftp://x\"\ntenant = \"t\"\nsecret = \"x\"\n",
                "relay_url",
            ),
            (
                "relay_url = \"http://x\"\ntenant = \"a b\"\nsecret = \"x\"\n",
                "tenant",
            ),
            ("relay_url = \"http://x\"\ntenant = \"t\"\n", "secret_file"),
            (
                "relay_url = \"http://x\"\ntenant = \"t\"\nsecret = \"x\"\n[targets.w]\nurl = \"nope\"\n",
                "targets.w.url",
            ),
            (
                "relay_url = \"http://x\"\ntenant = \"t\"\nsecret = \"x\"\n[targets.w]\nurl = \"http://a\"\ntimeout = \"soon\"\n",
                "targets.w.timeout",
            ),
            (
                "relay_url = \"http://x\"\ntenant = \"t\"\nsecret = \"x\"\n[targets.w]\nurl = \"http://a\"\nencoded_slashes = \"decode\"\n",
                "targets.w.encoded_slashes",
            ),
            (
                "relay_url = \"http://x\"\ntenant = \"t\"\nsecret = \"x\"\n[targets.w]\nurl = \"http://a\"\ntrust_client_forwarded = \"yes\"\n",
                "targets.w.trust_client_forwarded",
            ),
            (
                "relay_url = \"http://x\"\ntenant = \"t\"\nsecret = \"x\"\ntimeout = 3\n",
                "timeout",
            ),
            (
                "relay_url = \"http://x\"\ntenant = \"t\"\nsecret = \"x\"\ntunnels_per_relay = 0\n",
                "tunnels_per_relay",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(key), "expected `{key}` in: {err}");
        }
    }

    #[test]
    fn secret_is_masked_in_debug() {
        let config = parse("relay_url = \"http://x\"\ntenant = \"t\"\nsecret = \"hunter2\"\n")
            .expect("valid");
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
