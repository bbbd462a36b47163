//! The bus against a real RabbitMQ: routing between origins, competing consumers, prefetch, TTL,
//! unroutable publishes and broker failover at connect.

mod common;

use std::{collections::BTreeSet, time::Duration};

use bytes::Bytes;
use common::{broker, isolated, next_within, now_ms, request, response};
use relay_bus::{AckEnvelope, BodyRef, Bus, BusConfig, BusError, BusHealth};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_travel_between_two_origins() {
    let Some(url) = broker().await else { return };
    isolated(url, &["acme"], &["node-a", "node-b"], |env| async move {
        let a = env.bus("node-a").await;
        let b = env.bus("node-b").await;
        assert_eq!(a.health(), BusHealth::Connected);
        b.declare_tenant("acme").await.expect("declare tenant");
        let mut requests = b
            .consume_requests("acme", 4)
            .await
            .expect("consume requests");
        let mut responses = a.consume_responses().await.expect("consume responses");
        let mut acks = a.consume_acks().await.expect("consume acks");

        // A large header set with non-UTF-8 values, and a binary inline body.
        let mut sent = request("req-1", "node-a", "acme");
        sent.method = "POST".into();
        sent.headers = (0..300)
            .map(|i| (format!("x-h{i}"), vec![0xff, 0x00, (i % 256) as u8, b'v']))
            .collect();
        sent.headers
            .push(("authorization".into(), b"Bearer abc".to_vec()));
        sent.body = BodyRef::Inline(Bytes::from(vec![0xa5; 64 * 1024]));
        a.publish_request("acme", &sent, Duration::from_secs(30), false)
            .await
            .expect("publish request");

        let delivery = next_within(&mut requests, WAIT)
            .await
            .expect("request arrives at B");
        assert_eq!(delivery.envelope, sent);
        assert!(!delivery.redelivered);
        delivery.ack.ack().await.expect("ack request");

        let mut answer = response("req-1");
        answer.headers.push(("x-raw".into(), vec![0xc3, 0x28]));
        b.publish_response(&delivery.envelope.origin, &answer)
            .await
            .expect("publish response");
        let received = next_within(&mut responses, WAIT)
            .await
            .expect("response arrives at A");
        assert_eq!(received, answer);

        let ack = AckEnvelope {
            request_id: "req-1".into(),
        };
        b.publish_ack("node-a", &ack).await.expect("publish ack");
        assert_eq!(next_within(&mut acks, WAIT).await, Some(ack));

        // Stored bodies travel as a key only.
        let mut stored = request("req-2", "node-a", "acme");
        stored.body = BodyRef::Stored {
            key: "2024/ab/req-2".into(),
            len: 5 << 30,
        };
        a.publish_request("acme", &stored, Duration::from_secs(30), true)
            .await
            .expect("publish persistent request");
        let delivery = next_within(&mut requests, WAIT)
            .await
            .expect("second request");
        assert_eq!(delivery.envelope.body, stored.body);
        delivery.ack.ack().await.expect("ack");

        a.close().await;
        b.close().await;
        assert_eq!(a.health(), BusHealth::Closed);
        assert!(matches!(
            a.publish_ack(
                "node-b",
                &AckEnvelope {
                    request_id: "x".into()
                }
            )
            .await,
            Err(BusError::Closed)
        ));
        assert!(requests.next().await.is_none(), "streams end after close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_split_the_requests() {
    let Some(url) = broker().await else { return };
    isolated(url, &["split"], &["pub", "c1", "c2"], |env| async move {
        let publisher = env.bus("pub").await;
        let node1 = env.bus("c1").await;
        let node2 = env.bus("c2").await;
        publisher.declare_tenant("split").await.expect("declare");
        let mut first = node1.consume_requests("split", 5).await.expect("consume 1");
        let mut second = node2.consume_requests("split", 5).await.expect("consume 2");
        assert_eq!(publisher.consumer_count("split").await.expect("count"), 2);
        assert_eq!(publisher.consumer_count("nobody").await.expect("count"), 0);

        let total = 20;
        for i in 0..total {
            publisher
                .publish_request(
                    "split",
                    &request(&format!("r{i}"), "pub", "split"),
                    Duration::from_secs(30),
                    false,
                )
                .await
                .expect("publish");
        }

        let mut seen = BTreeSet::new();
        let (mut by_first, mut by_second) = (0, 0);
        let deadline = tokio::time::Instant::now() + WAIT;
        while seen.len() < total && tokio::time::Instant::now() < deadline {
            let delivery = tokio::select! {
                Some(d) = first.next() => { by_first += 1; d }
                Some(d) = second.next() => { by_second += 1; d }
                () = tokio::time::sleep_until(deadline) => break,
            };
            assert!(
                seen.insert(delivery.envelope.request_id.clone()),
                "delivered twice"
            );
            delivery.ack.ack().await.expect("ack");
        }
        assert_eq!(seen.len(), total, "every request delivered once");
        assert!(
            by_first > 0 && by_second > 0,
            "both consumers got work: {by_first} / {by_second}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_unsettled_requests() {
    let Some(url) = broker().await else { return };
    isolated(url, &["limited"], &["pf"], |env| async move {
        let bus = env.bus("pf").await;
        let mut requests = bus.consume_requests("limited", 2).await.expect("consume");
        for i in 0..5 {
            bus.publish_request(
                "limited",
                &request(&format!("p{i}"), "pf", "limited"),
                Duration::from_secs(30),
                false,
            )
            .await
            .expect("publish");
        }
        let one = next_within(&mut requests, WAIT).await.expect("first");
        let two = next_within(&mut requests, WAIT).await.expect("second");
        assert_eq!(
            next_within(&mut requests, Duration::from_millis(700))
                .await
                .map(|d| d.envelope.request_id),
            None,
            "a third request while two are unsettled"
        );
        // Settling one frees one slot, and only one.
        one.ack.ack().await.expect("ack");
        let three = next_within(&mut requests, WAIT)
            .await
            .expect("third after an ack");
        assert_eq!(three.envelope.request_id, "p2");
        assert!(
            next_within(&mut requests, Duration::from_millis(300))
                .await
                .is_none()
        );

        // Dropping an unsettled delivery gives it back to the queue.
        drop(two);
        let again = next_within(&mut requests, WAIT)
            .await
            .expect("requeued or next");
        assert!(["p1", "p3"].contains(&again.envelope.request_id.as_str()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_are_never_delivered() {
    let Some(url) = broker().await else { return };
    isolated(url, &["ttl"], &["ttl-node"], |env| async move {
        let bus = env.bus("ttl-node").await;
        bus.declare_tenant("ttl").await.expect("declare");

        // Broker-side TTL: 200 ms, consumed after 500 ms.
        bus.publish_request(
            "ttl",
            &request("short-lived", "ttl-node", "ttl"),
            Duration::from_millis(200),
            false,
        )
        .await
        .expect("publish short-lived");
        // Consumer-side expiry: the broker would keep it, the envelope says it is over.
        let mut stale = request("stale", "ttl-node", "ttl");
        stale.expires_at_ms = now_ms() - 1;
        bus.publish_request("ttl", &stale, Duration::from_secs(30), false)
            .await
            .expect("publish stale");
        tokio::time::sleep(Duration::from_millis(500)).await;
        bus.publish_request(
            "ttl",
            &request("fresh", "ttl-node", "ttl"),
            Duration::from_secs(30),
            false,
        )
        .await
        .expect("publish fresh");

        let mut requests = bus.consume_requests("ttl", 10).await.expect("consume");
        let first = next_within(&mut requests, WAIT).await.expect("a delivery");
        assert_eq!(first.envelope.request_id, "fresh", "expired ones skipped");
        first.ack.ack().await.expect("ack");
        assert!(
            next_within(&mut requests, Duration::from_millis(300))
                .await
                .is_none()
        );

        assert!(matches!(
            bus.publish_request(
                "ttl",
                &request("z", "ttl-node", "ttl"),
                Duration::ZERO,
                false
            )
            .await,
            Err(BusError::Expired)
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_publishes_are_reported() {
    let Some(url) = broker().await else { return };
    isolated(url, &["declared"], &["lonely"], |env| async move {
        let bus = env.bus("lonely").await;
        let result = bus
            .publish_request(
                "never-declared",
                &request("u1", "lonely", "never-declared"),
                Duration::from_secs(30),
                true,
            )
            .await;
        match result {
            Err(BusError::Unroutable { routing_key }) => {
                assert_eq!(routing_key, env.names().request_queue("never-declared"));
            }
            other => panic!("expected Unroutable, got {other:?}"),
        }
        assert!(matches!(
            bus.publish_response("gone-node", &response("u1")).await,
            Err(BusError::Unroutable { .. })
        ));
        // Routable publishes on the same channels still work afterwards.
        bus.declare_tenant("declared").await.expect("declare");
        bus.publish_request(
            "declared",
            &request("u2", "lonely", "declared"),
            Duration::from_secs(30),
            false,
        )
        .await
        .expect("routable publish");
        assert!(matches!(
            bus.declare_tenant("").await,
            Err(BusError::InvalidName { .. })
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_skips_dead_cluster_nodes() {
    let Some(url) = broker().await else { return };
    isolated(url, &[], &["failover"], |env| async move {
        let mut config = env.config();
        config
            .urls
            .insert(0, "amqp://guest:guest@127.0.0.1:1/%2f".into());
        let bus = Bus::connect(config, "failover")
            .await
            .expect("second URL answers");
        assert_eq!(bus.health(), BusHealth::Connected);
        bus.delete_origin_queues()
            .await
            .expect("delete origin queues");
    })
    .await;
}

#[tokio::test]
async fn connect_gives_up_when_no_broker_answers() {
    let mut config = BusConfig::new(["amqp://guest:secret@127.0.0.1:1/%2f"], "none.");
    config.connect_timeout = Duration::from_millis(800);
    config.max_backoff = Duration::from_millis(200);
    match Bus::connect(config, "n").await {
        Err(BusError::Unavailable { .. }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Compile-time check: the server spawns these futures, so they must be `Send`.
#[allow(dead_code)]
fn public_futures_are_send(bus: &Bus, envelope: &relay_bus::RequestEnvelope) {
    fn send<T: Send>(_: T) {}
    send(bus.clone());
    send(Bus::connect(BusConfig::new(["amqp://h"], ""), "o"));
    send(bus.declare_tenant("t"));
    send(bus.delete_tenant("t"));
    send(bus.consumer_count("t"));
    send(bus.publish_request("t", envelope, Duration::ZERO, false));
    send(bus.consume_requests("t", 1));
    send(bus.publish_response("o", &response("r")));
    send(bus.consume_responses());
    send(bus.publish_ack(
        "o",
        &AckEnvelope {
            request_id: "r".into(),
        },
    ));
    send(bus.consume_acks());
    send(bus.close());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_brokers_are_verified_against_the_configured_ca() {
    let Some(url) = broker().await else { return };
    // amqp://user:pass@host:port/vhost → the same broker behind TLS at localhost:{front}.
    let (credentials, rest) = url
        .trim_start_matches("amqp://")
        .split_once('@')
        .expect("a URL with credentials");
    let (upstream, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let dir = std::env::temp_dir().join(format!("relay-bus-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca = relay_testkit::tls::TestCa::new(&dir);
    let port = relay_testkit::tls::tls_front(upstream, &ca, &dir).await;
    let ca_file = ca.ca_file.clone();
    let tls_url = format!("amqps://{credentials}@localhost:{port}/{vhost}");
    isolated(url, &["acme"], &["node-a"], move |env| async move {
        // Without the CA the broker's certificate is not trusted (logged with the reason).
        let mut untrusted = env.config();
        untrusted.urls = vec![tls_url.clone()];
        untrusted.connect_timeout = Duration::from_secs(2);
        let error = Bus::connect(untrusted, "node-a")
            .await
            .expect_err("an unknown CA must be refused");
        assert!(matches!(error, BusError::Unavailable { .. }), "{error:?}");

        let mut trusted = env.config();
        trusted.urls = vec![tls_url];
        trusted.ca_pem = Some(std::fs::read_to_string(&ca_file).expect("CA file"));
        let a = Bus::connect(trusted, "node-a")
            .await
            .expect("amqps with the CA");
        a.declare_tenant("acme").await.expect("declare over TLS");
        let mut requests = a.consume_requests("acme", 1).await.expect("consume");
        let sent = request("tls-1", "node-a", "acme");
        a.publish_request("acme", &sent, Duration::from_secs(30), false)
            .await
            .expect("publish over TLS");
        let delivery = next_within(&mut requests, WAIT).await.expect("delivered");
        assert_eq!(delivery.envelope, sent);
        delivery.ack.ack().await.expect("ack");
        a.close().await;
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
