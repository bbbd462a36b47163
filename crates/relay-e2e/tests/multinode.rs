//! Several relay nodes behaving as one: real binaries, real PostgreSQL, real RabbitMQ, a
//! shared body directory (DESIGN.md §3). Each test uses its own database and queue prefix.
//!
//! Needs PostgreSQL (`RELAY_TEST_POSTGRES_URL`, default postgres://postgres@127.0.0.1:5432/test)
//! and RabbitMQ (`RELAY_TEST_AMQP_URL`, default amqp://guest:guest@127.0.0.1:5672/%2f). When
//! either is unreachable the tests say what to start and skip, unless `RELAY_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use relay_e2e::cluster::{Cluster, postgres_addr, until_ok};
use relay_e2e::relayctl;
use relay_testkit::client::{self, PatternBody, digest, full, get, pattern_sha256, post, send};
use relay_testkit::process::Proc;
use relay_testkit::target::TestTarget;
use relay_testkit::wait;

#[tokio::test]
async fn requests_reach_connectors_on_another_node() {
    let Some(cluster) = Cluster::start("").await else {
        return;
    };
    let target = TestTarget::start().await;
    // Both connectors hold tunnels to node B only.
    let _c1 = cluster.connector("c1", &[1], &target);
    let _c2 = cluster.connector("c2", &[1], &target);
    until_ok(&cluster.url(1, "/relay/acme/ping"), "connectors on node B").await;

    // Through node A (no tunnel there): broker to B and back.
    let answer = get(&cluster.url(0, "/relay/acme/web/status/201")).await;
    assert_eq!(
        answer.status,
        StatusCode::CREATED,
        "{}\n{}",
        answer.text(),
        cluster.logs()
    );
    let traced = get(&cluster.url(0, "/trace/acme/ping")).await;
    assert_eq!(traced.text(), "PONG");
    assert!(matches!(
        traced.header("x-relay-connector-machine"),
        Some("c1" | "c2")
    ));
    let echoed = post(
        &cluster.url(0, "/relay/acme/echo"),
        "small body across nodes",
    )
    .await;
    assert_eq!(echoed.text(), "small body across nodes");

    // 100 MiB each way across nodes, through the shared body directory.
    let size: u64 = 100 << 20;
    let upload = send(
        Request::post(cluster.url(0, "/relay/acme/web/sha256"))
            .body(http_body_util::BodyExt::boxed(PatternBody::new(size)))
            .unwrap(),
    )
    .await;
    assert_eq!(
        upload.text(),
        format!("{size} {}", pattern_sha256(size)),
        "{}",
        cluster.logs()
    );
    let response = client::client()
        .request(
            Request::get(cluster.url(0, &format!("/relay/acme/web/bytes/{size}")))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        digest(response.into_body()).await.unwrap(),
        (size, pattern_sha256(size))
    );

    // Every stored body was deleted after use.
    let bodies = cluster.scratch.0.join("bodies");
    wait::until(
        Duration::from_secs(10),
        "body directory emptied",
        || async { (std::fs::read_dir(&bodies).unwrap().count() == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_killed_node_leaves_the_other_serving() {
    let Some(mut cluster) = Cluster::start("").await else {
        return;
    };
    let target = TestTarget::start().await;
    let _c1 = cluster.connector("c1", &[0, 1], &target);
    until_ok(&cluster.url(0, "/relay/acme/ping"), "connector on node A").await;
    until_ok(&cluster.url(1, "/relay/acme/ping"), "connector on node B").await;

    cluster.nodes[0].1.kill().await;
    for i in 0..20 {
        let answer = get(&cluster.url(1, "/relay/acme/web/status/200")).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i} after the kill: {}",
            answer.text()
        );
    }
}

#[tokio::test]
async fn queued_requests_wait_for_a_late_connector_and_expired_ones_never_run() {
    let Some(cluster) = Cluster::start("[relay]\nrequest_expiry = \"3s\"\n").await else {
        return;
    };
    let target = TestTarget::start().await;

    let early = post(
        &cluster.url(0, "/queue/acme/web/sha256"),
        "expires before anyone connects",
    )
    .await;
    assert_eq!(early.status, StatusCode::ACCEPTED, "{}", early.text());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let late = post(
        &cluster.url(0, "/queue/acme/web/sha256"),
        "delivered to the late connector",
    )
    .await;
    assert_eq!(late.status, StatusCode::ACCEPTED);

    let _c1 = cluster.connector("c1", &[1], &target);
    wait::until(
        Duration::from_secs(20),
        "queued request delivered",
        || async { (target.counters.requests.load(Ordering::SeqCst) >= 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        target.counters.requests.load(Ordering::SeqCst),
        1,
        "the expired request ran"
    );
}

#[tokio::test]
async fn broker_connection_loss_heals_without_restarting_relay() {
    let Some(cluster) = Cluster::start("").await else {
        return;
    };
    let target = TestTarget::start().await;
    let _c1 = cluster.connector("c1", &[1], &target);
    until_ok(&cluster.url(1, "/relay/acme/ping"), "connector on node B").await;
    assert_eq!(
        get(&cluster.url(0, "/relay/acme/ping")).await.text(),
        "PONG"
    );

    match relay_testkit::broker::close_connections(cluster.prefix()) {
        Ok(n) => assert!(
            n >= 2,
            "expected both nodes' broker connections, closed {n}"
        ),
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
    }
    until_ok(
        &cluster.url(0, "/relay/acme/ping"),
        "cross-node requests after the broker dropped every connection",
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            get(&cluster.url(0, "/relay/acme/web/status/200"))
                .await
                .status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn a_crashed_nodes_connections_are_marked_gone_within_three_heartbeats() {
    let Some(mut cluster) = Cluster::start("[node]\nheartbeat_interval = \"500ms\"\n").await else {
        return;
    };
    let target = TestTarget::start().await;
    let _c1 = cluster.connector("c1", &[0, 1], &target);
    until_ok(&cluster.url(0, "/relay/acme/ping"), "connector on node A").await;
    until_ok(&cluster.url(1, "/relay/acme/ping"), "connector on node B").await;
    let store = cluster.tunnels_recorded(2).await;

    cluster.nodes[0].1.kill().await;
    let killed = Instant::now();
    wait::until(
        Duration::from_secs(10),
        "the dead node's tunnel marked gone",
        || async { (store.list_connections(true).await.unwrap().len() == 1).then_some(()) },
    )
    .await;
    // Three missed heartbeats of 500 ms plus a sweep interval is ~2 s; the bound leaves room
    // for a loaded machine while still being far below the default 15 s (and v3's minutes).
    assert!(
        killed.elapsed() < Duration::from_secs(6),
        "took {:?}",
        killed.elapsed()
    );
    let origins = store.list_origins().await.unwrap();
    assert_eq!(origins.iter().filter(|o| o.stopped_at.is_some()).count(), 1);
}

#[tokio::test]
async fn a_tenants_concurrency_limit_bounds_requests_in_flight() {
    let config = relay_store::TenantConfig {
        concurrency_limit: Some(2),
        ..Default::default()
    };
    let Some(cluster) = Cluster::start_with("", config).await else {
        return;
    };
    let target = TestTarget::start().await;
    let _c1 = cluster.connector("c1", &[1], &target);
    until_ok(&cluster.url(1, "/relay/acme/ping"), "connector on node B").await;

    let mut calls = Vec::new();
    for _ in 0..6 {
        let url = cluster.url(0, "/relay/acme/web/delay/600");
        calls.push(tokio::spawn(async move { get(&url).await }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().status, StatusCode::OK);
    }
    let max = target.counters.delay_max_inflight.load(Ordering::SeqCst);
    assert!(
        max <= 2,
        "{max} requests ran at once with a limit of 2\n{}",
        cluster.logs()
    );
    assert!(max >= 1);
}

/// A request sent in the background; its status, or `None` when the connection failed.
fn in_background(
    request: Request<client::TestBody>,
) -> tokio::task::JoinHandle<Option<StatusCode>> {
    tokio::spawn(async move {
        client::client()
            .request(request)
            .await
            .ok()
            .map(|r| r.status())
    })
}

/// Value of header `name` as the test target's `/inspect` saw it.
fn inspected_header(answer: &client::Answer, name: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    json["headers"].as_array()?.iter().find_map(|pair| {
        (pair[0].as_str()? == name).then(|| pair[1].as_str().map(str::to_owned))?
    })
}

/// A cluster whose tenant uses acknowledge mode `mode`, a concurrency limit of 1 and the
/// given request expiry, and a test target.
async fn ack_cluster(mode: relay_store::AckMode, expiry_ms: i64) -> Option<(Cluster, TestTarget)> {
    let config = relay_store::TenantConfig {
        ack_mode: Some(mode),
        concurrency_limit: Some(1),
        request_expiry_ms: Some(expiry_ms),
        ..Default::default()
    };
    let cluster = Cluster::start_with("", config).await?;
    Some((cluster, TestTarget::start().await))
}

#[tokio::test]
async fn manual_acknowledgements_settle_through_any_node() {
    let Some((cluster, target)) = ack_cluster(relay_store::AckMode::Manual, 4000).await else {
        return;
    };
    let _c1 = cluster.connector("c1", &[1], &target);
    // Not warmed up with requests: before the tunnel is up even node B would send one through
    // the broker, and its unacknowledged delivery would hold the only slot.
    cluster.tunnels_recorded(1).await;
    // Relayed on node B itself (the local shortcut): nothing to settle, the URL still works.
    let local = get(&cluster.url(1, "/relay/acme/web/inspect")).await;
    let local_ack = inspected_header(&local, "x-relay-acknowledge-url")
        .unwrap_or_else(|| panic!("no acknowledge URL in {}", local.text()));
    let settled = post(&cluster.url(1, &local_ack), "").await;
    assert_eq!(settled.status, StatusCode::NO_CONTENT, "{}", settled.text());
    target.counters.requests.store(0, Ordering::SeqCst);

    // Through node A: node B holds the delivery until the target acknowledges it.
    let first = get(&cluster.url(0, "/relay/acme/web/inspect")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let ack_path = inspected_header(&first, "x-relay-acknowledge-url")
        .unwrap_or_else(|| panic!("no acknowledge URL in {}", first.text()));
    let parts: Vec<&str> = ack_path.trim_start_matches('/').split('/').collect();
    let ["acknowledge", origin, request_id, signature] = parts[..] else {
        panic!("unexpected acknowledge URL {ack_path}");
    };

    // With a concurrency limit of 1 the unacknowledged request keeps the only slot.
    let second = tokio::spawn(get_owned(cluster.url(0, "/relay/acme/web/status/202")));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        target.counters.requests.load(Ordering::SeqCst),
        1,
        "{}",
        cluster.logs()
    );
    assert!(!second.is_finished(), "ran before the acknowledgement");

    // Forged or transplanted signatures are refused on every node.
    let mut forged = signature.to_owned().into_bytes();
    forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for url in [
        cluster.url(0, &format!("/acknowledge/{origin}/{request_id}/{forged}")),
        cluster.url(1, &format!("/acknowledge/{origin}/{request_id}/{forged}")),
        cluster.url(
            0,
            &format!("/acknowledge/{origin}/{OTHER_REQUEST}/{signature}"),
        ),
    ] {
        let refused = post(&url, "").await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{url}: {}",
            refused.text()
        );
    }
    assert!(
        !second.is_finished(),
        "a forged acknowledgement settled the request"
    );

    // Acknowledged through node A, which forwards it to node B.
    let acked = post(&cluster.url(0, &ack_path), "").await;
    assert_eq!(acked.status, StatusCode::ACCEPTED, "{}", acked.text());
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second request ran after the acknowledgement")
        .unwrap();
    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", cluster.logs());
    // Settled: node B, which held it, knows it no longer.
    let again = post(&cluster.url(1, &ack_path), "").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text());

    // The second request is not acknowledged: it keeps the slot until it expires (4 s after
    // it was sent), is then dropped without running again, and the third runs.
    let third = get(&cluster.url(0, "/relay/acme/web/status/201")).await;
    assert_eq!(third.status, StatusCode::CREATED, "{}", third.text());
    wait::until(
        Duration::from_secs(5),
        "expired manual delivery logged",
        || async {
            cluster
                .logs()
                .contains("without a manual acknowledgement")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        target.counters.requests.load(Ordering::SeqCst),
        3,
        "{}",
        cluster.logs()
    );
}

#[tokio::test]
async fn manual_deliveries_are_released_when_the_tunnel_fails() {
    let Some((cluster, target)) = ack_cluster(relay_store::AckMode::Manual, 60_000).await else {
        return;
    };
    let mut c1 = cluster.connector("c1", &[1], &target);
    cluster.tunnels_recorded(1).await;
    // Through node A; node B takes the only prefetch slot and holds it until acknowledged.
    let hung = tokio::spawn(get_owned(cluster.url(0, "/relay/acme/web/hang")));
    wait::until(Duration::from_secs(10), "target started", || async {
        (target.counters.hang_started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    c1.kill().await;
    let hung = tokio::time::timeout(Duration::from_secs(10), hung)
        .await
        .expect("the client got an answer soon after the connector died")
        .unwrap();
    assert_eq!(hung.status, StatusCode::BAD_GATEWAY, "{}", hung.text());

    let _c2 = cluster.connector("c2", &[1], &target);
    cluster.tunnels_recorded(1).await;
    // Had the failed delivery kept the slot, this would wait for its 60 s expiry.
    the_only_slot_is_free(&cluster).await;
    // Its client got 502: the failed request is not run again.
    assert_eq!(
        target.counters.hang_started.load(Ordering::SeqCst),
        1,
        "{}",
        cluster.logs()
    );
}

#[tokio::test]
async fn held_deliveries_survive_a_connector_reconnect() {
    let Some((cluster, target)) = ack_cluster(relay_store::AckMode::Manual, 60_000).await else {
        return;
    };
    let mut c1 = cluster.connector("c1", &[1], &target);
    cluster.tunnels_recorded(1).await;
    let held = get(&cluster.url(0, "/relay/acme/web/inspect")).await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.text());
    let ack_path = inspected_header(&held, "x-relay-acknowledge-url")
        .unwrap_or_else(|| panic!("no acknowledge URL in {}", held.text()));

    // The tenant's only tunnel on node B goes away and comes back while the delivery waits.
    c1.kill().await;
    let _c2 = cluster.connector("c2", &[1], &target);
    cluster.tunnels_recorded(1).await;
    let acked = post(&cluster.url(0, &ack_path), "").await;
    assert_eq!(acked.status, StatusCode::ACCEPTED, "{}", acked.text());
    the_only_slot_is_free(&cluster).await;
    // Acknowledged, not redelivered and run a second time.
    assert_eq!(
        target.counters.requests.load(Ordering::SeqCst),
        2,
        "{}",
        cluster.logs()
    );
}

#[tokio::test]
async fn acknowledgements_for_a_stopped_node_are_refused() {
    let Some((mut cluster, target)) = ack_cluster(relay_store::AckMode::Manual, 60_000).await
    else {
        return;
    };
    let _c1 = cluster.connector("c1", &[1], &target);
    cluster.tunnels_recorded(1).await;
    let held = get(&cluster.url(0, "/relay/acme/web/inspect")).await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.text());
    let ack_path = inspected_header(&held, "x-relay-acknowledge-url")
        .unwrap_or_else(|| panic!("no acknowledge URL in {}", held.text()));

    // Node B, which holds the delivery, stops: its queues go with it.
    let node_b = &mut cluster.nodes[1].1;
    node_b.terminate();
    tokio::time::timeout(Duration::from_secs(40), node_b.child.wait())
        .await
        .expect("node B stopped")
        .unwrap();
    assert!(
        node_b
            .log_text()
            .contains("Deleted this node's response and acknowledge queues"),
        "{}",
        node_b.log_text()
    );
    // Forwarding through node A finds no queue of node B: refused, not accepted into the void.
    let refused = post(&cluster.url(0, &ack_path), "").await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.text());
}

/// A request through node A runs at once (well within 15 s): no delivery holds the tenant's
/// only prefetch slot on node B.
async fn the_only_slot_is_free(cluster: &Cluster) {
    let next = tokio::time::timeout(
        Duration::from_secs(15),
        get(&cluster.url(0, "/relay/acme/web/status/201")),
    )
    .await
    .unwrap_or_else(|_| panic!("the slot stayed held:\n{}", cluster.logs()));
    assert_eq!(next.status, StatusCode::CREATED, "{}", next.text());
}

/// A request id the test's acknowledge URL was not signed for.
const OTHER_REQUEST: &str = "0190c6e4-7a1b-4c3d-9e8f-0123456789ab";

async fn get_owned(url: String) -> client::Answer {
    get(&url).await
}

/// Starts a request through node A that node B runs (its only connector, c1, is on B), waits
/// until the target started it, then connects c2 to node A and kills node B. Returns the
/// connectors and the request's answer to come.
async fn kill_the_node_running(
    cluster: &mut Cluster,
    target: &TestTarget,
    request: Request<client::TestBody>,
) -> (Proc, Proc, tokio::task::JoinHandle<Option<StatusCode>>) {
    let c1 = cluster.connector("c1", &[1], target);
    until_ok(&cluster.url(1, "/relay/acme/ping"), "connector on node B").await;
    let answer = in_background(request);
    wait::until(
        Duration::from_secs(10),
        "target started the request",
        || async { (target.counters.hang_started.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    let c2 = cluster.connector("c2", &[0], target);
    until_ok(&cluster.url(0, "/relay/acme/ping"), "connector on node A").await;
    cluster.nodes[1].1.kill().await;
    (c1, c2, answer)
}

#[tokio::test]
async fn disabled_acknowledgement_runs_requests_at_most_once() {
    let Some((mut cluster, target)) = ack_cluster(relay_store::AckMode::Disabled, 6_000).await
    else {
        return;
    };
    let hang = Request::get(cluster.url(0, "/relay/acme/web/hang"))
        .body(full(Bytes::new()))
        .unwrap();
    let (_c1, _c2, answer) = kill_the_node_running(&mut cluster, &target, hang).await;

    // Node B acknowledged the delivery when it took it: the broker has nothing to give node
    // A's consumer, so the request does not run again (node A would take a redelivery at once).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        target.counters.hang_started.load(Ordering::SeqCst),
        1,
        "{}",
        cluster.logs()
    );
    // Node A still serves the tenant.
    assert_eq!(
        get(&cluster.url(0, "/relay/acme/web/status/200"))
            .await
            .status,
        StatusCode::OK
    );
    // Nobody answers the lost request (connector-finished would answer 502 "interrupted"
    // from the redelivery): the client gets its 504 at the expiry.
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("answered by the expiry")
        .unwrap();
    assert_eq!(answer, Some(StatusCode::GATEWAY_TIMEOUT));
}

#[tokio::test]
async fn connector_received_reruns_requests_the_connector_never_fully_received() {
    let Some((mut cluster, target)) =
        ack_cluster(relay_store::AckMode::ConnectorReceived, 15_000).await
    else {
        return;
    };
    // `/hang` never reads the body: 64 MiB cannot all go into the tunnel (flow control), so
    // node B has not acknowledged the delivery when it dies.
    let size: u64 = 64 << 20;
    let upload = Request::post(cluster.url(0, "/relay/acme/web/hang"))
        .body(http_body_util::BodyExt::boxed(PatternBody::new(size)))
        .unwrap();
    let _running = kill_the_node_running(&mut cluster, &target, upload).await;

    // The broker redelivers it to node A, which runs it again.
    wait::until(
        Duration::from_secs(10),
        "the request ran again on node A",
        || async { (target.counters.hang_started.load(Ordering::SeqCst) == 2).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn known_tenants_keep_flowing_while_postgresql_is_unreachable() {
    let proxy = relay_testkit::proxy::BlockableProxy::start(postgres_addr()).await;
    let Some(cluster) =
        Cluster::start_full("", relay_store::TenantConfig::default(), Some(proxy.addr)).await
    else {
        return;
    };
    let target = TestTarget::start().await;
    let _c1 = cluster.connector("c1", &[1], &target);
    until_ok(&cluster.url(1, "/relay/acme/ping"), "connector on node B").await;
    until_ok(
        &cluster.url(0, "/relay/acme/ping"),
        "node A through the broker",
    )
    .await;

    proxy.block();
    cluster
        .ready_everywhere("ready (degraded: database unreachable, serving from cache)\n")
        .await;
    // Node B through its own tunnel, node A across the broker: the tenant is cached.
    for node in [0, 1, 0, 1] {
        let answer = get(&cluster.url(node, "/relay/acme/web/status/200")).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "node {node}: {}",
            answer.text()
        );
    }
    // A connector of a cached tenant still opens a tunnel; its credential is checked again by
    // the first poll after the outage.
    let c2 = cluster.connector_as("c2", &[0], &target, "acme", &cluster.secret, 1);
    c2.wait_tunnels(1, Duration::from_secs(30)).await;

    proxy.unblock();
    cluster.ready_everywhere("ready\n").await;
    // Writes resume: a request after the outage reaches the request log.
    assert_eq!(
        get(&cluster.url(0, "/relay/acme/web/status/203"))
            .await
            .status,
        StatusCode::NON_AUTHORITATIVE_INFORMATION
    );
    let store = relay_store::Store::connect(&cluster.db).await.unwrap();
    wait::until(
        Duration::from_secs(15),
        "request logged after the outage",
        || async {
            let filter = relay_store::RequestLogFilter {
                take: 100,
                ..Default::default()
            };
            let (entries, _) = store.list_request_log(&filter).await.ok()?;
            entries.iter().any(|e| e.status == 203).then_some(())
        },
    )
    .await;
    // A tenant created after the outage is found (not cached as unknown).
    relayctl(&cluster.db, &["tenant", "create", "later"]);
    wait::until(Duration::from_secs(10), "new tenant known", || async {
        let answer = get(&cluster.url(0, "/relay/later/web/x")).await;
        (answer.header("x-relay-error") == Some("no-connector")).then_some(())
    })
    .await;
    // One warning per outage and node, and one line when it ended.
    for (_, node) in &cluster.nodes {
        let log = node.log_text();
        assert_eq!(
            log.matches("Configuration database unreachable").count(),
            1,
            "{log}"
        );
        assert!(
            log.contains("Configuration database reachable again."),
            "{log}"
        );
    }
}
