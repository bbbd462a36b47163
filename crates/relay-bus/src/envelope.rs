//! The messages the bus carries and their wire format.
//!
//! Wire format: one version byte ([`FORMAT_VERSION`]) followed by a MessagePack map with field
//! names (`rmp_serde::to_vec_named`). Named fields let a newer node add optional fields
//! (`#[serde(default)]`) that an older node ignores, so nodes can be upgraded one at a time; an
//! incompatible change bumps the version byte. Header values and inline bodies are MessagePack
//! `bin` (raw bytes: HTTP header values need not be UTF-8).

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// First byte of every encoded envelope.
pub const FORMAT_VERSION: u8 = 1;

/// A client request published by the node that received it (`origin`) for a tenant's
/// connectors on any node.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub request_id: String,
    /// Origin id of the node that waits for the response.
    pub origin: String,
    pub tenant: String,
    pub target: String,
    pub method: String,
    pub path_and_query: String,
    #[serde(with = "header_list")]
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: BodyRef,
    /// Unix time in milliseconds after which nobody waits for the answer any more.
    pub expires_at_ms: i64,
    /// `relay`, `queue` or `trace`.
    pub mode: String,
    pub ack_mode: String,
}

impl RequestEnvelope {
    /// Whether `expires_at_ms` has passed (by this machine's clock).
    pub fn is_expired(&self) -> bool {
        self.expires_at_ms <= unix_now_ms()
    }
}

/// A connector's answer (or the relay's failure to get one), sent to the origin's response queue.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub request_id: String,
    pub status: u16,
    #[serde(with = "header_list")]
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: BodyRef,
    /// The `x-relay-error` code when the relay or the connector failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_machine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector_version: Option<String>,
}

/// A request acknowledgement, sent to the acknowledge queue of the origin holding the delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckEnvelope {
    pub request_id: String,
}

/// Where a body is. Large bodies live in the shared body volume; the bus carries only the key.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyRef {
    #[default]
    Empty,
    Inline(Bytes),
    Stored {
        key: String,
        len: u64,
    },
}

/// An envelope could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty envelope")]
    Empty,
    #[error("unsupported envelope format version {0} (this node reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    #[error("encoding envelope")]
    Encode(#[source] rmp_serde::encode::Error),
    #[error("decoding envelope")]
    Decode(#[source] rmp_serde::decode::Error),
}

/// The (de)serialization shared by all envelope types.
pub trait Envelope: Serialize + DeserializeOwned {
    /// Encodes into the versioned wire format.
    fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        out.push(FORMAT_VERSION);
        rmp_serde::encode::write_named(&mut out, self).map_err(CodecError::Encode)?;
        Ok(out)
    }

    /// Decodes the versioned wire format.
    fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        match bytes.split_first() {
            None => Err(CodecError::Empty),
            Some((&FORMAT_VERSION, rest)) => {
                rmp_serde::from_slice(rest).map_err(CodecError::Decode)
            }
            Some((&other, _)) => Err(CodecError::UnsupportedVersion(other)),
        }
    }
}

impl Envelope for RequestEnvelope {}
impl Envelope for ResponseEnvelope {}
impl Envelope for AckEnvelope {}

pub(crate) fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// `Debug` by hand: header values (Authorization, cookies) and bodies must never reach a log.

impl fmt::Debug for RequestEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestEnvelope")
            .field("request_id", &self.request_id)
            .field("origin", &self.origin)
            .field("tenant", &self.tenant)
            .field("target", &self.target)
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("headers", &HeaderNames(&self.headers))
            .field("body", &self.body)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("mode", &self.mode)
            .field("ack_mode", &self.ack_mode)
            .finish()
    }
}

impl fmt::Debug for ResponseEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseEnvelope")
            .field("request_id", &self.request_id)
            .field("status", &self.status)
            .field("headers", &HeaderNames(&self.headers))
            .field("body", &self.body)
            .field("error", &self.error)
            .field("connector_machine", &self.connector_machine)
            .field("connector_version", &self.connector_version)
            .finish()
    }
}

impl fmt::Debug for BodyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyRef::Empty => f.write_str("Empty"),
            BodyRef::Inline(bytes) => write!(f, "Inline({} bytes)", bytes.len()),
            BodyRef::Stored { key, len } => write!(f, "Stored({key}, {len} bytes)"),
        }
    }
}

struct HeaderNames<'a>(&'a [(String, Vec<u8>)]);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// `Vec<(String, Vec<u8>)>` as a sequence of `(str, bin)` pairs.
mod header_list {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};
    use serde_bytes::{ByteBuf, Bytes};

    pub(super) fn serialize<S: Serializer>(
        headers: &[(String, Vec<u8>)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(headers.len()))?;
        for (name, value) in headers {
            seq.serialize_element(&(name.as_str(), Bytes::new(value)))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(String, Vec<u8>)>, D::Error> {
        let pairs = Vec::<(String, ByteBuf)>::deserialize(deserializer)?;
        Ok(pairs
            .into_iter()
            .map(|(name, value)| (name, value.into_vec()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestEnvelope {
        RequestEnvelope {
            request_id: "0190c6e4-7a1b-7c3d-9e8f-0123456789ab".into(),
            origin: "node-a".into(),
            tenant: "acme".into(),
            target: "erp".into(),
            method: "POST".into(),
            path_and_query: "/api/orders?x=1&y=%20".into(),
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("x-latin1".into(), vec![0xe4, 0xf6, 0xfc, 0xff]),
                ("x-empty".into(), Vec::new()),
            ],
            body: BodyRef::Inline(Bytes::from_static(b"{\"a\":1}\0\xff")),
            expires_at_ms: 1_720_000_000_123,
            mode: "relay".into(),
            ack_mode: "connector-finished".into(),
        }
    }

    #[test]
    fn request_round_trip() -> Result<(), CodecError> {
        let envelope = request();
        let wire = envelope.to_bytes()?;
        assert_eq!(wire[0], FORMAT_VERSION);
        assert_eq!(RequestEnvelope::from_bytes(&wire)?, envelope);

        let stored = RequestEnvelope {
            body: BodyRef::Stored {
                key: "bodies/2024/abc".into(),
                len: 10 << 30,
            },
            ..request()
        };
        assert_eq!(RequestEnvelope::from_bytes(&stored.to_bytes()?)?, stored);
        let empty = RequestEnvelope {
            body: BodyRef::Empty,
            headers: Vec::new(),
            ..request()
        };
        assert_eq!(RequestEnvelope::from_bytes(&empty.to_bytes()?)?, empty);
        Ok(())
    }

    #[test]
    fn response_and_ack_round_trip() -> Result<(), CodecError> {
        let response = ResponseEnvelope {
            request_id: "r1".into(),
            status: 502,
            headers: vec![("set-cookie".into(), vec![0x80, 0x81])],
            body: BodyRef::Inline(Bytes::from(vec![7u8; 70_000])),
            error: Some("target-unreachable".into()),
            connector_machine: Some("srv-01".into()),
            connector_version: None,
        };
        assert_eq!(
            ResponseEnvelope::from_bytes(&response.to_bytes()?)?,
            response
        );
        let ack = AckEnvelope {
            request_id: "r1".into(),
        };
        assert_eq!(AckEnvelope::from_bytes(&ack.to_bytes()?)?, ack);
        Ok(())
    }

    #[test]
    fn bytes_stay_compact() -> Result<(), CodecError> {
        let envelope = RequestEnvelope {
            headers: vec![("x".into(), vec![0xab; 1000])],
            body: BodyRef::Inline(Bytes::from(vec![0xcd; 1000])),
            ..request()
        };
        // `bin` encoding: about one byte per byte, not an array of integers or base64.
        assert!(envelope.to_bytes()?.len() < 2_400);
        Ok(())
    }

    #[test]
    fn rejects_unknown_versions_and_garbage() {
        assert!(matches!(
            RequestEnvelope::from_bytes(&[]),
            Err(CodecError::Empty)
        ));
        assert!(matches!(
            RequestEnvelope::from_bytes(&[2, 0x80]),
            Err(CodecError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            RequestEnvelope::from_bytes(&[FORMAT_VERSION, 0xc1]),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn older_readers_ignore_new_fields() -> Result<(), CodecError> {
        #[derive(Serialize)]
        struct Future<'a> {
            request_id: &'a str,
            added_later: u32,
        }
        let mut wire = vec![FORMAT_VERSION];
        rmp_serde::encode::write_named(
            &mut wire,
            &Future {
                request_id: "r9",
                added_later: 7,
            },
        )
        .map_err(CodecError::Encode)?;
        assert_eq!(AckEnvelope::from_bytes(&wire)?.request_id, "r9");
        Ok(())
    }

    #[test]
    fn debug_hides_header_values_and_bodies() {
        let printed = format!(
            "{:?}",
            RequestEnvelope {
                headers: vec![("authorization".into(), b"Bearer s3cret".to_vec())],
                body: BodyRef::Inline(Bytes::from_static(b"password=hunter2")),
                ..request()
            }
        );
        assert!(printed.contains("authorization"), "{printed}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn expiry() {
        let mut envelope = request();
        envelope.expires_at_ms = unix_now_ms() - 1;
        assert!(envelope.is_expired());
        envelope.expires_at_ms = unix_now_ms() + 60_000;
        assert!(!envelope.is_expired());
    }
}
