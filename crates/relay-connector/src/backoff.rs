//! Reconnect delays: exponential, jittered, between a minimum and a maximum.

use std::time::Duration;

use rand::Rng;

/// Jittered exponential back-off: attempt `n` waits a uniform time in
/// `[min, min(max, min·2^(n+1))]`, so even the first reconnect of a fleet of connectors that
/// lost the same server is spread out instead of storming back.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Adopts new bounds (pushed settings) without restarting the sequence.
    pub fn set_bounds(&mut self, min: Duration, max: Duration) {
        self.min = min;
        self.max = max.max(min);
    }

    /// The current `(min, max)` delays.
    pub fn bounds(&self) -> (Duration, Duration) {
        (self.min, self.max)
    }

    /// Called once a tunnel was up: the next failure starts from the minimum again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.saturating_add(1).min(16));
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.min.saturating_mul(factor).min(self.max);
        if ceiling <= self.min {
            return self.min;
        }
        let spread = (ceiling - self.min).as_millis() as u64;
        self.min + Duration::from_millis(rand::rng().random_range(0..=spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_delays_are_spread() {
        let min = Duration::from_millis(500);
        let firsts: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(min, Duration::from_secs(30)).next_delay())
            .collect();
        assert!(
            firsts.len() > 5,
            "first reconnects not jittered: {firsts:?}"
        );
    }

    #[test]
    fn stays_within_bounds_and_grows() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut b = Backoff::new(min, max);
        let mut largest = Duration::ZERO;
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(d >= min && d <= max, "{d:?}");
            largest = largest.max(d);
        }
        assert!(
            largest > Duration::from_secs(1),
            "back-off never grew: {largest:?}"
        );
        b.reset();
        let first = b.next_delay();
        assert!(first >= min && first <= min * 2, "{first:?}");
    }
}
