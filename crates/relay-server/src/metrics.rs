//! The relay node's Prometheus metrics.
//!
//! Request metrics are process-wide statics of fixed shape (mode × status class, a fixed
//! list of relay error codes), recorded by [`finish`] with relaxed atomic adds: no lock and
//! no allocation per request, except one small box for the byte-counting response body.
//! Gauges (tunnels, pool usage, broker counts) are read when scraped. Per-tenant series
//! exist only with `[metrics] tenant_label = true`, and only for tenants the node knows.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use relay_core::metrics::{Counter, Exposition, Histogram, STATUS_CLASSES, status_class};

use crate::AppState;
use crate::registry::BoxError;
use crate::relay::Mode;
use crate::responses::Body;

const MODES: [&str; 3] = ["relay", "queue", "trace"];

/// `x-relay-error` codes counted by name; anything else counts as `other`.
const ERROR_CODES: [&str; 29] = [
    "authority-unavailable",
    "body-incomplete",
    "body-store",
    "body-too-large",
    "broker-unavailable",
    "client-token-required",
    "connector-lost",
    "draining",
    "interrupted",
    "no-connector",
    "path-invalid",
    "request-expired",
    "request-invalid",
    "spool-failed",
    "store-unavailable",
    "target-invalid",
    "target-timeout",
    "target-unknown",
    "target-unreachable",
    "tenant-unknown",
    "too-many-redirects",
    "bad-path",
    "content-type",
    "stream-limit",
    "queue-full",
    "queue-node-full",
    "spool-quota",
    "spool-full",
    "other",
];

static REQUESTS: [[Counter; 5]; 3] = [const { [const { Counter::new() }; 5] }; 3];
static LATENCY: [Histogram; 3] = [const { Histogram::new() }; 3];
static ERRORS: [Counter; ERROR_CODES.len()] = [const { Counter::new() }; ERROR_CODES.len()];
/// Request body bytes read from clients (counted by `body::LimitedBody`).
pub(crate) static BYTES_IN: Counter = Counter::new();
static BYTES_OUT: Counter = Counter::new();

/// Per-tenant request counts (mode × status class), only with `tenant_label`.
type TenantSeries = [[Counter; 5]; 3];
/// Keyed by tenant id, with the tenant's name for the label: a re-created tenant of the same
/// name gets series of its own.
type TenantMap = HashMap<String, (String, Arc<TenantSeries>)>;
static TENANTS: LazyLock<RwLock<TenantMap>> = LazyLock::new(Default::default);

fn mode_index(mode: Mode) -> usize {
    match mode {
        Mode::Relay => 0,
        Mode::Queue => 1,
        Mode::Trace => 2,
    }
}

/// Records one relayed request once its response head is ready, and counts the bytes of
/// its body as they are sent. `tenant` is the tenant segment of the path as the client wrote it.
pub(crate) fn finish(
    state: &AppState,
    mode: Mode,
    tenant: &str,
    started: Instant,
    response: Response<Body>,
) -> Response<Body> {
    let m = mode_index(mode);
    let class = status_class(response.status().as_u16());
    REQUESTS[m][class].inc();
    LATENCY[m].observe(started.elapsed());
    let code = response.headers().get(relay_proto::headers::RELAY_ERROR);
    if let Some(code) = code {
        let code = code.as_bytes();
        let i = ERROR_CODES
            .iter()
            .position(|c| c.as_bytes() == code)
            .unwrap_or(ERROR_CODES.len() - 1);
        ERRORS[i].inc();
    }
    let unknown = code.is_some_and(|c| c.as_bytes() == b"tenant-unknown");
    if state.config.metrics.tenant_label && !unknown && !tenant.is_empty() {
        record_tenant(state, tenant, m, class);
    }
    response.map(|body| CountingBody { inner: body }.boxed())
}

fn record_tenant(state: &AppState, tenant: &str, mode: usize, class: usize) {
    // Only tenants this node knows get a series, so the label set stays bounded.
    let Some(entry) = state.tenants.cached(tenant) else {
        return;
    };
    let series = TENANTS
        .read()
        .ok()
        .and_then(|m| m.get(&entry.id).map(|(_, s)| s.clone()));
    let series = match series {
        Some(series) => series,
        None => match TENANTS.write() {
            Ok(mut map) => map
                .entry(entry.id.clone())
                .or_insert_with(|| (entry.key.clone(), Arc::default()))
                .1
                .clone(),
            Err(_) => return,
        },
    };
    series[mode][class].inc();
}

/// A response body that adds every data frame's length to `BYTES_OUT`.
struct CountingBody {
    inner: Body,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            BYTES_OUT.add(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The text exposition of this node's metrics.
/// What the isolation bounds did: stalled responses reset, single-node queue counts.
fn render_bounds(state: &AppState, e: &mut Exposition) {
    e.single(
        "relay_stalled_responses_reset_total",
        "counter",
        "Responses reset because their client took no frame in time (client_write_timeout) \
         or its source had too many stalled (max_stalled_per_source).",
        state.watchdog.resets(),
    );
    e.single(
        "relay_queue_requests",
        "gauge",
        "Single-node queue mode: requests waiting on this node for a connector.",
        state.spool.requests(),
    );
    e.single(
        "relay_queue_expired_total",
        "counter",
        "Single-node queue mode: queued requests that expired undelivered.",
        state.spool_events.expired.load(Ordering::Relaxed),
    );
    e.single(
        "relay_queue_refused_total",
        "counter",
        "Single-node queue mode: requests refused at queue_max_requests(_per_tenant).",
        state.spool_events.refused.load(Ordering::Relaxed),
    );
}

pub(crate) fn render(state: &AppState) -> String {
    let mut e = Exposition::new();
    e.describe(
        "relay_requests_total",
        "counter",
        "Relayed requests by mode and response status class.",
    );
    for (m, mode) in MODES.iter().enumerate() {
        for (c, class) in STATUS_CLASSES.iter().enumerate() {
            e.sample(
                "relay_requests_total",
                &[("mode", mode), ("status", class)],
                REQUESTS[m][c].get(),
            );
        }
    }
    e.describe(
        "relay_request_errors_total",
        "counter",
        "Relayed requests answered with an x-relay-error code, by code.",
    );
    for (i, code) in ERROR_CODES.iter().enumerate() {
        e.sample(
            "relay_request_errors_total",
            &[("code", code)],
            ERRORS[i].get(),
        );
    }
    e.describe(
        "relay_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to its response head, by mode.",
    );
    for (m, mode) in MODES.iter().enumerate() {
        e.histogram(
            "relay_request_duration_seconds",
            &[("mode", mode)],
            &LATENCY[m],
        );
    }
    e.single(
        "relay_request_body_bytes_total",
        "counter",
        "Request body bytes received from clients.",
        BYTES_IN.get(),
    );
    e.single(
        "relay_response_body_bytes_total",
        "counter",
        "Response body bytes sent to clients.",
        BYTES_OUT.get(),
    );
    if state.config.metrics.tenant_label {
        e.describe(
            "relay_tenant_requests_total",
            "counter",
            "Relayed requests by tenant, mode and response status class.",
        );
        if let Ok(map) = TENANTS.read() {
            let mut tenants: Vec<_> = map.iter().collect();
            tenants.sort_by(|a, b| (&a.1.0, a.0).cmp(&(&b.1.0, b.0)));
            for (id, (tenant, series)) in tenants {
                for (m, mode) in MODES.iter().enumerate() {
                    for (c, class) in STATUS_CLASSES.iter().enumerate() {
                        let v = series[m][c].get();
                        if v > 0 {
                            e.sample(
                                "relay_tenant_requests_total",
                                &[
                                    ("tenant", tenant),
                                    ("tenant_id", id),
                                    ("mode", mode),
                                    ("status", class),
                                ],
                                v,
                            );
                        }
                    }
                }
            }
        }
    }
    let tunnels = state.registry.all();
    let connectors = crate::registry::connectors(&tunnels);
    e.single(
        "relay_connectors_connected",
        "gauge",
        "Connectors (tenant and machine) with at least one tunnel to this node.",
        connectors.len(),
    );
    e.describe(
        "relay_tunnels",
        "gauge",
        "Open connector tunnels on this node.",
    );
    e.sample(
        "relay_tunnels",
        &[("node", &state.origin_id)],
        tunnels.len(),
    );
    let inflight: usize = tunnels.iter().map(|t| t.inflight()).sum();
    e.single(
        "relay_tunnel_requests_in_flight",
        "gauge",
        "Requests currently running through this node's tunnels.",
        inflight,
    );
    render_bounds(state, &mut e);
    if state.config.metrics.tenant_label {
        e.describe(
            "relay_tenant_tunnels",
            "gauge",
            "Open tunnels on this node by tenant.",
        );
        let mut by_tenant: Vec<(&str, &str)> = tunnels
            .iter()
            .map(|t| (t.auth.tenant_name.as_str(), t.tenant_id()))
            .collect();
        by_tenant.sort_unstable();
        for chunk in by_tenant.chunk_by(|a, b| a == b) {
            let (tenant, id) = chunk[0];
            e.sample(
                "relay_tenant_tunnels",
                &[("tenant", tenant), ("tenant_id", id)],
                chunk.len(),
            );
        }
    }
    let (max, size, in_use, waiting) = state.store.pool_usage();
    e.single(
        "relay_db_pool_max",
        "gauge",
        "Configuration database pool size limit.",
        max,
    );
    e.single(
        "relay_db_pool_connections",
        "gauge",
        "Open database connections.",
        size,
    );
    e.single(
        "relay_db_pool_in_use",
        "gauge",
        "Database connections in use.",
        in_use,
    );
    e.single(
        "relay_db_pool_waiting",
        "gauge",
        "Tasks waiting for a database connection.",
        waiting,
    );
    let bus = &relay_bus::stats::STATS;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    e.describe(
        "relay_broker_publish_total",
        "counter",
        "Broker publishes by result (ok = confirmed by the broker).",
    );
    e.sample(
        "relay_broker_publish_total",
        &[("result", "ok")],
        load(&bus.published),
    );
    e.sample(
        "relay_broker_publish_total",
        &[("result", "failed")],
        load(&bus.publish_failed),
    );
    e.describe(
        "relay_broker_consume_total",
        "counter",
        "Broker deliveries by result (failed = malformed or expired).",
    );
    e.sample(
        "relay_broker_consume_total",
        &[("result", "ok")],
        load(&bus.consumed),
    );
    e.sample(
        "relay_broker_consume_total",
        &[("result", "failed")],
        load(&bus.consume_failed),
    );
    e.describe(
        "relay_acknowledgements_total",
        "counter",
        "Manual acknowledgements and held deliveries by outcome (settled, forwarded, \
         bad-signature, unknown, expired, released).",
    );
    for (outcome, n) in crate::ack::outcome_counts() {
        e.sample("relay_acknowledgements_total", &[("outcome", outcome)], n);
    }
    e.single(
        "relay_acknowledgements_pending",
        "gauge",
        "Requests held on this node until their target acknowledges them (mode manual).",
        state.acks.pending(),
    );
    relay_core::conn::render_metrics(&mut e);
    e.finish()
}
