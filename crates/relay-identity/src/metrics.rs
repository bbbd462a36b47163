//! Prometheus metrics of the token service: requests by endpoint and status class, their
//! latency, and what became of secret checks. Relaxed atomics only; rendered when scraped.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use relay_core::metrics::{Counter, Exposition, Histogram, STATUS_CLASSES, status_class};

const ENDPOINTS: [&str; 3] = ["token", "wellknown", "other"];

static REQUESTS: [[Counter; 5]; 3] = [const { [const { Counter::new() }; 5] }; 3];
static LATENCY: [Histogram; 3] = [const { Histogram::new() }; 3];

/// What became of a presented client secret (tenant secrets; management clients and unknown
/// ids count as `matched`/`failed`/`limited`/`busy` as well).
#[derive(Clone, Copy)]
pub(crate) enum SecretCheck {
    /// Recognised from a recent match, without a hash.
    Remembered = 0,
    /// Hashed, and it matched.
    Matched,
    /// Hashed (or the dummy check), and it did not match.
    Failed,
    /// Refused: the (client id, source) bucket was empty.
    Limited,
    /// Refused: the hash pool's queue was full or the source held its share.
    Busy,
}

const SECRET_CHECK_OUTCOMES: [&str; 5] = ["remembered", "matched", "failed", "limited", "busy"];
static SECRET_CHECKS: [Counter; 5] = [const { Counter::new() }; 5];

pub(crate) fn secret_check(outcome: SecretCheck) {
    SECRET_CHECKS[outcome as usize].inc();
}

fn endpoint(path: &str) -> usize {
    if path == crate::TOKEN_PATH {
        0
    } else if path.starts_with("/.well-known/") {
        1
    } else {
        2
    }
}

/// Middleware: counts every request once its response head is ready.
pub(crate) async fn record(req: Request, next: Next) -> Response {
    let e = endpoint(req.uri().path());
    let started = Instant::now();
    let response = next.run(req).await;
    REQUESTS[e][status_class(response.status().as_u16())].inc();
    LATENCY[e].observe(started.elapsed());
    response
}

pub(crate) fn render() -> String {
    let mut x = Exposition::new();
    x.describe(
        "relay_identity_requests_total",
        "counter",
        "Requests by endpoint (token, wellknown, other) and response status class.",
    );
    for (e, endpoint) in ENDPOINTS.iter().enumerate() {
        for (c, class) in STATUS_CLASSES.iter().enumerate() {
            x.sample(
                "relay_identity_requests_total",
                &[("endpoint", endpoint), ("status", class)],
                REQUESTS[e][c].get(),
            );
        }
    }
    x.describe(
        "relay_identity_request_duration_seconds",
        "histogram",
        "Time to the response head, by endpoint.",
    );
    for (e, endpoint) in ENDPOINTS.iter().enumerate() {
        x.histogram(
            "relay_identity_request_duration_seconds",
            &[("endpoint", endpoint)],
            &LATENCY[e],
        );
    }
    x.describe(
        "relay_identity_secret_checks_total",
        "counter",
        "Presented client secrets by outcome: remembered (no hash), matched, failed, limited (429), busy (503).",
    );
    for (outcome, counter) in SECRET_CHECK_OUTCOMES.iter().zip(&SECRET_CHECKS) {
        x.sample(
            "relay_identity_secret_checks_total",
            &[("outcome", outcome)],
            counter.get(),
        );
    }
    // Connections refused or closed at the listener's caps, by reason.
    relay_core::conn::render_metrics(&mut x);
    x.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_check_outcomes_are_rendered() {
        secret_check(SecretCheck::Remembered);
        let text = render();
        for outcome in SECRET_CHECK_OUTCOMES {
            let line = format!("relay_identity_secret_checks_total{{outcome=\"{outcome}\"}}");
            assert!(text.contains(&line), "{line} missing in\n{text}");
        }
        assert!(
            !text.contains("relay_identity_secret_checks_total{outcome=\"remembered\"} 0"),
            "counted"
        );
    }
}
