//! The on-premises connector: dials out to relay servers and serves relayed requests to
//! targets inside the private network. No inbound port is opened.
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`control`]: discovery document and token (client credentials) calls.
//! - `tunnel`: one upgraded connection served as HTTP/2, with drain and keep-alive.
//! - [`targets`]: forwarding to targets, built-in `ping` and `echo`.
//! - `redirect`: which redirects a `follow_redirects` target has followed (origin, base path).
//! - `forwarding`: `Forwarded`/`X-Forwarded-*` for the target; the client's own dropped.
//! - `backoff`: jittered reconnect delays.
//! - `dial`: outbound connections: TLS (system roots or `ca_file`) and HTTP `CONNECT` proxies.
//! - `metrics`: the Prometheus metrics (`[metrics] listen`).
//! - [`setup`]: `relay-connector setup NAME`, an instance of the packaged systemd unit.
//!
//! One tunnel loop runs per configured relay URL, so a connector given several relay nodes
//! keeps a tunnel to each.

pub mod config;
pub mod control;
pub mod error;
pub mod setup;
pub mod targets;

mod backoff;
mod dial;
mod forwarding;
mod metrics;
mod redirect;
mod tunnel;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use relay_proto::discovery::TunnelSettings;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::Config;
use crate::control::{ControlClient, TokenSource};
pub use crate::error::ConnectorError;
use crate::targets::Targets;
use crate::tunnel::Ended;

/// State shared by every tunnel of one connector.
pub(crate) struct Shared {
    tenant: String,
    machine: String,
    control: ControlClient,
    dialer: dial::SharedDialer,
    tokens: TokenSource,
    targets: Targets,
    shutdown_grace: Duration,
    /// Tunnel connections up, a renewal's overlap counted twice (as `relay_connector_tunnels`).
    live: watch::Sender<usize>,
    /// Tunnels the connector keeps (relay URLs × `tunnels_per_relay`), for `STATUS=`.
    tunnels_wanted: usize,
    /// Of those, how many have at least one connection up: what `STATUS=` counts, so that a
    /// renewal (new connection up before the old one drains) never shows "2 of 1".
    slots_up: AtomicUsize,
    /// Whether this connector speaks for its process to systemd (`READY=1`, `STATUS=`); off
    /// for a connector embedded in another service (`relay-server --dev`, tests).
    notify: bool,
    /// The tenant's tunnel settings as last pushed by a relay node. They outrank the
    /// discovery document (server defaults) on every later connection.
    pushed: std::sync::Mutex<Option<TunnelSettings>>,
    /// Tunnels that were replaced (token renewal) and finish their requests in the
    /// background; waited for on shutdown.
    background: TaskTracker,
}

impl Shared {
    fn pushed_settings(&self) -> Option<TunnelSettings> {
        self.pushed.lock().ok().and_then(|slot| *slot)
    }

    fn settings_pushed(&self, new: TunnelSettings) {
        if let Ok(mut slot) = self.pushed.lock() {
            *slot = Some(new);
        }
    }

    /// Counts a connection of tunnel `slot` as up and says so in `STATUS=`.
    fn tunnel_up(&self, relay_url: &str, slot: &Slot) {
        metrics::TUNNELS_UP.add(1);
        metrics::CONNECTS[0].inc();
        self.live.send_modify(|n| *n += 1);
        if slot.0.fetch_add(1, Ordering::SeqCst) == 0 {
            self.slots_up.fetch_add(1, Ordering::SeqCst);
        }
        self.status(&format!(
            "connected to {relay_url} ({} of {} tunnels up)",
            self.slots_up.load(Ordering::SeqCst),
            self.tunnels_wanted
        ));
    }

    fn status(&self, line: &str) {
        if self.notify {
            relay_core::notify::status(line);
        }
    }

    fn tunnel_down(&self, slot: &Slot) {
        metrics::TUNNELS_UP.add(-1);
        self.live.send_modify(|n| *n = n.saturating_sub(1));
        if slot.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.slots_up.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// `STATUS=retrying …` while a tunnel cannot be opened.
    fn retrying(&self, relay_url: &str, reason: &dyn std::fmt::Display) {
        let up = self.slots_up.load(Ordering::SeqCst);
        self.status(&format!(
            "retrying {relay_url}: {reason} ({up} of {} tunnels up)",
            self.tunnels_wanted
        ));
    }
}

/// One of the tunnels the connector keeps: its connections up (two while a renewal's
/// replacement and the drained original overlap).
#[derive(Default)]
pub(crate) struct Slot(AtomicUsize);

/// A configured connector, ready to run.
pub struct Connector {
    shared: Shared,
    /// Distinct relay URLs configured.
    relays: usize,
    /// One entry per tunnel: each relay URL `tunnels_per_relay` times.
    relay_urls: Vec<String>,
    metrics_listen: Option<std::net::SocketAddr>,
}

impl Connector {
    /// Prepares a connector; reads the secret file but does not connect.
    pub fn new(config: &Config) -> Result<Connector, ConnectorError> {
        let secret = config.read_secret()?;
        let targets = Targets::new(&config.targets, config.builtin_targets)
            .map_err(|m| relay_core::config::ConfigError::key("targets", m))?;
        let dialer = Arc::new(dial::Dialer::new(
            config.ca_file.as_deref(),
            config.proxy.as_deref(),
        )?);
        let control = ControlClient::new(dialer.clone());
        let (live, _) = watch::channel(0);
        let shared = Shared {
            tenant: config.tenant.clone(),
            machine: config.machine_name.clone().unwrap_or_else(host_name),
            tokens: TokenSource::new(control.clone(), config.tenant.clone(), secret),
            control,
            dialer,
            targets,
            shutdown_grace: config.shutdown_grace,
            live,
            tunnels_wanted: config.relay_url.as_slice().len()
                * usize::from(config.tunnels_per_relay),
            slots_up: AtomicUsize::new(0),
            notify: false,
            pushed: std::sync::Mutex::new(None),
            background: TaskTracker::new(),
        };
        Ok(Connector {
            metrics_listen: config.metrics.listen,
            relays: config.relay_url.as_slice().len(),
            shared,
            relay_urls: config
                .relay_url
                .as_slice()
                .iter()
                .flat_map(|url| {
                    std::iter::repeat_n(url.clone(), usize::from(config.tunnels_per_relay))
                })
                .collect(),
        })
    }

    /// Makes [`Connector::run`] notify systemd for this process: `READY=1` at start and
    /// `STATUS=` lines about its tunnels (no-ops without `NOTIFY_SOCKET`). For the
    /// `relay-connector` binary, not for a connector embedded in another service.
    pub fn notify_systemd(mut self) -> Connector {
        self.shared.notify = true;
        self
    }

    /// The number of tunnels currently up; changes are observable.
    pub fn live_tunnels(&self) -> watch::Receiver<usize> {
        self.shared.live.subscribe()
    }

    /// Keeps `tunnels_per_relay` tunnels per relay URL up until `shutdown` fires, then lets in-flight requests
    /// finish within the shutdown grace.
    ///
    /// With [`Connector::notify_systemd`], sends `READY=1` once the metrics listener (if any)
    /// is bound, before any tunnel: a connector is a running service while its relays are
    /// unreachable (it retries for as long as it runs), so `systemctl start` must not wait
    /// for, or fail on, the network. Tunnels show in `STATUS=` and `relay_connector_tunnels`.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        if let Some(addr) = self.metrics_listen {
            match relay_core::metrics::bind(addr).await {
                Ok(listener) => {
                    let render: relay_core::metrics::Render = Arc::new(metrics::render);
                    tokio::spawn(relay_core::metrics::serve(
                        listener,
                        render,
                        shutdown.clone(),
                    ));
                }
                Err(e) => tracing::error!(error = %e, "Metrics listener not started."),
            }
        }
        // Before the tunnel loops start, so no tunnel's STATUS line comes before READY=1.
        metrics::TUNNELS_WANTED.set(i64::try_from(self.relay_urls.len()).unwrap_or(i64::MAX));
        if self.shared.notify {
            relay_core::notify::ready_with_status(&connecting_line(
                self.relays,
                self.relay_urls.len(),
            ));
        }
        let shared = Arc::new(self.shared);
        for url in self.relay_urls {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move { keep_tunnel(shared, url, shutdown).await });
        }
        tracker.close();
        tracker.wait().await;
        shared.background.close();
        shared.background.wait().await;
    }
}

/// Reconnect loop of one relay URL. Never gives up: an unreachable relay or refused
/// credentials are logged and retried with back-off, since an operator may fix either.
async fn keep_tunnel(shared: Arc<Shared>, relay_url: String, shutdown: CancellationToken) {
    let slot = Arc::new(Slot::default());
    let mut settings = TunnelSettings::default();
    let mut backoff =
        backoff::Backoff::new(settings.reconnect_min_delay, settings.reconnect_max_delay);
    let mut failures = 0u32;
    // A tunnel due for renewal, still serving until its replacement is up.
    let mut replaces: Option<String> = None;
    while !shutdown.is_cancelled() {
        let result = tunnel::connect_and_serve(
            &shared,
            &relay_url,
            &mut settings,
            &shutdown,
            replaces.as_deref(),
            &slot,
        )
        .await;
        backoff.set_bounds(settings.reconnect_min_delay, settings.reconnect_max_delay);
        if result.is_ok() {
            // A new tunnel came up (and has ended): the one it replaced is being drained.
            replaces = None;
        }
        match result {
            Ok(Ended::Shutdown) => break,
            Ok(Ended::Renewing(old)) => {
                // Make-before-break: the replacement opens at once, the old one serves on.
                metrics::RENEWED.inc();
                replaces = old;
                backoff.reset();
                failures = 0;
                continue;
            }
            Ok(Ended::Drained) => {
                metrics::DRAINED.inc();
                backoff.reset();
                failures = 0;
            }
            Ok(Ended::Lost(reason)) => {
                backoff.reset();
                failures = 0;
                metrics::LOST.inc();
                tracing::warn!(relay = %relay_url, %reason, "Tunnel lost; reconnecting.");
                shared.retrying(&relay_url, &reason);
            }
            Err(ConnectorError::Rejected(reason)) => {
                // Refused credentials need an operator: say so on every attempt (the back-off
                // keeps that to one line per delay).
                metrics::CONNECTS[1].inc();
                failures += 1;
                shared.retrying(&relay_url, &reason);
                tracing::warn!(relay = %relay_url, %reason, failures, "Credentials refused; retrying.");
            }
            Err(e) => {
                metrics::CONNECTS[1].inc();
                failures += 1;
                shared.retrying(&relay_url, &e);
                // The first failure is a warning; repeats of the same outage stay quieter.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(relay = %relay_url, error = %e, failures, "Cannot open tunnel; retrying.");
                } else {
                    tracing::debug!(relay = %relay_url, error = %e, failures, "Cannot open tunnel; retrying.");
                }
            }
        }
        let delay = backoff.next_delay();
        if failures <= 1 {
            let (min, max) = backoff.bounds();
            tracing::info!(relay = %relay_url, "Reconnecting in {delay:?} (back-off between {min:?} and {max:?}).");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => break,
        }
    }
}

/// `STATUS=` from `READY=1` until the first tunnel is up (or fails to open).
fn connecting_line(relays: usize, tunnels: usize) -> String {
    let relay_word = if relays == 1 { "relay" } else { "relays" };
    let tunnel_word = if tunnels == 1 { "tunnel" } else { "tunnels" };
    format!("connecting to {relays} {relay_word} ({tunnels} {tunnel_word})…")
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn connecting_line_counts_relays_and_tunnels() {
        assert_eq!(
            super::connecting_line(1, 1),
            "connecting to 1 relay (1 tunnel)…"
        );
        assert_eq!(
            super::connecting_line(2, 4),
            "connecting to 2 relays (4 tunnels)…"
        );
    }
}
