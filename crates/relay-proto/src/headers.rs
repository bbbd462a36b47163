//! Header names used on the tunnel and toward clients.

use http::HeaderMap;
use http::header::{self, HeaderName};

// Connector → server, on the tunnel upgrade request.
pub const CONNECTOR_VERSION: HeaderName = HeaderName::from_static("x-relay-connector-version");
pub const CONNECTOR_MACHINE: HeaderName = HeaderName::from_static("x-relay-connector-machine");
/// Id of a tunnel this new one replaces (make-before-break renewal before the old token
/// expires): once the new tunnel is up, the server stops giving the old one requests and
/// drains it. Only a tunnel of the same tenant can be replaced.
pub const TUNNEL_REPLACES: HeaderName = HeaderName::from_static("x-relay-replaces");

// Server → connector, on the `101` answer.
/// The id the server gave the tunnel (the connection id of the management API).
pub const TUNNEL_ID: HeaderName = HeaderName::from_static("x-relay-tunnel-id");

// Server → connector, on every relayed request.
/// Unique id of the relayed request (also returned to clients in `trace` mode).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-relay-request-id");
/// Present when the client asked for `trace`: the connector reports timings back.
pub const TRACE: HeaderName = HeaderName::from_static("x-relay-trace");
/// Address of the public client, for `X-Forwarded-For`.
pub const CLIENT_ADDR: HeaderName = HeaderName::from_static("x-relay-client-addr");
/// `Host` the client used, for `X-Forwarded-Host`.
pub const CLIENT_HOST: HeaderName = HeaderName::from_static("x-relay-client-host");
/// Scheme the client used (`http` or `https`), for `X-Forwarded-Proto`.
pub const CLIENT_PROTO: HeaderName = HeaderName::from_static("x-relay-client-proto");
/// Tenants in acknowledge mode `manual`: where the target `POST`s to acknowledge the request
/// (`[public_url]/acknowledge/{origin}/{request_id}/{signature}`). The connector passes this
/// one relay header on to the target.
pub const ACKNOWLEDGE_URL: HeaderName = HeaderName::from_static("x-relay-acknowledge-url");

// Connector → server, on relayed responses.
/// Set when the connector itself produced the response (not the target); the value is a
/// short machine-readable reason such as `target-unknown` or `target-timeout`.
pub const RELAY_ERROR: HeaderName = HeaderName::from_static("x-relay-error");
/// Milliseconds the target took to produce its response head (only when traced).
pub const TARGET_DURATION: HeaderName = HeaderName::from_static("x-relay-target-duration-ms");

// Server → client in `trace` mode.
pub const TRACE_CONNECTOR_MACHINE: HeaderName = CONNECTOR_MACHINE;
pub const TRACE_CONNECTOR_VERSION: HeaderName = CONNECTOR_VERSION;
pub const TRACE_RELAY_DURATION: HeaderName = HeaderName::from_static("x-relay-duration-ms");

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those that `Connection` names, and the
/// `proxy-connection` header some clients still send.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

/// Removes every `x-relay-*` header, so a client cannot spoof tunnel metadata and a target
/// cannot fake relay errors.
pub fn strip_relay_headers(headers: &mut HeaderMap) {
    let relay: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-relay-"))
        .cloned()
        .collect();
    for name in relay {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn strips_listed_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::COOKIE));
    }

    #[test]
    fn strips_relay_headers() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("spoofed"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_relay_headers(&mut h);
        assert_eq!(h.len(), 1);
    }
}
