//! Secrets shared by every node of one installation, created on first use.
//!
//! The first node that asks for a secret by name inserts a random value; concurrent first
//! callers race on the primary key and all of them read back the one value that won.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::schema::installation_secrets;
use crate::secrets::generate_plaintext;
use crate::store::with_conn;
use crate::{Store, StoreError, now_ms};

impl Store {
    /// The installation secret `name` (32 random bytes, base64url), created if missing.
    /// Every node of the installation gets the same value.
    pub async fn installation_secret(&self, name: &str) -> Result<String, StoreError> {
        let insert = diesel::insert_into(installation_secrets::table)
            .values((
                installation_secrets::name.eq(name),
                installation_secrets::value.eq(generate_plaintext()),
                installation_secrets::created_at.eq(now_ms()),
            ))
            .on_conflict(installation_secrets::name)
            .do_nothing();
        with_conn!(self, |conn| insert.execute(conn).await)?;
        let query = installation_secrets::table
            .find(name)
            .select(installation_secrets::value);
        Ok(with_conn!(self, |conn| query.first::<String>(conn).await)?)
    }
}
