//! Errors of the connector library.

/// Why a tunnel could not be established or was lost.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Credentials or token refused; retrying helps only after an operator acts.
    #[error("{0}")]
    Rejected(String),
    #[error("tunnel failed: {0}")]
    Tunnel(#[source] hyper::Error),
    #[error("configuration: {0}")]
    Config(#[from] relay_core::config::ConfigError),
}
