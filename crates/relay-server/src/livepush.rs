//! Live tenant settings and disconnect requests from the management API.
//!
//! Every node polls the shared database on its own (no broker needed, so it works on every
//! node of a cluster): every [`POLL_EVERY`] it reads the `updated_at` of all tenant
//! configurations and the disconnect requests for its own tunnels. When a tenant's
//! configuration changed, the tenant directory is reloaded and the tenant's effective
//! [`TunnelSettings`] are pushed (`POST /.relay/settings`) to each of its tunnels on this
//! node; tunnels that connect later get them as soon as they are seen (the discovery
//! document only carries the server defaults). A requested disconnect sends the tunnel a
//! drain (`/.relay/drain`): the connector opens a new tunnel, with fresh credentials, and
//! lets the old one end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use relay_proto::discovery::TunnelSettings;
use relay_store::TenantConfig;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::registry::Tunnel;

/// How often the node checks for changed settings and disconnect requests.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// The tenant's tunnel settings over the server's defaults.
fn effective(config: &TenantConfig, defaults: TunnelSettings) -> TunnelSettings {
    let ms = |v: Option<i64>, d: Duration| {
        v.and_then(|v| u64::try_from(v).ok())
            .map_or(d, Duration::from_millis)
    };
    TunnelSettings {
        keep_alive_interval: ms(config.keep_alive_interval_ms, defaults.keep_alive_interval),
        reconnect_min_delay: ms(config.reconnect_min_delay_ms, defaults.reconnect_min_delay),
        reconnect_max_delay: ms(config.reconnect_max_delay_ms, defaults.reconnect_max_delay),
    }
}

#[derive(Default)]
struct Seen {
    /// `updated_at` of each tenant configuration, by tenant id.
    versions: HashMap<String, i64>,
    /// Effective settings of tenants that have a configuration, by tenant key.
    settings: HashMap<String, TunnelSettings>,
    /// Tunnels that have the current settings of their tenant.
    pushed: HashSet<String>,
    /// Tunnels already asked to go.
    drained: HashSet<String>,
}

/// Runs until `shutdown`.
pub(crate) async fn run(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut seen = Seen::default();
    loop {
        if let Err(e) = poll(&state, &mut seen).await {
            tracing::debug!(error = %e, "Polling tenant settings failed; retrying.");
        }
        push_pending(&state, &mut seen);
        tokio::select! {
            () = tokio::time::sleep(POLL_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn poll(state: &AppState, seen: &mut Seen) -> Result<(), relay_store::StoreError> {
    let versions = state.store.tenant_config_versions().await?;
    let mut changed = false;
    for (tenant_id, updated_at) in versions {
        if seen.versions.get(&tenant_id) == Some(&updated_at) {
            continue;
        }
        let Some(tenant) = state.store.tenant_by_id(&tenant_id).await? else {
            continue;
        };
        let config = state.store.tenant_config(&tenant_id).await?;
        let key = tenant.name.to_ascii_lowercase();
        let first_load = !seen.versions.contains_key(&tenant_id);
        seen.settings.insert(
            key.clone(),
            effective(&config, state.config.tunnel.settings()),
        );
        seen.versions.insert(tenant_id, updated_at);
        seen.pushed.retain(|id| {
            !state
                .registry
                .all()
                .iter()
                .any(|t| &t.id == id && t.tenant_key == key)
        });
        if !first_load {
            tracing::info!(tenant = %key, "Tenant configuration changed.");
        }
        changed = true;
    }
    if changed && let Err(e) = state.tenants.reload().await {
        tracing::warn!(error = %e, "Cannot reload tenants after a configuration change.");
    }
    for id in state.store.disconnect_requests(&state.origin_id).await? {
        if seen.drained.contains(&id) {
            continue;
        }
        if let Some(tunnel) = state.registry.all().into_iter().find(|t| t.id == id) {
            tracing::info!(tenant = %tunnel.tenant_key, tunnel = %id, "Disconnecting tunnel as requested.");
            send_control(&tunnel, relay_proto::CONTROL_DRAIN, Bytes::new());
            seen.drained.insert(id);
        }
    }
    Ok(())
}

/// Pushes the current settings to every tunnel that does not have them yet.
fn push_pending(state: &AppState, seen: &mut Seen) {
    let tunnels = state.registry.all();
    seen.pushed.retain(|id| tunnels.iter().any(|t| &t.id == id));
    seen.drained
        .retain(|id| tunnels.iter().any(|t| &t.id == id));
    for tunnel in tunnels {
        if seen.pushed.contains(&tunnel.id) {
            continue;
        }
        let Some(settings) = seen.settings.get(&tunnel.tenant_key) else {
            continue;
        };
        match serde_json::to_vec(settings) {
            Ok(body) => {
                tracing::debug!(tenant = %tunnel.tenant_key, tunnel = %tunnel.id, ?settings, "Pushing tunnel settings.");
                send_control(&tunnel, relay_proto::CONTROL_SETTINGS, Bytes::from(body));
                seen.pushed.insert(tunnel.id.clone());
            }
            Err(e) => tracing::warn!(error = %e, "Cannot encode tunnel settings."),
        }
    }
}

/// Sends a control request into the tunnel in the background.
fn send_control(tunnel: &Tunnel, path: &str, body: Bytes) {
    let mut sender = tunnel.sender.clone();
    let request = Request::post(format!("http://tunnel{path}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body).map_err(|e| match e {}).boxed());
    let id = tunnel.id.clone();
    if let Ok(request) = request {
        tokio::spawn(async move {
            match sender.send_request(request).await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    tracing::info!(tunnel = %id, status = %r.status(), "Connector refused a control request.")
                }
                Err(e) => tracing::debug!(tunnel = %id, error = %e, "Control request failed."),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_settings_override_defaults() {
        let defaults = TunnelSettings::default();
        let config = TenantConfig {
            keep_alive_interval_ms: Some(5000),
            ..TenantConfig::default()
        };
        let s = effective(&config, defaults);
        assert_eq!(s.keep_alive_interval, Duration::from_secs(5));
        assert_eq!(s.reconnect_max_delay, defaults.reconnect_max_delay);
    }
}
