use relay_store::{CredentialScope, Store, StoreError, VerifiedSecret, now_ms};

use crate::harness::store_tests;
use crate::tenants::new_tenant;

store_tests!(
    create_list_verify,
    wrong_secret_and_unknown_tenant,
    revoke,
    expiry,
    several_secrets_are_valid_at_once,
    unknown_tenant_cannot_get_secrets,
    a_secret_grants_only_its_own_scope,
    active_secrets_drop_revoked_expired_and_deleted,
);

async fn create_list_verify(store: Store) {
    let tenant = store
        .create_tenant(new_tenant("Acme"))
        .await
        .expect("tenant");
    let (info, plaintext) = store
        .create_secret(&tenant.id, None, CredentialScope::Connector)
        .await
        .expect("secret");
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
        .verify_secret("acme", &plaintext, now, None)
        .await
        .expect("verify");
    assert_eq!(
        verified,
        Some(VerifiedSecret {
            tenant: tenant.clone(),
            secret_id: info.id.clone(),
            scope: CredentialScope::Connector,
        })
    );
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
    let (_, plaintext) = store
        .create_secret(&acme.id, None, CredentialScope::Connector)
        .await
        .expect("secret");
    let now = now_ms();
    for (tenant, secret) in [
        ("acme", "wrong"),
        ("acme", ""),
        ("other", plaintext.as_str()),
        ("nobody", plaintext.as_str()),
        ("not a name", plaintext.as_str()),
    ] {
        let verified = store
            .verify_secret(tenant, secret, now, None)
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
    let (info, plaintext) = store
        .create_secret(&acme.id, None, CredentialScope::Connector)
        .await
        .expect("secret");

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
            .verify_secret("acme", &plaintext, now_ms(), None)
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
            .verify_secret("acme", &plaintext, now_ms(), None)
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
        .create_secret(&acme.id, Some(expires_at), CredentialScope::Connector)
        .await
        .expect("secret");
    assert_eq!(info.expires_at, Some(expires_at));
    assert!(info.is_active(now));
    assert!(!info.is_active(expires_at));

    let before = store
        .verify_secret("acme", &plaintext, expires_at - 1, None)
        .await
        .expect("before");
    assert!(before.is_some());
    let at = store
        .verify_secret("acme", &plaintext, expires_at, None)
        .await
        .expect("at expiry");
    assert_eq!(at, None);

    let err = store
        .create_secret(&acme.id, Some(now - 1), CredentialScope::Connector)
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
    let (old, old_plain) = store
        .create_secret(&acme.id, None, CredentialScope::Connector)
        .await
        .expect("old");
    let (new, new_plain) = store
        .create_secret(&acme.id, None, CredentialScope::Connector)
        .await
        .expect("new");
    assert_ne!(old_plain, new_plain);
    let now = now_ms();
    assert!(
        store
            .verify_secret("acme", &old_plain, now, None)
            .await
            .expect("old")
            .is_some()
    );
    assert!(
        store
            .verify_secret("acme", &new_plain, now, None)
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
            .verify_secret("acme", &old_plain, now, None)
            .await
            .expect("old"),
        None
    );
    assert!(
        store
            .verify_secret("acme", &new_plain, now, None)
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
        .create_secret("no-such-tenant", None, CredentialScope::Connector)
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

async fn a_secret_grants_only_its_own_scope(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    let (connector, connector_plain) = store
        .create_secret(&acme.id, None, CredentialScope::Connector)
        .await
        .expect("connector secret");
    let (client, client_plain) = store
        .create_secret(&acme.id, None, CredentialScope::Client)
        .await
        .expect("client secret");
    assert_eq!(
        (connector.scope.as_str(), client.scope.as_str()),
        ("connector", "client")
    );
    let now = now_ms();
    let check = |plain: &str, scope| {
        let (store, plain) = (store.clone(), plain.to_owned());
        async move {
            store
                .verify_secret("acme", &plain, now, scope)
                .await
                .expect("verify")
                .map(|v| (v.secret_id, v.scope))
        }
    };
    assert_eq!(
        check(&client_plain, None).await,
        Some((client.id.clone(), CredentialScope::Client)),
        "without a scope asked, the secret's own"
    );
    assert_eq!(
        check(&client_plain, Some(CredentialScope::Client)).await,
        Some((client.id.clone(), CredentialScope::Client))
    );
    assert_eq!(
        check(&client_plain, Some(CredentialScope::Connector)).await,
        None,
        "a client secret is no connector secret"
    );
    assert_eq!(
        check(&connector_plain, Some(CredentialScope::Client)).await,
        None,
        "a connector secret is no client secret"
    );
    assert_eq!(
        check(&connector_plain, Some(CredentialScope::Connector)).await,
        Some((connector.id, CredentialScope::Connector))
    );
}

async fn active_secrets_drop_revoked_expired_and_deleted(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    let beta = store
        .create_tenant(new_tenant("beta"))
        .await
        .expect("tenant");
    let now = now_ms();
    let mut ids = Vec::new();
    for expires in [None, None, Some(now + 60_000)] {
        let (info, _) = store
            .create_secret(&acme.id, expires, CredentialScope::Connector)
            .await
            .expect("secret");
        ids.push(info.id);
    }
    let (of_beta, _) = store
        .create_secret(&beta.id, None, CredentialScope::Connector)
        .await
        .expect("secret");
    ids.push(of_beta.id.clone());
    ids.push("no-such-secret".into());
    assert!(
        store
            .revoke_secret(&acme.id, &ids[1])
            .await
            .expect("revoke")
    );
    let active = store.active_secrets(&ids, now).await.expect("active");
    let expected: std::collections::HashSet<String> =
        [ids[0].clone(), ids[2].clone(), of_beta.id.clone()].into();
    assert_eq!(active, expected);
    let later = store
        .active_secrets(&ids, now + 120_000)
        .await
        .expect("active later");
    assert!(!later.contains(&ids[2]), "expired by then");
    assert!(store.delete_tenant(&beta.id).await.expect("delete"));
    let active = store.active_secrets(&ids, now).await.expect("active");
    assert!(!active.contains(&of_beta.id), "deleted with its tenant");
    assert!(
        store
            .active_secrets(&[], now)
            .await
            .expect("empty")
            .is_empty()
    );
}
