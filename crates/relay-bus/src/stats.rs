//! Process-wide broker counters for metrics: plain atomics, read by the server's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts since the process started.
pub struct Stats {
    /// Publishes the broker confirmed.
    pub published: AtomicU64,
    /// Publishes that failed (unavailable, unconfirmed, nacked, unroutable).
    pub publish_failed: AtomicU64,
    /// Deliveries taken from a queue and handed on.
    pub consumed: AtomicU64,
    /// Deliveries rejected as malformed or dropped as expired.
    pub consume_failed: AtomicU64,
}

pub static STATS: Stats = Stats {
    published: AtomicU64::new(0),
    publish_failed: AtomicU64::new(0),
    consumed: AtomicU64::new(0),
    consume_failed: AtomicU64::new(0),
};

pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
