use relay_store::{NewConnection, Store, StoreError};

use crate::harness::store_tests;
use crate::tenants::new_tenant;

store_tests!(
    open_seen_close_list,
    duplicate_id,
    connection_history_outlives_its_tenant
);

fn connection(id: &str, tenant_id: &str, connected_at: i64) -> NewConnection {
    NewConnection {
        id: id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        origin_id: Some("node-1".into()),
        remote_addr: "198.51.100.7:50123".into(),
        connector_version: Some("0.1.0".into()),
        machine_name: Some("site-a".into()),
        connected_at,
        tenant_name: "acme".into(),
        secret_id: None,
        expires_at: None,
    }
}

async fn open_seen_close_list(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    store
        .record_connection_opened(&connection("c2", &acme.id, 200))
        .await
        .expect("open c2");
    store
        .record_connection_opened(&connection("c1", &acme.id, 100))
        .await
        .expect("open c1");

    assert!(store.record_connection_seen("c1", 150).await.expect("seen"));
    assert!(
        !store
            .record_connection_seen("nope", 150)
            .await
            .expect("seen unknown")
    );
    store
        .record_connection_closed("c1", 300)
        .await
        .expect("close");
    store
        .record_connection_closed("c1", 400)
        .await
        .expect("close again is a no-op");
    store
        .record_connection_closed("nope", 400)
        .await
        .expect("unknown is ignored");
    assert!(
        !store
            .record_connection_seen("c1", 500)
            .await
            .expect("seen closed")
    );

    let all = store.list_connections(false).await.expect("all");
    let ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c1", "c2"]);
    assert_eq!(
        (all[0].disconnected_at, all[0].last_seen_at),
        (Some(300), 300)
    );
    assert_eq!((all[1].disconnected_at, all[1].last_seen_at), (None, 200));
    assert_eq!(all[1].machine_name.as_deref(), Some("site-a"));

    let open = store.list_connections(true).await.expect("open");
    assert_eq!(open, [all[1].clone()]);
}

async fn duplicate_id(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    store
        .record_connection_opened(&connection("c1", &acme.id, 1))
        .await
        .expect("open");
    let err = store
        .record_connection_opened(&connection("c1", &acme.id, 2))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
}

/// Connection rows are history: deleting the tenant keeps them (closed by the node that held
/// the tunnel), with the tenant's name as it was.
async fn connection_history_outlives_its_tenant(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    let mut open = connection("c1", &acme.id, 1);
    open.secret_id = Some("s1".into());
    open.expires_at = Some(60_000);
    store.record_connection_opened(&open).await.expect("open");
    assert!(store.delete_tenant(&acme.id).await.expect("delete"));
    store
        .record_connection_closed("c1", 5)
        .await
        .expect("close after the delete");
    let all = store.list_connections(false).await.expect("all");
    assert_eq!(all.len(), 1, "kept, not cascaded away");
    assert_eq!(all[0].tenant_id, acme.id);
    assert_eq!(all[0].tenant_name.as_deref(), Some("acme"));
    assert_eq!(all[0].secret_id.as_deref(), Some("s1"));
    assert_eq!(all[0].expires_at, Some(60_000));
    assert_eq!(all[0].disconnected_at, Some(5));
    // A re-created tenant of the same name is a new id and has no history.
    let again = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("re-created");
    assert_ne!(again.id, acme.id);
    assert!(
        store
            .existing_tenant_ids(&[acme.id.clone(), again.id.clone()])
            .await
            .expect("ids")
            .into_iter()
            .eq([again.id.clone()])
    );
}
