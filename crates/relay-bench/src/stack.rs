//! The relay under test: a monolithic `relay-server` (token service in process) on a fresh
//! SQLite database prepared with `relayctl`, and one `relay-connector` for tenant [`TENANT`]
//! whose target [`TARGET`] is the benchmark's target process.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::Uri;
use tokio::process::Command;
use tokio::time::Instant;

use crate::load;
use crate::procs::{Binaries, Service};

pub const TENANT: &str = "bench";
pub const TARGET: &str = "web";

/// How long the server and the connector get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Relay {
    pub public: SocketAddr,
    pub server: Service,
    pub connector: Service,
}

impl Relay {
    pub async fn start(
        binaries: &Binaries,
        dir: &Path,
        target: SocketAddr,
    ) -> anyhow::Result<Relay> {
        Self::start_with(binaries, dir, target, "").await
    }

    /// Like [`Relay::start`], with `extra_toml` appended to the server's configuration.
    pub async fn start_with(
        binaries: &Binaries,
        dir: &Path,
        target: SocketAddr,
        extra_toml: &str,
    ) -> anyhow::Result<Relay> {
        let database_url = format!("sqlite://{}", dir.join("relay.db").display());
        let secret_file = prepare_tenant(binaries, &database_url, dir).await?;

        let public = free_port()?;
        let identity = free_port()?;
        let server_config = dir.join("server.toml");
        let server_toml = format!(
            "[listen]\npublic = \"{public}\"\nidentity = \"{identity}\"\n\n\
             [database]\nurl = {}\n\n\
             [identity]\nauthority = \"http://{identity}\"\n\n\
             [body_store]\npath = {}\n{extra_toml}",
            toml_string(&database_url)?,
            toml_string(&dir.join("bodies").display().to_string())?,
        );
        std::fs::write(&server_config, server_toml)
            .with_context(|| format!("writing {}", server_config.display()))?;
        let mut command = Command::new(&binaries.server);
        command.arg("--config").arg(&server_config);
        let mut server = Service::spawn("relay-server", command, dir, false)?;
        let ready: Uri = format!("http://{public}/health/ready")
            .parse()
            .context("readiness URL")?;
        wait_for(&mut server, "relay-server /health/ready", &ready, |_| true).await?;

        let mut connector = start_connector(binaries, dir, public, &secret_file, target)?;
        let ping: Uri = format!("http://{public}/relay/{TENANT}/ping")
            .parse()
            .context("ping URL")?;
        let attached = wait_for(
            &mut connector,
            "connector (GET /relay/bench/ping = PONG)",
            &ping,
            |body| body == b"PONG",
        )
        .await;
        if let Err(e) = attached {
            server.ensure_running()?;
            return Err(e.context(format!("end of relay-server log:\n{}", server.log_tail())));
        }
        Ok(Relay {
            public,
            server,
            connector,
        })
    }

    /// Fails when the server or the connector has died.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.server.ensure_running()?;
        self.connector.ensure_running()
    }
}

/// Migrates the database at `database_url`, creates tenant [`TENANT`] and a connector secret,
/// and returns the file in `dir` holding that secret.
pub async fn prepare_tenant(
    binaries: &Binaries,
    database_url: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    relayctl(binaries, database_url, &["migrate"]).await?;
    relayctl(binaries, database_url, &["tenant", "create", TENANT]).await?;
    let secret_out = relayctl(binaries, database_url, &["secret", "create", TENANT]).await?;
    let secret = secret_out
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .context("relayctl secret create printed no secret")?
        .trim();
    let secret_file = dir.join("connector.secret");
    std::fs::write(&secret_file, secret)
        .with_context(|| format!("writing {}", secret_file.display()))?;
    Ok(secret_file)
}

/// Starts a `relay-connector` (config and log in `dir`) for tenant [`TENANT`] with one tunnel
/// to the relay at `relay`, forwarding target [`TARGET`] to `target`.
pub fn start_connector(
    binaries: &Binaries,
    dir: &Path,
    relay: SocketAddr,
    secret_file: &Path,
    target: SocketAddr,
) -> anyhow::Result<Service> {
    let connector_config = dir.join("connector.toml");
    let connector_toml = format!(
        "relay_url = \"http://{relay}\"\ntenant = \"{TENANT}\"\nsecret_file = {}\n\n\
         [targets.{TARGET}]\nurl = \"http://{target}\"\n",
        toml_string(&secret_file.display().to_string())?,
    );
    std::fs::write(&connector_config, connector_toml)
        .with_context(|| format!("writing {}", connector_config.display()))?;
    let mut command = Command::new(&binaries.connector);
    command.arg("--config").arg(&connector_config);
    Service::spawn("relay-connector", command, dir, false)
}

/// Runs `relayctl --database-url URL ARGS` and returns its stdout.
pub async fn relayctl(
    binaries: &Binaries,
    database_url: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let output = Command::new(&binaries.relayctl)
        .arg("--database-url")
        .arg(database_url)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .await
        .context("running relayctl")?;
    if !output.status.success() {
        bail!(
            "relayctl {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("relayctl printed non-UTF-8 output")
}

/// Polls `url` until it answers 200 with a body `accept`s, or fails with the process log when
/// the process exits or the deadline passes.
pub async fn wait_for(
    service: &mut Service,
    what: &str,
    url: &Uri,
    accept: impl Fn(&[u8]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        service.ensure_running()?;
        let last = match load::fetch(url).await {
            Ok((status, body)) if status.is_success() && accept(&body) => return Ok(()),
            Ok((status, body)) => format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{what} not ready after {READY_TIMEOUT:?} (last: {last}); end of {}:\n{}",
                service.log.display(),
                service.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An unused loopback port. The server binds it a moment later; another process could take
/// it in between, which would show as a start-up failure naming the address.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    listener.local_addr().context("finding a free port")
}

/// A TOML basic string of `s`.
pub fn toml_string(s: &str) -> anyhow::Result<String> {
    if s.chars().any(char::is_control) {
        bail!("`{s}` contains control characters");
    }
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}
