//! A tunnel serves one tenant, and only while its credentials are valid: scopes per secret,
//! and what deleting a tenant, revoking a secret, disconnecting a tunnel and token expiry do
//! to tunnels (issue 14). Real binaries: `relay-identity`, `relay-server`,
//! `relay-management`, `relay-connector`, `relayctl`. Single-node tests share one SQLite
//! file between the processes; the multi-node ones need PostgreSQL and RabbitMQ and skip
//! without them (see `relay_e2e::cluster`).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use relay_e2e::cluster::{Cluster, Connector, Load, Options, token_request, until_ok, until_or};
use relay_e2e::relayctl;
use relay_testkit::client::{self, Answer, full, get, send};
use relay_testkit::target::TestTarget;
use serde_json::{Value, json};

/// Deleting a tenant or revoking a secret closes tunnels within 2 s. The bound allows for
/// the test's polling on a loaded 2-core machine; each test prints the figure it measured.
const CLOSE_BOUND: Duration = Duration::from_secs(4);

/// A connector whose credentials are refused keeps asking for tokens; the default rate limit
/// (per client id, which a re-created tenant shares) would then slow down its successor.
const IDENTITY: &str = "[rate_limit]\nburst = 1000\nper_minute = 6000\n";

const TOKEN_2XX: &str = r#"relay_identity_requests_total{endpoint="token",status="2xx"}"#;

fn single() -> Options {
    Options {
        identity_toml: IDENTITY.to_owned(),
        ..Options::single()
    }
}

async fn single_node() -> Cluster {
    Cluster::launch(single()).await.unwrap()
}

/// Two nodes on PostgreSQL and RabbitMQ; `None` (with a message) when they are unavailable.
async fn two_nodes() -> Option<Cluster> {
    Cluster::launch(Options {
        identity_toml: IDENTITY.to_owned(),
        ..Options::multinode()
    })
    .await
}

/// `POST /connect/token` for tenant `tenant`, with `scope` when given.
async fn token(cluster: &Cluster, tenant: &str, secret: &str, scope: Option<&str>) -> Answer {
    let scope = scope.map_or(String::new(), |s| {
        format!("&scope={}", s.replace(' ', "%20"))
    });
    token_request(
        &cluster.identity_url(),
        &format!("grant_type=client_credentials&client_id={tenant}&client_secret={secret}{scope}"),
    )
    .await
}

fn json_of(answer: &Answer) -> Value {
    serde_json::from_slice(&answer.body).unwrap_or(Value::Null)
}

/// The access token of a `200` token answer.
fn access_token(answer: &Answer) -> String {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    json_of(answer)["access_token"].as_str().unwrap().to_owned()
}

/// Scope granted by a `200` token answer.
fn granted(answer: &Answer) -> String {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    json_of(answer)["scope"].as_str().unwrap().to_owned()
}

fn assert_invalid_scope(answer: &Answer, what: &str) {
    assert_eq!(
        (answer.status, json_of(answer)["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope")),
        "{what}: {}",
        answer.text()
    );
}

/// A raw tunnel request (`GET /connector` with `Upgrade`) with `bearer`: its status and
/// `x-relay-error`. A `101` is returned as such, without upgrading.
async fn open_tunnel(cluster: &Cluster, node: usize, bearer: &str) -> (StatusCode, Option<String>) {
    let request = Request::get(cluster.url(node, "/connector"))
        .header("connection", "upgrade")
        .header("upgrade", relay_proto::UPGRADE_PROTOCOL)
        .header("authorization", format!("Bearer {bearer}"))
        .body(full(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client::client().request(request))
        .await
        .expect("the tunnel endpoint answered within 10 s")
        .expect("the tunnel endpoint answered");
    let error = response
        .headers()
        .get("x-relay-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status(), error)
}

/// `GET url` with `Authorization: Bearer {bearer}`.
async fn get_with_bearer(url: &str, bearer: &str) -> Answer {
    let request = Request::get(url)
        .header("authorization", format!("Bearer {bearer}"))
        .body(full(Bytes::new()))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), send(request))
        .await
        .expect("answered within 30 s")
}

fn last_line(out: &str) -> String {
    out.lines().last().unwrap().trim().to_owned()
}

async fn tenant_id(cluster: &Cluster, name: &str) -> String {
    let store = cluster.store().await;
    store.tenant_by_name(name).await.unwrap().unwrap().id
}

async fn secret_ids(cluster: &Cluster, tenant_id: &str) -> Vec<String> {
    let store = cluster.store().await;
    let secrets = store.list_secrets(tenant_id).await.unwrap();
    secrets.into_iter().map(|s| s.id).collect()
}

/// Creates a secret of `acme` with `relayctl`, `--scope scope` when given; returns its id
/// and value.
async fn relayctl_secret(cluster: &Cluster, scope: Option<&str>) -> (String, String) {
    let tenant = tenant_id(cluster, "acme").await;
    let before = secret_ids(cluster, &tenant).await;
    let mut args = vec!["secret", "create", "acme"];
    if let Some(scope) = scope {
        args.extend(["--scope", scope]);
    }
    let secret = last_line(&relayctl(&cluster.db, &args));
    let id = secret_ids(cluster, &tenant)
        .await
        .into_iter()
        .find(|id| !before.contains(id))
        .unwrap();
    (id, secret)
}

/// The id of the harness's secret of `acme` (its first one).
async fn first_secret_id(cluster: &Cluster) -> String {
    let tenant = tenant_id(cluster, "acme").await;
    let ids = secret_ids(cluster, &tenant).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

/// Waits until `connector` has no tunnel up; asserts that this happened within
/// [`CLOSE_BOUND`] of `since` (the operator's action) and prints how long it took.
async fn closed_in_time(
    connector: &Connector,
    since: Instant,
    what: &str,
    cluster: &Cluster,
) -> Duration {
    until_or(
        Duration::from_secs(15),
        what,
        || format!("{}\n----\n{}", connector.log_text(), cluster.logs()),
        || async { (connector.tunnels().await == Some(0.0)).then_some(()) },
    )
    .await;
    let took = since.elapsed();
    eprintln!("{what}: {took:?} after the operator's action (promised: within 2 s)");
    assert!(
        took <= CLOSE_BOUND,
        "{what} took {took:?} (promised: within 2 s)\n{}",
        connector.log_text()
    );
    took
}

/// Waits until `GET url` answers `200`, with the logs on failure.
async fn relaying(cluster: &Cluster, connector: &Connector, url: &str) {
    until_or(
        Duration::from_secs(30),
        &format!("{url} relayed"),
        || format!("{}\n----\n{}", connector.log_text(), cluster.logs()),
        || async { (get(url).await.status == StatusCode::OK).then_some(()) },
    )
    .await;
}

/// Lines of `log` that contain `needle`.
fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// A `GET` sent in the background: its status and `x-relay-error`, or `None` when the
/// connection failed.
fn in_background(url: String) -> tokio::task::JoinHandle<Option<(StatusCode, Option<String>)>> {
    tokio::spawn(async move {
        let request = Request::get(url).body(full(Bytes::new())).unwrap();
        let response = client::client().request(request).await.ok()?;
        let error = response
            .headers()
            .get("x-relay-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Some((response.status(), error))
    })
}

// ---------------------------------------------------------------------------------------
// Scopes per credential

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_secret_is_granted_only_the_connector_scope() {
    let cluster = Cluster::launch(Options {
        nodes: 0,
        ..single()
    })
    .await
    .unwrap();
    let secret = cluster.secret.clone();
    assert_eq!(
        granted(&token(&cluster, "acme", &secret, None).await),
        "connector"
    );
    assert_eq!(
        granted(&token(&cluster, "acme", &secret, Some("connector")).await),
        "connector"
    );
    assert_invalid_scope(
        &token(&cluster, "acme", &secret, Some("client")).await,
        "a connector secret asking for scope client",
    );
    assert_invalid_scope(
        &token(&cluster, "acme", &secret, Some("connector client")).await,
        "a connector secret asking for both scopes",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_secret_is_granted_only_the_client_scope_and_opens_no_tunnel() {
    let cluster = single_node().await;
    let (_, client_secret) = relayctl_secret(&cluster, Some("client")).await;
    assert_eq!(
        granted(&token(&cluster, "acme", &client_secret, None).await),
        "client"
    );
    assert_invalid_scope(
        &token(&cluster, "acme", &client_secret, Some("connector")).await,
        "a client secret asking for scope connector",
    );
    let client_token = access_token(&token(&cluster, "acme", &client_secret, None).await);
    assert_eq!(
        open_tunnel(&cluster, 0, &client_token).await,
        (StatusCode::FORBIDDEN, Some("scope-missing".to_owned())),
        "a client token at the tunnel endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_client_secrets_token_passes_require_client_auth() {
    let cluster = Cluster::launch(Options {
        tenant_config: relay_store::TenantConfig {
            require_client_auth: Some(true),
            ..Default::default()
        },
        ..single()
    })
    .await
    .unwrap();
    let target = TestTarget::start().await;
    let connector = cluster.connector_as("c1", &[0], &target, "acme", &cluster.secret, 1);
    connector.wait_tunnels(1, Duration::from_secs(30)).await;
    let url = cluster.url(0, "/relay/acme/ping");

    // The connector secret's own token is no client token...
    let connector_token = access_token(&token(&cluster, "acme", &cluster.secret, None).await);
    let refused = get_with_bearer(&url, &connector_token).await;
    assert_eq!(
        refused.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        refused.text()
    );
    assert_eq!(
        refused.header("x-relay-error"),
        Some("client-token-required")
    );
    // ...and the connector secret cannot get one.
    assert_invalid_scope(
        &token(&cluster, "acme", &cluster.secret, Some("client")).await,
        "a connector secret asking for scope client",
    );

    // A client secret's token is relayed.
    let (_, client_secret) = relayctl_secret(&cluster, Some("client")).await;
    let client_token = access_token(&token(&cluster, "acme", &client_secret, None).await);
    let relayed = get_with_bearer(&url, &client_token).await;
    assert_eq!(
        (relayed.status, relayed.text().as_str()),
        (StatusCode::OK, "PONG"),
        "{}",
        connector.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_created_and_listed_with_their_scope() {
    let cluster = Cluster::launch(Options {
        nodes: 0,
        ..single()
    })
    .await
    .unwrap();
    let management = cluster.management().await;
    let first = first_secret_id(&cluster).await;
    let (cli_client, _) = relayctl_secret(&cluster, Some("client")).await;

    // relayctl: a SCOPE column with each secret's scope.
    let table = relayctl(&cluster.db, &["secret", "list", "acme"]);
    let header = table.lines().next().unwrap();
    assert!(header.split_whitespace().any(|c| c == "SCOPE"), "{table}");
    let scope_of = |id: &str| {
        let row = table
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} not listed:\n{table}"));
        row.split_whitespace()
            .find(|w| *w == "client" || *w == "connector")
            .unwrap_or_else(|| panic!("no scope in `{row}`"))
            .to_owned()
    };
    assert_eq!(scope_of(&first), "connector", "{table}");
    assert_eq!(scope_of(&cli_client), "client", "{table}");

    // The management API: created with a scope (default `connector`), listed with it.
    let (status, created) = management
        .call(
            "POST",
            "/management/tenants/acme/secrets",
            Some(json!({"scope": "client"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, default) = management
        .call("POST", "/management/tenants/acme/secrets", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{default}");
    let (status, list) = management
        .call("GET", "/management/tenants/acme/secrets", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed = |id: &Value| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == *id)
            .unwrap_or_else(|| panic!("{id} not in {list}"))["scope"]
            .clone()
    };
    assert_eq!(listed(&json!(first)), "connector", "{list}");
    assert_eq!(listed(&json!(cli_client)), "client", "{list}");
    assert_eq!(listed(&created["id"]), "client", "{list}");
    assert_eq!(listed(&default["id"]), "connector", "{list}");

    // What the token service grants follows.
    let api_client = created["secret"].as_str().unwrap();
    let api_default = default["secret"].as_str().unwrap();
    assert_eq!(
        granted(&token(&cluster, "acme", api_client, None).await),
        "client"
    );
    assert_eq!(
        granted(&token(&cluster, "acme", api_default, None).await),
        "connector"
    );
}

// ---------------------------------------------------------------------------------------
// Deleting a tenant

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_closes_its_tunnels_within_two_seconds() {
    let cluster = single_node().await;
    let management = cluster.management().await;
    let target = TestTarget::start().await;
    let connector = cluster.connector_as("c1", &[0], &target, "acme", &cluster.secret, 2);
    connector.wait_tunnels(2, Duration::from_secs(30)).await;
    relaying(
        &cluster,
        &connector,
        &cluster.url(0, "/relay/acme/web/status/200"),
    )
    .await;

    let deleted = Instant::now();
    let (status, body) = management
        .call("DELETE", "/management/tenants/acme", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    closed_in_time(
        &connector,
        deleted,
        "both tunnels of the deleted tenant closed",
        &cluster,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_when_a_tenant_is_deleted_get_502_or_503() {
    let cluster = single_node().await;
    let management = cluster.management().await;
    let target = TestTarget::start().await;
    let connector = cluster.connector_as("c1", &[0], &target, "acme", &cluster.secret, 1);
    connector.wait_tunnels(1, Duration::from_secs(30)).await;
    relaying(
        &cluster,
        &connector,
        &cluster.url(0, "/relay/acme/web/status/200"),
    )
    .await;
    let hanging: Vec<_> = (0..2)
        .map(|_| in_background(cluster.url(0, "/relay/acme/web/hang")))
        .collect();
    until_or(
        Duration::from_secs(10),
        "both requests at the target",
        || connector.log_text(),
        || async { (target.counters.hang_started.load(Ordering::SeqCst) == 2).then_some(()) },
    )
    .await;

    let deleted = Instant::now();
    let (status, body) = management
        .call("DELETE", "/management/tenants/acme", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    for request in hanging {
        let answer = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "a request in flight is still unanswered 10 s after the delete\n{}",
                    cluster.logs()
                )
            })
            .unwrap();
        let took = deleted.elapsed();
        eprintln!("in-flight request answered {answer:?} {took:?} after the delete");
        let (status, _) = answer.expect("an answer, not a dropped connection");
        assert!(
            status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
        assert!(took <= CLOSE_BOUND, "answered {took:?} after the delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_created_tenant_is_never_served_by_the_old_connector() {
    let cluster = single_node().await;
    let management = cluster.management().await;
    let old_target = TestTarget::start().await;
    let old = cluster.connector_as("old-owner", &[0], &old_target, "acme", &cluster.secret, 1);
    old.wait_tunnels(1, Duration::from_secs(30)).await;
    let url = cluster.url(0, "/relay/acme/web/status/200");
    relaying(&cluster, &old, &url).await;

    let deleted = Instant::now();
    let (status, body) = management
        .call("DELETE", "/management/tenants/acme", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = management
        .call("POST", "/management/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    closed_in_time(&old, deleted, "the old owner's tunnel closed", &cluster).await;
    let served = old_target.counters.requests.load(Ordering::SeqCst);

    // The new tenant has no connector yet: nobody serves it.
    for _ in 0..3 {
        let answer = get(&url).await;
        assert_eq!(
            (answer.status, answer.header("x-relay-error")),
            (StatusCode::SERVICE_UNAVAILABLE, Some("no-connector")),
            "{}",
            answer.text()
        );
    }
    // Its own connector, with a secret of the new tenant, serves it.
    let (status, created) = management
        .call("POST", "/management/tenants/acme/secrets", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // Trace headers (which connector served) are for tenants with tracing only.
    let (status, body) = management
        .call(
            "PUT",
            "/management/tenants/acme/config",
            Some(json!({"tracing": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new_target = TestTarget::start().await;
    let new = cluster.connector_as(
        "new-owner",
        &[0],
        &new_target,
        "acme",
        created["secret"].as_str().unwrap(),
        1,
    );
    new.wait_tunnels(1, Duration::from_secs(30)).await;
    let trace = cluster.url(0, "/trace/acme/web/status/200");
    until_or(
        Duration::from_secs(20),
        "the new owner's connector serving",
        || format!("{}\n----\n{}", new.log_text(), cluster.logs()),
        || async { (get(&trace).await.status == StatusCode::OK).then_some(()) },
    )
    .await;
    for _ in 0..5 {
        let answer = get(&trace).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(
            answer.header("x-relay-connector-machine"),
            Some("new-owner")
        );
    }
    assert_eq!(
        old_target.counters.requests.load(Ordering::SeqCst),
        served,
        "the old owner's target received requests of the re-created tenant"
    );
    assert_eq!(old.tunnels().await, Some(0.0), "{}", old.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenants_token_opens_no_tunnel_for_a_re_created_one() {
    let cluster = single_node().await;
    let management = cluster.management().await;
    let old_token = access_token(&token(&cluster, "acme", &cluster.secret, None).await);

    let (status, body) = management
        .call("DELETE", "/management/tenants/acme", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = management
        .call("POST", "/management/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        open_tunnel(&cluster, 0, &old_token).await,
        (StatusCode::UNAUTHORIZED, Some("tenant-gone".to_owned())),
        "a token of the deleted tenant at the tunnel endpoint\n{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenants_connections_stay_as_closed_rows() {
    let cluster = single_node().await;
    let management = cluster.management().await;
    let target = TestTarget::start().await;
    let connector = cluster.connector_as("c1", &[0], &target, "acme", &cluster.secret, 2);
    connector.wait_tunnels(2, Duration::from_secs(30)).await;
    let store = cluster.store().await;
    let tenant = tenant_id(&cluster, "acme").await;
    let ids: Vec<String> = until_or(
        Duration::from_secs(10),
        "both tunnels recorded",
        || cluster.logs(),
        || async {
            let open: Vec<String> = store
                .list_connections(true)
                .await
                .ok()?
                .into_iter()
                .filter(|c| c.tenant_id == tenant)
                .map(|c| c.id)
                .collect();
            (open.len() == 2).then_some(open)
        },
    )
    .await;

    let (status, body) = management
        .call("DELETE", "/management/tenants/acme", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    until_or(
        Duration::from_secs(15),
        "the deleted tenant's connection rows kept, closed",
        || format!("{:?}", ids),
        || async {
            let rows = store.list_connections(false).await.ok()?;
            let kept: Vec<_> = rows.iter().filter(|c| ids.contains(&c.id)).collect();
            (kept.len() == 2 && kept.iter().all(|c| c.disconnected_at.is_some())).then_some(())
        },
    )
    .await;
    let (_, open) = management
        .call("GET", "/management/connections", None)
        .await;
    assert_eq!(open["total"], 0, "{open}");
}

// ---------------------------------------------------------------------------------------
// Revoking a secret

/// How a test revokes a secret.
enum Revoke {
    Relayctl,
    Api,
}

async fn revoking_closes_the_secrets_tunnels(how: Revoke) {
    let cluster = single_node().await;
    let management = match how {
        Revoke::Api => Some(cluster.management().await),
        Revoke::Relayctl => None,
    };
    let revoked_id = first_secret_id(&cluster).await;
    let (_, other_secret) = relayctl_secret(&cluster, None).await;
    let target = TestTarget::start().await;
    let revoked = cluster.connector_as("revoked", &[0], &target, "acme", &cluster.secret, 2);
    let other = cluster.connector_as("other", &[0], &target, "acme", &other_secret, 1);
    revoked.wait_tunnels(2, Duration::from_secs(30)).await;
    other.wait_tunnels(1, Duration::from_secs(30)).await;
    let other_connects = other.connects("ok").await;

    let start = Instant::now();
    match &management {
        Some(management) => {
            let (status, body) = management
                .call(
                    "DELETE",
                    &format!("/management/tenants/acme/secrets/{revoked_id}"),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        }
        None => {
            relayctl(&cluster.db, &["secret", "revoke", "acme", &revoked_id]);
        }
    }
    closed_in_time(
        &revoked,
        start,
        "the revoked secret's tunnels closed",
        &cluster,
    )
    .await;
    // Tunnels of the tenant's other secret stay, undisturbed, and serve.
    assert_eq!(other.tunnels().await, Some(1.0), "{}", other.log_text());
    assert_eq!(other.connects("ok").await, other_connects);
    let answer = get(&cluster.url(0, "/trace/acme/ping")).await;
    assert_eq!(answer.text(), "PONG");
    assert_eq!(answer.header("x-relay-connector-machine"), Some("other"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_secret_with_relayctl_closes_its_tunnels_within_two_seconds() {
    revoking_closes_the_secrets_tunnels(Revoke::Relayctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_secret_through_the_api_closes_its_tunnels_within_two_seconds() {
    revoking_closes_the_secrets_tunnels(Revoke::Api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_secrets_token_opens_no_tunnel() {
    let cluster = single_node().await;
    let id = first_secret_id(&cluster).await;
    let issued = access_token(&token(&cluster, "acme", &cluster.secret, None).await);
    relayctl(&cluster.db, &["secret", "revoke", "acme", &id]);
    assert_eq!(
        open_tunnel(&cluster, 0, &issued).await,
        (
            StatusCode::UNAUTHORIZED,
            Some("credential-revoked".to_owned())
        ),
        "a token of a revoked secret at the tunnel endpoint\n{}",
        cluster.logs()
    );
}

/// After the revoke closed `connector`'s tunnels: it retries, every retry is refused with one
/// WARN line `Credentials refused` (one per failed attempt), and it never gets a tunnel.
async fn reconnects_are_refused(connector: &Connector, connects_ok: f64, failed_before: f64) {
    until_or(
        Duration::from_secs(30),
        "two refused reconnects logged",
        || connector.log_text(),
        || async {
            (lines_with(&connector.log_text(), "Credentials refused").len() >= 2).then_some(())
        },
    )
    .await;
    let failed = connector.connects("failed").await - failed_before;
    let lines = lines_with(&connector.log_text(), "Credentials refused");
    for line in &lines {
        assert!(line.contains("WARN"), "not a warning: {line}");
    }
    let logged = lines.len() as f64;
    // The counter and the log are read one after the other: one attempt may fall between.
    assert!(
        (logged - failed).abs() <= 1.0,
        "{logged} `Credentials refused` lines for {failed} failed attempts:\n{}",
        connector.log_text()
    );
    assert_eq!(connector.tunnels().await, Some(0.0));
    assert_eq!(
        connector.connects("ok").await,
        connects_ok,
        "a reconnect was accepted:\n{}",
        connector.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_connectors_reconnects_are_refused_with_one_warning_each() {
    let cluster = single_node().await;
    let id = first_secret_id(&cluster).await;
    let target = TestTarget::start().await;
    let connector = cluster.connector_as("c1", &[0], &target, "acme", &cluster.secret, 1);
    connector.wait_tunnels(1, Duration::from_secs(30)).await;
    let (connects_ok, failed_before) = (
        connector.connects("ok").await,
        connector.connects("failed").await,
    );

    let start = Instant::now();
    relayctl(&cluster.db, &["secret", "revoke", "acme", &id]);
    closed_in_time(
        &connector,
        start,
        "the revoked secret's tunnel closed",
        &cluster,
    )
    .await;
    reconnects_are_refused(&connector, connects_ok, failed_before).await;
    let answer = get(&cluster.url(0, "/relay/acme/ping")).await;
    assert_eq!(
        (answer.status, answer.header("x-relay-error")),
        (StatusCode::SERVICE_UNAVAILABLE, Some("no-connector")),
        "{}",
        answer.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_reaches_the_target_after_a_revoke_closes_the_tunnel() {
    const WORKERS: usize = 4;
    let cluster = single_node().await;
    let id = first_secret_id(&cluster).await;
    let target = TestTarget::start().await;
    let connector = cluster.connector_as("c1", &[0], &target, "acme", &cluster.secret, 1);
    connector.wait_tunnels(1, Duration::from_secs(30)).await;
    relaying(
        &cluster,
        &connector,
        &cluster.url(0, "/relay/acme/web/status/200"),
    )
    .await;
    let failed_before = connector.connects("failed").await;
    let load = Load::start(
        &cluster.url(0, ""),
        &["/relay/acme/web/status/200"],
        WORKERS,
        Duration::from_millis(20),
        None,
    );
    until_or(
        Duration::from_secs(20),
        "requests relayed under load",
        || cluster.logs(),
        || async { (target.counters.requests.load(Ordering::SeqCst) >= 20).then_some(()) },
    )
    .await;

    let start = Instant::now();
    relayctl(&cluster.db, &["secret", "revoke", "acme", &id]);
    closed_in_time(
        &connector,
        start,
        "the revoked secret's tunnel closed",
        &cluster,
    )
    .await;
    let closed = Instant::now();
    // Requests in flight at the close are over once every client has had an answer to a
    // later one.
    until_or(
        Duration::from_secs(30),
        "an answer to every client after the close",
        || cluster.logs(),
        || async { load.all_answered_since(closed, WORKERS).then_some(()) },
    )
    .await;
    let reached = target.counters.requests.load(Ordering::SeqCst);
    // Meanwhile the connector tries again (and is refused), and the clients keep asking.
    let later = Instant::now();
    until_or(
        Duration::from_secs(30),
        "two more reconnect attempts and answers",
        || connector.log_text(),
        || async {
            (connector.connects("failed").await >= failed_before + 2.0
                && load.all_answered_since(later, WORKERS))
            .then_some(())
        },
    )
    .await;
    let outcomes = load.stop().await;
    assert_eq!(
        target.counters.requests.load(Ordering::SeqCst),
        reached,
        "the target received requests after the close\n{}",
        connector.log_text()
    );
    let relayed_late: Vec<_> = outcomes
        .iter()
        .filter(|o| o.started > closed)
        .filter(|o| matches!(&o.result, Ok((status, _, _)) if *status == StatusCode::OK))
        .collect();
    assert!(
        relayed_late.is_empty(),
        "{} requests relayed after the close",
        relayed_late.len()
    );
}

// ---------------------------------------------------------------------------------------
// Disconnecting a tunnel

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_connector_reconnects_with_a_newly_issued_token() {
    let cluster = Cluster::launch(Options {
        identity_metrics: true,
        ..single()
    })
    .await
    .unwrap();
    let management = cluster.management().await;
    let target = TestTarget::start().await;
    let connector = cluster.connector_as("c1", &[0], &target, "acme", &cluster.secret, 1);
    connector.wait_tunnels(1, Duration::from_secs(30)).await;
    let old = until_or(
        Duration::from_secs(10),
        "the tunnel listed",
        || cluster.logs(),
        || async {
            let (_, list) = management
                .call("GET", "/management/connections", None)
                .await;
            (list["total"] == 1).then(|| list["items"][0]["id"].as_str().unwrap().to_owned())
        },
    )
    .await;
    let issued_before = cluster.identity_metrics().await[TOKEN_2XX];

    let (status, body) = management
        .call("DELETE", &format!("/management/connections/{old}"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    until_or(
        Duration::from_secs(20),
        "the tunnel replaced",
        || format!("{}\n----\n{}", connector.log_text(), cluster.logs()),
        || async {
            let (_, list) = management
                .call("GET", "/management/connections", None)
                .await;
            let ids: Vec<&str> = list["items"]
                .as_array()?
                .iter()
                .filter_map(|c| c["id"].as_str())
                .collect();
            (ids.len() == 1 && ids[0] != old).then_some(())
        },
    )
    .await;
    let issued = cluster.identity_metrics().await[TOKEN_2XX] - issued_before;
    assert!(
        issued >= 1.0,
        "the connector reconnected without a new token ({issued} issued)\n{}",
        connector.log_text()
    );
    connector.wait_tunnels(1, Duration::from_secs(10)).await;
    assert_eq!(
        get(&cluster.url(0, "/relay/acme/ping")).await.text(),
        "PONG"
    );
}

// ---------------------------------------------------------------------------------------
// Token expiry

/// One connector with `tunnels` tunnels, tokens living 20 s, four clients for a minute:
/// every request answered `200` with the right body, the tunnels renewed, none open past the
/// expiry of its token.
async fn renewed_before_expiry_without_a_failed_request(tunnels: usize) {
    let cluster = Cluster::launch(Options {
        identity_toml: format!("token_lifetime = \"20s\"\n{IDENTITY}"),
        ..single()
    })
    .await
    .unwrap();
    let target = TestTarget::start().await;
    let connector = cluster.connector_as("c1", &[0], &target, "acme", &cluster.secret, tunnels);
    connector
        .wait_tunnels(tunnels, Duration::from_secs(30))
        .await;
    relaying(&cluster, &connector, &cluster.url(0, "/relay/acme/ping")).await;
    let tenant = tenant_id(&cluster, "acme").await;

    let paths: &'static [&'static str] = &["/relay/acme/ping", "/relay/acme/web/status/200"];
    let load = Load::start(
        &cluster.url(0, ""),
        paths,
        4,
        Duration::from_millis(20),
        Some(Instant::now() + Duration::from_secs(60)),
    );
    let outcomes = load.finish().await;
    let expected = |path: &str| {
        if path.ends_with("/ping") {
            "PONG"
        } else {
            "status 200"
        }
    };
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| {
            !matches!(&o.result, Ok((status, _, body))
                if *status == StatusCode::OK && body == expected(o.path).as_bytes())
        })
        .collect();
    eprintln!(
        "{} requests in a minute, {} failed",
        outcomes.len(),
        failed.len()
    );
    assert!(
        outcomes.len() > 500,
        "only {} requests sent",
        outcomes.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed; the first: {:?}\n{}\n----\n{}",
        failed.len(),
        outcomes.len(),
        failed.first(),
        connector.log_text(),
        cluster.logs()
    );

    let rows: Vec<_> = cluster
        .store()
        .await
        .list_connections(false)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.tenant_id == tenant)
        .collect();
    assert!(
        rows.len() >= 3 * tunnels,
        "{} tunnels opened in a minute of 20 s tokens ({tunnels} at a time): {rows:?}",
        rows.len()
    );
    eprintln!("{} tunnels opened in the minute", rows.len());
    // What `systemctl status` showed: a renewal's overlap is still one tunnel of `tunnels`.
    let wanted = format!(" of {tunnels} tunnels up)");
    let status: Vec<String> = connector
        .notify
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("STATUS="))
        .collect();
    let counts: Vec<usize> = status
        .iter()
        .filter_map(|l| l.strip_suffix(&wanted)?.rsplit('(').next()?.parse().ok())
        .collect();
    assert!(
        counts.len() >= 3 * tunnels,
        "STATUS lines with \"k{wanted}\": {status:?}"
    );
    assert!(
        counts.iter().all(|&k| k <= tunnels),
        "STATUS counted more tunnels up than there are: {status:?}"
    );
    let now = relay_store::now_ms();
    for row in &rows {
        let open_ms = row.disconnected_at.unwrap_or(now) - row.connected_at;
        assert!(
            open_ms <= 22_000,
            "tunnel {} was open {open_ms} ms with a 20 s token: {row:?}",
            row.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_is_renewed_before_its_token_expires_without_a_failed_request() {
    renewed_before_expiry_without_a_failed_request(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tunnels_are_renewed_before_their_tokens_expire_without_a_failed_request() {
    renewed_before_expiry_without_a_failed_request(2).await;
}

// ---------------------------------------------------------------------------------------
// Two nodes: the node holding the tunnel acts, whichever node the operator called

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_closes_its_tunnels_on_the_node_holding_them() {
    let Some(cluster) = two_nodes().await else {
        return;
    };
    let management = cluster.management().await;
    let target = TestTarget::start().await;
    // The tunnel is on node B; clients use node A (through the broker).
    let connector = cluster.connector_as("c1", &[1], &target, "acme", &cluster.secret, 1);
    connector.wait_tunnels(1, Duration::from_secs(30)).await;
    until_ok(
        &cluster.url(0, "/relay/acme/web/status/200"),
        "node A relaying to the connector on node B",
    )
    .await;
    let store = cluster.tunnels_recorded(1).await;
    let tenant = tenant_id(&cluster, "acme").await;

    let deleted = Instant::now();
    let (status, body) = management
        .call("DELETE", "/management/tenants/acme", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    closed_in_time(&connector, deleted, "node B closed the tunnel", &cluster).await;
    until_or(
        Duration::from_secs(15),
        "both nodes answering tenant-unknown",
        || cluster.logs(),
        || async {
            for node in [0, 1] {
                let answer = get(&cluster.url(node, "/relay/acme/web/status/200")).await;
                if (answer.status, answer.header("x-relay-error"))
                    != (StatusCode::NOT_FOUND, Some("tenant-unknown"))
                {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let took = deleted.elapsed();
    eprintln!("both nodes refused the deleted tenant {took:?} after the delete");
    assert!(took <= CLOSE_BOUND, "took {took:?}");
    let rows = store.list_connections(false).await.unwrap();
    let kept: Vec<_> = rows.iter().filter(|c| c.tenant_id == tenant).collect();
    assert_eq!(kept.len(), 1, "{rows:?}");
    assert!(kept[0].disconnected_at.is_some(), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_secret_closes_its_tunnel_on_the_node_holding_it() {
    let Some(cluster) = two_nodes().await else {
        return;
    };
    let id = first_secret_id(&cluster).await;
    let target = TestTarget::start().await;
    let connector = cluster.connector_as("c1", &[1], &target, "acme", &cluster.secret, 1);
    connector.wait_tunnels(1, Duration::from_secs(30)).await;
    until_ok(
        &cluster.url(0, "/relay/acme/web/status/200"),
        "node A relaying to the connector on node B",
    )
    .await;
    let (connects_ok, failed_before) = (
        connector.connects("ok").await,
        connector.connects("failed").await,
    );

    let start = Instant::now();
    relayctl(&cluster.db, &["secret", "revoke", "acme", &id]);
    closed_in_time(&connector, start, "node B closed the tunnel", &cluster).await;
    reconnects_are_refused(&connector, connects_ok, failed_before).await;
    for node in [0, 1] {
        let answer = get(&cluster.url(node, "/relay/acme/web/status/200")).await;
        assert_eq!(
            (answer.status, answer.header("x-relay-error")),
            (StatusCode::SERVICE_UNAVAILABLE, Some("no-connector")),
            "node {node}: {}",
            answer.text()
        );
    }
}

/// Names of the broker's queues and their message counts.
fn broker_queues() -> Vec<(String, u64)> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "--no-table-headers",
            "-q",
            "name",
            "messages",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (name, messages) = line.trim().split_once(char::is_whitespace)?;
            Some((name.to_owned(), messages.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenants_queued_requests_are_dropped_with_its_queue() {
    let Some(cluster) = two_nodes().await else {
        return;
    };
    let tenant = tenant_id(&cluster, "acme").await;
    let queue = format!("{}requests.{tenant}", cluster.prefix());
    // No connector anywhere: the request waits in the tenant's durable queue.
    let queued = client::post(&cluster.url(0, "/queue/acme/web/x"), "for nobody").await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{}", queued.text());
    until_or(
        Duration::from_secs(15),
        "the request in the tenant's queue",
        || format!("{:?}", broker_queues()),
        || async { broker_queues().contains(&(queue.clone(), 1)).then_some(()) },
    )
    .await;

    let store = relay_store::Store::connect(&cluster.db).await.unwrap();
    assert!(store.delete_tenant(&tenant).await.unwrap());
    until_or(
        Duration::from_secs(15),
        "the deleted tenant's queue removed",
        || cluster.logs(),
        || async { (!broker_queues().iter().any(|(name, _)| *name == queue)).then_some(()) },
    )
    .await;
    // A re-created tenant of the same name has a queue of its own, empty.
    relayctl(&cluster.db, &["tenant", "create", "acme"]);
    let again = tenant_id(&cluster, "acme").await;
    assert_ne!(again, tenant);
}

/// Issue 22 row 7: while the configuration database does not answer, a tunnel may rest only
/// on a secret known to be active before the outage; a revoked secret's unexpired token is
/// refused (it used to open a tunnel after the store timeout and take the tenant's requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_a_revoked_secrets_token_opens_no_tunnel() {
    let proxy =
        relay_testkit::proxy::BlockableProxy::start(relay_e2e::cluster::postgres_addr()).await;
    let Some(cluster) = Cluster::launch(Options {
        nodes: 1,
        identity_toml: IDENTITY.to_owned(),
        database_via: Some(proxy.addr),
        ..Options::multinode()
    })
    .await
    else {
        return;
    };
    let (revoked_id, revoked_secret) = relayctl_secret(&cluster, None).await;
    let kept = access_token(&token(&cluster, "acme", &cluster.secret, None).await);
    let revoked = access_token(&token(&cluster, "acme", &revoked_secret, None).await);
    let target = TestTarget::start().await;
    let connector = cluster.connector_as("revoked", &[0], &target, "acme", &revoked_secret, 1);
    connector.wait_tunnels(1, Duration::from_secs(30)).await;
    let start = Instant::now();
    relayctl(&cluster.db, &["secret", "revoke", "acme", &revoked_id]);
    closed_in_time(
        &connector,
        start,
        "the revoked secret's tunnel closed",
        &cluster,
    )
    .await;

    proxy.block();
    cluster
        .ready_everywhere("ready (degraded: database unreachable, serving from cache)\n")
        .await;
    assert_eq!(
        open_tunnel(&cluster, 0, &revoked).await,
        (
            StatusCode::UNAUTHORIZED,
            Some("credential-unknown".to_owned())
        ),
        "a revoked secret's token during the outage\n{}",
        cluster.logs()
    );
    // A secret known active before the outage still opens tunnels (fail closed, not shut).
    assert_eq!(
        open_tunnel(&cluster, 0, &kept).await.0,
        StatusCode::SWITCHING_PROTOCOLS,
        "{}",
        cluster.logs()
    );
    proxy.unblock();
}
