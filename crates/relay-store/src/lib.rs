//! Configuration database of Relay: schema, embedded migrations and every query, for
//! SQLite (embedded default, single node) and PostgreSQL (shared by several nodes) from one
//! codebase.
//!
//! [`Store`] wraps a connection pool of either backend; each query is written once and
//! expanded for both by the internal `with_conn!` macro. Only portable column types are
//! used: TEXT ids (UUID strings), BIGINT unix milliseconds, BOOLEAN flags. Call
//! [`Store::migrate`] (idempotent) before the first query on a new database.
//!
//! Module map:
//! - `store`: [`Store`], [`Backend`], connecting (URL schemes, SQLite pragmas), migrations.
//! - `tenants`: tenants and their [`TenantConfig`]; [`validate_tenant_name`].
//! - `secrets`: client secrets (argon2id hashes) and [`Store::verify_secret`].
//! - `keys`: token signing keys.
//! - `installation`: secrets shared by every node of the installation (created on first use).
//! - `management`: management API clients and API keys.
//! - `requestlog`: the request log (batch insert, filtered paging, retention purge).
//! - `connections`: connector tunnel records.
//! - `origins`: relay nodes, their heartbeats, and the sweep that closes a dead node's
//!   connections.
//! - `models`: the public record types; `schema`: diesel tables; `error`: [`StoreError`].
//!
//! Migrations live in `migrations/sqlite` and `migrations/postgres` and define the same
//! schema; a change to one must be mirrored in the other.

mod connections;
mod error;
mod installation;
mod keys;
mod management;
mod models;
mod origins;
mod requestlog;
mod schema;
mod secrets;
mod store;
mod tenants;

pub use error::{StoreError, redact_url};
pub use management::{API_KEY_PREFIX, ApiKeyCreator, ApiKeyInfo, ManagementClient};
pub use models::{
    AckMode, ConnectionRecord, CredentialScope, NewConnection, NewTenant, OriginRecord, SecretInfo,
    SigningKeyRecord, Tenant, TenantConfig, VerifiedSecret,
};
pub use requestlog::{RequestLogEntry, RequestLogFilter};
pub use secrets::{ManagementCandidate, MatchedSecret, SecretCandidates, verify_dummy};
pub use store::{Backend, Store};
pub use tenants::validate_tenant_name;

/// Current time as unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
