use relay_store::Store;

use crate::harness::store_tests;

store_tests!(installation_secrets_are_created_once);

async fn installation_secrets_are_created_once(store: Store) {
    let first = store.installation_secret("ack").await.expect("created");
    assert!(first.len() >= 43, "32 random bytes, base64url: {first}");
    let again = store.installation_secret("ack").await.expect("read back");
    assert_eq!(first, again);
    let other = store.installation_secret("other").await.expect("created");
    assert_ne!(first, other);
}
