//! The client's request body on its way into the tunnel: size limit enforced while
//! streaming, never buffered.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use http_body_util::{BodyExt, BodyStream, StreamBody};
use tokio::sync::oneshot;

use crate::registry::{BoxError, TunnelBody};

/// The body went over the tenant's limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct TooLarge(pub u64);

/// Counts the bytes read from the client's body, for whoever put it into the request's
/// extensions before the relay handled it (the request log).
#[derive(Clone, Default)]
pub struct BodyBytes(pub Arc<AtomicU64>);

/// Streams the client's body, failing once more than `limit` bytes have passed. `tripped`
/// tells the request handler afterwards that a failure was this and not the tunnel.
pub struct LimitedBody {
    inner: Incoming,
    limit: Option<u64>,
    seen: u64,
    tripped: Arc<AtomicBool>,
    counter: Option<BodyBytes>,
}

impl LimitedBody {
    pub fn new(
        inner: Incoming,
        limit: Option<u64>,
        counter: Option<BodyBytes>,
    ) -> (Self, Arc<AtomicBool>) {
        let tripped = Arc::new(AtomicBool::new(false));
        let body = LimitedBody {
            inner,
            limit,
            seen: 0,
            tripped: tripped.clone(),
            counter,
        };
        (body, tripped)
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    crate::metrics::BYTES_IN.add(data.len() as u64);
                    this.seen += data.len() as u64;
                    if let Some(counter) = &this.counter {
                        counter.0.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    if let Some(limit) = this.limit
                        && this.seen > limit
                    {
                        this.tripped.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that reports when it was read to its end, i.e. handed in full to the tunnel
/// stream (acknowledge mode `connector-received`). A stream body never claims to be empty up
/// front, so even an empty body is polled once and reports.
pub fn report_end(inner: TunnelBody, done: oneshot::Sender<()>) -> TunnelBody {
    use futures_util::StreamExt;
    let end = futures_util::stream::once(async move {
        let _ = done.send(());
    })
    .filter_map(|()| async { None });
    BodyExt::boxed(StreamBody::new(BodyStream::new(inner).chain(end)))
}
