//! Hostile requests on the relay path (issue 17): clients that lie about paths and hosts,
//! break their framing, stall their uploads or probe for diagnostics, and targets that
//! redirect elsewhere. The relay and connector run in this process (`relay_e2e::Stack`);
//! raw sockets where an HTTP client would tidy the request up. 127.0.0.1 only. Connection
//! level attacks (idle sockets, floods) are in `hostile.rs`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use relay_connector::config::TargetConfig;
use relay_e2e::Stack;
use relay_testkit::client::{full, get, send};
use relay_testkit::target::TestTarget;
use relay_testkit::wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn target(url: String, timeout: Duration) -> TargetConfig {
    TargetConfig {
        url,
        timeout,
        follow_redirects: false,
        redirect_origins: Vec::new(),
        ca_file: None,
        ..Default::default()
    }
}

/// A stack with tenant `acme` and a connected connector whose target `web` is `targets`.
async fn relaying(
    tune: impl FnOnce(&mut relay_server::Config),
    tenant: relay_store::TenantConfig,
    targets: BTreeMap<String, TargetConfig>,
) -> (Stack, relay_e2e::ConnectorHandle) {
    let stack = Stack::start_with(tune).await;
    let secret = stack.tenant_with("acme", tenant).await;
    let mut connector = stack.connector_with("acme", &secret, targets);
    connector.connected(1).await;
    (stack, connector)
}

/// Sends `head` (and `body`) as they are and reads the answer until the server closes or
/// `\r\n\r\n` plus the announced length arrived; returns the status and the whole text.
async fn raw(stack: &Stack, bytes: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(stack.relay_addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|l| l.trim().parse::<usize>().ok());
                if length.is_some_and(|l| body.len() >= l) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("an answer within 20 s");
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn header_of(text: &str, name: &str) -> Option<String> {
    text.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

// ---------------------------------------------------------------------------------------
// Row 4: paths never leave a target's base path

/// A stack whose target `web` is at `/base`: each of `paths` gets `400 path-invalid` and
/// nothing reaches the target.
async fn refused_at_the_relay(paths: &[&str]) -> (Stack, TestTarget, relay_e2e::ConnectorHandle) {
    let web = TestTarget::start().await;
    let targets = BTreeMap::from([(
        "web".to_owned(),
        target(format!("{}/base", web.url()), Duration::from_secs(10)),
    )]);
    let (stack, connector) = relaying(|_| {}, Default::default(), targets).await;
    for path in paths {
        let (status, text) = raw(
            &stack,
            format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{path}: {text}");
        assert_eq!(
            header_of(&text, "x-relay-error").as_deref(),
            Some("path-invalid"),
            "{path}"
        );
    }
    assert_eq!(
        web.counters.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the target"
    );
    (stack, web, connector)
}

#[tokio::test]
async fn dot_segments_and_encoded_separators_never_reach_the_target() {
    let (stack, web, _c) = refused_at_the_relay(&[
        "/relay/acme/web/../admin/secret.txt",
        "/relay/acme/web/files/../../admin",
        "/relay/acme/web/%2e%2e/admin",
        "/relay/acme/web/.%2E/admin",
        "/relay/acme/web/..%2fadmin",
        "/relay/acme/web/a%5c..%5cadmin",
        "/relay/acme/web/%252e%252e/admin",
    ])
    .await;
    // Harmless dots still pass.
    let (status, _) = raw(
        &stack,
        b"GET /relay/acme/web/status/200?x=../y HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        status, 404,
        "the target answered (its /base/status/200 is unknown)"
    );
    assert_eq!(web.counters.requests.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// Row 8: forwarding headers

#[tokio::test]
async fn a_host_that_is_not_an_authority_is_refused() {
    let web = TestTarget::start().await;
    let targets = BTreeMap::from([("web".to_owned(), target(web.url(), Duration::from_secs(10)))]);
    let (stack, _c) = relaying(|_| {}, Default::default(), targets).await;
    let (status, text) = raw(
        &stack,
        b"GET /relay/acme/web/inspect HTTP/1.1\r\nHost: x\", for=6.6.6.6;host=\"y\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(
        header_of(&text, "x-relay-error").as_deref(),
        Some("host-invalid")
    );
    assert_eq!(web.counters.requests.load(Ordering::SeqCst), 0);

    let seen = get(&stack.url("/relay/acme/web/inspect")).await;
    let json: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    let forwarded: Vec<&str> = json["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "forwarded")
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(
        forwarded,
        [format!(
            "for=\"127.0.0.1\";host=\"{}\";proto=\"http\"",
            stack.relay_addr
        )
        .as_str()],
        "one element, every value quoted"
    );
}

// ---------------------------------------------------------------------------------------
// Rows 11 and 12: discovery and trace mode disclose nothing by default

#[tokio::test]
async fn discovery_built_from_the_host_header_is_not_cacheable() {
    let stack = Stack::start().await;
    let answer = get(&stack.url("/.well-known/relayserver-configuration")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn trace_mode_discloses_the_connector_only_where_the_tenant_allows_it() {
    let (stack, _c) = relaying(|_| {}, Default::default(), BTreeMap::new()).await;
    let plain = get(&stack.url("/trace/acme/ping")).await;
    assert_eq!(
        (plain.status, plain.text().as_str()),
        (StatusCode::OK, "PONG")
    );
    assert_eq!(plain.header("x-relay-connector-machine"), None);
    assert_eq!(plain.header("x-relay-connector-version"), None);

    let traced = stack
        .tenant_with(
            "traced",
            relay_store::TenantConfig {
                tracing: Some(true),
                ..Default::default()
            },
        )
        .await;
    let mut c = stack.connector("traced", &traced, &[]);
    c.connected(1).await;
    let answer = get(&stack.url("/trace/traced/ping")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.header("x-relay-connector-machine"),
        Some("test-traced")
    );
}

// ---------------------------------------------------------------------------------------
// Row 9: the request log

#[tokio::test]
async fn requests_for_unknown_tenants_leave_no_rows_and_paths_are_capped() {
    let (stack, _c) = relaying(|_| {}, Default::default(), BTreeMap::new()).await;
    let long = "a".repeat(2000);
    for i in 0..50 {
        let answer = get(&stack.url(&format!("/relay/nobody{i}/{long}"))).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
    }
    let answer = get(&stack.url(&format!("/relay/acme/ping/{long}"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let rows = wait::until(
        Duration::from_secs(15),
        "the known tenant's row",
        || async {
            let (rows, _) = stack
                .store
                .list_request_log(&relay_store::RequestLogFilter {
                    take: 1000,
                    ..Default::default()
                })
                .await
                .ok()?;
            (!rows.is_empty()).then_some(rows)
        },
    )
    .await;
    assert_eq!(
        rows.len(),
        1,
        "only the known tenant's request: {:?}",
        rows.iter().map(|r| &r.tenant).collect::<Vec<_>>()
    );
    assert_eq!(rows[0].tenant, "acme");
    assert!(
        rows[0].path.chars().count() <= 256,
        "{} characters",
        rows[0].path.len()
    );
}

// ---------------------------------------------------------------------------------------
// Row 13: client framing errors are client errors

#[tokio::test]
async fn a_broken_chunked_body_is_a_client_error() {
    let (stack, _c) = relaying(|_| {}, Default::default(), BTreeMap::new()).await;
    for body in [
        // Not a chunk size.
        "5\r\nhello\r\nzz\r\n",
        // A chunk extension ended by a bare LF.
        "5;ext\nhello\r\n0\r\n\r\n",
    ] {
        let (status, text) = raw(
            &stack,
            format!(
                "POST /relay/acme/echo HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{body:?}: {text}");
        assert_ne!(
            header_of(&text, "x-relay-error").as_deref(),
            Some("connector-lost")
        );
    }
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_get_501() {
    let (stack, _c) = relaying(|_| {}, Default::default(), BTreeMap::new()).await;
    let (status, text) = raw(
        &stack,
        b"POST /relay/acme/echo HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 501, "{text}");
    assert_eq!(
        header_of(&text, "x-relay-error").as_deref(),
        Some("transfer-coding-unsupported")
    );
}

// ---------------------------------------------------------------------------------------
// Row 14: long uploads are not cut by the target timeout or the request expiry

/// A body of `chunks` pieces of 1 KiB, one every `every`.
fn slow_body(chunks: usize, every: Duration) -> relay_testkit::client::TestBody {
    use http_body_util::BodyExt;
    let stream = futures_util::stream::unfold(0usize, move |i| async move {
        if i == chunks {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![
                b'x';
                1024
            ]))),
            i + 1,
        ))
    });
    http_body_util::StreamBody::new(stream)
        .map_err(|e| match e {})
        .boxed()
}

#[tokio::test]
async fn an_upload_longer_than_the_target_timeout_and_the_expiry_succeeds() {
    let web = TestTarget::start().await;
    let targets = BTreeMap::from([("web".to_owned(), target(web.url(), Duration::from_secs(1)))]);
    let (stack, _c) = relaying(
        |c| c.relay.request_expiry = Duration::from_secs(1),
        Default::default(),
        targets,
    )
    .await;
    // About 2.5 s of upload: longer than both limits; the target answers right after it.
    let answer = send(
        Request::post(stack.url("/relay/acme/web/sha256"))
            .body(slow_body(25, Duration::from_millis(100)))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(answer.text().starts_with("25600 "), "{}", answer.text());
}

#[tokio::test]
async fn an_upload_that_stalls_gets_408() {
    let web = TestTarget::start().await;
    let targets = BTreeMap::from([("web".to_owned(), target(web.url(), Duration::from_secs(60)))]);
    let (stack, _c) = relaying(
        |c| c.relay.body_idle_timeout = Duration::from_millis(500),
        Default::default(),
        targets,
    )
    .await;
    let (status, text) = raw(
        &stack,
        b"POST /relay/acme/web/sha256 HTTP/1.1\r\nHost: relay\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly ten b",
    )
    .await;
    assert_eq!(status, 408, "{text}");
    assert_eq!(
        header_of(&text, "x-relay-error").as_deref(),
        Some("body-timeout")
    );
}

// ---------------------------------------------------------------------------------------
// Row 7: redirects stay on their origin

/// A target that answers every request with a redirect to `location`.
async fn redirecting_to(location: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let location = location.clone();
            let service = hyper::service::service_fn(move |_req| {
                let location = location.clone();
                async move {
                    let mut r =
                        http::Response::new(http_body_util::Full::new(Bytes::from("moved")));
                    *r.status_mut() = StatusCode::FOUND;
                    r.headers_mut()
                        .insert(http::header::LOCATION, location.parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn redirects_to_another_origin_pass_through_and_an_allowed_one_gets_no_credentials() {
    let elsewhere = TestTarget::start().await;
    let redirector = redirecting_to(format!("{}/inspect", elsewhere.url())).await;
    let mut following = target(redirector.clone(), Duration::from_secs(10));
    following.follow_redirects = true;
    let mut allowed = following.clone();
    allowed.redirect_origins = vec![elsewhere.url()];
    let targets = BTreeMap::from([
        ("web".to_owned(), following),
        ("allowed".to_owned(), allowed),
    ]);
    let (stack, _c) = relaying(|_| {}, Default::default(), targets).await;
    let with_credentials = |path: &str| {
        Request::get(stack.url(path))
            .header("authorization", "Bearer for-the-target-only")
            .header("cookie", "session=for-the-target-only")
            .body(full(Bytes::new()))
            .unwrap()
    };
    let passed = send(with_credentials("/relay/acme/web/x")).await;
    assert_eq!(
        passed.status,
        StatusCode::FOUND,
        "not followed to another origin"
    );
    assert_eq!(elsewhere.counters.requests.load(Ordering::SeqCst), 0);

    let followed = send(with_credentials("/relay/acme/allowed/x")).await;
    assert_eq!(followed.status, StatusCode::OK, "{}", followed.text());
    let text = followed.text();
    assert!(
        !text.contains("for-the-target-only"),
        "credentials followed the redirect: {text}"
    );
}

// ---------------------------------------------------------------------------------------
// Row 6: private files

#[tokio::test]
async fn the_database_and_spooled_bodies_are_private() {
    let stack = Stack::start().await;
    stack.tenant("acme").await;
    // No connector: `queue` mode spools the body on this single node.
    let queued = send(
        Request::post(stack.url("/queue/acme/web/x"))
            .body(full("spooled"))
            .unwrap(),
    )
    .await;
    assert_eq!(queued.status, StatusCode::ACCEPTED);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let db = stack.scratch.0.join("relay.db");
    assert_eq!(mode(&db), 0o600, "{}", db.display());
    for suffix in ["-wal", "-shm"] {
        let side = stack.scratch.0.join(format!("relay.db{suffix}"));
        if side.exists() {
            assert_eq!(mode(&side), 0o600, "{}", side.display());
        }
    }
    let bodies = stack.scratch.0.join("bodies");
    assert_eq!(mode(&bodies), 0o700);
    let files: Vec<_> = std::fs::read_dir(&bodies).unwrap().flatten().collect();
    assert!(!files.is_empty(), "a spooled body");
    for file in files {
        assert_eq!(mode(&file.path()), 0o600, "{}", file.path().display());
    }
}

// ---------------------------------------------------------------------------------------
// Row 10: no query strings or credentials in the logs

#[tokio::test]
async fn secrets_in_queries_headers_and_bodies_stay_out_of_the_logs() {
    let logs = relay_e2e::logs::captured("info");
    // A target that is down: the connector logs the failed call.
    let down = format!("http://127.0.0.1:{}", relay_e2e::free_port());
    let targets = BTreeMap::from([("web".to_owned(), target(down, Duration::from_secs(5)))]);
    let (stack, _c) = relaying(|_| {}, Default::default(), targets).await;
    let answer = send(
        Request::post(stack.url("/relay/acme/web/x?access_token=QUERY-SECRET-1"))
            .header("authorization", "Bearer HEADER-SECRET-2")
            .header("cookie", "session=COOKIE-SECRET-3")
            .body(full("BODY-SECRET-4"))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let unknown = get(&stack.url("/relay/nobody/x?access_token=QUERY-SECRET-5")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    wait::until(
        Duration::from_secs(10),
        "the failed target call logged",
        || async {
            let text = String::from_utf8_lossy(&logs.lock().ok()?.clone()).to_string();
            text.contains("Target call failed.").then_some(())
        },
    )
    .await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    for secret in ["SECRET-1", "SECRET-2", "SECRET-3", "SECRET-4", "SECRET-5"] {
        assert!(!text.contains(secret), "{secret} in the logs:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------
// Row 3: clients that never read cannot stall the tunnel

/// Opens `n` connections that each ask for a 64 MiB download and never read it.
async fn stalled_downloads(stack: &Stack, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..n {
        let mut stream = TcpStream::connect(stack.relay_addr).await.unwrap();
        stream
            .write_all(b"GET /relay/acme/web/bytes/67108864 HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await
            .unwrap();
        streams.push(stream);
    }
    streams
}

async fn ping_answers(stack: &Stack, within: Duration) {
    let answer = tokio::time::timeout(within, get(&stack.url("/relay/acme/ping")))
        .await
        .unwrap_or_else(|_| panic!("the tenant's other requests stalled for {within:?}"));
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (StatusCode::OK, "PONG")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_stalled_downloads_leave_the_tunnel_room() {
    let web = TestTarget::start().await;
    let targets = BTreeMap::from([("web".to_owned(), target(web.url(), Duration::from_secs(60)))]);
    let (stack, _c) = relaying(|_| {}, Default::default(), targets).await;
    let _stalled = stalled_downloads(&stack, 8).await;
    // Give the stalled streams time to fill whatever they can.
    wait::until(
        Duration::from_secs(20),
        "all eight downloads started",
        || async { (web.counters.requests.load(Ordering::SeqCst) >= 8).then_some(()) },
    )
    .await;
    for _ in 0..5 {
        ping_answers(&stack, Duration::from_secs(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_are_reset_after_the_client_write_timeout() {
    let web = TestTarget::start().await;
    let targets = BTreeMap::from([("web".to_owned(), target(web.url(), Duration::from_secs(60)))]);
    let (stack, _c) = relaying(
        |c| c.relay.client_write_timeout = Duration::from_millis(500),
        Default::default(),
        targets,
    )
    .await;
    let mut stalled = stalled_downloads(&stack, 1).await.remove(0);
    // The stall itself: four times the write timeout without reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .expect("the reset response ended");
    assert!(
        total < 64 << 20,
        "the whole 64 MiB arrived ({total} bytes): not reset"
    );
    // The tunnel serves on.
    ping_answers(&stack, Duration::from_secs(10)).await;
}

// ---------------------------------------------------------------------------------------
// Issue 22 row 1: HTTP/2 clients with a zero window cannot hold the tunnel

/// One h2c connection whose streams never get a byte of window: `n` downloads of `bytes`,
/// their heads received, their bodies never read.
async fn window_zero_downloads(
    stack: &Stack,
    n: usize,
    bytes: usize,
) -> (
    Vec<http::Response<hyper::body::Incoming>>,
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
) {
    let tcp = TcpStream::connect(stack.relay_addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut pending = Vec::new();
    for _ in 0..n {
        let req = Request::get(format!("http://relay/relay/acme/web/bytes/{bytes}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        pending.push(sender.send_request(req));
    }
    let heads = futures_util::future::join_all(pending).await;
    let heads = heads.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>();
    for head in &heads {
        assert_eq!(head.status(), StatusCode::OK);
    }
    (heads, sender)
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> Option<u64> {
    let text = get(&format!("http://{addr}/metrics")).await.text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_zero_http2_streams_cannot_hold_the_tunnel_window() {
    let web = TestTarget::start().await;
    let targets = BTreeMap::from([("web".to_owned(), target(web.url(), Duration::from_secs(60)))]);
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], relay_e2e::free_port()));
    let (stack, _c) = relaying(
        |c| {
            c.relay.client_write_timeout = Duration::from_secs(4);
            c.metrics.listen = Some(metrics);
        },
        Default::default(),
        targets,
    )
    .await;
    // 40 streams × 4 MiB: more than the tunnel's 64 MiB window if each kept its 2 MiB.
    let (_held, _conn) = window_zero_downloads(&stack, 40, 4 << 20).await;
    // The streams beyond the source's share of stalled responses are reset at once, so the
    // tenant's other requests keep flowing while the rest wait out the write timeout.
    for _ in 0..3 {
        ping_answers(&stack, Duration::from_secs(5)).await;
    }
    // No frame was ever taken: every one of them is reset by the write timeout at the latest.
    wait::until(
        Duration::from_secs(30),
        "all 40 window-zero responses reset",
        || async {
            (metric(metrics, "relay_stalled_responses_reset_total").await? >= 40).then_some(())
        },
    )
    .await;
    ping_answers(&stack, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_responses_of_a_window_zero_client_are_reset_too() {
    let web = TestTarget::start().await;
    let targets = BTreeMap::from([("web".to_owned(), target(web.url(), Duration::from_secs(60)))]);
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], relay_e2e::free_port()));
    let (stack, _c) = relaying(
        |c| {
            c.relay.client_write_timeout = Duration::from_secs(2);
            c.relay.max_stalled_per_source = 100;
            c.metrics.listen = Some(metrics);
        },
        Default::default(),
        targets,
    )
    .await;
    // Under the old 256 KiB threshold: such responses were never watched at all.
    let (_held, _conn) = window_zero_downloads(&stack, 3, 200_000).await;
    wait::until(
        Duration::from_secs(20),
        "the three small window-zero responses reset by the write timeout",
        || async {
            (metric(metrics, "relay_stalled_responses_reset_total").await? >= 3).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_open_more_relayed_streams_than_its_cap() {
    let web = TestTarget::start().await;
    let targets = BTreeMap::from([("web".to_owned(), target(web.url(), Duration::from_secs(60)))]);
    let (stack, _c) = relaying(
        |c| c.relay.max_streams_per_connection = 4,
        Default::default(),
        targets,
    )
    .await;
    let (_held, mut sender) = window_zero_downloads(&stack, 4, 4 << 20).await;
    let refused = sender
        .send_request(
            Request::get("http://relay/relay/acme/ping")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused
            .headers()
            .get("x-relay-error")
            .and_then(|v| v.to_str().ok()),
        Some("stream-limit")
    );
    assert!(refused.headers().get("retry-after").is_some());
    // Another connection from the same source is not affected by this one's cap.
    ping_answers(&stack, Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// Row 5: the queue spool is bounded

fn body_files(stack: &Stack) -> usize {
    std::fs::read_dir(stack.scratch.0.join("bodies"))
        .map(|d| d.flatten().count())
        .unwrap_or(0)
}

async fn queue(stack: &Stack, bytes: usize) -> relay_testkit::client::Answer {
    send(
        Request::post(stack.url("/queue/acme/web/x"))
            .body(full(vec![b'q'; bytes]))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn queue_mode_has_a_default_body_limit() {
    let stack = Stack::start_with(|c| c.relay.queue_max_body_bytes = 1000).await;
    stack.tenant("acme").await;
    let answer = queue(&stack, 2000).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.text()
    );
    assert_eq!(body_files(&stack), 0, "nothing half-written left");
    assert_eq!(queue(&stack, 500).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_tenant_cannot_spool_more_than_its_quota() {
    // Two bodies of 1 200 bytes and their heads (about 1.6 KB each, counted too) fit.
    let stack = Stack::start_with(|c| c.relay.spool_quota_bytes = 6500).await;
    stack.tenant("acme").await;
    assert_eq!(queue(&stack, 1200).await.status, StatusCode::ACCEPTED);
    assert_eq!(queue(&stack, 1200).await.status, StatusCode::ACCEPTED);
    let refused = queue(&stack, 1200).await;
    assert_eq!(
        refused.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("x-relay-error"), Some("spool-quota"));
    assert_eq!(body_files(&stack), 2, "the refused body was removed");
    // Another tenant has a quota of its own.
    stack.tenant("beta").await;
    let other = send(
        Request::post(stack.url("/queue/beta/web/x"))
            .body(full(vec![b'q'; 1200]))
            .unwrap(),
    )
    .await;
    assert_eq!(other.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn queue_requests_are_refused_below_the_free_disk_floor() {
    let stack = Stack::start_with(|c| c.relay.spool_min_free_bytes = u64::MAX).await;
    stack.tenant("acme").await;
    let refused = queue(&stack, 10).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("x-relay-error"), Some("spool-full"));
    assert!(refused.header("retry-after").is_some());
    assert_eq!(body_files(&stack), 0);
}

// ---------------------------------------------------------------------------------------
// Issue 22 row 3: queue mode is bounded by count, not only by body bytes

async fn queue_empty(stack: &Stack, tenant: &str) -> relay_testkit::client::Answer {
    send(
        Request::post(stack.url(&format!("/queue/{tenant}/web/x")))
            .header("x-padding", "p".repeat(4000))
            .body(full(Vec::new()))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn empty_queue_requests_are_bounded_per_tenant_and_per_node() {
    let stack = Stack::start_with(|c| {
        c.relay.queue_max_requests_per_tenant = 5;
        c.relay.queue_max_requests = 8;
    })
    .await;
    stack.tenant("acme").await;
    stack.tenant("beta").await;
    for i in 0..5 {
        let answer = queue_empty(&stack, "acme").await;
        assert_eq!(
            answer.status,
            StatusCode::ACCEPTED,
            "request {i}: {}",
            answer.text()
        );
    }
    let full_tenant = queue_empty(&stack, "acme").await;
    assert_eq!(
        full_tenant.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        full_tenant.text()
    );
    assert_eq!(full_tenant.header("x-relay-error"), Some("queue-full"));
    assert!(full_tenant.header("retry-after").is_some());
    // Another tenant still has room, up to the node's count.
    for _ in 0..3 {
        assert_eq!(
            queue_empty(&stack, "beta").await.status,
            StatusCode::ACCEPTED
        );
    }
    let full_node = queue_empty(&stack, "beta").await;
    assert_eq!(
        full_node.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        full_node.text()
    );
    assert_eq!(full_node.header("x-relay-error"), Some("queue-node-full"));
    // Empty bodies leave no files behind.
    assert_eq!(body_files(&stack), 0);
}

#[tokio::test]
async fn queued_headers_count_toward_the_spool_quota() {
    let stack = Stack::start_with(|c| c.relay.spool_quota_bytes = 12_000).await;
    stack.tenant("acme").await;
    assert_eq!(
        queue_empty(&stack, "acme").await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        queue_empty(&stack, "acme").await.status,
        StatusCode::ACCEPTED
    );
    let refused = queue_empty(&stack, "acme").await;
    assert_eq!(
        refused.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("x-relay-error"), Some("spool-quota"));
}

// ---------------------------------------------------------------------------------------
// Issue 22 rows 9 and 13: followed redirects stay under the target's base path

/// A target at `/base` that redirects `/base/{name}` to the `Location` in `redirects` and
/// serves `/base/inside` and anything ending in `/admin/secret.txt` (as a target that
/// resolves `..` and `;` would) with the `Authorization` it got; counts secret requests.
async fn redirecting_target(
    redirects: Vec<(&'static str, String)>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let secrets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = secrets.clone();
    let redirects = std::sync::Arc::new(redirects);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let redirects = redirects.clone();
            let counter = counter.clone();
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let redirects = redirects.clone();
                let counter = counter.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    let auth = req
                        .headers()
                        .get("authorization")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default();
                    let mut r = http::Response::new(http_body_util::Full::new(Bytes::new()));
                    if path.ends_with("/admin/secret.txt") {
                        counter.fetch_add(1, Ordering::SeqCst);
                        *r.body_mut() = Bytes::from(format!("SECRET auth={auth}")).into();
                    } else if path == "/base/inside" {
                        *r.body_mut() = Bytes::from(format!("INSIDE auth={auth}")).into();
                    } else if let Some((_, location)) = redirects
                        .iter()
                        .find(|(name, _)| path.strip_prefix("/base/") == Some(*name))
                    {
                        *r.status_mut() = StatusCode::FOUND;
                        r.headers_mut()
                            .insert(http::header::LOCATION, location.parse().unwrap());
                        *r.body_mut() = Bytes::from("moved").into();
                    } else {
                        *r.status_mut() = StatusCode::NOT_FOUND;
                    }
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (format!("http://{addr}"), secrets)
}

#[tokio::test]
async fn followed_redirects_never_leave_the_base_path() {
    let redirects = vec![
        ("out", "/admin/secret.txt".to_owned()),
        ("dots", "/base/../admin/secret.txt".to_owned()),
        ("params", "/base/..;/admin/secret.txt".to_owned()),
        ("encoded", "/base/%2e%2e;x=1/admin/secret.txt".to_owned()),
        (
            "schemeless",
            "//elsewhere.invalid/admin/secret.txt".to_owned(),
        ),
        ("in", "/base/inside".to_owned()),
    ];
    let (url, secrets) = redirecting_target(redirects.clone()).await;
    let mut web = target(format!("{url}/base"), Duration::from_secs(10));
    web.follow_redirects = true;
    let (stack, _c) = relaying(
        |_| {},
        Default::default(),
        BTreeMap::from([("web".to_owned(), web)]),
    )
    .await;
    let with_credentials = |path: &str| {
        Request::get(stack.url(path))
            .header("authorization", "Bearer for-the-base-only")
            .header("cookie", "session=for-the-base-only")
            .body(full(Bytes::new()))
            .unwrap()
    };
    for (name, location) in &redirects[..5] {
        let answer = send(with_credentials(&format!("/relay/acme/web/{name}"))).await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (StatusCode::FOUND, "moved"),
            "{name}: the client sees the redirect"
        );
        assert_eq!(answer.header("location"), Some(location.as_str()), "{name}");
    }
    assert_eq!(
        secrets.load(Ordering::SeqCst),
        0,
        "nothing outside /base was requested"
    );

    let inside = send(with_credentials("/relay/acme/web/in")).await;
    assert_eq!(
        (inside.status, inside.text().as_str()),
        (StatusCode::OK, "INSIDE auth=Bearer for-the-base-only"),
        "a redirect under the base path is followed with the credentials"
    );
}

// ---------------------------------------------------------------------------------------
// Issue 22 row 10: `;` parameters, overlong and look-alike dots

#[tokio::test]
async fn dot_segments_with_parameters_or_look_alike_dots_never_reach_the_target() {
    refused_at_the_relay(&[
        "/relay/acme/web/..;/admin/secret.txt",
        "/relay/acme/web/..;x=1/admin/secret.txt",
        "/relay/acme/web/%2e%2e;/admin/secret.txt",
        "/relay/acme/web/..%3b/admin/secret.txt",
        "/relay/acme/web/..%3B/admin/secret.txt",
        "/relay/acme/web/%c0%ae%c0%ae/admin/secret.txt",
        "/relay/acme/web/%ef%bc%8e%ef%bc%8e/admin/secret.txt",
    ])
    .await;
}

// ---------------------------------------------------------------------------------------
// Issue 22: `[targets.NAME] encoded_slashes`

#[tokio::test]
async fn encoded_slashes_pass_byte_for_byte_only_where_the_target_allows_them() {
    let web = TestTarget::start().await;
    let strict = target(web.url(), Duration::from_secs(10));
    let mut lenient = strict.clone();
    lenient.encoded_slashes = relay_proto::path::EncodedSlashes::Pass;
    let targets = BTreeMap::from([
        ("strict".to_owned(), strict),
        ("gitlab".to_owned(), lenient),
    ]);
    let (stack, _c) = relaying(|_| {}, Default::default(), targets).await;
    for rest in [
        "inspect/projects/group%2Fproject",
        "inspect/discount/100%25",
    ] {
        let answer = get(&stack.url(&format!("/relay/acme/gitlab/{rest}"))).await;
        assert_eq!(answer.status, StatusCode::OK, "{rest}: {}", answer.text());
        let seen: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(seen["uri"], format!("/{rest}"), "byte for byte");

        let refused = get(&stack.url(&format!("/relay/acme/strict/{rest}"))).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{rest}");
        assert_eq!(refused.header("x-relay-error"), Some("path-invalid"));
        assert!(
            refused.text().contains("encoded_slashes"),
            "the reason names the setting: {}",
            refused.text()
        );
    }
    for rest in [
        "inspect/%252e%252e/admin",
        "inspect/a%2F..%2F..%2Fadmin",
        "inspect/a%252Fb",
    ] {
        let refused = get(&stack.url(&format!("/relay/acme/gitlab/{rest}"))).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{rest}");
        assert_eq!(refused.header("x-relay-error"), Some("path-invalid"));
    }
    assert_eq!(web.counters.requests.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------
// Issue 22 row 12: client-sent forwarding headers

#[tokio::test]
async fn client_forwarding_headers_reach_only_a_target_that_trusts_them() {
    let web = TestTarget::start().await;
    let plain = target(web.url(), Duration::from_secs(10));
    let mut trusting = plain.clone();
    trusting.trust_client_forwarded = true;
    let targets = BTreeMap::from([("web".to_owned(), plain), ("trusting".to_owned(), trusting)]);
    let (stack, _c) = relaying(|_| {}, Default::default(), targets).await;
    let seen = |name: &'static str| {
        let stack = &stack;
        async move {
            let answer = send(
                Request::get(stack.url(&format!("/relay/acme/{name}/inspect")))
                    .header("forwarded", "for=6.6.6.6")
                    .header("x-forwarded-for", "6.6.6.6")
                    .header("x-forwarded-host", "forged.example")
                    .header("x-forwarded-prefix", "/forged")
                    .header("x-real-ip", "6.6.6.6")
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
            let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            let headers: Vec<(String, String)> = json["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h[0].as_str().unwrap().to_owned(),
                        h[1].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            move |key: &str| -> Vec<String> {
                headers
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .collect()
            }
        }
    };
    let relay_element = format!(
        "for=\"127.0.0.1\";host=\"{}\";proto=\"http\"",
        stack.relay_addr
    );
    let web = seen("web").await;
    assert_eq!(web("forwarded"), [relay_element.as_str()]);
    assert_eq!(web("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(web("x-forwarded-host"), [stack.relay_addr.to_string()]);
    assert_eq!(web("x-forwarded-prefix"), Vec::<String>::new());
    assert_eq!(web("x-real-ip"), Vec::<String>::new());

    let trusting = seen("trusting").await;
    assert_eq!(
        trusting("forwarded"),
        ["for=6.6.6.6".to_owned(), relay_element]
    );
    assert_eq!(trusting("x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    assert_eq!(trusting("x-real-ip"), ["6.6.6.6"]);
}
