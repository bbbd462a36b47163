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
    /// Write NAME.toml and a mode 0600 NAME.secret (the secret from standard input) for the
    /// systemd unit relay-connector@NAME, and check them.
    Setup(SetupArgs),
}

#[derive(clap::Args)]
struct SetupArgs {
    /// Instance name (1-15 letters, digits, _ or -): NAME.toml, NAME.secret,
    /// relay-connector@NAME.service and its user relay-connector-NAME.
    name: String,
    /// Relay server base URL; repeat for several relay nodes.
    #[arg(long = "relay-url", required = true, value_name = "URL")]
    relay_urls: Vec<String>,
    /// Tenant name (the OAuth2 client_id) [default: NAME].
    #[arg(long)]
    tenant: Option<String>,
    /// A target inside the private network: /relay/TENANT/NAME/… reaches URL; repeatable.
    #[arg(long = "target", value_name = "NAME=URL", value_parser = parse_target)]
    targets: Vec<(String, String)>,
    /// Directory of the instances' files.
    #[arg(long, value_name = "DIR", default_value = relay_connector::setup::DEFAULT_DIR)]
    config_dir: PathBuf,
    /// Replace NAME.toml and NAME.secret if they exist.
    #[arg(long)]
    force: bool,
}

fn parse_target(arg: &str) -> Result<(String, String), String> {
    relay_connector::setup::parse_target(arg).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Setup(args)) = cli.command {
        return setup(args);
    }
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

fn setup(args: SetupArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal};
    let setup = relay_connector::setup::Setup {
        name: args.name,
        relay_urls: args.relay_urls,
        tenant: args.tenant,
        targets: args.targets,
        dir: args.config_dir,
        force: args.force,
    };
    let plan = relay_connector::setup::plan(&setup)?;
    let stdin = std::io::stdin();
    let written = if stdin.is_terminal() {
        let tenant = setup.tenant.as_deref().unwrap_or(&setup.name);
        eprint!("Client secret of tenant {tenant} (from `relayctl secret create {tenant}`): ");
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the secret")?;
        eprintln!();
        plan.write(line.as_bytes())?
    } else {
        plan.write(stdin.lock())?
    };
    println!(
        "Wrote {} and {} (mode 0600); the configuration is valid.\n\
         Start it now and at every boot: systemctl enable --now relay-connector@{}",
        written.config.display(),
        written.secret.display(),
        setup.name
    );
    Ok(())
}
