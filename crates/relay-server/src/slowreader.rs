//! Clients that stop reading a response must not hold the tunnel hostage.
//!
//! A response body from a tunnel is read by the client's connection only as fast as the
//! client reads; what it does not read stays in the tunnel's HTTP/2 buffers and counts
//! against the tunnel's connection window, which every other request of the tenant shares.
//! Each tunnel stream may hold at most 1/32 of that window (see `tunnel`), and [`Watchdog`]
//! bounds how long and how many:
//! - a response whose client took no frame for `relay.client_write_timeout` is reset, counted
//!   from the moment its head was handed to the client's connection, for every size and both
//!   protocols (an HTTP/2 client that keeps its window at zero never lets hyper poll the body,
//!   so the clock cannot live in the body's `poll_frame`: one sweeper task per node reads it);
//! - one source may have at most `relay.max_stalled_per_source` responses stalled (no frame
//!   taken for [`STALLED_AFTER`]) at once; the longest-stalled beyond that are reset at the
//!   next sweep, so one client holds at most a small part of a tunnel's window.
//!
//! Waiting for the target is not stalling: while the body's last poll returned `Pending`
//! (the tunnel had nothing), the clock does not run.
//!
//! Resetting means dropping the tunnel-side body (the tunnel stream is reset and its window
//! returned at once); the client's stream then ends with an error.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::registry::BoxError;
use crate::responses::Body;

/// A response whose client took no frame for this long counts as stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);
/// Marks `Slot::progress` while the body waits for the tunnel (the client is not to blame).
const WAITING: u64 = 1 << 63;

/// The node's watched responses and the sweeper that resets stalled ones.
pub struct Watchdog {
    epoch: Instant,
    timeout: Duration,
    max_stalled_per_source: usize,
    slots: Mutex<Vec<Weak<Slot>>>,
    resets: AtomicU64,
}

/// One watched response, shared by its body and the sweeper.
struct Slot {
    body: Mutex<Inner>,
    /// Milliseconds after the epoch when the client last took a frame (or the head was
    /// handed over), `| WAITING` while the body waits for the tunnel.
    progress: AtomicU64,
    source: IpAddr,
    request_id: String,
}

enum Inner {
    Open(Body),
    Reset,
    Done,
}

impl Watchdog {
    pub fn new(timeout: Duration, max_stalled_per_source: usize) -> Arc<Watchdog> {
        Arc::new(Watchdog {
            epoch: Instant::now(),
            timeout,
            max_stalled_per_source,
            slots: Mutex::new(Vec::new()),
            resets: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        ms_since(self.epoch)
    }

    /// Responses reset so far (stalled clients).
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    /// `body`, watched from now on: the response head is about to be handed to the client.
    /// `guard` (stream permits) lives as long as the body.
    pub fn watch<G: Send + Sync + Unpin + 'static>(
        &self,
        body: Body,
        source: IpAddr,
        request_id: String,
        guard: G,
    ) -> Body {
        if body.is_end_stream() {
            return body;
        }
        let slot = Arc::new(Slot {
            body: Mutex::new(Inner::Open(body)),
            progress: AtomicU64::new(self.now_ms()),
            source,
            request_id,
        });
        if let Ok(mut slots) = self.slots.lock() {
            slots.push(Arc::downgrade(&slot));
        }
        Watched {
            slot,
            epoch: self.epoch,
            _guard: guard,
        }
        .boxed()
    }

    /// Sweeps every quarter of the shortest bound until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let every = (self.timeout / 4).clamp(Duration::from_millis(100), STALLED_AFTER / 2);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(),
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Resets responses stalled past the timeout, and per source the longest-stalled beyond
    /// `max_stalled_per_source`; forgets finished ones.
    pub fn sweep(&self) {
        let now = self.now_ms();
        let timeout = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let stalled_after = u64::try_from(STALLED_AFTER.as_millis()).unwrap_or(u64::MAX);
        let mut stalled: Vec<(IpAddr, u64, Arc<Slot>)> = Vec::new();
        let mut expired: Vec<Arc<Slot>> = Vec::new();
        if let Ok(mut slots) = self.slots.lock() {
            slots.retain(|weak| {
                let Some(slot) = weak.upgrade() else {
                    return false;
                };
                let progress = slot.progress.load(Ordering::Acquire);
                if progress & WAITING != 0 {
                    return true;
                }
                let idle = now.saturating_sub(progress);
                if idle >= timeout {
                    expired.push(slot);
                    return false;
                }
                if idle >= stalled_after {
                    stalled.push((slot.source, progress, slot));
                }
                true
            });
        }
        for slot in expired {
            self.reset(
                &slot,
                "Client took no frame of the response in time; stream reset.",
            );
        }
        if stalled.len() <= self.max_stalled_per_source {
            return;
        }
        // Oldest stall first within each source; everything past the cap is reset.
        stalled.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut kept = 0;
        let mut source = None;
        for (ip, _, slot) in stalled.iter().rev() {
            if source != Some(*ip) {
                source = Some(*ip);
                kept = 0;
            }
            kept += 1;
            if kept > self.max_stalled_per_source {
                self.reset(
                    slot,
                    "Too many stalled responses from one source; longest-stalled stream reset.",
                );
            }
        }
    }

    fn reset(&self, slot: &Slot, why: &'static str) {
        let body = match slot.body.lock() {
            Ok(mut inner) => match std::mem::replace(&mut *inner, Inner::Reset) {
                Inner::Open(body) => Some(body),
                other => {
                    *inner = other;
                    None
                }
            },
            Err(_) => None,
        };
        // Dropped outside the lock: this resets the tunnel stream.
        if body.is_some() {
            drop(body);
            self.resets.fetch_add(1, Ordering::Relaxed);
            tracing::info!(request_id = %slot.request_id, source = %slot.source, timeout = ?self.timeout, "{why}");
        }
    }
}

/// The body handed to the client's connection.
struct Watched<G> {
    slot: Arc<Slot>,
    epoch: Instant,
    _guard: G,
}

impl<G> Watched<G> {
    fn now_ms(&self) -> u64 {
        ms_since(self.epoch)
    }
}

/// Milliseconds since `epoch`, below the [`WAITING`] bit.
fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).map_or(WAITING - 1, |ms| ms.min(WAITING - 1))
}

#[derive(Debug, thiserror::Error)]
#[error("the client stopped reading the response; stream reset")]
struct StalledClient;

impl<G: Unpin> http_body::Body for Watched<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Ok(mut inner) = this.slot.body.lock() else {
            return Poll::Ready(Some(Err(Box::new(StalledClient))));
        };
        let polled = match &mut *inner {
            Inner::Open(body) => std::pin::Pin::new(body).poll_frame(cx),
            Inner::Reset => return Poll::Ready(Some(Err(Box::new(StalledClient)))),
            Inner::Done => return Poll::Ready(None),
        };
        match &polled {
            Poll::Pending => {
                let now = this.now_ms();
                this.slot.progress.store(now | WAITING, Ordering::Release);
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => *inner = Inner::Done,
            Poll::Ready(Some(Ok(_))) => {
                let now = this.now_ms();
                this.slot.progress.store(now, Ordering::Release);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self.slot.body.lock().as_deref() {
            Ok(Inner::Open(body)) => body.is_end_stream(),
            Ok(Inner::Done) => true,
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.slot.body.lock().as_deref() {
            Ok(Inner::Open(body)) => body.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn source(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    /// A body that always has data: the client alone decides how fast it goes.
    fn endless() -> (Body, Arc<()>) {
        let alive = Arc::new(());
        let held = alive.clone();
        let stream = futures_util::stream::repeat_with(move || {
            let _ = &held;
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x")))
        });
        (StreamBody::new(stream).boxed(), alive)
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_never_polled_is_reset_after_the_timeout() {
        let dog = Watchdog::new(Duration::from_secs(30), 8);
        let (body, alive) = endless();
        let mut watched = dog.watch(body, source(1), "r1".into(), ());
        tokio::time::advance(Duration::from_secs(29)).await;
        dog.sweep();
        assert_eq!(Arc::strong_count(&alive), 2, "reset before the timeout");
        tokio::time::advance(Duration::from_secs(2)).await;
        dog.sweep();
        assert_eq!(Arc::strong_count(&alive), 1, "tunnel body not dropped");
        assert_eq!(dog.resets(), 1);
        let frame = watched.frame().await.expect("an end");
        assert!(frame.is_err(), "the client's stream must end with an error");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_client_and_a_waiting_body_are_never_reset() {
        let dog = Watchdog::new(Duration::from_secs(2), 8);
        let (body, alive) = endless();
        let mut reading = dog.watch(body, source(1), "r1".into(), ());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let quiet =
            StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))).boxed();
        let mut waiting = dog.watch(quiet, source(1), "r2".into(), ());
        // The quiet target's body is polled once and has nothing: the client waits on it.
        assert!(futures_util::poll!(waiting.frame()).is_pending());
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(reading.frame().await.is_some_and(|f| f.is_ok()));
            dog.sweep();
        }
        assert_eq!(dog.resets(), 0);
        assert_eq!(Arc::strong_count(&alive), 2);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn one_source_keeps_at_most_its_share_of_stalled_responses() {
        let dog = Watchdog::new(Duration::from_secs(30), 2);
        let mut held = Vec::new();
        for i in 0..5u8 {
            let (body, alive) = endless();
            held.push((dog.watch(body, source(1), format!("a{i}"), ()), alive));
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let (other, other_alive) = endless();
        let _other = dog.watch(other, source(2), "b".into(), ());
        tokio::time::advance(STALLED_AFTER).await;
        dog.sweep();
        let open: Vec<bool> = held
            .iter()
            .map(|(_, alive)| Arc::strong_count(alive) == 2)
            .collect();
        // The three oldest stalls of source 1 go; its two newest and source 2's stay.
        assert_eq!(open, [false, false, false, true, true]);
        assert_eq!(Arc::strong_count(&other_alive), 2);
    }
}
