//! Tenant directory: the relay path's view of tenants, cached in memory.
//!
//! No database query happens per relayed request once a tenant is known: entries are
//! refreshed in the background, misses are looked up once and remembered for a short while,
//! and a failing database leaves the last known entries serving. [`StoreHealth`] tracks
//! whether the database answers, so an outage is logged once when it starts and once when it
//! ends, however many requests and probes notice it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use relay_store::{AckMode, Store, StoreError, Tenant, TenantConfig};
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;

/// How long an unknown tenant name is remembered as unknown.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// How often the whole directory is reloaded (picks up config changes and deletions).
const REFRESH_EVERY: Duration = Duration::from_secs(15);
/// A reload that takes longer counts as failed (a silent network would block it for minutes).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Effective settings of one tenant: its own configuration over the server defaults.
#[derive(Debug, Clone)]
pub struct TenantEntry {
    pub id: String,
    pub name: String,
    /// Lower-cased name: the key of every per-tenant table in the server.
    pub key: String,
    pub request_expiry: Duration,
    pub max_body_bytes: Option<u64>,
    pub require_client_auth: bool,
    /// Requests one node takes from the tenant's queue at once (broker prefetch).
    pub concurrency_limit: u16,
    /// When a request's broker delivery is settled (see `ack`).
    pub ack_mode: AckMode,
    /// Whether `/trace/…` adds diagnostic headers (connector machine and version, timings);
    /// otherwise `trace` behaves like `relay`.
    pub tracing: bool,
    /// Tunnels the tenant may hold on this node; more get `429 tunnel-limit`.
    pub max_tunnels: usize,
}

impl TenantEntry {
    fn new(tenant: Tenant, config: &TenantConfig, defaults: &RelayConfig) -> Self {
        let ms = |v: Option<i64>| {
            v.and_then(|v| u64::try_from(v).ok())
                .map(Duration::from_millis)
        };
        TenantEntry {
            key: tenant.name.to_ascii_lowercase(),
            id: tenant.id,
            name: tenant.name,
            request_expiry: ms(config.request_expiry_ms).unwrap_or(defaults.request_expiry),
            max_body_bytes: config
                .max_body_bytes
                .and_then(|v| u64::try_from(v).ok())
                .or(defaults.max_body_bytes),
            require_client_auth: config.require_client_auth.unwrap_or(false),
            concurrency_limit: config
                .concurrency_limit
                .and_then(|v| u16::try_from(v).ok())
                .unwrap_or(defaults.concurrency_limit),
            ack_mode: config.ack_mode.unwrap_or(AckMode::ConnectorFinished),
            tracing: config.tracing.unwrap_or(false),
            max_tunnels: config
                .max_tunnels
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(defaults.max_tunnels),
        }
    }
}

/// Whether the configuration database answered the last time anyone asked.
#[derive(Debug)]
pub struct StoreHealth {
    reachable: AtomicBool,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth {
            reachable: AtomicBool::new(true),
        }
    }
}

impl StoreHealth {
    /// Records the outcome of a database call; logs only when reachability changes.
    pub fn note(&self, outcome: Result<(), &StoreError>) {
        match outcome {
            Ok(()) => {
                if !self.reachable.swap(true, Ordering::AcqRel) {
                    tracing::info!("Configuration database reachable again.");
                }
            }
            Err(e) => {
                if self.reachable.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "Configuration database unreachable; serving known tenants from the cache.");
                }
            }
        }
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }
}

pub struct TenantDirectory {
    store: Store,
    pub health: StoreHealth,
    defaults: RelayConfig,
    known: RwLock<HashMap<String, Arc<TenantEntry>>>,
    missing: Mutex<HashMap<String, Instant>>,
    /// Ids that vanished in a reload (deleted tenants), until [`TenantDirectory::take_gone`].
    gone: Mutex<Vec<String>>,
    /// Client secrets known to be active (id → expiry in unix ms), from the last reload and
    /// every check since: all a credential may rest on while the store does not answer.
    active_secrets: RwLock<HashMap<String, Option<i64>>>,
}

impl TenantDirectory {
    pub fn new(store: Store, defaults: RelayConfig) -> Self {
        TenantDirectory {
            store,
            health: StoreHealth::default(),
            defaults,
            known: RwLock::new(HashMap::new()),
            missing: Mutex::new(HashMap::new()),
            gone: Mutex::new(Vec::new()),
            active_secrets: RwLock::new(HashMap::new()),
        }
    }

    /// Whether `secret_id` was active at the last reload or check and has not expired since.
    /// Only for when the store does not answer: revoked (or never seen) stays refused.
    pub fn known_active(&self, secret_id: &str) -> bool {
        let now = relay_store::now_ms();
        self.active_secrets.read().is_ok_and(|active| {
            active
                .get(secret_id)
                .is_some_and(|expiry| expiry.is_none_or(|at| at > now))
        })
    }

    /// Records the store's answer for one secret (`expiry` unknown here: kept as it was).
    pub fn note_secret(&self, secret_id: &str, active: bool) {
        let unchanged = self
            .active_secrets
            .read()
            .is_ok_and(|known| known.contains_key(secret_id) == active);
        if unchanged {
            return;
        }
        if let Ok(mut known) = self.active_secrets.write() {
            if active {
                known.entry(secret_id.to_owned()).or_insert(None);
            } else {
                known.remove(secret_id);
            }
        }
    }

    /// The tenant with this id, read from the store (and refreshed in the cache): for
    /// decisions that must not rest on a stale entry, such as opening a tunnel.
    pub async fn by_id(&self, id: &str) -> Result<Option<Arc<TenantEntry>>, StoreError> {
        let Some(tenant) = self.store.tenant_by_id(id).await? else {
            return Ok(None);
        };
        let config = self.store.tenant_config(&tenant.id).await?;
        let entry = Arc::new(TenantEntry::new(tenant, &config, &self.defaults));
        if let Ok(mut known) = self.known.write() {
            known.insert(entry.key.clone(), entry.clone());
        }
        if let Ok(mut missing) = self.missing.lock() {
            missing.remove(&entry.key);
        }
        Ok(Some(entry))
    }

    /// The cached entry of the tenant named `name`, without asking the store.
    pub fn cached(&self, name: &str) -> Option<Arc<TenantEntry>> {
        self.cached_key(&name.to_ascii_lowercase())
    }

    /// Like [`TenantDirectory::cached`] for a name already lower-cased (no allocation).
    pub fn cached_key(&self, key: &str) -> Option<Arc<TenantEntry>> {
        self.known.read().ok().and_then(|m| m.get(key).cloned())
    }

    /// The cached entry of the tenant with this id, without asking the store.
    pub fn cached_by_id(&self, id: &str) -> Option<Arc<TenantEntry>> {
        self.known
            .read()
            .ok()
            .and_then(|m| m.values().find(|e| e.id == id).cloned())
    }

    /// Ids of every known tenant.
    pub fn ids(&self) -> Vec<String> {
        self.known
            .read()
            .map(|m| m.values().map(|e| e.id.clone()).collect())
            .unwrap_or_default()
    }

    /// Ids of tenants deleted since the last call (seen by reloads).
    pub fn take_gone(&self) -> Vec<String> {
        self.gone
            .lock()
            .map(|mut gone| std::mem::take(&mut *gone))
            .unwrap_or_default()
    }

    /// The tenant named `name` (case-insensitive), or `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<TenantEntry>>, StoreError> {
        let key = name.to_ascii_lowercase();
        if let Some(entry) = self.known.read().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Some(entry));
        }
        if let Ok(missing) = self.missing.lock()
            && missing
                .get(&key)
                .is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
        {
            return Ok(None);
        }
        let Some(tenant) = self.store.tenant_by_name(&key).await? else {
            if let Ok(mut missing) = self.missing.lock() {
                missing.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
                missing.insert(key, Instant::now());
            }
            return Ok(None);
        };
        let config = self.store.tenant_config(&tenant.id).await?;
        let entry = Arc::new(TenantEntry::new(tenant, &config, &self.defaults));
        if let Ok(mut known) = self.known.write() {
            known.insert(key, entry.clone());
        }
        Ok(Some(entry))
    }

    /// Keys (lower-cased names) of every known tenant.
    pub fn keys(&self) -> Vec<String> {
        self.known
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Replaces the cache with the database's current view.
    pub async fn reload(&self) -> Result<usize, StoreError> {
        let tenants = self.store.list_tenants().await?;
        let mut fresh = HashMap::with_capacity(tenants.len());
        for tenant in tenants {
            let config = self.store.tenant_config(&tenant.id).await?;
            let entry = TenantEntry::new(tenant, &config, &self.defaults);
            fresh.insert(entry.key.clone(), Arc::new(entry));
        }
        let count = fresh.len();
        let secrets = self
            .store
            .active_secret_expiries(relay_store::now_ms())
            .await?;
        if let Ok(mut active) = self.active_secrets.write() {
            *active = secrets;
        }
        if let Ok(mut known) = self.known.write() {
            let vanished: Vec<String> = known
                .values()
                .filter(|old| fresh.get(&old.key).is_none_or(|new| new.id != old.id))
                .map(|old| old.id.clone())
                .collect();
            if !vanished.is_empty()
                && let Ok(mut gone) = self.gone.lock()
            {
                gone.extend(vanished);
            }
            *known = fresh;
        }
        Ok(count)
    }

    /// Reloads every [`REFRESH_EVERY`] until shutdown; failures are noted in
    /// [`StoreHealth`] (logged once per outage) and retried.
    pub async fn refresh_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(REFRESH_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
            let reloaded = tokio::time::timeout(RELOAD_TIMEOUT, self.reload()).await;
            match reloaded {
                Ok(result) => self.health.note(result.as_ref().map(drop)),
                Err(_) => self.health.note(Err(&StoreError::PoolTimeout)),
            }
        }
    }
}
