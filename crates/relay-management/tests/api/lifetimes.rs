//! Management credentials live no longer than what issued them: a token while its management
//! client exists, is not revoked and its tenant (by id) exists; an API key while its tenant
//! and the credential that created it do. Each revocation is done as an operator does it
//! (through the API, or `relayctl admin revoke` on the database), and each check is what a
//! caller sees.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use relay_management::{CACHE_TTL, MAX_KEY_CHAIN};
use serde_json::{Value, json};

use crate::harness::Stack;

const RW: &str = "management:read management:write";

/// Longest wait for a change the API promises within [`CACHE_TTL`].
const DEADLINE: Duration = Duration::from_secs(10);

/// One test per behaviour and database: `sqlite::NAME` always, `postgres::NAME` when
/// PostgreSQL is reachable.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let stack = crate::harness::Stack::start(crate::harness::Db::Sqlite)
                        .await
                        .unwrap();
                    super::$name(&stack).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(stack) =
                        crate::harness::Stack::start(crate::harness::Db::Postgres).await
                    {
                        super::$name(&stack).await;
                    }
                }
            )*
        }
    };
}

on_both_stores!(
    token_of_a_deleted_tenant_is_refused_after_its_name_is_reused,
    revoked_client_tokens_stop_within_the_cache_interval,
    api_key_stops_with_the_client_whose_token_created_it,
    api_key_stops_with_the_key_that_created_it,
    keys_created_by_keys_end_after_a_bounded_chain,
    credentials_the_store_cannot_confirm_are_refused,
);

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn api_key(key: &str) -> String {
    format!("ApiKey {key}")
}

async fn call(
    s: &Stack,
    method: Method,
    path: &str,
    auth: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    s.call_raw(
        method,
        path,
        Some(auth),
        body.map(|b| Bytes::from(b.to_string())),
    )
    .await
}

/// Repeats the call until it answers `want` (then returns the body), failing after
/// [`DEADLINE`] with the last answer.
async fn until_answers(
    s: &Stack,
    want: StatusCode,
    method: Method,
    path: &str,
    auth: &str,
    body: Option<Value>,
) -> Value {
    let what = format!("{method} {path} answering {want}");
    let mut last = None;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, answer) = call(s, method.clone(), path, auth, body.clone()).await;
        if status == want {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {status} {answer} after {DEADLINE:?} (before: {last:?})"
        );
        last = Some((status, answer));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_tenant(s: &Stack, admin: &str, name: &str) {
    let (status, body) = call(
        s,
        Method::POST,
        "/management/tenants",
        admin,
        Some(json!({ "name": name })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn create_key(s: &Stack, auth: &str, body: Value) -> (String, String) {
    let (status, created) = call(s, Method::POST, "/management/apikeys", auth, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    )
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

/// Issue 22 row 2: a tenant-scoped token kept after its tenant was deleted and re-created by
/// someone else must not act for the new tenant (it created an API key for it).
async fn token_of_a_deleted_tenant_is_refused_after_its_name_is_reused(s: &Stack) {
    let admin = bearer(&s.token("ops", RW, None).await);
    create_tenant(s, &admin, "acme").await;
    let old = bearer(&s.token("acme-ops", RW, Some("acme")).await);
    let (status, _) = call(s, Method::GET, "/management/tenants/acme", &old, None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _) = call(s, Method::DELETE, "/management/tenants/acme", &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    create_tenant(s, &admin, "acme").await;

    let answer = until_answers(
        s,
        StatusCode::UNAUTHORIZED,
        Method::POST,
        "/management/apikeys",
        &old,
        Some(json!({"name": "takeover", "tenant": "acme"})),
    )
    .await;
    assert_eq!(answer["error"], "unauthorized", "{answer}");
    assert!(
        message(&answer).contains("tenant no longer exists"),
        "{answer}"
    );
    for (method, path, body) in [
        (Method::GET, "/management/tenants", None),
        (Method::GET, "/management/tenants/acme", None),
        (Method::GET, "/management/tenants/acme/config", None),
        (Method::GET, "/management/tenants/acme/secrets", None),
        (
            Method::POST,
            "/management/tenants/acme/secrets",
            Some(json!({})),
        ),
        (Method::GET, "/management/apikeys", None),
        (Method::GET, "/management/connections", None),
        (Method::GET, "/management/requests", None),
    ] {
        let (status, answer) = call(s, method.clone(), path, &old, body).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {answer}"
        );
    }
    // Nothing was created for the new owner.
    let (_, keys) = call(s, Method::GET, "/management/apikeys", &admin, None).await;
    assert_eq!(keys["total"], 0, "{keys}");
    let (_, secrets) = call(
        s,
        Method::GET,
        "/management/tenants/acme/secrets",
        &admin,
        None,
    )
    .await;
    assert_eq!(secrets["total"], 0, "{secrets}");
}

/// Issue 22 row 8: the tokens of a revoked management client (global or tenant-scoped) stop
/// working within the cache interval, not at their expiry.
async fn revoked_client_tokens_stop_within_the_cache_interval(s: &Stack) {
    let admin = bearer(&s.token("ops", RW, None).await);
    create_tenant(s, &admin, "acme").await;
    let tokens = [
        ("deployer", bearer(&s.token("deployer", RW, None).await)),
        (
            "acme-ops",
            bearer(&s.token("acme-ops", RW, Some("acme")).await),
        ),
    ];
    let secrets = "/management/tenants/acme/secrets";
    for (client, token) in &tokens {
        let (status, body) = call(s, Method::POST, secrets, token, Some(json!({}))).await;
        assert_eq!(status, StatusCode::CREATED, "{client}: {body}");
    }

    let revoked = Instant::now();
    for (client, _) in &tokens {
        assert!(s.store.revoke_management_client(client).await.unwrap());
    }
    // Waiting on a read: a write accepted within the cache interval would be one too many.
    for (client, token) in &tokens {
        let answer = until_answers(
            s,
            StatusCode::UNAUTHORIZED,
            Method::GET,
            secrets,
            token,
            None,
        )
        .await;
        assert!(message(&answer).contains("revoked"), "{client}: {answer}");
    }
    let took = revoked.elapsed();
    assert!(
        took < CACHE_TTL + Duration::from_secs(3),
        "refused only after {took:?}"
    );
    for (client, token) in &tokens {
        for (path, body) in [
            (secrets, json!({})),
            ("/management/apikeys", json!({"name": "forever"})),
        ] {
            let (status, answer) = call(s, Method::POST, path, token, Some(body)).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{client} {path}: {answer}"
            );
        }
    }
    let (_, listed) = call(s, Method::GET, secrets, &admin, None).await;
    assert_eq!(listed["total"], 2, "only the secrets made before: {listed}");
    let (_, keys) = call(s, Method::GET, "/management/apikeys", &admin, None).await;
    assert_eq!(keys["total"], 0, "{keys}");
}

/// Issue 22 row 8: an API key created with a token stops when that token's client is
/// revoked, although the key itself never expires.
async fn api_key_stops_with_the_client_whose_token_created_it(s: &Stack) {
    let admin = bearer(&s.token("ops", RW, None).await);
    create_tenant(s, &admin, "acme").await;
    let ci = bearer(&s.token("ci", RW, None).await);
    let (id, key) = create_key(s, &ci, json!({"name": "nightly"})).await;
    let key = api_key(&key);
    let secrets = "/management/tenants/acme/secrets";
    let (status, body) = call(s, Method::POST, secrets, &key, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    assert!(s.store.revoke_management_client("ci").await.unwrap());
    let answer = until_answers(
        s,
        StatusCode::UNAUTHORIZED,
        Method::POST,
        secrets,
        &key,
        Some(json!({})),
    )
    .await;
    assert!(
        message(&answer).contains("created this API key"),
        "{answer}"
    );
    let (status, _) = call(s, Method::GET, "/management/tenants", &key, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, keys) = call(s, Method::GET, "/management/apikeys", &admin, None).await;
    let listed = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(listed["active"], false, "{listed}");
    assert_eq!(listed["revoked_at"], Value::Null, "{listed}");
}

/// A key created by a key stops when its creator is revoked through the API.
async fn api_key_stops_with_the_key_that_created_it(s: &Stack) {
    let admin = bearer(&s.token("ops", RW, None).await);
    let (parent_id, parent) = create_key(s, &admin, json!({"name": "parent"})).await;
    let (_, child) = create_key(s, &api_key(&parent), json!({"name": "child"})).await;
    let child = api_key(&child);
    let (status, _) = call(s, Method::GET, "/management/tenants", &child, None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _) = call(
        s,
        Method::DELETE,
        &format!("/management/apikeys/{parent_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let answer = until_answers(
        s,
        StatusCode::UNAUTHORIZED,
        Method::GET,
        "/management/tenants",
        &child,
        None,
    )
    .await;
    assert!(
        message(&answer).contains("created this API key"),
        "{answer}"
    );
}

/// Each key in a chain of keys creating keys is checked on every use, so the chain is
/// bounded: a key with [`MAX_KEY_CHAIN`] keys above it may be used but creates no more.
async fn keys_created_by_keys_end_after_a_bounded_chain(s: &Stack) {
    let admin = bearer(&s.token("ops", RW, None).await);
    let (_, mut key) = create_key(s, &admin, json!({"name": "root"})).await;
    for depth in 1..=MAX_KEY_CHAIN {
        key = create_key(s, &api_key(&key), json!({ "name": format!("k{depth}") }))
            .await
            .1;
    }
    let last = api_key(&key);
    let (status, _) = call(s, Method::GET, "/management/tenants", &last, None).await;
    assert_eq!(status, StatusCode::OK, "the deepest key works");
    let (status, answer) = call(
        s,
        Method::POST,
        "/management/apikeys",
        &last,
        Some(json!({"name": "one too many"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(message(&answer).contains("chain"), "{answer}");
}

/// Fail closed: when the store cannot say whether a credential is still active, the request
/// is refused with 503 (not served on a stale belief), and served again once it can.
async fn credentials_the_store_cannot_confirm_are_refused(s: &Stack) {
    let token = bearer(&s.token("ops", RW, None).await);
    let (_, key) = create_key(s, &token, json!({"name": "bot"})).await;
    let key = api_key(&key);
    for auth in [&token, &key] {
        let (status, body) = call(s, Method::GET, "/management/tenants", auth, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    s.sql("ALTER TABLE management_clients RENAME TO management_clients_away")
        .await;
    for auth in [&token, &key] {
        let answer = until_answers(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            Method::GET,
            "/management/tenants",
            auth,
            None,
        )
        .await;
        assert_eq!(answer["error"], "unavailable", "{answer}");
    }

    s.sql("ALTER TABLE management_clients_away RENAME TO management_clients")
        .await;
    for auth in [&token, &key] {
        until_answers(
            s,
            StatusCode::OK,
            Method::GET,
            "/management/tenants",
            auth,
            None,
        )
        .await;
    }
}
