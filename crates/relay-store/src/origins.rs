//! Relay nodes (origins): registration, heartbeats, and closing the connection records of
//! nodes that stopped or stopped heartbeating.
//!
//! Every write here is a conditional UPDATE, so several nodes may run
//! [`Store::sweep_dead_origins`] at once: each dead origin is claimed by exactly one caller
//! (the one whose `stopped_at IS NULL` update matched), and closing connections only touches
//! rows that are still open.

use diesel::prelude::*;
use diesel_async::scoped_futures::ScopedFutureExt;
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::models::OriginRecord;
use crate::schema::{connections, origins};
use crate::store::with_conn;
use crate::{Store, StoreError};

/// Ids per `touch_connections` statement; far below SQLite's bound-parameter limit (32766).
const TOUCH_CHUNK: usize = 10_000;

impl Store {
    /// Registers a node as started and alive at `now_ms`. Registering a known id again (a
    /// node that was marked gone and is still alive) resets its start and heartbeat times and
    /// clears `stopped_at`; its connections closed meanwhile stay closed.
    pub async fn register_origin(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        let query = diesel::insert_into(origins::table)
            .values((
                origins::id.eq(id),
                origins::started_at.eq(now_ms),
                origins::last_heartbeat_at.eq(now_ms),
                origins::stopped_at.eq(None::<i64>),
            ))
            .on_conflict(origins::id)
            .do_update()
            .set((
                origins::started_at.eq(now_ms),
                origins::last_heartbeat_at.eq(now_ms),
                origins::stopped_at.eq(None::<i64>),
            ));
        with_conn!(self, |conn| query.execute(conn).await)?;
        Ok(())
    }

    /// Records a heartbeat. `Ok(false)` when the origin is unknown or stopped (for instance
    /// swept as dead by another node): the caller must register again.
    pub async fn heartbeat_origin(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let query = diesel::update(
            origins::table
                .find(id)
                .filter(origins::stopped_at.is_null()),
        )
        .set(origins::last_heartbeat_at.eq(now_ms));
        Ok(with_conn!(self, |conn| query.execute(conn).await)? > 0)
    }

    /// Marks a node stopped at `now_ms` (an already stopped one keeps its first stop time)
    /// and closes every open connection recorded for it (`disconnected_at` and
    /// `last_seen_at` = `now_ms`, as [`Store::record_connection_closed`] does). An unknown id
    /// only closes connections.
    pub async fn stop_origin(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        let stop = diesel::update(
            origins::table
                .find(id)
                .filter(origins::stopped_at.is_null()),
        )
        .set(origins::stopped_at.eq(now_ms));
        let close = diesel::update(
            connections::table
                .filter(connections::origin_id.eq(id))
                .filter(connections::disconnected_at.is_null()),
        )
        .set((
            connections::disconnected_at.eq(now_ms),
            connections::last_seen_at.eq(now_ms),
        ));
        with_conn!(self, |conn| {
            conn.transaction(|conn| {
                async move {
                    stop.execute(conn).await?;
                    close.execute(conn).await?;
                    Ok::<_, StoreError>(())
                }
                .scope_boxed()
            })
            .await
        })
    }

    /// Stops every origin that is not stopped and whose last heartbeat is older than
    /// `now_ms - dead_after_ms`, and closes its open connections (`disconnected_at` =
    /// `now_ms`; `last_seen_at` keeps the last time the tunnel was known alive). Returns the
    /// ids this call stopped.
    ///
    /// Safe to run on several nodes at once: each origin is claimed in its own short
    /// transaction by a conditional UPDATE that re-checks both conditions, so an origin is
    /// swept (and reported) by exactly one caller, and one that heartbeats meanwhile is left
    /// alone. Each transaction locks one origin row, then only that origin's connections, so
    /// concurrent sweeps cannot deadlock on each other.
    pub async fn sweep_dead_origins(
        &self,
        now_ms: i64,
        dead_after_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let cutoff = now_ms.saturating_sub(dead_after_ms);
        let stale = origins::table
            .filter(origins::stopped_at.is_null())
            .filter(origins::last_heartbeat_at.lt(cutoff))
            .order(origins::id)
            .select(origins::id);
        let candidates: Vec<String> = with_conn!(self, |conn| stale.load(conn).await)?;
        let mut swept = Vec::with_capacity(candidates.len());
        for id in candidates {
            if self.sweep_origin(&id, now_ms, cutoff).await? {
                swept.push(id);
            }
        }
        Ok(swept)
    }

    /// Stops `id` if it is still running with a heartbeat before `cutoff`, closing its open
    /// connections in the same transaction. `Ok(false)` if another caller (or a heartbeat)
    /// got there first.
    async fn sweep_origin(&self, id: &str, now_ms: i64, cutoff: i64) -> Result<bool, StoreError> {
        // The first statement writes, so SQLite takes its write lock (waiting up to
        // busy_timeout) before reading anything, and PostgreSQL re-checks the conditions
        // after waiting for a concurrent writer of the row.
        let claim = diesel::update(
            origins::table
                .find(id)
                .filter(origins::stopped_at.is_null())
                .filter(origins::last_heartbeat_at.lt(cutoff)),
        )
        .set(origins::stopped_at.eq(now_ms));
        let close = diesel::update(
            connections::table
                .filter(connections::origin_id.eq(id))
                .filter(connections::disconnected_at.is_null()),
        )
        .set(connections::disconnected_at.eq(now_ms));
        with_conn!(self, |conn| {
            conn.transaction(|conn| {
                async move {
                    if claim.execute(conn).await? == 0 {
                        return Ok::<_, StoreError>(false);
                    }
                    close.execute(conn).await?;
                    Ok(true)
                }
                .scope_boxed()
            })
            .await
        })
    }

    /// All origins (running and stopped), ordered by `started_at`, then id.
    pub async fn list_origins(&self) -> Result<Vec<OriginRecord>, StoreError> {
        Ok(with_conn!(self, |conn| {
            origins::table
                .order((origins::started_at, origins::id))
                .select(OriginRecord::as_select())
                .load(conn)
                .await
        })?)
    }

    /// Sets `last_seen_at` = `now_ms` on those of `ids` that are open connections; closed
    /// and unknown ids are ignored. One statement (per 10 000 ids). Returns how many rows
    /// were updated.
    pub async fn touch_connections(
        &self,
        ids: &[String],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut touched = 0;
        for chunk in ids.chunks(TOUCH_CHUNK) {
            let query = diesel::update(
                connections::table
                    .filter(connections::id.eq_any(chunk))
                    .filter(connections::disconnected_at.is_null()),
            )
            .set(connections::last_seen_at.eq(now_ms));
            touched += with_conn!(self, |conn| query.execute(conn).await)?;
        }
        Ok(touched)
    }
}
