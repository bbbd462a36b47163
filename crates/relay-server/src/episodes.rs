//! Log lines for events a flood repeats (queued requests expiring, refusals at a bound): one
//! line when an episode begins, none for the rest of it. An episode of a kind ends after
//! [`EPISODE_GAP`] without an event of that kind.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Quiet time that ends an episode.
pub const EPISODE_GAP: Duration = Duration::from_secs(60);
/// Kinds remembered at most (e.g. one per tenant); the oldest are forgotten first.
const KINDS_MAX: usize = 4096;

#[derive(Default)]
pub struct Episodes {
    last: Mutex<HashMap<String, Instant>>,
}

impl Episodes {
    /// Whether an event of `kind` begins a new episode (and so deserves a log line).
    pub fn begins(&self, kind: &str) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let now = Instant::now();
        if let Some(at) = last.get_mut(kind) {
            let begins = now.duration_since(*at) >= EPISODE_GAP;
            *at = now;
            return begins;
        }
        if last.len() >= KINDS_MAX {
            last.retain(|_, at| now.duration_since(*at) < EPISODE_GAP);
        }
        if last.len() < KINDS_MAX {
            last.insert(kind.to_owned(), now);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_logs_once() {
        let episodes = Episodes::default();
        assert!(episodes.begins("expired"));
        assert!(!episodes.begins("expired"));
        assert!(episodes.begins("queue-full"));
        assert!(!episodes.begins("queue-full"));
    }
}
