//! [`Bus`], the public face of the crate.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties, ErrorKind,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{FieldTable, ShortString},
};
use tokio::{
    sync::watch,
    time::{Instant, timeout, timeout_at},
};
use tokio_util::sync::CancellationToken;

use crate::{
    AckEnvelope, BusConfig, BusError, Envelope, RequestEnvelope, ResponseEnvelope,
    consume::{self, AckConsumer, RequestConsumer, ResponseConsumer, Spec},
    link::{self, Link, Shared},
    publish::{Outgoing, with_message_id},
    topology::{self, Names, short},
};

const CONTENT_TYPE: &str = "application/msgpack";

/// Handle to the broker: cheap to clone, all clones share one connection.
///
/// The connection is supervised in the background (see the crate docs). The bus shuts down when
/// [`close`](Self::close) is called or when the last handle and the last
/// [`Subscription`](crate::Subscription) are dropped.
#[derive(Clone)]
pub struct Bus {
    shared: Arc<Shared>,
    owner: Arc<Owner>,
}

/// Fires the shutdown when the last [`Bus`] handle or subscription is dropped. Background tasks
/// hold [`Shared`] but not this, so they do not keep the bus alive.
pub(crate) struct Owner {
    shutdown: CancellationToken,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Connection state as the rest of the node should see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusHealth {
    Connected,
    /// The connection is lost and being re-established since `since`; publishes wait for it
    /// (up to `publish_timeout`), consumers resume by themselves.
    Reconnecting {
        since: Instant,
    },
    /// [`Bus::close`] was called.
    Closed,
}

impl Bus {
    /// Connects (trying each URL in order, retrying with back-off until `connect_timeout`, one
    /// warning line per failed attempt), declares the exchange and this origin's response and
    /// acknowledge queues, and starts the connection supervisor.
    ///
    /// Fails fast with [`BusError::Broker`] when the broker refuses the topology (e.g. a queue
    /// exists with other arguments), and with [`BusError::Unavailable`] when no broker answered.
    pub async fn connect(config: BusConfig, origin_id: &str) -> Result<Bus, BusError> {
        let brokers = config.broker_uris()?;
        let names = Names::new(config.prefix.clone());
        names.check("origin id", origin_id)?;
        let (link, _) = watch::channel(Link::Down {
            since: Instant::now(),
        });
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            config,
            brokers,
            origin: origin_id.to_owned(),
            names,
            tenants: Mutex::new(BTreeSet::new()),
            link,
            shutdown: shutdown.clone(),
            reconnects: AtomicU64::new(0),
        });
        link::connect(shared.clone()).await?;
        Ok(Bus {
            shared,
            owner: Arc::new(Owner { shutdown }),
        })
    }

    /// This node's origin id.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The exchange and queue names in use.
    pub fn names(&self) -> &Names {
        &self.shared.names
    }

    pub fn health(&self) -> BusHealth {
        match &*self.shared.link.borrow() {
            Link::Up(session) if session.is_alive() => BusHealth::Connected,
            Link::Up(_) => BusHealth::Reconnecting {
                since: Instant::now(),
            },
            Link::Down { since } => BusHealth::Reconnecting { since: *since },
            Link::Closed => BusHealth::Closed,
        }
    }

    /// How many times the connection was lost and re-established (a metric; also lets tests
    /// wait for a reconnect).
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Waits until the bus is connected, at most `wait`.
    pub async fn wait_connected(&self, wait: Duration) -> Result<(), BusError> {
        timeout(wait, self.shared.live_session())
            .await
            .map_err(|_| BusError::Unavailable { waited: wait })?
            .map(drop)
    }

    /// Declares the durable request queue of `tenant` (idempotent) and remembers the tenant so
    /// the queue is redeclared after every reconnect. Call it when a tenant is created and, for
    /// every tenant, at start-up.
    pub async fn declare_tenant(&self, tenant: &str) -> Result<(), BusError> {
        self.shared.names.check("tenant", tenant)?;
        self.shared
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.to_owned());
        self.with_channel("declaring a tenant queue", Op::DeclareTenant(tenant))
            .await
            .map(drop)
    }

    /// How many consumers (tunnels, on any node) the tenant's request queue has right now; 0 when
    /// the queue does not exist. A snapshot: use it to fail fast when no connector is connected
    /// anywhere, not as a guarantee that a publish will be consumed.
    pub async fn consumer_count(&self, tenant: &str) -> Result<u32, BusError> {
        self.shared.names.check("tenant", tenant)?;
        let queue = self.shared.names.request_queue(tenant);
        self.with_channel("inspecting a tenant queue", Op::ConsumerCount(&queue))
            .await
    }

    /// Deletes the request queue of `tenant` with whatever it holds and forgets the tenant.
    /// Consumers of it stop receiving; drop them.
    pub async fn delete_tenant(&self, tenant: &str) -> Result<(), BusError> {
        self.shared.names.check("tenant", tenant)?;
        self.shared
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tenant);
        let queue = self.shared.names.request_queue(tenant);
        self.with_channel("deleting a tenant queue", Op::DeleteQueue(&queue))
            .await
            .map(drop)
    }

    /// Deletes this origin's response and acknowledge queues, e.g. when a node is retired for
    /// good (they would otherwise expire after `origin_queue_expiry`). Pending responses are lost.
    pub async fn delete_origin_queues(&self) -> Result<(), BusError> {
        let names = &self.shared.names;
        let origin = &self.shared.origin;
        for queue in [names.response_queue(origin), names.ack_queue(origin)] {
            self.with_channel("deleting an origin queue", Op::DeleteQueue(&queue))
                .await?;
        }
        Ok(())
    }

    /// Publishes a request to `tenant`'s queue and returns once the broker confirmed it.
    ///
    /// `ttl` (the request's remaining time) becomes the message's `expiration`, so the broker
    /// drops it unconsumed when nobody takes it in time; `persistent` (queue mode) makes it
    /// survive a broker restart. Unroutable (the tenant's queue was never declared) →
    /// [`BusError::Unroutable`]; `ttl` of zero → [`BusError::Expired`].
    pub async fn publish_request(
        &self,
        tenant: &str,
        envelope: &RequestEnvelope,
        ttl: Duration,
        persistent: bool,
    ) -> Result<(), BusError> {
        self.shared.names.check("tenant", tenant)?;
        let ttl_ms = ttl.as_millis();
        if ttl_ms == 0 {
            return Err(BusError::Expired);
        }
        let payload = envelope.to_bytes()?;
        let queue = self.shared.names.request_queue(tenant);
        let properties = properties("relay.request.v1", &envelope.request_id)
            .with_delivery_mode(if persistent { 2 } else { 1 })
            .with_expiration(ShortString::from(ttl_ms.to_string()))
            .with_reply_to(short(
                &self.shared.names.response_queue(&self.shared.origin),
            ));
        self.shared
            .publish(Outgoing {
                routing_key: &queue,
                payload: &payload,
                properties,
                message_id: &envelope.request_id,
            })
            .await
    }

    /// Consumes `tenant`'s requests as one of its competing consumers (declaring the queue if
    /// needed). `prefetch` bounds the unsettled requests this consumer holds (the tenant's
    /// concurrency limit); 0 counts as 1, since unlimited would let one node take a whole backlog.
    pub async fn consume_requests(
        &self,
        tenant: &str,
        prefetch: u16,
    ) -> Result<RequestConsumer, BusError> {
        self.shared.names.check("tenant", tenant)?;
        self.shared
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.to_owned());
        consume::start(
            self.shared.clone(),
            self.owner.clone(),
            Spec {
                queue: self.shared.names.request_queue(tenant),
                prefetch: prefetch.max(1),
                auto_ack: false,
                declare_tenant: Some(tenant.to_owned()),
                triage: consume::triage_request,
            },
        )
        .await
    }

    /// Sends a response to the origin that published the request.
    /// [`BusError::Unroutable`] means that origin's queues are gone (node retired or expired).
    pub async fn publish_response(
        &self,
        origin: &str,
        envelope: &ResponseEnvelope,
    ) -> Result<(), BusError> {
        self.shared.names.check("origin id", origin)?;
        let queue = self.shared.names.response_queue(origin);
        self.publish_to_queue(
            &queue,
            "relay.response.v1",
            &envelope.request_id,
            envelope.to_bytes()?,
        )
        .await
    }

    /// Confirmed, mandatory publish of `payload` (message type `kind`) to one origin queue.
    async fn publish_to_queue(
        &self,
        queue: &str,
        kind: &str,
        request_id: &str,
        payload: Vec<u8>,
    ) -> Result<(), BusError> {
        self.shared
            .publish(Outgoing {
                routing_key: queue,
                payload: &payload,
                properties: properties(kind, request_id),
                message_id: request_id,
            })
            .await
    }

    /// This origin's responses.
    pub async fn consume_responses(&self) -> Result<ResponseConsumer, BusError> {
        let queue = self.shared.names.response_queue(&self.shared.origin);
        self.consume_origin_queue(queue).await
    }

    /// Sends a request acknowledgement to the origin whose consumer holds the delivery.
    pub async fn publish_ack(&self, origin: &str, ack: &AckEnvelope) -> Result<(), BusError> {
        self.shared.names.check("origin id", origin)?;
        let queue = self.shared.names.ack_queue(origin);
        self.publish_to_queue(&queue, "relay.ack.v1", &ack.request_id, ack.to_bytes()?)
            .await
    }

    /// Acknowledgements addressed to this origin.
    pub async fn consume_acks(&self) -> Result<AckConsumer, BusError> {
        let queue = self.shared.names.ack_queue(&self.shared.origin);
        self.consume_origin_queue(queue).await
    }

    /// Stops the supervisor and every subscription (their streams end) and closes the connection
    /// (unsettled deliveries go back to their queues). Later calls fail with [`BusError::Closed`].
    pub async fn close(&self) {
        self.shared.shutdown.cancel();
        let mut rx = self.shared.link.subscribe();
        let _ = timeout(
            Duration::from_secs(5),
            rx.wait_for(|link| matches!(link, Link::Closed)),
        )
        .await;
    }

    async fn consume_origin_queue<T: Envelope + Send + 'static>(
        &self,
        queue: String,
    ) -> Result<consume::Subscription<T>, BusError> {
        consume::start(
            self.shared.clone(),
            self.owner.clone(),
            Spec {
                queue,
                prefetch: self.shared.config.response_prefetch.max(1),
                auto_ack: true,
                declare_tenant: None,
                triage: consume::triage_envelope::<T>,
            },
        )
        .await
    }

    /// Runs a topology operation on a short-lived channel, waiting for a connection and retrying
    /// once per reconnect until `publish_timeout`.
    async fn with_channel(&self, what: &'static str, op: Op<'_>) -> Result<u32, BusError> {
        let deadline = Instant::now() + self.shared.config.publish_timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(self.shared.unavailable());
            }
            let session = self.shared.session_by(deadline).await?;
            let attempt = timeout_at(deadline, async {
                let channel = session.connection.create_channel().await?;
                let result = match op {
                    Op::DeclareTenant(tenant) => topology::declare_request_queue(
                        &channel,
                        &self.shared.names,
                        tenant,
                        self.shared.config.quorum_queues,
                    )
                    .await
                    .map(|()| 0),
                    Op::DeleteQueue(queue) => {
                        channel
                            .queue_delete(short(queue), QueueDeleteOptions::default())
                            .await
                    }
                    Op::ConsumerCount(queue) => {
                        let declared = channel
                            .queue_declare(
                                short(queue),
                                QueueDeclareOptions {
                                    passive: true,
                                    ..QueueDeclareOptions::default()
                                },
                                FieldTable::default(),
                            )
                            .await;
                        match declared {
                            Ok(queue) => Ok(queue.consumer_count()),
                            Err(e) if is_not_found(&e) => Ok(0),
                            Err(e) => Err(e),
                        }
                    }
                };
                if channel.status().connected() {
                    let _ = channel.close(200, "done".into()).await;
                }
                result
            })
            .await;
            match attempt {
                Err(_) => return Err(self.shared.unavailable()),
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(_)) if session.check_connection() => {}
                Ok(Err(source)) => return Err(BusError::Broker { op: what, source }),
            }
        }
    }
}

/// A topology operation run by [`Bus::with_channel`]. (An enum rather than an async closure
/// keeps the public futures `Send`.)
#[derive(Clone, Copy)]
enum Op<'a> {
    /// Declare a tenant's request queue; yields 0.
    DeclareTenant(&'a str),
    /// Delete a queue; yields the number of messages it held.
    DeleteQueue(&'a str),
    /// Yields the number of consumers of a queue, 0 when it does not exist.
    ConsumerCount(&'a str),
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("origin", &self.shared.origin)
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

fn properties(kind: &str, message_id: &str) -> BasicProperties {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    with_message_id(
        BasicProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_type(kind.into())
            .with_timestamp(timestamp),
        message_id,
    )
}
