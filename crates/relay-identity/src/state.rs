//! [`AppState`]: configuration, store and signing keys shared by all handlers.

use std::sync::Arc;
use std::time::Duration;

use relay_store::Store;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::hashing::HashPool;
use crate::keys::{KeyManager, KeyRing};
use crate::ratelimit::RateLimiter;
use crate::rotation::RotationPolicy;
use crate::verified::Verified;
use crate::{Config, IdentityError};
pub(crate) use relay_core::error_chain;

/// How often every node reloads keys and runs the rotation.
pub const ROTATION_TICK: Duration = Duration::from_secs(60);

/// Shared state of the identity endpoints. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    issuer: String,
    store: Store,
    keys: KeyManager,
    limiter: RateLimiter,
    hash_pool: HashPool,
    verified: Verified,
}

impl AppState {
    /// Validates `config`, loads the signing keys and makes sure one can sign (generating
    /// one if needed, which takes a moment). The store must already be migrated.
    pub async fn new(config: Config, store: Store) -> Result<Self, IdentityError> {
        config.validate()?;
        let policy = RotationPolicy {
            rotation_interval: config.keys.rotation_interval,
            publish_ahead: config.keys.publish_ahead,
            token_lifetime: config.token_lifetime,
        };
        let keys = KeyManager::new(store.clone(), policy);
        keys.rotate().await?;
        let issuer = config.issuer();
        let limiter = RateLimiter::new(&config.rate_limit);
        let hashing = &config.hashing;
        let hash_pool = HashPool::new(hashing.workers, hashing.queue, hashing.per_source);
        let verified = Verified::new(hashing.verified_ttl, hashing.verified_entries);
        Ok(Self {
            inner: Arc::new(Inner {
                limiter,
                hash_pool,
                verified,
                config,
                issuer,
                store,
                keys,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The `iss` of issued tokens and the `issuer` of the discovery document.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    pub(crate) fn hash_pool(&self) -> &HashPool {
        &self.inner.hash_pool
    }

    pub(crate) fn verified(&self) -> &Verified {
        &self.inner.verified
    }

    pub(crate) fn key_ring(&self) -> Arc<KeyRing> {
        self.inner.keys.ring()
    }

    /// Runs the rotation now (on demand, when no key can sign).
    pub(crate) async fn rotate_keys(&self) -> Result<(), IdentityError> {
        self.inner.keys.rotate().await
    }

    /// Reloads and rotates keys every [`ROTATION_TICK`] until `shutdown` is cancelled.
    /// Failures (database briefly down) are logged and retried at the next tick.
    pub async fn run_key_rotation(&self, shutdown: CancellationToken) {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + ROTATION_TICK, ROTATION_TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.rotate_keys().await {
                tracing::warn!(error = %error_chain(&e), "Signing key rotation failed; retrying next minute.");
            }
        }
    }
}
