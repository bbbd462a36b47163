//! The competitor baseline: [rathole](https://github.com/rapiz1/rathole), a TCP tunnel, set
//! up the way a user would to reach the same target (server with a public port, client next
//! to the target, both on loopback). Its rows sit beside the relay's so the issue's "at least
//! rathole's throughput" target is judged against a figure from the same run.
//!
//! rathole is not built here: pass `--rathole PATH` or put `rathole` on `PATH`
//! (`cargo install rathole`); without it the rows are skipped with a note.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hyper::Uri;
use tokio::process::Command;

use crate::procs::Service;
use crate::stack::{free_port, wait_for};

/// A running rathole server and client forwarding `public` to the target.
pub struct Rathole {
    pub public: SocketAddr,
    pub server: Service,
    pub client: Service,
}

impl Rathole {
    pub async fn start(binary: &Path, dir: &Path, target: SocketAddr) -> anyhow::Result<Rathole> {
        let control = free_port()?;
        let public = free_port()?;
        let token = format!("bench-{}-{}", std::process::id(), control.port());
        let server_toml = format!(
            "[server]\nbind_addr = \"{control}\"\n\n\
             [server.services.web]\ntoken = \"{token}\"\nbind_addr = \"{public}\"\nnodelay = true\n"
        );
        let client_toml = format!(
            "[client]\nremote_addr = \"{control}\"\n\n\
             [client.services.web]\ntoken = \"{token}\"\nlocal_addr = \"{target}\"\nnodelay = true\n"
        );
        let server_config = dir.join("rathole-server.toml");
        let client_config = dir.join("rathole-client.toml");
        for (path, text) in [(&server_config, server_toml), (&client_config, client_toml)] {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        let spawn = |name, mode: &str, config: &Path| {
            let mut command = Command::new(binary);
            command.arg(mode).arg(config).env("RUST_LOG", "warn");
            Service::spawn(name, command, dir, false)
        };
        let server = spawn("rathole-server", "--server", &server_config)?;
        let mut client = spawn("rathole-client", "--client", &client_config)?;
        let probe: Uri = format!("http://{public}/small")
            .parse()
            .context("rathole probe URL")?;
        wait_for(
            &mut client,
            "rathole forwarding to the target",
            &probe,
            |_| true,
        )
        .await?;
        Ok(Rathole {
            public,
            server,
            client,
        })
    }

    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.server.ensure_running()?;
        self.client.ensure_running()
    }

    pub async fn stop(mut self) {
        self.client.stop().await;
        self.server.stop().await;
    }
}

/// The rathole binary: `--rathole PATH`, else `rathole` on `PATH`; None (with the reason)
/// when there is none.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(format!("--rathole {} does not exist", path.display()))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("rathole"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "no `rathole` on PATH; `cargo install rathole` or pass --rathole PATH".to_owned()
        })
}
