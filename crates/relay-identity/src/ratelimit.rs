//! Token buckets per `client_id`, checked before any secret is verified, so guessing a
//! secret costs time and flooding one client id cannot burn the service's CPU on argon2.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

/// Buckets of clients not seen for this long are forgotten (bounded memory).
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Upper bound of tracked client ids; past it, idle buckets are swept.
const SWEEP_AT: usize = 10_000;

pub(crate) struct RateLimiter {
    burst: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub(crate) fn new(config: &RateLimitConfig) -> Self {
        Self {
            burst: f64::from(config.burst),
            per_sec: f64::from(config.per_minute) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `client_id`'s bucket, or says in how many seconds one is available.
    pub(crate) fn check(&self, client_id: &str, now: Instant) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
        }
        let key = client_id.to_ascii_lowercase();
        let (tokens, at) = buckets.entry(key).or_insert((self.burst, now));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(&RateLimitConfig {
            burst: 3,
            per_minute: 60,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("Ops", t0), Ok(()));
        }
        assert_eq!(limiter.check("ops", t0), Err(1), "same client, any case");
        assert_eq!(limiter.check("other", t0), Ok(()), "buckets are per client");
        assert_eq!(limiter.check("ops", t0 + Duration::from_secs(1)), Ok(()));
        assert!(limiter.check("ops", t0 + Duration::from_secs(1)).is_err());
    }
}
