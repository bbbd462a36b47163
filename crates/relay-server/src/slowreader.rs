//! Clients that stop reading a response must not hold the tunnel hostage.
//!
//! A response body from a tunnel is read by the client's connection only as fast as the
//! client reads; what it does not read stays in the tunnel's HTTP/2 buffers and counts
//! against the tunnel's connection window, which every other request of the tenant shares.
//! Two bounds keep that harmless: each stream's window is a small share of the connection's
//! (see `tunnel`), and [`watch`] resets a stream whose client took no frame for
//! `relay.client_write_timeout` — dropping the tunnel stream returns its window at once.

use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, StreamBody};

use crate::registry::BoxError;
use crate::responses::Body;

/// Responses at most this long (by `Content-Length`) are passed straight through: they hold
/// at most this much of the window, and a pump task per small response would cost more than
/// it protects.
const WATCH_ABOVE: u64 = 256 * 1024;

/// `body`, reset (the client sees the response end early) when the client does not take its
/// next frame within `timeout`.
pub fn watch(body: Body, timeout: Duration, request_id: String) -> Body {
    if body.size_hint().exact().is_some_and(|n| n <= WATCH_ABOVE) {
        return body;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    tokio::spawn(async move {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let failed = frame.is_err();
            match tokio::time::timeout(timeout, tx.reserve()).await {
                Ok(Ok(permit)) => permit.send(frame),
                // The client went away; dropping the body resets the tunnel stream.
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!(%request_id, ?timeout, "Client stopped reading the response; stream reset.");
                    return;
                }
            }
            if failed {
                return;
            }
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    StreamBody::new(frames).boxed()
}
