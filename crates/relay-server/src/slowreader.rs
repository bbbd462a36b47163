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
use http_body_util::BodyExt;

use crate::registry::BoxError;
use crate::responses::Body;

/// Bytes a response passes straight through before it is watched: up to this much it holds
/// at most this much of the window, and a pump task per small response (chunked ones
/// included) would cost more than it protects.
const WATCH_ABOVE: u64 = 256 * 1024;

/// `body`, reset (the client sees the response end early) when, past its first
/// [`WATCH_ABOVE`] bytes, the client does not take a frame within `timeout`.
pub fn watch(body: Body, timeout: Duration, request_id: String) -> Body {
    if body.size_hint().exact().is_some_and(|n| n <= WATCH_ABOVE) {
        return body;
    }
    Watched::Direct {
        body,
        passed: 0,
        timeout,
        request_id,
    }
    .boxed()
}

type Frames = tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>;

/// Frames pass through until [`WATCH_ABOVE`] bytes went by; then the rest is pumped by a
/// task that can tell a client that stopped reading.
enum Watched {
    Direct {
        body: Body,
        passed: u64,
        timeout: Duration,
        request_id: String,
    },
    Pumped(Frames),
    Taken,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        match this {
            Watched::Pumped(rx) => rx.poll_recv(cx),
            Watched::Taken => Poll::Ready(None),
            Watched::Direct { body, passed, .. } => {
                let polled = std::pin::Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    *passed += data.len() as u64;
                    if *passed > WATCH_ABOVE
                        && let Watched::Direct {
                            body,
                            timeout,
                            request_id,
                            ..
                        } = std::mem::replace(this, Watched::Taken)
                    {
                        *this = Watched::Pumped(pump(body, timeout, request_id));
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Watched::Direct { body, .. } => body.is_end_stream(),
            Watched::Pumped(_) => false,
            Watched::Taken => true,
        }
    }
}

/// Moves `body` into a task that hands one frame at a time to the returned receiver and
/// drops the body (resetting the tunnel stream) when a frame is not taken within `timeout`.
fn pump(mut body: Body, timeout: Duration, request_id: String) -> Frames {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
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
    rx
}
