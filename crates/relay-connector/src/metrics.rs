//! The connector's Prometheus metrics: process-wide atomics recorded without locks or
//! allocations, rendered when scraped.

use std::time::Instant;

use http::Response;
use relay_core::metrics::{Counter, Exposition, Gauge, Histogram, STATUS_CLASSES, status_class};

use crate::targets::ResponseBody;

static REQUESTS: [Counter; 5] = [const { Counter::new() }; 5];
static LATENCY: Histogram = Histogram::new();
/// Tunnels currently up.
pub(crate) static TUNNELS_UP: Gauge = Gauge::new();
/// Tunnels the connector keeps open (relay URLs × `tunnels_per_relay`).
pub(crate) static TUNNELS_WANTED: Gauge = Gauge::new();
/// Tunnel attempts by result: 0 = established, 1 = failed to open.
pub(crate) static CONNECTS: [Counter; 2] = [const { Counter::new() }; 2];
/// Tunnels that ended without being asked to (connection lost).
pub(crate) static LOST: Counter = Counter::new();
/// Drain requests from relay servers.
pub(crate) static DRAINED: Counter = Counter::new();
/// Tunnels replaced by a new one before their token expired.
pub(crate) static RENEWED: Counter = Counter::new();

/// Records one relayed request when its response head is ready.
#[inline]
pub(crate) fn finish(started: Instant, response: Response<ResponseBody>) -> Response<ResponseBody> {
    REQUESTS[status_class(response.status().as_u16())].inc();
    LATENCY.observe(started.elapsed());
    response
}

pub(crate) fn render() -> String {
    let mut e = Exposition::new();
    e.describe(
        "relay_connector_requests_total",
        "counter",
        "Requests served to targets, by response status class.",
    );
    for (c, class) in STATUS_CLASSES.iter().enumerate() {
        e.sample(
            "relay_connector_requests_total",
            &[("status", class)],
            REQUESTS[c].get(),
        );
    }
    e.describe(
        "relay_connector_request_duration_seconds",
        "histogram",
        "Time from a request's arrival through the tunnel to the target's response head.",
    );
    e.histogram("relay_connector_request_duration_seconds", &[], &LATENCY);
    e.single(
        "relay_connector_tunnels",
        "gauge",
        "Tunnels currently up.",
        TUNNELS_UP.get(),
    );
    e.single(
        "relay_connector_tunnels_wanted",
        "gauge",
        "Tunnels the connector keeps open (relay URLs times tunnels_per_relay).",
        TUNNELS_WANTED.get(),
    );
    e.describe(
        "relay_connector_tunnel_connects_total",
        "counter",
        "Attempts to open a tunnel, by result.",
    );
    e.sample(
        "relay_connector_tunnel_connects_total",
        &[("result", "ok")],
        CONNECTS[0].get(),
    );
    e.sample(
        "relay_connector_tunnel_connects_total",
        &[("result", "failed")],
        CONNECTS[1].get(),
    );
    e.single(
        "relay_connector_tunnels_lost_total",
        "counter",
        "Tunnels that ended without a drain or shutdown.",
        LOST.get(),
    );
    e.single(
        "relay_connector_drains_total",
        "counter",
        "Drain requests received from relay servers.",
        DRAINED.get(),
    );
    e.single(
        "relay_connector_tunnel_renewals_total",
        "counter",
        "Tunnels replaced by a new one (with a new token) before their token expired.",
        RENEWED.get(),
    );
    e.finish()
}
