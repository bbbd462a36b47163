//! `relay-server --dev`: the embedded default on one machine, no external servers.
//!
//! SQLite file and body directory under the data directory, token service in process, tenant
//! `demo`, and an in-process demo connector with the targets `ping`, `echo` and `web` (a small
//! page served in process that also shows the headers a target receives).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use relay_connector::config::{RelayUrls, TargetConfig};
use relay_core::secret::Secret;
use relay_store::{NewTenant, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{
    BodyStoreConfig, BusConfig, Config, DatabaseConfig, IdentityConfig, ListenConfig, RelayConfig,
    TunnelConfig,
};
use crate::responses::{Body, full};

/// Name of the demo tenant.
pub const DEMO_TENANT: &str = "demo";

/// Flags of `relay-server --dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub relay_addr: SocketAddr,
    pub identity_addr: SocketAddr,
    /// The management API (`--management-addr`, default 127.0.0.1:5004).
    pub management_addr: SocketAddr,
    pub data_dir: PathBuf,
}

/// Runs the whole embedded stack until `shutdown`.
pub async fn run(options: DevOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating data directory {}", options.data_dir.display()))?;
    let data_dir = options
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", options.data_dir.display()))?;
    let database_url = format!("sqlite://{}", data_dir.join("relay.db").display());
    let store = Store::connect(&database_url)
        .await
        .context("opening the SQLite database")?;
    store.migrate().await.context("migrating the database")?;
    let secret = demo_secret(&store, &data_dir).await?;

    let listeners = crate::Listeners {
        public: TcpListener::bind(options.relay_addr)
            .await
            .with_context(|| {
                format!(
                    "binding the relay to {} (use --relay-addr)",
                    options.relay_addr
                )
            })?,
        identity: Some(
            TcpListener::bind(options.identity_addr)
                .await
                .with_context(|| {
                    format!(
                        "binding the token service to {} (use --identity-addr)",
                        options.identity_addr
                    )
                })?,
        ),
    };
    let relay_addr = loopback_if_unspecified(listeners.public.local_addr()?);
    let identity_addr = loopback_if_unspecified(
        listeners
            .identity
            .as_ref()
            .map_or(Ok(options.identity_addr), |l| l.local_addr())?,
    );
    let web_addr = start_demo_web(shutdown.clone()).await?;
    let (management_addr, admin_file) = crate::devmanagement::start(
        &store,
        &data_dir,
        &database_url,
        options.management_addr,
        &format!("http://{identity_addr}"),
        shutdown.clone(),
    )
    .await?;

    let config = Config {
        listen: ListenConfig {
            public: options.relay_addr,
            identity: Some(options.identity_addr),
            identity_tls: false,
        },
        public_url: None,
        database: DatabaseConfig::with_url(database_url),
        identity: IdentityConfig {
            authority: format!("http://{identity_addr}"),
            ..IdentityConfig::default()
        },
        relay: RelayConfig::default(),
        tunnel: TunnelConfig::default(),
        body_store: BodyStoreConfig {
            path: data_dir.join("bodies"),
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
    let server = tokio::spawn(crate::run(config, store, listeners, shutdown.clone()));

    let connector_config = relay_connector::Config {
        relay_url: RelayUrls::One(format!("http://{relay_addr}")),
        tenant: DEMO_TENANT.to_owned(),
        secret: Some(secret),
        secret_file: None,
        machine_name: Some("dev-connector".to_owned()),
        targets: BTreeMap::from([(
            "web".to_owned(),
            TargetConfig {
                url: format!("http://{web_addr}"),
                timeout: Duration::from_secs(100),
                follow_redirects: false,
                redirect_origins: Vec::new(),
                ca_file: None,
                ..Default::default()
            },
        )]),
        builtin_targets: true,
        tunnels_per_relay: 1,
        shutdown_grace: Duration::from_secs(5),
        log: relay_core::telemetry::LogConfig::default(),
        metrics: Default::default(),
        ca_file: None,
        proxy: None,
    };
    let connector = relay_connector::Connector::new(&connector_config)
        .context("preparing the demo connector")?;
    let mut live = connector.live_tunnels();
    let connector_task = tokio::spawn(connector.run(shutdown.clone()));
    // Evaluate to a bool at once: a held `watch::Ref` would block the connector's updates.
    let up = matches!(
        tokio::time::timeout(Duration::from_secs(30), live.wait_for(|n| *n > 0)).await,
        Ok(Ok(_))
    );
    if up {
        tracing::info!("Demo connector connected.");
        println!(
            "\nRelay is running (embedded default, data in {dir}).\n  curl http://{relay_addr}/relay/demo/ping\n  curl -d 'hello' http://{relay_addr}/relay/demo/echo\n  curl http://{relay_addr}/relay/demo/web/headers\nToken service: http://{identity_addr}\nManagement API: http://{management_addr}/management/ (client id and secret: {admin})\n  relayctl --management-url http://{management_addr} --client-id \"$(sed -n 1p {admin})\" --client-secret \"$(sed -n 2p {admin})\" tenant list\nStop with Ctrl-C.\n",
            dir = data_dir.display(),
            admin = admin_file.display()
        );
    } else {
        tracing::warn!("The demo connector has not connected yet; see the log above.");
    }
    let result = server.await.context("relay server task")?;
    let _ = connector_task.await;
    result.context("relay server")
}

fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// The demo tenant's secret: reused from `demo-secret` in the data directory while it still
/// verifies, otherwise created anew (the database keeps only its hash).
async fn demo_secret(store: &Store, data_dir: &Path) -> anyhow::Result<Secret> {
    let tenant = match store.tenant_by_name(DEMO_TENANT).await? {
        Some(tenant) => tenant,
        None => store
            .create_tenant(NewTenant {
                name: DEMO_TENANT.to_owned(),
                display_name: Some("Demo tenant".to_owned()),
                description: Some("Created by relay-server --dev".to_owned()),
            })
            .await
            .context("creating the demo tenant")?,
    };
    // The demo tenant shows what `trace` mode reports (other tenants opt in).
    let mut config = store.tenant_config(&tenant.id).await?;
    if config.tracing.is_none() {
        config.tracing = Some(true);
        store
            .set_tenant_config(&tenant.id, &config)
            .await
            .context("enabling trace mode for the demo tenant")?;
    }
    let path = data_dir.join("demo-secret");
    if let Ok(existing) = Secret::from_file(&path)
        && store
            .verify_secret(
                DEMO_TENANT,
                existing.expose(),
                relay_store::now_ms(),
                Some(relay_store::CredentialScope::Connector),
            )
            .await?
            .is_some()
    {
        return Ok(existing);
    }
    let (_, plaintext) = store
        .create_secret(&tenant.id, None, relay_store::CredentialScope::Connector)
        .await
        .context("creating the demo secret")?;
    write_private(&path, &plaintext).with_context(|| format!("writing {}", path.display()))?;
    Ok(Secret::new(plaintext))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// Serves the `web` demo target on an ephemeral loopback port.
async fn start_demo_web(shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo web target")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                () = shutdown.cancelled() => return,
            };
            tokio::spawn(async move {
                let service = service_fn(|req| async move { Ok::<_, Infallible>(demo_page(req)) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn demo_page(req: Request<Incoming>) -> Response<Body> {
    let (status, content_type, body) = match req.uri().path() {
        "/" => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(b"<!doctype html><title>Relay demo</title><h1>It works</h1><p>This page was served inside the private network and reached you through the relay. See <a href=\"headers\">the headers the target received</a>.</p>\n"),
        ),
        "/headers" => {
            let map: BTreeMap<&str, &str> = req
                .headers()
                .iter()
                .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
                .collect();
            let json = serde_json::json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": map,
            });
            (StatusCode::OK, "application/json", Bytes::from(json.to_string()))
        }
        _ => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", Bytes::from_static(b"not found\n")),
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}
