//! Counters of refused and closed connections by [`Reason`] and of open slots, per listener
//! name and process-wide, rendered as `relay_connections_*` by [`render_metrics`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use crate::metrics::Exposition;

/// Why a connection was refused or closed by its listener's caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Accepted and closed at once: every slot in use, none idle.
    ListenerCap,
    /// Accepted and closed at once: its source (IPv4 address, IPv6 /64) holds `max_per_source`.
    SourceCap,
    /// An idle connection closed to make room for a newcomer.
    EvictedIdle,
    /// A request other than a tunnel upgrade on a reserve slot: 503 and close.
    ReserveNotTunnel,
    /// Closed gracefully after `max_lifetime`.
    Lifetime,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::ListenerCap,
        Reason::SourceCap,
        Reason::EvictedIdle,
        Reason::ReserveNotTunnel,
        Reason::Lifetime,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::ListenerCap => "listener_cap",
            Reason::SourceCap => "source_cap",
            Reason::EvictedIdle => "evicted_idle",
            Reason::ReserveNotTunnel => "reserve_not_tunnel",
            Reason::Lifetime => "lifetime",
        }
    }
}

/// Counters of all gates of one listener name in this process (tests start several), so
/// that they never go down when a gate is dropped. Names are `&'static str`: bounded.
pub(super) struct Stats {
    pub(super) reasons: [AtomicU64; Reason::ALL.len()],
    pub(super) open: [AtomicUsize; 2],
}

type Listeners = Vec<(&'static str, Arc<Stats>)>;

static STATS: LazyLock<Mutex<Listeners>> = LazyLock::new(Default::default);

pub(super) fn stats_for(name: &'static str) -> Arc<Stats> {
    let Ok(mut all) = STATS.lock() else {
        return Arc::new(Stats::new());
    };
    if let Some((_, stats)) = all.iter().find(|(n, _)| *n == name) {
        return stats.clone();
    }
    let stats = Arc::new(Stats::new());
    all.push((name, stats.clone()));
    stats
}

impl Stats {
    fn new() -> Stats {
        Stats {
            reasons: [const { AtomicU64::new(0) }; Reason::ALL.len()],
            open: [const { AtomicUsize::new(0) }; 2],
        }
    }
}

/// Appends `relay_connections_open{listener,slot}` and
/// `relay_connections_refused_total{listener,reason}` for every listener of this process.
pub fn render_metrics(e: &mut Exposition) {
    let all: Listeners = match STATS.lock() {
        Ok(all) => all.clone(),
        Err(_) => return,
    };
    e.describe(
        "relay_connections_open",
        "gauge",
        "Open connections by listener and slot (reserve: kept for tunnel upgrades).",
    );
    for (name, stats) in &all {
        for (i, slot) in ["client", "reserve"].iter().enumerate() {
            e.sample(
                "relay_connections_open",
                &[("listener", name), ("slot", slot)],
                stats.open[i].load(Ordering::Relaxed),
            );
        }
    }
    e.describe(
        "relay_connections_refused_total",
        "counter",
        "Connections refused at a cap or closed to make room (evicted_idle), answered 503 on a \
         tunnel-reserve slot (reserve_not_tunnel) or closed after max_lifetime, by listener \
         and reason.",
    );
    for (name, stats) in &all {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            e.sample(
                "relay_connections_refused_total",
                &[("listener", name), ("reason", reason.label())],
                stats.reasons[i].load(Ordering::Relaxed),
            );
        }
    }
}
