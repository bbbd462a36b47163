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

/// A hand-made tunnel for `token` that names `replaces` in `x-relay-replaces`; it answers
/// every relayed request with `204` and stays open while the task runs.
async fn raw_tunnel(stack: &Stack, token: &str, replaces: &str) -> tokio::task::JoinHandle<()> {
    raw_tunnel_with_id(stack, token, replaces).await.0
}

/// [`raw_tunnel`], and the tunnel id the relay gave it (`x-relay-tunnel-id`).
async fn raw_tunnel_with_id(
    stack: &Stack,
    token: &str,
    replaces: &str,
) -> (tokio::task::JoinHandle<()>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(stack.relay_addr)
        .await
        .unwrap();
    let head = format!(
        "GET /connector HTTP/1.1\r\nHost: relay\r\nConnection: upgrade\r\nUpgrade: relay-tunnel/1\r\n\
         Authorization: Bearer {token}\r\nx-relay-replaces: {replaces}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "tunnel answer ended");
        answer.push(byte[0]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let id = String::from_utf8_lossy(&answer)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-relay-tunnel-id")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let task = tokio::spawn(async move {
        let service = hyper::service::service_fn(|_req| async {
            let mut r = http::Response::new(http_body_util::Empty::<Bytes>::new());
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok::<_, std::convert::Infallible>(r)
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
            .await;
    });
    (task, id)
}

async fn open_tunnels_of(stack: &Stack, tenant: &str) -> Vec<String> {
    let id = stack
        .store
        .tenant_by_name(tenant)
        .await
        .unwrap()
        .unwrap()
        .id;
    stack
        .store
        .list_connections(true)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.tenant_id == id)
        .map(|c| c.id)
        .collect()
}

/// `x-relay-replaces` lets a connector retire its own old tunnel; a token of tenant A naming
/// tenant B's tunnel must not drain it.
#[tokio::test]
async fn a_tunnel_can_only_replace_a_tunnel_of_its_own_tenant() {
    let stack = Stack::start().await;
    let secret_a = stack.tenant("alpha").await;
    let secret_b = stack.tenant("beta").await;
    let mut a = stack.connector("alpha", &secret_a, &[]);
    let mut b = stack.connector("beta", &secret_b, &[]);
    a.connected(1).await;
    b.connected(1).await;
    let wait_rows = |tenant: &'static str, n: usize| {
        let stack = &stack;
        async move {
            relay_testkit::wait::until(Duration::from_secs(20), "tunnels recorded", || async {
                let open = open_tunnels_of(stack, tenant).await;
                (open.len() == n).then_some(open)
            })
            .await
        }
    };
    let b_tunnel = wait_rows("beta", 1).await.remove(0);
    let a_tunnel = wait_rows("alpha", 1).await.remove(0);
    let token_a = access_token(&token(&stack, "alpha", &secret_a, "connector").await);

    // Tenant A's tunnel names B's: ignored.
    let _hostile = raw_tunnel(&stack, &token_a, &b_tunnel).await;
    wait_rows("alpha", 2).await;
    // Control: naming A's own connector's tunnel drains it, and the connector reconnects.
    let _own = raw_tunnel(&stack, &token_a, &a_tunnel).await;
    relay_testkit::wait::until(
        Duration::from_secs(20),
        "A's old tunnel drained and A reconnected",
        || async {
            let open = open_tunnels_of(&stack, "alpha").await;
            (!open.contains(&a_tunnel) && open.len() == 3).then_some(())
        },
    )
    .await;
    // By now a drain of B's tunnel would have taken effect the same way.
    assert_eq!(open_tunnels_of(&stack, "beta").await, [b_tunnel]);
    assert_eq!(get(&stack.url("/relay/beta/ping")).await.text(), "PONG");
}

/// Issue 22 row 13: another credential of the same tenant must not drain a tunnel either;
/// only a tunnel opened with the same secret can be replaced.
#[tokio::test]
async fn a_tunnel_can_only_replace_a_tunnel_of_its_own_secret() {
    let logs = relay_e2e::logs::captured("info");
    let stack = Stack::start().await;
    let secret_a = stack.tenant("alpha").await;
    let tenant = stack.store.tenant_by_name("alpha").await.unwrap().unwrap();
    let (_, secret_b) = stack
        .store
        .create_secret(&tenant.id, None, relay_store::CredentialScope::Connector)
        .await
        .unwrap();
    let mut a = stack.connector("alpha", &secret_a, &[]);
    a.connected(1).await;
    let wait_rows = |n: usize| {
        let stack = &stack;
        async move {
            relay_testkit::wait::until(Duration::from_secs(20), "tunnels recorded", || async {
                let open = open_tunnels_of(stack, "alpha").await;
                (open.len() == n).then_some(open)
            })
            .await
        }
    };
    let a_tunnel = wait_rows(1).await.remove(0);
    let token_b = access_token(&token(&stack, "alpha", &secret_b, "connector").await);
    let token_a = access_token(&token(&stack, "alpha", &secret_a, "connector").await);

    // The other secret's tunnel names A's: ignored.
    let (_hostile, hostile) = raw_tunnel_with_id(&stack, &token_b, &a_tunnel).await;
    wait_rows(2).await;
    // Control: the same secret's tunnel naming it drains it, and the connector reconnects.
    let (_own, own) = raw_tunnel_with_id(&stack, &token_a, &a_tunnel).await;
    relay_testkit::wait::until(
        Duration::from_secs(20),
        "A's old tunnel drained by a tunnel of its own secret",
        || async {
            let open = open_tunnels_of(&stack, "alpha").await;
            (!open.contains(&a_tunnel) && open.len() == 3).then_some(())
        },
    )
    .await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        !hostile.is_empty() && !text.contains(&format!("by={hostile}")),
        "the other secret's tunnel drained A's:\n{text}"
    );
    assert!(
        text.contains(&format!("tunnel={a_tunnel} by={own}")),
        "{text}"
    );
}

/// Issue 22 row 11: one tenant's credential cannot open unbounded tunnels on a node; a
/// renewal at the cap still gets through (it replaces a tunnel of its own secret).
#[tokio::test]
async fn tunnels_per_tenant_are_capped_by_max_tunnels() {
    let stack = Stack::start().await;
    let secret = stack
        .tenant_with(
            "acme",
            relay_store::TenantConfig {
                max_tunnels: Some(2),
                ..Default::default()
            },
        )
        .await;
    let mut connector = stack.connector("acme", &secret, &[]);
    connector.connected(1).await;
    let bearer = access_token(&token(&stack, "acme", &secret, "connector").await);
    let _second = raw_tunnel(&stack, &bearer, "none").await;
    let refused = open_tunnel(&stack, Some(&bearer)).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("x-relay-error"), Some("tunnel-limit"));
    assert!(refused.header("retry-after").is_some());
    // A renewal names the tunnel it replaces and is let in beyond the cap.
    let open =
        relay_testkit::wait::until(Duration::from_secs(20), "two tunnels recorded", || async {
            let open = open_tunnels_of(&stack, "acme").await;
            (open.len() == 2).then_some(open)
        })
        .await;
    let _renewal = raw_tunnel(&stack, &bearer, &open[0]).await;
    // Other tenants are not affected.
    let other = stack.tenant("beta").await;
    let other_token = access_token(&token(&stack, "beta", &other, "connector").await);
    let _beta = raw_tunnel(&stack, &other_token, "none").await;
}
