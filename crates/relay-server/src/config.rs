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
    #[serde(default)]
    pub node: NodeConfig,
    /// Time in-flight requests get to finish after SIGTERM.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub log: LogConfig,
    /// `[metrics]`: the Prometheus listener (off unless `listen` is set).
    #[serde(default)]
    pub metrics: relay_core::metrics::MetricsConfig,
    /// `[request_log]`: which relayed requests are recorded, and for how long.
    #[serde(default)]
    pub request_log: crate::requestlog::RequestLogConfig,
    /// `[tls]`: serve the public listener (relay paths and tunnels) over TLS.
    #[serde(default)]
    pub tls: relay_core::tls::TlsConfig,
    /// `[connections]`: caps and timeouts of the public listener's connections.
    #[serde(default)]
    pub connections: relay_core::conn::ConnectionLimits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Public listener: relay paths, tunnel endpoint, discovery, health.
    pub public: SocketAddr,
    /// When set, the token service runs in this process on this address (monolithic mode).
    pub identity: Option<SocketAddr>,
    /// Serve that in-process token service over TLS with the `[tls]` certificate (then
    /// `identity.authority` is its `https://` URL).
    pub identity_tls: bool,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            public: SocketAddr::from(([127, 0, 0, 1], 5000)),
            identity: None,
            identity_tls: false,
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
    /// PEM file of CA certificates trusted for an `https://` authority, instead of the
    /// system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept tunnel and client tokens that carry no `tenant_id` claim (an older
    /// relay-identity, or another OIDC provider), binding them to whichever tenant has the
    /// token's `tenant` name when the token is checked. Off by default: with it, a deleted
    /// and re-created tenant of the same name accepts the old tenant's unexpired tokens.
    pub allow_name_binding: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            authority: "http://127.0.0.1:5002".into(),
            audience: "relay".into(),
            token_endpoint: None,
            ca_file: None,
            allow_name_binding: false,
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
    /// Requests one node takes from a tenant's queue at once (multi-node), unless the tenant
    /// sets its own concurrency limit.
    pub concurrency_limit: u16,
    /// While a request body streams into the tunnel, the longest time without a byte moving
    /// before the request gets `408` (a stalled client). The request expiry counts only from
    /// the end of the body, so long uploads are not cut by it.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// A client that takes no frame of a (large) response for this long has its stream reset,
    /// so stalled readers cannot hold the tunnel's connection window.
    #[serde(with = "humantime_serde")]
    pub client_write_timeout: Duration,
    /// Largest request body `queue` mode stores (it is written to disk before `202`).
    pub queue_max_body_bytes: u64,
    /// Bytes of request bodies one tenant may have spooled at once (single-node `queue`).
    pub spool_quota_bytes: u64,
    /// Free space the body directory must keep; below it `queue` requests get `503`.
    pub spool_min_free_bytes: u64,
    /// `queue` requests one tenant may have waiting on this node (single node); more get
    /// `429 queue-full`. Each counts its headers toward `spool_quota_bytes` too.
    pub queue_max_requests_per_tenant: usize,
    /// `queue` requests all tenants together may have waiting on this node; more get
    /// `503 queue-node-full`.
    pub queue_max_requests: usize,
    /// Relayed requests one client connection may have open at once (an HTTP/2 client's
    /// concurrent streams into tunnels); more get `429 stream-limit`.
    pub max_streams_per_connection: usize,
    /// Relayed requests one source (IPv4 address, IPv6 /64) may have open at once on this
    /// node; more get `429 stream-limit`.
    pub max_streams_per_source: usize,
    /// Responses of one source whose client has stopped taking frames (for a second or more)
    /// that may hold tunnel window at once; beyond it the longest-stalled are reset at once
    /// instead of after `client_write_timeout`.
    pub max_stalled_per_source: usize,
    /// Tunnels one tenant may hold on this node unless the tenant sets `max_tunnels`; more
    /// get `429 tunnel-limit`.
    pub max_tunnels: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            connector_wait: Duration::from_secs(2),
            request_expiry: Duration::from_secs(120),
            max_body_bytes: None,
            retry_after_secs: 5,
            concurrency_limit: 64,
            body_idle_timeout: Duration::from_secs(30),
            client_write_timeout: Duration::from_secs(30),
            queue_max_body_bytes: 16 << 20,
            spool_quota_bytes: 256 << 20,
            spool_min_free_bytes: 1 << 30,
            queue_max_requests_per_tenant: 1_000,
            queue_max_requests: 10_000,
            max_streams_per_connection: 128,
            max_streams_per_source: 512,
            max_stalled_per_source: 8,
            max_tunnels: 32,
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

/// `[node]`: this node's registration in the configuration database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// How often the node records that it is alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Missed heartbeats after which other nodes mark this node's connections gone.
    pub dead_after_missed: u32,
    /// This process's origin id, when the binary chose it before logging started (so journal
    /// entries carry it as `NODE`); otherwise a fresh one is drawn at start.
    #[serde(skip)]
    pub origin_id: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            heartbeat_interval: Duration::from_secs(5),
            dead_after_missed: 3,
            origin_id: None,
        }
    }
}

/// `[bus]`: how relay nodes reach each other.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    pub kind: BusKind,
    /// Broker URL(s) for `kind = "rabbitmq"`: `amqp://user:pass@host:5672/vhost`, a string or a
    /// list (cluster nodes, tried in order).
    pub url: Option<BrokerUrls>,
    /// File holding the broker URL (it contains a password); alternative to `url`.
    pub url_file: Option<PathBuf>,
    /// PEM file of CA certificates trusted for `amqps://` brokers, besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Prepended to every exchange and queue name, so installations can share a vhost.
    pub prefix: String,
    /// Use a local tunnel directly when this node has one (skips the broker).
    pub local_shortcut: bool,
    /// Bodies up to this many bytes travel inside broker messages; larger ones through the
    /// body store, which must then be a volume shared by all nodes.
    pub inline_body_limit: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            kind: BusKind::Memory,
            url: None,
            url_file: None,
            ca_file: None,
            prefix: String::new(),
            local_shortcut: true,
            inline_body_limit: 64 * 1024,
        }
    }
}

/// One broker URL or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BrokerUrls {
    One(relay_core::secret::Secret),
    Many(Vec<relay_core::secret::Secret>),
}

impl BusConfig {
    /// The broker URLs, reading `url_file` (one URL per line) when given.
    pub fn resolve_urls(&self) -> std::io::Result<Vec<String>> {
        match (&self.url, &self.url_file) {
            (Some(BrokerUrls::One(url)), _) => Ok(vec![url.expose().to_owned()]),
            (Some(BrokerUrls::Many(urls)), _) => {
                Ok(urls.iter().map(|u| u.expose().to_owned()).collect())
            }
            (None, Some(path)) => Ok(relay_core::secret::Secret::from_file(path)?
                .expose()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()),
            (None, None) => Ok(Vec::new()),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// Single node: requests stay in this process.
    #[default]
    Memory,
    /// Several nodes exchange requests and responses through RabbitMQ.
    Rabbitmq,
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
        self.tls.files()?;
        self.connections.validate("connections")?;
        if self.bus.kind == BusKind::Rabbitmq
            && self.bus.url.is_none()
            && self.bus.url_file.is_none()
        {
            return Err(ConfigError::key(
                "bus.url",
                "required when bus.kind = \"rabbitmq\"",
            ));
        }
        if let Some(BrokerUrls::One(url)) = &self.bus.url
            && !(url.expose().starts_with("amqp://") || url.expose().starts_with("amqps://"))
        {
            return Err(ConfigError::key(
                "bus.url",
                "must start with amqp:// or amqps://",
            ));
        }
        if self.node.heartbeat_interval < Duration::from_millis(100) {
            return Err(ConfigError::key(
                "node.heartbeat_interval",
                "must be at least 100ms",
            ));
        }
        if self.node.dead_after_missed == 0 {
            return Err(ConfigError::key(
                "node.dead_after_missed",
                "must be at least 1",
            ));
        }
        if self.relay.concurrency_limit == 0 {
            return Err(ConfigError::key(
                "relay.concurrency_limit",
                "must be at least 1",
            ));
        }
        if !self.identity.authority.starts_with("http://")
            && !self.identity.authority.starts_with("https://")
        {
            return Err(ConfigError::key(
                "identity.authority",
                "must be an http:// or https:// URL",
            ));
        }
        if self.listen.identity_tls
            && (self.listen.identity.is_none() || self.tls.cert_file.is_none())
        {
            return Err(ConfigError::key(
                "listen.identity_tls",
                "needs listen.identity (the in-process token service) and [tls] cert_file and \
                 key_file (the certificate it is served with)",
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
        for (key, value) in [
            (
                "relay.queue_max_requests_per_tenant",
                self.relay.queue_max_requests_per_tenant,
            ),
            ("relay.queue_max_requests", self.relay.queue_max_requests),
            (
                "relay.max_streams_per_connection",
                self.relay.max_streams_per_connection,
            ),
            (
                "relay.max_streams_per_source",
                self.relay.max_streams_per_source,
            ),
            (
                "relay.max_stalled_per_source",
                self.relay.max_stalled_per_source,
            ),
            ("relay.max_tunnels", self.relay.max_tunnels),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be at least 1"));
            }
        }
        if self.relay.client_write_timeout.is_zero() {
            return Err(ConfigError::key(
                "relay.client_write_timeout",
                "must be longer than 0 s",
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
