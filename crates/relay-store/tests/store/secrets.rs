use relay_store::{Store, StoreError, now_ms};

use crate::harness::store_tests;
use crate::tenants::new_tenant;

store_tests!(
    create_list_verify,
    wrong_secret_and_unknown_tenant,
    revoke,
    expiry,
    several_secrets_are_valid_at_once,
    unknown_tenant_cannot_get_secrets,
);

async fn create_list_verify(store: Store) {
    let tenant = store
        .create_tenant(new_tenant("Acme"))
        .await
        .expect("tenant");
    let (info, plaintext) = store.create_secret(&tenant.id, None).await.expect("secret");
    assert_eq!(plaintext.len(), 43, "32 bytes base64url without padding");
    assert_eq!(info.tenant_id, tenant.id);
    assert_eq!(
        (info.expires_at, info.revoked_at, info.last_used_at),
        (None, None, None)
    );
    assert_eq!(
        store.list_secrets(&tenant.id).await.expect("list"),
        std::slice::from_ref(&info)
    );

    let now = now_ms();
    let verified = store
        .verify_secret("acme", &plaintext, now)
        .await
        .expect("verify");
    assert_eq!(verified, Some(tenant.clone()));
    let listed = store.list_secrets(&tenant.id).await.expect("list");
    assert_eq!(listed[0].last_used_at, Some(now));
}

async fn wrong_secret_and_unknown_tenant(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    let other = store
        .create_tenant(new_tenant("other"))
        .await
        .expect("tenant");
    let (_, plaintext) = store.create_secret(&acme.id, None).await.expect("secret");
    let now = now_ms();
    for (tenant, secret) in [
        ("acme", "wrong"),
        ("acme", ""),
        ("other", plaintext.as_str()),
        ("nobody", plaintext.as_str()),
        ("not a name", plaintext.as_str()),
    ] {
        let verified = store
            .verify_secret(tenant, secret, now)
            .await
            .expect("verify");
        assert_eq!(verified, None, "{tenant} / {secret}");
    }
    assert!(
        store
            .list_secrets(&other.id)
            .await
            .expect("list")
            .is_empty()
    );
    let listed = store.list_secrets(&acme.id).await.expect("list");
    assert_eq!(
        listed[0].last_used_at, None,
        "failed attempts do not count as use"
    );
}

async fn revoke(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    let other = store
        .create_tenant(new_tenant("other"))
        .await
        .expect("tenant");
    let (info, plaintext) = store.create_secret(&acme.id, None).await.expect("secret");

    assert!(
        !store
            .revoke_secret(&other.id, &info.id)
            .await
            .expect("wrong tenant")
    );
    assert!(
        !store
            .revoke_secret(&acme.id, "no-such-secret")
            .await
            .expect("unknown")
    );
    assert!(
        store
            .verify_secret("acme", &plaintext, now_ms())
            .await
            .expect("before")
            .is_some()
    );

    assert!(
        store
            .revoke_secret(&acme.id, &info.id)
            .await
            .expect("revoke")
    );
    let revoked_at = store.list_secrets(&acme.id).await.expect("list")[0].revoked_at;
    assert!(revoked_at.is_some());
    assert_eq!(
        store
            .verify_secret("acme", &plaintext, now_ms())
            .await
            .expect("after"),
        None
    );

    assert!(
        store
            .revoke_secret(&acme.id, &info.id)
            .await
            .expect("revoke again")
    );
    let again = store.list_secrets(&acme.id).await.expect("list")[0].revoked_at;
    assert_eq!(again, revoked_at, "the first revocation time is kept");
}

async fn expiry(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    let now = now_ms();
    let expires_at = now + 60_000;
    let (info, plaintext) = store
        .create_secret(&acme.id, Some(expires_at))
        .await
        .expect("secret");
    assert_eq!(info.expires_at, Some(expires_at));
    assert!(info.is_active(now));
    assert!(!info.is_active(expires_at));

    let before = store
        .verify_secret("acme", &plaintext, expires_at - 1)
        .await
        .expect("before");
    assert!(before.is_some());
    let at = store
        .verify_secret("acme", &plaintext, expires_at)
        .await
        .expect("at expiry");
    assert_eq!(at, None);

    let err = store
        .create_secret(&acme.id, Some(now - 1))
        .await
        .expect_err("past expiry");
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "expires_at",
                ..
            }
        ),
        "{err:?}"
    );
}

async fn several_secrets_are_valid_at_once(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    let (old, old_plain) = store.create_secret(&acme.id, None).await.expect("old");
    let (new, new_plain) = store.create_secret(&acme.id, None).await.expect("new");
    assert_ne!(old_plain, new_plain);
    let now = now_ms();
    assert!(
        store
            .verify_secret("acme", &old_plain, now)
            .await
            .expect("old")
            .is_some()
    );
    assert!(
        store
            .verify_secret("acme", &new_plain, now)
            .await
            .expect("new")
            .is_some()
    );

    store
        .revoke_secret(&acme.id, &old.id)
        .await
        .expect("rotate");
    assert_eq!(
        store
            .verify_secret("acme", &old_plain, now)
            .await
            .expect("old"),
        None
    );
    assert!(
        store
            .verify_secret("acme", &new_plain, now)
            .await
            .expect("new")
            .is_some()
    );
    let ids: Vec<String> = store
        .list_secrets(&acme.id)
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [old.id, new.id]);
}

async fn unknown_tenant_cannot_get_secrets(store: Store) {
    let err = store
        .create_secret("no-such-tenant", None)
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}
