use relay_store::{SigningKeyRecord, Store, StoreError};

use crate::harness::store_tests;

store_tests!(
    keys_are_ordered_and_expire,
    duplicate_kid_conflicts,
    debug_hides_private_key
);

fn key(kid: &str, activates_at: i64, expires_at: Option<i64>) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.to_owned(),
        algorithm: "RS256".into(),
        private_pem: format!("-----BEGIN PRIVATE KEY-----\n{kid}\n-----END PRIVATE KEY-----\n"),
        public_jwk: format!(r#"{{"kty":"RSA","kid":"{kid}"}}"#),
        created_at: activates_at - 10,
        activates_at,
        retires_at: expires_at.map(|e| e - 100),
        expires_at,
    }
}

async fn keys_are_ordered_and_expire(store: Store) {
    let keys = [
        key("b", 2_000, Some(5_000)),
        key("c", 3_000, None),
        key("a", 1_000, Some(4_000)),
    ];
    for k in &keys {
        store.insert_signing_key(k).await.expect("insert");
    }
    let stored = store.signing_keys().await.expect("list");
    let kids: Vec<&str> = stored.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids, ["a", "b", "c"]);
    assert_eq!(stored[0], keys[2], "all fields round-trip");

    assert_eq!(
        store
            .delete_expired_signing_keys(3_999)
            .await
            .expect("none yet"),
        0
    );
    assert_eq!(
        store
            .delete_expired_signing_keys(5_000)
            .await
            .expect("delete"),
        2
    );
    let kids: Vec<String> = store
        .signing_keys()
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, ["c"]);
}

async fn duplicate_kid_conflicts(store: Store) {
    store
        .insert_signing_key(&key("k1", 1, None))
        .await
        .expect("insert");
    let err = store
        .insert_signing_key(&key("k1", 2, None))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
}

async fn debug_hides_private_key(_store: Store) {
    let debug = format!("{:?}", key("k1", 1, None));
    assert!(!debug.contains("BEGIN PRIVATE KEY"), "{debug}");
    assert!(debug.contains("k1"));
}
