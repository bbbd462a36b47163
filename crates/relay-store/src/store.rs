//! [`Store`]: the connection pool over either backend, `connect`, `migrate`, and the
//! `with_conn!` macro that lets every query be written once for both backends.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use diesel::SqliteConnection;
use diesel::prelude::*;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::{StoreError, redact_url};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Applied to every new SQLite connection. `busy_timeout` comes first so that switching
/// to WAL waits for other writers instead of failing.
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";
const SQLITE_POOL_SIZE: usize = 8;
const POSTGRES_POOL_SIZE: usize = 16;
/// Serialises concurrent `migrate` calls of several nodes (arbitrary, fixed key).
const MIGRATION_LOCK_KEY: i64 = 0x5245_4c41_5900; // "RELAY\0"

/// Upper bound for taking a connection from the pool (including opening a new one).
pub(crate) const POOL_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) type SqlitePool = Pool<SyncConnectionWrapper<SqliteConnection>>;
pub(crate) type PgPool = Pool<AsyncPgConnection>;

/// Database backend behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub(crate) enum DbPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Handle to the configuration database. Cheap to clone; all clones share one pool.
#[derive(Clone)]
pub struct Store {
    pool: Arc<DbPool>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

/// Runs `$body` with `$conn: &mut C` bound to a pooled connection of the store's backend.
/// The body is expanded once per backend, so it must compile for both; it may use `.await`
/// and `?` (errors convert into [`StoreError`]).
macro_rules! with_conn {
    ($store:expr, |$conn:ident| $body:expr) => {
        match $store.pool() {
            $crate::store::DbPool::Sqlite(pool) => {
                let mut guard = ::tokio::time::timeout($crate::store::POOL_TIMEOUT, pool.get())
                    .await
                    .map_err(|_| $crate::StoreError::PoolTimeout)??;
                let $conn = &mut *guard;
                $body
            }
            $crate::store::DbPool::Postgres(pool) => {
                let mut guard = ::tokio::time::timeout($crate::store::POOL_TIMEOUT, pool.get())
                    .await
                    .map_err(|_| $crate::StoreError::PoolTimeout)??;
                let $conn = &mut *guard;
                $body
            }
        }
    };
}
pub(crate) use with_conn;

impl Store {
    /// Opens a pool for `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:` or
    /// `postgres://...` and checks that one connection can be established. A missing SQLite
    /// file and its parent directory are created. Does not migrate.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let pool = if let Some(path) = sqlite_path(url) {
            connect_sqlite(url, path).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let manager = postgres_manager(url)?;
            let pool = Pool::builder(manager)
                .max_size(POSTGRES_POOL_SIZE)
                .build()
                .map_err(|e| connect_error(url, e))?;
            DbPool::Postgres(pool)
        } else {
            return Err(StoreError::Invalid {
                field: "database_url",
                message: format!(
                    "unsupported URL '{}': expected sqlite://PATH or postgres://...",
                    redact_url(url)
                ),
            });
        };
        let store = Store {
            pool: Arc::new(pool),
        };
        store.ping().await.map_err(|e| connect_error(url, e))?;
        Ok(store)
    }

    /// Connection pool usage, for metrics: `(max_size, size, in_use, waiting)`.
    pub fn pool_usage(&self) -> (usize, usize, usize, usize) {
        let status = match &*self.pool {
            DbPool::Sqlite(pool) => pool.status(),
            DbPool::Postgres(pool) => pool.status(),
        };
        (
            status.max_size,
            status.size,
            status.size.saturating_sub(status.available),
            status.waiting,
        )
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        match *self.pool {
            DbPool::Sqlite(_) => Backend::Sqlite,
            DbPool::Postgres(_) => Backend::Postgres,
        }
    }

    pub(crate) fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// Applies all pending embedded migrations. Idempotent. Concurrent callers (several nodes
    /// or processes starting at once) are serialised: by an advisory lock on PostgreSQL, by
    /// an IMMEDIATE transaction on SQLite.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.migrate_through(None).await
    }

    /// Like [`Store::migrate`], but stops after the migration whose version (its directory's
    /// date and time as digits, e.g. `20261205000000`) is `last`: tests of in-place upgrades
    /// build a database as an older release left it.
    #[doc(hidden)]
    pub async fn migrate_through(&self, last: Option<&str>) -> Result<(), StoreError> {
        let last = last.map(str::to_owned);
        let applied = match self.pool() {
            DbPool::Sqlite(pool) => {
                let mut conn = pool.get().await?;
                // One IMMEDIATE transaction (diesel turns each migration's own transaction
                // into a savepoint) makes concurrent processes wait for each other.
                conn.spawn_blocking(move |c: &mut SqliteConnection| {
                    Ok(c.immediate_transaction(|c| {
                        run_migrations(c, SQLITE_MIGRATIONS, last.as_deref())
                    }))
                })
                .await?
            }
            DbPool::Postgres(pool) => {
                let conn = pool.get().await?;
                // The sync migration harness blocks on the async connection; doing so on a
                // blocking thread works on both the current-thread and multi-thread runtime.
                tokio::task::spawn_blocking(move || migrate_postgres(conn, last.as_deref())).await?
            }
        }
        .map_err(StoreError::Migration)?;
        if applied > 0 {
            tracing::info!(applied, backend = ?self.backend(), "Database migrated.");
        }
        Ok(())
    }

    /// Takes a connection from the pool and runs a trivial statement (readiness checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_conn!(self, |conn| conn.batch_execute("SELECT 1").await)?;
        Ok(())
    }
}

type MigrationResult = Result<usize, Box<dyn std::error::Error + Send + Sync>>;

/// Runs the pending migrations of `source`, all of them or those up to version `last`.
fn run_migrations<DB: diesel::backend::Backend>(
    harness: &mut impl MigrationHarness<DB>,
    source: EmbeddedMigrations,
    last: Option<&str>,
) -> MigrationResult {
    let Some(last) = last else {
        return harness.run_pending_migrations(source).map(|v| v.len());
    };
    let mut applied = 0;
    for migration in harness.pending_migrations(source)? {
        if migration.name().version().to_string().as_str() > last {
            break;
        }
        harness.run_migration(migration.as_ref())?;
        applied += 1;
    }
    Ok(applied)
}

fn migrate_postgres(
    conn: diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>,
    last: Option<&str>,
) -> MigrationResult {
    let mut conn: AsyncConnectionWrapper<_> = AsyncConnectionWrapper::from(conn);
    let lock =
        |sql: &str| diesel::sql_query(sql).bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK_KEY);
    diesel::RunQueryDsl::execute(lock("SELECT pg_advisory_lock($1)"), &mut conn)?;
    let applied = run_migrations(&mut conn, POSTGRES_MIGRATIONS, last);
    let unlocked = diesel::RunQueryDsl::execute(lock("SELECT pg_advisory_unlock($1)"), &mut conn);
    let applied = applied?;
    unlocked?;
    Ok(applied)
}

/// The file path of a SQLite URL, or `None` for other schemes.
fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
}

async fn connect_sqlite(url: &str, path: &str) -> Result<DbPool, StoreError> {
    if path.is_empty() {
        return Err(StoreError::Invalid {
            field: "database_url",
            message: format!(
                "'{url}' names no file; use sqlite:///absolute/path or sqlite:relative/path"
            ),
        });
    }
    let in_memory = path == ":memory:";
    if !in_memory
        && let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
    {
        relay_core::files::create_private_dir(dir).map_err(|e| connect_error(url, e))?;
    }
    if !in_memory {
        // SQLite gives `-wal` and `-shm` the database file's mode: create it private.
        relay_core::files::create_private_file(Path::new(path))
            .map_err(|e| connect_error(url, e))?;
        let wal = format!("{path}-wal");
        let shm = format!("{path}-shm");
        relay_core::files::warn_if_exposed(
            "configuration database (it holds the token signing keys)",
            [Path::new(path), Path::new(&wal), Path::new(&shm)],
        );
    }
    let mut config = ManagerConfig::<SyncConnectionWrapper<SqliteConnection>>::default();
    config.custom_setup = Box::new(|path| {
        let path = path.to_owned();
        Box::pin(async move {
            let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(&path).await?;
            conn.batch_execute(SQLITE_PRAGMAS)
                .await
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::new_with_config(path, config);
    // Every connection to ":memory:" would be a separate, empty database.
    let size = if in_memory { 1 } else { SQLITE_POOL_SIZE };
    let pool = Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| connect_error(url, e))?;
    Ok(DbPool::Sqlite(pool))
}

/// The PostgreSQL connection manager: plain TCP, or TLS when the URL asks for it.
///
/// `sslmode=require`, `verify-ca` and `verify-full` all connect with TLS and verify the
/// server's certificate and host name (stricter than libpq's `require`), against the PEM file
/// `sslrootcert=PATH` or else the system roots. Any other `sslmode` (or none) connects
/// without TLS.
fn postgres_manager(
    url: &str,
) -> Result<AsyncDieselConnectionManager<AsyncPgConnection>, StoreError> {
    let Some(tls) = postgres_tls(url) else {
        return Ok(AsyncDieselConnectionManager::new(url));
    };
    let config =
        relay_core::tls::client_config(tls.root_cert.as_deref().map(Path::new)).map_err(|e| {
            StoreError::Invalid {
                field: "database_url",
                message: format!("sslrootcert: {e}"),
            }
        })?;
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    manager_config.custom_setup = Box::new(move |_| {
        let (url, connector) = (tls.url.clone(), connector.clone());
        Box::pin(async move {
            let (client, connection) = tokio_postgres::connect(&url, connector)
                .await
                .map_err(|e| diesel::ConnectionError::BadConnection(relay_core::error_chain(&e)))?;
            AsyncPgConnection::try_from_client_and_connection(client, connection).await
        })
    });
    Ok(AsyncDieselConnectionManager::new_with_config(
        url,
        manager_config,
    ))
}

/// A PostgreSQL URL that asks for TLS, rewritten for `tokio-postgres`.
#[derive(Debug, PartialEq)]
struct PostgresTls {
    /// The URL with `sslmode=require` and without `sslrootcert`.
    url: String,
    root_cert: Option<String>,
}

fn postgres_tls(url: &str) -> Option<PostgresTls> {
    let (base, query) = url.split_once('?')?;
    let mut tls = false;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", "require" | "verify-ca" | "verify-full")) => {
                tls = true;
                kept.push("sslmode=require".to_owned());
            }
            Some(("sslrootcert", path)) => root_cert = Some(percent_decode(path)),
            _ => kept.push(pair.to_owned()),
        }
    }
    tls.then(|| PostgresTls {
        url: format!("{base}?{}", kept.join("&")),
        root_cert,
    })
}

/// `%2F` → `/` (paths in URL query values are often percent-encoded).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn connect_error(url: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Connect {
        url: redact_url(url),
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::{PostgresTls, postgres_tls, sqlite_path};

    #[test]
    fn postgres_urls_asking_for_tls() {
        assert_eq!(postgres_tls("postgres://u@h/db"), None);
        assert_eq!(postgres_tls("postgres://u@h/db?sslmode=prefer"), None);
        assert_eq!(
            postgres_tls(
                "postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
            ),
            Some(PostgresTls {
                url: "postgres://u@h/db?application_name=x&sslmode=require".into(),
                root_cert: Some("/etc/ca.pem".into()),
            })
        );
        assert_eq!(
            postgres_tls("postgresql://u@h/db?sslmode=require").map(|t| t.root_cert),
            Some(None)
        );
    }

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/relay.db"),
            Some("/var/lib/relay.db")
        );
        assert_eq!(sqlite_path("sqlite://data/relay.db"), Some("data/relay.db"));
        assert_eq!(sqlite_path("sqlite:relay.db"), Some("relay.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), Some(":memory:"));
        assert_eq!(sqlite_path("postgres://localhost/db"), None);
    }
}
