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
            let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
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
        let applied = match self.pool() {
            DbPool::Sqlite(pool) => {
                let mut conn = pool.get().await?;
                // One IMMEDIATE transaction (diesel turns each migration's own transaction
                // into a savepoint) makes concurrent processes wait for each other.
                conn.spawn_blocking(|c: &mut SqliteConnection| {
                    Ok(c.immediate_transaction(|c| {
                        c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len())
                    }))
                })
                .await?
            }
            DbPool::Postgres(pool) => {
                let conn = pool.get().await?;
                // The sync migration harness blocks on the async connection; doing so on a
                // blocking thread works on both the current-thread and multi-thread runtime.
                tokio::task::spawn_blocking(move || migrate_postgres(conn)).await?
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

fn migrate_postgres(
    conn: diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>,
) -> MigrationResult {
    let mut conn: AsyncConnectionWrapper<_> = AsyncConnectionWrapper::from(conn);
    let lock =
        |sql: &str| diesel::sql_query(sql).bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK_KEY);
    diesel::RunQueryDsl::execute(lock("SELECT pg_advisory_lock($1)"), &mut conn)?;
    let applied = conn
        .run_pending_migrations(POSTGRES_MIGRATIONS)
        .map(|v| v.len());
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
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| connect_error(url, e))?;
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

fn connect_error(url: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Connect {
        url: redact_url(url),
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_path;

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
