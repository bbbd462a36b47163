//! The management API with the rest of the stack: a configuration change reaching a
//! connected connector live, the request log, disconnecting a tunnel, and the real
//! `relay-management` and `relayctl` binaries end to end.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_e2e::{Scratch, Stack, free_port, relayctl};
use relay_testkit::process::{Proc, bin_path};
use relay_testkit::wait::until;
use serde_json::Value;
use tokio::net::TcpListener;

/// Log lines of this test process (connector included), to see what the connector received.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    relay_e2e::logs::captured("relay_connector=info,relay_server=info")
}

fn logs_contain(logs: &Arc<Mutex<Vec<u8>>>, needle: &str) -> bool {
    relay_e2e::logs::contain(logs, needle)
}

/// Starts the management API in this process against the stack's database and identity.
async fn management(stack: &Stack) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = relay_management::Config::with_database_url(stack.database_url.clone());
    config.identity.authority = format!("http://{}", stack.identity_addr);
    tokio::spawn(relay_management::serve(
        config,
        stack.store.clone(),
        listener,
        stack.shutdown.clone(),
    ));
    format!("http://{addr}")
}

async fn admin_token(stack: &Stack) -> String {
    let (_, secret) = stack
        .store
        .create_management_client("ops", "management:read management:write", None)
        .await
        .unwrap();
    let form = format!(
        "grant_type=client_credentials&client_id=ops&client_secret={secret}&scope=management%3Aread%20management%3Awrite"
    );
    let req = http::Request::post(format!("http://{}/connect/token", stack.identity_addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(relay_testkit::client::full(form))
        .unwrap();
    let answer = relay_testkit::client::send(req).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn api(method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(relay_testkit::client::full(
            body.map(|b| b.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    let answer = relay_testkit::client::send(req).await;
    (
        answer.status.as_u16(),
        serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn config_change_reaches_the_connector_live_and_requests_are_logged() {
    let logs = captured_logs();
    let stack = Stack::start().await;
    let secret = stack.tenant("live").await;
    let mut connector = stack.connector("live", &secret, &[]);
    connector.connected(1).await;
    let base = management(&stack).await;
    let token = admin_token(&stack).await;

    let (status, body) = api(
        "PUT",
        &format!("{base}/management/tenants/live/config"),
        &token,
        Some(serde_json::json!({
            "keep_alive_interval": "3s",
            "reconnect_min_delay": "2s",
            "reconnect_max_delay": "7s"
        })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    until(
        Duration::from_secs(15),
        "connector got the new settings",
        || async {
            logs_contain(&logs, "Tunnel settings updated by the server")
                .then_some(())
                .filter(|()| logs_contain(&logs, "keep_alive_interval: 3s"))
        },
    )
    .await;

    // The request log: one relayed request, listed through the API.
    let answer = relay_testkit::client::get(&stack.url("/relay/live/ping/x?secret=1")).await;
    assert_eq!(answer.text(), "PONG");
    let missing = relay_testkit::client::get(&stack.url("/relay/live/nowhere")).await;
    assert_eq!(missing.status, 404);
    // A chunked upload (no Content-Length): its size is counted as it streams.
    let chunks = ["first chunk, ", "second chunk, ", "last"]
        .map(|c| Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::from(c))));
    let upload = http::Request::post(stack.url("/relay/live/echo"))
        .body(http_body_util::BodyExt::boxed(
            http_body_util::StreamBody::new(futures_util::stream::iter(chunks)),
        ))
        .unwrap();
    let echoed = relay_testkit::client::send(upload).await;
    assert_eq!(echoed.text(), "first chunk, second chunk, last");
    let url = format!("{base}/management/requests?tenant=live");
    let entries = until(Duration::from_secs(10), "request logged", || async {
        let (_, body) = api("GET", &url, &token, None).await;
        (body["total"].as_i64() == Some(3)).then_some(body)
    })
    .await;
    let echo = &entries["items"][0];
    assert_eq!(echo["target"], "echo");
    assert_eq!(echo["request_bytes"], 31, "{echo}");
    assert_eq!(echo["response_bytes"], 31, "{echo}");
    let entries = serde_json::json!({"items": entries["items"].as_array().unwrap()[1..]});
    let ping = &entries["items"][1];
    assert_eq!(ping["target"], "ping");
    assert_eq!(ping["path"], "/x", "query stripped");
    assert_eq!(ping["status"], 200);
    assert_eq!(ping["outcome"], "succeeded");
    assert_eq!(ping["response_bytes"], 4);
    assert_eq!(entries["items"][0]["outcome"], "failed");
    let (_, failed) = api("GET", &format!("{url}&outcome=failed"), &token, None).await;
    assert_eq!(failed["total"], 1);

    // Disconnect: the node drains the tunnel and the connector comes back on a new one.
    let (_, conns) = api(
        "GET",
        &format!("{base}/management/connections"),
        &token,
        None,
    )
    .await;
    assert_eq!(conns["total"], 1, "{conns}");
    let id = conns["items"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = api(
        "DELETE",
        &format!("{base}/management/connections/{id}"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 202);
    let conns_url = format!("{base}/management/connections");
    until(Duration::from_secs(15), "tunnel replaced", || async {
        let (_, body) = api("GET", &conns_url, &token, None).await;
        let ids: Vec<&str> = body["items"]
            .as_array()?
            .iter()
            .filter_map(|c| c["id"].as_str())
            .collect();
        (ids.len() == 1 && ids[0] != id).then_some(())
    })
    .await;
    // The pushed reconnect delays, not the discovery document's defaults, paced the reconnect.
    assert!(
        logs_contain(&logs, "back-off between 2s and 7s"),
        "connector reconnected with the pushed delays"
    );
    let answer = relay_testkit::client::get(&stack.url("/relay/live/ping")).await;
    assert_eq!(answer.text(), "PONG");
}

fn relayctl_at(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(bin_path("relayctl"))
        .env_remove("RELAY_DATABASE_URL")
        .env_remove("RELAYCTL_MANAGEMENT_URL")
        .env_remove("RELAYCTL_CLIENT_ID")
        .env_remove("RELAYCTL_CLIENT_SECRET")
        .env_remove("RELAYCTL_API_KEY")
        .envs(envs.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// Multi-threaded: the blocking `relayctl` runs must not stall the in-process identity service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayctl_against_the_management_binary() {
    let stack = Stack::start().await;
    let scratch = Scratch::new("mgmt");
    let port = free_port();
    let config = scratch.0.join("management.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\npublic = \"127.0.0.1:{port}\"\n[database]\nurl = \"{}\"\n[identity]\nauthority = \"http://{}\"\n",
            stack.database_url, stack.identity_addr
        ),
    )
    .unwrap();
    let check = std::process::Command::new(bin_path("relay-management"))
        .args(["check-config", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _management = Proc::spawn(
        "relay-management",
        &["--config", config.to_str().unwrap()],
        &[],
        &scratch.0,
    );
    let base = format!("http://127.0.0.1:{port}");
    let doc_url = format!("{base}/management/openapi.json");
    until(Duration::from_secs(20), "management up", || async {
        let r = relay_testkit::client::client()
            .get(doc_url.parse().unwrap())
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // Bootstrap through the database; the secret is the last stdout line.
    let out = relayctl(&stack.database_url, &["admin", "create", "ops"]);
    let secret = out.lines().last().unwrap().to_owned();
    let config_home = scratch.0.join("config");
    let config_home = config_home.to_str().unwrap();
    let env = [
        ("RELAYCTL_MANAGEMENT_URL", base.as_str()),
        ("XDG_CONFIG_HOME", config_home),
    ];

    let out = relayctl_at(&["tenant", "list"], &env);
    assert_eq!(out.status.code(), Some(4), "no credentials: auth error");
    let out = relayctl_at(
        &["login", "--client-id", "ops", "--client-secret", "wrong"],
        &env,
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "wrong secret: auth error: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&relayctl_at(
        &["login", "--client-id", "ops", "--client-secret", &secret],
        &env,
    ));
    assert!(scratch.0.join("config/relayctl/token.json").exists());

    ok(&relayctl_at(
        &["tenant", "create", "acme", "--display-name", "Acme"],
        &env,
    ));
    let out = relayctl_at(&["tenant", "create", "ACME"], &env);
    assert_eq!(out.status.code(), Some(6), "conflict");
    let out = relayctl_at(&["tenant", "create", "bad name"], &env);
    assert_eq!(out.status.code(), Some(2), "invalid value: usage");
    let table = ok(&relayctl_at(&["tenant", "list"], &env));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("acme") && table.contains("Acme"), "{table}");
    let json: Value = serde_json::from_str(&ok(&relayctl_at(
        &["--json", "tenant", "show", "Acme"],
        &env,
    )))
    .unwrap();
    assert_eq!(json["name"], "acme");
    let out = relayctl_at(&["tenant", "show", "nobody"], &env);
    assert_eq!(out.status.code(), Some(3), "not found");

    ok(&relayctl_at(
        &[
            "tenant",
            "config",
            "set",
            "acme",
            "--keep-alive-interval",
            "20s",
            "--concurrency-limit",
            "4",
        ],
        &env,
    ));
    let json: Value = serde_json::from_str(&ok(&relayctl_at(
        &["--json", "tenant", "config", "get", "acme"],
        &env,
    )))
    .unwrap();
    assert_eq!(json["keep_alive_interval"], "20s");
    assert_eq!(json["concurrency_limit"], 4);
    let out = relayctl_at(
        &[
            "tenant",
            "config",
            "set",
            "acme",
            "--keep-alive-interval",
            "soon",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(2));

    let created = ok(&relayctl_at(
        &["secret", "create", "acme", "--expires", "30d"],
        &env,
    ));
    let tenant_secret = created.lines().last().unwrap();
    assert_eq!(tenant_secret.len(), 43);
    let list = ok(&relayctl_at(&["secret", "list", "acme"], &env));
    assert!(!list.contains(tenant_secret));
    assert!(list.contains("ACTIVE"), "{list}");
    let mut connector = stack.connector("acme", tenant_secret, &[]);
    connector.connected(1).await;
    let conns = ok(&relayctl_at(&["connection", "list"], &env));
    assert!(conns.contains("acme"), "{conns}");
    let nodes: Value =
        serde_json::from_str(&ok(&relayctl_at(&["--json", "nodes", "list"], &env))).unwrap();
    assert!(nodes["total"].as_i64().unwrap() >= 1, "{nodes}");
    ok(&relayctl_at(
        &["requests", "list", "--tenant", "acme"],
        &env,
    ));
    let out = relayctl_at(&["requests", "list", "--outcome", "odd"], &env);
    assert_eq!(out.status.code(), Some(2));

    // API keys through the API: created read-only, usable at once, listed without the
    // value, and refused once revoked.
    let out = ok(&relayctl_at(
        &[
            "apikey",
            "create",
            "ci-reader",
            "--read-only",
            "--expires",
            "7d",
        ],
        &env,
    ));
    let key = out.lines().last().unwrap().to_owned();
    assert!(key.starts_with("rk_"), "{out}");
    let with_key = [env[0], env[1], ("RELAYCTL_API_KEY", key.as_str())];
    ok(&relayctl_at(&["tenant", "show", "acme"], &with_key));
    let out = relayctl_at(&["tenant", "create", "by-key"], &with_key);
    assert_eq!(out.status.code(), Some(4), "read-only key cannot write");
    let keys: Value =
        serde_json::from_str(&ok(&relayctl_at(&["--json", "apikey", "list"], &env))).unwrap();
    assert!(!keys.to_string().contains(&key), "{keys}");
    let id = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ci-reader")
        .and_then(|k| k["id"].as_str())
        .unwrap()
        .to_owned();
    ok(&relayctl_at(&["apikey", "revoke", &id], &env));
    let out = relayctl_at(&["tenant", "show", "acme"], &with_key);
    assert_eq!(out.status.code(), Some(4), "revoked key: auth error");

    // Seed is idempotent and its secrets work.
    for _ in 0..2 {
        let out = relayctl(&stack.database_url, &["seed"]);
        assert!(out.contains("TestTenant1\t"), "{out}");
    }
    ok(&relayctl_at(&["tenant", "show", "TestTenant2"], &env));
    let out = relayctl_at(
        &["--database-url", "postgres://u@db.example.com/x", "seed"],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "non-local database refused without --dev"
    );

    ok(&relayctl_at(&["tenant", "delete", "acme"], &env));
    let out = relayctl_at(&["tenant", "show", "acme"], &env);
    assert_eq!(out.status.code(), Some(3));
    drop(_management);
    let out = relayctl_at(&["tenant", "list"], &env);
    assert_eq!(
        out.status.code(),
        Some(5),
        "server unreachable: server error"
    );
}

#[tokio::test]
async fn dev_mode_serves_the_management_api_with_a_dev_admin() {
    let scratch = Scratch::new("dev-mgmt");
    let data = scratch.0.join("data");
    let data_dir = data.to_str().unwrap();
    let server = Proc::spawn(
        "relay-server",
        &[
            "--dev",
            "--data-dir",
            data_dir,
            "--relay-addr",
            "127.0.0.1:0",
            "--identity-addr",
            "127.0.0.1:0",
            "--management-addr",
            "127.0.0.1:0",
        ],
        &[],
        &scratch.0,
    );
    let url = until(Duration::from_secs(60), "dev banner", || async {
        let log = server.log_text();
        let start = log.find("Management API: ")? + "Management API: ".len();
        let rest = &log[start..];
        let end = rest.find("/management/")?;
        Some(rest[..end].to_owned())
    })
    .await;
    let credentials = std::fs::read_to_string(data.join("management-client")).unwrap();
    let mut lines = credentials.lines();
    let (id, secret) = (lines.next().unwrap(), lines.next().unwrap());
    let out = ok(&relayctl_at(
        &[
            "--management-url",
            &url,
            "--client-id",
            id,
            "--client-secret",
            secret,
            "tenant",
            "list",
        ],
        &[],
    ));
    assert!(out.contains("demo"), "{out}");
}
