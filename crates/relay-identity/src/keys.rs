//! Signing keys in memory, loaded from and rotated in the shared config DB.
//!
//! [`KeyManager::rotate`] runs at start and every minute on every node: it reads all keys,
//! applies the [`rotation::plan`](crate::rotation::plan) and installs the result as an
//! immutable [`KeyRing`] behind an `Arc` swap. Issuing a token only reads the ring; the
//! DB is not touched per token for keys.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use relay_store::{SigningKeyRecord, Store, now_ms};
use relay_token::{ALGORITHM, Jwks, KeyPair, TokenError};

use crate::IdentityError;
use crate::rotation::{self, KeySchedule, RotationAction, RotationPolicy};

/// A usable key: its schedule and parsed key material.
pub(crate) struct LoadedKey {
    pub(crate) schedule: KeySchedule,
    pub(crate) pair: Arc<KeyPair>,
}

impl AsRef<KeySchedule> for LoadedKey {
    fn as_ref(&self) -> &KeySchedule {
        &self.schedule
    }
}

/// The keys known at the last refresh.
#[derive(Default)]
pub(crate) struct KeyRing {
    keys: Vec<LoadedKey>,
}

impl KeyRing {
    /// The key that signs at `now_ms`.
    pub(crate) fn signer(&self, now_ms: i64) -> Option<&LoadedKey> {
        rotation::signer(&self.keys, now_ms)
    }

    /// Every key published at `now_ms`, including successors that do not sign yet and
    /// retired keys whose tokens may still be alive.
    pub(crate) fn jwks(&self, now_ms: i64) -> Jwks {
        Jwks {
            keys: self
                .keys
                .iter()
                .filter(|k| k.schedule.is_published(now_ms))
                .map(|k| k.pair.public_jwk())
                .collect(),
        }
    }
}

/// Owns rotation and the current [`KeyRing`].
pub(crate) struct KeyManager {
    store: Store,
    policy: RotationPolicy,
    ring: RwLock<Arc<KeyRing>>,
    /// Serialises rotations of this node (timer and on-demand).
    rotating: tokio::sync::Mutex<()>,
}

impl KeyManager {
    pub(crate) fn new(store: Store, policy: RotationPolicy) -> Self {
        Self {
            store,
            policy,
            ring: RwLock::new(Arc::default()),
            rotating: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn ring(&self) -> Arc<KeyRing> {
        self.ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Loads the keys, deletes expired ones, creates a key if one is due, and installs the
    /// result in memory.
    pub(crate) async fn rotate(&self) -> Result<(), IdentityError> {
        let _rotating = self.rotating.lock().await;
        let mut records = self.store.signing_keys().await?;
        let now = now_ms();
        let actions = rotation::plan(&schedules(&records), now, &self.policy);
        let mut changed = false;
        if actions.contains(&RotationAction::DeleteExpired) {
            let deleted = self.store.delete_expired_signing_keys(now).await?;
            tracing::info!(deleted, "Expired signing keys deleted.");
            changed = true;
        }
        if actions
            .iter()
            .any(|a| matches!(a, RotationAction::Create { .. }))
        {
            changed |= self.create_key().await?;
        }
        if changed {
            records = self.store.signing_keys().await?;
        }
        self.install(&records);
        Ok(())
    }

    /// Generates a key, then re-plans against fresh rows (another node may have created one
    /// meanwhile) and inserts it only if a key is still due. Returns whether it inserted.
    async fn create_key(&self) -> Result<bool, IdentityError> {
        let pair = KeyPair::generate_async().await?;
        let records = self.store.signing_keys().await?;
        let now = now_ms();
        let due = rotation::plan(&schedules(&records), now, &self.policy)
            .into_iter()
            .find_map(|a| match a {
                RotationAction::Create {
                    activates_at,
                    retires_at,
                    expires_at,
                } => Some((activates_at, retires_at, expires_at)),
                RotationAction::DeleteExpired => None,
            });
        let Some((activates_at, retires_at, expires_at)) = due else {
            tracing::debug!("Another node created the due signing key.");
            return Ok(false);
        };
        let public_jwk = serde_json::to_string(&pair.public_jwk())
            .map_err(|e| TokenError::Key(format!("encoding JWK: {e}")))?;
        let record = SigningKeyRecord {
            kid: pair.kid().to_owned(),
            algorithm: ALGORITHM.to_owned(),
            private_pem: pair.to_pkcs8_pem()?,
            public_jwk,
            created_at: now,
            activates_at,
            retires_at: Some(retires_at),
            expires_at: Some(expires_at),
        };
        self.store.insert_signing_key(&record).await?;
        tracing::info!(kid = %record.kid, activates_at, retires_at, expires_at, "Signing key created.");
        Ok(true)
    }

    /// Swaps in a ring built from `records`, reusing already parsed keys.
    fn install(&self, records: &[SigningKeyRecord]) {
        let previous = self.ring();
        let parsed: HashMap<&str, &Arc<KeyPair>> = previous
            .keys
            .iter()
            .map(|k| (k.schedule.kid.as_str(), &k.pair))
            .collect();
        let keys = records
            .iter()
            .filter_map(|record| {
                let pair = match parsed.get(record.kid.as_str()) {
                    Some(pair) => Arc::clone(pair),
                    None => Arc::new(load(record)?),
                };
                Some(LoadedKey {
                    schedule: KeySchedule::from(record),
                    pair,
                })
            })
            .collect();
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(KeyRing { keys });
    }
}

/// Parses a stored key; unusable rows are logged and skipped, never published or used.
fn load(record: &SigningKeyRecord) -> Option<KeyPair> {
    if record.algorithm != ALGORITHM {
        tracing::warn!(kid = %record.kid, algorithm = %record.algorithm, "Signing key with unsupported algorithm ignored.");
        return None;
    }
    match KeyPair::from_pkcs8_pem(&record.private_pem) {
        Ok(pair) if pair.kid() == record.kid => Some(pair),
        Ok(_) => {
            tracing::warn!(kid = %record.kid, "Signing key ignored: kid does not match the key.");
            None
        }
        Err(e) => {
            tracing::warn!(kid = %record.kid, error = %e, "Signing key ignored: unreadable.");
            None
        }
    }
}

fn schedules(records: &[SigningKeyRecord]) -> Vec<KeySchedule> {
    records.iter().map(KeySchedule::from).collect()
}
