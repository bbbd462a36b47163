//! A network that silently stops passing packets: keep-alives detect the dead tunnel, the
//! in-flight request fails instead of hanging, and the connector comes back afterwards.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::StatusCode;
use relay_connector::config::TargetConfig;
use relay_e2e::Stack;
use relay_testkit::client::get;
use relay_testkit::proxy::BlockableProxy;
use relay_testkit::target::TestTarget;
use relay_testkit::wait;

#[tokio::test]
async fn a_blocked_network_is_detected_within_two_keep_alive_intervals() {
    let stack = Stack::start_with(|c| c.tunnel.keep_alive_interval = Duration::from_secs(1)).await;
    let target = TestTarget::start().await;
    let proxy = BlockableProxy::start(stack.relay_addr).await;
    let secret = stack.tenant("flaky").await;
    let targets = BTreeMap::from([(
        "web".to_owned(),
        TargetConfig {
            url: target.url(),
            timeout: Duration::from_secs(60),
            follow_redirects: false,
            redirect_origins: Vec::new(),
            ca_file: None,
            ..Default::default()
        },
    )]);
    let mut c = stack.connector_via(&format!("http://{}", proxy.addr), "flaky", &secret, targets);
    c.connected(1).await;

    let url = stack.url("/relay/flaky/web/hang");
    let pending = tokio::spawn(async move { get(&url).await });
    wait::until(Duration::from_secs(5), "request at the target", || async {
        (target.counters.hang_started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    let blocked_at = Instant::now();
    proxy.block();
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let detected = blocked_at.elapsed();
    // Two 1 s keep-alive intervals, with room for a loaded machine; without keep-alives the
    // request would hang until the client gave up.
    assert!(
        detected < Duration::from_secs(6),
        "dead tunnel noticed after {detected:?}"
    );
    assert_eq!(
        get(&stack.url("/relay/flaky/ping")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    proxy.unblock();
    wait::until(
        Duration::from_secs(30),
        "connector back after the network returned",
        || async {
            (get(&stack.url("/relay/flaky/ping")).await.status == StatusCode::OK).then_some(())
        },
    )
    .await;
}
