//! The real binaries as separate processes: relayctl, relay-server, relay-connector.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use relay_e2e::{Scratch, free_port, relayctl};
use relay_testkit::client::{self, PatternBody, digest, full, get, pattern_sha256, send};
use relay_testkit::process::{Proc, bin_path};
use relay_testkit::target::TestTarget;
use relay_testkit::wait;

/// relay-server (with its token service) and one connector, as processes.
struct Deployment {
    scratch: Scratch,
    relay_port: u16,
    server: Proc,
    connector: Proc,
}

impl Deployment {
    async fn start(target: &TestTarget) -> Deployment {
        let scratch = Scratch::new("proc");
        let dir = &scratch.0;
        let db = format!("sqlite://{}", dir.join("relay.db").display());
        relayctl(&db, &["migrate"]);
        relayctl(&db, &["tenant", "create", "acme"]);
        let secret = relayctl(&db, &["secret", "create", "acme"]);
        let secret = secret.lines().last().unwrap().trim();
        std::fs::write(dir.join("secret"), secret).unwrap();

        let (relay_port, identity_port) = (free_port(), free_port());
        std::fs::write(
            dir.join("server.toml"),
            format!(
                "[listen]\npublic = \"127.0.0.1:{relay_port}\"\nidentity = \"127.0.0.1:{identity_port}\"\n\
                 [database]\nurl = \"{db}\"\n[identity]\nauthority = \"http://127.0.0.1:{identity_port}\"\n\
                 [body_store]\npath = \"{}\"\n[tunnel]\nreconnect_min_delay = \"100ms\"\nreconnect_max_delay = \"1s\"\n\
                 keep_alive_interval = \"2s\"\n[relay]\nrequest_expiry = \"600s\"\n",
                dir.join("bodies").display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("connector.toml"),
            format!(
                "relay_url = \"http://127.0.0.1:{relay_port}\"\ntenant = \"acme\"\nsecret_file = \"{}\"\n\
                 [targets.web]\nurl = \"{}\"\ntimeout = \"600s\"\n",
                dir.join("secret").display(),
                target.url()
            ),
        )
        .unwrap();
        let server = start_server(dir);
        let connector = Proc::spawn(
            "relay-connector",
            &["--config", dir.join("connector.toml").to_str().unwrap()],
            &[],
            dir,
        );
        let deployment = Deployment {
            scratch,
            relay_port,
            server,
            connector,
        };
        deployment.wait_connected().await;
        deployment
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.relay_port)
    }

    async fn wait_connected(&self) {
        let url = self.url("/relay/acme/ping");
        let logs = || format!("{}\n{}", self.server.log_text(), self.connector.log_text());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Ok(response)) = tokio::time::timeout(
                Duration::from_secs(5),
                client::client().request(Request::get(&url).body(full(Bytes::new())).unwrap()),
            )
            .await
                && response.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connector did not connect:\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn start_server(dir: &Path) -> Proc {
    Proc::spawn(
        "relay-server",
        &["--config", dir.join("server.toml").to_str().unwrap()],
        &[],
        dir,
    )
}

#[tokio::test]
async fn a_gigabyte_each_way_with_flat_memory() {
    let target = TestTarget::start().await;
    let deployment = Deployment::start(&target).await;
    let size: u64 = 1 << 30;

    let upload = send(
        Request::post(deployment.url("/relay/acme/web/sha256"))
            .body(http_body_util::BodyExt::boxed(PatternBody::new(size)))
            .unwrap(),
    )
    .await;
    assert_eq!(upload.status, StatusCode::OK);
    assert_eq!(upload.text(), format!("{size} {}", pattern_sha256(size)));

    let response = client::client()
        .request(
            Request::get(deployment.url(&format!("/relay/acme/web/bytes/{size}")))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (len, sha) = digest(response.into_body()).await.unwrap();
    assert_eq!((len, sha), (size, pattern_sha256(size)));

    for proc in [&deployment.server, &deployment.connector] {
        let (rss, peak) = proc.memory_kib();
        eprintln!("{}: rss {} KiB, peak {} KiB", proc.name(), rss, peak);
        assert!(
            peak < 100 * 1024,
            "{} peaked at {peak} KiB moving 1 GiB bodies",
            proc.name()
        );
    }
}

#[tokio::test]
async fn a_killed_connector_fails_the_in_flight_request_fast() {
    let target = TestTarget::start().await;
    let mut deployment = Deployment::start(&target).await;
    let url = deployment.url("/relay/acme/web/hang");
    let pending = tokio::spawn(async move { get(&url).await });
    wait::until(Duration::from_secs(10), "request at the target", || async {
        (target.counters.hang_started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let killed_at = Instant::now();
    deployment.connector.kill().await;
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "502 took {:?}",
        killed_at.elapsed()
    );
}

#[tokio::test]
async fn the_connector_comes_back_after_a_server_restart() {
    let target = TestTarget::start().await;
    let mut deployment = Deployment::start(&target).await;

    deployment.server.terminate();
    let status = tokio::time::timeout(Duration::from_secs(15), deployment.server.child.wait())
        .await
        .expect("server stopped within the grace")
        .unwrap();
    assert!(
        status.success(),
        "SIGTERM exit: {status:?}\n{}",
        deployment.server.log_text()
    );

    deployment.server = start_server(&deployment.scratch.0);
    deployment.wait_connected().await;
    assert_eq!(
        get(&deployment.url("/relay/acme/web/status/204"))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
}

#[test]
fn check_config_names_the_bad_key() {
    let scratch = Scratch::new("check");
    let cases = [
        (
            "relay-server",
            "[database]\nurl = \"sqlite:///tmp/x.db\"\n[relay]\nconector_wait = \"1s\"\n",
            "conector_wait",
        ),
        (
            "relay-server",
            "[database]\nurl = \"mysql://x\"\n",
            "database.url",
        ),
        (
            "relay-server",
            "[database]\nurl = \"sqlite:///x\"\n[listen]\npublic = \"nowhere\"\n",
            "listen.public",
        ),
        (
            "relay-connector",
            "relay_url = \"http://x\"\ntenant = \"t\"\nsecret = \"s\"\n[targets.web]\nurl = \"http://a\"\ntimeout = \"never\"\n",
            "targets.web.timeout",
        ),
        (
            "relay-connector",
            "relay_url = \"http://x\"\ntenant = \"t\"\n",
            "secret_file",
        ),
    ];
    for (binary, text, key) in cases {
        let path = scratch.0.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let output = std::process::Command::new(bin_path(binary))
            .args(["check-config", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{binary} accepted:\n{text}");
        assert!(
            stderr.contains(key),
            "{binary}: expected `{key}` in: {stderr}"
        );
    }
}

#[test]
fn every_example_config_is_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let binary = match name.split('.').next().unwrap() {
            "server" | "server-dev" => "relay-server",
            "connector" => "relay-connector",
            "identity" => "relay-identity",
            "management" => "relay-management",
            _ => continue,
        };
        let output = std::process::Command::new(bin_path(binary))
            .args(["check-config", "--config", path.to_str().unwrap()])
            .env("RELAY_CONNECTOR__SECRET_FILE", "/dev/null")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} example configs found");
}
