//! Every row of the public status table (DESIGN.md §5), through a real relay and connector.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use relay_connector::config::TargetConfig;
use relay_e2e::Stack;
use relay_store::TenantConfig;
use relay_testkit::client::{self, Answer, full, get, post, send};
use relay_testkit::target::TestTarget;
use relay_testkit::wait;

#[tokio::test]
async fn ping_echo_and_names_are_case_insensitive() {
    let stack = Stack::start().await;
    let secret = stack.tenant("Acme").await;
    let mut c = stack.connector("acme", &secret, &[]);
    c.connected(1).await;

    let pong = get(&stack.url("/relay/acme/ping")).await;
    assert_eq!(
        (pong.status, pong.text().as_str()),
        (StatusCode::OK, "PONG")
    );
    let pong = get(&stack.url("/relay/ACME/Ping")).await;
    assert_eq!(pong.text(), "PONG");

    let echo = send(
        Request::post(stack.url("/relay/acme/echo"))
            .header("content-type", "application/x-test")
            .body(full("hello relay"))
            .unwrap(),
    )
    .await;
    assert_eq!(echo.status, StatusCode::OK);
    assert_eq!(echo.text(), "hello relay");
    assert_eq!(echo.header("content-type"), Some("application/x-test"));
}

#[tokio::test]
async fn unknown_tenant_is_404_and_missing_connector_is_503_with_retry_after() {
    let stack = Stack::start().await;
    stack.tenant("lonely").await;

    let unknown = get(&stack.url("/relay/nobody/ping")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.header("x-relay-error"), Some("tenant-unknown"));
    let invalid = get(&stack.url("/relay/no%20body/ping")).await;
    assert_eq!(invalid.status, StatusCode::NOT_FOUND);

    let none = get(&stack.url("/relay/lonely/ping")).await;
    assert_eq!(none.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(none.header("retry-after"), Some("5"));
    assert!(none.text().contains("no connector"), "{}", none.text());
}

#[tokio::test]
async fn target_errors_map_to_404_502_504() {
    let stack = Stack::start().await;
    let target = TestTarget::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let secret = stack.tenant("t1").await;
    let targets = BTreeMap::from([
        (
            "down".to_owned(),
            TargetConfig {
                url: closed_url,
                timeout: Duration::from_secs(5),
                follow_redirects: false,
                redirect_origins: Vec::new(),
                ca_file: None,
                ..Default::default()
            },
        ),
        (
            "slow".to_owned(),
            TargetConfig {
                url: target.url(),
                timeout: Duration::from_millis(300),
                follow_redirects: false,
                redirect_origins: Vec::new(),
                ca_file: None,
                ..Default::default()
            },
        ),
    ]);
    let mut c = stack.connector_with("t1", &secret, targets);
    c.connected(1).await;

    let unknown = get(&stack.url("/relay/t1/missing/x")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.header("x-relay-error"), Some("target-unknown"));

    let down = get(&stack.url("/relay/t1/down/x")).await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
    assert_eq!(down.header("x-relay-error"), Some("target-unreachable"));

    let slow = get(&stack.url("/relay/t1/slow/delay/3000")).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(slow.header("x-relay-error"), Some("target-timeout"));

    // A target's own error statuses pass through untouched.
    let teapot = get(&stack.url("/relay/t1/slow/status/418")).await;
    assert_eq!(teapot.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(teapot.header("x-relay-error"), None);
}

#[tokio::test]
async fn request_expiry_gives_504_and_cancels_the_target_call() {
    let stack = Stack::start().await;
    let target = TestTarget::start().await;
    let config = TenantConfig {
        request_expiry_ms: Some(400),
        ..TenantConfig::default()
    };
    let secret = stack.tenant_with("exp", config).await;
    let mut c = stack.connector("exp", &secret, &[("web", target.url())]);
    c.connected(1).await;

    let expired = get(&stack.url("/relay/exp/web/hang")).await;
    assert_eq!(expired.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(expired.header("x-relay-error"), Some("request-expired"));
    wait::until(Duration::from_secs(5), "target call cancelled", || async {
        (target.counters.hang_cancelled.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn body_over_the_limit_is_413_whether_announced_or_streamed() {
    let stack = Stack::start().await;
    let target = TestTarget::start().await;
    let config = TenantConfig {
        max_body_bytes: Some(1000),
        ..TenantConfig::default()
    };
    let secret = stack.tenant_with("small", config).await;
    let mut c = stack.connector("small", &secret, &[("web", target.url())]);
    c.connected(1).await;

    let ok = post(&stack.url("/relay/small/web/sha256"), vec![7u8; 1000]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.text().starts_with("1000 "), "{}", ok.text());

    let announced = post(&stack.url("/relay/small/web/sha256"), vec![7u8; 1001]).await;
    assert_eq!(announced.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Chunked: no Content-Length, the limit trips while streaming.
    let stream = futures_stream(vec![
        Bytes::from(vec![1u8; 600]),
        Bytes::from(vec![2u8; 600]),
    ]);
    let streamed = send(
        Request::post(stack.url("/relay/small/web/sha256"))
            .body(stream)
            .unwrap(),
    )
    .await;
    assert_eq!(
        streamed.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        streamed.text()
    );
}

fn futures_stream(chunks: Vec<Bytes>) -> client::TestBody {
    use http_body_util::{BodyExt, StreamBody};
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, std::io::Error>(hyper::body::Frame::data(c)));
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

#[tokio::test]
async fn clients_need_a_token_when_the_tenant_requires_one() {
    let stack = Stack::start().await;
    let config = TenantConfig {
        require_client_auth: Some(true),
        ..TenantConfig::default()
    };
    let secret = stack.tenant_with("guarded", config).await;
    stack.tenant("other").await;
    let mut c = stack.connector("guarded", &secret, &[]);
    c.connected(1).await;

    let anonymous = get(&stack.url("/relay/guarded/ping")).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));

    // A connector secret is never a client credential, and its token is no client token.
    let refused = token_answer(&stack, "guarded", &secret, "client").await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refused.text()
    );
    let own_connector = client_token_of(&stack, "guarded", &secret, "connector").await;
    let as_client = get_with_bearer(&stack.url("/relay/guarded/ping"), &own_connector).await;
    assert_eq!(as_client.status, StatusCode::UNAUTHORIZED);

    let other_secret = stack.client_secret("other").await;
    let foreign = client_token(&stack, "other", &other_secret).await;
    let wrong = get_with_bearer(&stack.url("/relay/guarded/ping"), &foreign).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let client_secret = stack.client_secret("guarded").await;
    let own = client_token(&stack, "guarded", &client_secret).await;
    let allowed = get_with_bearer(&stack.url("/relay/guarded/ping"), &own).await;
    assert_eq!(
        (allowed.status, allowed.text().as_str()),
        (StatusCode::OK, "PONG")
    );
}

pub async fn client_token(stack: &Stack, tenant: &str, secret: &str) -> String {
    client_token_of(stack, tenant, secret, "client").await
}

async fn get_with_bearer(url: &str, token: &str) -> Answer {
    send(
        Request::get(url)
            .header("authorization", format!("Bearer {token}"))
            .body(full(Bytes::new()))
            .unwrap(),
    )
    .await
}

async fn token_answer(stack: &Stack, tenant: &str, secret: &str, scope: &str) -> Answer {
    let form = format!(
        "grant_type=client_credentials&client_id={tenant}&client_secret={secret}&scope={scope}"
    );
    send(
        Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/connect/token", stack.identity_addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(form))
            .unwrap(),
    )
    .await
}

async fn client_token_of(stack: &Stack, tenant: &str, secret: &str, scope: &str) -> String {
    let answer = token_answer(stack, tenant, secret, scope).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    json["access_token"].as_str().unwrap().to_owned()
}
