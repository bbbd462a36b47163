//! The relay as real processes: `relay-identity`, one or more `relay-server` nodes,
//! `relay-management` and connectors, on a fresh configuration database.
//!
//! Several nodes need PostgreSQL (`RELAY_TEST_POSTGRES_URL`, default
//! postgres://postgres@127.0.0.1:5432/test) and RabbitMQ (`RELAY_TEST_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f): [`Services::get`] says what to start and skips
//! when either is unreachable, unless `RELAY_REQUIRE_SERVICES=1`. One node can use SQLite
//! (shared by every process of the test through one file).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use relay_testkit::client::{self, full, get};
use relay_testkit::notify::NotifySocket;
use relay_testkit::process::Proc;
use relay_testkit::target::TestTarget;
use relay_testkit::wait;

use crate::{Scratch, free_port, relayctl};

pub fn postgres_admin_url() -> String {
    std::env::var("RELAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `host:port` of the test PostgreSQL server.
pub fn postgres_addr() -> SocketAddr {
    let url = postgres_admin_url();
    let authority = url
        .split_once('@')
        .map_or(url.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    authority.parse().unwrap()
}

pub fn amqp_url() -> String {
    std::env::var("RELAY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}_{}_{nanos:x}", std::process::id())
}

/// A fresh PostgreSQL database, dropped at the end; `None` (with a message) when PostgreSQL
/// or RabbitMQ is not reachable.
pub struct Services {
    pub database: String,
    pub database_url: String,
    pub prefix: String,
}

impl Services {
    pub fn get() -> Option<Services> {
        let required = std::env::var("RELAY_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
        let skip = |what: &str| {
            assert!(!required, "{what}");
            eprintln!("SKIPPED: {what}");
            None
        };
        if std::net::TcpStream::connect("127.0.0.1:5672").is_err()
            && std::env::var("RELAY_TEST_AMQP_URL").is_err()
        {
            return skip(
                "RabbitMQ unreachable: start it (rabbitmq-server -detached) or set RELAY_TEST_AMQP_URL",
            );
        }
        let database = unique("relay_mn");
        let admin = postgres_admin_url();
        let created = std::process::Command::new("psql")
            .args([
                admin.as_str(),
                "-q",
                "-c",
                &format!("CREATE DATABASE {database}"),
            ])
            .output();
        match created {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return skip(&format!(
                    "PostgreSQL unavailable at {admin} ({}): start it or set RELAY_TEST_POSTGRES_URL",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Err(e) => {
                return skip(&format!(
                    "psql not runnable ({e}): install postgresql-client"
                ));
            }
        }
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Some(Services {
            database_url: format!("{base}/{database}"),
            database,
            prefix: format!("{}.", unique("t")),
        })
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        relay_testkit::broker::delete_queues(&self.prefix);
        let _ = std::process::Command::new("psql")
            .args([
                postgres_admin_url().as_str(),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database),
            ])
            .output();
    }
}

/// What [`Cluster::launch`] starts.
pub struct Options {
    /// Relay nodes (0: only the token service).
    pub nodes: usize,
    /// PostgreSQL and RabbitMQ ([`Services`]); otherwise SQLite and the in-memory bus.
    pub postgres: bool,
    /// Appended to every node's configuration (after its `[tunnel]` table).
    pub server_toml: String,
    /// Inserted at the top of `identity.toml`: top-level keys first, then tables.
    pub identity_toml: String,
    /// Serve `relay-identity`'s `/metrics` (see [`Cluster::identity_metrics`]).
    pub identity_metrics: bool,
    /// Configuration of tenant `acme`, stored before any node loads it.
    pub tenant_config: relay_store::TenantConfig,
    /// The relay nodes reach PostgreSQL through this address (a proxy) instead of directly.
    pub database_via: Option<SocketAddr>,
}

impl Options {
    /// Two nodes on PostgreSQL and RabbitMQ.
    pub fn multinode() -> Options {
        Options {
            nodes: 2,
            postgres: true,
            server_toml: String::new(),
            identity_toml: String::new(),
            identity_metrics: false,
            tenant_config: relay_store::TenantConfig::default(),
            database_via: None,
        }
    }

    /// One node on SQLite.
    pub fn single() -> Options {
        Options {
            nodes: 1,
            postgres: false,
            ..Options::multinode()
        }
    }
}

/// Identity, relay nodes sharing a body directory, tenant `acme` with one secret.
pub struct Cluster {
    pub nodes: Vec<(u16, Proc)>,
    pub identity: Proc,
    pub identity_port: u16,
    /// Port of `relay-identity`'s metrics listener, when [`Options::identity_metrics`].
    pub identity_metrics: Option<u16>,
    /// The configuration database every process uses.
    pub db: String,
    pub services: Option<Services>,
    pub scratch: Scratch,
    /// A `connector` secret of tenant `acme`.
    pub secret: String,
}

impl Drop for Cluster {
    /// Stops the processes before `services` deletes the test's queues and database, so no
    /// node re-declares a queue during clean-up.
    fn drop(&mut self) {
        for (_, node) in &mut self.nodes {
            let _ = node.child.start_kill();
        }
        let _ = self.identity.child.start_kill();
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Cluster {
    pub async fn start(extra_server_toml: &str) -> Option<Cluster> {
        Self::start_with(extra_server_toml, relay_store::TenantConfig::default()).await
    }

    /// Starts with tenant `acme` configured by `tenant_config` before any node loads it.
    pub async fn start_with(
        extra_server_toml: &str,
        tenant_config: relay_store::TenantConfig,
    ) -> Option<Cluster> {
        Self::start_full(extra_server_toml, tenant_config, None).await
    }

    /// Like [`Cluster::start_with`]; with `database_via`, the relay nodes reach PostgreSQL
    /// through that address (a proxy) instead of directly.
    pub async fn start_full(
        extra_server_toml: &str,
        tenant_config: relay_store::TenantConfig,
        database_via: Option<SocketAddr>,
    ) -> Option<Cluster> {
        Self::launch(Options {
            server_toml: extra_server_toml.to_owned(),
            tenant_config,
            database_via,
            ..Options::multinode()
        })
        .await
    }

    /// Starts what `options` asks for; `None` (with a message) when PostgreSQL or RabbitMQ
    /// is asked for and unavailable.
    pub async fn launch(options: Options) -> Option<Cluster> {
        let scratch = Scratch::new(if options.postgres {
            "multinode"
        } else {
            "cluster"
        });
        let services = if options.postgres {
            Some(Services::get()?)
        } else {
            None
        };
        let dir = scratch.0.clone();
        let db = match &services {
            Some(services) => services.database_url.clone(),
            None => format!("sqlite://{}", dir.join("relay.db").display()),
        };
        relayctl(&db, &["migrate"]);
        relayctl(&db, &["tenant", "create", "acme"]);
        let secret = relayctl(&db, &["secret", "create", "acme"])
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_owned();
        let store = relay_store::Store::connect(&db).await.unwrap();
        let tenant = store.tenant_by_name("acme").await.unwrap().unwrap();
        // Tests tell which connector served a request by its `trace` headers, which only
        // tenants with `tracing` get.
        let mut tenant_config = options.tenant_config.clone();
        tenant_config.tracing.get_or_insert(true);
        store
            .set_tenant_config(&tenant.id, &tenant_config)
            .await
            .unwrap();
        std::fs::create_dir_all(dir.join("bodies")).unwrap();

        let identity_port = free_port();
        let identity_metrics = options.identity_metrics.then(free_port);
        let metrics = identity_metrics.map_or(String::new(), |port| {
            format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")
        });
        std::fs::write(
            dir.join("identity.toml"),
            format!(
                "public_url = \"http://127.0.0.1:{identity_port}\"\n{}[listen]\npublic = \"127.0.0.1:{identity_port}\"\n[database]\nurl = \"{db}\"\n{metrics}",
                options.identity_toml
            ),
        )
        .unwrap();
        let mut identity = Proc::spawn(
            "relay-identity",
            &["--config", dir.join("identity.toml").to_str().unwrap()],
            &[],
            &dir,
        );
        identity_ready(&mut identity, identity_port).await;
        let mut cluster = Cluster {
            scratch,
            services,
            identity,
            identity_port,
            identity_metrics,
            db: db.clone(),
            nodes: Vec::new(),
            secret,
        };
        let node_db = match options.database_via {
            Some(via) => db.replacen(&postgres_addr().to_string(), &via.to_string(), 1),
            None => db.clone(),
        };
        let bus = match &cluster.services {
            Some(services) => format!(
                "[bus]\nkind = \"rabbitmq\"\nurl = \"{}\"\nprefix = \"{}\"\n",
                amqp_url(),
                services.prefix,
            ),
            None => String::new(),
        };
        for name in ["a", "b", "c", "d"].into_iter().take(options.nodes) {
            let port = free_port();
            let config = dir.join(format!("node-{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[listen]\npublic = \"127.0.0.1:{port}\"\n[database]\nurl = \"{node_db}\"\n\
                     [identity]\nauthority = \"http://127.0.0.1:{identity_port}\"\n\
                     [body_store]\npath = \"{}\"\n{bus}\
                     [tunnel]\nreconnect_min_delay = \"100ms\"\nreconnect_max_delay = \"1s\"\nkeep_alive_interval = \"2s\"\n{}",
                    dir.join("bodies").display(),
                    options.server_toml,
                ),
            )
            .unwrap();
            let proc = Proc::spawn(
                "relay-server",
                &["--config", config.to_str().unwrap()],
                &[(
                    "RUST_LOG",
                    std::env::var("RELAY_TEST_LOG").as_deref().unwrap_or("info"),
                )],
                &dir,
            );
            cluster.nodes.push((port, proc));
        }
        for (port, proc) in &cluster.nodes {
            let url = format!("http://127.0.0.1:{port}/health/ready");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !matches!(try_get(&url).await, Some(StatusCode::OK)) {
                assert!(
                    Instant::now() < deadline,
                    "node not ready:\n{}\n{}",
                    proc.log_text(),
                    cluster.identity.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(cluster)
    }

    pub fn url(&self, node: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nodes[node].0)
    }

    /// `http://127.0.0.1:{port}` of the token service.
    pub fn identity_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.identity_port)
    }

    /// The RabbitMQ name prefix of this cluster (multi-node only).
    pub fn prefix(&self) -> &str {
        &self
            .services
            .as_ref()
            .expect("a cluster on PostgreSQL and RabbitMQ")
            .prefix
    }

    pub async fn store(&self) -> relay_store::Store {
        relay_store::Store::connect(&self.db).await.unwrap()
    }

    /// A connector process of tenant `acme` with one tunnel to each of the given nodes.
    pub fn connector(&self, name: &str, nodes: &[usize], target: &TestTarget) -> Proc {
        self.connector_process(name, nodes, target, "acme", &self.secret, 1, "", &[])
    }

    /// A connector process of `tenant` with `tunnels` tunnels to each of the given nodes and
    /// its metrics served (see [`Connector`]).
    pub fn connector_as(
        &self,
        name: &str,
        nodes: &[usize],
        target: &TestTarget,
        tenant: &str,
        secret: &str,
        tunnels: usize,
    ) -> Connector {
        let metrics_port = free_port();
        let notify = NotifySocket::bind(&self.scratch.0, &format!("connector-{name}"));
        let proc = self.connector_process(
            name,
            nodes,
            target,
            tenant,
            secret,
            tunnels,
            &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
            &[("NOTIFY_SOCKET", notify.path_str())],
        );
        Connector {
            proc,
            metrics_port,
            notify,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn connector_process(
        &self,
        name: &str,
        nodes: &[usize],
        target: &TestTarget,
        tenant: &str,
        secret: &str,
        tunnels: usize,
        extra: &str,
        envs: &[(&str, &str)],
    ) -> Proc {
        let dir = &self.scratch.0;
        let urls: Vec<String> = nodes
            .iter()
            .map(|n| format!("\"{}\"", self.url(*n, "")))
            .collect();
        let path = dir.join(format!("connector-{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "relay_url = [{}]\ntenant = \"{tenant}\"\nsecret = \"{secret}\"\nmachine_name = \"{name}\"\ntunnels_per_relay = {tunnels}\n{extra}[targets.web]\nurl = \"{}\"\ntimeout = \"600s\"\n",
                urls.join(", "),
                target.url()
            ),
        )
        .unwrap();
        Proc::spawn(
            "relay-connector",
            &["--config", path.to_str().unwrap()],
            envs,
            dir,
        )
    }

    /// Starts `relay-management` on the cluster's database and token service, with a
    /// management client `ops` (read and write) and a token of it.
    pub async fn management(&self) -> Management {
        let dir = &self.scratch.0;
        let port = free_port();
        let config = dir.join("management.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\npublic = \"127.0.0.1:{port}\"\n[database]\nurl = \"{}\"\n[identity]\nauthority = \"{}\"\n",
                self.db,
                self.identity_url()
            ),
        )
        .unwrap();
        let proc = Proc::spawn(
            "relay-management",
            &["--config", config.to_str().unwrap()],
            &[],
            dir,
        );
        let base = format!("http://127.0.0.1:{port}");
        let doc = format!("{base}/management/openapi.json");
        until_or(
            Duration::from_secs(30),
            "relay-management up",
            || proc.log_text(),
            || async { (try_get(&doc).await == Some(StatusCode::OK)).then_some(()) },
        )
        .await;
        let out = relayctl(&self.db, &["admin", "create", "ops"]);
        let secret = out.lines().last().unwrap().trim().to_owned();
        let answer = token_request(
            &self.identity_url(),
            &format!(
                "grant_type=client_credentials&client_id=ops&client_secret={secret}&scope=management%3Aread%20management%3Awrite"
            ),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        Management {
            proc,
            base,
            token: body["access_token"].as_str().unwrap().to_owned(),
        }
    }

    /// `relay-identity`'s metrics (needs [`Options::identity_metrics`]).
    pub async fn identity_metrics(&self) -> HashMap<String, f64> {
        let port = self.identity_metrics.expect("identity metrics enabled");
        scrape(port).await.expect("relay-identity metrics")
    }

    /// Waits until every node answers `/health/ready` with `200` and `body`.
    pub async fn ready_everywhere(&self, body: &str) {
        for node in 0..self.nodes.len() {
            wait::until(Duration::from_secs(30), body.trim(), || async {
                let ready = get(&self.url(node, "/health/ready")).await;
                (ready.status == StatusCode::OK && ready.text() == body).then_some(())
            })
            .await;
        }
    }

    /// Waits until `n` open tunnels are recorded; returns a store on the test database.
    pub async fn tunnels_recorded(&self, n: usize) -> relay_store::Store {
        let store = self.store().await;
        wait::until(Duration::from_secs(10), "tunnels recorded", || async {
            (store.list_connections(true).await.unwrap().len() == n).then_some(())
        })
        .await;
        store
    }

    /// The relay nodes' logs.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|(_, p)| p.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

/// Waits until the token service answers its discovery document; panics with its log when
/// it exits (a refused configuration) or is not up within 30 s.
async fn identity_ready(identity: &mut Proc, port: u16) {
    let url = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_get(&url).await != Some(StatusCode::OK) {
        if let Ok(Some(status)) = identity.child.try_wait() {
            panic!("relay-identity exited ({status}):\n{}", identity.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "relay-identity not ready:\n{}",
            identity.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connector process whose metrics show its tunnels.
pub struct Connector {
    pub proc: Proc,
    pub metrics_port: u16,
    /// What it tells systemd (`READY=1`, `STATUS=…`).
    pub notify: NotifySocket,
}

impl Connector {
    /// Its metrics, or `None` while the listener is not up.
    pub async fn metrics(&self) -> Option<HashMap<String, f64>> {
        scrape(self.metrics_port).await
    }

    /// Tunnels up now (`relay_connector_tunnels`).
    pub async fn tunnels(&self) -> Option<f64> {
        self.metrics()
            .await?
            .get("relay_connector_tunnels")
            .copied()
    }

    /// Tunnel attempts so far with `result` `ok` or `failed`.
    pub async fn connects(&self, result: &str) -> f64 {
        let series = format!("relay_connector_tunnel_connects_total{{result=\"{result}\"}}");
        self.metrics()
            .await
            .and_then(|m| m.get(&series).copied())
            .unwrap_or(0.0)
    }

    /// Waits until exactly `n` tunnels are up.
    pub async fn wait_tunnels(&self, n: usize, timeout: Duration) {
        let want = n as f64;
        until_or(
            timeout,
            &format!("{n} tunnel(s) of connector {} up", self.proc.name()),
            || self.proc.log_text(),
            || async { (self.tunnels().await == Some(want)).then_some(()) },
        )
        .await;
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// The management API as client `ops`.
pub struct Management {
    pub proc: Proc,
    pub base: String,
    pub token: String,
}

impl Management {
    /// `method` `path` with the admin token and an optional JSON body; status and JSON
    /// answer (`null` when the answer is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(full(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), client::send(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer in 30 s"));
        (
            answer.status,
            serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null),
        )
    }
}

/// `POST {identity}/connect/token` with a form body.
pub async fn token_request(identity: &str, form: &str) -> client::Answer {
    let req = Request::post(format!("{identity}/connect/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full(form.to_owned()))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), client::send(req))
        .await
        .expect("token endpoint answered")
}

/// Scrapes `/metrics` into `series → value`; `None` when it does not answer.
pub async fn scrape(port: u16) -> Option<HashMap<String, f64>> {
    let request = Request::get(format!("http://127.0.0.1:{port}/metrics"))
        .body(full(Bytes::new()))
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), client::client().request(request))
        .await
        .ok()?
        .ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .ok()?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect(),
    )
}

/// Status of a `GET`, or `None` when the connection failed or nothing answered in 5 s.
pub async fn try_get(url: &str) -> Option<StatusCode> {
    let request = Request::get(url).body(full(Bytes::new())).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), client::client().request(request))
        .await
        .ok()?
        .ok()?;
    Some(response.status())
}

pub async fn until_ok(url: &str, what: &str) {
    wait::until(Duration::from_secs(30), what, || async {
        (try_get(url).await == Some(StatusCode::OK)).then_some(())
    })
    .await;
}

/// Like [`wait::until`], with `context` (logs) in the panic message.
pub async fn until_or<T, F, Fut>(
    timeout: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests sent by [`Load`], one record per answer (or failure).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub worker: usize,
    pub path: &'static str,
    pub started: Instant,
    pub finished: Instant,
    /// Status, `x-relay-error` and body; `Err` when no answer came.
    pub result: Result<(StatusCode, Option<String>, Bytes), String>,
}

/// Clients sending requests in a loop, each one at a time and at most every `pace`.
pub struct Load {
    pub outcomes: std::sync::Arc<std::sync::Mutex<Vec<Outcome>>>,
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` clients, each cycling through `paths` under `base` until `until` (or until
    /// [`Load::finish`]).
    pub fn start(
        base: &str,
        paths: &'static [&'static str],
        workers: usize,
        pace: Duration,
        until: Option<Instant>,
    ) -> Load {
        let outcomes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let next = std::sync::Arc::new(AtomicUsize::new(0));
        let tasks = (0..workers)
            .map(|worker| {
                let (outcomes, stop, next) = (outcomes.clone(), stop.clone(), next.clone());
                let base = base.to_owned();
                tokio::spawn(async move {
                    let client = client::client();
                    let mut ticks = tokio::time::interval(pace);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = ticks.tick() => {}
                            () = stop.cancelled() => return,
                        }
                        if stop.is_cancelled() || until.is_some_and(|u| Instant::now() >= u) {
                            return;
                        }
                        let path = paths[next.fetch_add(1, Ordering::Relaxed) % paths.len()];
                        let started = Instant::now();
                        let result = one_request(&client, &format!("{base}{path}")).await;
                        outcomes.lock().unwrap().push(Outcome {
                            worker,
                            path,
                            started,
                            finished: Instant::now(),
                            result,
                        });
                    }
                })
            })
            .collect();
        Load {
            outcomes,
            stop,
            tasks,
        }
    }

    pub fn snapshot(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Whether every worker has an answer to a request it started after `t`.
    pub fn all_answered_since(&self, t: Instant, workers: usize) -> bool {
        let outcomes = self.outcomes.lock().unwrap();
        (0..workers).all(|w| outcomes.iter().any(|o| o.worker == w && o.started > t))
    }

    /// Lets running requests finish (or stops at `until`), then returns every outcome.
    pub async fn finish(self) -> Vec<Outcome> {
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(120), task).await;
        }
        self.stop.cancel();
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }

    /// Stops sending and returns every outcome.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.cancel();
        self.finish().await
    }
}

async fn one_request(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        client::TestBody,
    >,
    url: &str,
) -> Result<(StatusCode, Option<String>, Bytes), String> {
    let request = Request::get(url)
        .body(full(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let call = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let error = response
            .headers()
            .get("x-relay-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, error, body))
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .unwrap_or_else(|_| Err("no answer in 30 s".to_owned()))
}
