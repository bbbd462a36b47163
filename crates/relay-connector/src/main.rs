//! `relay-connector`: the on-premises agent.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relay_connector::{Config, Connector};

#[derive(Parser)]
#[command(
    version,
    about = "Relay connector: dials out to a relay server and serves its requests"
)]
struct Cli {
    /// Configuration file (TOML); `RELAY_CONNECTOR__…` variables override it.
    #[arg(long, global = true, env = "RELAY_CONNECTOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit, without connecting anywhere.
    CheckConfig,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).with_context(|| match &cli.config {
        Some(path) => format!("loading {}", path.display()),
        None => "loading configuration from the environment".to_owned(),
    })?;
    if let Some(Command::CheckConfig) = cli.command {
        config.read_secret().context("reading the secret")?;
        println!("configuration is valid");
        return Ok(());
    }
    relay_core::telemetry::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let connector = Connector::new(&config)
            .context("preparing the connector")?
            .notify_systemd();
        let shutdown = relay_core::lifecycle::shutdown_on_signal();
        relay_core::notify::spawn_watchdog(tokio_util::sync::CancellationToken::new());
        tracing::info!(tenant = %config.tenant, relays = ?config.relay_url.as_slice(), "Connector starting.");
        connector.run(shutdown).await;
        tracing::info!("Connector stopped.");
        Ok(())
    })
}
