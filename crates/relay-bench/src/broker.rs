//! The broker ceiling: the cross-node row's message pattern with no HTTP, no tunnel and no
//! relay node, so the cross-node figure can be read against what the broker itself sustains
//! on this machine.
//!
//! Per round trip, exactly what a cross-node request costs on the bus: the load side (as node
//! A) publishes a request envelope to the tenant's queue, confirmed and mandatory; an echo
//! process (as node B, `relay-bench bus-echo`) consumes it with the tenant's prefetch,
//! publishes a response with a [`SMALL_SIZE`] inline body to the load side's response queue,
//! confirmed, and acknowledges the delivery; the load side consumes its response queue.
//! Both sides use `relay-bus`, the library the relay nodes use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use relay_bus::{BodyRef, Bus, BusConfig, RequestEnvelope, ResponseEnvelope};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::load::{Failure, Outcome, Tally, Window};
use crate::procs::{Probe, Service};
use crate::scenario::Scenario;
use crate::target::SMALL_SIZE;

/// The tenant whose request queue carries the round trips.
pub const TENANT: &str = "bus-bench";
/// How long a round trip may take before it counts as failed.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Broker URL.
    #[arg(long)]
    pub amqp_url: String,
    /// Queue name prefix (isolates the run).
    #[arg(long)]
    pub prefix: String,
    /// Unsettled requests held at once (the tenant's concurrency limit on a relay node).
    #[arg(long, default_value_t = 64)]
    pub prefetch: u16,
}

/// `relay-bench bus-echo`: answers every request of [`TENANT`] until stdin closes. Prints
/// `ready` once it consumes.
pub async fn echo(args: EchoArgs) -> anyhow::Result<()> {
    let origin = format!("bench-echo-{}", std::process::id());
    let bus = Arc::new(connect(&args.amqp_url, &args.prefix, &origin).await?);
    bus.declare_tenant(TENANT).await?;
    let mut requests = bus.consume_requests(TENANT, args.prefetch).await?;
    println!("ready");
    let body = Bytes::from(vec![b's'; SMALL_SIZE]);
    let serve = async {
        while let Some(delivery) = requests.next().await {
            let (bus, body) = (bus.clone(), body.clone());
            tokio::spawn(async move {
                let envelope = delivery.envelope;
                let answer = ResponseEnvelope {
                    request_id: envelope.request_id,
                    status: 200,
                    headers: vec![
                        ("content-length".into(), SMALL_SIZE.to_string().into_bytes()),
                        ("content-type".into(), b"application/octet-stream".to_vec()),
                    ],
                    body: BodyRef::Inline(body),
                    error: None,
                    connector_machine: Some("bus-echo".into()),
                    connector_version: Some(env!("CARGO_PKG_VERSION").into()),
                };
                if let Err(e) = bus.publish_response(&envelope.origin, &answer).await {
                    eprintln!("bus-echo: publishing a response: {e}");
                }
                let _ = delivery.ack.ack().await;
            });
        }
    };
    tokio::select! {
        () = serve => bail!("the request consumer ended"),
        () = crate::procs::parent_gone() => Ok(()),
    }
}

/// Starts `relay-bench bus-echo` and waits until it consumes.
pub async fn spawn_echo(
    dir: &std::path::Path,
    amqp_url: &str,
    prefix: &str,
    prefetch: u16,
) -> anyhow::Result<Service> {
    let prefetch = prefetch.to_string();
    let args = [
        "bus-echo",
        "--amqp-url",
        amqp_url,
        "--prefix",
        prefix,
        "--prefetch",
        &prefetch,
    ];
    let (service, _ready) =
        Service::spawn_helper("bus-echo", &args, dir, Duration::from_secs(30)).await?;
    Ok(service)
}

async fn connect(amqp_url: &str, prefix: &str, origin: &str) -> anyhow::Result<Bus> {
    Bus::connect(BusConfig::new([amqp_url], prefix), origin)
        .await
        .with_context(|| format!("connecting to RabbitMQ at {amqp_url}"))
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<ResponseEnvelope>>>>;

/// Runs `scenario.connections` closed-loop round trips for `warmup` + `duration`.
pub async fn run(
    scenario: &Scenario,
    amqp_url: &str,
    prefix: &str,
    warmup: Duration,
    duration: Duration,
    probes: &[Probe],
) -> anyhow::Result<Outcome> {
    let origin = format!("bench-load-{}", std::process::id());
    let bus = Arc::new(connect(amqp_url, prefix, &origin).await?);
    let mut responses = bus.consume_responses().await?;
    let waiters: Waiters = Arc::default();
    let dispatch = {
        let waiters = waiters.clone();
        tokio::spawn(async move {
            while let Some(answer) = responses.next().await {
                let waiter = waiters
                    .lock()
                    .ok()
                    .and_then(|mut w| w.remove(&answer.request_id));
                if let Some(tx) = waiter {
                    let _ = tx.send(answer);
                }
            }
        })
    };
    let window = Window::starting_now(warmup, duration);
    let workers = (0..scenario.connections)
        .map(|i| {
            let (bus, waiters) = (bus.clone(), waiters.clone());
            let origin = origin.clone();
            async move {
                let mut tally = Tally::default();
                let mut n = 0u64;
                while Instant::now() < window.end {
                    n += 1;
                    let id = format!("{origin}-{i}-{n}");
                    let started = Instant::now();
                    match round_trip(&bus, &waiters, &origin, id).await {
                        Ok(()) => tally.count(&window, started, SMALL_SIZE as u64),
                        Err(failure) => tally.fail(&window, failure),
                    }
                }
                tally
            }
        })
        .map(tokio::spawn)
        .collect();
    let outcome = crate::load::collect(scenario, window, workers, probes).await;
    dispatch.abort();
    // Nobody reads this origin's queues again.
    let _ = bus.delete_origin_queues().await;
    bus.close().await;
    outcome
}

/// Deletes the run's durable tenant queues once nothing consumes them any more (the relay
/// nodes and `bus-echo` are stopped): they would otherwise stay on the broker for good.
/// Origin queues of stopped processes expire by themselves.
pub async fn delete_tenant_queues(amqp_url: &str, prefix: &str, tenants: &[&str]) {
    let origin = format!("bench-cleanup-{}", std::process::id());
    let bus = match connect(amqp_url, prefix, &origin).await {
        Ok(bus) => bus,
        Err(e) => {
            eprintln!("warning: cannot delete the run's broker queues: {e:#}");
            return;
        }
    };
    for tenant in tenants {
        if let Err(e) = bus.delete_tenant(tenant).await {
            eprintln!("warning: deleting the queue of tenant {tenant}: {e}");
        }
    }
    let _ = bus.delete_origin_queues().await;
    bus.close().await;
}

/// One request out and its response back.
async fn round_trip(
    bus: &Bus,
    waiters: &Waiters,
    origin: &str,
    request_id: String,
) -> Result<(), Failure> {
    let (tx, rx) = oneshot::channel();
    if let Ok(mut w) = waiters.lock() {
        w.insert(request_id.clone(), tx);
    }
    let expires_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        + ROUND_TRIP_TIMEOUT.as_millis() as i64;
    let envelope = RequestEnvelope {
        request_id: request_id.clone(),
        origin: origin.to_owned(),
        tenant: TENANT.into(),
        target: "web".into(),
        method: "GET".into(),
        path_and_query: "/small".into(),
        headers: vec![
            ("x-relay-request-id".into(), request_id.clone().into_bytes()),
            ("x-relay-client-addr".into(), b"127.0.0.1".to_vec()),
            ("x-relay-client-proto".into(), b"http".to_vec()),
        ],
        body: BodyRef::Empty,
        expires_at_ms,
        mode: "relay".into(),
        ack_mode: "connector-finished".into(),
    };
    let result = async {
        bus.publish_request(TENANT, &envelope, ROUND_TRIP_TIMEOUT, false)
            .await
            .map_err(|e| Failure::Transport(format!("publish: {e}")))?;
        let answer = tokio::time::timeout(ROUND_TRIP_TIMEOUT, rx)
            .await
            .map_err(|_| Failure::Transport("no response within 10s".into()))?
            .map_err(|_| Failure::Transport("response consumer ended".into()))?;
        match answer.body {
            BodyRef::Inline(body) if body.len() == SMALL_SIZE => Ok(()),
            BodyRef::Inline(body) => Err(Failure::WrongLength(body.len() as u64)),
            _ => Err(Failure::WrongLength(0)),
        }
    }
    .await;
    if result.is_err()
        && let Ok(mut w) = waiters.lock()
    {
        w.remove(&request_id);
    }
    result
}
