//! Live tunnels by tenant, and the choice of tunnel for each request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// One connector's tunnel as the server sees it.
pub struct Tunnel {
    pub id: String,
    pub tenant_key: String,
    pub machine: String,
    pub version: String,
    pub remote: String,
    pub sender: SendRequest<TunnelBody>,
    inflight: AtomicUsize,
    /// Cancelled when the tunnel's connection has ended.
    pub closed: CancellationToken,
}

impl Tunnel {
    pub fn new(
        id: String,
        tenant_key: String,
        machine: String,
        version: String,
        remote: String,
        sender: SendRequest<TunnelBody>,
    ) -> Self {
        Tunnel {
            id,
            tenant_key,
            machine,
            version,
            remote,
            sender,
            inflight: AtomicUsize::new(0),
            closed: CancellationToken::new(),
        }
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

/// The distinct connectors (tenant key, machine) behind `tunnels`, sorted: a connector keeps
/// several tunnels (`tunnels_per_relay`) and counts once.
pub fn connectors(tunnels: &[Arc<Tunnel>]) -> Vec<(&str, &str)> {
    let mut connectors: Vec<(&str, &str)> = tunnels
        .iter()
        .map(|t| (t.tenant_key.as_str(), t.machine.as_str()))
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
            .filter(|t| !t.sender.is_closed())
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
        let tenant = self.tenant(&tunnel.tenant_key);
        if let Ok(mut list) = tenant.list.write() {
            list.push(tunnel);
        }
        tenant.arrived.notify_waiters();
    }

    pub fn remove(&self, tunnel: &Tunnel) {
        let tenant = self.tenant(&tunnel.tenant_key);
        if let Ok(mut list) = tenant.list.write() {
            list.retain(|t| t.id != tunnel.id);
        }
    }

    /// Whether this node holds any tunnel of the tenant.
    pub fn has_tunnels(&self, tenant_key: &str) -> bool {
        self.tenants
            .read()
            .ok()
            .and_then(|m| m.get(tenant_key).cloned())
            .is_some_and(|t| t.list.read().is_ok_and(|l| !l.is_empty()))
    }

    /// A tunnel of the tenant, waiting up to `wait` for one to connect.
    ///
    /// Cancel-safe: dropping the future leaves no registration behind.
    pub async fn acquire(&self, tenant_key: &str, wait: Duration) -> Option<Arc<Tunnel>> {
        let tenant = self.tenant(tenant_key);
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
