//! Production operations with the real binaries: systemd notifications, graceful stop,
//! metrics, TLS, proxies and configuration errors.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use relay_e2e::{Scratch, free_port, relayctl};
use relay_testkit::client::{self, full};
use relay_testkit::notify::NotifySocket;
use relay_testkit::process::Proc;
use relay_testkit::target::TestTarget;

/// A migrated SQLite database with tenant `acme` and its secret in `dir/secret`.
struct Site {
    scratch: Scratch,
    db: String,
    relay_port: u16,
    identity_port: u16,
}

impl Site {
    fn new(label: &str) -> Site {
        let scratch = Scratch::new(label);
        let dir = scratch.0.clone();
        let db = format!("sqlite://{}", dir.join("relay.db").display());
        relayctl(&db, &["migrate"]);
        relayctl(&db, &["tenant", "create", "acme"]);
        let secret = relayctl(&db, &["secret", "create", "acme"]);
        std::fs::write(dir.join("secret"), secret.lines().last().unwrap().trim()).unwrap();
        Site {
            scratch,
            db,
            relay_port: free_port(),
            identity_port: free_port(),
        }
    }

    fn dir(&self) -> &Path {
        &self.scratch.0
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Writes `server.toml` (relay + in-process token service) plus `extra` TOML.
    fn server_config(&self, extra: &str) -> PathBuf {
        let (relay_port, identity_port, db) = (self.relay_port, self.identity_port, &self.db);
        let text = format!(
            "shutdown_grace = \"10s\"\n{extra_top}\
             [listen]\npublic = \"127.0.0.1:{relay_port}\"\nidentity = \"127.0.0.1:{identity_port}\"\n\
             [database]\nurl = \"{db}\"\n[identity]\nauthority = \"http://127.0.0.1:{identity_port}\"\n\
             [body_store]\npath = \"{bodies}\"\n[tunnel]\nreconnect_min_delay = \"100ms\"\nreconnect_max_delay = \"500ms\"\n\
             keep_alive_interval = \"2s\"\n{extra}",
            extra_top = "",
            bodies = self.path("bodies").display(),
        );
        let path = self.path("server.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes `connector.toml` with target `web` and `extra` TOML (top-level keys first).
    /// One tunnel, so tunnel counts are those of connectors, unless `extra` sets
    /// `tunnels_per_relay`.
    fn connector_config(&self, relay_url: &str, target: &str, extra: &str) -> PathBuf {
        let tunnels = if extra.contains("tunnels_per_relay") {
            ""
        } else {
            "tunnels_per_relay = 1\n"
        };
        let text = format!(
            "relay_url = \"{relay_url}\"\ntenant = \"acme\"\nsecret_file = \"{}\"\nshutdown_grace = \"10s\"\n{tunnels}{extra}\n\
             [targets.web]\nurl = \"{target}\"\n",
            self.path("secret").display(),
        );
        let path = self.path("connector.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn relay_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.relay_port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.relay_url())
    }
}

fn spawn(name: &str, config: &Path, envs: &[(&str, &str)], dir: &Path) -> Proc {
    Proc::spawn(name, &["--config", config.to_str().unwrap()], envs, dir)
}

async fn get_status(url: &str) -> Option<(StatusCode, Bytes)> {
    let request = Request::get(url).body(full(Bytes::new())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client::client().request(request))
        .await
        .ok()?
        .ok()?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .ok()?
        .to_bytes();
    Some((status, body))
}

/// Waits until `/relay/acme/ping` answers 200.
async fn wait_relaying(site: &Site, procs: &[&Proc]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((StatusCode::OK, _)) = get_status(&site.url("/relay/acme/ping")).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "relay did not start relaying:\n{}",
            logs(procs)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn logs(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| p.log_text())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Like [`wait_relaying`] over TLS on `port`, trusting `ca`; returns the server
/// certificate (DER) that answered.
async fn wait_relaying_tls(ca: &Path, port: u16, procs: &[&Proc]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((StatusCode::OK, body, peer)) =
            https_get(ca, port, "/relay/acme/web/status/200").await
        {
            assert_eq!(&body[..], b"status 200");
            return peer;
        }
        assert!(
            Instant::now() < deadline,
            "no TLS relaying:\n{}",
            logs(procs)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_exit(proc: &mut Proc, within: Duration) -> std::process::ExitStatus {
    match tokio::time::timeout(within, proc.child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => panic!(
            "{} did not exit within {within:?}:\n{}",
            proc.name(),
            proc.log_text()
        ),
    }
}

fn index_of(lines: &[String], pred: impl Fn(&str) -> bool) -> Option<usize> {
    lines.iter().position(|l| pred(l))
}

#[tokio::test]
async fn server_and_connector_notify_systemd_in_order() {
    let target = TestTarget::start().await;
    let site = Site::new("notify");
    let server_notify = NotifySocket::bind(site.dir(), "server");
    let connector_notify = NotifySocket::bind(site.dir(), "connector");
    let server_config = site.server_config("");
    // Two tunnels: the server's status still counts one connector.
    let connector_metrics = free_port();
    let connector_config = site.connector_config(
        &site.relay_url(),
        &target.url(),
        &format!("tunnels_per_relay = 2\n[metrics]\nlisten = \"127.0.0.1:{connector_metrics}\"\n"),
    );

    // The connector starts first, with its relay unreachable: it is ready at once (systemctl
    // start returns), says it is connecting, then retries and says so.
    let mut connector = spawn(
        "relay-connector",
        &connector_config,
        &[
            ("NOTIFY_SOCKET", connector_notify.path_str()),
            ("WATCHDOG_USEC", "400000"),
        ],
        site.dir(),
    );
    connector_notify
        .wait_for(Duration::from_secs(10), |l| l == "READY=1")
        .await;
    let lines = connector_notify.lines();
    let ready = index_of(&lines, |l| l == "READY=1").unwrap();
    // READY=1 and its STATUS come in one datagram, before any tunnel's line.
    assert_eq!(
        lines.get(ready + 1).map(String::as_str),
        Some("STATUS=connecting to 1 relay (2 tunnels)…"),
        "{lines:?}"
    );
    assert!(
        index_of(&lines, |l| l.starts_with("STATUS=retrying")).is_none_or(|r| r > ready),
        "{lines:?}"
    );
    connector_notify
        .wait_for(Duration::from_secs(10), |l| {
            l.starts_with("STATUS=retrying http://127.0.0.1")
        })
        .await;
    let c = scrape(connector_metrics).await;
    assert_eq!(
        (
            c["relay_connector_tunnels"],
            c["relay_connector_tunnels_wanted"]
        ),
        (0.0, 2.0)
    );

    let started = Instant::now();
    let mut server = spawn(
        "relay-server",
        &server_config,
        &[
            ("NOTIFY_SOCKET", server_notify.path_str()),
            ("WATCHDOG_USEC", "400000"),
        ],
        site.dir(),
    );
    let ready = server_notify
        .wait_for(Duration::from_secs(20), |l| l == "READY=1")
        .await;
    // READY comes only once the public listener accepts.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", site.relay_port)).is_ok(),
        "READY before the listener was bound"
    );
    assert!(ready.at >= started);
    server_notify
        .wait_for(Duration::from_secs(5), |l| {
            l.starts_with("STATUS=serving, ")
        })
        .await;

    // Once the relay is up, the status counts the tunnels, and so do the metrics.
    for up in ["1 of 2", "2 of 2"] {
        connector_notify
            .wait_for(Duration::from_secs(20), |l| {
                l == format!("STATUS=connected to {} ({up} tunnels up)", site.relay_url())
            })
            .await;
    }
    assert_eq!(
        scrape(connector_metrics).await["relay_connector_tunnels"],
        2.0
    );
    wait_relaying(&site, &[&server, &connector]).await;
    // The refreshed status counts the connector.
    server_notify
        .wait_for(Duration::from_secs(10), |l| {
            l == "STATUS=serving, 1 connector, 1 tenant"
        })
        .await;

    // Watchdog pings every half WATCHDOG_USEC (200 ms): several in a second, none too late.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for (name, socket) in [("server", &server_notify), ("connector", &connector_notify)] {
        let pings: Vec<Instant> = socket
            .notices()
            .into_iter()
            .filter(|n| n.line == "WATCHDOG=1")
            .map(|n| n.at)
            .collect();
        assert!(pings.len() >= 4, "{name}: {} watchdog pings", pings.len());
        // Not faster than the period (200 ms), and typically on time: a loaded machine may
        // delay single ticks (or the test's reading), so the median gap is checked.
        let span = pings[pings.len() - 1] - pings[0];
        assert!(
            pings.len() as u128 <= span.as_millis() / 150 + 2,
            "{name}: {} pings in {span:?}",
            pings.len()
        );
        let mut gaps: Vec<Duration> = pings.windows(2).map(|p| p[1] - p[0]).collect();
        gaps.sort();
        let median = gaps[gaps.len() / 2];
        assert!(median < Duration::from_millis(400), "{name}: gaps {gaps:?}");
    }

    server.terminate();
    assert!(
        wait_exit(&mut server, Duration::from_secs(15))
            .await
            .success(),
        "{}",
        server.log_text()
    );
    connector.terminate();
    assert!(
        wait_exit(&mut connector, Duration::from_secs(15))
            .await
            .success(),
        "{}",
        connector.log_text()
    );

    for (name, socket) in [("server", &server_notify), ("connector", &connector_notify)] {
        socket
            .wait_for(Duration::from_secs(2), |l| l == "STOPPING=1")
            .await;
        let lines = socket.lines();
        let ready = index_of(&lines, |l| l == "READY=1").unwrap();
        let stopping = index_of(&lines, |l| l == "STOPPING=1")
            .unwrap_or_else(|| panic!("{name}: no STOPPING=1 in {lines:?}"));
        assert!(ready < stopping, "{name}: {lines:?}");
        assert_eq!(
            lines.iter().filter(|l| *l == "READY=1").count(),
            1,
            "{name}: {lines:?}"
        );
    }
}

#[tokio::test]
async fn identity_and_management_notify_systemd() {
    for service in ["relay-identity", "relay-management"] {
        let site = Site::new("notify-svc");
        let notify = NotifySocket::bind(site.dir(), service);
        let config = site.path("service.toml");
        let (port, metrics_port) = (free_port(), free_port());
        let metrics = if service == "relay-identity" {
            format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n")
        } else {
            String::new()
        };
        std::fs::write(
            &config,
            format!(
                "[listen]\npublic = \"127.0.0.1:{port}\"\n[database]\nurl = \"{}\"\n{metrics}",
                site.db
            ),
        )
        .unwrap();
        let mut proc = spawn(
            service,
            &config,
            &[
                ("NOTIFY_SOCKET", notify.path_str()),
                ("WATCHDOG_USEC", "400000"),
            ],
            site.dir(),
        );
        notify
            .wait_for(Duration::from_secs(20), |l| l == "READY=1")
            .await;
        notify
            .wait_for(Duration::from_secs(1), |l| {
                l == format!("STATUS=serving on 127.0.0.1:{port}")
            })
            .await;
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "{service}: READY before the listener was bound"
        );
        notify
            .wait_for(Duration::from_secs(2), |l| l == "WATCHDOG=1")
            .await;
        if service == "relay-identity" {
            let url = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
            assert_eq!(get_status(&url).await.map(|r| r.0), Some(StatusCode::OK));
            let m = scrape(metrics_port).await;
            let key = r#"relay_identity_requests_total{endpoint="wellknown",status="2xx"}"#;
            assert_eq!(m[key], 1.0);
            let key = r#"relay_identity_request_duration_seconds_count{endpoint="wellknown"}"#;
            assert_eq!(m[key], 1.0);
        }
        proc.terminate();
        let status = wait_exit(&mut proc, Duration::from_secs(15)).await;
        assert!(
            status.success(),
            "{service}: {status:?}\n{}",
            proc.log_text()
        );
        // The datagram may still be unread by the socket's task when the process is gone.
        notify
            .wait_for(Duration::from_secs(2), |l| l == "STOPPING=1")
            .await;
        let lines = notify.lines();
        let ready = index_of(&lines, |l| l == "READY=1");
        let stopping = index_of(&lines, |l| l == "STOPPING=1");
        assert!(
            stopping.is_some() && ready < stopping,
            "{service}: {lines:?}"
        );
    }
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_zero() {
    let target = TestTarget::start().await;
    let site = Site::new("drain");
    let server_config = site.server_config("");
    let connector_config = site.connector_config(&site.relay_url(), &target.url(), "");
    let mut server = spawn("relay-server", &server_config, &[], site.dir());
    let connector = spawn("relay-connector", &connector_config, &[], site.dir());
    wait_relaying(&site, &[&server, &connector]).await;

    let in_flight: Vec<_> = (0..3)
        .map(|_| tokio::spawn(get_status_owned(site.url("/relay/acme/web/delay/2000"))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while target.counters.delay_inflight.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < deadline,
            "requests did not reach the target"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stop = Instant::now();
    server.terminate();
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match get_status(&site.url("/relay/acme/ping")).await {
            None => break,
            Some((status, _)) if status == StatusCode::SERVICE_UNAVAILABLE => break,
            Some(_) => {}
        }
        assert!(Instant::now() < deadline, "new requests still accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for request in in_flight {
        let answer = request.await.unwrap();
        assert_eq!(
            answer,
            Some((StatusCode::OK, Bytes::from_static(b"late"))),
            "{}",
            server.log_text()
        );
    }
    let status = wait_exit(&mut server, Duration::from_secs(10)).await;
    assert!(status.success(), "exit {status:?}\n{}", server.log_text());
    // Well inside the 10 s grace: the drain ended when the work did.
    assert!(
        stop.elapsed() < Duration::from_secs(8),
        "took {:?}",
        stop.elapsed()
    );
}

async fn get_status_owned(url: String) -> Option<(StatusCode, Bytes)> {
    get_status(&url).await
}

/// Scrapes `/metrics` and parses the text format into `series → value`.
async fn scrape(port: u16) -> std::collections::HashMap<String, f64> {
    let (status, body) = get_status(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics answer");
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut out = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad sample `{line}`"));
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "duplicate {series}"
        );
    }
    out
}

fn delta(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    series: &str,
) -> f64 {
    let a = after
        .get(series)
        .unwrap_or_else(|| panic!("no series {series}"));
    a - before.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_requests_bytes_and_tunnels() {
    let target = TestTarget::start().await;
    let site = Site::new("metrics");
    let (server_metrics, connector_metrics) = (free_port(), free_port());
    let server_config = site.server_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{server_metrics}\"\ntenant_label = true\n"
    ));
    let connector_config = site.connector_config(
        &site.relay_url(),
        &target.url(),
        &format!("[metrics]\nlisten = \"127.0.0.1:{connector_metrics}\"\n"),
    );
    let server = spawn("relay-server", &server_config, &[], site.dir());
    let connector = spawn("relay-connector", &connector_config, &[], site.dir());
    wait_relaying(&site, &[&server, &connector]).await;

    let s0 = scrape(server_metrics).await;
    let c0 = scrape(connector_metrics).await;
    for _ in 0..5 {
        let (status, body) = get_status(&site.url("/relay/acme/web/bytes/1000"))
            .await
            .unwrap();
        assert_eq!((status, body.len()), (StatusCode::OK, 1000));
    }
    for _ in 0..2 {
        let request = Request::post(site.url("/relay/acme/web/sha256"))
            .body(full(Bytes::from(vec![7u8; 300])))
            .unwrap();
        let response = client::client().request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let _ = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
    }
    let (status, _) = get_status(&site.url("/relay/acme/web/status/404"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_status(&site.url("/relay/nobody/web/x")).await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_status(&site.url("/trace/acme/ping")).await.unwrap();
    assert_eq!(status, StatusCode::OK);

    let s1 = scrape(server_metrics).await;
    let c1 = scrape(connector_metrics).await;
    let d = |series: &str| delta(&s0, &s1, series);
    assert_eq!(d(r#"relay_requests_total{mode="relay",status="2xx"}"#), 7.0);
    assert_eq!(d(r#"relay_requests_total{mode="relay",status="4xx"}"#), 2.0);
    assert_eq!(d(r#"relay_requests_total{mode="trace",status="2xx"}"#), 1.0);
    assert_eq!(
        d(r#"relay_request_errors_total{code="tenant-unknown"}"#),
        1.0
    );
    assert_eq!(
        d(r#"relay_request_duration_seconds_count{mode="relay"}"#),
        9.0
    );
    assert_eq!(
        d(r#"relay_request_duration_seconds_bucket{mode="relay",le="+Inf"}"#),
        9.0
    );
    assert_eq!(d("relay_request_body_bytes_total"), 600.0);
    // 5 × 1000 pattern bytes, two "300 <sha256 hex>" answers, "status 404", the 404 text
    // for the unknown tenant, and PONG.
    let out = d("relay_response_body_bytes_total");
    assert!(
        (5000.0 + 2.0 * 68.0..5300.0).contains(&out),
        "bytes out {out}"
    );
    // Series are keyed by the tenant's id (a re-created `acme` gets its own), named by name.
    let acme_id = relay_store::Store::connect(&site.db)
        .await
        .unwrap()
        .tenant_by_name("acme")
        .await
        .unwrap()
        .unwrap()
        .id;
    assert_eq!(
        d(&format!(
            r#"relay_tenant_requests_total{{tenant="acme",tenant_id="{acme_id}",mode="relay",status="2xx"}}"#
        )),
        7.0
    );
    assert!(
        !s1.keys().any(|k| k.contains("nobody")),
        "unknown tenant got a series"
    );
    assert_eq!(
        s1[&format!(r#"relay_tenant_tunnels{{tenant="acme",tenant_id="{acme_id}"}}"#)],
        1.0
    );
    assert_eq!(s1["relay_connectors_connected"], 1.0);
    assert!(s1.keys().any(|k| k.starts_with("relay_tunnels{node=")));
    assert!(s1["relay_db_pool_max"] >= 1.0);
    assert_eq!(s1[r#"relay_broker_publish_total{result="failed"}"#], 0.0);

    let dc = |series: &str| delta(&c0, &c1, series);
    assert_eq!(dc(r#"relay_connector_requests_total{status="2xx"}"#), 8.0);
    assert_eq!(dc(r#"relay_connector_requests_total{status="4xx"}"#), 1.0);
    assert_eq!(dc("relay_connector_request_duration_seconds_count"), 9.0);
    assert_eq!(c1["relay_connector_tunnels"], 1.0);
    assert_eq!(
        c1[r#"relay_connector_tunnel_connects_total{result="ok"}"#],
        1.0
    );
}

/// `GET path` over TLS to 127.0.0.1:`port`, trusting only `ca`; returns the answer and the
/// server certificate's DER.
async fn https_get(ca: &Path, port: u16, path: &str) -> Option<(StatusCode, Bytes, Vec<u8>)> {
    use tokio_rustls::rustls::pki_types::ServerName;
    let connector = relay_core::tls::client_connector(Some(ca)).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    let peer = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .ok()?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header(http::header::HOST, format!("localhost:{port}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.ok()?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .ok()?
        .to_bytes();
    Some((status, body, peer))
}

#[tokio::test]
async fn tls_public_listener_and_tunnel_with_certificate_reload() {
    let target = TestTarget::start().await;
    let site = Site::new("tls");
    let ca = relay_testkit::tls::TestCa::new(site.dir());
    let (cert, key) = (site.path("cert.pem"), site.path("key.pem"));
    let first = ca.issue(&cert, &key, "relay one");
    let connector_metrics = free_port();
    let server_config = site.server_config(&format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let connector_config = site.connector_config(
        &format!("https://localhost:{}", site.relay_port),
        &target.url(),
        &format!(
            "ca_file = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{connector_metrics}\"\n",
            ca.ca_file.display()
        ),
    );
    let server = spawn("relay-server", &server_config, &[], site.dir());
    let connector = spawn("relay-connector", &connector_config, &[], site.dir());
    let port = site.relay_port;
    let peer = wait_relaying_tls(&ca.ca_file, port, &[&server, &connector]).await;
    assert_eq!(peer, first);
    // Plain HTTP on the TLS port gets nothing useful.
    assert!(!matches!(
        get_status(&site.url("/health/live")).await,
        Some((StatusCode::OK, _))
    ));
    // The discovery document names an https tunnel endpoint.
    let (_, discovery, _) = https_get(&ca.ca_file, port, relay_proto::DISCOVERY_PATH)
        .await
        .unwrap();
    let discovery = String::from_utf8_lossy(&discovery).into_owned();
    assert!(
        discovery.contains(&format!("https://localhost:{port}/connector")),
        "{discovery}"
    );

    // A new certificate, then SIGHUP: new connections see it, the tunnel stays.
    let second = ca.issue(&cert, &key, "relay two");
    let _ = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(server.pid().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, peer) = https_get(&ca.ca_file, port, "/relay/acme/ping")
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        if peer == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "certificate not reloaded:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = scrape(connector_metrics).await;
    assert_eq!(
        metrics[r#"relay_connector_tunnel_connects_total{result="ok"}"#],
        1.0
    );
    assert_eq!(metrics["relay_connector_tunnels"], 1.0);
    assert!(server.log_text().contains("TLS certificate reloaded"));
}

#[tokio::test]
async fn connector_reaches_the_relay_through_an_http_connect_proxy() {
    let target = TestTarget::start().await;
    let proxy = relay_testkit::connect_proxy::ConnectProxy::start().await;
    let site = Site::new("proxy");
    let server_config = site.server_config("");
    let connector_config = site.connector_config(&site.relay_url(), &target.url(), "");
    let server = spawn("relay-server", &server_config, &[], site.dir());
    let connector = spawn(
        "relay-connector",
        &connector_config,
        &[
            ("HTTP_PROXY", &proxy.url()),
            ("NO_PROXY", "example.invalid"),
        ],
        site.dir(),
    );
    wait_relaying(&site, &[&server, &connector]).await;
    let (status, body) = get_status(&site.url("/relay/acme/web/status/201"))
        .await
        .unwrap();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::CREATED, &b"status 201"[..])
    );
    let connects = proxy.connects();
    let relay = format!("127.0.0.1:{}", site.relay_port);
    let identity = format!("127.0.0.1:{}", site.identity_port);
    // Discovery and the tunnel go to the relay, the token request to the identity service.
    assert!(
        connects.iter().filter(|c| **c == relay).count() >= 2,
        "{connects:?}"
    );
    assert!(connects.contains(&identity), "{connects:?}");
    assert!(
        connects.iter().all(|c| *c == relay || *c == identity),
        "{connects:?}"
    );
}

#[tokio::test]
async fn no_proxy_bypasses_the_proxy() {
    let target = TestTarget::start().await;
    let proxy = relay_testkit::connect_proxy::ConnectProxy::start().await;
    let site = Site::new("noproxy");
    let server_config = site.server_config("");
    let connector_config = site.connector_config(
        &site.relay_url(),
        &target.url(),
        &format!("proxy = \"{}\"", proxy.url()),
    );
    let server = spawn("relay-server", &server_config, &[], site.dir());
    let connector = spawn(
        "relay-connector",
        &connector_config,
        &[("NO_PROXY", "localhost,127.0.0.1")],
        site.dir(),
    );
    wait_relaying(&site, &[&server, &connector]).await;
    assert!(proxy.connects().is_empty(), "{:?}", proxy.connects());
}

/// journald's native socket, bound by the test where no journald owns it. Entries are
/// datagrams of `KEY=value\n` fields, or `KEY\n<u64 le length><value>\n` for binary-safe ones.
/// A thread reads them as they come, as journald does: a datagram socket whose queue is full
/// blocks the sender, and the services log from their request paths.
struct FakeJournal {
    entries: std::sync::Arc<std::sync::Mutex<Vec<std::collections::HashMap<String, String>>>>,
}

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

impl FakeJournal {
    fn bind() -> Option<FakeJournal> {
        if Path::new(JOURNAL_SOCKET).exists() {
            return None;
        }
        std::fs::create_dir_all("/run/systemd/journal").ok()?;
        let socket = std::os::unix::net::UnixDatagram::bind(JOURNAL_SOCKET).ok()?;
        let entries = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::downgrade(&entries);
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let received = socket.recv(&mut buf);
                let Some(sink) = sink.upgrade() else { return };
                // The layer probes the socket with an empty datagram.
                if let Ok(n @ 1..) = received {
                    sink.lock().unwrap().push(parse_journal_entry(&buf[..n]));
                }
            }
        });
        Some(FakeJournal { entries })
    }

    /// Every entry received so far.
    fn entries(&self) -> Vec<std::collections::HashMap<String, String>> {
        self.entries.lock().unwrap().clone()
    }
}

impl Drop for FakeJournal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(JOURNAL_SOCKET);
    }
}

fn parse_journal_entry(mut data: &[u8]) -> std::collections::HashMap<String, String> {
    let mut fields = std::collections::HashMap::new();
    while let Some(eol) = data.iter().position(|&b| b == b'\n') {
        let line = &data[..eol];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let key = String::from_utf8_lossy(&line[..eq]).into_owned();
            fields.insert(key, String::from_utf8_lossy(&line[eq + 1..]).into_owned());
            data = &data[eol + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &data[eol + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            fields.insert(key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned());
            data = &rest[8 + len + 1..];
        }
    }
    fields
}

/// Starts a binary the way systemd does with `StandardError=journal`: stderr is the journal
/// stream named by `JOURNAL_STREAM` (here a file, whose device and inode are compared).
fn spawn_journaled(name: &str, config: &Path, dir: &Path) -> tokio::process::Child {
    use std::os::unix::fs::MetadataExt;
    let stream = std::fs::File::create(dir.join(format!("{name}.journal-stream"))).unwrap();
    let meta = stream.metadata().unwrap();
    tokio::process::Command::new(relay_testkit::process::bin_path(name))
        .args(["--config", config.to_str().unwrap()])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("RUST_LOG")
        .stdout(stream.try_clone().unwrap())
        .stderr(stream)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn journal_entries_carry_tenant_target_request_id_and_node() {
    let Some(journal) = FakeJournal::bind() else {
        eprintln!(
            "SKIPPED: {JOURNAL_SOCKET} exists (a real journald); this test needs to own it. \
             Check journald output there with `journalctl -o verbose SYSLOG_IDENTIFIER=relay-server`."
        );
        return;
    };
    let site = Site::new("journald");
    // The request id comes back in `trace` headers, which only tenants with tracing get.
    let store = relay_store::Store::connect(&site.db).await.unwrap();
    let acme = store.tenant_by_name("acme").await.unwrap().unwrap();
    store
        .set_tenant_config(
            &acme.id,
            &relay_store::TenantConfig {
                tracing: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let server_config = site.server_config("");
    // A target nobody listens on (port 1, which no test binds, unlike a port that was free a
    // moment ago): the connector logs the failed call with its request id.
    let closed = "http://127.0.0.1:1".to_owned();
    let connector_config = site.connector_config(&site.relay_url(), &closed, "");
    let _server = spawn_journaled("relay-server", &server_config, site.dir());
    let _connector = spawn_journaled("relay-connector", &connector_config, site.dir());

    let mut entries;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    let request_id = loop {
        let request = Request::get(site.url("/trace/acme/web/x"))
            .body(full(Bytes::new()))
            .unwrap();
        if let Ok(Ok(response)) =
            tokio::time::timeout(Duration::from_secs(10), client::client().request(request)).await
        {
            if response.status() == StatusCode::BAD_GATEWAY
                && let Some(id) = response.headers().get("x-relay-request-id")
            {
                break id.to_str().unwrap().to_owned();
            }
            last = Some(response.status());
        }
        assert!(
            Instant::now() < deadline,
            "no 502 from the closed target; last answer {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let find = |entries: &[std::collections::HashMap<String, String>], message: &str| {
        entries
            .iter()
            .find(|e| e.get("MESSAGE").is_some_and(|m| m == message))
            .cloned()
    };
    let (listening, connected, failed) = loop {
        entries = journal.entries();
        let found = (
            find(&entries, "Relay server listening."),
            find(&entries, "Connector connected."),
            entries
                .iter()
                .find(|e| e.get("REQUEST_ID") == Some(&request_id))
                .cloned(),
        );
        if let (Some(a), Some(b), Some(c)) = found {
            break (a, b, c);
        }
        assert!(
            Instant::now() < deadline,
            "journal entries missing; got {entries:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every server entry names the node by its origin id; connector entries name none.
    let node = listening.get("NODE").expect("NODE on a server entry");
    assert_eq!(listening.get("ORIGIN"), Some(node));
    assert_eq!(
        listening.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("relay-server")
    );
    assert_eq!(listening.get("PRIORITY").map(String::as_str), Some("6"));
    assert_eq!(connected.get("NODE"), Some(node));
    assert_eq!(connected.get("TENANT").map(String::as_str), Some("acme"));
    assert_eq!(
        failed.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("relay-connector")
    );
    assert_eq!(
        failed.get("MESSAGE").map(String::as_str),
        Some("Target call failed.")
    );
    assert!(
        failed.get("URI").is_some_and(|u| u.starts_with(&closed)),
        "{failed:?}"
    );
    assert!(!failed.contains_key("NODE"));
}

#[tokio::test]
async fn tokens_validate_against_an_https_authority_behind_a_tls_proxy() {
    let target = TestTarget::start().await;
    let site = Site::new("https-authority");
    let ca = relay_testkit::tls::TestCa::new(site.dir());
    // The token service listens in process, plain; clients reach it only through TLS.
    let front = relay_testkit::tls::tls_front(
        &format!("127.0.0.1:{}", site.identity_port),
        &ca,
        site.dir(),
    )
    .await;
    let authority = format!("https://localhost:{front}");
    let server_config = site.server_config("");
    let ca_file = ca.ca_file.display().to_string();
    let server = spawn(
        "relay-server",
        &server_config,
        &[
            ("RELAY_SERVER__IDENTITY__AUTHORITY", authority.as_str()),
            ("RELAY_SERVER__IDENTITY__CA_FILE", ca_file.as_str()),
        ],
        site.dir(),
    );
    // The discovery document announces the token endpoint behind TLS.
    let connector_config = site.connector_config(
        &site.relay_url(),
        &target.url(),
        &format!("ca_file = \"{ca_file}\"\n"),
    );
    let connector = spawn("relay-connector", &connector_config, &[], site.dir());
    // A tunnel opens only once the relay fetched the JWKS over TLS and validated the token.
    wait_relaying(&site, &[&server, &connector]).await;
    let (status, body) = get_status(&site.url("/relay/acme/web/status/200"))
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let (_, discovery) = get_status(&site.url("/.well-known/relayserver-configuration"))
        .await
        .expect("discovery");
    let discovery: serde_json::Value = serde_json::from_slice(&discovery).unwrap();
    assert_eq!(
        discovery["token_endpoint"],
        format!("{authority}/connect/token")
    );
    assert!(!server.log_text().contains("authority unreachable"));
}

#[tokio::test]
async fn relay_identity_serves_tokens_over_tls() {
    let target = TestTarget::start().await;
    let site = Site::new("identity-tls");
    let ca = relay_testkit::tls::TestCa::new(site.dir());
    let (cert, key) = (site.path("identity.pem"), site.path("identity.key"));
    ca.issue(&cert, &key, "identity");
    let identity_config = site.path("identity.toml");
    std::fs::write(
        &identity_config,
        format!(
            "[listen]\npublic = \"127.0.0.1:{}\"\n[database]\nurl = \"{}\"\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            site.identity_port,
            site.db,
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let identity = spawn("relay-identity", &identity_config, &[], site.dir());
    // Without public_url the issuer follows the listener: https://127.0.0.1:{port}.
    let authority = format!("https://127.0.0.1:{}", site.identity_port);
    let server_config = site.path("server-separate.toml");
    std::fs::write(
        &server_config,
        format!(
            "[listen]\npublic = \"127.0.0.1:{}\"\n[database]\nurl = \"{}\"\n\
             [identity]\nauthority = \"{authority}\"\nca_file = \"{}\"\n\
             [body_store]\npath = \"{}\"\n",
            site.relay_port,
            site.db,
            ca.ca_file.display(),
            site.path("bodies").display()
        ),
    )
    .unwrap();
    let server = spawn("relay-server", &server_config, &[], site.dir());
    let connector_config = site.connector_config(
        &site.relay_url(),
        &target.url(),
        &format!("ca_file = \"{}\"\n", ca.ca_file.display()),
    );
    let connector = spawn("relay-connector", &connector_config, &[], site.dir());
    wait_relaying(&site, &[&identity, &server, &connector]).await;

    // The token endpoint answers only over TLS, with the CA's certificate.
    token_service_is_tls_only(&ca.ca_file, site.identity_port, &authority).await;
}

#[tokio::test]
async fn in_process_token_service_serves_tls_with_the_relays_certificate() {
    let target = TestTarget::start().await;
    let site = Site::new("inproc-identity-tls");
    let ca = relay_testkit::tls::TestCa::new(site.dir());
    let (cert, key) = (site.path("cert.pem"), site.path("key.pem"));
    ca.issue(&cert, &key, "relay");
    let authority = format!("https://localhost:{}", site.identity_port);
    let server_config = site.server_config(&format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let text = std::fs::read_to_string(&server_config)
        .unwrap()
        .replace("[listen]\n", "[listen]\nidentity_tls = true\n")
        .replace(
            &format!("authority = \"http://127.0.0.1:{}\"", site.identity_port),
            &format!(
                "authority = \"{authority}\"\nca_file = \"{}\"",
                ca.ca_file.display()
            ),
        );
    assert!(text.contains(&authority), "{text}");
    std::fs::write(&server_config, text).unwrap();
    let connector_config = site.connector_config(
        &format!("https://localhost:{}", site.relay_port),
        &target.url(),
        &format!("ca_file = \"{}\"\n", ca.ca_file.display()),
    );
    let server = spawn("relay-server", &server_config, &[], site.dir());
    let connector = spawn("relay-connector", &connector_config, &[], site.dir());
    wait_relaying_tls(&ca.ca_file, site.relay_port, &[&server, &connector]).await;

    // The connector got its token from the https endpoint; plain HTTP is not served there.
    token_service_is_tls_only(&ca.ca_file, site.identity_port, &authority).await;
}

/// The token service on `port` serves its discovery document over TLS (trusting `ca`), with
/// issuer `authority` and the token endpoint under it, and nothing over plain HTTP.
async fn token_service_is_tls_only(ca: &Path, port: u16, authority: &str) {
    let (status, body, _) = https_get(ca, port, "/.well-known/openid-configuration")
        .await
        .expect("discovery over TLS");
    assert_eq!(status, StatusCode::OK);
    let discovery: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(discovery["issuer"], authority);
    assert_eq!(
        discovery["token_endpoint"],
        format!("{authority}/connect/token")
    );
    let plain = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
    assert!(
        get_status(&plain)
            .await
            .is_none_or(|(status, _)| status != StatusCode::OK),
        "plain HTTP must not be served"
    );
}

#[tokio::test]
async fn connector_reaches_https_targets_with_their_ca() {
    let target = TestTarget::start().await;
    let site = Site::new("https-targets");
    let ca = relay_testkit::tls::TestCa::new(site.dir());
    let front = relay_testkit::tls::tls_front(&target.addr.to_string(), &ca, site.dir()).await;
    let server = spawn("relay-server", &site.server_config(""), &[], site.dir());
    let connector_config = site.connector_config(
        &site.relay_url(),
        &target.url(),
        &format!(
            "[targets.secure]\nurl = \"https://localhost:{front}/status\"\nca_file = \"{}\"\n\
             [targets.untrusted]\nurl = \"https://localhost:{front}/status\"\n",
            ca.ca_file.display()
        ),
    );
    let connector = spawn("relay-connector", &connector_config, &[], site.dir());
    wait_relaying(&site, &[&server, &connector]).await;

    let (status, _) = get_status(&site.url("/relay/acme/secure/201"))
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::CREATED, "{}", connector.log_text());
    // The same target without its CA: the certificate is not trusted, so 502.
    let (status, body) = get_status(&site.url("/relay/acme/untrusted/201"))
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert!(
        connector.log_text().contains("certificate"),
        "{}",
        connector.log_text()
    );
}
