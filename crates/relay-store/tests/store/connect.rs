//! `Store::connect` URL handling, independent of the per-backend tests.

use relay_store::{Backend, Store, StoreError};

use crate::harness::{TestDb, error_chain, temp_dir_path};

#[tokio::test]
async fn sqlite_creates_directories_and_uses_wal() {
    let dir = temp_dir_path();
    let path = dir.join("a").join("b").join("relay.db");
    for url in [
        format!("sqlite://{}", path.display()),
        format!("sqlite:{}", path.display()),
    ] {
        let store = Store::connect(&url).await.expect("connect");
        assert_eq!(store.backend(), Backend::Sqlite);
        store.migrate().await.expect("migrate");
        store.list_tenants().await.expect("query");
        assert!(path.exists());
        let wal = dir.join("a").join("b").join("relay.db-wal");
        assert!(
            wal.exists(),
            "journal_mode=WAL leaves {} while open",
            wal.display()
        );
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn sqlite_in_memory_works() {
    let store = Store::connect("sqlite::memory:").await.expect("connect");
    store.migrate().await.expect("migrate");
    assert!(store.list_tenants().await.expect("list").is_empty());
}

#[tokio::test]
async fn unsupported_scheme_is_invalid() {
    for url in ["mysql://root:pw@localhost/db", "relay.db", "sqlite://"] {
        let err = Store::connect(url).await.expect_err(url);
        assert!(
            matches!(
                err,
                StoreError::Invalid {
                    field: "database_url",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.to_string().contains(":pw@"), "{err}");
    }
}

#[tokio::test]
async fn connect_error_hides_the_password() {
    // Port 1 on loopback refuses at once.
    let err = Store::connect("postgres://relay:hunter2@127.0.0.1:1/relay")
        .await
        .expect_err("nothing listens on port 1");
    let chain = error_chain(&err);
    eprintln!("{chain}");
    assert!(matches!(err, StoreError::Connect { .. }), "{chain}");
    assert!(chain.contains("relay:***@127.0.0.1:1"), "{chain}");
    assert!(!chain.contains("hunter2"), "{chain}");
}

/// Several nodes (separate pools) migrating one fresh database at once must all succeed.
async fn concurrent_migrations(db: TestDb) {
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = Store::connect(&db.url).await.expect("connect");
        tasks.push(tokio::spawn(async move { store.migrate().await }));
    }
    for task in tasks {
        task.await.expect("join").expect("migrate");
    }
    db.store.migrate().await.expect("migrate again");
    assert!(db.store.list_tenants().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_sqlite() {
    concurrent_migrations(TestDb::sqlite_unmigrated().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_postgres() {
    if let Some(db) = TestDb::postgres_unmigrated().await {
        concurrent_migrations(db).await;
    }
}
