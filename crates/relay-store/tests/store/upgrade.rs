//! In-place upgrade to the tenant-lifecycle schema: a database as the previous release left
//! it (secrets without scopes, connections cascading with their tenant, request log keyed
//! by name) keeps its data, and its secrets keep working as connector credentials.

use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
use diesel::Connection;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use relay_store::{CredentialScope, RequestLogFilter, Store, now_ms};

use crate::harness::TestDb;
use crate::tenants::new_tenant;

/// The last migration of the release before tenant ids went into tokens.
const PREVIOUS_RELEASE: &str = "20261205000000";
const OLD_SECRET: &str = "a-secret-from-the-old-release";

#[tokio::test]
async fn sqlite_database_of_the_previous_release_upgrades_in_place() {
    let db = TestDb::sqlite_unmigrated().await;
    upgrades_in_place(&db).await;
}

#[tokio::test]
async fn postgres_database_of_the_previous_release_upgrades_in_place() {
    if let Some(db) = TestDb::postgres_unmigrated().await {
        upgrades_in_place(&db).await;
    }
}

/// Runs `sql` on the test database outside the store (the store's queries need the new
/// schema).
async fn execute(db: &TestDb, sql: &str) {
    match db.url.strip_prefix("sqlite://") {
        Some(path) => {
            let mut conn = diesel::SqliteConnection::establish(path).expect("open SQLite");
            diesel::connection::SimpleConnection::batch_execute(&mut conn, sql)
                .expect("old-schema statements");
        }
        None => {
            let mut conn = AsyncPgConnection::establish(&db.url)
                .await
                .expect("connect PostgreSQL");
            conn.batch_execute(sql)
                .await
                .expect("old-schema statements");
        }
    }
}

async fn upgrades_in_place(db: &TestDb) {
    let store: &Store = &db.store;
    store
        .migrate_through(Some(PREVIOUS_RELEASE))
        .await
        .expect("migrate to the previous release");
    let acme = store
        .create_tenant(new_tenant("acme"))
        .await
        .expect("tenant");
    assert!(
        store.list_secrets(&acme.id).await.is_err(),
        "the previous release's schema has no secret scopes"
    );
    let hash = argon2::Argon2::default()
        .hash_password(OLD_SECRET.as_bytes(), &SaltString::generate(&mut OsRng))
        .expect("hash")
        .to_string();
    let id = &acme.id;
    execute(
        db,
        &format!(
            "INSERT INTO client_secrets (id, tenant_id, hash, created_at) VALUES ('s-old', '{id}', '{hash}', 1);
             INSERT INTO connections (id, tenant_id, origin_id, remote_addr, connected_at, last_seen_at, disconnected_at)
                 VALUES ('c-old', '{id}', 'n1', '10.0.0.1:1', 1, 2, 2);
             INSERT INTO request_log (id, tenant, target, method, path, status, duration_ms, outcome, node, started_at)
                 VALUES ('r-old', 'acme', 'web', 'GET', '/', 200, 1, 'succeeded', 'n1', 1);"
        ),
    )
    .await;

    store.migrate().await.expect("upgrade");

    let verified = store
        .verify_secret(
            "acme",
            OLD_SECRET,
            now_ms(),
            Some(CredentialScope::Connector),
        )
        .await
        .expect("verify")
        .expect("the old secret still works");
    assert_eq!(
        (verified.secret_id.as_str(), verified.scope),
        ("s-old", CredentialScope::Connector)
    );
    assert!(
        store
            .verify_secret("acme", OLD_SECRET, now_ms(), Some(CredentialScope::Client))
            .await
            .expect("verify")
            .is_none(),
        "an old secret is a connector credential only"
    );
    let secrets = store.list_secrets(id).await.expect("secrets");
    assert_eq!(secrets[0].scope, "connector");
    let (rows, total) = store
        .list_request_log(&RequestLogFilter {
            tenant_id: Some(id.clone()),
            take: 10,
            ..Default::default()
        })
        .await
        .expect("request log");
    assert_eq!(
        (total, rows[0].id.as_str()),
        (1, "r-old"),
        "old rows get the tenant's id"
    );
    let connections = store.list_connections(false).await.expect("connections");
    assert_eq!(connections[0].tenant_name.as_deref(), Some("acme"));

    assert!(store.delete_tenant(id).await.expect("delete"));
    let connections = store.list_connections(false).await.expect("connections");
    assert_eq!(
        connections.len(),
        1,
        "history no longer cascades with the tenant"
    );
}
