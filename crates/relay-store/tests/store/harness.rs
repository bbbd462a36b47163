//! Per-test databases: a fresh SQLite file in a temp directory, and — when reachable — a
//! fresh PostgreSQL database `relay_test_<random>` on the server named by
//! `RELAY_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`). Both are
//! removed when the [`TestDb`] is dropped, also when the test panics.
//!
//! Without a reachable PostgreSQL the PostgreSQL variant of each test is skipped with a
//! message, unless `RELAY_REQUIRE_POSTGRES=1`, which turns the skip into a failure.

use std::path::PathBuf;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use relay_store::{Store, redact_url};

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct TestDb {
    pub store: Store,
    /// The URL `store` was opened with.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin_url: String, database: String },
}

/// Generates one `#[tokio::test]` per backend for each named `async fn(Store)` of the
/// calling module: `<module>::sqlite::<name>` and `<module>::postgres::<name>`.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = $crate::harness::TestDb::sqlite().await;
                    super::$name(db.store.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(db) = $crate::harness::TestDb::postgres().await {
                        super::$name(db.store.clone()).await;
                    }
                }
            )*
        }
    };
}
pub(crate) use store_tests;

pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A directory under the system temp dir, unique to this call (not created).
pub fn temp_dir_path() -> PathBuf {
    std::env::temp_dir().join(format!("relay-store-test-{}", unique_suffix()))
}

impl TestDb {
    /// A migrated store on a new SQLite file in a not-yet-existing nested directory.
    pub async fn sqlite() -> TestDb {
        let db = Self::sqlite_unmigrated().await;
        db.store.migrate().await.expect("migrate SQLite");
        db
    }

    pub async fn sqlite_unmigrated() -> TestDb {
        let dir = temp_dir_path();
        let url = format!("sqlite://{}", dir.join("nested").join("relay.db").display());
        let cleanup = Cleanup::Dir(dir);
        let store = Store::connect(&url)
            .await
            .expect("open temp SQLite database");
        TestDb {
            store,
            url,
            cleanup,
        }
    }

    /// A migrated store on a new PostgreSQL database, or `None` (after printing why) when
    /// PostgreSQL is unreachable and not required.
    pub async fn postgres() -> Option<TestDb> {
        let db = Self::postgres_unmigrated().await?;
        db.store.migrate().await.expect("migrate PostgreSQL");
        Some(db)
    }

    pub async fn postgres_unmigrated() -> Option<TestDb> {
        let admin_url = std::env::var("RELAY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let mut admin = match admin_connection(&admin_url).await {
            Ok(conn) => conn,
            Err(reason) => {
                let message = format!(
                    "PostgreSQL not reachable at {} ({reason}): start PostgreSQL or set \
                     RELAY_TEST_POSTGRES_URL",
                    redact_url(&admin_url)
                );
                if std::env::var("RELAY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                    panic!("{message} (required because RELAY_REQUIRE_POSTGRES=1)");
                }
                eprintln!("skipping PostgreSQL test: {message}");
                return None;
            }
        };
        let database = format!("relay_test_{}", unique_suffix());
        diesel::sql_query(format!("CREATE DATABASE {database}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let cleanup = Cleanup::Postgres {
            admin_url: admin_url.clone(),
            database: database.clone(),
        };
        let url = with_database(&admin_url, &database);
        let store = Store::connect(&url)
            .await
            .expect("connect to test database");
        Some(TestDb {
            store,
            url,
            cleanup,
        })
    }
}

async fn admin_connection(url: &str) -> Result<AsyncPgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, AsyncPgConnection::establish(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// `e` and all its sources, joined by ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(&format!(": {s}"));
        source = s.source();
    }
    chain
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{base}/{database}{query}")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres {
                admin_url,
                database,
            } => {
                let (admin_url, database) = (admin_url.clone(), database.clone());
                // Drop runs inside the test's runtime, which must not be blocked on, so the
                // async cleanup gets its own thread and runtime.
                let dropped = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async {
                        let mut admin = admin_connection(&admin_url)
                            .await
                            .map_err(std::io::Error::other)?;
                        diesel::sql_query(format!(
                            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                        ))
                        .execute(&mut admin)
                        .await
                        .map_err(std::io::Error::other)
                    })
                })
                .join();
                if !matches!(dropped, Ok(Ok(_))) {
                    eprintln!("warning: could not drop test database: {dropped:?}");
                }
            }
        }
    }
}

#[test]
fn with_database_replaces_the_path() {
    assert_eq!(
        with_database("postgres://u@h:5432/test", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(
        with_database("postgres://u@h/test?sslmode=disable", "x"),
        "postgres://u@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
}
