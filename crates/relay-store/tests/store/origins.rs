use relay_store::{NewConnection, OriginRecord, Store};

use crate::harness::store_tests;
use crate::tenants::new_tenant;

store_tests!(
    register_heartbeat_stop,
    sweep_closes_only_dead_origins,
    concurrent_sweeps_are_harmless,
    touch_updates_open_connections,
);

const DEAD_AFTER: i64 = 15_000;

async fn open(store: &Store, id: &str, tenant_id: &str, origin: &str, at: i64) {
    let c = NewConnection {
        id: id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        origin_id: Some(origin.to_owned()),
        remote_addr: "198.51.100.7:50123".into(),
        connector_version: None,
        machine_name: None,
        connected_at: at,
        tenant_name: "acme".into(),
        secret_id: None,
        expires_at: None,
    };
    store
        .record_connection_opened(&c)
        .await
        .unwrap_or_else(|e| panic!("open {id}: {e:?}"));
}

/// `(id, last_seen_at, disconnected_at)` of every connection, by `connected_at`.
async fn connection_states(store: &Store) -> Vec<(String, i64, Option<i64>)> {
    store
        .list_connections(false)
        .await
        .expect("list connections")
        .into_iter()
        .map(|c| (c.id, c.last_seen_at, c.disconnected_at))
        .collect()
}

fn origin(id: &str, started: i64, heartbeat: i64, stopped: Option<i64>) -> OriginRecord {
    OriginRecord {
        id: id.to_owned(),
        started_at: started,
        last_heartbeat_at: heartbeat,
        stopped_at: stopped,
    }
}

async fn register_heartbeat_stop(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    store.register_origin("b", 200).await.expect("register b");
    store.register_origin("a", 100).await.expect("register a");
    assert!(store.heartbeat_origin("a", 150).await.expect("heartbeat"));
    assert!(
        !store
            .heartbeat_origin("nope", 150)
            .await
            .expect("heartbeat unknown")
    );
    assert_eq!(
        store.list_origins().await.expect("list"),
        [origin("a", 100, 150, None), origin("b", 200, 200, None)]
    );

    open(&store, "a1", &acme.id, "a", 110).await;
    open(&store, "b1", &acme.id, "b", 210).await;
    store.stop_origin("a", 300).await.expect("stop");
    assert!(
        !store
            .heartbeat_origin("a", 310)
            .await
            .expect("heartbeat stopped")
    );
    store.stop_origin("a", 400).await.expect("stop again");
    assert_eq!(
        store.list_origins().await.expect("list"),
        [
            origin("a", 100, 150, Some(300)),
            origin("b", 200, 200, None)
        ]
    );
    assert_eq!(
        connection_states(&store).await,
        [
            ("a1".to_owned(), 300, Some(300)),
            ("b1".to_owned(), 210, None)
        ]
    );

    // A stopped (or swept) node that is still alive registers again.
    store.register_origin("a", 500).await.expect("re-register");
    assert!(store.heartbeat_origin("a", 510).await.expect("heartbeat"));
    assert_eq!(
        store.list_origins().await.expect("list"),
        [origin("b", 200, 200, None), origin("a", 500, 510, None)]
    );
}

async fn sweep_closes_only_dead_origins(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    let now = 100_000;
    store.register_origin("dead", 1_000).await.expect("dead");
    store.register_origin("live", 1_000).await.expect("live");
    store
        .register_origin("stopped", 1_000)
        .await
        .expect("stopped");
    assert!(
        store
            .heartbeat_origin("live", now - DEAD_AFTER)
            .await
            .expect("heartbeat at the limit")
    );
    open(&store, "d1", &acme.id, "dead", 2_000).await;
    open(&store, "d2", &acme.id, "dead", 3_000).await;
    open(&store, "l1", &acme.id, "live", 4_000).await;
    store
        .record_connection_closed("d2", 5_000)
        .await
        .expect("close d2");
    store.stop_origin("stopped", 6_000).await.expect("stop");

    let swept = store
        .sweep_dead_origins(now, DEAD_AFTER)
        .await
        .expect("sweep");
    assert_eq!(swept, ["dead"]);
    assert_eq!(
        connection_states(&store).await,
        [
            ("d1".to_owned(), 2_000, Some(now)),
            ("d2".to_owned(), 5_000, Some(5_000)),
            ("l1".to_owned(), 4_000, None),
        ]
    );
    assert_eq!(
        store.list_origins().await.expect("list"),
        [
            origin("dead", 1_000, 1_000, Some(now)),
            origin("live", 1_000, now - DEAD_AFTER, None),
            origin("stopped", 1_000, 1_000, Some(6_000)),
        ]
    );
    assert!(
        !store
            .heartbeat_origin("dead", now + 1)
            .await
            .expect("swept node must re-register")
    );

    let again = store
        .sweep_dead_origins(now + 1_000, DEAD_AFTER)
        .await
        .expect("sweep again");
    assert_eq!(again, ["live"], "'live' is now past the limit too");
    assert_eq!(
        connection_states(&store).await[2],
        ("l1".to_owned(), 4_000, Some(now + 1_000))
    );
}

async fn concurrent_sweeps_are_harmless(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    let now = 100_000;
    let dead: Vec<String> = (0..8).map(|i| format!("dead-{i}")).collect();
    for (i, id) in dead.iter().enumerate() {
        store.register_origin(id, 1_000).await.expect("register");
        for c in 0..3 {
            open(
                &store,
                &format!("{id}-c{c}"),
                &acme.id,
                id,
                2_000 + i as i64,
            )
            .await;
        }
    }
    store.register_origin("live", now).await.expect("live");
    open(&store, "live-c0", &acme.id, "live", 3_000).await;

    let sweepers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.sweep_dead_origins(now, DEAD_AFTER).await })
        })
        .collect();
    let mut swept = Vec::new();
    for sweeper in sweepers {
        swept.extend(sweeper.await.expect("join").expect("sweep"));
    }
    swept.sort();
    assert_eq!(swept, dead, "every dead origin swept exactly once");

    let states = connection_states(&store).await;
    assert_eq!(states.len(), dead.len() * 3 + 1);
    for (id, _, disconnected) in &states {
        let expected = if id == "live-c0" { None } else { Some(now) };
        assert_eq!(*disconnected, expected, "{id}");
    }
    let stopped: Vec<_> = store
        .list_origins()
        .await
        .expect("list")
        .into_iter()
        .map(|o| (o.id, o.stopped_at))
        .collect();
    assert!(
        stopped
            .iter()
            .all(|(id, at)| *at == (id != "live").then_some(now)),
        "{stopped:?}"
    );
}

async fn touch_updates_open_connections(store: Store) {
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    store.register_origin("n", 100).await.expect("register");
    open(&store, "c1", &acme.id, "n", 100).await;
    open(&store, "c2", &acme.id, "n", 110).await;
    open(&store, "c3", &acme.id, "n", 120).await;
    store
        .record_connection_closed("c2", 150)
        .await
        .expect("close c2");

    let ids = ["c1", "c2", "unknown"].map(String::from);
    assert_eq!(store.touch_connections(&ids, 200).await.expect("touch"), 1);
    assert_eq!(store.touch_connections(&[], 300).await.expect("empty"), 0);
    assert_eq!(
        connection_states(&store).await,
        [
            ("c1".to_owned(), 200, None),
            ("c2".to_owned(), 150, Some(150)),
            ("c3".to_owned(), 120, None),
        ]
    );
}
