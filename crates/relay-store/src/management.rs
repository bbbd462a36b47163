//! Credentials of the management API: operator clients (OAuth2 client credentials, secret
//! hashed with argon2id like tenant secrets) and API keys for automation.
//!
//! API keys are 32 random bytes, so a fast hash is enough: only their SHA-256 is stored, and
//! a key is found by its hash (no per-key slow verification, no timing oracle on the id).
//! A key records its creator ([`ApiKeyCreator`]) so that the management API can refuse it
//! once that creator is gone.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};

use crate::schema::{api_keys, management_clients};
use crate::secrets::{dummy_hash, generate_plaintext, hash, verifies};
use crate::store::with_conn;
use crate::{Store, StoreError, now_ms};

/// Prefix of every API key, so leaked keys are recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "rk_";
const MAX_PLAINTEXT_LEN: usize = 256;

/// A management client without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = management_clients)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct ManagementClient {
    pub id: String,
    /// The OAuth2 `client_id`; unique ignoring ASCII case.
    pub name: String,
    /// Space-separated scopes (`management:read management:write`).
    pub scopes: String,
    /// When set, the client sees this tenant only.
    pub tenant_id: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// An API key without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    pub scopes: String,
    pub tenant_id: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// The management client whose token created the key (see [`ApiKeyCreator`]).
    pub created_by_client: Option<String>,
    /// The API key that created the key.
    pub created_by_key: Option<String>,
}

/// Who creates an API key. A key created by a credential is meant to work only while that
/// credential does; the store records the creator, the management API enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyCreator<'a> {
    /// Written directly to the database (`relayctl admin api-key`): no creator to outlive.
    Database,
    /// A bearer token of this management client (its id).
    Client(&'a str),
    /// This API key (its id).
    Key(&'a str),
}

fn key_hash(plaintext: &str) -> String {
    Sha256::digest(plaintext.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn validate_client_name(name: &str) -> Result<(), StoreError> {
    crate::validate_tenant_name(name)
}

fn validate_label(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.chars().count() > 100 {
        return Err(StoreError::Invalid {
            field: "name",
            message: "must be 1 to 100 characters".into(),
        });
    }
    Ok(())
}

impl Store {
    /// Creates a management client and returns it with its secret, which is not stored.
    /// [`StoreError::Conflict`] when the name is taken, [`StoreError::NotFound`] for an
    /// unknown `tenant_id`.
    pub async fn create_management_client(
        &self,
        name: &str,
        scopes: &str,
        tenant_id: Option<&str>,
    ) -> Result<(ManagementClient, String), StoreError> {
        validate_client_name(name)?;
        let plaintext = generate_plaintext();
        let hashed = {
            let plaintext = plaintext.clone();
            tokio::task::spawn_blocking(move || hash(&plaintext)).await??
        };
        let client = ManagementClient {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            scopes: scopes.to_owned(),
            tenant_id: tenant_id.map(str::to_owned),
            created_at: now_ms(),
            revoked_at: None,
            last_used_at: None,
        };
        let values = (
            management_clients::id.eq(&client.id),
            management_clients::name.eq(&client.name),
            management_clients::name_lower.eq(client.name.to_ascii_lowercase()),
            management_clients::hash.eq(hashed),
            management_clients::scopes.eq(&client.scopes),
            management_clients::tenant_id.eq(&client.tenant_id),
            management_clients::created_at.eq(client.created_at),
        );
        with_conn!(self, |conn| {
            diesel::insert_into(management_clients::table)
                .values(values)
                .execute(conn)
                .await
        })?;
        Ok((client, plaintext))
    }

    /// Every management client, ordered by name.
    pub async fn list_management_clients(&self) -> Result<Vec<ManagementClient>, StoreError> {
        Ok(with_conn!(self, |conn| {
            management_clients::table
                .order(management_clients::name_lower)
                .select(ManagementClient::as_select())
                .load(conn)
                .await
        })?)
    }

    /// The management client with this id, revoked or not.
    pub async fn management_client(
        &self,
        id: &str,
    ) -> Result<Option<ManagementClient>, StoreError> {
        Ok(with_conn!(self, |conn| {
            management_clients::table
                .find(id)
                .select(ManagementClient::as_select())
                .first(conn)
                .await
                .optional()
        })?)
    }

    /// The management client named `name` (ignoring case), revoked or not.
    pub async fn management_client_by_name(
        &self,
        name: &str,
    ) -> Result<Option<ManagementClient>, StoreError> {
        let lower = name.to_ascii_lowercase();
        Ok(with_conn!(self, |conn| {
            management_clients::table
                .filter(management_clients::name_lower.eq(&lower))
                .select(ManagementClient::as_select())
                .first(conn)
                .await
                .optional()
        })?)
    }

    /// Revokes a management client by name. `Ok(false)` if there is none.
    pub async fn revoke_management_client(&self, name: &str) -> Result<bool, StoreError> {
        let query = diesel::update(
            management_clients::table
                .filter(management_clients::name_lower.eq(name.to_ascii_lowercase())),
        )
        .set(management_clients::revoked_at.eq(now_ms()));
        Ok(with_conn!(self, |conn| query.execute(conn).await)? > 0)
    }

    /// The client named `name` (ignoring case) if `plaintext` is its secret and it is not
    /// revoked. Unknown clients cost as much time as wrong secrets.
    pub async fn verify_management_client(
        &self,
        name: &str,
        plaintext: &str,
        now_ms: i64,
    ) -> Result<Option<ManagementClient>, StoreError> {
        if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT_LEN {
            return Ok(None);
        }
        let lower = name.to_ascii_lowercase();
        let found: Option<(String, ManagementClient)> = with_conn!(self, |conn| {
            management_clients::table
                .filter(management_clients::name_lower.eq(&lower))
                .filter(management_clients::revoked_at.is_null())
                .select((management_clients::hash, ManagementClient::as_select()))
                .first(conn)
                .await
                .optional()
        })?;
        let plaintext = plaintext.to_owned();
        let (phc, client) = match found {
            Some((phc, client)) => (phc, Some(client)),
            None => (dummy_hash().to_owned(), None),
        };
        let ok = tokio::task::spawn_blocking(move || verifies(&phc, &plaintext)).await?;
        let Some(mut client) = client.filter(|_| ok) else {
            return Ok(None);
        };
        client.last_used_at = Some(now_ms);
        let touch = diesel::update(management_clients::table.find(client.id.clone()))
            .set(management_clients::last_used_at.eq(now_ms));
        with_conn!(self, |conn| touch.execute(conn).await)?;
        Ok(Some(client))
    }

    /// Creates an API key without a creator ([`ApiKeyCreator::Database`]) and returns it with
    /// its plaintext (`rk_…`), shown once.
    pub async fn create_api_key(
        &self,
        name: &str,
        scopes: &str,
        tenant_id: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<(ApiKeyInfo, String), StoreError> {
        self.create_api_key_by(name, scopes, tenant_id, expires_at, ApiKeyCreator::Database)
            .await
    }

    /// Creates an API key recording who created it and returns it with its plaintext.
    pub async fn create_api_key_by(
        &self,
        name: &str,
        scopes: &str,
        tenant_id: Option<&str>,
        expires_at: Option<i64>,
        creator: ApiKeyCreator<'_>,
    ) -> Result<(ApiKeyInfo, String), StoreError> {
        validate_label(name)?;
        let now = now_ms();
        if expires_at.is_some_and(|e| e <= now) {
            return Err(StoreError::Invalid {
                field: "expires_at",
                message: "must be in the future".into(),
            });
        }
        let plaintext = format!("{API_KEY_PREFIX}{}", generate_plaintext());
        let info = ApiKeyInfo {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            scopes: scopes.to_owned(),
            tenant_id: tenant_id.map(str::to_owned),
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
            created_by_client: match creator {
                ApiKeyCreator::Client(id) => Some(id.to_owned()),
                _ => None,
            },
            created_by_key: match creator {
                ApiKeyCreator::Key(id) => Some(id.to_owned()),
                _ => None,
            },
        };
        let values = (
            api_keys::id.eq(&info.id),
            api_keys::name.eq(&info.name),
            api_keys::key_hash.eq(key_hash(&plaintext)),
            api_keys::scopes.eq(&info.scopes),
            api_keys::tenant_id.eq(&info.tenant_id),
            api_keys::created_at.eq(info.created_at),
            api_keys::expires_at.eq(info.expires_at),
            api_keys::created_by_client.eq(&info.created_by_client),
            api_keys::created_by_key.eq(&info.created_by_key),
        );
        with_conn!(self, |conn| {
            diesel::insert_into(api_keys::table)
                .values(values)
                .execute(conn)
                .await
        })?;
        Ok((info, plaintext))
    }

    /// Every API key, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyInfo>, StoreError> {
        Ok(with_conn!(self, |conn| {
            api_keys::table
                .order((api_keys::created_at, api_keys::id))
                .select(ApiKeyInfo::as_select())
                .load(conn)
                .await
        })?)
    }

    /// The API key with this id, revoked or expired or not.
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyInfo>, StoreError> {
        Ok(with_conn!(self, |conn| {
            api_keys::table
                .find(id)
                .select(ApiKeyInfo::as_select())
                .first(conn)
                .await
                .optional()
        })?)
    }

    /// Revokes an API key. `Ok(false)` if there is none with this id.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let query = diesel::update(api_keys::table.find(id)).set(api_keys::revoked_at.eq(now_ms()));
        Ok(with_conn!(self, |conn| query.execute(conn).await)? > 0)
    }

    /// The key whose plaintext this is, unless revoked or expired. Records its use at most
    /// once a minute.
    pub async fn verify_api_key(
        &self,
        plaintext: &str,
        now_ms: i64,
    ) -> Result<Option<ApiKeyInfo>, StoreError> {
        if !plaintext.starts_with(API_KEY_PREFIX) || plaintext.len() > MAX_PLAINTEXT_LEN {
            return Ok(None);
        }
        let digest = key_hash(plaintext);
        let found: Option<ApiKeyInfo> = with_conn!(self, |conn| {
            api_keys::table
                .filter(api_keys::key_hash.eq(&digest))
                .filter(api_keys::revoked_at.is_null())
                .select(ApiKeyInfo::as_select())
                .first(conn)
                .await
                .optional()
        })?;
        let Some(mut key) = found.filter(|k| k.expires_at.is_none_or(|e| e > now_ms)) else {
            return Ok(None);
        };
        if key.last_used_at.is_none_or(|t| t < now_ms - 60_000) {
            let touch = diesel::update(api_keys::table.find(key.id.clone()))
                .set(api_keys::last_used_at.eq(now_ms));
            with_conn!(self, |conn| touch.execute(conn).await)?;
            key.last_used_at = Some(now_ms);
        }
        Ok(Some(key))
    }
}
