//! Live tenant settings, tenant deletions, revoked credentials and disconnect requests.
//!
//! Every node polls the shared database on its own (no broker needed, so it works on every
//! node of a cluster): every [`POLL_EVERY`] it reads
//! - the `updated_at` of all tenant configurations: when one changed, the tenant directory is
//!   reloaded and the tenant's effective [`TunnelSettings`] are pushed
//!   (`POST /.relay/settings`) to each of its tunnels on this node; tunnels that connect
//!   later get them as soon as they are seen (the discovery document only carries the server
//!   defaults);
//! - a fingerprint of the tenant table (count, newest creation): when it changed, the
//!   directory is reloaded, and deleted tenants lose their tunnels, their registry entry and
//!   their broker queue (with whatever was still queued in it);
//! - whether the tenants and credentials of this node's tunnels still exist and are valid:
//!   a tunnel whose tenant was deleted or whose secret was revoked or expired is cut at once
//!   (its requests in flight fail with `502`);
//! - the disconnect requests for its own tunnels: such a tunnel gets a drain
//!   (`/.relay/drain` with `renew_token`): the connector fetches a new token, opens a new
//!   tunnel and lets the old one end.

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

/// How often the node checks for changed settings, deletions, revocations and disconnect
/// requests. Deleting a tenant or revoking a secret closes its tunnels within this (plus a
/// query).
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// A poll that takes longer is abandoned and retried.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Effective settings of tenants that have a configuration, by tenant id.
    settings: HashMap<String, TunnelSettings>,
    /// The tenant table's fingerprint at the last poll.
    tenants: Option<(i64, Option<i64>)>,
    /// Tunnels that have the current settings of their tenant.
    pushed: HashSet<String>,
    /// Tunnels already asked to go.
    drained: HashSet<String>,
}

/// Runs until `shutdown`.
pub(crate) async fn run(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut seen = Seen::default();
    loop {
        // A silent database must not stall the loop (tunnels opened meanwhile are checked
        // by the first poll that completes).
        match tokio::time::timeout(POLL_TIMEOUT, poll(&state, &mut seen)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "Polling tenant settings failed; retrying."),
            Err(_) => tracing::debug!("Polling tenant settings timed out; retrying."),
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
        let first_load = !seen.versions.contains_key(&tenant_id);
        seen.settings.insert(
            tenant_id.clone(),
            effective(&config, state.config.tunnel.settings()),
        );
        seen.pushed.retain(|id| {
            !state
                .registry
                .all()
                .iter()
                .any(|t| &t.id == id && t.tenant_id() == tenant_id)
        });
        seen.versions.insert(tenant_id, updated_at);
        if !first_load {
            tracing::info!(tenant = %tenant.name, "Tenant configuration changed.");
        }
        changed = true;
    }
    let fingerprint = state.store.tenant_fingerprint().await?;
    if seen.tenants.is_some_and(|f| f != fingerprint) {
        changed = true;
    }
    seen.tenants = Some(fingerprint);
    if changed && let Err(e) = state.tenants.reload().await {
        tracing::warn!(error = %e, "Cannot reload tenants after a change.");
    }
    for gone in state.tenants.take_gone() {
        forget_tenant(state, seen, &gone).await;
    }
    check_credentials(state).await?;
    for id in state.store.disconnect_requests(&state.origin_id).await? {
        if seen.drained.contains(&id) {
            continue;
        }
        if let Some(tunnel) = state.registry.all().into_iter().find(|t| t.id == id) {
            tracing::info!(tenant = %tunnel.auth.tenant_name, tunnel = %id, "Disconnecting tunnel as requested; the connector fetches a new token.");
            crate::tunnel::drain(&tunnel, relay_proto::Drain { renew_token: true });
            seen.drained.insert(id);
        }
    }
    Ok(())
}

/// Cuts every tunnel on this node whose tenant no longer exists or whose credential is no
/// longer valid (revoked, expired, deleted with its tenant).
async fn check_credentials(state: &AppState) -> Result<(), relay_store::StoreError> {
    let tunnels = state.registry.all();
    if tunnels.is_empty() {
        return Ok(());
    }
    let mut tenant_ids: Vec<String> = tunnels.iter().map(|t| t.tenant_id().to_owned()).collect();
    tenant_ids.sort_unstable();
    tenant_ids.dedup();
    let mut secret_ids: Vec<String> = tunnels
        .iter()
        .filter_map(|t| t.auth.secret_id.clone())
        .collect();
    secret_ids.sort_unstable();
    secret_ids.dedup();
    let tenants = state.store.existing_tenant_ids(&tenant_ids).await?;
    let secrets = state
        .store
        .active_secrets(&secret_ids, relay_store::now_ms())
        .await?;
    // What a tunnel may rest on while the store does not answer: nothing revoked.
    for id in &secret_ids {
        state.tenants.note_secret(id, secrets.contains(id));
    }
    for tunnel in &tunnels {
        if !tenants.contains(tunnel.tenant_id()) {
            crate::tunnel::close(tunnel, "tenant deleted");
        } else if tunnel
            .auth
            .secret_id
            .as_ref()
            .is_some_and(|s| !secrets.contains(s))
        {
            crate::tunnel::close(tunnel, "credential revoked or expired");
        }
    }
    Ok(())
}

/// A deleted tenant: its tunnels here are cut, its registry entry and settings dropped, and
/// its broker queue deleted with anything still queued (nobody can consume it any more: the
/// queue is named by the tenant's id, which is never reused).
async fn forget_tenant(state: &AppState, seen: &mut Seen, tenant_id: &str) {
    for tunnel in state.registry.all() {
        if tunnel.tenant_id() == tenant_id {
            crate::tunnel::close(&tunnel, "tenant deleted");
        }
    }
    state.registry.forget(tenant_id);
    seen.settings.remove(tenant_id);
    seen.versions.remove(tenant_id);
    if let Some(cross) = &state.cross {
        cross.forget_tenant(tenant_id).await;
    }
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
        let Some(settings) = seen.settings.get(tunnel.tenant_id()) else {
            continue;
        };
        match serde_json::to_vec(settings) {
            Ok(body) => {
                tracing::debug!(tenant = %tunnel.auth.tenant_name, tunnel = %tunnel.id, ?settings, "Pushing tunnel settings.");
                send_control(&tunnel, relay_proto::CONTROL_SETTINGS, Bytes::from(body));
                seen.pushed.insert(tunnel.id.clone());
            }
            Err(e) => tracing::warn!(error = %e, "Cannot encode tunnel settings."),
        }
    }
}

/// Sends a control request into the tunnel in the background.
pub(crate) fn send_control(tunnel: &Tunnel, path: &str, body: Bytes) {
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
