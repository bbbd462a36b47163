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
//! out, and there is at most one entry per active secret; the size bound is a safety net (the
//! oldest go first). An entry used in the second half of its `ttl` starts a new one, so a
//! client that renews its token more often than every `ttl` stays recognised (one of its
//! renewals falls into each second half), even while a flood keeps the hash pool full.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::ratelimit::source_key;

type Digest = [u8; 32];

pub(crate) struct Verified {
    key: [u8; 32],
    ttl: Duration,
    max: usize,
    state: Mutex<State>,
    /// Source keys (IPv6: /64) where a secret verified or was recognised lately → when.
    sources: Mutex<HashMap<IpAddr, Instant>>,
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
            sources: Mutex::new(HashMap::new()),
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

    /// Whether `digest` verified (or was recognised) less than `ttl` before `now`; if so and
    /// that was more than half a `ttl` ago, its lifetime starts again at `now`.
    pub(crate) fn recognise(&self, digest: &Digest, now: Instant) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let Some(age) = state
            .entries
            .get(digest)
            .map(|at| now.saturating_duration_since(*at))
        else {
            return false;
        };
        if age >= self.ttl {
            return false;
        }
        if age >= self.ttl / 2 {
            Self::put(&mut state, *digest, now, self.ttl, self.max);
        }
        true
    }

    /// Remembers that `digest` verified at `now`.
    pub(crate) fn insert(&self, digest: Digest, now: Instant) {
        if self.ttl.is_zero() || self.max == 0 {
            return;
        }
        if let Ok(mut state) = self.state.lock() {
            Self::put(&mut state, digest, now, self.ttl, self.max);
        }
    }

    /// Drops what has expired, and the oldest while full (amortised O(1)), then remembers
    /// `digest` from `now`. A digest is put at most three times within one `ttl` (verified,
    /// then recognised after half a `ttl` at most twice), so `order` stays below `4 × max`
    /// and that bound never drops a live entry early.
    fn put(state: &mut State, digest: Digest, now: Instant, ttl: Duration, max: usize) {
        let State { entries, order } = state;
        while let Some(&(old, at)) = order.front() {
            let expired = now.saturating_duration_since(at) >= ttl;
            if !expired && entries.len() < max && order.len() < 4 * max {
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

    /// Remembers that a secret verified (or was recognised) for a request from `source`.
    /// While full (`max` sources within `ttl`), new sources are not added.
    pub(crate) fn source_proved(&self, source: IpAddr, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut sources) = self.sources.lock() else {
            return;
        };
        let key = source_key(source);
        if sources.len() >= self.max && !sources.contains_key(&key) {
            let ttl = self.ttl;
            sources.retain(|_, at| now.saturating_duration_since(*at) < ttl);
            if sources.len() >= self.max {
                return;
            }
        }
        sources.insert(key, now);
    }

    /// Whether a secret verified for a request from `source` less than `ttl` before `now`.
    pub(crate) fn proven_source(&self, source: IpAddr, now: Instant) -> bool {
        self.sources.lock().is_ok_and(|sources| {
            sources
                .get(&source_key(source))
                .is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
        })
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
    fn entries_expire_after_ttl_unless_used_in_its_second_half() {
        let v = Verified::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        let d = v.digest("acme", "s1", "h", "p");
        assert!(!v.recognise(&d, t0));
        v.insert(d, t0);
        assert!(v.recognise(&d, secs(20)), "first half: no new lifetime");
        assert!(!v.recognise(&d, secs(60)), "expired");

        let e = v.digest("acme", "s2", "h", "p");
        v.insert(e, secs(100));
        assert!(
            v.recognise(&e, secs(140)),
            "second half: a new lifetime from 140"
        );
        assert!(v.recognise(&e, secs(190)));
        v.insert(v.digest("acme", "s3", "h", "p"), secs(195));
        assert!(
            v.recognise(&e, secs(240)),
            "the stale record of 100 did not drop it"
        );
        assert!(!v.recognise(&e, secs(300)));
    }

    #[test]
    fn a_hot_entry_does_not_push_others_out() {
        let v = Verified::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        let (hot, other) = (v.digest("a", "1", "h", "p"), v.digest("b", "2", "h", "p"));
        v.insert(hot, t0);
        v.insert(other, t0);
        for s in 0..600 {
            assert!(v.recognise(&hot, t0 + Duration::from_millis(s * 100)));
        }
        assert!(v.recognise(&other, t0 + Duration::from_secs(59)));
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
        assert!(!v.recognise(&digests[0], now));
        assert!(!v.recognise(&digests[1], now));
        assert!(digests[2..].iter().all(|d| v.recognise(d, now)));
    }

    #[test]
    fn proven_sources_expire_count_by_prefix_and_are_bounded() {
        let v = Verified::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        v.source_proved(ip("2001:db8::1"), t0);
        assert!(v.proven_source(ip("2001:db8::ffff"), t0), "same /64");
        assert!(!v.proven_source(ip("2001:db8:0:1::1"), t0));
        v.source_proved(ip("192.0.2.1"), t0);
        v.source_proved(ip("192.0.2.2"), t0);
        assert!(!v.proven_source(ip("192.0.2.2"), t0), "full: not added");
        assert!(!v.proven_source(ip("192.0.2.1"), t0 + Duration::from_secs(60)));
        v.source_proved(ip("192.0.2.2"), t0 + Duration::from_secs(60));
        assert!(v.proven_source(ip("192.0.2.2"), t0 + Duration::from_secs(60)));
    }

    #[test]
    fn zero_ttl_remembers_nothing() {
        let v = Verified::new(Duration::ZERO, 10);
        let t0 = Instant::now();
        let d = v.digest("acme", "s1", "h", "p");
        v.insert(d, t0);
        assert!(!v.recognise(&d, t0));
        assert_eq!(v.len(), 0);
    }
}
