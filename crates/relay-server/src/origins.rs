//! Node registration and liveness: heartbeat, and the sweep that closes a dead node's connections.
//!
//! Every node registers its origin id in the configuration database and heartbeats every
//! [`OriginSettings::heartbeat_interval`]. Every node also sweeps: an origin whose heartbeat
//! is older than [`OriginSettings::dead_after`] is marked stopped and its open connection
//! records are closed, so a crashed node's tunnels are gone from the records within about
//! one interval after its last missed heartbeat. Sweeps of several nodes at once are safe
//! (see [`relay_store::Store::sweep_dead_origins`]).

use std::time::Duration;

use relay_core::error_chain;
use relay_store::{Store, StoreError};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Floor for the heartbeat interval (a zero period would make the timer panic).
const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// Upper bound for marking this node stopped at shutdown. If the database does not answer
/// in time, the other nodes sweep this one after its missed heartbeats.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a node heartbeats, and how many heartbeats it may miss before it counts as dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginSettings {
    pub heartbeat_interval: Duration,
    /// At least 1 (0 is treated as 1).
    pub dead_after_missed: u32,
}

impl Default for OriginSettings {
    fn default() -> Self {
        OriginSettings {
            heartbeat_interval: Duration::from_secs(5),
            dead_after_missed: 3,
        }
    }
}

impl OriginSettings {
    fn interval(&self) -> Duration {
        self.heartbeat_interval.max(MIN_INTERVAL)
    }

    /// Heartbeat silence after which a node counts as dead: `dead_after_missed` intervals.
    pub fn dead_after(&self) -> Duration {
        self.interval()
            .saturating_mul(self.dead_after_missed.max(1))
    }
}

/// Registers `origin_id`, then every interval: heartbeat (re-register if it returns false),
/// touch the given live tunnel ids (`live_tunnels` returns this node's live tunnel ids), and
/// sweep dead origins. DB errors: one warn when they start, one info when they stop, never
/// panic, keep looping. On shutdown: `stop_origin(origin_id)`, bounded by a few seconds.
///
/// A node only sweeps once its own database access has worked for `dead_after`: after an
/// outage that hit every node, the others get the time to heartbeat again before anyone
/// judges them dead.
///
/// `stop_origin` closes every open connection record of this node, so cancel `shutdown`
/// once the tunnels have drained if their records should carry their real close times.
pub async fn run(
    store: Store,
    origin_id: String,
    settings: OriginSettings,
    live_tunnels: impl Fn() -> Vec<String> + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let mut node = Node {
        store,
        id: origin_id,
        dead_after: settings.dead_after(),
        registered: false,
        reachable_since: None,
        failing: false,
    };
    let mut ticks = tokio::time::interval(settings.interval());
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        // Cutting a tick short leaves at most one statement or transaction unfinished; the
        // database rolls it back and the pool discards the connection.
        let outcome = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            outcome = node.tick(&live_tunnels) => outcome,
        };
        node.report(outcome);
    }
    node.stop().await;
}

struct Node {
    store: Store,
    id: String,
    dead_after: Duration,
    /// Whether the origin row is known to exist and be running.
    registered: bool,
    /// Since when every database call of this loop has succeeded.
    reachable_since: Option<Instant>,
    /// Whether the last tick failed (a warning was logged).
    failing: bool,
}

impl Node {
    async fn tick(&mut self, live_tunnels: &impl Fn() -> Vec<String>) -> Result<(), StoreError> {
        let now = relay_store::now_ms();
        if self.registered && !self.store.heartbeat_origin(&self.id, now).await? {
            tracing::warn!(
                origin = %self.id,
                "This node was marked gone after missed heartbeats; registering it again."
            );
            self.registered = false;
        }
        if !self.registered {
            self.store.register_origin(&self.id, now).await?;
            self.registered = true;
        }
        let reachable_since = *self.reachable_since.get_or_insert_with(Instant::now);

        let live = live_tunnels();
        if !live.is_empty() {
            self.store.touch_connections(&live, now).await?;
        }

        if reachable_since.elapsed() >= self.dead_after {
            let dead_after_ms = i64::try_from(self.dead_after.as_millis()).unwrap_or(i64::MAX);
            for id in self.store.sweep_dead_origins(now, dead_after_ms).await? {
                tracing::info!(origin = %id, "Node missed its heartbeats; its connections are marked gone.");
            }
        }
        Ok(())
    }

    fn report(&mut self, outcome: Result<(), StoreError>) {
        match outcome {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(origin = %self.id, "Node heartbeats reach the configuration database again.");
            }
            Ok(()) => {}
            Err(e) => {
                self.reachable_since = None;
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        origin = %self.id,
                        error = %error_chain(&e),
                        "Cannot record this node's heartbeat; retrying every interval."
                    );
                }
            }
        }
    }

    async fn stop(&self) {
        let stop = self.store.stop_origin(&self.id, relay_store::now_ms());
        let error = match tokio::time::timeout(STOP_TIMEOUT, stop).await {
            Ok(Ok(())) => {
                tracing::debug!(origin = %self.id, "Node marked stopped.");
                return;
            }
            Ok(Err(e)) => error_chain(&e),
            Err(_) => format!("no answer within {STOP_TIMEOUT:?}"),
        };
        tracing::warn!(
            origin = %self.id,
            error = %error,
            "Cannot mark this node stopped; other nodes will after its missed heartbeats."
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use relay_store::{NewConnection, NewTenant, Store};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    async fn wait_for<F, Fut>(what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + DEADLINE;
        while !condition().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn connection(id: &str, tenant_id: &str, origin: &str, at: i64) -> NewConnection {
        NewConnection {
            id: id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            origin_id: Some(origin.to_owned()),
            remote_addr: "198.51.100.7:50123".into(),
            connector_version: None,
            machine_name: None,
            connected_at: at,
            tenant_name: "acme".into(),
            secret_id: None,
            expires_at: None,
        }
    }

    async fn disconnected_at(store: &Store, id: &str) -> Option<i64> {
        let all = store.list_connections(false).await.expect("list");
        let found = all.into_iter().find(|c| c.id == id).expect("connection");
        found.disconnected_at
    }

    #[tokio::test]
    async fn heartbeats_sweeps_a_dead_node_and_stops_on_shutdown() {
        let dir = std::env::temp_dir().join(format!("relay-origins-{}", uuid::Uuid::new_v4()));
        let store = Store::connect(&format!("sqlite://{}", dir.join("relay.db").display()))
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        let tenant = store
            .create_tenant(NewTenant {
                name: "acme".into(),
                ..NewTenant::default()
            })
            .await
            .expect("tenant");
        let start = relay_store::now_ms();
        store
            .register_origin("crashed", start - 60_000)
            .await
            .expect("crashed node");
        for (id, origin) in [("dead-1", "crashed"), ("mine-1", "me"), ("mine-2", "me")] {
            store
                .record_connection_opened(&connection(id, &tenant.id, origin, start - 50_000))
                .await
                .expect("connection");
        }

        let settings = OriginSettings {
            heartbeat_interval: Duration::from_millis(50),
            dead_after_missed: 3,
        };
        let shutdown = CancellationToken::new();
        let listed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(
            store.clone(),
            "me".into(),
            settings,
            {
                let listed = listed.clone();
                move || {
                    listed.store(true, Ordering::Relaxed);
                    vec!["mine-1".to_owned()]
                }
            },
            shutdown.clone(),
        ));

        wait_for("the crashed node's connection to be closed", || async {
            disconnected_at(&store, "dead-1").await.is_some()
        })
        .await;
        assert!(listed.load(Ordering::Relaxed));
        let origins = store.list_origins().await.expect("origins");
        let find = |id: &str| origins.iter().find(|o| o.id == id).expect(id).clone();
        assert!(find("crashed").stopped_at.is_some());
        let me = find("me");
        assert_eq!(me.stopped_at, None);
        assert!(me.last_heartbeat_at >= start, "{me:?}");
        let connections = store.list_connections(true).await.expect("open");
        let mine: Vec<_> = connections.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(mine, ["mine-1", "mine-2"]);
        assert!(connections[0].last_seen_at >= start, "touched");
        assert_eq!(connections[1].last_seen_at, start - 50_000, "not touched");

        shutdown.cancel();
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("run ends after shutdown")
            .expect("run does not panic");
        let origins = store.list_origins().await.expect("origins");
        assert!(
            origins.iter().all(|o| o.stopped_at.is_some()),
            "{origins:?}"
        );
        assert!(store.list_connections(true).await.expect("open").is_empty());
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
