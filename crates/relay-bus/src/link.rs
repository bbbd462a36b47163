//! The broker connection and its supervisor.
//!
//! A [`Session`] is one AMQP connection with the topology declared on it. The supervisor task
//! owns the current session: when it is lost (the connection is no longer `connected`, or a user
//! of the session marked it broken) it publishes [`Link::Down`], reconnects with jittered
//! exponential back-off (trying every URL in order), redeclares the exchange, this origin's queues
//! and every tenant queue declared so far, and publishes [`Link::Up`] with the new session.
//! Publishers and consumers wait on the [`Link`] watch for a live session, so nobody reconnects
//! on their own and a reconnect is invisible to them apart from the wait. The session's pool of
//! publisher channels lives in `publish`.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{Connection, ConnectionProperties};
use rand::Rng;
use tokio::{
    sync::{Mutex as AsyncMutex, watch},
    time::{Instant, sleep, timeout, timeout_at},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    BusConfig, BusError,
    config::BrokerUri,
    publish::PublisherSlot,
    topology::{self, Names},
};

/// How often the supervisor looks at the connection state between other signals of a loss.
const POLL: Duration = Duration::from_millis(250);
/// Upper bound of one connection attempt (TCP connect + AMQP handshake).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The state every publisher and consumer watches.
#[derive(Clone)]
pub(crate) enum Link {
    Up(Arc<Session>),
    Down { since: Instant },
    Closed,
}

/// State shared by the [`Bus`](crate::Bus) handles and the background tasks.
pub(crate) struct Shared {
    pub(crate) config: BusConfig,
    pub(crate) brokers: Vec<BrokerUri>,
    pub(crate) origin: String,
    pub(crate) names: Names,
    /// Tenants whose request queue this node declared; redeclared after every reconnect.
    pub(crate) tenants: Mutex<BTreeSet<String>>,
    pub(crate) link: watch::Sender<Link>,
    pub(crate) shutdown: CancellationToken,
    /// Connections re-established after a loss.
    pub(crate) reconnects: AtomicU64,
}

impl Shared {
    /// The current live session, waiting for one while the link is down. Ends with
    /// [`BusError::Closed`] on shutdown. Cancel-safe.
    pub(crate) async fn live_session(&self) -> Result<Arc<Session>, BusError> {
        let mut rx = self.link.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                Link::Up(session) if session.is_alive() => return Ok(session),
                Link::Up(session) => session.mark_broken(),
                Link::Down { .. } => {}
                Link::Closed => return Err(BusError::Closed),
            }
            if rx.changed().await.is_err() {
                return Err(BusError::Closed);
            }
        }
    }

    /// [`live_session`](Self::live_session) bounded by `deadline`, then [`BusError::Unavailable`].
    pub(crate) async fn session_by(&self, deadline: Instant) -> Result<Arc<Session>, BusError> {
        timeout_at(deadline, self.live_session())
            .await
            .unwrap_or(Err(BusError::Unavailable {
                waited: self.config.publish_timeout,
            }))
    }

    pub(crate) fn remembered_tenants(&self) -> Vec<String> {
        self.tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Connects to the first broker that answers and declares the topology, once.
    async fn establish(&self, generation: u64) -> Result<Session, Vec<(String, SetupError)>> {
        let mut failures = Vec::new();
        for broker in &self.brokers {
            match self.establish_on(broker, generation).await {
                Ok(session) => return Ok(session),
                Err(e) => failures.push((broker.redacted.clone(), e)),
            }
        }
        Err(failures)
    }

    async fn establish_on(
        &self,
        broker: &BrokerUri,
        generation: u64,
    ) -> Result<Session, SetupError> {
        let properties = ConnectionProperties::default().with_connection_name(
            format!("relay-bus {}{}", self.config.prefix, self.origin).into(),
        );
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| SetupError::Connect(format!("no async runtime: {e}")))?;
        // `amqps://` verifies the broker against the system roots plus `ca_pem`.
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.config.ca_pem.clone(),
        };
        let connection = timeout(
            ATTEMPT_TIMEOUT,
            Connection::connect_uri_with_config(broker.uri.clone(), properties, tls, runtime),
        )
        .await
        .map_err(|_| SetupError::Connect("timed out".into()))?
        .map_err(|e| SetupError::Connect(e.to_string()))?;
        match self.declare_topology(&connection).await {
            Ok(()) => Ok(Session::new(
                generation,
                broker.redacted.clone(),
                connection,
                self.config.publisher_channels,
            )),
            Err((op, e)) => {
                let refused = connection.status().connected();
                let _ = connection.close(200, "setup failed".into()).await;
                if refused {
                    Err(SetupError::Refused(BusError::Broker { op, source: e }))
                } else {
                    Err(SetupError::Connect(e.to_string()))
                }
            }
        }
    }

    async fn declare_topology(
        &self,
        connection: &Connection,
    ) -> Result<(), (&'static str, lapin::Error)> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| ("opening a channel", e))?;
        topology::declare_exchange(&channel, &self.names)
            .await
            .map_err(|e| ("declaring the exchange", e))?;
        topology::declare_origin_queues(
            &channel,
            &self.names,
            &self.origin,
            self.config.origin_queue_expiry,
        )
        .await
        .map_err(|e| ("declaring the origin queues", e))?;
        let mut channel = channel;
        for tenant in self.remembered_tenants() {
            let declared = topology::declare_request_queue(
                &channel,
                &self.names,
                &tenant,
                self.config.quorum_queues,
            )
            .await;
            if let Err(e) = declared {
                if !connection.status().connected() {
                    return Err(("declaring a tenant queue", e));
                }
                // One tenant's mismatch must not keep the node off the broker.
                error!(tenant = %tenant, error = %e, "Cannot declare the tenant's request queue.");
                channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| ("opening a channel", e))?;
            }
        }
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(())
    }
}

/// Why one connection attempt failed.
pub(crate) enum SetupError {
    /// Transport or handshake failure: worth retrying.
    Connect(String),
    /// The broker refused the topology on a working connection: a configuration problem.
    Refused(BusError),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Connect(e) => f.write_str(e),
            SetupError::Refused(e) => match e {
                BusError::Broker { op, source } => write!(f, "refused {op}: {source}"),
                other => write!(f, "{other}"),
            },
        }
    }
}

/// The first connection, retried until `config.connect_timeout`; then the supervisor is started.
pub(crate) async fn connect(shared: Arc<Shared>) -> Result<(), BusError> {
    let started = Instant::now();
    let deadline = started + shared.config.connect_timeout;
    let mut attempt: u32 = 0;
    let session = loop {
        let failures = match shared.establish(0).await {
            Ok(session) => break session,
            Err(failures) => failures,
        };
        attempt += 1;
        let delay = backoff(attempt, shared.config.max_backoff);
        let give_up = Instant::now() + delay >= deadline;
        for (broker, failure) in failures {
            if let SetupError::Refused(e) = failure {
                return Err(e);
            }
            warn!(
                broker = %broker,
                attempt,
                error = %failure,
                retry_in = ?(!give_up).then_some(delay),
                "Cannot connect to the message broker."
            );
        }
        if give_up {
            return Err(BusError::Unavailable {
                waited: started.elapsed(),
            });
        }
        sleep(delay).await;
    };
    info!(broker = %session.broker, origin = %shared.origin, "Connected to the message broker.");
    let session = Arc::new(session);
    shared.link.send_replace(Link::Up(session.clone()));
    tokio::spawn(supervise(shared, session));
    Ok(())
}

/// Watches the current session and replaces it when it is lost, until shutdown.
async fn supervise(shared: Arc<Shared>, mut session: Arc<Session>) {
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            () = session.lost() => {}
        }
        session.mark_broken();
        session.discard();
        let since = Instant::now();
        shared.link.send_replace(Link::Down { since });
        warn!(
            broker = %session.broker,
            origin = %shared.origin,
            "Lost the message broker connection; reconnecting."
        );

        let mut attempt: u32 = 0;
        let next = loop {
            match shared.establish(session.generation + 1).await {
                Ok(next) => break Some(next),
                Err(failures) => {
                    attempt += 1;
                    let delay = backoff(attempt, shared.config.max_backoff);
                    for (broker, failure) in failures {
                        match failure {
                            SetupError::Refused(_) => {
                                error!(broker = %broker, error = %failure, "Message broker refused the topology; retrying.")
                            }
                            SetupError::Connect(_) => {
                                debug!(broker = %broker, attempt, error = %failure, "Reconnect attempt failed.")
                            }
                        }
                    }
                    tokio::select! {
                        () = shared.shutdown.cancelled() => break None,
                        () = sleep(delay) => {}
                    }
                }
            }
        };
        let Some(next) = next else { break };
        session = Arc::new(next);
        info!(
            broker = %session.broker,
            origin = %shared.origin,
            down_for = ?since.elapsed(),
            "Message broker connection re-established."
        );
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        shared.link.send_replace(Link::Up(session.clone()));
    }
    shared.link.send_replace(Link::Closed);
    if session.connection.status().connected() {
        let _ = timeout(
            Duration::from_secs(5),
            session
                .connection
                .close(200, "relay node shutting down".into()),
        )
        .await;
    }
    debug!("Message broker supervisor stopped.");
}

/// Jittered exponential back-off: 100 ms doubling per attempt up to `max`, then a random
/// 50–100 % of that so that nodes do not reconnect in lockstep.
pub(crate) fn backoff(attempt: u32, max: Duration) -> Duration {
    let exponential = Duration::from_millis(100).saturating_mul(1 << attempt.min(16));
    exponential
        .min(max)
        .mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// One connection and what is attached to it.
pub(crate) struct Session {
    pub(crate) generation: u64,
    /// Printable (password-free) URL of the broker this session is connected to.
    pub(crate) broker: String,
    pub(crate) connection: Connection,
    pub(crate) publishers: Vec<AsyncMutex<PublisherSlot>>,
    pub(crate) next_publisher: AtomicUsize,
    broken: CancellationToken,
}

impl Session {
    fn new(generation: u64, broker: String, connection: Connection, publishers: u16) -> Self {
        Self {
            generation,
            broker,
            connection,
            publishers: (0..publishers.max(1))
                .map(|_| AsyncMutex::new(PublisherSlot::default()))
                .collect(),
            next_publisher: AtomicUsize::new(0),
            broken: CancellationToken::new(),
        }
    }

    pub(crate) fn is_alive(&self) -> bool {
        !self.broken.is_cancelled() && self.connection.status().connected()
    }

    /// Tells the supervisor this connection is unusable.
    pub(crate) fn mark_broken(&self) {
        self.broken.cancel();
    }

    /// Marks the session broken if the connection itself is gone; returns whether it was.
    pub(crate) fn check_connection(&self) -> bool {
        let gone = !self.connection.status().connected();
        if gone {
            self.mark_broken();
        }
        gone
    }

    /// Resolves once the session is known to be broken. Cancel-safe.
    pub(crate) async fn broken(&self) {
        self.broken.cancelled().await;
    }

    /// Resolves when the connection is lost or marked broken. Cancel-safe.
    async fn lost(&self) {
        loop {
            tokio::select! {
                () = self.broken.cancelled() => return,
                () = sleep(POLL) => if !self.connection.status().connected() { return },
            }
        }
    }

    /// Closes a connection that may still be half-open after being marked broken.
    fn discard(self: &Arc<Self>) {
        if self.connection.status().connected() {
            let session = self.clone();
            tokio::spawn(async move {
                let _ = timeout(
                    Duration::from_secs(5),
                    session
                        .connection
                        .close(320, "relay-bus reconnecting".into()),
                )
                .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let max = Duration::from_secs(5);
        for attempt in 0..40 {
            let d = backoff(attempt, max);
            let ceiling = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(16))
                .min(max);
            assert!(d <= ceiling && d >= ceiling / 2, "{attempt}: {d:?}");
        }
    }
}
