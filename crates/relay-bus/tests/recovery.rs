//! Connection loss and recovery against a real RabbitMQ.
//!
//! Two kinds of loss: the broker closing the connections, and the network dropping them (a TCP
//! proxy in front of the broker cuts them and refuses new ones for a while).
//!
//! The broker is told to close this test's connections with `rabbitmqctl close_connection`, the
//! same server-initiated `connection.close` (320 CONNECTION_FORCED) that
//! `rabbitmqctl close_all_connections` or a broker shutdown sends, but limited to connections
//! whose name carries this test's random prefix, so other suites sharing the broker are left
//! alone. Kept in its own test binary so nothing else of this crate runs meanwhile.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{broker, isolated, next_within, request, response};
use lapin::uri::AMQPUri;
use relay_bus::{Bus, BusError, BusHealth};
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    task::JoinHandle,
    time::{Instant, sleep},
};

const WAIT: Duration = Duration::from_secs(10);

use relay_testkit::broker::close_connections;

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_consume_resume_after_the_broker_drops_the_connections() {
    let Some(url) = broker().await else { return };
    isolated(url, &["phoenix"], &["node-a", "node-b"], |env| async move {
        let a = env.bus("node-a").await;
        let b = env.bus("node-b").await;
        let mut requests = b
            .consume_requests("phoenix", 4)
            .await
            .expect("consume requests");
        let mut responses = a.consume_responses().await.expect("consume responses");

        a.publish_request(
            "phoenix",
            &request("before", "node-a", "phoenix"),
            WAIT,
            false,
        )
        .await
        .expect("publish before");
        let held = next_within(&mut requests, WAIT)
            .await
            .expect("request before the loss");
        assert!(!held.redelivered);

        // Drop every connection of this test (both nodes) from the broker side.
        let (a_before, b_before) = (a.reconnects(), b.reconnects());
        let marker = env.prefix.clone();
        let closed = tokio::task::spawn_blocking(move || close_connections(&marker))
            .await
            .expect("rabbitmqctl task");
        match closed {
            Ok(0) => panic!("no connection of this test found by rabbitmqctl"),
            Ok(n) => assert!(n >= 2, "closed {n} connection(s), expected both nodes'"),
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return;
            }
        }
        wait_until("the loss to be noticed", || !held.ack.is_usable()).await;
        wait_until("both nodes to reconnect", || {
            a.reconnects() > a_before && b.reconnects() > b_before
        })
        .await;

        // The unsettled request comes back, flagged; its old handle can no longer settle it.
        let again = next_within(&mut requests, WAIT)
            .await
            .expect("redelivery after reconnect");
        assert_eq!(again.envelope.request_id, "before");
        assert!(again.redelivered, "redelivered flag set");
        assert!(matches!(held.ack.ack().await, Err(BusError::DeliveryLost)));
        again.ack.ack().await.expect("ack the redelivery");

        // Same Bus instances, same streams: publish and consume work again.
        a.publish_request(
            "phoenix",
            &request("after", "node-a", "phoenix"),
            WAIT,
            false,
        )
        .await
        .expect("publish after reconnect");
        let delivery = next_within(&mut requests, WAIT)
            .await
            .expect("request after reconnect");
        assert_eq!(delivery.envelope.request_id, "after");
        assert!(!delivery.redelivered);
        delivery.ack.ack().await.expect("ack");
        b.publish_response("node-a", &response("after"))
            .await
            .expect("publish response after reconnect");
        let answer = next_within(&mut responses, WAIT)
            .await
            .expect("response after reconnect");
        assert_eq!(answer, response("after"));
        assert_eq!(a.health(), BusHealth::Connected);
        assert_eq!(b.health(), BusHealth::Connected);

        // A second loss right away is survived just the same.
        let a_before = a.reconnects();
        let marker = env.prefix.clone();
        let closed = tokio::task::spawn_blocking(move || close_connections(&marker))
            .await
            .expect("rabbitmqctl task");
        assert!(matches!(closed, Ok(n) if n >= 2), "{closed:?}");
        wait_until("node A to reconnect", || a.reconnects() > a_before).await;
        a.publish_request(
            "phoenix",
            &request("again", "node-a", "phoenix"),
            WAIT,
            false,
        )
        .await
        .expect("publish after the second loss");
        let delivery = next_within(&mut requests, WAIT)
            .await
            .expect("after second loss");
        assert_eq!(delivery.envelope.request_id, "again");
        delivery.ack.ack().await.expect("ack");
    })
    .await;
}

/// A TCP relay in front of the broker that can cut every connection and refuse new ones, to
/// play a network failure or a dead broker (no `connection.close`, just a dropped socket).
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    pipes: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let down = Arc::new(AtomicBool::new(false));
        let pipes: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = tokio::spawn({
            let (down, pipes) = (down.clone(), pipes.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        continue; // dropped: connection reset
                    }
                    let upstream = upstream.clone();
                    let pipe = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    pipes.lock().expect("pipes").push(pipe);
                }
            }
        });
        Proxy {
            port,
            down,
            pipes,
            acceptor,
        }
    }

    /// Drops every relayed connection and refuses new ones.
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for pipe in self.pipes.lock().expect("pipes").drain(..) {
            pipe.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.acceptor.abort();
    }
}

/// `url` with its host and port replaced by 127.0.0.1:`port`.
fn via(url: &str, port: u16) -> (String, String) {
    let uri: AMQPUri = url.parse().expect("broker URL");
    let upstream = format!("{}:{}", uri.authority.host, uri.authority.port);
    let vhost = uri.vhost.replace('%', "%25").replace('/', "%2f");
    let user = &uri.authority.userinfo;
    (
        format!(
            "amqp://{}:{}@127.0.0.1:{port}/{vhost}",
            user.username, user.password
        ),
        upstream,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_wait_out_a_network_outage_and_fail_when_it_lasts() {
    let Some(url) = broker().await else { return };
    isolated(url.clone(), &["outage"], &["px"], |env| async move {
        let (_, upstream) = via(&url, 0);
        let proxy = Proxy::start(upstream).await;
        let mut config = env.config();
        config.urls = vec![via(&url, proxy.port).0];
        config.publish_timeout = Duration::from_secs(1);
        config.max_backoff = Duration::from_millis(300);
        let bus = Bus::connect(config, "px")
            .await
            .expect("connect through the proxy");
        let mut requests = bus.consume_requests("outage", 2).await.expect("consume");
        bus.publish_request("outage", &request("r1", "px", "outage"), WAIT, false)
            .await
            .expect("publish r1");
        let r1 = next_within(&mut requests, WAIT).await.expect("r1");
        r1.ack.ack().await.expect("ack r1");

        proxy.cut();
        wait_until("the outage to be noticed", || {
            matches!(bus.health(), BusHealth::Reconnecting { .. })
        })
        .await;
        let started = Instant::now();
        let result = bus
            .publish_request("outage", &request("lost", "px", "outage"), WAIT, false)
            .await;
        assert!(
            matches!(result, Err(BusError::Unavailable { .. })),
            "{result:?}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
            "publish waited {waited:?} for the connection"
        );

        // Publishing while the network comes back waits for the reconnect, then succeeds.
        let publishing = tokio::spawn({
            let bus = bus.clone();
            async move {
                bus.publish_request("outage", &request("r2", "px", "outage"), WAIT, false)
                    .await
            }
        });
        // Let the publish start waiting while the broker is still unreachable.
        sleep(Duration::from_millis(100)).await;
        proxy.restore();
        publishing
            .await
            .expect("publish task")
            .expect("publish r2 after the outage");
        let mut r2 = next_within(&mut requests, WAIT)
            .await
            .expect("r2 through the same stream");
        if r2.envelope.request_id == "r1" {
            // The ack of r1 was written to the socket just before the cut but may never have
            // reached the broker (AMQP acks are not confirmed), so r1 comes back, flagged.
            assert!(r2.redelivered, "r1 again without the redelivered flag");
            r2.ack.ack().await.expect("ack redelivered r1");
            r2 = next_within(&mut requests, WAIT).await.expect("r2 after r1");
        }
        assert_eq!(r2.envelope.request_id, "r2");
        r2.ack.ack().await.expect("ack r2");
        assert_eq!(bus.health(), BusHealth::Connected);
        assert_eq!(bus.reconnects(), 1);
        bus.close().await;
    })
    .await;
}
