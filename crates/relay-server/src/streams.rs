//! Relayed requests open at once, per client connection and per source.
//!
//! Every relayed request holds a tunnel stream (and up to its share of the tunnel's window)
//! from dispatch until its response body ends. A client connection may hold at most
//! `relay.max_streams_per_connection` of them and a source (an IPv4 address, an IPv6 /64)
//! at most `relay.max_streams_per_source` on this node; more get `429 stream-limit` at
//! once, before anything reaches a tunnel. Which of the open ones may sit stalled is
//! `slowreader`'s business.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use relay_core::conn::source_key;

/// Open relayed requests of one client connection.
#[derive(Default)]
pub struct ConnStreams(AtomicUsize);

/// Open relayed requests per source on this node.
#[derive(Default)]
pub struct SourceStreams(Mutex<HashMap<IpAddr, usize>>);

/// Which cap refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Connection(usize),
    Source(usize),
}

impl Refused {
    /// `429 stream-limit` with `Retry-After: 1`.
    pub fn response(self) -> http::Response<crate::responses::Body> {
        let mut response = crate::responses::error(
            http::StatusCode::TOO_MANY_REQUESTS,
            "stream-limit",
            self.reason(),
        );
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        response
    }

    fn reason(self) -> String {
        match self {
            Refused::Connection(max) => {
                format!("this connection already has {max} relayed requests open")
            }
            Refused::Source(max) => {
                format!("your address already has {max} relayed requests open on this relay")
            }
        }
    }
}

/// One request's places; given back on drop (with the response body).
pub struct StreamPermit {
    conn: Arc<ConnStreams>,
    sources: Arc<SourceStreams>,
    source: IpAddr,
}

impl StreamPermit {
    /// A place on `conn` and for `ip`, or which cap is full.
    pub fn take(
        conn: &Arc<ConnStreams>,
        sources: &Arc<SourceStreams>,
        ip: IpAddr,
        per_connection: usize,
        per_source: usize,
    ) -> Result<StreamPermit, Refused> {
        if conn.0.fetch_add(1, Ordering::AcqRel) >= per_connection {
            conn.0.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Connection(per_connection));
        }
        let source = source_key(ip);
        let admitted = match sources.0.lock() {
            Ok(mut map) => {
                let count = map.entry(source).or_insert(0);
                if *count >= per_source {
                    false
                } else {
                    *count += 1;
                    true
                }
            }
            Err(_) => false,
        };
        if !admitted {
            conn.0.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Source(per_source));
        }
        Ok(StreamPermit {
            conn: conn.clone(),
            sources: sources.clone(),
            source,
        })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.conn.0.fetch_sub(1, Ordering::AcqRel);
        if let Ok(mut map) = self.sources.0.lock()
            && let Some(count) = map.get_mut(&self.source)
        {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_connection_and_per_source_free_on_drop() {
        let sources = Arc::new(SourceStreams::default());
        let one = Arc::new(ConnStreams::default());
        let two = Arc::new(ConnStreams::default());
        let ip: IpAddr = "2001:db8::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8::2".parse().expect("ip");
        let a = StreamPermit::take(&one, &sources, ip, 2, 3).expect("first");
        let b = StreamPermit::take(&one, &sources, ip, 2, 3).expect("second");
        assert_eq!(
            StreamPermit::take(&one, &sources, ip, 2, 3).err(),
            Some(Refused::Connection(2))
        );
        let c = StreamPermit::take(&two, &sources, same_64, 2, 3).expect("third of the /64");
        assert_eq!(
            StreamPermit::take(&two, &sources, same_64, 2, 3).err(),
            Some(Refused::Source(3))
        );
        drop(a);
        let d = StreamPermit::take(&two, &sources, same_64, 2, 3).expect("a place came back");
        drop((b, c, d));
        assert!(sources.0.lock().map(|m| m.is_empty()).unwrap_or(false));
        assert_eq!(one.0.load(Ordering::Acquire), 0);
    }
}
