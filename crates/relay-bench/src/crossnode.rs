//! The cross-node set-up: two `relay-server` nodes sharing a fresh PostgreSQL database, a
//! RabbitMQ bus (own queue prefix) and a body directory, a separate `relay-identity`, and a
//! `relay-connector` with its only tunnel to node B. Load goes to node A, which brokers every
//! request to node B over the bus (bodies above the inline limit through the body directory).
//!
//! The database is dropped when [`Services`] is dropped (also on error or Ctrl-C); the
//! processes are killed like every other [`Service`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hyper::Uri;
use tokio::process::Command;

use crate::cli::BenchArgs;
use crate::procs::{Binaries, Probe, Service};
use crate::stack::{self, TENANT};

/// A fresh database on the PostgreSQL server and a queue prefix on the broker.
pub struct Services {
    admin_url: String,
    database: String,
    database_url: String,
    amqp_url: String,
    prefix: String,
}

impl Services {
    /// Checks RabbitMQ and creates the database; `Err` is the reason to skip.
    pub async fn create(args: &BenchArgs, binaries: &Binaries) -> Result<Services, String> {
        if binaries.identity.is_none() {
            return Err("relay-identity not found next to relay-bench; build it".into());
        }
        let broker = broker_address(&args.amqp_url);
        let connect = tokio::net::TcpStream::connect(&broker);
        match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("RabbitMQ unreachable at {broker}: {e}")),
            Err(_) => return Err(format!("RabbitMQ at {broker} did not answer within 2s")),
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let unique = format!("{}_{:x}", std::process::id(), nanos & 0xffff_ffff_ffff);
        let database = format!("relay_bench_{unique}");
        psql(&args.postgres_url, &format!("CREATE DATABASE {database}"))
            .await
            .map_err(|e| format!("PostgreSQL unavailable at {}: {e}", args.postgres_url))?;
        let base = args
            .postgres_url
            .rsplit_once('/')
            .map_or(args.postgres_url.as_str(), |(base, _)| base);
        Ok(Services {
            admin_url: args.postgres_url.clone(),
            database_url: format!("{base}/{database}"),
            database,
            amqp_url: args.amqp_url.clone(),
            prefix: format!("bench{unique}."),
        })
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let dropped = std::process::Command::new("psql")
            .arg(&self.admin_url)
            .args(["-q", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ))
            .output();
        match dropped {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: dropping database {}: {}",
                self.database,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: dropping database {}: {e}", self.database),
        }
    }
}

/// `host:port` of an `amqp://user:pass@host:port/vhost` URL (port 5672 when absent).
fn broker_address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    }
}

async fn psql(admin_url: &str, sql: &str) -> anyhow::Result<()> {
    let output = Command::new("psql")
        .arg(admin_url)
        .args(["-q", "-c", sql])
        .output()
        .await
        .context("running psql (install postgresql-client)")?;
    if !output.status.success() {
        anyhow::bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Identity, nodes A and B, and the connector attached to B. Fields drop in order: the
/// processes are killed before the database goes.
pub struct Cluster {
    /// Where the load goes.
    pub node_a: SocketAddr,
    pub a: Service,
    pub b: Service,
    pub connector: Service,
    identity: Service,
    _services: Services,
}

impl Cluster {
    /// Starts everything in `dir` (created) and waits until `GET /relay/bench/ping` answers
    /// PONG through node A.
    pub async fn start(
        binaries: &Binaries,
        dir: &Path,
        target: SocketAddr,
        services: Services,
    ) -> anyhow::Result<Cluster> {
        let identity_bin = binaries
            .identity
            .as_ref()
            .context("relay-identity not found")?;
        let bodies = dir.join("bodies");
        std::fs::create_dir_all(&bodies)
            .with_context(|| format!("creating {}", bodies.display()))?;
        let db = stack::toml_string(&services.database_url)?;
        let secret_file = stack::prepare_tenant(binaries, &services.database_url, dir).await?;

        let identity_addr = stack::free_port()?;
        let identity_config = dir.join("identity.toml");
        write(
            &identity_config,
            &format!(
                "public_url = \"http://{identity_addr}\"\n\n[listen]\npublic = \"{identity_addr}\"\n\n\
                 [database]\nurl = {db}\n"
            ),
        )?;
        let mut command = Command::new(identity_bin);
        command.arg("--config").arg(&identity_config);
        let mut identity = Service::spawn("relay-identity", command, dir, false)?;

        let mut nodes = Vec::new();
        for name in ["node-a", "node-b"] {
            let public = stack::free_port()?;
            let config = dir.join(format!("{name}.toml"));
            write(
                &config,
                &format!(
                    "[listen]\npublic = \"{public}\"\n\n[database]\nurl = {db}\n\n\
                     [identity]\nauthority = \"http://{identity_addr}\"\n\n\
                     [body_store]\npath = {}\n\n\
                     [bus]\nkind = \"rabbitmq\"\nurl = {}\nprefix = {}\n",
                    stack::toml_string(&bodies.display().to_string())?,
                    stack::toml_string(&services.amqp_url)?,
                    stack::toml_string(&services.prefix)?,
                ),
            )?;
            let mut command = Command::new(&binaries.server);
            command.arg("--config").arg(&config);
            nodes.push((public, Service::spawn(name, command, dir, false)?));
        }
        for (public, node) in &mut nodes {
            identity.ensure_running()?;
            let ready: Uri = format!("http://{public}/health/ready").parse()?;
            let what = format!("{} /health/ready", node.name);
            stack::wait_for(node, &what, &ready, |_| true).await?;
        }
        let (node_b, b) = nodes.pop().context("node B")?;
        let (node_a, a) = nodes.pop().context("node A")?;

        let mut connector = stack::start_connector(binaries, dir, node_b, &secret_file, target)?;
        for (node, label) in [(node_b, "B"), (node_a, "A")] {
            let ping: Uri = format!("http://{node}/relay/{TENANT}/ping").parse()?;
            let what = format!("connector on node B (GET /relay/{TENANT}/ping via node {label})");
            stack::wait_for(&mut connector, &what, &ping, |body| body == b"PONG").await?;
        }
        Ok(Cluster {
            node_a,
            a,
            b,
            connector,
            identity,
            _services: services,
        })
    }

    /// Broker URL and queue prefix of the cluster's bus.
    pub fn bus(&self) -> (&str, &str) {
        (&self._services.amqp_url, &self._services.prefix)
    }

    /// CPU probes of node A, node B and the connector.
    pub fn probes(&self) -> anyhow::Result<Vec<Probe>> {
        Ok(vec![
            Probe::child("node-a", &self.a)?,
            Probe::child("node-b", &self.b)?,
            Probe::child("connector", &self.connector)?,
        ])
    }

    /// Fails when any process of the cluster has died.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.identity.ensure_running()?;
        self.a.ensure_running()?;
        self.b.ensure_running()?;
        self.connector.ensure_running()
    }

    /// Kills and reaps the processes; the database is dropped when `self` is.
    pub async fn stop(mut self) {
        self.connector.stop().await;
        self.a.stop().await;
        self.b.stop().await;
        self.identity.stop().await;
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
