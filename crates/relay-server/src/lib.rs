//! The relay server: public relay endpoint, connector tunnel endpoint, discovery document
//! and health, optionally with the token service in the same process (monolithic mode).
//!
//! - [`config`]: the TOML configuration.
//! - `public`: the public listener (HTTP/1.1 and h2c) and its routes.
//! - `relay`: the relay path — tenant lookup, limits, dispatch into a tunnel, answers.
//! - `tunnel`: the connector endpoint — authentication, upgrade, reversed HTTP/2, drain.
//! - `ack`: acknowledge modes and the signed acknowledge URL of mode `manual`.
//! - `registry`: live tunnels by tenant id and the choice of tunnel per request.
//! - `credentials`: whether a token's tenant id and credential are still valid.
//! - `tenants`: the cached tenant directory over the configuration store.
//! - `spool`: `queue` mode on one node (body spooled to the body store).
//! - [`dev`]: `relay-server --dev`, the embedded default with a demo connector.

pub mod config;
pub mod dev;
mod devmanagement;
mod episodes;

mod ack;
mod body;
mod bodystore;
mod credentials;
mod crossnode;
mod killable;
mod livepush;
mod metrics;
mod origins;
mod public;
mod registry;
mod relay;
pub mod requestlog;
mod responses;
mod slowreader;
mod spool;
mod streams;
mod tenants;
mod tunnel;

use std::sync::Arc;

use relay_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::Config;
use crate::registry::Registry;
use crate::tenants::TenantDirectory;

/// Version reported in the discovery document and to connectors.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything request handlers share.
pub(crate) struct AppState {
    config: Config,
    store: Store,
    tenants: Arc<TenantDirectory>,
    registry: Registry,
    validator: relay_token::Validator,
    /// Whether the credentials behind client tokens are still valid (short cache).
    secrets: credentials::SecretStates,
    /// Relayed requests open per source on this node (`relay.max_streams_per_source`).
    streams: Arc<streams::SourceStreams>,
    /// Resets responses whose clients stopped reading (`relay.client_write_timeout`).
    watchdog: Arc<slowreader::Watchdog>,
    /// Bytes of `queue` bodies spooled per tenant on this node (`relay.spool_quota_bytes`).
    spool: Arc<spool::Usage>,
    /// Queue expiries and refusals (counted; one log line per flood).
    spool_events: spool::QueueEvents,
    /// Tunnels refused at `max_tunnels` (one log line per tenant and flood).
    tunnel_refusals: episodes::Episodes,
    /// Scheme clients use to reach the relay, for `X-Forwarded-Proto`.
    client_proto: &'static str,
    /// This node's id (an origin in multi-node set-ups).
    origin_id: String,
    /// The broker side of a multi-node set-up (`bus.kind = "rabbitmq"`).
    cross: Option<Arc<crossnode::CrossNode>>,
    /// Requests waiting for a manual acknowledgement; the acknowledge URL key.
    acks: Arc<ack::Acks>,
    /// TLS of the public listener (`[tls]`), reloaded on SIGHUP.
    tls: Option<Arc<relay_core::tls::ReloadableAcceptor>>,
    /// Cancelled once shutdown begins: new tunnels are refused, readiness fails.
    draining: CancellationToken,
    tasks: TaskTracker,
    /// Where finished requests are logged (`None` with `request_log.level = "none"`).
    request_log: Option<requestlog::RequestLog>,
}

/// Sockets the server serves on; bound by the caller so tests can use port 0.
pub struct Listeners {
    pub public: TcpListener,
    /// The in-process token service's listener (monolithic mode).
    pub identity: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config.listen`.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let public = TcpListener::bind(config.listen.public).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding {}: {e}", config.listen.public))
        })?;
        let identity = match config.listen.identity {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))?,
            ),
            None => None,
        };
        Ok(Listeners { public, identity })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration store: {0}")]
    Store(#[from] relay_store::StoreError),
    #[error(
        "reading the acknowledge URL key from the configuration store (after an upgrade, run \
         `relayctl migrate`): {0}"
    )]
    AckSecret(#[source] relay_store::StoreError),
    #[error("body store {path}: {source}")]
    BodyStore {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("token service: {0}")]
    Identity(String),
    #[error("message broker: {0}")]
    Bus(#[from] relay_bus::BusError),
    #[error("bus.url_file: {0}")]
    BusUrl(#[source] std::io::Error),
    #[error("identity.ca_file: {0}")]
    IdentityCa(#[source] relay_core::tls::TlsError),
    #[error("bus.ca_file: {0}")]
    BusCa(#[source] std::io::Error),
    #[error("{0}")]
    Metrics(#[source] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] relay_core::tls::TlsError),
    #[error("{0}")]
    Config(#[from] relay_core::config::ConfigError),
}

/// Runs the server until `shutdown` fires, then drains: new tunnels are refused, connectors
/// are told to move, in-flight requests get `config.shutdown_grace` to finish.
pub async fn run(
    config: Config,
    store: Store,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    relay_core::files::create_private_dir(&config.body_store.path).map_err(|source| {
        ServerError::BodyStore {
            path: config.body_store.path.display().to_string(),
            source,
        }
    })?;
    relay_core::files::warn_if_exposed("body directory", [config.body_store.path.as_path()]);
    let tenants = Arc::new(TenantDirectory::new(store.clone(), config.relay.clone()));
    let count = tenants.reload().await?;
    tracing::info!(tenants = count, "Tenants loaded.");
    let acks = Arc::new(ack::Acks::new(
        &store
            .installation_secret(ack::SECRET_NAME)
            .await
            .map_err(ServerError::AckSecret)?,
    ));
    let tasks = TaskTracker::new();
    let identity_done = match listeners.identity {
        Some(listener) => {
            Some(start_identity(&config, store.clone(), listener, shutdown.clone(), &tasks).await?)
        }
        None => None,
    };
    let origin_id = config
        .node
        .origin_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let bodies = bodystore::BodyStore::new(config.body_store.path.clone());
    let cross = match config.bus.kind {
        config::BusKind::Memory => None,
        config::BusKind::Rabbitmq => {
            let urls = config.bus.resolve_urls().map_err(ServerError::BusUrl)?;
            let mut bus_config = relay_bus::BusConfig::new(urls, config.bus.prefix.clone());
            if let Some(path) = &config.bus.ca_file {
                bus_config.ca_pem =
                    Some(std::fs::read_to_string(path).map_err(ServerError::BusCa)?);
            }
            let bus = relay_bus::Bus::connect(bus_config, &origin_id).await?;
            let cross = Arc::new(crossnode::CrossNode::new(
                bus,
                bodies.clone(),
                config.bus.inline_body_limit,
            ));
            for id in tenants.ids() {
                cross.ensure_declared(&id).await?;
            }
            tasks.spawn(cross.clone().run_responses(shutdown.clone()));
            tracing::info!(
                tenants = count,
                "Message broker connected; tenant queues declared."
            );
            Some(cross)
        }
    };
    tasks.spawn(sweep_bodies(
        bodies,
        config.relay.request_expiry,
        shutdown.clone(),
    ));
    let tls = config
        .tls
        .files()?
        .map(|(cert, key)| relay_core::tls::ReloadableAcceptor::start(cert, key, &shutdown))
        .transpose()?;
    let request_log = requestlog::RequestLog::start(&config.request_log, &store, &tasks, &shutdown);
    let state = Arc::new(AppState {
        client_proto: match (&config.public_url, &tls) {
            (_, Some(_)) => "https",
            (Some(url), None) if url.starts_with("https://") => "https",
            _ => "http",
        },
        tls,
        validator: relay_token::Validator::with_client(
            &config.identity.authority,
            &config.identity.audience,
            relay_core::https::client(config.identity.ca_file.as_deref())
                .map_err(ServerError::IdentityCa)?,
        ),
        secrets: credentials::SecretStates::default(),
        streams: Arc::default(),
        watchdog: slowreader::Watchdog::new(
            config.relay.client_write_timeout,
            config.relay.max_stalled_per_source,
        ),
        spool: Arc::default(),
        spool_events: spool::QueueEvents::default(),
        tunnel_refusals: episodes::Episodes::default(),
        cross,
        acks,
        origin_id,
        config,
        store,
        tenants: tenants.clone(),
        registry: Registry::default(),
        draining: CancellationToken::new(),
        request_log,
        tasks: tasks.clone(),
    });
    tasks.spawn(tenants.refresh_loop(shutdown.clone()));
    tasks.spawn(state.watchdog.clone().run(shutdown.clone()));
    if let Some(cross) = &state.cross {
        tasks.spawn(cross.clone().run_acks(state.acks.clone(), shutdown.clone()));
    }
    tasks.spawn(livepush::run(state.clone(), shutdown.clone()));
    if let Some(addr) = state.config.metrics.listen {
        let listener = relay_core::metrics::bind(addr)
            .await
            .map_err(ServerError::Metrics)?;
        let render: relay_core::metrics::Render = {
            let state = state.clone();
            Arc::new(move || metrics::render(&state))
        };
        tokio::spawn(relay_core::metrics::serve(
            listener,
            render,
            shutdown.clone(),
        ));
    }
    // The node's registration ends after its tunnels drained, so their records keep their
    // real close times.
    let origin_stop = CancellationToken::new();
    let live = {
        let state = state.clone();
        move || state.registry.all().iter().map(|t| t.id.clone()).collect()
    };
    tasks.spawn(origins::run(
        state.store.clone(),
        state.origin_id.clone(),
        origins::OriginSettings {
            heartbeat_interval: state.config.node.heartbeat_interval,
            dead_after_missed: state.config.node.dead_after_missed,
        },
        live,
        origin_stop.clone(),
    ));
    if state.config.public_url.is_none() {
        tracing::warn!(
            "public_url is not set: the discovery document names the tunnel endpoint after \
             each client's Host header; set public_url in production."
        );
    }
    let addr = listeners.public.local_addr().ok();
    tracing::info!(addr = ?addr, origin = %state.origin_id, "Relay server listening.");
    // Listeners are bound (by the caller), the database answered (tenants loaded) and the
    // broker is connected: systemd may now consider the node up.
    relay_core::notify::ready_with_status(&status_line(&state));
    relay_core::notify::spawn_status(STATUS_EVERY, shutdown.clone(), {
        let state = state.clone();
        move || status_line(&state)
    });
    public::serve(state.clone(), listeners.public, shutdown).await;
    origin_stop.cancel();
    tasks.close();
    if let Some(done) = identity_done {
        let _ = done.await;
    }
    let grace = state.config.shutdown_grace;
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!("Background tasks still running at the end of the shutdown grace.");
    }
    if let Some(cross) = &state.cross {
        // Origin ids are new on every start: nobody reads these queues again. Deleted, a late
        // response or acknowledgement for this node is unroutable (an error for its sender)
        // instead of waiting unread until the queues expire.
        match cross.bus.delete_origin_queues().await {
            Ok(()) => tracing::info!("Deleted this node's response and acknowledge queues."),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot delete this node's queues; they expire unused.");
            }
        }
    }
    tracing::info!("Relay server stopped.");
    Ok(())
}

/// How often the systemd `STATUS=` line is refreshed.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// `serving, 12 connectors, 3 tenants`: connectors (tenant and machine, however many
/// tunnels each keeps) attached to this node and the tenants they belong to.
fn status_line(state: &AppState) -> String {
    let tunnels = state.registry.all();
    let connectors = registry::connectors(&tunnels);
    let mut tenants: Vec<&str> = connectors.iter().map(|(tenant, _)| *tenant).collect();
    tenants.dedup();
    format!(
        "serving, {} connector{}, {} tenant{}",
        connectors.len(),
        if connectors.len() == 1 { "" } else { "s" },
        tenants.len(),
        if tenants.len() == 1 { "" } else { "s" },
    )
}

/// Removes body files nobody will read any more (their request expired long ago).
async fn sweep_bodies(
    bodies: bodystore::BodyStore,
    expiry: std::time::Duration,
    shutdown: CancellationToken,
) {
    // Tenants may set a longer expiry than the server default: keep files at least an hour.
    let max_age = expiry
        .saturating_mul(2)
        .max(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            () = shutdown.cancelled() => return,
        }
        let removed = bodies.sweep(max_age).await;
        if removed > 0 {
            tracing::info!(removed, "Orphaned body files removed.");
        }
    }
}

async fn start_identity(
    config: &Config,
    store: Store,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Identity(e.to_string()))?;
    let mut identity = relay_identity::Config::with_database_url(String::new());
    identity.database = config.database.clone();
    identity.listen.public = addr;
    identity.public_url = Some(config.identity.authority.clone());
    identity.log = config.log.clone();
    // The in-process token service faces the same clients: the same connection limits.
    identity.connections = config.connections;
    if config.listen.identity_tls {
        identity.tls = config.tls.clone();
    }
    let tls = config.listen.identity_tls;
    tracing::info!(%addr, tls, "Token service listening (in process).");
    let handle = tokio::spawn(async move {
        if let Err(e) = relay_identity::serve(identity, store, listener, shutdown).await {
            tracing::error!(error = %e, "Token service failed.");
        }
    });
    let _ = tasks;
    Ok(handle)
}
