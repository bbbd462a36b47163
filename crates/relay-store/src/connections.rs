//! Connector tunnel records: opened, seen, closed, listed.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::models::{ConnectionRecord, NewConnection};
use crate::schema::connections;
use crate::store::with_conn;
use crate::{Store, StoreError};

impl Store {
    /// Records a new tunnel (`last_seen_at` = `connected_at`). [`StoreError::Conflict`] for a
    /// reused connection id. The tenant is not checked: rows are history and outlive it.
    pub async fn record_connection_opened(&self, c: &NewConnection) -> Result<(), StoreError> {
        let values = (
            connections::id.eq(&c.id),
            connections::tenant_id.eq(&c.tenant_id),
            connections::origin_id.eq(&c.origin_id),
            connections::remote_addr.eq(&c.remote_addr),
            connections::connector_version.eq(&c.connector_version),
            connections::machine_name.eq(&c.machine_name),
            connections::connected_at.eq(c.connected_at),
            connections::last_seen_at.eq(c.connected_at),
            connections::tenant_name.eq(&c.tenant_name),
            connections::secret_id.eq(&c.secret_id),
            connections::expires_at.eq(c.expires_at),
        );
        let query = diesel::insert_into(connections::table).values(values);
        with_conn!(self, |conn| query.execute(conn).await)?;
        Ok(())
    }

    /// Updates `last_seen_at` of an open tunnel. `Ok(false)` if it is unknown or closed.
    pub async fn record_connection_seen(
        &self,
        connection_id: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let query = diesel::update(
            connections::table
                .find(connection_id)
                .filter(connections::disconnected_at.is_null()),
        )
        .set(connections::last_seen_at.eq(at_ms));
        Ok(with_conn!(self, |conn| query.execute(conn).await)? > 0)
    }

    /// Marks a tunnel closed at `at_ms`. Idempotent: an already closed tunnel keeps its first
    /// close time, and an unknown id is ignored.
    pub async fn record_connection_closed(
        &self,
        connection_id: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let query = diesel::update(
            connections::table
                .find(connection_id)
                .filter(connections::disconnected_at.is_null()),
        )
        .set((
            connections::disconnected_at.eq(at_ms),
            connections::last_seen_at.eq(at_ms),
        ));
        with_conn!(self, |conn| query.execute(conn).await)?;
        Ok(())
    }

    /// Tunnels ordered by `connected_at`; with `only_open`, only those not yet closed.
    pub async fn list_connections(
        &self,
        only_open: bool,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        // `as_select()` is backend-specific, so the query is built inside `with_conn!`.
        Ok(with_conn!(self, |conn| {
            let all = connections::table
                .order((connections::connected_at, connections::id))
                .select(ConnectionRecord::as_select());
            if only_open {
                all.filter(connections::disconnected_at.is_null())
                    .load(conn)
                    .await
            } else {
                all.load(conn).await
            }
        })?)
    }

    /// Asks the node holding an open tunnel to close it. `Ok(false)` if no open tunnel has
    /// this id.
    pub async fn request_disconnect(&self, connection_id: &str) -> Result<bool, StoreError> {
        let query = diesel::update(
            connections::table
                .find(connection_id)
                .filter(connections::disconnected_at.is_null()),
        )
        .set(connections::disconnect_requested_at.eq(crate::now_ms()));
        Ok(with_conn!(self, |conn| query.execute(conn).await)? > 0)
    }

    /// Ids of open tunnels of `origin_id` whose disconnection was requested.
    pub async fn disconnect_requests(&self, origin_id: &str) -> Result<Vec<String>, StoreError> {
        let query = connections::table
            .filter(connections::origin_id.eq(origin_id))
            .filter(connections::disconnected_at.is_null())
            .filter(connections::disconnect_requested_at.is_not_null())
            .select(connections::id);
        Ok(with_conn!(self, |conn| query.load(conn).await)?)
    }
}
