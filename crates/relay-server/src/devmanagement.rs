//! The management API inside `relay-server --dev`, with a development admin client whose
//! id and secret are kept in `management-client` in the data directory (two lines).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use relay_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CREDENTIALS_FILE: &str = "management-client";

/// Binds and serves the management API; returns its address and the credentials file.
pub(crate) async fn start(
    store: &Store,
    data_dir: &Path,
    database_url: &str,
    addr: SocketAddr,
    authority: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, PathBuf)> {
    let file = data_dir.join(CREDENTIALS_FILE);
    ensure_admin(store, &file).await?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the management API to {addr} (use --management-addr)"))?;
    let local = listener.local_addr()?;
    let local = if local.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], local.port()))
    } else {
        local
    };
    let mut config = relay_management::Config::with_database_url(database_url);
    config.listen.public = local;
    config.identity.authority = authority.to_owned();
    let store = store.clone();
    tokio::spawn(async move {
        if let Err(e) = relay_management::serve(config, store, listener, shutdown).await {
            tracing::error!(error = %e, "Management API failed.");
        }
    });
    Ok((local, file))
}

/// Reuses the client in `file` while its secret verifies; otherwise creates a new one.
async fn ensure_admin(store: &Store, file: &Path) -> anyhow::Result<()> {
    if let Ok(text) = std::fs::read_to_string(file) {
        let mut lines = text.lines();
        if let (Some(id), Some(secret)) = (lines.next(), lines.next())
            && store
                .verify_management_client(id, secret, relay_store::now_ms())
                .await?
                .is_some()
        {
            return Ok(());
        }
    }
    let name = format!(
        "dev-admin-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (_, secret) = store
        .create_management_client(&name, "management:read management:write", None)
        .await
        .context("creating the development management client")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options
        .open(file)
        .and_then(|mut f| f.write_all(format!("{name}\n{secret}\n").as_bytes()))
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}
