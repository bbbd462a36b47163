//! `relay-identity` binary: flags, config, telemetry, database, then [`relay_identity::serve`].

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use relay_identity::{Config, ENV_PREFIX};
use relay_store::Store;

/// Relay token service: client-credentials tokens, OIDC discovery, JWKS, key rotation.
#[derive(Parser)]
#[command(name = "relay-identity", version)]
struct Cli {
    /// TOML configuration file; `RELAY_IDENTITY__SECTION__KEY` variables override it.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "RELAY_IDENTITY_CONFIG"
    )]
    config: Option<PathBuf>,
    /// Apply pending database migrations before serving. Off by default: in multi-node
    /// deployments `relayctl migrate` runs them once; convenient for a local SQLite file.
    /// The image turns it on with `RELAY_IDENTITY_MIGRATE=true` (`false` turns it off).
    #[arg(long, env = "RELAY_IDENTITY_MIGRATE")]
    migrate: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration without binding or connecting; exit 0 if valid, 1 if not.
    CheckConfig,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let origin = cli
        .config
        .as_ref()
        .map_or_else(|| "environment".into(), |p| p.display().to_string());
    let config: Config = relay_core::config::load(cli.config.as_deref(), ENV_PREFIX)
        .with_context(|| format!("loading configuration from {origin}"))?;
    config
        .validate()
        .with_context(|| format!("validating configuration from {origin}"))?;
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig) = cli.command {
        match load_config(&cli) {
            Ok(_) => println!("configuration is valid"),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    let config = load_config(&cli)?;
    relay_core::telemetry::init(&config.log);
    relay_core::notify::spawn_watchdog(tokio_util::sync::CancellationToken::new());
    relay_core::notify::status("starting: connecting to the database");

    let url = config
        .database
        .resolve_url()
        .context("reading the database URL")?;
    let store = Store::connect(url.expose())
        .await
        .context("connecting to the database")?;
    if cli.migrate {
        store.migrate().await.context("migrating the database")?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen.public)
        .await
        .with_context(|| format!("binding listen.public {}", config.listen.public))?;
    let shutdown = relay_core::lifecycle::shutdown_on_signal();
    // Bound and the database answered.
    let addr = listener
        .local_addr()
        .map_or_else(|_| config.listen.public.to_string(), |a| a.to_string());
    relay_core::notify::ready_with_status(&format!("serving on {addr}"));
    relay_identity::serve(config, store, listener, shutdown)
        .await
        .context("running the identity service (is the database migrated? `relayctl migrate` or --migrate)")?;
    tracing::info!("Identity service stopped.");
    Ok(())
}
