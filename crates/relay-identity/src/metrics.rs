//! Prometheus metrics of the token service: requests by endpoint and status class, and
//! their latency. Relaxed atomics only; rendered when scraped.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use relay_core::metrics::{Counter, Exposition, Histogram, STATUS_CLASSES, status_class};

const ENDPOINTS: [&str; 3] = ["token", "wellknown", "other"];

static REQUESTS: [[Counter; 5]; 3] = [const { [const { Counter::new() }; 5] }; 3];
static LATENCY: [Histogram; 3] = [const { Histogram::new() }; 3];

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
    x.finish()
}
