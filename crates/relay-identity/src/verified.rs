//! [`Verified`]: secrets that verified lately, recognised again without an argon2 run.
//!
//! Each entry is HMAC-SHA256, under a key drawn at random when the process starts, of
//! (client id, secret id, the secret's PHC hash, the presented plaintext). It is only ever
//! compared with the digests of the candidates the database has just returned as neither
//! revoked nor expired, so an entry can never make a revoked, expired or replaced secret work:
//! its secret is no longer a candidate, and the entry is dead until it ages out. Plaintexts
//! are not kept, and without the key the digests say nothing about them.
//!
//! Only a successful argon2 check inserts, so a flood of wrong secrets cannot push entries
//! out; the size bound is a safety net (the oldest go first). Entries are not refreshed when
//! they are used: each secret is hashed again at least once per `ttl`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type Digest = [u8; 32];

pub(crate) struct Verified {
    key: [u8; 32],
    ttl: Duration,
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Digest → when it was inserted.
    entries: HashMap<Digest, Instant>,
    /// The same digests, oldest first (an entry inserted again appears twice; only the
    /// newest of its times is in `entries`).
    order: VecDeque<(Digest, Instant)>,
}

impl Verified {
    /// Remembers up to `max` verified secrets for `ttl` each; `ttl` zero remembers none.
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self {
            key,
            ttl,
            max,
            state: Mutex::new(State::default()),
        }
    }

    /// The digest of `plaintext` presented for `client_id` (any case) against the stored
    /// secret `secret_id` with the PHC hash `phc`.
    pub(crate) fn digest(
        &self,
        client_id: &str,
        secret_id: &str,
        phc: &str,
        plaintext: &str,
    ) -> Digest {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.key) else {
            // HMAC takes keys of any length; unreachable.
            return [0; 32];
        };
        let lower = client_id.to_ascii_lowercase();
        for field in [lower.as_str(), secret_id, phc, plaintext] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `digest` verified less than `ttl` before `now`.
    pub(crate) fn contains(&self, digest: &Digest, now: Instant) -> bool {
        let Ok(state) = self.state.lock() else {
            return false;
        };
        state
            .entries
            .get(digest)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    /// Remembers that `digest` verified at `now`.
    pub(crate) fn insert(&self, digest: Digest, now: Instant) {
        if self.ttl.is_zero() || self.max == 0 {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let State { entries, order } = &mut *state;
        // Drop what has expired, and the oldest while full; amortised O(1) per insert.
        while let Some(&(old, at)) = order.front() {
            let expired = now.saturating_duration_since(at) >= self.ttl;
            if !expired && entries.len() < self.max && order.len() < 2 * self.max {
                break;
            }
            order.pop_front();
            if entries.get(&old) == Some(&at) {
                entries.remove(&old);
            }
        }
        entries.insert(digest, now);
        order.push_back((digest, now));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().map(|s| s.entries.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_counts_and_client_ids_ignore_case() {
        let v = Verified::new(Duration::from_secs(60), 10);
        let d = v.digest("Acme", "s1", "$argon2id$x", "secret");
        assert_eq!(d, v.digest("acme", "s1", "$argon2id$x", "secret"));
        assert_ne!(d, v.digest("acme", "s2", "$argon2id$x", "secret"));
        assert_ne!(d, v.digest("acme", "s1", "$argon2id$y", "secret"));
        assert_ne!(d, v.digest("acme", "s1", "$argon2id$x", "secreT"));
        assert_ne!(
            d,
            v.digest("acmes", "1", "$argon2id$x", "secret"),
            "fields are delimited"
        );
        let other_process = Verified::new(Duration::from_secs(60), 10);
        assert_ne!(
            d,
            other_process.digest("acme", "s1", "$argon2id$x", "secret")
        );
    }

    #[test]
    fn entries_expire_after_ttl() {
        let v = Verified::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        let d = v.digest("acme", "s1", "h", "p");
        assert!(!v.contains(&d, t0));
        v.insert(d, t0);
        assert!(v.contains(&d, t0 + Duration::from_secs(59)));
        assert!(!v.contains(&d, t0 + Duration::from_secs(60)));
        // Inserting again later starts a new lifetime; the old one's expiry does not drop it.
        v.insert(d, t0 + Duration::from_secs(30));
        v.insert(
            v.digest("acme", "s2", "h", "p"),
            t0 + Duration::from_secs(61),
        );
        assert!(v.contains(&d, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn size_is_bounded_and_the_oldest_go_first() {
        let v = Verified::new(Duration::from_secs(600), 3);
        let t0 = Instant::now();
        let digests: Vec<Digest> = (0..5)
            .map(|n| v.digest("acme", &n.to_string(), "h", "p"))
            .collect();
        for (n, d) in digests.iter().enumerate() {
            v.insert(*d, t0 + Duration::from_secs(n as u64));
        }
        assert_eq!(v.len(), 3);
        let now = t0 + Duration::from_secs(5);
        assert!(!v.contains(&digests[0], now));
        assert!(!v.contains(&digests[1], now));
        assert!(digests[2..].iter().all(|d| v.contains(d, now)));
    }

    #[test]
    fn zero_ttl_remembers_nothing() {
        let v = Verified::new(Duration::ZERO, 10);
        let t0 = Instant::now();
        let d = v.digest("acme", "s1", "h", "p");
        v.insert(d, t0);
        assert!(!v.contains(&d, t0));
        assert_eq!(v.len(), 0);
    }
}
