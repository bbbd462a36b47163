//! The relay stack for end-to-end tests: relay server and token service in this process on
//! ephemeral ports with a fresh SQLite database, and connectors started from the library.
//! Tests that need real processes use `relay_testkit::process`.
#![allow(clippy::unwrap_used)]

pub mod cluster;
pub mod logs;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use relay_connector::config::{RelayUrls, TargetConfig};
use relay_core::secret::Secret;
use relay_server::config::{
    BodyStoreConfig, BusConfig, Config, DatabaseConfig, IdentityConfig, ListenConfig, RelayConfig,
    TunnelConfig,
};
use relay_store::{NewTenant, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A free TCP port on 127.0.0.1 (for configs of processes that bind it themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the real `relayctl` against `db`; panics with its stderr on failure.
pub fn relayctl(db: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(relay_testkit::process::bin_path("relayctl"))
        .arg("--database-url")
        .arg(db)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "relayctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A private scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "relay-{label}-{}-{}",
            std::process::id(),
            uuid_like()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{t:x}{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Relay server + token service running in this process.
pub struct Stack {
    pub scratch: Scratch,
    pub store: Store,
    pub relay_addr: SocketAddr,
    pub identity_addr: SocketAddr,
    pub database_url: String,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<Result<(), relay_server::ServerError>>,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test defaults, adjusted by `tune`.
    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Stack {
        let scratch = Scratch::new("stack");
        let database_url = format!("sqlite://{}", scratch.0.join("relay.db").display());
        let store = Store::connect(&database_url).await.unwrap();
        store.migrate().await.unwrap();
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let identity = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = public.local_addr().unwrap();
        let identity_addr = identity.local_addr().unwrap();
        let mut config = Config {
            listen: ListenConfig {
                public: relay_addr,
                identity: Some(identity_addr),
                identity_tls: false,
            },
            public_url: None,
            database: DatabaseConfig::with_url(database_url.clone()),
            identity: IdentityConfig {
                authority: format!("http://{identity_addr}"),
                ..IdentityConfig::default()
            },
            relay: RelayConfig {
                connector_wait: Duration::from_millis(300),
                ..RelayConfig::default()
            },
            tunnel: TunnelConfig {
                reconnect_min_delay: Duration::from_millis(100),
                reconnect_max_delay: Duration::from_millis(500),
                ..TunnelConfig::default()
            },
            body_store: BodyStoreConfig {
                path: scratch.0.join("bodies"),
            },
            bus: BusConfig::default(),
            node: Default::default(),
            request_log: Default::default(),
            shutdown_grace: Duration::from_secs(5),
            log: relay_core::telemetry::LogConfig::default(),
            metrics: Default::default(),
            tls: Default::default(),
            connections: Default::default(),
        };
        tune(&mut config);
        let shutdown = CancellationToken::new();
        let listeners = relay_server::Listeners {
            public,
            identity: Some(identity),
        };
        let server = tokio::spawn(relay_server::run(
            config,
            store.clone(),
            listeners,
            shutdown.clone(),
        ));
        let ready = format!("http://{relay_addr}/health/ready");
        relay_testkit::wait::until(Duration::from_secs(20), "relay ready", || async {
            let answer = relay_testkit::client::client()
                .get(ready.parse().unwrap())
                .await
                .ok()?;
            answer.status().is_success().then_some(())
        })
        .await;
        Stack {
            scratch,
            store,
            relay_addr,
            identity_addr,
            database_url,
            shutdown,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.relay_addr)
    }

    /// Creates a tenant and returns a fresh secret of it.
    pub async fn tenant(&self, name: &str) -> String {
        let tenant = self
            .store
            .create_tenant(NewTenant {
                name: name.to_owned(),
                display_name: None,
                description: None,
            })
            .await
            .unwrap();
        self.store
            .create_secret(&tenant.id, None, relay_store::CredentialScope::Connector)
            .await
            .unwrap()
            .1
    }

    /// Creates a `client` secret (for tenants that require client tokens) of an existing
    /// tenant and returns it.
    pub async fn client_secret(&self, name: &str) -> String {
        let tenant = self.store.tenant_by_name(name).await.unwrap().unwrap();
        self.store
            .create_secret(&tenant.id, None, relay_store::CredentialScope::Client)
            .await
            .unwrap()
            .1
    }

    /// Creates a tenant with `config` (before the relay has looked it up) and returns a secret.
    pub async fn tenant_with(&self, name: &str, config: relay_store::TenantConfig) -> String {
        let secret = self.tenant(name).await;
        let tenant = self.store.tenant_by_name(name).await.unwrap().unwrap();
        self.store
            .set_tenant_config(&tenant.id, &config)
            .await
            .unwrap();
        secret
    }

    /// Starts a connector for `tenant` with the given `(name, url)` targets.
    pub fn connector(
        &self,
        tenant: &str,
        secret: &str,
        targets: &[(&str, String)],
    ) -> ConnectorHandle {
        let targets = targets
            .iter()
            .map(|(name, url)| {
                (
                    (*name).to_owned(),
                    TargetConfig {
                        url: url.clone(),
                        timeout: Duration::from_secs(100),
                        follow_redirects: false,
                        redirect_origins: Vec::new(),
                        ca_file: None,
                        ..Default::default()
                    },
                )
            })
            .collect();
        self.connector_with(tenant, secret, targets)
    }

    pub fn connector_with(
        &self,
        tenant: &str,
        secret: &str,
        targets: BTreeMap<String, TargetConfig>,
    ) -> ConnectorHandle {
        self.connector_via(&self.url(""), tenant, secret, targets)
    }

    /// Like [`Stack::connector_with`], reaching the relay at `relay_url` (e.g. through a proxy).
    pub fn connector_via(
        &self,
        relay_url: &str,
        tenant: &str,
        secret: &str,
        targets: BTreeMap<String, TargetConfig>,
    ) -> ConnectorHandle {
        let config = relay_connector::Config {
            relay_url: RelayUrls::One(relay_url.to_owned()),
            tenant: tenant.to_owned(),
            secret: Some(Secret::new(secret)),
            secret_file: None,
            machine_name: Some(format!("test-{tenant}")),
            targets,
            builtin_targets: true,
            tunnels_per_relay: 1,
            shutdown_grace: Duration::from_secs(5),
            log: relay_core::telemetry::LogConfig::default(),
            metrics: Default::default(),
            ca_file: None,
            proxy: None,
        };
        let connector = relay_connector::Connector::new(&config).unwrap();
        let live = connector.live_tunnels();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(connector.run(shutdown.clone()));
        ConnectorHandle {
            live,
            shutdown,
            task,
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An in-process connector; stops when dropped.
pub struct ConnectorHandle {
    pub live: watch::Receiver<usize>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl ConnectorHandle {
    /// Waits until at least `n` tunnels are up.
    pub async fn connected(&mut self, n: usize) {
        tokio::time::timeout(
            Duration::from_secs(20),
            self.live.wait_for(|live| *live >= n),
        )
        .await
        .expect("connector connected in time")
        .expect("connector alive");
    }
}

impl Drop for ConnectorHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
