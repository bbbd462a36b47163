//! Signing keys in the shared database: pre-published successors and several nodes.

mod common;

use common::{Seed, TestIdentity, token_kid};
use hyper::http::StatusCode;
use relay_identity::rotation::KEY_EXPIRY_LEEWAY_MS;
use relay_store::{SigningKeyRecord, now_ms};
use relay_token::{AUDIENCE_RELAY, KeyPair, Validator};

const MIN: i64 = 60_000;
const DAY: i64 = 24 * 60 * MIN;

async fn published_kids(node: &TestIdentity) -> Vec<String> {
    let jwks = node.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::OK);
    let mut kids: Vec<String> = jwks.json["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
        .collect();
    kids.sort();
    kids
}

async fn issue(node: &TestIdentity) -> String {
    let answer = node.token(&node.form("Acme", &node.secret)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    answer.json["access_token"]
        .as_str()
        .expect("token")
        .to_owned()
}

#[tokio::test]
async fn successor_is_published_before_it_signs() {
    let seed = Seed::new().await;
    // A key that retires in 30 minutes: inside the default 1 h pre-publication window.
    let old = KeyPair::generate_async().await.expect("key");
    let now = now_ms();
    let retires_at = now + 30 * MIN;
    seed.store
        .insert_signing_key(&SigningKeyRecord {
            kid: old.kid().to_owned(),
            algorithm: "RS256".into(),
            private_pem: old.to_pkcs8_pem().expect("pem"),
            public_jwk: serde_json::to_string(&old.public_jwk()).expect("jwk"),
            created_at: now - 30 * DAY,
            activates_at: retires_at - 30 * DAY,
            retires_at: Some(retires_at),
            expires_at: Some(retires_at + 60 * MIN + KEY_EXPIRY_LEEWAY_MS),
        })
        .await
        .expect("insert");

    let node = TestIdentity::serve(&seed).await;
    let token = issue(&node).await;
    assert_eq!(
        token_kid(&token),
        old.kid(),
        "the old key signs until it retires"
    );

    let kids = published_kids(&node).await;
    assert_eq!(
        kids.len(),
        2,
        "old key and its successor are published: {kids:?}"
    );
    let keys = seed.store.signing_keys().await.expect("keys");
    let successor = keys
        .iter()
        .find(|k| k.kid != old.kid())
        .expect("successor stored");
    assert_eq!(
        successor.activates_at, retires_at,
        "successor takes over at retirement"
    );
    assert_eq!(successor.retires_at, Some(retires_at + 30 * DAY));

    Validator::new(&node.base, AUDIENCE_RELAY)
        .validate(&token)
        .await
        .expect("valid");
}

#[tokio::test]
async fn nodes_sharing_a_database_share_keys() {
    let seed = Seed::new().await;
    let first = TestIdentity::serve(&seed).await;
    let token_first = issue(&first).await;
    let second = TestIdentity::serve(&seed).await;
    let token_second = issue(&second).await;

    assert_eq!(
        seed.store.signing_keys().await.expect("keys").len(),
        1,
        "the second node reuses the key"
    );
    assert_eq!(token_kid(&token_first), token_kid(&token_second));
    assert_eq!(published_kids(&first).await, published_kids(&second).await);

    // A relying service pointed at one node accepts tokens from both, except for the
    // issuer, which is per node unless `public_url` names the shared address.
    let validator = Validator::new(&first.base, AUDIENCE_RELAY);
    validator.validate(&token_first).await.expect("valid");
    let err = validator
        .validate(&token_second)
        .await
        .expect_err("other issuer");
    assert!(err.to_string().contains("wrong issuer"), "{err}");
}
