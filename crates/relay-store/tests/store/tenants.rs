use relay_store::{AckMode, Backend, NewTenant, Store, StoreError, TenantConfig};

use crate::harness::store_tests;

store_tests!(
    migrate_is_idempotent,
    create_and_look_up,
    duplicate_name_conflicts_ignoring_case,
    invalid_names_are_rejected,
    list_is_sorted_by_name,
    config_defaults_and_upsert,
    config_validation,
    delete_cascades,
    concurrent_creates,
);

pub fn new_tenant(name: &str) -> NewTenant {
    NewTenant {
        name: name.to_owned(),
        ..NewTenant::default()
    }
}

async fn migrate_is_idempotent(store: Store) {
    store.migrate().await.expect("second migrate");
    store.migrate().await.expect("third migrate");
    assert!(matches!(
        store.backend(),
        Backend::Sqlite | Backend::Postgres
    ));
    store.ping().await.expect("ping");
}

async fn create_and_look_up(store: Store) {
    let created = store
        .create_tenant(NewTenant {
            name: "Acme".into(),
            display_name: Some("Acme Corp".into()),
            description: Some("first tenant".into()),
        })
        .await
        .expect("create");
    assert_eq!(created.name, "Acme");
    assert_eq!(created.created_at, created.updated_at);

    let by_name = store.tenant_by_name("aCME").await.expect("by name");
    assert_eq!(by_name.as_ref(), Some(&created));
    let by_id = store.tenant_by_id(&created.id).await.expect("by id");
    assert_eq!(by_id, Some(created));

    assert_eq!(store.tenant_by_name("other").await.expect("unknown"), None);
    assert_eq!(
        store.tenant_by_name("not a name!").await.expect("invalid"),
        None
    );
    assert_eq!(
        store.tenant_by_id("no-such-id").await.expect("unknown id"),
        None
    );
}

async fn duplicate_name_conflicts_ignoring_case(store: Store) {
    store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("create");
    let err = store
        .create_tenant(new_tenant("ACME"))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    assert_eq!(store.list_tenants().await.expect("list").len(), 1);
}

async fn invalid_names_are_rejected(store: Store) {
    let too_long = "a".repeat(65);
    for name in ["", "has space", "slash/", "ümlaut", too_long.as_str()] {
        let err = store.create_tenant(new_tenant(name)).await.expect_err(name);
        assert!(
            matches!(err, StoreError::Invalid { field: "name", .. }),
            "{name}: {err:?}"
        );
    }
    store
        .create_tenant(new_tenant(&"a".repeat(64)))
        .await
        .expect("64 chars");
    store
        .create_tenant(new_tenant("A-b_9"))
        .await
        .expect("all allowed classes");
    let err = store
        .create_tenant(NewTenant {
            display_name: Some("x".repeat(201)),
            ..new_tenant("long")
        })
        .await
        .expect_err("long display name");
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "display_name",
                ..
            }
        ),
        "{err:?}"
    );
}

async fn list_is_sorted_by_name(store: Store) {
    for name in ["charlie", "Bravo", "alpha"] {
        store.create_tenant(new_tenant(name)).await.expect("create");
    }
    let names: Vec<String> = store
        .list_tenants()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["alpha", "Bravo", "charlie"]);
}

async fn config_defaults_and_upsert(store: Store) {
    let tenant = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("create");
    assert_eq!(
        store.tenant_config(&tenant.id).await.expect("default"),
        TenantConfig::default()
    );

    let cfg = TenantConfig {
        keep_alive_interval_ms: Some(15_000),
        reconnect_min_delay_ms: Some(1_000),
        reconnect_max_delay_ms: Some(30_000),
        request_expiry_ms: Some(60_000),
        max_body_bytes: Some(10 << 20),
        concurrency_limit: Some(8),
        ack_mode: Some(AckMode::ConnectorFinished),
        tracing: Some(true),
        require_client_auth: Some(false),
        max_tunnels: Some(4),
    };
    store
        .set_tenant_config(&tenant.id, &cfg)
        .await
        .expect("insert");
    assert_eq!(store.tenant_config(&tenant.id).await.expect("read"), cfg);

    let cleared = TenantConfig {
        tracing: Some(false),
        ..TenantConfig::default()
    };
    store
        .set_tenant_config(&tenant.id, &cleared)
        .await
        .expect("update");
    assert_eq!(
        store.tenant_config(&tenant.id).await.expect("read again"),
        cleared
    );
}

async fn config_validation(store: Store) {
    let tenant = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("create");
    let cases = [
        (
            TenantConfig {
                request_expiry_ms: Some(-1),
                ..Default::default()
            },
            "request_expiry_ms",
        ),
        (
            TenantConfig {
                reconnect_min_delay_ms: Some(5),
                reconnect_max_delay_ms: Some(4),
                ..Default::default()
            },
            "reconnect_max_delay_ms",
        ),
        (
            TenantConfig {
                concurrency_limit: Some(0),
                ..Default::default()
            },
            "concurrency_limit",
        ),
    ];
    for (cfg, expected) in cases {
        let err = store
            .set_tenant_config(&tenant.id, &cfg)
            .await
            .expect_err(expected);
        assert!(
            matches!(err, StoreError::Invalid { field, .. } if field == expected),
            "{err:?}"
        );
    }
    let err = store
        .set_tenant_config("no-such-tenant", &TenantConfig::default())
        .await
        .expect_err("unknown tenant");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

async fn delete_cascades(store: Store) {
    let tenant = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("create");
    let cfg = TenantConfig {
        tracing: Some(true),
        ..Default::default()
    };
    store
        .set_tenant_config(&tenant.id, &cfg)
        .await
        .expect("config");
    store
        .create_secret(&tenant.id, None, relay_store::CredentialScope::Connector)
        .await
        .expect("secret");

    assert!(store.delete_tenant(&tenant.id).await.expect("delete"));
    assert!(!store.delete_tenant(&tenant.id).await.expect("delete again"));
    assert_eq!(store.tenant_by_name("acme").await.expect("lookup"), None);
    assert!(
        store
            .list_secrets(&tenant.id)
            .await
            .expect("secrets")
            .is_empty()
    );
    assert_eq!(
        store.tenant_config(&tenant.id).await.expect("config"),
        TenantConfig::default()
    );
}

/// Parallel writers must queue (SQLite busy_timeout, pool) instead of failing.
async fn concurrent_creates(store: Store) {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create_tenant(new_tenant(&format!("t{i}"))).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("join").expect("create");
    }
    assert_eq!(store.list_tenants().await.expect("list").len(), 20);
}
