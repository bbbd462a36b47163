//! The broker layer of multi-node Relay (DESIGN §3, §9), on RabbitMQ via `lapin`.
//!
//! A client request that lands on node A for a tenant whose connector tunnel is on node B goes:
//! A [`Bus::publish_request`] → the tenant's durable request queue → B (one of the tenant's
//! competing consumers, [`Bus::consume_requests`], prefetch = the tenant's concurrency limit)
//! executes it → B [`Bus::publish_response`] → A's response queue → A ([`Bus::consume_responses`])
//! streams it to the client. Acknowledgements travel the same way to the origin that holds the
//! delivery ([`Bus::publish_ack`], [`Bus::consume_acks`]).
//!
//! What the crate guarantees:
//! - every publish is `mandatory` and confirmed: it returns only after the broker took the
//!   message, and an unroutable message is an error ([`BusError::Unroutable`]), never dropped;
//! - a lost connection is re-established in the background (jittered back-off, every URL in
//!   order), the topology redeclared and consumers resubscribed; streams keep yielding; a
//!   publish during the outage waits up to `publish_timeout`, then [`BusError::Unavailable`];
//! - unsettled deliveries of a lost channel are redelivered by the broker, flagged
//!   [`RequestDelivery::redelivered`].
//!
//! Logging: this crate logs a lost connection once (WARN), its return once (INFO), and refused
//! topology (ERROR). `lapin` itself logs every connection error at ERROR and every returned
//! message at WARN *with its payload* (request headers included), so run with `lapin=off` (or at
//! least `lapin=error`) in the log filter.
//!
//! Modules:
//! - [`config`]: [`BusConfig`], URL parsing and password redaction;
//! - [`envelope`]: the message types and their versioned MessagePack wire format;
//! - [`topology`]: exchange/queue names ([`Names`]) and declarations;
//! - `link`: the connection, its supervisor and the publisher channel pool;
//! - `publish`: confirmed publishing across reconnects;
//! - `consume`: [`Subscription`] streams, [`RequestDelivery`] and [`AckHandle`];
//! - `bus`: [`Bus`], wiring the above;
//! - [`stats`]: process-wide publish/consume counters for metrics.

mod bus;
pub mod config;
mod consume;
pub mod envelope;
mod error;
mod link;
mod publish;
pub mod stats;
pub mod topology;

pub use bus::{Bus, BusHealth};
pub use config::BusConfig;
pub use consume::{
    AckConsumer, AckHandle, RequestConsumer, RequestDelivery, ResponseConsumer, Subscription,
};
pub use envelope::{AckEnvelope, BodyRef, CodecError, Envelope, RequestEnvelope, ResponseEnvelope};
pub use error::BusError;
pub use topology::Names;

/// `error: cause: cause` on one line, for log fields.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
