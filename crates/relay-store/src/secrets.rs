//! Client secrets: generation, argon2id hashing, listing, revocation and verification.
//!
//! The plaintext (32 random bytes, base64url without padding) is returned once by
//! [`Store::create_secret`] and never stored; the database holds only its argon2id PHC hash
//! (argon2 crate defaults: v19, m=19456 KiB, t=2, p=1).

mod argon;

use std::sync::OnceLock;

use argon2::password_hash::PasswordHash;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rand::RngCore;

use std::collections::{HashMap, HashSet};

use crate::management::ManagementClient;
use crate::models::{CredentialScope, SecretInfo, Tenant, VerifiedSecret};
use crate::schema::{client_secrets, management_clients};
use crate::store::with_conn;
use crate::{Store, StoreError, now_ms};

const SECRET_BYTES: usize = 32;
/// Longer inputs cannot be one of our secrets; reject them before spending a hash on them.
const MAX_PLAINTEXT_LEN: usize = 256;

pub(crate) fn generate_plaintext() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn hash(plaintext: &str) -> Result<String, StoreError> {
    argon::hash(plaintext.as_bytes()).map_err(StoreError::Hash)
}

pub(crate) fn verifies(phc: &str, plaintext: &str) -> bool {
    match PasswordHash::new(phc).and_then(|parsed| argon::verify(&parsed, plaintext.as_bytes())) {
        Ok(matched) => matched,
        Err(e) => {
            tracing::warn!(error = %e, "Stored client secret hash is malformed.");
            false
        }
    }
}

/// Whether `plaintext` can be a secret at all; others are refused without a hash.
fn plausible(plaintext: &str) -> bool {
    !plaintext.is_empty() && plaintext.len() <= MAX_PLAINTEXT_LEN
}

/// A tenant's usable secrets, looked up without hashing anything, so that the caller
/// decides where and whether the CPU-bound check runs ([`SecretCandidates::check`]).
#[derive(Debug, Clone)]
pub struct SecretCandidates {
    tenant: Tenant,
    /// (id, PHC hash, scope) of the secrets neither revoked nor expired.
    secrets: Vec<(String, String, String)>,
}

/// The secret a [`SecretCandidates::check`] matched; [`Store::record_secret_use`] accepts it.
#[derive(Debug, Clone)]
pub struct MatchedSecret {
    tenant: Tenant,
    secret_id: String,
    scope: String,
}

impl MatchedSecret {
    /// The id of the secret that matched.
    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }
}

impl SecretCandidates {
    /// Whether the tenant has no usable secret (then nothing can match).
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The secret `plaintext` is, trying each candidate (argon2id: CPU-bound, tens of
    /// milliseconds each; run it on a blocking thread). Normally one candidate, two while a
    /// secret is being rotated.
    pub fn check(self, plaintext: &str) -> Option<MatchedSecret> {
        if !plausible(plaintext) {
            return None;
        }
        let tenant = self.tenant;
        self.secrets
            .into_iter()
            .find(|(_, phc, _)| verifies(phc, plaintext))
            .map(|(secret_id, _, scope)| MatchedSecret {
                tenant,
                secret_id,
                scope,
            })
    }

    /// `(secret id, PHC hash)` of each candidate, for a caller that remembers which
    /// plaintexts matched which hash recently (a keyed digest, never the plaintext).
    pub fn hashes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.secrets
            .iter()
            .map(|(id, phc, _)| (id.as_str(), phc.as_str()))
    }

    /// The candidate `secret_id` as matched, without hashing: only for a caller that saw
    /// this very hash (see [`Self::hashes`]) match the presented plaintext moments ago.
    /// `None` unless `secret_id` is still a candidate (not revoked, not expired), so a
    /// remembered match never outlives its secret.
    pub fn recently_matched(self, secret_id: &str) -> Option<MatchedSecret> {
        let tenant = self.tenant;
        self.secrets
            .into_iter()
            .find(|(id, _, _)| id == secret_id)
            .map(|(secret_id, _, scope)| MatchedSecret {
                tenant,
                secret_id,
                scope,
            })
    }
}

/// A management client with its hash, looked up without hashing anything.
#[derive(Debug, Clone)]
pub struct ManagementCandidate {
    phc: String,
    client: ManagementClient,
}

impl ManagementCandidate {
    /// The client, if `plaintext` is its secret (one argon2id check; run it on a blocking
    /// thread). [`Store::record_management_use`] records the use.
    pub fn check(self, plaintext: &str) -> Option<ManagementClient> {
        (plausible(plaintext) && verifies(&self.phc, plaintext)).then_some(self.client)
    }
}

/// Runs one secret check against a hash of a random value and returns `false`: what a
/// request for an unknown client costs, so that it takes as long as a wrong secret.
pub fn verify_dummy(plaintext: &str) -> bool {
    verifies(dummy_hash(), plaintext);
    false
}

/// A hash of a random value, verified against when there is nothing real to check, so that
/// "unknown tenant" costs as much time as "wrong secret".
pub(crate) fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash(&generate_plaintext()).unwrap_or_default())
}

impl Store {
    /// Creates a secret with `scope` for the tenant and returns it with its plaintext, which
    /// is not stored and cannot be recovered. [`StoreError::NotFound`] for an unknown tenant,
    /// [`StoreError::Invalid`] if `expires_at` is not in the future.
    pub async fn create_secret(
        &self,
        tenant_id: &str,
        expires_at: Option<i64>,
        scope: CredentialScope,
    ) -> Result<(SecretInfo, String), StoreError> {
        let now = now_ms();
        if expires_at.is_some_and(|e| e <= now) {
            return Err(StoreError::Invalid {
                field: "expires_at",
                message: "must be in the future".into(),
            });
        }
        if self.tenant_by_id(tenant_id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        let plaintext = generate_plaintext();
        let info = self
            .insert_secret(tenant_id, &plaintext, now, expires_at, scope)
            .await?;
        Ok((info, plaintext))
    }

    /// Adds a connector secret with a plaintext chosen by the caller (known development
    /// secrets of `relayctl seed`). At least 16 characters.
    pub async fn add_known_secret(
        &self,
        tenant_id: &str,
        plaintext: &str,
    ) -> Result<SecretInfo, StoreError> {
        if plaintext.len() < 16 || plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(StoreError::Invalid {
                field: "secret",
                message: "must be 16 to 256 characters".into(),
            });
        }
        self.insert_secret(
            tenant_id,
            plaintext,
            now_ms(),
            None,
            CredentialScope::Connector,
        )
        .await
    }

    async fn insert_secret(
        &self,
        tenant_id: &str,
        plaintext: &str,
        now: i64,
        expires_at: Option<i64>,
        scope: CredentialScope,
    ) -> Result<SecretInfo, StoreError> {
        let hashed = {
            let plaintext = plaintext.to_owned();
            tokio::task::spawn_blocking(move || hash(&plaintext)).await??
        };
        let info = SecretInfo {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: tenant_id.to_owned(),
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
            scope: scope.as_str().to_owned(),
        };
        let values = (
            client_secrets::id.eq(&info.id),
            client_secrets::tenant_id.eq(&info.tenant_id),
            client_secrets::hash.eq(hashed),
            client_secrets::created_at.eq(info.created_at),
            client_secrets::expires_at.eq(info.expires_at),
            client_secrets::scope.eq(&info.scope),
        );
        with_conn!(self, |conn| {
            diesel::insert_into(client_secrets::table)
                .values(values)
                .execute(conn)
                .await
        })?;
        Ok(info)
    }

    /// All secrets of the tenant (including revoked and expired ones), oldest first.
    pub async fn list_secrets(&self, tenant_id: &str) -> Result<Vec<SecretInfo>, StoreError> {
        Ok(with_conn!(self, |conn| {
            client_secrets::table
                .filter(client_secrets::tenant_id.eq(tenant_id))
                .order((client_secrets::created_at, client_secrets::id))
                .select(SecretInfo::as_select())
                .load(conn)
                .await
        })?)
    }

    /// Revokes a secret of the tenant. `Ok(true)` if the secret exists (revoking twice is
    /// fine and keeps the first revocation time), `Ok(false)` if the tenant has no such secret.
    pub async fn revoke_secret(
        &self,
        tenant_id: &str,
        secret_id: &str,
    ) -> Result<bool, StoreError> {
        let of_tenant = client_secrets::table
            .filter(client_secrets::id.eq(secret_id))
            .filter(client_secrets::tenant_id.eq(tenant_id));
        let revoke = diesel::update(of_tenant.filter(client_secrets::revoked_at.is_null()))
            .set(client_secrets::revoked_at.eq(now_ms()));
        let exists = diesel::select(diesel::dsl::exists(of_tenant));
        let (updated, exists) = with_conn!(self, |conn| {
            let updated = revoke.execute(conn).await?;
            let exists: bool = exists.get_result(conn).await?;
            Ok::<_, StoreError>((updated, exists))
        })?;
        Ok(updated > 0 || exists)
    }

    /// Checks `plaintext` against every secret of the tenant (found ignoring case) that is
    /// neither revoked nor expired at `now_ms` and, with `scope`, grants that scope; records
    /// the use of the matching one. `Ok(None)` for an unknown tenant, no match, or only
    /// expired, revoked or other-scope secrets.
    pub async fn verify_secret(
        &self,
        tenant_name: &str,
        plaintext: &str,
        now_ms: i64,
        scope: Option<CredentialScope>,
    ) -> Result<Option<VerifiedSecret>, StoreError> {
        if !plausible(plaintext) {
            return Ok(None);
        }
        let candidates = self.secret_candidates(tenant_name, now_ms, scope).await?;
        let plaintext = plaintext.to_owned();
        let matched = tokio::task::spawn_blocking(move || match candidates {
            Some(candidates) if !candidates.is_empty() => candidates.check(&plaintext),
            _ => {
                verify_dummy(&plaintext);
                None
            }
        })
        .await?;
        match matched {
            Some(matched) => self.record_secret_use(matched, now_ms).await,
            None => Ok(None),
        }
    }

    /// The tenant named `tenant_name` (ignoring case) and its secrets that are neither
    /// revoked nor expired at `now_ms` and, with `scope`, grant that scope. `Ok(None)` for
    /// an unknown tenant. Hashes nothing.
    pub async fn secret_candidates(
        &self,
        tenant_name: &str,
        now_ms: i64,
        scope: Option<CredentialScope>,
    ) -> Result<Option<SecretCandidates>, StoreError> {
        let Some(tenant) = self.tenant_by_name(tenant_name).await? else {
            return Ok(None);
        };
        let query = client_secrets::table
            .filter(client_secrets::tenant_id.eq(tenant.id.clone()))
            .filter(client_secrets::revoked_at.is_null())
            .filter(
                client_secrets::expires_at
                    .is_null()
                    .or(client_secrets::expires_at.gt(now_ms)),
            )
            .select((
                client_secrets::id,
                client_secrets::hash,
                client_secrets::scope,
            ));
        let all: Vec<(String, String, String)> = with_conn!(self, |conn| query.load(conn).await)?;
        // Only secrets of the asked scope are worth a hash.
        let secrets = all
            .into_iter()
            .filter(|(_, _, s)| scope.is_none_or(|wanted| wanted.as_str() == s))
            .collect();
        Ok(Some(SecretCandidates { tenant, secrets }))
    }

    /// Accepts a secret [`SecretCandidates::check`] matched: records its use at `now_ms`.
    /// `Ok(None)` if its stored scope is unknown.
    pub async fn record_secret_use(
        &self,
        matched: MatchedSecret,
        now_ms: i64,
    ) -> Result<Option<VerifiedSecret>, StoreError> {
        let MatchedSecret {
            tenant,
            secret_id,
            scope,
        } = matched;
        let Ok(scope) = scope.parse::<CredentialScope>() else {
            tracing::warn!(secret = %secret_id, %scope, "Stored client secret has an unknown scope.");
            return Ok(None);
        };
        let touch = diesel::update(client_secrets::table.find(secret_id.clone()))
            .set(client_secrets::last_used_at.eq(now_ms));
        with_conn!(self, |conn| touch.execute(conn).await)?;
        Ok(Some(VerifiedSecret {
            tenant,
            secret_id,
            scope,
        }))
    }

    /// The management client named `name` (ignoring case) with its hash, unless it is
    /// revoked or unknown. Hashes nothing.
    pub async fn management_candidate(
        &self,
        name: &str,
    ) -> Result<Option<ManagementCandidate>, StoreError> {
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
        Ok(found.map(|(phc, client)| ManagementCandidate { phc, client }))
    }

    /// Records the use at `now_ms` of a client [`ManagementCandidate::check`] accepted.
    pub async fn record_management_use(
        &self,
        mut client: ManagementClient,
        now_ms: i64,
    ) -> Result<ManagementClient, StoreError> {
        client.last_used_at = Some(now_ms);
        let touch = diesel::update(management_clients::table.find(client.id.clone()))
            .set(management_clients::last_used_at.eq(now_ms));
        with_conn!(self, |conn| touch.execute(conn).await)?;
        Ok(client)
    }

    /// Every client secret accepted at `now_ms`, with its expiry (unix ms, `None`: never):
    /// the relay's record of what was known active, for when the store stops answering.
    pub async fn active_secret_expiries(
        &self,
        now_ms: i64,
    ) -> Result<HashMap<String, Option<i64>>, StoreError> {
        let query = client_secrets::table
            .filter(client_secrets::revoked_at.is_null())
            .filter(
                client_secrets::expires_at
                    .is_null()
                    .or(client_secrets::expires_at.gt(now_ms)),
            )
            .select((client_secrets::id, client_secrets::expires_at));
        let rows: Vec<(String, Option<i64>)> = with_conn!(self, |conn| query.load(conn).await)?;
        Ok(rows.into_iter().collect())
    }

    /// Those of `secret_ids` that are still accepted at `now_ms`: not revoked, not expired,
    /// and their tenant not deleted (a tenant's secrets go with it).
    pub async fn active_secrets(
        &self,
        secret_ids: &[String],
        now_ms: i64,
    ) -> Result<HashSet<String>, StoreError> {
        if secret_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let query = client_secrets::table
            .filter(client_secrets::id.eq_any(secret_ids.to_vec()))
            .filter(client_secrets::revoked_at.is_null())
            .filter(
                client_secrets::expires_at
                    .is_null()
                    .or(client_secrets::expires_at.gt(now_ms)),
            )
            .select(client_secrets::id);
        let ids: Vec<String> = with_conn!(self, |conn| query.load(conn).await)?;
        Ok(ids.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_43_chars_of_base64url() {
        let s = generate_plaintext();
        assert_eq!(s.len(), 43);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(s, generate_plaintext());
    }

    #[test]
    fn hash_is_argon2id_phc_and_verifies() -> Result<(), StoreError> {
        let phc = hash("correct horse")?;
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verifies(&phc, "correct horse"));
        assert!(!verifies(&phc, "wrong horse"));
        assert!(!verifies("not a phc string", "correct horse"));
        Ok(())
    }
}
