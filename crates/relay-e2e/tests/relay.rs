//! What reaches the target and what comes back: methods, paths, headers, cookies,
//! redirects, trace headers, queue mode, concurrency, load sharing, cancellation, drain.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use relay_e2e::Stack;
use relay_store::TenantConfig;
use relay_testkit::client::{full, get, post, send};
use relay_testkit::target::TestTarget;
use relay_testkit::wait;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn header<'a>(inspect: &'a Value, name: &str) -> Vec<&'a str> {
    inspect["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn request_reaches_the_target_unchanged_and_the_answer_comes_back() {
    let stack = Stack::start().await;
    let target = TestTarget::start().await;
    let secret = stack.tenant("acme").await;
    let mut c = stack.connector(
        "acme",
        &secret,
        &[("web", format!("{}/inspect", target.url()))],
    );
    c.connected(1).await;

    let answer = send(
        Request::put(stack.url("/relay/acme/web/a/b%20c?x=1&y=%2F"))
            .header("cookie", "session=abc; theme=dark")
            .header("x-custom", "one")
            .header("connection", "x-hop")
            .header("x-hop", "must-not-pass")
            .header("x-relay-request-id", "spoofed")
            .body(full("payload"))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["uri"], "/inspect/a/b%20c?x=1&y=%2F");
    assert_eq!(seen["body"], "payload");
    assert_eq!(header(&seen, "cookie"), ["session=abc; theme=dark"]);
    assert_eq!(header(&seen, "x-custom"), ["one"]);
    assert!(
        header(&seen, "x-hop").is_empty(),
        "hop-by-hop header forwarded"
    );
    assert!(
        header(&seen, "x-relay-request-id").is_empty(),
        "relay header leaked to the target"
    );
    assert_eq!(header(&seen, "host"), [target.addr.to_string().as_str()]);
    assert_eq!(header(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(
        header(&seen, "x-forwarded-host"),
        [stack.relay_addr.to_string().as_str()]
    );
    assert_eq!(header(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(header(&seen, "forwarded").len(), 1);
}

#[tokio::test]
async fn redirects_and_multiple_cookies_pass_through() {
    let stack = Stack::start().await;
    let target = TestTarget::start().await;
    let secret = stack.tenant("acme").await;
    let mut c = stack.connector("acme", &secret, &[("web", target.url())]);
    c.connected(1).await;

    let redirect = get(&stack.url("/relay/acme/web/redirect")).await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    assert_eq!(redirect.header("location"), Some("/inspect"));

    let cookies = get(&stack.url("/relay/acme/web/cookies")).await;
    let set: Vec<_> = cookies
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set, ["a=1; Path=/", "b=2; HttpOnly"]);
}

#[tokio::test]
async fn trace_mode_adds_diagnostics_and_relay_mode_does_not() {
    let stack = Stack::start().await;
    let secret = stack
        .tenant_with(
            "acme",
            relay_store::TenantConfig {
                tracing: Some(true),
                ..Default::default()
            },
        )
        .await;
    let mut c = stack.connector("acme", &secret, &[]);
    c.connected(1).await;

    let traced = get(&stack.url("/trace/acme/ping")).await;
    assert_eq!(traced.text(), "PONG");
    assert_eq!(traced.header("x-relay-request-id").map(str::len), Some(36));
    assert_eq!(
        traced.header("x-relay-connector-machine"),
        Some("test-acme")
    );
    assert_eq!(
        traced.header("x-relay-connector-version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(traced.header("x-relay-target-duration-ms").is_some());
    assert!(traced.header("x-relay-duration-ms").is_some());

    let plain = get(&stack.url("/relay/acme/ping")).await;
    assert!(
        plain
            .headers
            .keys()
            .all(|k| !k.as_str().starts_with("x-relay-")),
        "{:?}",
        plain.headers
    );
}

#[tokio::test]
async fn queue_mode_answers_202_and_delivers_when_a_connector_arrives() {
    let stack = Stack::start().await;
    let target = TestTarget::start().await;
    let secret = stack.tenant("q").await;

    let accepted = post(&stack.url("/queue/q/web/sha256"), vec![9u8; 200_000]).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let id: Value = serde_json::from_slice(&accepted.body).unwrap();
    assert_eq!(id["request_id"].as_str().map(str::len), Some(36));
    assert_eq!(target.counters.requests.load(Ordering::SeqCst), 0);

    let mut c = stack.connector("q", &secret, &[("web", target.url())]);
    c.connected(1).await;
    wait::until(
        Duration::from_secs(10),
        "queued request delivered",
        || async { (target.counters.requests.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    // The spooled body is deleted after delivery.
    let bodies = stack.scratch.0.join("bodies");
    wait::until(Duration::from_secs(5), "spool emptied", || async {
        (std::fs::read_dir(&bodies).unwrap().count() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn expired_queued_requests_are_never_executed() {
    let stack = Stack::start().await;
    let target = TestTarget::start().await;
    let config = TenantConfig {
        request_expiry_ms: Some(300),
        ..TenantConfig::default()
    };
    let secret = stack.tenant_with("late", config).await;

    let accepted = post(&stack.url("/queue/late/web/sha256"), "x").await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut c = stack.connector("late", &secret, &[("web", target.url())]);
    c.connected(1).await;
    // A fresh request goes through, proving the connector works; the expired one never ran.
    let fresh = post(&stack.url("/relay/late/web/sha256"), "y").await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(target.counters.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn five_hundred_concurrent_requests_share_one_tunnel() {
    let stack = Stack::start().await;
    let target = TestTarget::start().await;
    let secret = stack.tenant("busy").await;
    let mut c = stack.connector("busy", &secret, &[("web", target.url())]);
    c.connected(1).await;

    let mut tasks = Vec::new();
    for i in 0..500u64 {
        let url = stack.url(&format!("/relay/busy/web/bytes/{}", 1000 + i));
        tasks.push(tokio::spawn(async move { (i, get(&url).await) }));
    }
    for task in tasks {
        let (i, answer) = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body.len() as u64, 1000 + i);
    }
    assert_eq!(*c.live.borrow(), 1, "all requests used the one tunnel");
}

#[tokio::test]
async fn two_connectors_of_one_tenant_share_the_load() {
    let stack = Stack::start().await;
    let first = TestTarget::start().await;
    let second = TestTarget::start().await;
    let secret = stack.tenant("pair").await;
    let mut a = stack.connector("pair", &secret, &[("web", first.url())]);
    let mut b = stack.connector("pair", &secret, &[("web", second.url())]);
    a.connected(1).await;
    b.connected(1).await;

    for _ in 0..40 {
        assert_eq!(
            get(&stack.url("/relay/pair/web/status/200")).await.status,
            StatusCode::OK
        );
    }
    let (x, y) = (
        first.counters.requests.load(Ordering::SeqCst),
        second.counters.requests.load(Ordering::SeqCst),
    );
    assert_eq!(x + y, 40);
    assert!(x >= 10 && y >= 10, "unbalanced: {x} / {y}");

    // One connector leaves: the other carries everything.
    drop(a);
    wait::until(
        Duration::from_secs(10),
        "requests served by the remaining connector",
        || async {
            let answer = get(&stack.url("/relay/pair/web/status/200")).await;
            (answer.status == StatusCode::OK).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn client_going_away_cancels_the_target_call() {
    let stack = Stack::start().await;
    let target = TestTarget::start().await;
    let secret = stack.tenant("gone").await;
    let mut c = stack.connector("gone", &secret, &[("web", target.url())]);
    c.connected(1).await;

    let mut socket = tokio::net::TcpStream::connect(stack.relay_addr)
        .await
        .unwrap();
    socket
        .write_all(b"GET /relay/gone/web/hang HTTP/1.1\r\nhost: relay\r\n\r\n")
        .await
        .unwrap();
    wait::until(Duration::from_secs(5), "target call started", || async {
        (target.counters.hang_started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    drop(socket);
    wait::until(Duration::from_secs(5), "target call cancelled", || async {
        (target.counters.hang_cancelled.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn large_bodies_stream_both_ways_with_checksums() {
    let stack = Stack::start().await;
    let target = TestTarget::start().await;
    let secret = stack.tenant("bulk").await;
    let mut c = stack.connector("bulk", &secret, &[("web", target.url())]);
    c.connected(1).await;

    let size: u64 = 64 << 20;
    let upload = send(
        Request::post(stack.url("/relay/bulk/web/sha256"))
            .body(http_body_util::BodyExt::boxed(
                relay_testkit::client::PatternBody::new(size),
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(
        upload.text(),
        format!("{size} {}", relay_testkit::client::pattern_sha256(size))
    );

    let response = relay_testkit::client::client()
        .request(
            Request::get(stack.url(&format!("/relay/bulk/web/bytes/{size}")))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (len, sha) = relay_testkit::client::digest(response.into_body())
        .await
        .unwrap();
    assert_eq!(
        (len, sha),
        (size, relay_testkit::client::pattern_sha256(size))
    );
}

#[tokio::test]
async fn shutdown_drains_connectors_and_finishes_in_flight_requests() {
    let mut stack = Stack::start().await;
    let target = TestTarget::start().await;
    let secret = stack.tenant("drain").await;
    let mut c = stack.connector("drain", &secret, &[("web", target.url())]);
    c.connected(1).await;

    let url = stack.url("/relay/drain/web/delay/700");
    let in_flight = tokio::spawn(async move { get(&url).await });
    wait::until(Duration::from_secs(5), "request at the target", || async {
        (target.counters.requests.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    stack.shutdown.cancel();
    let answer = in_flight.await.unwrap();
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (StatusCode::OK, "late")
    );
    tokio::time::timeout(Duration::from_secs(10), &mut stack.server)
        .await
        .expect("server stopped within the grace")
        .unwrap()
        .unwrap();
    let refused = tokio::net::TcpStream::connect(stack.relay_addr).await;
    assert!(refused.is_err(), "listener still open after shutdown");
}

#[tokio::test]
async fn raw_http1_client_sees_plain_text_reasons() {
    let stack = Stack::start().await;
    let mut socket = tokio::net::TcpStream::connect(stack.relay_addr)
        .await
        .unwrap();
    socket
        .write_all(b"GET /relay/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    socket.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(text.contains("/{mode}/{tenant}/{target}/{path}"), "{text}");
}

#[tokio::test]
async fn clients_may_speak_h2c() {
    let stack = Stack::start().await;
    let secret = stack.tenant("h2").await;
    let mut c = stack.connector("h2", &secret, &[]);
    c.connected(1).await;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let request = Request::post(stack.url("/relay/h2/echo"))
        .body(http_body_util::Full::new(Bytes::from_static(b"over h2c")))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"over h2c");
}
