//! Shared set-up of the RabbitMQ tests: broker discovery (skip or fail), an isolated name prefix
//! per test, clean-up of everything the test declared, and envelope builders.

#![allow(dead_code)]

use std::{future::Future, time::Duration};

use bytes::Bytes;
use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};
use relay_bus::{BodyRef, Bus, BusConfig, Names, RequestEnvelope, ResponseEnvelope};
use tokio::time::timeout;

pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn amqp_url() -> String {
    std::env::var("RELAY_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "relay_bus=debug,lapin=off".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The broker URL, or `None` (after saying why) when no broker answers and
/// `RELAY_REQUIRE_RABBITMQ=1` is not set.
pub async fn broker() -> Option<String> {
    init_tracing();
    let url = amqp_url();
    let probe = timeout(
        Duration::from_secs(3),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await;
    let error = match probe {
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "probe".into()).await;
            return Some(url);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    let message = format!(
        "RabbitMQ is not reachable ({error}): start RabbitMQ (rabbitmq-server -detached) \
         or set RELAY_TEST_AMQP_URL"
    );
    if std::env::var("RELAY_REQUIRE_RABBITMQ").as_deref() == Ok("1") {
        panic!("{message} (RELAY_REQUIRE_RABBITMQ=1)");
    }
    eprintln!("SKIPPED: {message}");
    None
}

/// One test's private corner of the broker.
#[derive(Clone)]
pub struct TestEnv {
    pub url: String,
    pub prefix: String,
}

impl TestEnv {
    pub fn config(&self) -> BusConfig {
        let mut config = BusConfig::new([self.url.clone()], self.prefix.clone());
        config.connect_timeout = Duration::from_secs(5);
        config.publish_timeout = Duration::from_secs(5);
        config.origin_queue_expiry = Duration::from_secs(120);
        config.max_backoff = Duration::from_millis(500);
        config
    }

    pub async fn bus(&self, origin: &str) -> Bus {
        Bus::connect(self.config(), origin)
            .await
            .expect("connecting to RabbitMQ")
    }

    pub fn names(&self) -> Names {
        Names::new(self.prefix.clone())
    }
}

/// Runs `body` with a fresh prefix, then deletes the request queues of `tenants`, the queues of
/// `origins` and the exchange, also when `body` panics (the panic is re-raised afterwards).
pub async fn isolated<F, Fut>(url: String, tenants: &[&str], origins: &[&str], body: F)
where
    F: FnOnce(TestEnv) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let prefix = format!(
        "relaytest-{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let env = TestEnv {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let outcome = tokio::spawn(body(env.clone())).await;
    cleanup(&url, &env.names(), tenants, origins).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn cleanup(url: &str, names: &Names, tenants: &[&str], origins: &[&str]) {
    let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await else {
        eprintln!("clean-up: cannot connect");
        return;
    };
    let mut queues: Vec<String> = tenants.iter().map(|t| names.request_queue(t)).collect();
    for origin in origins {
        queues.push(names.response_queue(origin));
        queues.push(names.ack_queue(origin));
    }
    for queue in queues {
        // A fresh channel each time: deleting a missing queue is fine, but any error closes it.
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .exchange_delete(
                names.exchange().as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = connection.close(200, "clean-up".into()).await;
}

pub fn request(id: &str, origin: &str, tenant: &str) -> RequestEnvelope {
    RequestEnvelope {
        request_id: id.to_owned(),
        origin: origin.to_owned(),
        tenant: tenant.to_owned(),
        target: "erp".into(),
        method: "GET".into(),
        path_and_query: format!("/orders/{id}?expand=lines"),
        headers: vec![("accept".into(), b"application/json".to_vec())],
        body: BodyRef::Empty,
        expires_at_ms: now_ms() + 60_000,
        mode: "relay".into(),
        ack_mode: "connector-received".into(),
    }
}

pub fn response(id: &str) -> ResponseEnvelope {
    ResponseEnvelope {
        request_id: id.to_owned(),
        status: 200,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: BodyRef::Inline(Bytes::from(format!("answer to {id}"))),
        error: None,
        connector_machine: Some("site-1".into()),
        connector_version: Some("1.2.3".into()),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Waits for the next item, at most `wait`; `None` when nothing came.
pub async fn next_within<T>(
    subscription: &mut relay_bus::Subscription<T>,
    wait: Duration,
) -> Option<T> {
    timeout(wait, subscription.next()).await.ok().flatten()
}
