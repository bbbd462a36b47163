//! Token buckets at the token endpoint, so guessing a secret costs time and a flood cannot
//! burn the service's CPU on argon2:
//! - per source address (IPv6 by /64), before anything else;
//! - per (`client_id`, source address), spent only by secret checks that fail (taken before
//!   the check, given back when it matches or never ran). Failures from one source thus never
//!   lock the client out elsewhere, and a client that knows its secret is never slowed by it;
//! - per `client_id` from all sources together, also spent only by failures and never
//!   refusing anyone: while it is empty the client id is under attack, and its checks go to
//!   a small lane of the hash pool, so wrong secrets for a few known ids from many addresses
//!   cannot crowd the other clients out of the pool;
//! - one bucket shared by every client id that does not exist, so random ids are limited
//!   as a whole. While it is empty, unknown ids are answered without a hash.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;

/// Tracked keys below which no sweep runs.
const SWEEP_AT: usize = 10_000;

/// Token buckets by key. A bucket that has refilled completely is the same as no bucket, so
/// sweeps drop exactly those: memory is bounded by the keys active within one refill time,
/// and sweeps run when the map has doubled since the last one (amortised O(1) per check).
pub(crate) struct Buckets<K> {
    burst: f64,
    per_sec: f64,
    state: Mutex<State<K>>,
}

struct State<K> {
    buckets: HashMap<K, (f64, Instant)>,
    sweep_at: usize,
}

impl<K: Hash + Eq> Buckets<K> {
    pub(crate) fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst),
            per_sec: f64::from(per_minute) / 60.0,
            state: Mutex::new(State {
                buckets: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        }
    }

    /// Takes one token of `key`'s bucket, or says in how many seconds one is available.
    pub(crate) fn check(&self, key: K, now: Instant) -> Result<(), u64> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(());
        };
        if state.buckets.len() >= state.sweep_at {
            let (burst, per_sec) = (self.burst, self.per_sec);
            state.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
            state.sweep_at = SWEEP_AT.max(state.buckets.len() * 2);
        }
        let (tokens, at) = state.buckets.entry(key).or_insert((self.burst, now));
        let refilled =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            let wait = (1.0 - refilled) / self.per_sec;
            Err(wait.ceil().max(1.0) as u64)
        }
    }

    /// Gives back the token a [`Self::check`] of `key` took (capped at the burst). A bucket
    /// swept meanwhile was full, so there is nothing to give back.
    pub(crate) fn refund(&self, key: &K) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let burst = self.burst;
        if let Some((tokens, _)) = state.buckets.get_mut(key) {
            *tokens = (*tokens + 1.0).min(burst);
        }
    }
}

/// Whose failed secret checks a bucket counts: a client id (lower case) from one source
/// (`None`: a router served without peer addresses).
type ClientKey = (String, Option<IpAddr>);

/// Every limit of the token endpoint.
pub(crate) struct RateLimiter {
    clients: Buckets<ClientKey>,
    /// Failures per client id (lower case), from any source.
    attacked: Buckets<String>,
    sources: Buckets<IpAddr>,
    unknown: Buckets<()>,
}

impl RateLimiter {
    pub(crate) fn new(config: &RateLimitConfig) -> Self {
        Self {
            clients: Buckets::new(config.burst, config.per_minute),
            attacked: Buckets::new(config.burst, config.per_minute),
            sources: Buckets::new(config.per_source_burst, config.per_source_per_minute),
            unknown: Buckets::new(config.unknown_burst, config.unknown_per_minute),
        }
    }

    /// Takes one token of the bucket of `client_id` (any case) from `source` before a secret
    /// check whose outcome is not known yet. Hand the check's outcome to
    /// [`Self::checked`]: only failures keep the token spent.
    pub(crate) fn check(
        &self,
        client_id: &str,
        source: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), u64> {
        self.clients.check(client_key(client_id, source), now)
    }

    /// Before a secret check for `client_id` (any case): takes one token of its bucket for
    /// all sources together (the same `burst` and `per_minute`), or says `false`, taking none,
    /// while it is empty: the id has had more failed checks lately than that allows, it is
    /// under attack. Refuses nothing; the caller picks the pool's lane by it.
    pub(crate) fn take_attack_token(&self, client_id: &str, now: Instant) -> bool {
        self.attacked
            .check(client_id.to_ascii_lowercase(), now)
            .is_ok()
    }

    /// After a [`Self::check`] (and [`Self::take_attack_token`], if it took one): unless the
    /// secret check `failed`, the tokens are given back.
    pub(crate) fn checked(
        &self,
        client_id: &str,
        source: Option<IpAddr>,
        failed: bool,
        attack_token: bool,
    ) {
        if failed {
            return;
        }
        self.clients.refund(&client_key(client_id, source));
        if attack_token {
            self.attacked.refund(&client_id.to_ascii_lowercase());
        }
    }

    /// One request from `source` (an IPv6 address counts by its /64).
    pub(crate) fn check_source(&self, source: IpAddr, now: Instant) -> Result<(), u64> {
        self.sources.check(source_key(source), now)
    }

    /// One request for a client id that does not exist (one bucket for all of them).
    pub(crate) fn check_unknown(&self, now: Instant) -> Result<(), u64> {
        self.unknown.check((), now)
    }
}

fn client_key(client_id: &str, source: Option<IpAddr>) -> ClientKey {
    (client_id.to_ascii_lowercase(), source.map(source_key))
}

/// IPv4 (and IPv4-mapped) addresses as they are, IPv6 by /64: one host usually has a whole
/// /64 to pick addresses from.
pub(crate) fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> RateLimitConfig {
        RateLimitConfig {
            burst: 3,
            per_minute: 60,
            per_source_burst: 2,
            per_source_per_minute: 60,
            unknown_burst: 2,
            unknown_per_minute: 60,
        }
    }

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(&config());
        let t0 = Instant::now();
        let a = Some("192.0.2.1".parse().expect("ip"));
        for _ in 0..3 {
            assert_eq!(limiter.check("Ops", a, t0), Ok(()));
        }
        assert_eq!(limiter.check("ops", a, t0), Err(1), "same client, any case");
        assert_eq!(
            limiter.check("other", a, t0),
            Ok(()),
            "buckets are per client"
        );
        assert_eq!(limiter.check("ops", a, t0 + Duration::from_secs(1)), Ok(()));
        assert!(
            limiter
                .check("ops", a, t0 + Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn client_buckets_are_per_source_and_spent_only_by_failures() {
        let limiter = RateLimiter::new(&config());
        let t0 = Instant::now();
        let a = Some("192.0.2.1".parse().expect("ip"));
        let a_same_64 = Some("2001:db8::1".parse().expect("ip"));
        let b = Some("192.0.2.2".parse().expect("ip"));
        for _ in 0..3 {
            assert_eq!(limiter.check("ops", a, t0), Ok(()));
            limiter.checked("ops", a, true, false);
        }
        assert_eq!(limiter.check("ops", a, t0), Err(1), "a's failures spent it");
        assert_eq!(limiter.check("ops", b, t0), Ok(()), "b has its own bucket");
        limiter.checked("ops", b, false, false);
        for _ in 0..10 {
            assert_eq!(limiter.check("ops", b, t0), Ok(()), "successes are free");
            limiter.checked("ops", b, false, false);
        }
        for _ in 0..3 {
            assert_eq!(limiter.check("ops", a_same_64, t0), Ok(()));
            limiter.checked("ops", a_same_64, true, false);
        }
        let other_in_64 = Some("2001:db8::2".parse().expect("ip"));
        assert_eq!(limiter.check("ops", other_in_64, t0), Err(1), "IPv6 by /64");
    }

    #[test]
    fn failures_from_all_sources_mark_a_client_id_under_attack() {
        let limiter = RateLimiter::new(&config());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take_attack_token("Ops", t0));
            limiter.checked("ops", None, true, true);
        }
        assert!(
            !limiter.take_attack_token("OPS", t0),
            "three failures, burst 3"
        );
        assert!(limiter.take_attack_token("other", t0));
        limiter.checked("other", None, false, true);
        assert!(
            limiter.take_attack_token("ops", t0 + Duration::from_secs(1)),
            "refilled"
        );
        for _ in 0..5 {
            assert!(
                limiter.take_attack_token("other", t0),
                "successes give it back"
            );
            limiter.checked("other", None, false, true);
        }
    }

    #[test]
    fn sources_are_limited_by_address_and_ipv6_by_prefix() {
        let limiter = RateLimiter::new(&config());
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        assert_eq!(limiter.check_source(a, t0), Ok(()));
        assert_eq!(limiter.check_source(a, t0), Ok(()));
        assert_eq!(limiter.check_source(a, t0), Err(1));
        assert_eq!(limiter.check_source(b, t0), Ok(()), "per address");
        let v6a: IpAddr = "2001:db8::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8::ffff:1234".parse().expect("ip");
        let other: IpAddr = "2001:db8:0:1::1".parse().expect("ip");
        assert_eq!(limiter.check_source(v6a, t0), Ok(()));
        assert_eq!(limiter.check_source(v6b, t0), Ok(()));
        assert_eq!(limiter.check_source(v6a, t0), Err(1), "same /64");
        assert_eq!(limiter.check_source(other, t0), Ok(()), "another /64");
        let mapped: IpAddr = "::ffff:192.0.2.2".parse().expect("ip");
        assert_eq!(limiter.check_source(mapped, t0), Ok(()));
        assert_eq!(
            limiter.check_source(b, t0),
            Err(1),
            "mapped is the IPv4 address"
        );
    }

    #[test]
    fn unknown_ids_share_one_bucket() {
        let limiter = RateLimiter::new(&config());
        let t0 = Instant::now();
        assert_eq!(limiter.check_unknown(t0), Ok(()));
        assert_eq!(limiter.check_unknown(t0), Ok(()));
        assert_eq!(limiter.check_unknown(t0), Err(1));
        assert_eq!(
            limiter.check("acme", None, t0),
            Ok(()),
            "known clients unaffected"
        );
        assert_eq!(limiter.check_unknown(t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn sweeps_drop_only_full_buckets() {
        let buckets: Buckets<u32> = Buckets::new(2, 60);
        let t0 = Instant::now();
        assert_eq!(buckets.check(0, t0), Ok(()));
        assert_eq!(buckets.check(0, t0), Ok(()));
        for key in 1..SWEEP_AT as u32 {
            assert_eq!(buckets.check(key, t0), Ok(()));
        }
        // One second later key 0 has one token back (not full), the others are full again.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(buckets.check(u32::MAX, t1), Ok(()));
        let len = buckets.state.lock().map(|s| s.buckets.len()).unwrap_or(0);
        assert_eq!(len, 2, "key 0 and the new key remain");
        assert_eq!(buckets.check(0, t1), Ok(()));
        assert_eq!(buckets.check(0, t1), Err(1), "key 0 kept its state");
    }
}
