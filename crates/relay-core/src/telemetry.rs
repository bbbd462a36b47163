//! Logging set-up shared by every binary: journald (structured fields) when started by
//! systemd with `JOURNAL_STREAM` set, otherwise text or JSON lines on stdout.

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
///
/// With `JOURNAL_STREAM` set (systemd connected stdout/stderr to the journal), events go to
/// journald natively: the message as `MESSAGE`, the level as `PRIORITY`, and every field of
/// the event and its spans (`tenant`, `target`, `request_id`, …) as an upper-cased
/// journal field (`TENANT=acme`), so `journalctl TENANT=acme` filters by it. When the
/// journal socket cannot be opened, logging falls back to stdout.
pub fn init(config: &LogConfig) {
    install(config, None);
}

/// [`init`] for a relay node: its journal entries all carry `NODE=<node>` (the node's origin
/// id, as in the request log and the management API's node list), so the entries of several
/// nodes stay apart wherever their journals are gathered.
pub fn init_node(config: &LogConfig, node: &str) {
    install(config, Some(node));
}

fn install(config: &LogConfig, node: Option<&str>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journald) => {
                // Fields as named (`TENANT`), not with the crate's default `F_` prefix. An event's
                // `target` field joins the module path in `TARGET`; journald keeps both values.
                // Syslog's meaning of the levels: info is 6, not the crate's default 5 (notice).
                let priorities = tracing_journald::PriorityMappings {
                    info: tracing_journald::Priority::Informational,
                    debug: tracing_journald::Priority::Debug,
                    ..tracing_journald::PriorityMappings::new()
                };
                let journald = journald
                    .with_field_prefix(None)
                    .with_priority_mappings(priorities)
                    .with_syslog_identifier(syslog_identifier())
                    .with_custom_fields(node.map(|node| ("NODE", node)));
                let _ = tracing_subscriber::registry()
                    .with(filter(config))
                    .with(journald)
                    .try_init();
                return;
            }
            Err(e) => eprintln!("journald unavailable ({e}); logging to stdout"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(config))
        .with_target(false);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The filter: `RUST_LOG` when set, else `log.level`, with lapin's own logging off unless
/// named. lapin logs every broker hiccup at ERROR and returned messages (with request
/// headers) at WARN; the bus crate reports those events itself, readably and without payloads.
fn filter(config: &LogConfig) -> EnvFilter {
    let level = if config.level.contains("lapin") {
        config.level.clone()
    } else {
        format!("{},lapin=off", config.level)
    };
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Whether systemd connected our stderr to the journal: `JOURNAL_STREAM` is `DEV:INODE` of
/// that stream, compared with stderr's so a variable inherited by a child whose output was
/// redirected elsewhere is ignored. When stderr cannot be inspected, the variable decides.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(meta) => dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino()),
        Err(_) => true,
    }
}

/// `SYSLOG_IDENTIFIER` of journal entries: the binary's name (`relay-server`, …).
fn syslog_identifier() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "relay".to_owned())
}
