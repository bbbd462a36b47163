//! The load generator: for a [`Scenario`], exactly `connections` HTTP/1.1 keep-alive
//! connections (`hyper::client::conn::http1`, one TCP connection per worker), each a loop of
//! sequential GETs, for warm-up plus the measured window.
//!
//! Counting rules: a request counts (requests/s, latency) when it completes inside the
//! window; bytes count (MiB/s) when their frame arrives inside it; the window ends when the
//! last request started before its end has completed. Latency is request sent to last body
//! byte. A connect or transport error (including a 30 s timeout), a non-2xx status or a body
//! of another length than the scenario's is an error; a broken connection is replaced so the
//! count stays exact.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::procs::Probe;
use crate::scenario::Scenario;

/// Longest wait for a connection or a whole answer; a stuck request counts as a transport
/// error (and its connection is replaced) instead of stalling the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Figures of one scenario run.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: Scenario,
    /// Requests completed successfully inside the window.
    pub requests: u64,
    /// Body bytes received inside the window.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Sorted latencies of the counted requests, in nanoseconds.
    latencies: Vec<u64>,
    pub errors: Errors,
    /// Errors during warm-up (not in `errors`).
    pub warmup_errors: u64,
    /// TCP connections opened, including replacements of broken ones.
    pub connects: u64,
    /// CPU use of each probed process during the window, in percent of one core.
    pub cpu: Vec<(&'static str, Option<f64>)>,
}

impl Outcome {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / f64::from(1 << 20) / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile in milliseconds; None without counted requests.
    pub fn latency_ms(&self, quantile: f64) -> Option<f64> {
        let n = self.latencies.len();
        if n == 0 {
            return None;
        }
        let rank = ((quantile * n as f64).ceil() as usize).clamp(1, n);
        Some(self.latencies[rank - 1] as f64 / 1e6)
    }
}

/// Failures by kind, with the first message seen for the report.
#[derive(Debug, Default, Serialize)]
pub struct Errors {
    pub connect: u64,
    pub transport: u64,
    pub wrong_length: u64,
    /// Non-2xx answers by status code.
    pub status: BTreeMap<u16, u64>,
    pub first: Option<String>,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.transport + self.wrong_length + self.status.values().sum::<u64>()
    }

    /// `2 connect, 1 transport, 5x 503`; empty when there were none.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (n, kind) in [
            (self.connect, "connect"),
            (self.transport, "transport"),
            (self.wrong_length, "wrong body length"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {kind}"));
            }
        }
        parts.extend(self.status.iter().map(|(code, n)| format!("{n}x {code}")));
        parts.join(", ")
    }

    fn merge(&mut self, other: Errors) {
        self.connect += other.connect;
        self.transport += other.transport;
        self.wrong_length += other.wrong_length;
        for (code, n) in other.status {
            *self.status.entry(code).or_default() += n;
        }
        self.first = self.first.take().or(other.first);
    }
}

/// Warm-up, then the measured window.
#[derive(Clone, Copy)]
pub struct Window {
    measure_from: Instant,
    pub end: Instant,
}

impl Window {
    pub fn starting_now(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now();
        Window {
            measure_from: start + warmup,
            end: start + warmup + duration,
        }
    }
}

/// One worker's counts.
#[derive(Default)]
pub struct Tally {
    requests: u64,
    bytes: u64,
    latencies: Vec<u64>,
    errors: Errors,
    warmup_errors: u64,
    connects: u64,
}

pub enum Failure {
    Connect(String),
    Transport(String),
    WrongLength(u64),
    Status(StatusCode),
}

impl Tally {
    /// Counts a request that started at `started` and just completed with `bytes` of body,
    /// if it completed inside the measured window.
    pub fn count(&mut self, window: &Window, started: Instant, bytes: u64) {
        let done = Instant::now();
        if done >= window.measure_from {
            self.requests += 1;
            self.bytes += bytes;
            let nanos = u64::try_from((done - started).as_nanos()).unwrap_or(u64::MAX);
            self.latencies.push(nanos);
        }
    }

    pub fn fail(&mut self, window: &Window, failure: Failure) {
        if Instant::now() < window.measure_from {
            self.warmup_errors += 1;
            return;
        }
        let message = match failure {
            Failure::Connect(e) => {
                self.errors.connect += 1;
                format!("connect: {e}")
            }
            Failure::Transport(e) => {
                self.errors.transport += 1;
                format!("transport: {e}")
            }
            Failure::WrongLength(n) => {
                self.errors.wrong_length += 1;
                format!("body of {n} bytes")
            }
            Failure::Status(status) => {
                *self.errors.status.entry(status.as_u16()).or_default() += 1;
                format!("status {status}")
            }
        };
        self.errors.first.get_or_insert(message);
    }
}

/// The parts of every request of a scenario, prepared once.
struct Template {
    path: Uri,
    host: HeaderValue,
}

impl Template {
    fn new(url: &Uri) -> anyhow::Result<Template> {
        let authority = url
            .authority()
            .with_context(|| format!("`{url}` has no host"))?;
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        Ok(Template {
            path: path.parse().with_context(|| format!("path of `{url}`"))?,
            host: HeaderValue::from_str(authority.as_str())
                .with_context(|| format!("host of `{url}`"))?,
        })
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.path.clone();
        request.headers_mut().insert(HOST, self.host.clone());
        request
    }
}

/// Runs `scenario` for `warmup` + `duration` and returns its figures.
pub async fn run(
    scenario: &Scenario,
    warmup: Duration,
    duration: Duration,
    probes: &[Probe],
) -> anyhow::Result<Outcome> {
    let addr = resolve(&scenario.url).await?;
    let template = Arc::new(Template::new(&scenario.url)?);
    let window = Window::starting_now(warmup, duration);
    let workers = (0..scenario.connections)
        .map(|_| tokio::spawn(worker(addr, template.clone(), scenario.body_size, window)))
        .collect();
    collect(scenario, window, workers, probes).await
}

/// Waits for the workers of one measurement and sums up their tallies; CPU is probed from
/// the start of the measured window to the end of the last worker.
pub async fn collect(
    scenario: &Scenario,
    window: Window,
    workers: Vec<tokio::task::JoinHandle<Tally>>,
    probes: &[Probe],
) -> anyhow::Result<Outcome> {
    tokio::time::sleep_until(window.measure_from).await;
    let cpu_before: Vec<Option<f64>> = probes.iter().map(Probe::cpu_seconds).collect();
    let mut total = Tally::default();
    for worker in workers {
        let tally = worker.await.context("a load worker panicked")?;
        total.requests += tally.requests;
        total.bytes += tally.bytes;
        total.latencies.extend(tally.latencies);
        total.errors.merge(tally.errors);
        total.warmup_errors += tally.warmup_errors;
        total.connects += tally.connects;
    }
    let elapsed = window.measure_from.elapsed();
    let cpu = probes
        .iter()
        .zip(cpu_before)
        .map(|(probe, before)| {
            let used = probe
                .cpu_seconds()
                .zip(before)
                .map(|(after, before)| after - before);
            (probe.label, used.map(|s| 100.0 * s / elapsed.as_secs_f64()))
        })
        .collect();
    total.latencies.sort_unstable();
    Ok(Outcome {
        scenario: scenario.clone(),
        requests: total.requests,
        bytes: total.bytes,
        elapsed,
        latencies: total.latencies,
        errors: total.errors,
        warmup_errors: total.warmup_errors,
        connects: total.connects,
        cpu,
    })
}

/// One connection's request loop; never fails, it counts failures instead.
async fn worker(addr: SocketAddr, template: Arc<Template>, expected: u64, window: Window) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<SendRequest<Empty<Bytes>>> = None;
    while Instant::now() < window.end {
        let mut sender = match connection.take() {
            Some(sender) => sender,
            None => match connect(addr).await {
                Ok(sender) => {
                    tally.connects += 1;
                    sender
                }
                Err(e) => {
                    tally.fail(&window, Failure::Connect(format!("{e:#}")));
                    // Back off so a refused port does not become a busy loop.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            exchange(
                &mut sender,
                template.request(),
                window.measure_from,
                &mut tally.bytes,
            ),
        )
        .await;
        match answer {
            Ok(Ok((status, length))) => {
                if !status.is_success() {
                    tally.fail(&window, Failure::Status(status));
                } else if length != expected {
                    tally.fail(&window, Failure::WrongLength(length));
                } else {
                    tally.count(&window, started, 0);
                }
                connection = Some(sender);
            }
            Ok(Err(e)) => tally.fail(&window, Failure::Transport(e.to_string())),
            Err(_) => tally.fail(
                &window,
                Failure::Transport(format!("no complete answer within {REQUEST_TIMEOUT:?}")),
            ),
        }
    }
    tally
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        // Ends with an error when the peer goes away; the sender reports it on next use.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one request and drains the answer, adding body bytes that arrive after
/// `count_from` to `bytes`. Returns the status and the body length.
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
    count_from: Instant,
    bytes: &mut u64,
) -> Result<(StatusCode, u64), hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut length = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            length += data.len() as u64;
            if Instant::now() >= count_from {
                *bytes += data.len() as u64;
            }
        }
    }
    Ok((status, length))
}

/// One GET on a fresh connection, whole body collected (readiness checks).
pub async fn fetch(url: &Uri) -> anyhow::Result<(StatusCode, Bytes)> {
    let attempt = async {
        let addr = resolve(url).await?;
        let mut sender = connect(addr).await?;
        let request = Template::new(url)?.request();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .with_context(|| format!("GET {url} timed out"))?
}

async fn resolve(url: &Uri) -> anyhow::Result<SocketAddr> {
    let authority = url
        .authority()
        .with_context(|| format!("`{url}` has no host"))?;
    let host_port = match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:80", authority.host()),
    };
    let Some(addr) = tokio::net::lookup_host(&host_port)
        .await
        .with_context(|| format!("resolving {host_port}"))?
        .next()
    else {
        bail!("{host_port} resolves to no address");
    };
    Ok(addr)
}
