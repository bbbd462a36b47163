//! The client's request body on its way into the tunnel: size limit enforced while
//! streaming, never buffered.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use http_body_util::{BodyExt, BodyStream, StreamBody};
use tokio::sync::{Notify, oneshot};

use crate::registry::{BoxError, TunnelBody};

/// The body went over the tenant's limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct TooLarge(pub u64);

/// Counts the bytes read from the client's body, for whoever put it into the request's
/// extensions before the relay handled it (the request log).
#[derive(Clone, Default)]
pub struct BodyBytes(pub Arc<AtomicU64>);

/// What became of a client's body while it streamed into the tunnel, shared between the body
/// and the request handler: whether a failure was the client's (over the limit, broken
/// framing) rather than the tunnel's, and when the body ended, so that the request expiry
/// and the target timeout count from there (big slow uploads are not cut by them).
#[derive(Default)]
pub struct Progress {
    too_large: AtomicBool,
    client_error: AtomicBool,
    ended: AtomicBool,
    bytes: AtomicU64,
    changed: Notify,
}

/// How the wait for a body ended ([`Progress::forwarded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Read to its end (or it failed, which the request's own result reports).
    Done,
    /// No byte moved for the idle timeout: the client (or the target) stalled.
    Stalled,
}

impl Progress {
    /// The body went over the tenant's limit.
    pub fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Acquire)
    }

    /// The client's framing was broken (bad chunk, connection closed mid-body).
    pub fn client_error(&self) -> bool {
        self.client_error.load(Ordering::Acquire)
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Waits until the body was read to its end, or until no byte of it moved for `idle`.
    /// Cancel-safe (it only observes).
    pub async fn forwarded(&self, idle: Duration) -> Forwarded {
        let mut seen = self.bytes.load(Ordering::Acquire);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.ended.load(Ordering::Acquire) {
                return Forwarded::Done;
            }
            if tokio::time::timeout(idle, changed).await.is_err() {
                let now = self.bytes.load(Ordering::Acquire);
                if now == seen && !self.ended.load(Ordering::Acquire) {
                    return Forwarded::Stalled;
                }
                seen = now;
            }
        }
    }
}

/// Streams the client's body, failing once more than `limit` bytes have passed, and records
/// its [`Progress`].
pub struct LimitedBody {
    inner: Incoming,
    limit: Option<u64>,
    seen: u64,
    progress: Arc<Progress>,
    counter: Option<BodyBytes>,
}

impl LimitedBody {
    pub fn new(
        inner: Incoming,
        limit: Option<u64>,
        counter: Option<BodyBytes>,
    ) -> (Self, Arc<Progress>) {
        let progress = Arc::new(Progress::default());
        if inner.is_end_stream() {
            progress.end();
        }
        let body = LimitedBody {
            inner,
            limit,
            seen: 0,
            progress: progress.clone(),
            counter,
        };
        (body, progress)
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
                    let len = data.len() as u64;
                    crate::metrics::BYTES_IN.add(len);
                    this.seen += len;
                    if let Some(counter) = &this.counter {
                        counter.0.fetch_add(len, Ordering::Relaxed);
                    }
                    // Counted for the idle check; nobody is woken (it polls on its timer).
                    this.progress.bytes.fetch_add(len, Ordering::Release);
                    if let Some(limit) = this.limit
                        && this.seen > limit
                    {
                        this.progress.too_large.store(true, Ordering::Release);
                        this.progress.end();
                        return Poll::Ready(Some(Err(Box::new(TooLarge(limit)))));
                    }
                }
                if this.inner.is_end_stream() {
                    this.progress.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.progress.client_error.store(true, Ordering::Release);
                this.progress.end();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.progress.end();
                Poll::Ready(None)
            }
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
