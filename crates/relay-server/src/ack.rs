//! Acknowledge modes (DESIGN.md §9, RelayServer v3 semantics) and the signed acknowledge URL
//! of mode `manual`.
//!
//! When a broker delivery is settled depends on the tenant's mode (see `crossnode::execute`):
//! `disabled` as soon as a node takes it, `connector-received` once the request head and body
//! went into the tunnel, `connector-finished` after the connector answered, `manual` when the
//! target `POST`s the URL it got in `X-Relay-Acknowledge-Url`.
//!
//! The URL is `/acknowledge/{origin}/{request_id}/{signature}`: `origin` is the node holding
//! the delivery, the signature an HMAC-SHA256 over origin and request id keyed with the
//! installation secret `acknowledge-url` (created in the configuration database on first
//! use, so every node shares it and nothing needs configuring). Any node verifies it; the
//! holder settles locally, any other node forwards the ack through the holder's acknowledge
//! queue. A delivery nobody acknowledges is rejected (not requeued) when its request expires.
//!
//! Requests relayed without the broker (the local shortcut, or a single node) have no
//! delivery to settle. Manual tenants still get the URL there, so a target behaves the same
//! however the request reached it; acknowledging it answers `204` and does nothing else.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::header::HeaderValue;
use http::{Response, StatusCode};
use relay_bus::{AckEnvelope, AckHandle, BusError};
use relay_core::metrics::Counter;
use relay_store::AckMode;
use sha2::Sha256;

use crate::AppState;
use crate::responses::{Body, error, full, text};

/// Name of the installation secret that keys acknowledge URL signatures.
pub const SECRET_NAME: &str = "acknowledge-url";

/// First path segment of the acknowledge endpoint.
pub const PATH_SEGMENT: &str = "acknowledge";

/// What became of acknowledge URL calls and held deliveries, for `relay_acknowledgements_total`.
#[derive(Clone, Copy)]
pub enum Outcome {
    /// `204`: the delivery held here was settled.
    Settled,
    /// `202`: passed on to the node holding the delivery.
    Forwarded,
    /// `403`: the URL's signature is not valid.
    BadSignature,
    /// `404`: nothing waits for this acknowledgement (settled, expired, or never held).
    Unknown,
    /// A held delivery expired without an acknowledgement and was dropped.
    Expired,
    /// A held delivery was given up because the tunnel failed before the target answered.
    Released,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Settled,
        Outcome::Forwarded,
        Outcome::BadSignature,
        Outcome::Unknown,
        Outcome::Expired,
        Outcome::Released,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Settled => "settled",
            Outcome::Forwarded => "forwarded",
            Outcome::BadSignature => "bad-signature",
            Outcome::Unknown => "unknown",
            Outcome::Expired => "expired",
            Outcome::Released => "released",
        }
    }
}

static OUTCOME_COUNTS: [Counter; Outcome::ALL.len()] =
    [const { Counter::new() }; Outcome::ALL.len()];

fn count(outcome: Outcome) {
    OUTCOME_COUNTS[outcome as usize].inc();
}

/// `(label, count)` of every [`Outcome`], for the metrics endpoint.
pub fn outcome_counts() -> impl Iterator<Item = (&'static str, u64)> {
    Outcome::ALL
        .into_iter()
        .map(|outcome| (outcome.label(), OUTCOME_COUNTS[outcome as usize].get()))
}

/// How a request envelope spells each mode (kebab case, as in v3's documentation).
pub fn wire(mode: AckMode) -> &'static str {
    match mode {
        AckMode::Disabled => "disabled",
        AckMode::ConnectorReceived => "connector-received",
        AckMode::ConnectorFinished => "connector-finished",
        AckMode::Manual => "manual",
    }
}

/// The mode of an envelope; anything unknown (a newer node's mode) counts as the default,
/// `connector-finished`.
pub fn from_wire(mode: &str) -> AckMode {
    match mode {
        "disabled" => AckMode::Disabled,
        "connector-received" => AckMode::ConnectorReceived,
        "manual" => AckMode::Manual,
        _ => AckMode::ConnectorFinished,
    }
}

/// Whether a redelivered message (its first consumer died holding it) runs again: yes where
/// the mode promises at least once until acknowledged, no where it promises at most once.
pub fn reruns_redelivered(mode: AckMode) -> bool {
    matches!(mode, AckMode::ConnectorReceived | AckMode::Manual)
}

/// Deliveries waiting for a manual acknowledgement, and the URL signing key.
pub struct Acks {
    key: Vec<u8>,
    pending: Mutex<HashMap<String, Pending>>,
    generation: AtomicU64,
}

struct Pending {
    /// `None` for a request relayed without the broker: nothing to settle.
    handle: Option<AckHandle>,
    generation: u64,
}

impl Acks {
    pub fn new(secret: &str) -> Self {
        Acks {
            key: secret.as_bytes().to_vec(),
            pending: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    fn mac(&self, origin: &str, request_id: &str) -> Hmac<Sha256> {
        // `new_from_slice` accepts keys of any length for HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"relay-ack-v1\0");
        mac.update(origin.as_bytes());
        mac.update(b"\0");
        mac.update(request_id.as_bytes());
        mac
    }

    fn signature(&self, origin: &str, request_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(origin, request_id).finalize().into_bytes())
    }

    /// Constant-time check of a signature from a URL.
    fn verify(&self, origin: &str, request_id: &str, signature: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(signature)
            .is_ok_and(|sig| self.mac(origin, request_id).verify_slice(&sig).is_ok())
    }

    /// The `X-Relay-Acknowledge-Url` value: absolute when `public_url` is configured.
    pub fn url(&self, public_url: Option<&str>, origin: &str, request_id: &str) -> HeaderValue {
        let path = format!(
            "/{PATH_SEGMENT}/{origin}/{request_id}/{}",
            self.signature(origin, request_id)
        );
        let url = match public_url {
            Some(base) => format!("{}{path}", base.trim_end_matches('/')),
            None => path,
        };
        // Origins and request ids are UUIDs and the signature is base64url: always valid.
        HeaderValue::from_str(&url).unwrap_or_else(|_| HeaderValue::from_static("/"))
    }

    /// Holds a delivery (or, with `None`, just the request id) until the target acknowledges
    /// it or `expires_in` passes; then the delivery is rejected, not requeued.
    pub fn hold(
        self: &Arc<Self>,
        request_id: &str,
        handle: Option<AckHandle>,
        expires_in: Duration,
    ) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let replaced = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.insert(request_id.to_owned(), Pending { handle, generation }));
        // A redelivery of a request this node held before: the old channel is gone.
        drop(replaced);
        let acks = self.clone();
        let request_id = request_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(expires_in).await;
            let expired = acks
                .pending
                .lock()
                .ok()
                .and_then(|mut p| match p.get(&request_id) {
                    Some(entry) if entry.generation == generation => p.remove(&request_id),
                    _ => None,
                });
            if let Some(Pending {
                handle: Some(handle),
                ..
            }) = expired
            {
                count(Outcome::Expired);
                tracing::warn!(request_id = %request_id, "Request expired without a manual acknowledgement; dropped, not requeued.");
                let _ = handle.reject().await;
            }
        });
    }

    /// Requests held here, waiting for their acknowledgement.
    pub fn pending(&self) -> usize {
        self.pending.lock().map_or(0, |p| p.len())
    }

    /// Gives up a held request whose tunnel failed before the target answered: its
    /// acknowledge URL stops working and its delivery, if any, is returned to the caller to
    /// settle (a client already got an error; nobody will acknowledge it).
    pub fn release(&self, request_id: &str) -> Option<AckHandle> {
        let entry = self.pending.lock().ok()?.remove(request_id)?;
        count(Outcome::Released);
        entry.handle
    }

    /// Settles a held request; `false` when it is unknown here or already settled.
    pub async fn settle(&self, request_id: &str) -> bool {
        let entry = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(request_id));
        match entry {
            Some(Pending { handle, .. }) => {
                if let Some(handle) = handle
                    && let Err(e) = handle.ack().await
                {
                    // The channel is gone; the broker redelivers the request to run again.
                    tracing::info!(request_id = %request_id, error = %e, "Manual acknowledgement came too late for its delivery.");
                }
                true
            }
            None => false,
        }
    }
}

/// Origins and request ids: UUIDs, accepted as short `[0-9A-Za-z-]` strings.
fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `POST /acknowledge/{origin}/{request_id}/{signature}` (`after` is what follows
/// `/acknowledge/`): `204` settled here, `202` forwarded to the holding node, `403` bad
/// signature, `404` unknown or already settled.
pub async fn acknowledge(state: &AppState, after: &str) -> Response<Body> {
    let mut parts = after.split('/');
    let (Some(origin), Some(request_id), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return not_found();
    };
    if !is_id(origin) || !is_id(request_id) {
        return not_found();
    }
    if !state.acks.verify(origin, request_id, signature) {
        count(Outcome::BadSignature);
        return error(
            StatusCode::FORBIDDEN,
            "ack-signature-invalid",
            "the acknowledge URL's signature is not valid",
        );
    }
    if origin == state.origin_id {
        return if state.acks.settle(request_id).await {
            count(Outcome::Settled);
            tracing::debug!(request_id = %request_id, "Request acknowledged.");
            let mut response = Response::new(full(bytes::Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        } else {
            not_found()
        };
    }
    let Some(cross) = &state.cross else {
        return not_found();
    };
    let ack = AckEnvelope {
        request_id: request_id.to_owned(),
    };
    match cross.bus.publish_ack(origin, &ack).await {
        Ok(()) => {
            count(Outcome::Forwarded);
            text(StatusCode::ACCEPTED, "acknowledgement forwarded\n")
        }
        Err(BusError::Unroutable { .. }) => not_found(),
        Err(e) => {
            tracing::warn!(request_id = %request_id, error = %e, "Cannot forward an acknowledgement.");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker-unavailable",
                "the message broker is unavailable; retry later",
            )
        }
    }
}

fn not_found() -> Response<Body> {
    count(Outcome::Unknown);
    error(
        StatusCode::NOT_FOUND,
        "ack-unknown",
        "no such request waits for an acknowledgement",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_origin_and_request() {
        let acks = Acks::new("installation secret");
        let sig = acks.signature("node-a", "r1");
        assert!(acks.verify("node-a", "r1", &sig));
        assert!(!acks.verify("node-b", "r1", &sig));
        assert!(!acks.verify("node-a", "r2", &sig));
        assert!(!acks.verify("node-a", "r1", "not base64!"));
        assert!(!acks.verify("node-a", "r1", ""));
        let other = Acks::new("another installation");
        assert!(!other.verify("node-a", "r1", &sig));
    }

    #[test]
    fn url_is_absolute_with_a_public_url() {
        let acks = Acks::new("k");
        let sig = acks.signature("o", "r");
        assert_eq!(acks.url(None, "o", "r"), format!("/acknowledge/o/r/{sig}"));
        assert_eq!(
            acks.url(Some("https://relay.example/"), "o", "r"),
            format!("https://relay.example/acknowledge/o/r/{sig}")
        );
    }

    #[test]
    fn wire_names_round_trip() {
        for mode in [
            AckMode::Disabled,
            AckMode::ConnectorReceived,
            AckMode::ConnectorFinished,
            AckMode::Manual,
        ] {
            assert_eq!(from_wire(wire(mode)), mode);
        }
        assert_eq!(from_wire("future-mode"), AckMode::ConnectorFinished);
    }

    #[tokio::test]
    async fn settling_is_once() {
        let acks = Arc::new(Acks::new("k"));
        acks.hold("r1", None, Duration::from_secs(60));
        assert!(acks.settle("r1").await);
        assert!(!acks.settle("r1").await);
        assert!(!acks.settle("unknown").await);
    }

    fn released_count() -> u64 {
        outcome_counts()
            .find(|(label, _)| *label == "released")
            .map_or(0, |(_, n)| n)
    }

    #[tokio::test]
    async fn released_requests_are_no_longer_held() {
        let before = released_count();
        let acks = Arc::new(Acks::new("k"));
        acks.hold("r1", None, Duration::from_secs(60));
        assert_eq!(acks.pending(), 1);
        assert!(
            acks.release("r1").is_none(),
            "no delivery behind a local hold"
        );
        assert_eq!(acks.pending(), 0);
        assert!(!acks.settle("r1").await);
        assert!(released_count() > before, "counted as released");
        let labels: std::collections::BTreeSet<_> = outcome_counts().map(|(l, _)| l).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }

    #[tokio::test]
    async fn held_requests_expire() {
        let acks = Arc::new(Acks::new("k"));
        acks.hold("r1", None, Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!acks.settle("r1").await);
    }
}
