//! Hostile clients against every listener (issue 17), raw sockets on 127.0.0.1. One section
//! per row of the issue; each test bounded in time, with short configured limits and
//! generous deadlines for observing them (CI runs on a loaded 2-core machine).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use relay_core::conn::ConnectionLimits;
use relay_e2e::{Scratch, Stack};
use relay_testkit::wait::until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// Row 2: connections — first-byte, header and idle timeouts, caps per listener and source.
// ---------------------------------------------------------------------------------------

/// Short timeouts so that the tests observe them; caps generous unless a test sets them.
fn short_limits() -> ConnectionLimits {
    ConnectionLimits {
        first_byte_timeout: Duration::from_secs(1),
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    }
}

/// How long a test waits for a closure it expects; far above the 1 s limits, far below
/// what the listeners allowed before (30 s header timeout, no idle timeout at all).
const CLOSE_DEADLINE: Duration = Duration::from_secs(12);

/// Reads until the peer closes (EOF or reset) and returns how long that took; panics
/// after [`CLOSE_DEADLINE`]. Bytes received meanwhile are returned too.
async fn closed_within(stream: &mut TcpStream, what: &str) -> (Duration, Vec<u8>) {
    let started = tokio::time::Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(started + CLOSE_DEADLINE, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open after {CLOSE_DEADLINE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn stack_with(limits: ConnectionLimits) -> Stack {
    Stack::start_with(|config| config.connections = limits).await
}

#[tokio::test]
async fn public_silent_connection_is_closed_after_the_first_byte_timeout() {
    let stack = stack_with(ConnectionLimits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..short_limits()
    })
    .await;
    let mut silent = TcpStream::connect(stack.relay_addr).await.unwrap();
    let (after, bytes) = closed_within(&mut silent, "silent connection").await;
    assert!(
        after >= Duration::from_millis(800),
        "closed after {after:?}"
    );
    assert!(bytes.is_empty());
}

#[tokio::test]
async fn public_half_request_head_is_closed_after_the_header_timeout() {
    let stack = stack_with(ConnectionLimits {
        first_byte_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..short_limits()
    })
    .await;
    let mut half = TcpStream::connect(stack.relay_addr).await.unwrap();
    half.write_all(b"GET /relay/demo/ping HTTP/1.1\r\nHost: relay\r\n")
        .await
        .unwrap();
    let (after, _) = closed_within(&mut half, "half request head").await;
    assert!(
        after >= Duration::from_millis(800),
        "closed after {after:?}"
    );
}

#[tokio::test]
async fn public_idle_keep_alive_http1_connection_is_closed_after_the_idle_timeout() {
    let stack = stack_with(ConnectionLimits {
        header_timeout: Duration::from_secs(30),
        ..short_limits()
    })
    .await;
    let mut conn = TcpStream::connect(stack.relay_addr).await.unwrap();
    conn.write_all(b"GET /health/live HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let (_, bytes) = closed_within(&mut conn, "idle keep-alive connection").await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
}

#[tokio::test]
async fn public_idle_h2c_connection_is_closed_after_the_idle_timeout() {
    let stack = stack_with(ConnectionLimits {
        header_timeout: Duration::from_secs(30),
        ..short_limits()
    })
    .await;
    let stream = TcpStream::connect(stack.relay_addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(
                stream,
            ))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(stack.url("/health/live"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let answer = send.send_request(req).await.unwrap();
    assert_eq!(answer.status(), http::StatusCode::OK);
    drop(answer);
    let started = tokio::time::Instant::now();
    tokio::time::timeout(CLOSE_DEADLINE, conn)
        .await
        .expect("idle h2c connection closed by the server")
        .unwrap()
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn public_h2c_connection_gets_keep_alive_pings() {
    let stack = stack_with(ConnectionLimits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        keep_alive_interval: Duration::from_secs(1),
        keep_alive_timeout: Duration::from_secs(30),
        ..short_limits()
    })
    .await;
    let mut conn = TcpStream::connect(stack.relay_addr).await.unwrap();
    // Client preface and an empty SETTINGS frame, then silence.
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + CLOSE_DEADLINE;
    loop {
        let mut head = [0u8; 9];
        tokio::time::timeout_at(deadline, conn.read_exact(&mut head))
            .await
            .expect("a PING from the server in time")
            .expect("connection open");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await.unwrap();
        // PING (type 6) without the ACK flag: the server's own keep-alive probe.
        if head[3] == 6 && head[4] & 1 == 0 {
            break;
        }
    }
}

#[tokio::test]
async fn public_per_source_cap_refuses_the_next_connection_and_frees_places_on_close() {
    const CAP: usize = 6;
    let stack = stack_with(ConnectionLimits {
        max_per_source: CAP,
        first_byte_timeout: Duration::from_secs(60),
        ..ConnectionLimits::default()
    })
    .await;
    let secret = stack.tenant("demo").await;
    let mut connector = stack.connector("demo", &secret, &[]);
    connector.connected(1).await;
    // The tunnel holds one place; CAP silent sockets more than fill the rest.
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(stack.relay_addr).await.unwrap());
    }
    let mut refused = 0;
    let mut open = Vec::new();
    for mut socket in held {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(2), socket.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => refused += 1,
            Ok(Ok(_)) => panic!("the server sent bytes to a silent client"),
            Err(_) => open.push(socket),
        }
    }
    assert!(refused >= 1, "no connection refused at the cap");
    assert!(open.len() < CAP, "{} silent connections held", open.len());
    // At the cap a real request gets a closed connection, not an answer.
    let mut late = TcpStream::connect(stack.relay_addr).await.unwrap();
    let _ = late
        .write_all(b"GET /relay/demo/ping HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await;
    let (_, bytes) = closed_within(&mut late, "connection over the cap").await;
    assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(&bytes));
    drop(open);
    let url = stack.url("/relay/demo/ping");
    let body = until(
        Duration::from_secs(20),
        "ping after the sockets closed",
        || {
            let url = url.clone();
            async move {
                use http_body_util::BodyExt;
                let answer = relay_testkit::client::client()
                    .get(url.parse().unwrap())
                    .await
                    .ok()?;
                if answer.status() != http::StatusCode::OK {
                    return None;
                }
                let body = answer.into_body().collect().await.ok()?.to_bytes();
                Some(String::from_utf8_lossy(&body).into_owned())
            }
        },
    )
    .await;
    assert_eq!(body, "PONG");
}

#[tokio::test]
async fn public_tunnel_outlives_the_client_idle_timeout() {
    let stack = stack_with(short_limits()).await;
    let secret = stack.tenant("demo").await;
    let mut connector = stack.connector("demo", &secret, &[]);
    connector.connected(1).await;
    // Two idle client connections closed one after the other: the idle timeout has passed
    // twice since the tunnel opened.
    for _ in 0..2 {
        let mut idle = TcpStream::connect(stack.relay_addr).await.unwrap();
        idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await
            .unwrap();
        closed_within(&mut idle, "idle client connection").await;
    }
    assert_eq!(*connector.live.borrow(), 1, "tunnel dropped");
    let answer = relay_testkit::client::get(&stack.url("/relay/demo/ping")).await;
    assert_eq!(answer.status, http::StatusCode::OK);
    assert_eq!(answer.text(), "PONG");
}

/// An in-process `relay-identity` on its own database with `limits`.
async fn identity_with(limits: ConnectionLimits) -> (SocketAddr, CancellationToken, Scratch) {
    let scratch = Scratch::new("hostile-identity");
    let url = format!("sqlite://{}", scratch.0.join("relay.db").display());
    let store = relay_store::Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let mut config = relay_identity::Config::with_database_url(url);
    config.connections = limits;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(relay_identity::serve(
        config,
        store,
        listener,
        shutdown.clone(),
    ));
    wait_live(addr).await;
    (addr, shutdown, scratch)
}

/// An in-process `relay-management` on its own database with `limits`.
async fn management_with(limits: ConnectionLimits) -> (SocketAddr, CancellationToken, Scratch) {
    let scratch = Scratch::new("hostile-management");
    let url = format!("sqlite://{}", scratch.0.join("relay.db").display());
    let store = relay_store::Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let mut config = relay_management::Config::with_database_url(url);
    config.connections = limits;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(relay_management::serve(
        config,
        store,
        listener,
        shutdown.clone(),
    ));
    (addr, shutdown, scratch)
}

async fn wait_live(addr: SocketAddr) {
    let url = format!("http://{addr}/health/live");
    until(Duration::from_secs(20), "identity up", || {
        let url = url.clone();
        async move {
            let answer = relay_testkit::client::client()
                .get(url.parse().unwrap())
                .await
                .ok()?;
            answer.status().is_success().then_some(())
        }
    })
    .await;
}

async fn assert_silent_closed(addr: SocketAddr, what: &str) {
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let (after, bytes) = closed_within(&mut silent, what).await;
    assert!(
        after >= Duration::from_millis(800),
        "{what}: closed after {after:?}"
    );
    assert!(bytes.is_empty());
}

async fn assert_half_head_closed(addr: SocketAddr, what: &str) {
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"POST /connect/token HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (after, _) = closed_within(&mut half, what).await;
    assert!(
        after >= Duration::from_millis(800),
        "{what}: closed after {after:?}"
    );
}

#[tokio::test]
async fn the_in_process_token_service_has_the_servers_connection_limits() {
    let stack = stack_with(ConnectionLimits {
        max_per_source: 1,
        first_byte_timeout: Duration::from_secs(30),
        ..ConnectionLimits::default()
    })
    .await;
    let _first = TcpStream::connect(stack.identity_addr).await.unwrap();
    // Give the listener a moment to count the first one: retry until the second is refused.
    let refused_fast = relay_testkit::wait::until(
        Duration::from_secs(10),
        "a second connection refused by the cap",
        || async {
            let mut second = TcpStream::connect(stack.identity_addr).await.ok()?;
            let (after, _) = closed_within(&mut second, "second connection").await;
            (after < Duration::from_secs(5)).then_some(after)
        },
    )
    .await;
    assert!(refused_fast < Duration::from_secs(5));
}

#[tokio::test]
async fn identity_silent_connection_is_closed_after_the_first_byte_timeout() {
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..short_limits()
    };
    let (addr, _shutdown, _scratch) = identity_with(limits).await;
    assert_silent_closed(addr, "identity, silent").await;
}

#[tokio::test]
async fn identity_half_request_head_is_closed_after_the_header_timeout() {
    let limits = ConnectionLimits {
        first_byte_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..short_limits()
    };
    let (addr, _shutdown, _scratch) = identity_with(limits).await;
    assert_half_head_closed(addr, "identity, half head").await;
}

#[tokio::test]
async fn management_silent_connection_is_closed_after_the_first_byte_timeout() {
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..short_limits()
    };
    let (addr, _shutdown, _scratch) = management_with(limits).await;
    assert_silent_closed(addr, "management, silent").await;
}

#[tokio::test]
async fn management_half_request_head_is_closed_after_the_header_timeout() {
    let limits = ConnectionLimits {
        first_byte_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..short_limits()
    };
    let (addr, _shutdown, _scratch) = management_with(limits).await;
    assert_half_head_closed(addr, "management, half head").await;
}

#[tokio::test]
async fn metrics_silent_connection_is_closed_after_the_first_byte_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let render: relay_core::metrics::Render = std::sync::Arc::new(String::new);
    tokio::spawn(relay_core::metrics::serve(listener, render, shutdown));
    // The metrics listeners use the default 10 s first-byte timeout.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "metrics connection still open after 30 s"
    );
    assert!(started.elapsed() >= Duration::from_secs(9));
}

/// The real `relay-server --dev` with its file limit lowered (`prlimit`) until accept fails
/// with EMFILE: the accept loop backs off (one warning per episode, not one per 50 ms) and
/// serves again once descriptors are free.
#[tokio::test]
async fn public_accept_loop_backs_off_on_emfile_and_recovers() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("prlimit (util-linux) not found; skipping");
        return;
    }
    let scratch = Scratch::new("hostile-emfile");
    let relay_port = relay_e2e::free_port().to_string();
    let relay_addr = format!("127.0.0.1:{relay_port}");
    let identity_addr = format!("127.0.0.1:{}", relay_e2e::free_port());
    let management_addr = format!("127.0.0.1:{}", relay_e2e::free_port());
    let data_dir = scratch.0.join("dev");
    let server = relay_testkit::process::Proc::spawn(
        "relay-server",
        &[
            "--dev",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--relay-addr",
            &relay_addr,
            "--identity-addr",
            &identity_addr,
            "--management-addr",
            &management_addr,
        ],
        &[],
        &scratch.0,
    );
    let ping = format!("http://{relay_addr}/relay/demo/ping");
    let pong = || async {
        use http_body_util::BodyExt;
        let answer = relay_testkit::client::client()
            .get(ping.parse().unwrap())
            .await
            .ok()?;
        let body = answer.into_body().collect().await.ok()?.to_bytes();
        (body.as_ref() == b"PONG").then_some(())
    };
    until(Duration::from_secs(60), "dev server answering", pong).await;
    let pid = server.pid();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open_fds + 32;
    let lowered = std::process::Command::new("prlimit")
        .args([format!("--pid={pid}"), format!("--nofile={limit}:{limit}")])
        .status()
        .unwrap();
    assert!(lowered.success());
    let warnings = || {
        std::fs::read_to_string(&server.log)
            .unwrap_or_default()
            .matches("Accept failed")
            .count()
    };
    let before = warnings();
    // More silent connections than free descriptors: the rest wait in the backlog.
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(TcpStream::connect(&relay_addr).await.unwrap());
    }
    until(
        Duration::from_secs(10),
        "accept failing with EMFILE",
        || async { (warnings() > before).then_some(()) },
    )
    .await;
    // An observation window: the old loop logged a warning every 50 ms (about 40 here).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = warnings() - before;
    assert!(logged <= 2, "{logged} accept warnings in 2 s");
    drop(silent);
    until(
        Duration::from_secs(20),
        "ping after the sockets closed",
        pong,
    )
    .await;
}
