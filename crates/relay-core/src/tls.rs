//! TLS with rustls (ring provider): the server's certificate, reloadable without dropping
//! established connections, and the client configuration of connectors (system roots or a
//! configured CA file).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// `[tls]` of the server: certificate chain and private key, both PEM.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// `Some((cert, key))` when TLS is on; an error names the missing key when only one is set.
    pub fn files(&self) -> Result<Option<(&Path, &Path)>, crate::config::ConfigError> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(crate::config::ConfigError::key(
                "tls.key_file",
                "required when tls.cert_file is set",
            )),
            (None, Some(_)) => Err(crate::config::ConfigError::key(
                "tls.cert_file",
                "required when tls.key_file is set",
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: no certificate found")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no trusted root certificates (system store empty and no ca_file)")]
    NoRoots,
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A server configuration from PEM files, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| file_error(key_file, e))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The server's TLS acceptor, replaced as a whole by [`ReloadableAcceptor::reload`]. Each
/// new connection uses the acceptor current when it arrives; established connections keep
/// theirs, so a reload drops nothing.
pub struct ReloadableAcceptor {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<TlsAcceptor>,
}

impl ReloadableAcceptor {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ReloadableAcceptor, TlsError> {
        let config = server_config(cert_file, key_file)?;
        Ok(ReloadableAcceptor {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(TlsAcceptor::from(Arc::new(config))),
        })
    }

    /// The acceptor for a connection arriving now.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current.read().ok().map(|a| a.clone())
    }

    /// Rereads the certificate and key; on error the previous ones stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert_file, &self.key_file)?;
        if let Ok(mut current) = self.current.write() {
            *current = TlsAcceptor::from(Arc::new(config));
        }
        Ok(())
    }

    /// Loads the certificate and key and rereads them on every SIGHUP until `shutdown`.
    pub fn start(
        cert_file: &Path,
        key_file: &Path,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Arc<ReloadableAcceptor>, TlsError> {
        let acceptor = Arc::new(ReloadableAcceptor::load(cert_file, key_file)?);
        acceptor.clone().reload_on_sighup(shutdown.clone());
        Ok(acceptor)
    }

    /// Reloads on every SIGHUP until `shutdown`.
    pub fn reload_on_sighup(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("Cannot listen for SIGHUP; TLS certificates will not be reloaded.");
            return;
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    received = hup.recv() => if received.is_none() { return },
                    () = shutdown.cancelled() => return,
                }
                match self.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded.")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous one.")
                    }
                }
            }
        });
    }
}

/// A client connector trusting `ca_file` when given, else the system's root store
/// (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured). ALPN offers HTTP/1.1 only: the tunnel starts
/// with an HTTP/1.1 upgrade.
pub fn client_connector(ca_file: Option<&Path>) -> Result<TlsConnector, TlsError> {
    let mut config = client_config(ca_file)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS client configuration (certificate and host name verified, no ALPN) trusting
/// `ca_file` when given, else the system's root store.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                roots.add(cert)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "Skipping part of the system certificate store.");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoRoots);
            }
        }
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Time a client gets to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The server side of a TLS handshake, bounded in time; failures are logged at debug (they
/// are the client's problem) and give `None`.
pub async fn handshake(
    tls: &TlsAcceptor,
    stream: tokio::net::TcpStream,
    remote: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed.");
            None
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out.");
            None
        }
    }
}
