//! `relay-server`: the public relay node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relay_server::dev::DevOptions;
use relay_server::{Config, Listeners};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Relay server: public relay endpoint and connector tunnel endpoint"
)]
struct Cli {
    /// Configuration file (TOML); `RELAY_SERVER__…` variables override it.
    #[arg(long, global = true, env = "RELAY_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Run the embedded default: SQLite, in-process token service, demo tenant and connector.
    #[arg(long)]
    dev: bool,
    /// Public relay address (`--dev` default 127.0.0.1:5000; overrides `listen.public`).
    #[arg(long)]
    relay_addr: Option<SocketAddr>,
    /// Token service address: `--dev` default 127.0.0.1:5002; with `--config` it starts the
    /// token service in this process (overrides `listen.identity`).
    #[arg(long)]
    identity_addr: Option<SocketAddr>,
    /// Management API address of `--dev` (default 127.0.0.1:5004).
    #[arg(long)]
    management_addr: Option<SocketAddr>,
    /// Data directory of `--dev` mode (SQLite file, bodies, demo secret).
    #[arg(long, default_value = "./.relay-dev")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit, without binding or connecting.
    CheckConfig,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if cli.dev && cli.command.is_some() {
        anyhow::bail!("`check-config` checks a --config file; --dev needs no configuration");
    }
    if cli.dev {
        relay_core::telemetry::init(&relay_core::telemetry::LogConfig::default());
        let options = DevOptions {
            relay_addr: cli
                .relay_addr
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5000))),
            identity_addr: cli
                .identity_addr
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5002))),
            management_addr: cli
                .management_addr
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5004))),
            data_dir: cli.data_dir,
        };
        return runtime.block_on(async move {
            let shutdown = relay_core::lifecycle::shutdown_on_signal();
            relay_core::notify::spawn_watchdog(CancellationToken::new());
            relay_server::dev::run(options, shutdown).await
        });
    }
    let mut config = Config::load(cli.config.as_deref()).with_context(|| match &cli.config {
        Some(path) => format!("loading {}", path.display()),
        None => "loading configuration (pass --config FILE, or --dev for the embedded default)"
            .to_owned(),
    })?;
    if let Some(addr) = cli.relay_addr {
        config.listen.public = addr;
    }
    if let Some(addr) = cli.identity_addr {
        config.listen.identity = Some(addr);
    }
    if let Some(Command::CheckConfig) = cli.command {
        println!("configuration is valid");
        return Ok(());
    }
    // Drawn here so that every journal entry of this process carries it as `NODE`.
    let origin_id = uuid::Uuid::new_v4().to_string();
    relay_core::telemetry::init_node(&config.log, &origin_id);
    config.node.origin_id = Some(origin_id);
    runtime.block_on(async move {
        // Pings until the process exits, through start-up and the drain.
        relay_core::notify::spawn_watchdog(CancellationToken::new());
        relay_core::notify::status("starting: connecting to the database");
        let url = config
            .database
            .resolve_url()
            .context("reading the database URL")?;
        let store = relay_store::Store::connect(url.expose())
            .await
            .context("connecting to the configuration database")?;
        let listeners = Listeners::bind(&config)
            .await
            .context("binding listeners")?;
        let shutdown = relay_core::lifecycle::shutdown_on_signal();
        relay_server::run(config, store, listeners, shutdown)
            .await
            .context("relay server")
    })
}
