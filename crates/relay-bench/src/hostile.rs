//! Attack rows (issue 22): what one hostile client does to a tenant's other requests and to
//! the relay's memory. Each runs on a stack of its own (target, `relay-server`, connector),
//! so `--bin-dir` can point at an older build and the two runs compare in one session.
//!
//! - **window-zero**: one h2c connection with `SETTINGS_INITIAL_WINDOW_SIZE = 0` opens
//!   [`WINDOW_ZERO_STREAMS`] downloads of `/large` and never reads them. Meanwhile a real
//!   client asks for `/small` every [`SAMPLE_EVERY`] with a [`SAMPLE_TIMEOUT`]; reported:
//!   how many of its requests were answered in time, and their latency.
//! - **queue-flood**: `--connections` clients send empty-body `POST /queue/{tenant}/…` with
//!   8 KB of headers to a tenant without a connector, for `--duration`. Reported: the answers
//!   by status, the files left in the body directory, and the server's memory before, at the
//!   peak and after the queued requests expired (the server runs with a
//!   [`QUEUE_EXPIRY`] request expiry).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;

use crate::procs::{Binaries, Memory};
use crate::stack::{Relay, TARGET, TENANT, relayctl};

pub const WINDOW_ZERO: &str = "window-zero";
pub const QUEUE_FLOOD: &str = "queue-flood";
/// Streams the window-zero client opens: 100 × 2 MiB of tunnel window is more than the
/// connector's two tunnels (the default `tunnels_per_relay`) hold, 64 MiB each.
const WINDOW_ZERO_STREAMS: usize = 100;
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Request expiry of the queue-flood server, so the "after" memory comes soon.
const QUEUE_EXPIRY: Duration = Duration::from_secs(15);
/// Tenant of the queue flood: known, but no connector.
const QUEUE_TENANT: &str = "flooded";
/// Header bytes of each flood request.
const PADDING: usize = 8 * 1024;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The real client's view during the window-zero attack.
pub struct WindowFigures {
    pub streams_opened: usize,
    pub samples: usize,
    /// Latencies of the samples answered `200` within [`SAMPLE_TIMEOUT`], sorted.
    pub answered: Vec<Duration>,
}

impl WindowFigures {
    pub fn print(&self) {
        println!(
            "\nwindow-zero: one h2c client, initial window 0, {} streams of /large never read",
            self.streams_opened
        );
        println!(
            "  tenant's other requests answered within {}s: {} of {} ({:.0} %); p50 {}, p99 {}",
            SAMPLE_TIMEOUT.as_secs(),
            self.answered.len(),
            self.samples,
            100.0 * self.answered.len() as f64 / self.samples.max(1) as f64,
            quantile(&self.answered, 0.5),
            quantile(&self.answered, 0.99),
        );
    }
}

fn quantile(sorted: &[Duration], q: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    format!("{:.1} ms", sorted[i].as_secs_f64() * 1000.0)
}

/// Runs the window-zero attack against `relay` for `duration`.
pub async fn window_zero(relay: &Relay, duration: Duration) -> anyhow::Result<WindowFigures> {
    let small = format!("http://{}/relay/{TENANT}/{TARGET}/small", relay.public);
    let tcp = tokio::net::TcpStream::connect(relay.public)
        .await
        .context("connecting the window-zero client")?;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .context("h2c handshake")?;
    tokio::spawn(conn);
    let mut pending = Vec::new();
    for _ in 0..WINDOW_ZERO_STREAMS {
        let req = Request::get(format!("http://relay/relay/{TENANT}/{TARGET}/large"))
            .body(Empty::new())
            .context("building a download request")?;
        pending.push(sender.send_request(req));
    }
    let heads = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(pending),
    )
    .await
    .context("the window-zero downloads' heads did not arrive")?;
    let held: Vec<_> = heads.into_iter().filter_map(Result::ok).collect();
    let streams_opened = held.iter().filter(|r| r.status() == StatusCode::OK).count();

    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let end = Instant::now() + duration;
    let mut samples = 0;
    let mut answered = Vec::new();
    while Instant::now() < end {
        samples += 1;
        let started = Instant::now();
        let request = Request::get(small.as_str())
            .body(Full::new(Bytes::new()))
            .context("building the sample request")?;
        let got = tokio::time::timeout(SAMPLE_TIMEOUT, async {
            let response = client.request(request).await.ok()?;
            let ok = response.status() == StatusCode::OK;
            response.into_body().collect().await.ok()?;
            ok.then_some(())
        })
        .await;
        if let Ok(Some(())) = got {
            answered.push(started.elapsed());
        }
        tokio::time::sleep(SAMPLE_EVERY.saturating_sub(started.elapsed())).await;
    }
    answered.sort();
    drop(held);
    Ok(WindowFigures {
        streams_opened,
        samples,
        answered,
    })
}

/// What the queue flood got and cost.
pub struct QueueFigures {
    pub connections: u16,
    pub duration: Duration,
    /// 202, 429, 503, 507, anything else.
    pub answers: [u64; 5],
    pub files_peak: usize,
    pub files_after: usize,
    pub before: Memory,
    pub peak: Memory,
    pub after: Memory,
}

impl QueueFigures {
    pub fn print(&self) {
        let [accepted, too_many, unavailable, storage, other] = self.answers;
        println!(
            "\nqueue-flood: {} connections, {}s of empty-body POST /queue/{QUEUE_TENANT}/… with 8 KB of headers (no connector)",
            self.connections,
            self.duration.as_secs()
        );
        println!(
            "  answers: 202 {accepted}, 429 {too_many}, 503 {unavailable}, 507 {storage}, other {other}"
        );
        println!(
            "  body files: {} at the end of the flood, {} after expiry",
            self.files_peak, self.files_after
        );
        println!(
            "  relay-server RSS: {} MiB before, peak {} MiB, {} MiB {}s after the flood (requests expire after {}s)",
            self.before.rss_kib / 1024,
            self.peak.hwm_kib / 1024,
            self.after.rss_kib / 1024,
            (QUEUE_EXPIRY + Duration::from_secs(5)).as_secs(),
            QUEUE_EXPIRY.as_secs(),
        );
    }
}

/// The server's `[relay]` table for the queue flood.
pub fn queue_server_toml() -> String {
    format!(
        "\n[relay]\nrequest_expiry = \"{}s\"\n",
        QUEUE_EXPIRY.as_secs()
    )
}

/// Runs the queue flood against `relay` (started with [`queue_server_toml`]).
pub async fn queue_flood(
    binaries: &Binaries,
    relay: &Relay,
    dir: &Path,
    connections: u16,
    duration: Duration,
) -> anyhow::Result<QueueFigures> {
    let database_url = format!("sqlite://{}", dir.join("relay.db").display());
    relayctl(binaries, &database_url, &["tenant", "create", QUEUE_TENANT]).await?;
    let before = relay.server.memory()?;
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
    let url = format!("http://{}/queue/{QUEUE_TENANT}/{TARGET}/x", relay.public);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (stop, answers, url) = (stop.clone(), answers.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let client: HttpClient =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let padding = "p".repeat(PADDING);
            while !stop.load(Ordering::Relaxed) {
                let Ok(request) = Request::post(url.as_str())
                    .header("x-padding", padding.as_str())
                    .body(Full::new(Bytes::new()))
                else {
                    return;
                };
                let slot = match client.request(request).await {
                    Ok(response) => {
                        let slot = match response.status().as_u16() {
                            202 => 0,
                            429 => 1,
                            503 => 2,
                            507 => 3,
                            _ => 4,
                        };
                        let _ = response.into_body().collect().await;
                        slot
                    }
                    Err(_) => 4,
                };
                answers[slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let bodies = dir.join("bodies");
    let count = || std::fs::read_dir(&bodies).map_or(0, |d| d.flatten().count());
    let files_peak = count();
    let peak = relay.server.memory()?;
    tokio::time::sleep(QUEUE_EXPIRY + Duration::from_secs(5)).await;
    let after = relay.server.memory()?;
    Ok(QueueFigures {
        connections,
        duration,
        answers: std::array::from_fn(|i| answers[i].load(Ordering::Relaxed)),
        files_peak,
        files_after: count(),
        before,
        peak,
        after,
    })
}
