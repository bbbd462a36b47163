//! The forwarding headers a target sees: `X-Forwarded-For/-Host/-Proto` and `Forwarded`
//! (RFC 7239) built from the relay's client metadata.
//!
//! What a client sent itself under those names (and `X-Forwarded-Prefix`/`-Port`/…,
//! `X-Real-IP`) is dropped first, since a target that reads the first element would see a
//! client of the client's choosing; a target with `trust_client_forwarded` keeps them, with
//! the connector's element appended after theirs.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use relay_proto::headers;

/// Turns the relay's client metadata headers into `X-Forwarded-*` and `Forwarded`; without
/// `trust_client`, the client's own forwarding headers go first.
pub fn add_forwarding_headers(h: &mut HeaderMap, trust_client: bool) {
    if !trust_client {
        drop_client_forwarding(h);
    }
    let addr = h
        .get(headers::CLIENT_ADDR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let host = h
        .get(headers::CLIENT_HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let proto = h
        .get(headers::CLIENT_PROTO)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(addr) = &addr {
        let value = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {addr}"),
            None => addr.clone(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert("x-forwarded-for", v);
        }
    }
    if let Some(v) = host.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert("x-forwarded-host", v);
    }
    if let Some(v) = proto.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert("x-forwarded-proto", v);
    }
    let forwarded = headers::forwarded_element(addr.as_deref(), host.as_deref(), proto.as_deref());
    if !forwarded.is_empty()
        && let Ok(v) = HeaderValue::from_str(&forwarded)
    {
        h.append(header::FORWARDED, v);
    }
}

/// Removes `Forwarded`, every `X-Forwarded-*` and `X-Real-IP`.
fn drop_client_forwarding(h: &mut HeaderMap) {
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k == "forwarded" || k == "x-real-ip" || k.starts_with("x-forwarded-")
        })
        .cloned()
        .collect();
    for name in names {
        h.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relayed() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.append(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("forged.example"),
        );
        h.insert("x-forwarded-prefix", HeaderValue::from_static("/forged"));
        h.insert("x-forwarded-port", HeaderValue::from_static("1"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert(headers::CLIENT_ADDR, HeaderValue::from_static("192.0.2.7"));
        h.insert(
            headers::CLIENT_HOST,
            HeaderValue::from_static("relay.example.com"),
        );
        h.insert(headers::CLIENT_PROTO, HeaderValue::from_static("https"));
        h
    }

    fn all<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect()
    }

    #[test]
    fn client_forwarding_headers_are_dropped_by_default() {
        let mut h = relayed();
        add_forwarding_headers(&mut h, false);
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["relay.example.com"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=\"192.0.2.7\";host=\"relay.example.com\";proto=\"https\""]
        );
        for gone in ["x-forwarded-prefix", "x-forwarded-port", "x-real-ip"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn a_trusting_target_gets_the_clients_hops_first() {
        let mut h = relayed();
        add_forwarding_headers(&mut h, true);
        assert_eq!(all(&h, "x-forwarded-for"), ["6.6.6.6, 192.0.2.7"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["relay.example.com"]);
        assert_eq!(
            all(&h, "forwarded"),
            [
                "for=6.6.6.6",
                "for=\"192.0.2.7\";host=\"relay.example.com\";proto=\"https\""
            ]
        );
        assert_eq!(all(&h, "x-real-ip"), ["6.6.6.6"]);
        assert_eq!(all(&h, "x-forwarded-prefix"), ["/forged"]);
    }
}
