//! Consumers that survive reconnects: [`Subscription`], [`RequestDelivery`] and [`AckHandle`].
//!
//! Each subscription is a task that owns one AMQP channel with its own prefetch and forwards
//! deliveries into a bounded in-process channel read by the [`Subscription`] stream. When the
//! connection is lost the task waits for the supervisor's next session and subscribes again;
//! when the broker cancels the consumer (queue deleted, quorum leader moved) it resubscribes on
//! the same connection after a back-off. The stream ends only when the bus is closed or dropped.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::{Stream, StreamExt};
use lapin::{
    Acker, Channel, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::FieldTable,
};
use tokio::{
    sync::mpsc,
    time::{Instant, sleep, timeout_at},
};
use tracing::{debug, warn};

use crate::{
    AckEnvelope, BusError, Envelope, RequestEnvelope, ResponseEnvelope,
    bus::Owner,
    error_chain,
    link::{Session, Shared, backoff},
    topology::{self, short},
};

/// A stream of deliveries that keeps yielding across reconnects.
///
/// Read it with [`next`](Self::next) or as a [`Stream`]. It ends (`None`) only after the bus is
/// closed, or once every [`Bus`](crate::Bus) handle is dropped. It keeps the bus alive while it
/// exists. Dropping it cancels the consumer; deliveries not yet settled go back to the queue.
pub struct Subscription<T> {
    rx: mpsc::Receiver<T>,
    _owner: Arc<Owner>,
}

/// Requests of one tenant, shared with every other consumer of that tenant on any node.
pub type RequestConsumer = Subscription<RequestDelivery>;
/// Responses addressed to this origin.
pub type ResponseConsumer = Subscription<ResponseEnvelope>;
/// Acknowledgements addressed to this origin.
pub type AckConsumer = Subscription<AckEnvelope>;

impl<T> Subscription<T> {
    /// The next delivery. Cancel-safe: nothing is lost when the future is dropped.
    pub async fn next(&mut self) -> Option<T> {
        self.rx.recv().await
    }
}

impl<T> Stream for Subscription<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// A request taken from a tenant's queue. It occupies one prefetch slot until `ack` is settled.
///
/// Envelopes whose `expires_at_ms` has passed never get here: the consumer acknowledges and
/// drops them itself.
#[derive(Debug)]
pub struct RequestDelivery {
    pub envelope: RequestEnvelope,
    /// The broker delivered this message before (to this or another consumer) without it being
    /// settled, e.g. because that consumer's connection was lost. The request may already have
    /// been executed, which matters for at-most-once acknowledge modes.
    pub redelivered: bool,
    pub ack: AckHandle,
}

/// Settles one delivery with the broker.
///
/// Dropping it unsettled requeues the message (so a cancelled handler cannot hold a prefetch
/// slot forever). Settling fails with [`BusError::DeliveryLost`] when the channel that carried
/// the message is gone; the broker then redelivers it anyway.
pub struct AckHandle {
    acker: Option<Acker>,
    /// Keeps the carrying channel open until this delivery is settled.
    _channel: Arc<ChannelKeeper>,
}

impl AckHandle {
    fn new(acker: Acker, channel: Arc<ChannelKeeper>) -> Self {
        Self {
            acker: Some(acker),
            _channel: channel,
        }
    }

    /// Done: the broker forgets the message.
    pub async fn ack(mut self) -> Result<(), BusError> {
        let acker = self.acker.take();
        settle(acker, Settle::Ack).await
    }

    /// Give the message back to the queue for another consumer.
    pub async fn requeue(mut self) -> Result<(), BusError> {
        let acker = self.acker.take();
        settle(acker, Settle::Requeue).await
    }

    /// Drop the message without executing it (it is not requeued).
    pub async fn reject(mut self) -> Result<(), BusError> {
        let acker = self.acker.take();
        settle(acker, Settle::Reject).await
    }

    /// False once the carrying channel is gone (settling would fail with `DeliveryLost`).
    pub fn is_usable(&self) -> bool {
        self.acker.as_ref().is_some_and(Acker::usable)
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take()
            && acker.usable()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = settle(Some(acker), Settle::Requeue).await;
            });
        }
    }
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckHandle")
            .field("usable", &self.is_usable())
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    Reject,
}

async fn settle(acker: Option<Acker>, how: Settle) -> Result<(), BusError> {
    let Some(acker) = acker else {
        return Err(BusError::DeliveryLost);
    };
    let settled = match how {
        Settle::Ack => acker.ack(BasicAckOptions::default()).await,
        Settle::Requeue | Settle::Reject => {
            acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: matches!(how, Settle::Requeue),
                })
                .await
        }
    };
    match settled {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(BusError::DeliveryLost),
    }
}

/// What to do with one delivery.
pub(crate) enum Triage<T> {
    /// Hand it to the reader, who settles it.
    Deliver(T),
    /// Hand it to the reader, then acknowledge it.
    DeliverThenAck(T, Acker),
    /// Acknowledge it without handing it on.
    Drop(Acker),
    /// Reject it without requeueing (malformed: it would only come back).
    Reject(Acker),
}

/// What a subscription consumes and how it treats deliveries.
pub(crate) struct Spec<T> {
    pub(crate) queue: String,
    pub(crate) prefetch: u16,
    /// Consume with `no_ack`: the broker forgets a message as it sends it, so nothing is
    /// settled (the per-origin queues, whose messages are worthless once this origin is gone).
    pub(crate) auto_ack: bool,
    /// Declare this tenant's request queue before each subscribe.
    pub(crate) declare_tenant: Option<String>,
    pub(crate) triage: fn(Delivery, &str, &Arc<ChannelKeeper>) -> Triage<T>,
}

pub(crate) fn triage_request(
    delivery: Delivery,
    queue: &str,
    channel: &Arc<ChannelKeeper>,
) -> Triage<RequestDelivery> {
    match RequestEnvelope::from_bytes(&delivery.data) {
        Err(e) => {
            crate::stats::count(&crate::stats::STATS.consume_failed);
            warn!(queue, error = %error_chain(&e), "Dropping a malformed request envelope.");
            Triage::Reject(delivery.acker)
        }
        Ok(envelope) if envelope.is_expired() => {
            crate::stats::count(&crate::stats::STATS.consume_failed);
            debug!(queue, request_id = %envelope.request_id, "Dropping an expired request.");
            Triage::Drop(delivery.acker)
        }
        Ok(envelope) => {
            crate::stats::count(&crate::stats::STATS.consumed);
            Triage::Deliver(RequestDelivery {
                envelope,
                redelivered: delivery.redelivered,
                ack: AckHandle::new(delivery.acker, channel.clone()),
            })
        }
    }
}

/// Responses and acks are settled as soon as they are handed on (or, consumed with `no_ack`,
/// as the broker sends them): this origin is their only reader, and what it can be sent is
/// bounded by the requests it has in flight.
pub(crate) fn triage_envelope<T: Envelope>(
    delivery: Delivery,
    queue: &str,
    _channel: &Arc<ChannelKeeper>,
) -> Triage<T> {
    match T::from_bytes(&delivery.data) {
        Ok(envelope) => {
            crate::stats::count(&crate::stats::STATS.consumed);
            Triage::DeliverThenAck(envelope, delivery.acker)
        }
        Err(e) => {
            crate::stats::count(&crate::stats::STATS.consume_failed);
            warn!(queue, error = %error_chain(&e), "Dropping a malformed envelope.");
            Triage::Reject(delivery.acker)
        }
    }
}

/// A consumer's channel, closed when the last holder lets go: the subscription, and every
/// [`AckHandle`] not settled yet. Ending a subscription (its reader stopped, say because the
/// tenant's last tunnel on this node went away) therefore does not make the broker requeue
/// the deliveries that are still running or held for a manual acknowledgement.
pub(crate) struct ChannelKeeper(Channel);

impl Drop for ChannelKeeper {
    fn drop(&mut self) {
        if self.0.status().connected()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let channel = self.0.clone();
            runtime.spawn(async move {
                let _ = channel.close(200, "consumer closed".into()).await;
            });
        }
    }
}

/// A subscription live on one session.
struct Active {
    session: Arc<Session>,
    channel: Arc<ChannelKeeper>,
    consumer: Consumer,
}

impl Active {
    /// Stops the deliveries; the channel closes once those handed out are settled.
    fn close(self) {
        let Active {
            channel, consumer, ..
        } = self;
        if !channel.0.status().connected() {
            return;
        }
        let tag = consumer.tag();
        tokio::spawn(async move {
            let _ = channel
                .0
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            drop(channel);
        });
    }
}

async fn subscribe<T>(
    shared: &Shared,
    session: Arc<Session>,
    spec: &Spec<T>,
) -> Result<Active, lapin::Error> {
    let channel = session.connection.create_channel().await?;
    let subscribed = async {
        channel
            .basic_qos(spec.prefetch, BasicQosOptions::default())
            .await?;
        if let Some(tenant) = &spec.declare_tenant {
            topology::declare_request_queue(
                &channel,
                &shared.names,
                tenant,
                shared.config.quorum_queues,
            )
            .await?;
        }
        channel
            .basic_consume(
                short(&spec.queue),
                "".into(),
                BasicConsumeOptions {
                    no_ack: spec.auto_ack,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
    }
    .await;
    match subscribed {
        Ok(consumer) => Ok(Active {
            session,
            channel: Arc::new(ChannelKeeper(channel)),
            consumer,
        }),
        Err(e) => {
            if channel.status().connected() {
                let _ = channel.close(200, "subscribe failed".into()).await;
            }
            Err(e)
        }
    }
}

/// Subscribes (waiting up to `publish_timeout` for a connection) and starts the forwarding task.
pub(crate) async fn start<T: Send + 'static>(
    shared: Arc<Shared>,
    owner: Arc<Owner>,
    spec: Spec<T>,
) -> Result<Subscription<T>, BusError> {
    let deadline = Instant::now() + shared.config.publish_timeout;
    let active = loop {
        if Instant::now() >= deadline {
            return Err(shared.unavailable());
        }
        let session = shared.session_by(deadline).await?;
        match timeout_at(deadline, subscribe(&shared, session.clone(), &spec)).await {
            Err(_) => return Err(shared.unavailable()),
            Ok(Ok(active)) => break active,
            Ok(Err(e)) => {
                if session.check_connection() {
                    continue;
                }
                return Err(BusError::Broker {
                    op: "subscribing",
                    source: e,
                });
            }
        }
    };
    let (tx, rx) = mpsc::channel(usize::from(spec.prefetch.max(1)));
    tokio::spawn(run(shared, spec, tx, active));
    Ok(Subscription { rx, _owner: owner })
}

/// Why forwarding stopped.
enum Stop {
    /// The reader is gone or the bus shut down: the task ends.
    Done,
    /// The consumer or its connection ended; `delivered` tells whether it got anything.
    Ended { reason: String, delivered: bool },
}

async fn run<T: Send + 'static>(
    shared: Arc<Shared>,
    spec: Spec<T>,
    tx: mpsc::Sender<T>,
    mut active: Active,
) {
    let mut failures: u32 = 0;
    loop {
        let stop = forward(&shared, &spec, &tx, &mut active).await;
        let session = active.session.clone();
        active.close();
        let (reason, delivered) = match stop {
            Stop::Done => return,
            Stop::Ended { reason, delivered } => (reason, delivered),
        };
        if delivered {
            failures = 0;
        }
        if !session.check_connection() && session.is_alive() {
            // The connection is fine but the broker ended this consumer.
            failures += 1;
            warn!(queue = %spec.queue, reason = %reason, "Broker ended a consumer; resubscribing.");
            if !pause(&shared, &tx, backoff(failures, shared.config.max_backoff)).await {
                return;
            }
        }
        active = loop {
            let session = tokio::select! {
                session = shared.live_session() => match session {
                    Ok(session) => session,
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let subscribed = tokio::select! {
                subscribed = subscribe(&shared, session.clone(), &spec) => subscribed,
                () = tx.closed() => return,
            };
            match subscribed {
                Ok(active) => break active,
                Err(_) if session.check_connection() => {}
                Err(e) => {
                    failures += 1;
                    warn!(queue = %spec.queue, error = %e, "Cannot resubscribe; retrying.");
                    if !pause(&shared, &tx, backoff(failures, shared.config.max_backoff)).await {
                        return;
                    }
                }
            }
        };
        debug!(queue = %spec.queue, "Consumer resubscribed.");
    }
}

/// Sleeps unless the reader goes away or the bus shuts down first (then `false`).
async fn pause<T>(shared: &Shared, tx: &mpsc::Sender<T>, delay: std::time::Duration) -> bool {
    tokio::select! {
        () = sleep(delay) => true,
        () = tx.closed() => false,
        () = shared.shutdown.cancelled() => false,
    }
}

async fn forward<T>(
    shared: &Shared,
    spec: &Spec<T>,
    tx: &mpsc::Sender<T>,
    active: &mut Active,
) -> Stop {
    let mut delivered = false;
    loop {
        let next = tokio::select! {
            () = tx.closed() => return Stop::Done,
            () = shared.shutdown.cancelled() => return Stop::Done,
            () = active.session.broken() => None,
            next = active.consumer.next() => Some(next),
        };
        let delivery = match next {
            Some(Some(Ok(delivery))) => delivery,
            Some(Some(Err(e))) => {
                return Stop::Ended {
                    reason: e.to_string(),
                    delivered,
                };
            }
            Some(None) => {
                return Stop::Ended {
                    reason: "consumer cancelled".into(),
                    delivered,
                };
            }
            None => {
                return Stop::Ended {
                    reason: "connection lost".into(),
                    delivered,
                };
            }
        };
        delivered = true;
        let triaged = (spec.triage)(delivery, &spec.queue, &active.channel);
        if spec.auto_ack {
            // The broker settled it already; only hand it on.
            if let Triage::Deliver(item) | Triage::DeliverThenAck(item, _) = triaged
                && tx.send(item).await.is_err()
            {
                return Stop::Done;
            }
            continue;
        }
        match triaged {
            Triage::Deliver(item) => {
                if tx.send(item).await.is_err() {
                    return Stop::Done;
                }
            }
            Triage::DeliverThenAck(item, acker) => {
                if tx.send(item).await.is_err() {
                    return Stop::Done;
                }
                let _ = acker.ack(BasicAckOptions::default()).await;
            }
            Triage::Drop(acker) => {
                let _ = acker.ack(BasicAckOptions::default()).await;
            }
            Triage::Reject(acker) => {
                let _ = acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: false,
                    })
                    .await;
            }
        }
    }
}
