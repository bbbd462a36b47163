//! Management clients, API keys, the request log, tenant paging, configuration versions and
//! disconnect requests.

use relay_store::{
    ApiKeyCreator, NewConnection, RequestLogEntry, RequestLogFilter, Store, StoreError, now_ms,
};

use crate::harness::store_tests;
use crate::tenants::new_tenant;

store_tests!(
    management_clients,
    api_keys,
    request_log_filters_pages_and_purges,
    request_log_batches_larger_than_one_statement_keep_every_row,
    tenant_pages_filter_literally,
    config_versions_and_disconnect_requests,
);

async fn management_clients(store: Store) {
    let (client, secret) = store
        .create_management_client("Ops", "management:read management:write", None)
        .await
        .expect("create");
    assert_eq!(client.name, "Ops");
    assert!(matches!(
        store
            .create_management_client("ops", "management:read", None)
            .await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store
            .create_management_client("bad name", "management:read", None)
            .await,
        Err(StoreError::Invalid { field: "name", .. })
    ));
    let now = now_ms();
    let found = store
        .verify_management_client("OPS", &secret, now)
        .await
        .expect("verify");
    assert_eq!(found.expect("verifies").last_used_at, Some(now));
    assert!(
        store
            .verify_management_client("ops", "wrong", now)
            .await
            .expect("verify")
            .is_none()
    );
    assert!(
        store
            .verify_management_client("nobody", &secret, now)
            .await
            .expect("verify")
            .is_none()
    );
    assert!(store.revoke_management_client("ops").await.expect("revoke"));
    assert!(
        store
            .verify_management_client("ops", &secret, now)
            .await
            .expect("verify")
            .is_none()
    );
    assert!(
        !store
            .revoke_management_client("nobody")
            .await
            .expect("revoke")
    );

    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    let (scoped, _) = store
        .create_management_client("acme-ops", "management:read", Some(&acme.id))
        .await
        .expect("scoped");
    assert_eq!(scoped.tenant_id.as_deref(), Some(acme.id.as_str()));
    assert!(matches!(
        store
            .create_management_client("x", "management:read", Some("no-such-tenant"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(store.delete_tenant(&acme.id).await.expect("delete"));
    let names: Vec<String> = store
        .list_management_clients()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["Ops"], "a tenant's clients go with it");
}

async fn api_keys(store: Store) {
    let now = now_ms();
    let (info, key) = store
        .create_api_key("ci", "management:read", None, None)
        .await
        .expect("key");
    assert!(key.starts_with("rk_"));
    let found = store
        .verify_api_key(&key, now)
        .await
        .expect("verify")
        .expect("valid");
    assert_eq!(found.id, info.id);
    assert_eq!(
        (found.created_by_client, found.created_by_key),
        (None, None)
    );
    // The creator is recorded, and read back by id.
    let (client, _) = store
        .create_management_client("key-maker", "management:read", None)
        .await
        .expect("client");
    let (by_client, _) = store
        .create_api_key_by(
            "made",
            "management:read",
            None,
            None,
            ApiKeyCreator::Client(&client.id),
        )
        .await
        .expect("key by client");
    let (by_key, _) = store
        .create_api_key_by(
            "made by made",
            "management:read",
            None,
            None,
            ApiKeyCreator::Key(&by_client.id),
        )
        .await
        .expect("key by key");
    let read = store
        .api_key(&by_key.id)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(read.created_by_key.as_deref(), Some(by_client.id.as_str()));
    assert_eq!(read.created_by_client, None);
    let read = store
        .api_key(&by_client.id)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(read.created_by_client.as_deref(), Some(client.id.as_str()));
    assert!(store.api_key("nope").await.expect("read").is_none());
    assert_eq!(
        store.management_client(&client.id).await.expect("read"),
        Some(client.clone())
    );
    assert_eq!(
        store
            .management_client_by_name("KEY-MAKER")
            .await
            .expect("read"),
        Some(client)
    );
    assert!(
        store
            .verify_api_key("rk_wrong", now)
            .await
            .expect("verify")
            .is_none()
    );
    assert!(
        store
            .verify_api_key("no-prefix", now)
            .await
            .expect("verify")
            .is_none()
    );
    let (_, short) = store
        .create_api_key("short", "management:read", None, Some(now + 1000))
        .await
        .expect("expiring key");
    assert!(
        store
            .verify_api_key(&short, now + 2000)
            .await
            .expect("verify")
            .is_none(),
        "expired"
    );
    assert!(matches!(
        store
            .create_api_key("past", "management:read", None, Some(now - 1))
            .await,
        Err(StoreError::Invalid {
            field: "expires_at",
            ..
        })
    ));
    assert!(store.revoke_api_key(&info.id).await.expect("revoke"));
    assert!(
        store
            .verify_api_key(&key, now)
            .await
            .expect("verify")
            .is_none()
    );
    assert_eq!(store.list_api_keys().await.expect("list").len(), 4);
}

fn entry(tenant: &str, outcome: &str, started_at: i64) -> RequestLogEntry {
    RequestLogEntry {
        id: uuid::Uuid::now_v7().to_string(),
        tenant: tenant.into(),
        target: "web".into(),
        method: "GET".into(),
        path: "/".into(),
        status: 200,
        request_bytes: None,
        response_bytes: Some(1),
        duration_ms: 1,
        outcome: outcome.into(),
        node: "n".into(),
        started_at,
        tenant_id: Some(format!("id-{tenant}")),
    }
}

async fn request_log_batches_larger_than_one_statement_keep_every_row(store: Store) {
    // Three INSERT statements' worth, with NULL and non-NULL byte counts mixed.
    let entries: Vec<RequestLogEntry> = (0..600)
        .map(|i| RequestLogEntry {
            request_bytes: (i % 2 == 0).then_some(i),
            ..entry("a", "succeeded", 5000 + i)
        })
        .collect();
    store
        .insert_request_log(entries.clone())
        .await
        .expect("insert");
    let (mut rows, total) = store
        .list_request_log(&RequestLogFilter {
            take: 1000,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(total, 600);
    rows.sort_by_key(|r| r.started_at);
    assert_eq!(rows, entries);
}

async fn request_log_filters_pages_and_purges(store: Store) {
    let entries: Vec<RequestLogEntry> = (0..10)
        .map(|i| {
            entry(
                if i < 6 { "a" } else { "b" },
                if i % 5 == 0 { "failed" } else { "succeeded" },
                1000 + i,
            )
        })
        .collect();
    store
        .insert_request_log(entries.clone())
        .await
        .expect("insert");
    store
        .insert_request_log(Vec::new())
        .await
        .expect("empty batch");
    let page = |filter: RequestLogFilter| {
        let store = store.clone();
        async move { store.list_request_log(&filter).await.expect("list") }
    };
    let (rows, total) = page(RequestLogFilter {
        take: 3,
        ..Default::default()
    })
    .await;
    assert_eq!(total, 10);
    assert_eq!(
        rows.iter().map(|r| r.started_at).collect::<Vec<_>>(),
        [1009, 1008, 1007]
    );
    let (_, total) = page(RequestLogFilter {
        tenant_id: Some("id-a".into()),
        take: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(total, 6);
    let (rows, total) = page(RequestLogFilter {
        outcome: Some("failed".into()),
        take: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(total, 2);
    assert!(rows.iter().all(|r| r.outcome == "failed"));
    let (_, total) = page(RequestLogFilter {
        from: Some(1002),
        to: Some(1005),
        take: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(total, 3);
    assert_eq!(store.purge_request_log(1005).await.expect("purge"), 5);
    let (_, total) = page(RequestLogFilter {
        take: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(total, 5);
}

async fn tenant_pages_filter_literally(store: Store) {
    for name in ["a_b", "axb", "Beta", "c%"] {
        if name == "c%" {
            assert!(store.create_tenant(new_tenant(name)).await.is_err());
            continue;
        }
        store.create_tenant(new_tenant(name)).await.expect("tenant");
    }
    let (rows, total) = store
        .list_tenants_page(Some("_"), 0, 10)
        .await
        .expect("page");
    assert_eq!(total, 1, "'_' is not a wildcard");
    assert_eq!(rows[0].name, "a_b");
    let (rows, total) = store.list_tenants_page(None, 1, 1).await.expect("page");
    assert_eq!(total, 3);
    assert_eq!(rows[0].name, "axb");
    let (_, total) = store
        .list_tenants_page(Some("BET"), 0, 10)
        .await
        .expect("page");
    assert_eq!(total, 1);
    let (_, total) = store
        .list_tenants_page(Some("%"), 0, 10)
        .await
        .expect("page");
    assert_eq!(total, 0, "'%' is not a wildcard");
    let beta = store
        .tenant_by_name("beta")
        .await
        .expect("get")
        .expect("exists");
    let updated = store
        .update_tenant(&beta.id, Some("B".into()), None)
        .await
        .expect("update");
    assert_eq!(updated.display_name.as_deref(), Some("B"));
    assert!(matches!(
        store.update_tenant("nope", None, None).await,
        Err(StoreError::NotFound)
    ));
}

async fn config_versions_and_disconnect_requests(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    assert!(
        store
            .tenant_config_versions()
            .await
            .expect("versions")
            .is_empty()
    );
    store
        .set_tenant_config(&acme.id, &relay_store::TenantConfig::default())
        .await
        .expect("config");
    let versions = store.tenant_config_versions().await.expect("versions");
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].0, acme.id);
    store
        .record_connection_opened(&NewConnection {
            id: "c1".into(),
            tenant_id: acme.id.clone(),
            origin_id: Some("node-1".into()),
            remote_addr: "x".into(),
            connector_version: None,
            machine_name: None,
            connected_at: 1,
            tenant_name: "acme".into(),
            secret_id: None,
            expires_at: None,
        })
        .await
        .expect("open");
    assert!(
        store
            .disconnect_requests("node-1")
            .await
            .expect("requests")
            .is_empty()
    );
    assert!(store.request_disconnect("c1").await.expect("request"));
    assert!(!store.request_disconnect("nope").await.expect("request"));
    assert_eq!(
        store.disconnect_requests("node-1").await.expect("requests"),
        ["c1"]
    );
    assert!(
        store
            .disconnect_requests("node-2")
            .await
            .expect("requests")
            .is_empty()
    );
    store
        .record_connection_closed("c1", 2)
        .await
        .expect("close");
    assert!(
        store
            .disconnect_requests("node-1")
            .await
            .expect("requests")
            .is_empty()
    );
    assert!(!store.request_disconnect("c1").await.expect("closed"));
}
