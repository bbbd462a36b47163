//! Token signing keys (rotation state shared by every identity node).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::models::SigningKeyRecord;
use crate::schema::signing_keys;
use crate::store::with_conn;
use crate::{Store, StoreError};

impl Store {
    /// All signing keys, ordered by `activates_at` (then `kid`), including retired ones that
    /// are still published.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        Ok(with_conn!(self, |conn| {
            signing_keys::table
                .order((signing_keys::activates_at, signing_keys::kid))
                .select(SigningKeyRecord::as_select())
                .load(conn)
                .await
        })?)
    }

    /// Stores a new key. [`StoreError::Conflict`] if the `kid` exists.
    pub async fn insert_signing_key(&self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        let query = diesel::insert_into(signing_keys::table).values(key);
        with_conn!(self, |conn| query.execute(conn).await)?;
        Ok(())
    }

    /// Deletes keys whose `expires_at` is at or before `now_ms`; returns how many.
    pub async fn delete_expired_signing_keys(&self, now_ms: i64) -> Result<usize, StoreError> {
        let query = diesel::delete(signing_keys::table.filter(signing_keys::expires_at.le(now_ms)));
        Ok(with_conn!(self, |conn| query.execute(conn).await)?)
    }
}
