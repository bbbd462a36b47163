//! Logging set-up shared by every binary.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// `[log]` section of every service's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `relay_server=debug,info`; `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber. Safe to call twice (the second call is ignored), so
/// tests and monolithic mode can share it.
pub fn init(config: &LogConfig) {
    // lapin logs every broker hiccup at ERROR and returned messages (with request headers)
    // at WARN; the bus crate reports those events itself, readably and without payloads.
    let level = if config.level.contains("lapin") {
        config.level.clone()
    } else {
        format!("{},lapin=off", config.level)
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
