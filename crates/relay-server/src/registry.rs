//! Live tunnels by tenant id, and the choice of tunnel for each request.
//!
//! Tunnels are keyed by the tenant's immutable id, never by its name: a tenant deleted and
//! re-created under the same name is a new tenant, and the old one's tunnels (closing) can
//! never be picked for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http2::SendRequest;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of requests sent into a tunnel.
pub type TunnelBody = BoxBody<Bytes, BoxError>;

/// Who a tunnel serves and on whose authority: fixed when it opens.
#[derive(Debug, Clone)]
pub struct TunnelAuth {
    /// The tenant's immutable id: the registry key.
    pub tenant_id: String,
    /// Lower-cased tenant name at connect time, for logs and metric labels.
    pub tenant_name: String,
    /// The credential the token was issued for; `None` for name-bound tokens of another
    /// identity provider (then only the tenant's existence is re-checked).
    pub secret_id: Option<String>,
    /// The token's `exp` (unix seconds): the tunnel is closed then at the latest.
    pub expires_at: i64,
}

/// One connector's tunnel as the server sees it.
pub struct Tunnel {
    pub id: String,
    pub auth: TunnelAuth,
    pub machine: String,
    pub version: String,
    pub remote: String,
    pub sender: SendRequest<TunnelBody>,
    inflight: AtomicUsize,
    /// Set once the connector refused a new stream (it sent GOAWAY to move to a new tunnel):
    /// the tunnel finishes what it runs but is not picked again.
    retiring: AtomicBool,
    /// Cancelled when the tunnel's connection has ended.
    pub closed: CancellationToken,
    /// Cancel to cut the tunnel now (tenant deleted, credential revoked, token expired):
    /// its byte stream fails (`killable`), so requests in flight fail at once.
    pub kill: CancellationToken,
}

impl Tunnel {
    pub fn new(
        id: String,
        auth: TunnelAuth,
        machine: String,
        version: String,
        remote: String,
        sender: SendRequest<TunnelBody>,
        kill: CancellationToken,
    ) -> Self {
        Tunnel {
            id,
            auth,
            machine,
            version,
            remote,
            sender,
            inflight: AtomicUsize::new(0),
            retiring: AtomicBool::new(false),
            closed: CancellationToken::new(),
            kill,
        }
    }

    pub fn tenant_id(&self) -> &str {
        &self.auth.tenant_id
    }

    /// Stops picking this tunnel for new requests.
    pub fn retire(&self) {
        self.retiring.store(true, Ordering::Release);
    }

    /// Whether new requests may go through this tunnel.
    pub fn usable(&self) -> bool {
        !self.retiring.load(Ordering::Acquire)
            && !self.kill.is_cancelled()
            && !self.sender.is_closed()
    }

    /// Counts a request as in flight on this tunnel until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

pub struct InFlight(Arc<Tunnel>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The distinct connectors (tenant id, machine) behind `tunnels`, sorted: a connector keeps
/// several tunnels (`tunnels_per_relay`) and counts once.
pub fn connectors(tunnels: &[Arc<Tunnel>]) -> Vec<(&str, &str)> {
    let mut connectors: Vec<(&str, &str)> = tunnels
        .iter()
        .map(|t| (t.tenant_id(), t.machine.as_str()))
        .collect();
    connectors.sort_unstable();
    connectors.dedup();
    connectors
}

#[derive(Default)]
struct TenantTunnels {
    list: RwLock<Vec<Arc<Tunnel>>>,
    arrived: Notify,
    next: AtomicUsize,
    /// Tunnels accepted and not yet ended (upgrades in progress included): what
    /// `max_tunnels` bounds.
    slots: AtomicUsize,
}

/// A tenant's place for one tunnel on this node, from the accepted upgrade until the tunnel
/// ends; given back on drop.
pub struct TunnelSlot(Arc<TenantTunnels>);

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TenantTunnels {
    /// The open tunnel with the fewest requests in flight; the starting point rotates so
    /// equally loaded tunnels take turns.
    fn pick(&self) -> Option<Arc<Tunnel>> {
        let list = self.list.read().ok()?;
        let n = list.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &list[(start + i) % n])
            .filter(|t| t.usable())
            .min_by_key(|t| t.inflight())
            .cloned()
    }
}

#[derive(Default)]
pub struct Registry {
    tenants: RwLock<HashMap<String, Arc<TenantTunnels>>>,
}

impl Registry {
    fn tenant(&self, key: &str) -> Arc<TenantTunnels> {
        if let Some(t) = self.tenants.read().ok().and_then(|m| m.get(key).cloned()) {
            return t;
        }
        match self.tenants.write() {
            Ok(mut m) => m.entry(key.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    pub fn add(&self, tunnel: Arc<Tunnel>) {
        let tenant = self.tenant(tunnel.tenant_id());
        if let Ok(mut list) = tenant.list.write() {
            list.push(tunnel);
        }
        tenant.arrived.notify_waiters();
    }

    pub fn remove(&self, tunnel: &Tunnel) {
        let tenant = self.tenant(tunnel.tenant_id());
        if let Ok(mut list) = tenant.list.write() {
            list.retain(|t| t.id != tunnel.id);
        }
    }

    /// Drops the entry of a deleted tenant (ids are never reused, so it would stay for good).
    pub fn forget(&self, tenant_id: &str) {
        if let Ok(mut tenants) = self.tenants.write() {
            tenants.remove(tenant_id);
        }
    }

    /// A place for one more tunnel of the tenant, or `None` when it holds `max` already.
    pub fn reserve(&self, tenant_id: &str, max: usize) -> Option<TunnelSlot> {
        let tenant = self.tenant(tenant_id);
        if tenant.slots.fetch_add(1, Ordering::AcqRel) >= max {
            tenant.slots.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(TunnelSlot(tenant))
    }

    /// The live tunnel `id` of the tenant, when it was opened with `secret_id` and is not
    /// already being replaced: the one tunnel a renewal may replace (and count in place of).
    pub fn replaceable(
        &self,
        tenant_id: &str,
        id: &str,
        secret_id: Option<&str>,
    ) -> Option<Arc<Tunnel>> {
        let tenant = self.tenants.read().ok()?.get(tenant_id)?.clone();
        let list = tenant.list.read().ok()?;
        list.iter()
            .find(|t| t.id == id && t.auth.secret_id.as_deref() == secret_id && t.usable())
            .cloned()
    }

    /// Whether this node holds any tunnel of the tenant.
    pub fn has_tunnels(&self, tenant_id: &str) -> bool {
        self.tenants
            .read()
            .ok()
            .and_then(|m| m.get(tenant_id).cloned())
            .is_some_and(|t| t.list.read().is_ok_and(|l| !l.is_empty()))
    }

    /// A tunnel of the tenant, waiting up to `wait` for one to connect.
    ///
    /// Cancel-safe: dropping the future leaves no registration behind.
    pub async fn acquire(&self, tenant_id: &str, wait: Duration) -> Option<Arc<Tunnel>> {
        let tenant = self.tenant(tenant_id);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = tenant.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(tunnel) = tenant.pick() {
                return Some(tunnel);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return tenant.pick();
            }
        }
    }

    /// Every live tunnel, for drain and status.
    pub fn all(&self) -> Vec<Arc<Tunnel>> {
        let Ok(tenants) = self.tenants.read() else {
            return Vec::new();
        };
        tenants
            .values()
            .filter_map(|t| t.list.read().ok().map(|l| l.clone()))
            .flatten()
            .collect()
    }
}
