//! Admission of a listener's connections: the caps (in all, and per source, IPv6 by /64),
//! the tunnel reserve, eviction of the oldest idle connection at the cap, and the counters of
//! refused and closed connections by [`Reason`].
//!
//! A listener holds at most `max_connections`. With a tunnel reserve of `r`, `r` of them
//! are kept for connections that come to make a tunnel upgrade: once `max_connections - r`
//! client slots are taken, a newcomer first takes the place of the oldest idle client
//! connection (no request in flight, not upgraded), and only if there is none it gets a
//! reserve slot, whose [`Permit::is_reserve`] tells the service to answer anything but a
//! tunnel upgrade with 503 and close. The per-source cap refuses outright: one source gets
//! no more by pushing out its own connections.
//!
//! Eviction never scans every slot per connection: a scan collects the oldest idle slots of
//! one kind (a batch of `max_connections / 64`, at least 8) into a queue that later
//! newcomers consume, each candidate re-checked (still idle since the same instant) when
//! taken; a scan that finds none is not repeated within 100 ms. An evicted slot
//! is released at once (the newcomer takes its place) and its connection closed gracefully;
//! for the moment that takes, the process holds a few connections more than the cap.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::ConnectionLimits;
use super::stats::{Reason, Stats, stats_for};

/// The address a connection counts under for `max_per_source`: an IPv4 address (IPv4-mapped
/// IPv6 included), or the /64 of an IPv6 address (one host usually has a whole /64).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// A scan that found no idle connection is not repeated within this time.
const RESCAN_PAUSE: Duration = Duration::from_millis(100);
/// At most one warning per listener in this time while caps are being hit.
const REPORT_EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
thread_local! {
    /// Scans done on this thread, for the test that they are amortised.
    static SCANS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

const EVICTED: usize = 1;
const CLOSE: usize = 2;
const UPGRADED: usize = 4;
const ONE_REQUEST: usize = 8;

/// No request in flight, not upgraded, not evicted yet (closing after a response is fine).
fn evictable(state: usize) -> bool {
    state & !CLOSE == 0
}

/// The shared state of one admitted connection, seen by the gate (eviction) and by the
/// connection's task (watchdog, requests).
pub(crate) struct Slot {
    epoch: Instant,
    admitted: Instant,
    reserve: bool,
    source: IpAddr,
    /// Requests in flight × [`ONE_REQUEST`], plus the flags [`EVICTED`], [`CLOSE`],
    /// [`UPGRADED`]; see [`evictable`].
    state: AtomicUsize,
    /// Milliseconds after `epoch` when the last request ended (or the connection arrived).
    idle_since_ms: AtomicU64,
    /// Set once the slot's place is given back (by eviction or by the permit's drop).
    released: AtomicBool,
    /// Woken when `EVICTED` or `CLOSE` is set.
    close: Notify,
}

impl Slot {
    pub(crate) fn admitted(&self) -> Instant {
        self.admitted
    }

    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    pub(crate) fn idle_since_ms(&self) -> u64 {
        self.idle_since_ms.load(Ordering::Acquire)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.state.load(Ordering::Acquire) / ONE_REQUEST
    }

    pub(crate) fn start_request(&self) {
        self.state.fetch_add(ONE_REQUEST, Ordering::AcqRel);
    }

    /// Counts a request out; returns whether it was the last one in flight.
    pub(crate) fn end_request(&self) -> bool {
        self.idle_since_ms.store(self.now_ms(), Ordering::Release);
        self.state.fetch_sub(ONE_REQUEST, Ordering::AcqRel) / ONE_REQUEST == 1
    }

    /// The connection became a tunnel: never evicted.
    pub(crate) fn mark_upgraded(&self) {
        self.state.fetch_or(UPGRADED, Ordering::AcqRel);
    }

    pub(crate) fn is_upgraded(&self) -> bool {
        self.state.load(Ordering::Acquire) & UPGRADED != 0
    }

    pub(crate) fn is_evicted(&self) -> bool {
        self.state.load(Ordering::Acquire) & EVICTED != 0
    }

    /// Whether the connection is to close (evicted, or asked to by [`Closer`]).
    pub(crate) fn closing(&self) -> bool {
        self.state.load(Ordering::Acquire) & (EVICTED | CLOSE) != 0
    }

    /// Marks the slot evicted if it may be: no request in flight, not upgraded.
    fn try_evict(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                evictable(state).then_some(state | EVICTED)
            })
            .is_ok()
    }

    fn request_close(&self, flag: usize) {
        self.state.fetch_or(flag, Ordering::AcqRel);
        self.close.notify_one();
    }

    /// Resolves once the connection is to close. Cancel-safe (a wake-up missed while not
    /// polled is kept by `Notify`'s permit, and the flags are checked first).
    pub(crate) async fn close_requested(&self) {
        loop {
            if self.closing() {
                return;
            }
            self.close.notified().await;
        }
    }
}

/// Asks one connection to close gracefully (HTTP/1.1: after the current response, which
/// gets `Connection: close`; HTTP/2: GOAWAY).
#[derive(Clone)]
pub struct Closer(Arc<Slot>);

impl Closer {
    pub fn close(&self) {
        self.0.request_close(CLOSE);
    }
}

/// The caps of one listener. Shared by its accept loop and the [`Permit`]s of its open
/// connections.
pub struct Gate {
    pub(super) name: &'static str,
    pub(super) limits: ConnectionLimits,
    reserved: usize,
    epoch: Instant,
    open: AtomicUsize,
    inner: Mutex<Inner>,
    stats: Arc<Stats>,
    last_report_ms: AtomicU64,
}

#[derive(Default)]
struct Inner {
    sources: HashMap<IpAddr, usize>,
    /// Open slots: `[client, reserve]`.
    open: [usize; 2],
    slots: Vec<Option<Arc<Slot>>>,
    free: Vec<usize>,
    /// Oldest idle slots of the last scan, oldest first, with their idle instant then.
    candidates: [VecDeque<(u64, Weak<Slot>)>; 2],
    /// No new scan before this (milliseconds after the epoch).
    next_scan_ms: [u64; 2],
}

impl Gate {
    /// A gate without a tunnel reserve; `name` labels log lines and metrics ("identity", …).
    pub fn new(name: &'static str, limits: ConnectionLimits) -> Arc<Gate> {
        Gate::build(name, limits, 0)
    }

    /// A gate that keeps [`ConnectionLimits::tunnel_reserve`] slots for tunnel upgrades
    /// (relay-server's public listener).
    pub fn with_tunnel_reserve(name: &'static str, limits: ConnectionLimits) -> Arc<Gate> {
        let reserved = limits
            .tunnel_reserve()
            .min(limits.max_connections.saturating_sub(1));
        Gate::build(name, limits, reserved)
    }

    fn build(name: &'static str, limits: ConnectionLimits, reserved: usize) -> Arc<Gate> {
        Arc::new(Gate {
            name,
            limits,
            reserved,
            epoch: Instant::now(),
            open: AtomicUsize::new(0),
            inner: Mutex::new(Inner::default()),
            stats: stats_for(name),
            last_report_ms: AtomicU64::new(u64::MAX),
        })
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Slots kept for tunnel upgrades.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Connections open now (evicted ones that are still closing not counted).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused at a cap (listener or source) since start, by all gates of this
    /// listener name.
    pub fn refused(&self) -> u64 {
        self.count_of(Reason::ListenerCap) + self.count_of(Reason::SourceCap)
    }

    /// How often `reason` happened, for all gates of this listener name.
    pub fn count_of(&self, reason: Reason) -> u64 {
        self.stats.reasons[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts `reason` and, at most once per 10 s, logs the counts.
    pub fn count(&self, reason: Reason) {
        self.stats.reasons[reason as usize].fetch_add(1, Ordering::Relaxed);
        if reason == Reason::Lifetime {
            return;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_report_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= REPORT_EVERY.as_millis() as u64;
        if due
            && self
                .last_report_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                listener = self.name,
                open = self.open(),
                max_connections = self.limits.max_connections,
                reserved_for_tunnels = self.reserved,
                max_per_source = self.limits.max_per_source,
                listener_cap = self.count_of(Reason::ListenerCap),
                source_cap = self.count_of(Reason::SourceCap),
                evicted_idle = self.count_of(Reason::EvictedIdle),
                reserve_not_tunnel = self.count_of(Reason::ReserveNotTunnel),
                "Connection caps reached: connections refused or idle ones closed to make room \
                 (totals since start; one line per 10 s while it lasts)."
            );
        }
    }

    /// A permit for a connection from `ip`, or the reason it is refused. At the client cap
    /// the oldest idle client connection makes room; then the tunnel reserve is used.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Reason> {
        let source = source_key(ip);
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let Ok(mut inner) = self.inner.lock() else {
            return Err(Reason::ListenerCap);
        };
        let inner = &mut *inner;
        if self.limits.max_per_source > 0
            && inner.sources.get(&source).copied().unwrap_or(0) >= self.limits.max_per_source
        {
            return Err(Reason::SourceCap);
        }
        let client_cap = self.limits.max_connections - self.reserved;
        let reserve = if inner.open[0] < client_cap || self.evict(inner, false, now_ms) {
            false
        } else if inner.open[1] < self.reserved || self.evict(inner, true, now_ms) {
            true
        } else {
            return Err(Reason::ListenerCap);
        };
        let slot = Arc::new(Slot {
            epoch: self.epoch,
            admitted: Instant::now(),
            reserve,
            source,
            state: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now_ms),
            released: AtomicBool::new(false),
            close: Notify::new(),
        });
        let index = match inner.free.pop() {
            Some(i) => {
                inner.slots[i] = Some(slot.clone());
                i
            }
            None => {
                inner.slots.push(Some(slot.clone()));
                inner.slots.len() - 1
            }
        };
        if self.limits.max_per_source > 0 {
            *inner.sources.entry(source).or_insert(0) += 1;
        }
        inner.open[usize::from(reserve)] += 1;
        self.stats.open[usize::from(reserve)].fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            gate: self.clone(),
            slot,
            index,
        })
    }

    /// Gives the place of `slot` back (once).
    fn release(&self, inner: &mut Inner, slot: &Slot) {
        if slot.released.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.limits.max_per_source > 0
            && let Some(count) = inner.sources.get_mut(&slot.source)
        {
            *count -= 1;
            if *count == 0 {
                inner.sources.remove(&slot.source);
            }
        }
        let kind = usize::from(slot.reserve);
        inner.open[kind] -= 1;
        self.stats.open[kind].fetch_sub(1, Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Evicts the oldest idle connection of a kind (client or reserve slot); whether one was.
    fn evict(&self, inner: &mut Inner, reserve: bool, now_ms: u64) -> bool {
        let kind = usize::from(reserve);
        loop {
            let Some((since, weak)) = inner.candidates[kind].pop_front() else {
                if now_ms < inner.next_scan_ms[kind] || !self.scan(inner, reserve) {
                    inner.next_scan_ms[kind] =
                        now_ms.saturating_add(RESCAN_PAUSE.as_millis() as u64);
                    return false;
                }
                continue;
            };
            let Some(slot) = weak.upgrade() else { continue };
            // A permit drops under this lock: `released` is current here.
            if slot.idle_since_ms() != since
                || slot.released.load(Ordering::Acquire)
                || !slot.try_evict()
            {
                continue;
            }
            self.release(inner, &slot);
            slot.close.notify_one();
            self.count(Reason::EvictedIdle);
            return true;
        }
    }

    /// Fills the candidate queue of a kind with its oldest idle slots; whether any were found.
    fn scan(&self, inner: &mut Inner, reserve: bool) -> bool {
        #[cfg(test)]
        SCANS.with(|s| s.set(s.get() + 1));
        let batch = (self.limits.max_connections / 64).max(8);
        let mut idle: Vec<(u64, usize)> = inner
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let slot = slot.as_ref()?;
                (slot.reserve == reserve
                    && evictable(slot.state.load(Ordering::Acquire))
                    && !slot.released.load(Ordering::Acquire))
                .then(|| (slot.idle_since_ms(), i))
            })
            .collect();
        if idle.len() > batch {
            idle.select_nth_unstable(batch - 1);
            idle.truncate(batch);
        }
        idle.sort_unstable();
        let queue = &mut inner.candidates[usize::from(reserve)];
        for (since, i) in &idle {
            if let Some(Some(slot)) = inner.slots.get(*i) {
                queue.push_back((*since, Arc::downgrade(slot)));
            }
        }
        !idle.is_empty()
    }
}

/// One admitted connection; dropping it frees its place (unless it was evicted, which gave
/// the place away already).
pub struct Permit {
    gate: Arc<Gate>,
    slot: Arc<Slot>,
    index: usize,
}

impl Permit {
    /// Whether the connection holds a tunnel-reserve slot: it may only make a tunnel upgrade.
    pub fn is_reserve(&self) -> bool {
        self.slot.reserve
    }

    /// A handle that closes this connection gracefully.
    pub fn closer(&self) -> Closer {
        Closer(self.slot.clone())
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.gate.inner.lock() {
            let inner = &mut *inner;
            self.gate.release(inner, &self.slot);
            if let Some(entry) = inner.slots.get_mut(self.index) {
                *entry = None;
                inner.free.push(self.index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::render_metrics;
    use crate::metrics::Exposition;

    fn limits(max_connections: usize, max_per_source: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            max_per_source,
            ..ConnectionLimits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    /// Marks a permit's connection idle since `ms` after the gate's epoch.
    fn idle_since(permit: &Permit, ms: u64) {
        permit.slot.idle_since_ms.store(ms, Ordering::Release);
    }

    #[test]
    fn per_source_cap_counts_ipv6_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(source_key(ip("2001:db8::1")), ip("2001:db8::"));
        assert_eq!(source_key(ip("2001:db8::ffff:0:2")), ip("2001:db8::"));
        assert_eq!(source_key(ip("2001:db8:0:1::1")), ip("2001:db8:0:1::"));
        assert_eq!(source_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let gate = Gate::new("test-64", limits(16, 2));
        let a = gate.admit(ip("2001:db8::1"));
        let b = gate.admit(ip("2001:db8::abcd:1"));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(
            gate.admit(ip("2001:db8::9")).err(),
            Some(Reason::SourceCap),
            "a third address of the same /64"
        );
        assert!(gate.admit(ip("2001:db8:0:1::1")).is_ok(), "the next /64");
        let v4 = gate.admit(ip("10.0.0.1"));
        let mapped = gate.admit(ip("::ffff:10.0.0.1"));
        assert!(v4.is_ok() && mapped.is_ok());
        assert_eq!(gate.admit(ip("10.0.0.1")).err(), Some(Reason::SourceCap));
    }

    #[test]
    fn per_source_cap_frees_places_on_drop() {
        let gate = Gate::new("test-source", limits(3, 2));
        let a = ip("10.0.0.1");
        let b = ip("10.0.0.2");
        let first = gate.admit(a).ok();
        let second = gate.admit(a).ok();
        assert!(first.is_some() && second.is_some());
        assert_eq!(gate.admit(a).err(), Some(Reason::SourceCap));
        let third = gate.admit(b).ok();
        assert!(third.is_some());
        drop(first);
        let again = gate.admit(a).ok();
        assert!(again.is_some());
        assert_eq!(gate.open(), 3);
        drop((second, third, again));
        assert_eq!(gate.open(), 0);
        assert!(
            gate.inner
                .lock()
                .map(|i| i.sources.is_empty())
                .unwrap_or(false)
        );
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room_never_a_busy_one() {
        let gate = Gate::new("test-evict", limits(3, 0));
        let busy = gate.admit(ip("10.0.0.1")).expect("first");
        let older = gate.admit(ip("10.0.0.2")).expect("second");
        let newer = gate.admit(ip("10.0.0.3")).expect("third");
        busy.slot.start_request();
        idle_since(&busy, 0);
        idle_since(&older, 5);
        idle_since(&newer, 10);
        let fourth = gate.admit(ip("10.0.0.4")).expect("room made at the cap");
        assert!(
            older.slot.is_evicted(),
            "the oldest idle one was not evicted"
        );
        assert!(!busy.slot.is_evicted() && !newer.slot.is_evicted());
        assert_eq!(gate.open(), 3);
        assert_eq!(gate.count_of(Reason::EvictedIdle), 1);
        // Everything busy now: the newcomer is refused, the busy ones stay.
        newer.slot.start_request();
        fourth.slot.start_request();
        assert_eq!(gate.admit(ip("10.0.0.5")).err(), Some(Reason::ListenerCap));
        assert!(!busy.slot.is_evicted() && !newer.slot.is_evicted() && !fourth.slot.is_evicted());
        // The evicted permit's drop gives nothing back twice.
        drop(older);
        assert_eq!(gate.open(), 3);
        drop((busy, newer, fourth));
        assert_eq!(gate.open(), 0);
    }

    #[test]
    fn an_upgraded_connection_is_never_evicted() {
        let gate = Gate::new("test-upgraded", limits(1, 0));
        let tunnel = gate.admit(ip("10.0.0.1")).expect("first");
        tunnel.slot.mark_upgraded();
        assert_eq!(gate.admit(ip("10.0.0.2")).err(), Some(Reason::ListenerCap));
        assert!(!tunnel.slot.is_evicted());
    }

    #[test]
    fn the_reserve_is_used_only_when_no_client_slot_can_be_freed() {
        let capped = ConnectionLimits {
            reserved_for_tunnels: Some(1),
            ..limits(3, 0)
        };
        let gate = Gate::with_tunnel_reserve("test-reserve", capped);
        assert_eq!(gate.reserved(), 1);
        let a = gate.admit(ip("10.0.0.1")).expect("client 1");
        let b = gate.admit(ip("10.0.0.2")).expect("client 2");
        assert!(!a.is_reserve() && !b.is_reserve());
        // Both client slots idle: the newcomer takes the oldest one's place, not the reserve.
        idle_since(&a, 1);
        idle_since(&b, 2);
        let c = gate.admit(ip("10.0.0.3")).expect("client 3");
        assert!(!c.is_reserve() && a.slot.is_evicted());
        // Client slots all busy: the reserve.
        b.slot.start_request();
        c.slot.start_request();
        let tunnel = gate.admit(ip("10.0.0.4")).expect("a reserve slot");
        assert!(tunnel.is_reserve());
        tunnel.slot.start_request();
        assert_eq!(gate.admit(ip("10.0.0.5")).err(), Some(Reason::ListenerCap));
        // A gate without a reserve gives all three to clients.
        let plain = Gate::new("test-no-reserve", capped);
        assert_eq!(plain.reserved(), 0);
        let held: Vec<Permit> = (1..=3)
            .map(|i| plain.admit(IpAddr::from([10, 1, 0, i])).expect("client"))
            .collect();
        assert!(held.iter().all(|p| !p.is_reserve()));
    }

    #[test]
    fn eviction_scans_once_per_batch_not_once_per_newcomer() {
        let gate = Gate::new("test-batch", limits(1024, 0));
        let mut held: Vec<Permit> = (0..1024u32)
            .map(|i| {
                let permit = gate.admit(IpAddr::from(i.to_be_bytes())).expect("slot");
                idle_since(&permit, u64::from(i));
                permit
            })
            .collect();
        let scans_before = SCANS.with(|s| s.get());
        for i in 0..64u32 {
            let permit = gate
                .admit(IpAddr::from((5000 + i).to_be_bytes()))
                .expect("room made");
            permit.slot.start_request();
            held.push(permit);
        }
        let scans = SCANS.with(|s| s.get()) - scans_before;
        assert!(scans <= 4, "{scans} scans for 64 newcomers");
        // The 64 oldest were evicted, in order.
        for (i, permit) in held.iter().take(1024).enumerate() {
            assert_eq!(permit.slot.is_evicted(), i < 64, "slot {i}");
        }
    }

    #[test]
    fn refusals_are_rendered_by_listener_and_reason() {
        let gate = Gate::new("test-metrics", limits(1, 1));
        let held = gate.admit(ip("10.0.0.1")).ok();
        assert!(held.is_some());
        assert_eq!(gate.admit(ip("10.0.0.1")).err(), Some(Reason::SourceCap));
        gate.count(Reason::SourceCap);
        let mut e = Exposition::new();
        render_metrics(&mut e);
        let text = e.finish();
        assert!(
            text.contains(
                "relay_connections_refused_total{listener=\"test-metrics\",reason=\"source_cap\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("relay_connections_open{listener=\"test-metrics\",slot=\"client\"} 1\n"),
            "{text}"
        );
    }
}
