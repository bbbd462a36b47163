//! The request log: one row per relayed request, written in batches by the relay nodes,
//! queried by the management API, purged by retention.

use diesel::prelude::*;
use diesel_async::scoped_futures::ScopedFutureExt;
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::schema::request_log;
use crate::store::{DbPool, POOL_TIMEOUT, with_conn};
use crate::{Store, StoreError};

/// One relayed request.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = request_log)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
// `None` is written as NULL, so every row has the same shape and SQLite takes rows in batches.
#[diesel(treat_none_as_default_value = false)]
pub struct RequestLogEntry {
    /// UUID v7, so ids sort by time.
    pub id: String,
    /// Lower-cased tenant name.
    pub tenant: String,
    pub target: String,
    pub method: String,
    /// Path below the target; the query is stripped unless the node is told otherwise.
    pub path: String,
    pub status: i64,
    pub request_bytes: Option<i64>,
    pub response_bytes: Option<i64>,
    pub duration_ms: i64,
    /// `succeeded`, `failed`, `expired`, `aborted` or `errored`.
    pub outcome: String,
    /// Origin id of the node that served the client.
    pub node: String,
    /// Unix milliseconds when the request arrived.
    pub started_at: i64,
    /// The tenant's id (`None` on rows older than the column whose tenant was gone by then).
    pub tenant_id: Option<String>,
}

/// Selection of [`Store::list_request_log`]; newest entries first.
#[derive(Debug, Clone, Default)]
pub struct RequestLogFilter {
    /// Tenant id: a re-created tenant of the same name does not see its predecessor's rows.
    pub tenant_id: Option<String>,
    /// Inclusive lower bound of `started_at`.
    pub from: Option<i64>,
    /// Exclusive upper bound of `started_at`.
    pub to: Option<i64>,
    pub outcome: Option<String>,
    pub skip: i64,
    pub take: i64,
}

/// Rows per INSERT statement (13 bind parameters each, far below the limits of PostgreSQL and
/// SQLite).
const INSERT_CHUNK: usize = 250;

impl Store {
    /// Inserts `entries` in one transaction.
    ///
    /// The writer calls this with batches of hundreds of rows, so a batch costs one round
    /// trip: one blocking-pool call running every insert on SQLite (instead of one per row),
    /// multi-row `INSERT` statements on both backends.
    pub async fn insert_request_log(
        &self,
        entries: Vec<RequestLogEntry>,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        match self.pool() {
            DbPool::Sqlite(pool) => {
                let mut conn = tokio::time::timeout(POOL_TIMEOUT, pool.get())
                    .await
                    .map_err(|_| StoreError::PoolTimeout)??;
                conn.spawn_blocking(move |conn| {
                    diesel::Connection::transaction(conn, |conn| {
                        for chunk in entries.chunks(INSERT_CHUNK) {
                            diesel::RunQueryDsl::execute(
                                diesel::insert_into(request_log::table).values(chunk),
                                conn,
                            )?;
                        }
                        Ok(())
                    })
                })
                .await?;
            }
            DbPool::Postgres(pool) => {
                let mut conn = tokio::time::timeout(POOL_TIMEOUT, pool.get())
                    .await
                    .map_err(|_| StoreError::PoolTimeout)??;
                conn.transaction(|conn| {
                    async move {
                        for chunk in entries.chunks(INSERT_CHUNK) {
                            diesel::insert_into(request_log::table)
                                .values(chunk)
                                .execute(conn)
                                .await?;
                        }
                        Ok::<_, StoreError>(())
                    }
                    .scope_boxed()
                })
                .await?;
            }
        }
        Ok(())
    }

    /// The matching entries (newest first, paged) and how many match in total.
    pub async fn list_request_log(
        &self,
        filter: &RequestLogFilter,
    ) -> Result<(Vec<RequestLogEntry>, i64), StoreError> {
        Ok(with_conn!(self, |conn| {
            let mut query = request_log::table.into_boxed();
            let mut count = request_log::table.into_boxed();
            if let Some(tenant_id) = &filter.tenant_id {
                query = query.filter(request_log::tenant_id.eq(tenant_id.clone()));
                count = count.filter(request_log::tenant_id.eq(tenant_id.clone()));
            }
            if let Some(from) = filter.from {
                query = query.filter(request_log::started_at.ge(from));
                count = count.filter(request_log::started_at.ge(from));
            }
            if let Some(to) = filter.to {
                query = query.filter(request_log::started_at.lt(to));
                count = count.filter(request_log::started_at.lt(to));
            }
            if let Some(outcome) = &filter.outcome {
                query = query.filter(request_log::outcome.eq(outcome.clone()));
                count = count.filter(request_log::outcome.eq(outcome.clone()));
            }
            let total: i64 = count.count().get_result(conn).await?;
            let rows = query
                .order((request_log::started_at.desc(), request_log::id.desc()))
                .offset(filter.skip)
                .limit(filter.take)
                .select(RequestLogEntry::as_select())
                .load(conn)
                .await?;
            Ok::<_, StoreError>((rows, total))
        })?)
    }

    /// Deletes entries that started before `before_ms`; returns how many.
    pub async fn purge_request_log(&self, before_ms: i64) -> Result<usize, StoreError> {
        let query =
            diesel::delete(request_log::table.filter(request_log::started_at.lt(before_ms)));
        Ok(with_conn!(self, |conn| query.execute(conn).await)?)
    }
}
