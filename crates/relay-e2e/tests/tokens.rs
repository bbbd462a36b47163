//! Tunnel authentication: wrong, expired, foreign and tampered credentials.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use relay_e2e::Stack;
use relay_testkit::client::{Answer, full, get, send};

async fn token(stack: &Stack, tenant: &str, secret: &str, scope: &str) -> Answer {
    send(
        Request::post(format!("http://{}/connect/token", stack.identity_addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(format!(
                "grant_type=client_credentials&client_id={tenant}&client_secret={secret}&scope={scope}"
            )))
            .unwrap(),
    )
    .await
}

fn access_token(answer: &Answer) -> String {
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    json["access_token"].as_str().unwrap().to_owned()
}

async fn open_tunnel(stack: &Stack, bearer: Option<&str>) -> Answer {
    let mut request = Request::get(stack.url("/connector"))
        .header("connection", "upgrade")
        .header("upgrade", "relay-tunnel/1");
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(request.body(full(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn wrong_secret_never_opens_a_tunnel() {
    let stack = Stack::start().await;
    stack.tenant("acme").await;

    let refused = token(&stack, "acme", "not-the-secret", "connector").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        refused.text().contains("invalid_client"),
        "{}",
        refused.text()
    );

    let c = stack.connector("acme", "not-the-secret", &[]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(*c.live.borrow(), 0);
    assert_eq!(
        get(&stack.url("/relay/acme/ping")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn expired_secret_is_rejected() {
    let stack = Stack::start().await;
    let tenant = stack
        .store
        .create_tenant(relay_store::NewTenant {
            name: "short".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let expires = relay_store::now_ms() + 3000;
    let (_, secret) = stack
        .store
        .create_secret(
            &tenant.id,
            Some(expires),
            relay_store::CredentialScope::Connector,
        )
        .await
        .unwrap();
    assert_eq!(
        token(&stack, "short", &secret, "connector").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let refused = token(&stack, "short", &secret, "connector").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.text().contains("invalid_client"));
}

#[tokio::test]
async fn a_tenants_token_serves_only_that_tenant() {
    let stack = Stack::start().await;
    let secret_a = stack.tenant("alpha").await;
    stack.tenant("beta").await;

    // A's secret cannot be used to act as B.
    assert_eq!(
        token(&stack, "beta", &secret_a, "connector").await.status,
        StatusCode::UNAUTHORIZED
    );
    let impostor = stack.connector("beta", &secret_a, &[]);

    let mut honest = stack.connector("alpha", &secret_a, &[]);
    honest.connected(1).await;
    assert_eq!(get(&stack.url("/relay/alpha/ping")).await.text(), "PONG");
    // B has no connector: A's tunnel never receives B's requests.
    assert_eq!(
        get(&stack.url("/relay/beta/ping")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(*impostor.live.borrow(), 0);
}

#[tokio::test]
async fn tampered_missing_and_wrong_scope_tokens_are_refused() {
    let stack = Stack::start().await;
    let secret = stack.tenant("acme").await;

    assert_eq!(
        open_tunnel(&stack, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        open_tunnel(&stack, Some("not.a.jwt")).await.status,
        StatusCode::UNAUTHORIZED
    );

    let good = access_token(&token(&stack, "acme", &secret, "connector").await);
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    // Change one character in the middle of the payload (all its bits are significant):
    // the signature no longer matches.
    let mut payload: Vec<char> = parts[1].chars().collect();
    let middle = payload.len() / 2;
    payload[middle] = if payload[middle] == 'A' { 'B' } else { 'A' };
    parts[1] = payload.into_iter().collect();
    let tampered = parts.join(".");
    let refused = open_tunnel(&stack, Some(&tampered)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.header("x-relay-error"), Some("token-invalid"));

    let client_secret = stack.client_secret("acme").await;
    let client_only = access_token(&token(&stack, "acme", &client_secret, "client").await);
    let refused = open_tunnel(&stack, Some(&client_only)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.header("x-relay-error"), Some("scope-missing"));
}

/// A token signed by the trusted authority but without `tenant_id` (an older relay-identity,
/// another OIDC provider) as relay-identity would sign it.
async fn token_without_tenant_id(stack: &Stack, secret: &str) -> String {
    // A real token first, so that a signing key exists.
    let real = access_token(&token(stack, "acme", secret, "connector").await);
    assert!(!real.is_empty());
    let now_ms = relay_store::now_ms();
    let key = stack
        .store
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.activates_at <= now_ms && k.retires_at.is_none_or(|r| r > now_ms))
        .max_by_key(|k| k.activates_at)
        .expect("a signing key");
    let pair = relay_token::KeyPair::from_pkcs8_pem(&key.private_pem).unwrap();
    let now = now_ms / 1000;
    let claims = relay_token::Claims {
        iss: format!("http://{}", stack.identity_addr),
        aud: vec![relay_token::AUDIENCE_RELAY.into()],
        sub: "acme".into(),
        client_id: "acme".into(),
        tenant: Some("acme".into()),
        tenant_id: None,
        secret_id: None,
        scope: "connector".into(),
        iat: now,
        nbf: now,
        exp: now + 300,
        jti: "no-tenant-id".into(),
    };
    relay_token::sign(&pair, &claims).unwrap()
}

#[tokio::test]
async fn a_token_without_a_tenant_id_is_refused_by_default() {
    let stack = Stack::start().await;
    let secret = stack.tenant("acme").await;
    let unbound = token_without_tenant_id(&stack, &secret).await;
    let refused = open_tunnel(&stack, Some(&unbound)).await;
    assert_eq!(
        refused.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("x-relay-error"), Some("tenant-id-missing"));
}

#[tokio::test]
async fn name_binding_accepts_a_token_without_a_tenant_id() {
    let stack = Stack::start_with(|c| c.identity.allow_name_binding = true).await;
    let secret = stack.tenant("acme").await;
    let unbound = token_without_tenant_id(&stack, &secret).await;
    let opened = open_tunnel(&stack, Some(&unbound)).await;
    assert_eq!(
        opened.status,
        StatusCode::SWITCHING_PROTOCOLS,
        "{}",
        opened.text()
    );
}
