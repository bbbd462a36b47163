//! Shared building blocks of every Relay binary.
//!
//! - [`config`]: one TOML file plus `RELAY_<SERVICE>__KEY` environment overrides, with errors
//!   that name the offending key.
//! - [`database`]: the `[database]` section (URL inline or from a file).
//! - [`files`]: private (`0600`/`0700`) files and directories, and warnings for exposed ones.
//! - [`secret`]: secrets read from files (systemd credentials) and held in a type whose
//!   `Debug` prints a mask.
//! - [`telemetry`]: `tracing` set-up (text or JSON on stdout).
//! - [`lifecycle`]: the process-wide shutdown token fired by SIGTERM/SIGINT.
//! - [`conn`]: connection caps, first-byte/header/idle timeouts and the accept loop of
//!   every listener (`[connections]`).
//! - [`metrics`]: Prometheus counters, gauges, histograms and the `/metrics` listener.
//! - [`tls`]: rustls server (reloadable) and client configurations.
//! - [`notify`]: systemd `Type=notify` (`READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`).

pub mod config;
pub mod conn;
pub mod database;
pub mod files;
pub mod https;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod secret;
pub mod telemetry;
pub mod tls;

/// `error: cause: cause …`, for log lines and messages that must keep the reason (a TLS
/// handshake failure, say, is several causes deep).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
