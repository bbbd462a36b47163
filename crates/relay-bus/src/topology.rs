//! Names and declarations of the broker topology (DESIGN §9).
//!
//! One durable direct exchange `{prefix}relay`. Every queue is bound to it with its own name as
//! routing key:
//! - `{prefix}requests.{tenant}`: durable (classic or quorum), one per tenant, competing consumers;
//! - `{prefix}responses.{origin}` and `{prefix}acks.{origin}`: durable with `x-expires`, one pair
//!   per node. Durable so a broker restart or a connection blip loses nothing that is queued;
//!   expiring so a node that never comes back leaves nothing behind.

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::BusError;

/// AMQP short strings (queue names, routing keys) are at most 255 bytes.
const MAX_NAME: usize = 255;

/// The exchange and queue names of one installation (one prefix).
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn exchange(&self) -> String {
        format!("{}relay", self.prefix)
    }

    /// The request queue of `tenant`; also its routing key.
    pub fn request_queue(&self, tenant: &str) -> String {
        format!("{}requests.{tenant}", self.prefix)
    }

    /// The response queue of `origin`; also its routing key.
    pub fn response_queue(&self, origin: &str) -> String {
        format!("{}responses.{origin}", self.prefix)
    }

    /// The acknowledge queue of `origin`; also its routing key.
    pub fn ack_queue(&self, origin: &str) -> String {
        format!("{}acks.{origin}", self.prefix)
    }

    /// Checks that every name derived from `id` fits in an AMQP short string.
    pub(crate) fn check(&self, what: &'static str, id: &str) -> Result<(), BusError> {
        let invalid = |reason| {
            Err(BusError::InvalidName {
                what,
                name: id.to_owned(),
                reason,
            })
        };
        if id.is_empty() {
            return invalid("must not be empty");
        }
        if id.chars().any(char::is_control) {
            return invalid("must not contain control characters");
        }
        // "responses." is the longest infix.
        if self.prefix.len() + "responses.".len() + id.len() > MAX_NAME {
            return invalid("too long for an AMQP queue name (255 bytes with the prefix)");
        }
        Ok(())
    }
}

/// A queue name or routing key already checked by [`Names::check`].
pub(crate) fn short(name: &str) -> ShortString {
    ShortString::try_new(name).unwrap_or_else(|_| ShortString::from(""))
}

pub(crate) async fn declare_exchange(channel: &Channel, names: &Names) -> lapin::Result<()> {
    channel
        .exchange_declare(
            short(&names.exchange()),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

pub(crate) async fn declare_request_queue(
    channel: &Channel,
    names: &Names,
    tenant: &str,
    quorum: bool,
) -> lapin::Result<()> {
    let mut arguments = FieldTable::default();
    if quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    declare_bound(channel, names, &names.request_queue(tenant), arguments).await
}

pub(crate) async fn declare_origin_queues(
    channel: &Channel,
    names: &Names,
    origin: &str,
    expiry: Duration,
) -> lapin::Result<()> {
    let expiry_ms = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX).max(1);
    for queue in [names.response_queue(origin), names.ack_queue(origin)] {
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(expiry_ms));
        declare_bound(channel, names, &queue, arguments).await?;
    }
    Ok(())
}

async fn declare_bound(
    channel: &Channel,
    names: &Names,
    queue: &str,
    arguments: FieldTable,
) -> lapin::Result<()> {
    channel
        .queue_declare(
            short(queue),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    channel
        .queue_bind(
            short(queue),
            short(&names.exchange()),
            short(queue),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let names = Names::new("t1.");
        assert_eq!(names.exchange(), "t1.relay");
        assert_eq!(names.request_queue("acme"), "t1.requests.acme");
        assert_eq!(names.response_queue("n1"), "t1.responses.n1");
        assert_eq!(names.ack_queue("n1"), "t1.acks.n1");
    }

    #[test]
    fn rejects_unusable_ids() {
        let names = Names::new("p.");
        assert!(names.check("tenant", "acme-01").is_ok());
        assert!(names.check("tenant", "").is_err());
        assert!(names.check("tenant", "a\nb").is_err());
        assert!(names.check("tenant", &"x".repeat(243)).is_ok());
        assert!(names.check("tenant", &"x".repeat(244)).is_err());
    }
}
