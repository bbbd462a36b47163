//! Confirmed, mandatory publishing that rides out reconnects, over a per-session pool of
//! confirm-mode channels.

use std::sync::atomic::Ordering;

use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use tokio::{
    sync::MutexGuard,
    time::{Instant, timeout_at},
};
use tracing::debug;

use crate::{
    BusError,
    link::{Session, Shared},
    topology::short,
};

/// One message to publish to the exchange.
pub(crate) struct Outgoing<'a> {
    pub(crate) routing_key: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) properties: BasicProperties,
    /// Checked against a `basic.return` to be sure it is ours.
    pub(crate) message_id: &'a str,
}

/// Sets `message_id` when it fits an AMQP short string (it only helps diagnostics).
pub(crate) fn with_message_id(properties: BasicProperties, id: &str) -> BasicProperties {
    match ShortString::try_new(id) {
        Ok(id) => properties.with_message_id(id),
        Err(_) => properties,
    }
}

impl Shared {
    /// Publishes with `mandatory` and waits for the broker's confirm.
    ///
    /// While the connection is down it waits for the supervisor's next session, and it retries a
    /// publish that failed before the message was fully written, all within
    /// `config.publish_timeout`. A message that was written but never confirmed is not retried
    /// (that could duplicate it): [`BusError::Unconfirmed`].
    pub(crate) async fn publish(&self, message: Outgoing<'_>) -> Result<(), BusError> {
        let result = self.publish_confirmed(message).await;
        crate::stats::count(match result {
            Ok(()) => &crate::stats::STATS.published,
            Err(_) => &crate::stats::STATS.publish_failed,
        });
        result
    }

    async fn publish_confirmed(&self, message: Outgoing<'_>) -> Result<(), BusError> {
        let deadline = Instant::now() + self.config.publish_timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(self.unavailable());
            }
            let session = self.session_by(deadline).await?;
            let mut publisher = match timeout_at(deadline, session.publisher()).await {
                Err(_) => return Err(self.unavailable()),
                Ok(Ok(publisher)) => publisher,
                Ok(Err(e)) => {
                    if session.check_connection() {
                        continue;
                    }
                    return Err(BusError::Broker {
                        op: "opening a publisher channel",
                        source: e,
                    });
                }
            };
            let Some(channel) = publisher.channel().cloned() else {
                continue;
            };
            // Set before anything is written, so that a publish cancelled at any point from here
            // leaves the channel marked for replacement.
            publisher.set_in_flight(true);
            let sent = channel
                .basic_publish(
                    short(&self.names.exchange()),
                    short(message.routing_key),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    message.payload,
                    message.properties.clone(),
                )
                .await;
            let confirm = match sent {
                Ok(confirm) => confirm,
                Err(e) => {
                    // Not (fully) written: safe to try again on a healthy channel.
                    debug!(error = %e, "Publish not sent; retrying.");
                    publisher.discard();
                    session.check_connection();
                    continue;
                }
            };
            let confirmation = match timeout_at(deadline, confirm).await {
                Ok(Ok(confirmation)) => confirmation,
                Ok(Err(e)) => {
                    debug!(error = %e, "Publish unconfirmed.");
                    publisher.discard();
                    session.check_connection();
                    return Err(BusError::Unconfirmed);
                }
                Err(_) => {
                    publisher.discard();
                    return Err(BusError::Unconfirmed);
                }
            };
            publisher.set_in_flight(false);
            return self.outcome(confirmation, &message);
        }
    }

    fn outcome(&self, confirmation: Confirmation, message: &Outgoing<'_>) -> Result<(), BusError> {
        let nacked = confirmation.is_nack();
        let returned = confirmation.take_message().filter(|returned| {
            let ours = returned
                .delivery
                .properties
                .message_id()
                .as_ref()
                .is_none_or(|id| id.as_str() == message.message_id);
            if !ours {
                debug!("Ignoring a basic.return for another message.");
            }
            ours
        });
        match (returned, nacked) {
            (Some(_), _) => Err(BusError::Unroutable {
                routing_key: message.routing_key.to_owned(),
            }),
            (None, true) => Err(BusError::Nacked),
            (None, false) => Ok(()),
        }
    }

    pub(crate) fn unavailable(&self) -> BusError {
        BusError::Unavailable {
            waited: self.config.publish_timeout,
        }
    }
}

/// A confirm-mode channel used by one publish at a time.
#[derive(Default)]
pub(crate) struct PublisherSlot {
    channel: Option<Channel>,
    /// Set while a publish waits for its confirm. Still set on the next acquire means the
    /// previous publish was abandoned (cancelled): its `basic.return` could still arrive and be
    /// attributed to the next publish, so the channel is replaced.
    in_flight: bool,
}

impl Session {
    /// A publisher channel in confirm mode, exclusively for the caller until the guard drops.
    pub(crate) async fn publisher(&self) -> Result<PublisherGuard<'_>, lapin::Error> {
        let count = self.publishers.len();
        let start = self.next_publisher.fetch_add(1, Ordering::Relaxed) % count;
        let free = (0..count).find_map(|i| self.publishers[(start + i) % count].try_lock().ok());
        let mut slot = match free {
            Some(slot) => slot,
            None => self.publishers[start].lock().await,
        };
        let usable = slot
            .channel
            .as_ref()
            .is_some_and(|c| c.status().connected() && !slot.in_flight);
        if !usable {
            if let Some(old) = slot.channel.take() {
                tokio::spawn(async move {
                    let _ = old.close(200, "replaced".into()).await;
                });
            }
            slot.in_flight = false;
            let channel = self.connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            slot.channel = Some(channel);
        }
        Ok(PublisherGuard { slot })
    }
}

pub(crate) struct PublisherGuard<'a> {
    slot: MutexGuard<'a, PublisherSlot>,
}

impl PublisherGuard<'_> {
    pub(crate) fn channel(&self) -> Option<&Channel> {
        self.slot.channel.as_ref()
    }

    pub(crate) fn set_in_flight(&mut self, in_flight: bool) {
        self.slot.in_flight = in_flight;
    }

    /// Drops the channel (e.g. its confirm timed out); the next user opens a fresh one.
    pub(crate) fn discard(&mut self) {
        if let Some(channel) = self.slot.channel.take() {
            tokio::spawn(async move {
                let _ = channel.close(200, "discarded".into()).await;
            });
        }
        self.slot.in_flight = false;
    }
}
