//! [`BusError`], the one error type of this crate.

use std::time::Duration;

use crate::envelope::CodecError;

/// Why a bus operation failed.
///
/// For publishes the variants tell the caller what happened to the message:
/// - surely **not enqueued**: [`Unavailable`](Self::Unavailable), [`Unroutable`](Self::Unroutable),
///   [`Nacked`](Self::Nacked), [`Expired`](Self::Expired), [`Closed`](Self::Closed),
///   [`InvalidName`](Self::InvalidName), [`Codec`](Self::Codec);
/// - **unknown**: [`Unconfirmed`](Self::Unconfirmed) (sent, but the confirm never came).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The configuration cannot work (no URL, unparsable URL, zero sizes).
    #[error("invalid bus configuration: {0}")]
    Config(String),
    /// A tenant or origin id that cannot be part of a queue name.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    /// No broker connection could be had within the allotted time.
    #[error("message broker unavailable (no connection within {waited:?})")]
    Unavailable { waited: Duration },
    /// The broker returned the message: no queue is bound to its routing key (tenant queue never
    /// declared, or the origin's queues expired because the node is gone).
    #[error("message unroutable: no queue is bound to {routing_key:?}")]
    Unroutable { routing_key: String },
    /// The broker refused the message (`basic.nack`), e.g. an internal error or a full queue.
    #[error("message broker refused the message")]
    Nacked,
    /// The message was handed to the broker but the connection failed or the confirm timed out
    /// before the broker confirmed it: it may or may not be enqueued.
    #[error("publish outcome unknown: no confirm from the broker")]
    Unconfirmed,
    /// The request's remaining time to live was zero; nothing was published.
    #[error("request already expired")]
    Expired,
    /// The channel that carried this delivery is gone, so it cannot be settled any more; the
    /// broker redelivers it (with `redelivered` set) to a consumer.
    #[error("delivery can no longer be settled: its channel is gone and the broker redelivers it")]
    DeliveryLost,
    /// [`Bus::close`](crate::Bus::close) was called.
    #[error("the bus is closed")]
    Closed,
    /// The broker refused an operation on a working connection (e.g. a queue redeclared with
    /// different arguments, missing permissions).
    #[error("message broker refused {op}")]
    Broker {
        op: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// An envelope could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}
