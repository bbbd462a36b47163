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

/// Whether `value` is usable as the client's `Host`: an authority (`host[:port]`, IPv6 in
/// brackets) without user info, quotes or anything a header could not carry. The relay
/// answers `400` to anything else, so no client input reaches a `Forwarded` element raw.
pub fn is_valid_host(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 255
        && value.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
        && std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<http::uri::Authority>().ok())
            .is_some()
}

/// `value` as an RFC 7239 quoted-string: `"` and `\` escaped, control characters dropped.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One `Forwarded` element (RFC 7239): `for`, `host` and `proto` pairs, every value quoted,
/// so no input can close a value and add a pair or an element. Empty when all are absent.
pub fn forwarded_element(addr: Option<&str>, host: Option<&str>, proto: Option<&str>) -> String {
    let mut pairs = Vec::with_capacity(3);
    if let Some(addr) = addr {
        // IPv6 addresses are bracketed (RFC 7239 §6).
        let node = if addr.contains(':') && !addr.starts_with('[') {
            format!("[{addr}]")
        } else {
            addr.to_owned()
        };
        pairs.push(format!("for={}", quote(&node)));
    }
    if let Some(host) = host {
        pairs.push(format!("host={}", quote(host)));
    }
    if let Some(proto) = proto {
        pairs.push(format!("proto={}", quote(proto)));
    }
    pairs.join(";")
}

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
    use proptest::prelude::*;

    use super::*;

    /// Splits a `Forwarded` value into elements of `(key, value)` pairs the way a recipient
    /// does: `,` and `;` separate only outside quoted strings, `\\` escapes inside them.
    fn parse_forwarded(value: &str) -> Vec<Vec<(String, String)>> {
        let mut elements = vec![Vec::new()];
        let (mut key, mut val, mut in_key, mut quoted, mut escaped) =
            (String::new(), String::new(), true, false, false);
        let finish_pair =
            |elements: &mut Vec<Vec<(String, String)>>, key: &mut String, val: &mut String| {
                if !key.is_empty()
                    && let Some(last) = elements.last_mut()
                {
                    last.push((std::mem::take(key), std::mem::take(val)));
                }
            };
        for c in value.chars() {
            if quoted {
                if escaped {
                    val.push(c);
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quoted = false;
                } else {
                    val.push(c);
                }
                continue;
            }
            match c {
                '"' if !in_key => quoted = true,
                '=' if in_key => in_key = false,
                ';' => {
                    finish_pair(&mut elements, &mut key, &mut val);
                    in_key = true;
                }
                ',' => {
                    finish_pair(&mut elements, &mut key, &mut val);
                    elements.push(Vec::new());
                    in_key = true;
                }
                c if in_key => key.push(c),
                c => val.push(c),
            }
        }
        finish_pair(&mut elements, &mut key, &mut val);
        elements
    }

    proptest! {
        /// Whatever the client's host (and address) are, the element has exactly the three
        /// pairs, with the values given.
        #[test]
        fn no_input_adds_a_forwarded_element_or_pair(
            host in ".{0,40}",
            addr in prop_oneof![Just("10.0.0.1".to_owned()), Just("::1".to_owned()), ".{0,20}"],
        ) {
            let value = forwarded_element(Some(&addr), Some(&host), Some("http"));
            let elements = parse_forwarded(&value);
            prop_assert_eq!(elements.len(), 1, "{}", value);
            let keys: Vec<&str> = elements[0].iter().map(|(k, _)| k.as_str()).collect();
            prop_assert_eq!(keys, vec!["for", "host", "proto"], "{}", value);
            let printable: String = host.chars().filter(|c| !c.is_control()).collect();
            prop_assert_eq!(&elements[0][1].1, &printable);
        }
    }

    #[test]
    fn hosts_are_authorities_only() {
        for good in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:5000",
            "[::1]:80",
            "a_b.c",
        ] {
            assert!(is_valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "x\", for=6.6.6.6;host=\"y",
            "user@host",
            "a b",
            "a,b",
            "a;b",
            "a/b",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad}");
        }
    }

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
