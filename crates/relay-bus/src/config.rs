//! [`BusConfig`] and broker URL handling (parsing, defaults, password redaction).

use std::{fmt, time::Duration};

use lapin::uri::AMQPUri;

use crate::BusError;

/// How to reach the broker and how to name and shape what this node declares there.
///
/// Build it with [`BusConfig::new`] and override the public fields where the defaults do not fit.
/// `Debug` masks the passwords inside `urls`.
#[derive(Clone)]
pub struct BusConfig {
    /// `amqp://user:pass@host:port/vhost` (vhost percent-encoded, `%2f` for `/`). On every
    /// (re)connect the URLs are tried in order, so list every node of a cluster.
    pub urls: Vec<String>,
    /// Prepended to every exchange and queue name: `{prefix}relay`, `{prefix}requests.{tenant}`,
    /// `{prefix}responses.{origin}`, `{prefix}acks.{origin}`. Lets several installations (or
    /// test runs) share one vhost.
    pub prefix: String,
    /// How long [`Bus::connect`](crate::Bus::connect) keeps retrying before it gives up.
    pub connect_timeout: Duration,
    /// How long a publish waits for a connection during an outage, and then for the broker's
    /// confirm, before failing with [`BusError::Unavailable`] or [`BusError::Unconfirmed`].
    pub publish_timeout: Duration,
    /// AMQP heartbeat, used unless a URL sets `?heartbeat=`. A dead peer is noticed after about
    /// two intervals.
    pub heartbeat: Duration,
    /// An origin's response and acknowledge queues are deleted by the broker after being unused
    /// (no consumer, no redeclare) this long, so a node that is gone for good leaves nothing
    /// behind and publishes to it become [`BusError::Unroutable`].
    pub origin_queue_expiry: Duration,
    /// Declare tenant request queues as quorum queues (replicated; for a broker cluster) instead
    /// of classic queues. A queue keeps the type it was created with: changing this for existing
    /// tenants makes their redeclaration fail until the queues are deleted.
    pub quorum_queues: bool,
    /// Number of confirm-mode channels publishes are spread over. Each channel carries one
    /// publish at a time so that a `basic.return` is never attributed to the wrong message.
    pub publisher_channels: u16,
    /// Responses and acks buffered in this process for their reader (the origin queues are
    /// consumed with `no_ack`; how many can arrive is bounded by the requests in flight).
    pub response_prefetch: u16,
    /// Upper bound of the jittered exponential back-off between reconnect attempts.
    pub max_backoff: Duration,
    /// Extra CA certificates (PEM) trusted for `amqps://` brokers, besides the system roots
    /// (which honour `SSL_CERT_FILE`).
    pub ca_pem: Option<String>,
}

impl BusConfig {
    /// A configuration with the given broker URLs and name prefix and defaults for the rest.
    pub fn new<I, S>(urls: I, prefix: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            prefix: prefix.into(),
            connect_timeout: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(10),
            origin_queue_expiry: Duration::from_secs(10 * 60),
            quorum_queues: false,
            publisher_channels: 64,
            response_prefetch: 256,
            max_backoff: Duration::from_secs(5),
            ca_pem: None,
        }
    }

    /// Parses every URL and applies the heartbeat and connect-timeout defaults.
    pub(crate) fn broker_uris(&self) -> Result<Vec<BrokerUri>, BusError> {
        if self.urls.is_empty() {
            return Err(BusError::Config("`urls` is empty".into()));
        }
        if self.publisher_channels == 0 {
            return Err(BusError::Config(
                "`publisher_channels` must be at least 1".into(),
            ));
        }
        if self.origin_queue_expiry.as_millis() == 0 {
            return Err(BusError::Config(
                "`origin_queue_expiry` must be positive".into(),
            ));
        }
        let heartbeat = u16::try_from(self.heartbeat.as_secs().max(1)).unwrap_or(u16::MAX);
        self.urls
            .iter()
            .map(|url| {
                let redacted = redact_url(url);
                let mut uri: AMQPUri = url
                    .parse()
                    .map_err(|e| BusError::Config(format!("invalid broker URL {redacted}: {e}")))?;
                uri.query.heartbeat.get_or_insert(heartbeat);
                uri.query.connection_timeout.get_or_insert(5_000);
                Ok(BrokerUri { uri, redacted })
            })
            .collect()
    }
}

impl fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("BusConfig")
            .field("urls", &urls)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("origin_queue_expiry", &self.origin_queue_expiry)
            .field("quorum_queues", &self.quorum_queues)
            .field("publisher_channels", &self.publisher_channels)
            .field("response_prefetch", &self.response_prefetch)
            .field("max_backoff", &self.max_backoff)
            .field("ca_pem", &self.ca_pem.is_some())
            .finish()
    }
}

/// A parsed broker URL plus its printable (password-free) form for logs and errors.
#[derive(Clone, Debug)]
pub(crate) struct BrokerUri {
    pub(crate) uri: AMQPUri,
    pub(crate) redacted: String,
}

/// `amqp://user:secret@host/vh` → `amqp://user:***@host/vh`; URLs without a password unchanged.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    format!(
        "{}{user}:***{}",
        &url[..scheme_end],
        &url[scheme_end + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("amqp://relay:s3cr@t@mq1:5672/%2f"),
            "amqp://relay:***@mq1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://mq1:5672/%2f"), "amqp://mq1:5672/%2f");
        assert_eq!(redact_url("amqp://u:p@h"), "amqp://u:***@h");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn debug_masks_urls() {
        let config = BusConfig::new(["amqp://guest:hunter2@localhost/%2f"], "x.");
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains("amqp://guest:***@localhost/%2f"),
            "{printed}"
        );
    }

    #[test]
    fn url_defaults_and_errors() -> Result<(), BusError> {
        let config = BusConfig::new(
            [
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://h:5672/%2f?heartbeat=3",
            ],
            "",
        );
        let uris = config.broker_uris()?;
        assert_eq!(uris[0].uri.query.heartbeat, Some(10));
        assert_eq!(uris[1].uri.query.heartbeat, Some(3));
        assert_eq!(uris[0].uri.authority.userinfo.password, "guest");

        let bad = BusConfig::new(["http://user:pw@host"], "");
        match bad.broker_uris() {
            Err(BusError::Config(msg)) => assert!(!msg.contains("pw@"), "{msg}"),
            other => panic!("expected a config error, got {other:?}"),
        }
        assert!(matches!(
            BusConfig::new(Vec::<String>::new(), "").broker_uris(),
            Err(BusError::Config(_))
        ));
        Ok(())
    }
}
