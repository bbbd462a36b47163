//! The token-flood row: a real client's token latency while others flood the token endpoint
//! with random client ids, and what the flood does to the token service's memory.
//!
//! A separate `relay-identity` on a fresh SQLite database with tenant `bench` and the default
//! configuration. `--connections` flooders, each from a source address of its own
//! (127.1.0.1, 127.1.1.1, …: a distributed flood, so that the per-source limit alone does not
//! stop it), each send `POST /connect/token` with a new random `client_id` in a closed loop
//! for `--duration`. Meanwhile the real client, on
//! 127.0.0.2 (another source address, as an attacker elsewhere would be), asks for a token
//! every [`VALID_EVERY`] (slow enough for its own `client_id` bucket: 20, then 60/min).
//! Reported: the flood's answers by status, the real client's p50/p99/max latency (and
//! beforehand, without a flood), and the service's `VmRSS` before, `VmHWM` at the peak and
//! `VmRSS` [`SETTLE`] after the flood.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::process::Command;
use tokio::time::Instant;

use crate::procs::{Binaries, Memory, Service};
use crate::stack::{TENANT, free_port, prepare_tenant, toml_string, wait_for};

/// Scenario name in `--scenarios`.
pub const TOKEN_FLOOD: &str = "token-flood";
/// How often the real client asks for a token during the flood.
const VALID_EVERY: Duration = Duration::from_millis(400);
/// Real token requests before the flood, for the idle latency.
const IDLE_SAMPLES: usize = 5;
/// How long after the flood the "after" memory is read.
const SETTLE: Duration = Duration::from_secs(3);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The row's figures.
pub struct FloodFigures {
    pub flooders: u16,
    pub duration: Duration,
    /// Flood answers: 401, 429, 503, anything else (or a failed request).
    pub flood: [u64; 4],
    /// Latencies of the real client's successful requests during the flood, sorted.
    pub valid: Vec<Duration>,
    /// Real requests during the flood that did not get 200.
    pub valid_failed: usize,
    pub idle_p50: Option<Duration>,
    pub rss_before: Memory,
    pub rss_peak: Memory,
    pub rss_after: Memory,
}

fn client(source: IpAddr) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(source));
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn token(client: &HttpClient, addr: SocketAddr, form: String) -> anyhow::Result<StatusCode> {
    let request = Request::post(format!("http://{addr}/connect/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .context("building a token request")?;
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .context("token request timed out")??;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

/// Starts `relay-identity` on a fresh database in `dir` and measures the row.
pub async fn run(
    binaries: &Binaries,
    dir: &Path,
    flooders: u16,
    duration: Duration,
) -> anyhow::Result<FloodFigures> {
    let Some(identity_bin) = &binaries.identity else {
        bail!("relay-identity not found next to relay-server");
    };
    let database_url = format!("sqlite://{}", dir.join("relay.db").display());
    let secret_file = prepare_tenant(binaries, &database_url, dir).await?;
    let secret = std::fs::read_to_string(&secret_file).context("reading the secret")?;
    let addr = free_port()?;
    let config = dir.join("identity.toml");
    let toml = format!(
        "[listen]\npublic = \"{addr}\"\n\n[database]\nurl = {}\n",
        toml_string(&database_url)?
    );
    std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))?;
    let mut command = Command::new(identity_bin);
    command.arg("--config").arg(&config);
    let mut identity = Service::spawn("relay-identity", command, dir, false)?;
    let ready = format!("http://{addr}/health/ready")
        .parse()
        .context("readiness URL")?;
    wait_for(
        &mut identity,
        "relay-identity /health/ready",
        &ready,
        |_| true,
    )
    .await?;

    let valid_form = format!(
        "grant_type=client_credentials&client_id={TENANT}&client_secret={}",
        secret.trim()
    );
    let real = client([127, 0, 0, 2].into());
    let mut idle = Vec::new();
    for _ in 0..IDLE_SAMPLES {
        let started = Instant::now();
        let status = token(&real, addr, valid_form.clone()).await?;
        if status != StatusCode::OK {
            bail!("the real client got {status} before any flood");
        }
        idle.push(started.elapsed());
        tokio::time::sleep(VALID_EVERY).await;
    }
    idle.sort();
    let rss_before = identity.memory()?;

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let serial = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..flooders {
        let [high, low] = i.to_be_bytes();
        let flood_client = client([127, 1u8.wrapping_add(high), low, 1].into());
        let (stop, counts, serial) = (stop.clone(), counts.clone(), serial.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = serial.fetch_add(1, Ordering::Relaxed);
                let form = format!(
                    "grant_type=client_credentials&client_id=flood{}x{n}&client_secret=guess{n}",
                    std::process::id()
                );
                let slot = match token(&flood_client, addr, form).await {
                    Ok(StatusCode::UNAUTHORIZED) => 0,
                    Ok(StatusCode::TOO_MANY_REQUESTS) => 1,
                    Ok(StatusCode::SERVICE_UNAVAILABLE) => 2,
                    _ => 3,
                };
                counts[slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let end = Instant::now() + duration;
    let mut valid = Vec::new();
    let mut valid_failed = 0;
    while Instant::now() < end {
        let started = Instant::now();
        match token(&real, addr, valid_form.clone()).await {
            Ok(StatusCode::OK) => valid.push(started.elapsed()),
            _ => valid_failed += 1,
        }
        tokio::time::sleep_until(started + VALID_EVERY).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    identity.ensure_running()?;
    let rss_peak = identity.memory()?;
    tokio::time::sleep(SETTLE).await;
    let rss_after = identity.memory()?;
    identity.stop().await;
    valid.sort();
    Ok(FloodFigures {
        flooders,
        duration,
        flood: std::array::from_fn(|i| counts[i].load(Ordering::Relaxed)),
        valid,
        valid_failed,
        idle_p50: idle.get(idle.len() / 2).copied(),
        rss_before,
        rss_peak,
        rss_after,
    })
}

fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(index).copied()
}

impl FloodFigures {
    pub fn print(&self) {
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_owned(), |d| {
                format!("{:.1} ms", d.as_secs_f64() * 1e3)
            })
        };
        let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
        let [unauthorized, limited, busy, other] = self.flood;
        println!();
        println!(
            "token flood: {} connections (one source address each) of random client ids for {}, a real client every {} ms from another address",
            self.flooders,
            humantime::format_duration(self.duration),
            VALID_EVERY.as_millis()
        );
        println!(
            "  flood answers: {} in all: 401 {unauthorized}, 429 {limited}, 503 {busy}, other {other}",
            unauthorized + limited + busy + other
        );
        println!(
            "  real token: {} ok, {} not 200; p50 {}, p99 {}, max {} (without flood: p50 {})",
            self.valid.len(),
            self.valid_failed,
            ms(quantile(&self.valid, 0.5)),
            ms(quantile(&self.valid, 0.99)),
            ms(self.valid.last().copied()),
            ms(self.idle_p50),
        );
        println!(
            "  relay-identity memory: RSS before {}, peak (VmHWM) {}, RSS {} s after {}",
            mib(self.rss_before.rss_kib),
            mib(self.rss_peak.hwm_kib),
            SETTLE.as_secs(),
            mib(self.rss_after.rss_kib),
        );
    }
}
