//! [`HashPool`]: the bounded pool every argon2 secret check of the token endpoint runs in.
//!
//! At most `workers` checks run at once (about one per core, each 19 MiB and tens of
//! milliseconds of CPU) and at most `queue` more wait; past that the caller is told
//! [`HashError::Busy`] at once (the endpoint answers `503` + `Retry-After`). So a queued
//! request waits for at most `(queue / workers) + 1` hash times, and memory for secret checks
//! is bounded by `workers` working buffers.
//!
//! Checks for unknown client ids (the dummy hash that makes "unknown client" cost as much
//! time as "wrong secret") have their own lane of one: at most one of them is admitted at a
//! time, so a flood of random client ids holds at most one of the pool's places and cannot
//! push a real client's check out of the queue or far back in it.
//!
//! Each source address (IPv6: its /64) holds at most `per_source` of the pool's places,
//! running or queued; past that it alone is told [`HashError::Busy`], so one source or a few
//! cannot fill the queue while others wait outside it.
//!
//! Checks for client ids under attack (more failed checks from all sources together than
//! their bucket allows, see `ratelimit`) have a lane of `queue / 4` places (at least one), so
//! wrong secrets for a few known ids from any number of addresses leave the rest of the queue
//! to the other clients.
//!
//! Sources where a secret verified lately ([`Lane::Proven`]) have a reserve of `queue` more
//! places when the queue is full: hundreds of addresses that never knew a secret can fill
//! the queue, but not the reserve, so a real client from such a source is still checked
//! (after at most about `2 × queue / workers + 1` check times).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::ratelimit::source_key;

/// Which clients a check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// A client id that exists: its secret is checked.
    Known,
    /// An unknown client id: the dummy check, at most one admitted at a time.
    Unknown,
    /// A client id that exists, from a source where a secret verified lately: may take a
    /// place of the reserve when the queue is full.
    Proven,
    /// A client id that exists and is under attack (many failed checks lately): at most a
    /// quarter of the queue (at least one place) is admitted at a time.
    Suspect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HashError {
    /// The queue (or the unknown-id lane) is full: retry later.
    Busy,
    /// The check panicked.
    Failed,
}

pub(crate) struct HashPool {
    /// Running plus queued checks: `workers + queue` permits.
    admitted: Arc<Semaphore>,
    /// Running checks.
    workers: Arc<Semaphore>,
    /// Admitted checks for unknown client ids: one permit.
    unknown: Arc<Semaphore>,
    /// The reserve of [`Lane::Proven`]: `queue` permits.
    reserve: Arc<Semaphore>,
    /// Admitted checks of [`Lane::Suspect`]: `queue / 4` permits, at least one.
    suspect: Arc<Semaphore>,
    /// Moving average of a check's duration, in microseconds.
    typical_us: Arc<AtomicU64>,
    /// Places held by each source.
    sources: Arc<SourcePlaces>,
}

/// Places (running or queued checks) held per source key.
struct SourcePlaces {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One of a source's places; given back on drop.
struct SourcePlace {
    places: Arc<SourcePlaces>,
    key: IpAddr,
}

impl SourcePlaces {
    fn take(self: &Arc<Self>, source: IpAddr) -> Option<SourcePlace> {
        let key = source_key(source);
        let mut held = self.held.lock().ok()?;
        let count = held.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourcePlace {
            places: self.clone(),
            key,
        })
    }
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        if let Ok(mut held) = self.places.held.lock()
            && let Some(count) = held.get_mut(&self.key)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// [`HashPool::typical_check`] before the first check has been measured.
const FIRST_GUESS: Duration = Duration::from_millis(50);

/// Dummy checks admitted at a time.
const UNKNOWN_LANE: usize = 1;

impl HashPool {
    /// A pool of `workers` (0: one per core) running checks and `queue` waiting ones, of
    /// which one source holds at most `per_source`.
    pub(crate) fn new(workers: usize, queue: usize, per_source: usize) -> Self {
        let workers = match workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        Self {
            admitted: Arc::new(Semaphore::new(workers + queue)),
            workers: Arc::new(Semaphore::new(workers)),
            unknown: Arc::new(Semaphore::new(UNKNOWN_LANE)),
            reserve: Arc::new(Semaphore::new(queue.max(1))),
            suspect: Arc::new(Semaphore::new((queue / 4).max(1))),
            typical_us: Arc::new(AtomicU64::new(FIRST_GUESS.as_micros() as u64)),
            sources: Arc::new(SourcePlaces {
                max: per_source.max(1),
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// How long one check takes lately (a moving average over the last few).
    pub(crate) fn typical_check(&self) -> Duration {
        Duration::from_micros(self.typical_us.load(Ordering::Relaxed))
    }

    /// Runs `check` for a request from `source` on a blocking thread once a worker is free,
    /// or fails at once with [`HashError::Busy`] when the queue (for [`Lane::Unknown`]: its
    /// lane) is full or `source` holds its share already. Without a source (a router served
    /// without peer addresses) only the queue bounds it.
    ///
    /// Cancel-safe: dropped while queued, the place is freed; dropped while running, the
    /// check finishes and only then frees its worker, so the bound holds either way.
    pub(crate) async fn run<T, F>(
        &self,
        lane: Lane,
        source: Option<IpAddr>,
        check: F,
    ) -> Result<T, HashError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let source_place = match source {
            None => None,
            Some(ip) => Some(self.sources.take(ip).ok_or(HashError::Busy)?),
        };
        let lane_place = match lane {
            Lane::Known | Lane::Proven => None,
            Lane::Unknown => Some(
                self.unknown
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| HashError::Busy)?,
            ),
            Lane::Suspect => Some(
                self.suspect
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| HashError::Busy)?,
            ),
        };
        let place = match self.admitted.clone().try_acquire_owned() {
            Ok(place) => place,
            Err(_) if lane == Lane::Proven => self
                .reserve
                .clone()
                .try_acquire_owned()
                .map_err(|_| HashError::Busy)?,
            Err(_) => return Err(HashError::Busy),
        };
        let worker = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Failed)?;
        let typical = self.typical_us.clone();
        tokio::task::spawn_blocking(move || {
            let _held = (worker, place, lane_place, source_place);
            let started = Instant::now();
            let checked = check();
            let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let old = typical.load(Ordering::Relaxed);
            typical.store(
                (old.saturating_mul(7) / 8).saturating_add(took / 8),
                Ordering::Relaxed,
            );
            checked
        })
        .await
        .map_err(|_| HashError::Failed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// A check that blocks until released, and tells when it started.
    fn gated(
        started: mpsc::Sender<u32>,
        n: u32,
    ) -> (impl FnOnce() -> u32 + Send + 'static, mpsc::Sender<()>) {
        let (release, gate) = mpsc::channel::<()>();
        let check = move || {
            let _ = started.send(n);
            let _ = gate.recv();
            n
        };
        (check, release)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_queue_checks_are_refused_and_places_come_back() {
        let pool = Arc::new(HashPool::new(1, 2, 8));
        let (started_tx, started) = mpsc::channel();
        let mut releases = Vec::new();
        let mut tasks = Vec::new();
        for n in 0..3 {
            let (check, release) = gated(started_tx.clone(), n);
            releases.push(release);
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                pool.run(Lane::Known, None, check).await
            }));
        }
        // The first one runs; wait (bounded) until the other two are queued.
        assert_eq!(started.recv_timeout(Duration::from_secs(10)), Ok(0));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pool.admitted.available_permits() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.run(Lane::Known, None, || 9).await,
            Err(HashError::Busy),
            "one worker, two queued: the fourth is refused"
        );
        for release in &releases {
            let _ = release.send(());
        }
        for (n, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.ok(), Some(Ok(n as u32)));
        }
        assert_eq!(
            pool.run(Lane::Known, None, || 7).await,
            Ok(7),
            "places freed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_ids_hold_one_place_at_most() {
        let pool = Arc::new(HashPool::new(1, 4, 8));
        let (started_tx, started) = mpsc::channel();
        let (check, release) = gated(started_tx, 0);
        let running = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Unknown, None, check).await }
        });
        assert_eq!(started.recv_timeout(Duration::from_secs(10)), Ok(0));
        assert_eq!(
            pool.run(Lane::Unknown, None, || 1).await,
            Err(HashError::Busy)
        );
        // A known client is still admitted (it queues behind the running check).
        let known = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Known, None, || 2).await }
        });
        let _ = release.send(());
        assert_eq!(running.await.ok(), Some(Ok(0)));
        assert_eq!(known.await.ok(), Some(Ok(2)));
        assert_eq!(
            pool.run(Lane::Unknown, None, || 3).await,
            Ok(3),
            "lane freed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_at_its_share_is_refused_while_others_are_admitted() {
        let pool = Arc::new(HashPool::new(1, 8, 2));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let a_same_64: IpAddr = "2001:db8::1".parse().expect("ip");
        let a_64_too: IpAddr = "2001:db8::2".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let (started_tx, started) = mpsc::channel();
        let mut releases = Vec::new();
        let mut tasks = Vec::new();
        for (n, source) in [(0, a), (1, a)] {
            let (check, release) = gated(started_tx.clone(), n);
            releases.push(release);
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                pool.run(Lane::Known, Some(source), check).await
            }));
        }
        assert_eq!(started.recv_timeout(Duration::from_secs(10)), Ok(0));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pool.admitted.available_permits() > 7 {
            assert!(tokio::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.run(Lane::Known, Some(a), || 9).await,
            Err(HashError::Busy),
            "a holds its two places"
        );
        assert_eq!(
            pool.run(Lane::Unknown, Some(a), || 9).await,
            Err(HashError::Busy),
            "in every lane"
        );
        let from_b = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Known, Some(b), || 2).await }
        });
        for release in &releases {
            let _ = release.send(());
        }
        assert_eq!(from_b.await.ok(), Some(Ok(2)), "b is still checked");
        for (n, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.ok(), Some(Ok(n as u32)));
        }
        assert_eq!(
            pool.run(Lane::Known, Some(a), || 3).await,
            Ok(3),
            "a's places are back"
        );
        assert_eq!(pool.sources.held.lock().map(|h| h.len()).ok(), Some(0));

        // IPv6 sources share by /64.
        let (started_tx, started) = mpsc::channel();
        let (check, release) = gated(started_tx.clone(), 4);
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Known, Some(a_same_64), check).await }
        });
        assert_eq!(started.recv_timeout(Duration::from_secs(10)), Ok(4));
        let (check, release2) = gated(started_tx, 5);
        let second = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Known, Some(a_64_too), check).await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pool.admitted.available_permits() > 7 {
            assert!(tokio::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.run(Lane::Known, Some(a_64_too), || 9).await,
            Err(HashError::Busy)
        );
        let _ = release.send(());
        let _ = release2.send(());
        assert_eq!(first.await.ok(), Some(Ok(4)));
        assert_eq!(second.await.ok(), Some(Ok(5)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_ids_under_attack_hold_a_quarter_of_the_queue_at_most() {
        let pool = Arc::new(HashPool::new(1, 8, 8));
        let (started_tx, started) = mpsc::channel();
        let (check, release) = gated(started_tx.clone(), 0);
        let (queued_check, release_queued) = gated(started_tx, 1);
        let running = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Suspect, None, check).await }
        });
        assert_eq!(started.recv_timeout(Duration::from_secs(10)), Ok(0));
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Suspect, None, queued_check).await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pool.suspect.available_permits() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.run(Lane::Suspect, None, || 9).await,
            Err(HashError::Busy),
            "8 / 4 = 2 places"
        );
        let known = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Known, None, || 2).await }
        });
        let _ = release.send(());
        let _ = release_queued.send(());
        assert_eq!(running.await.ok(), Some(Ok(0)));
        assert_eq!(queued.await.ok(), Some(Ok(1)));
        assert_eq!(
            known.await.ok(),
            Some(Ok(2)),
            "other clients are still admitted"
        );
        assert_eq!(
            pool.suspect.available_permits(),
            2,
            "the lane is free again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn proven_sources_have_a_reserve_when_the_queue_is_full() {
        let pool = Arc::new(HashPool::new(1, 1, 8));
        let (started_tx, started) = mpsc::channel();
        let (check, release) = gated(started_tx.clone(), 0);
        let (queued_check, release_queued) = gated(started_tx, 1);
        let running = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Known, None, check).await }
        });
        assert_eq!(started.recv_timeout(Duration::from_secs(10)), Ok(0));
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Known, None, queued_check).await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pool.admitted.available_permits() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.run(Lane::Known, None, || 9).await,
            Err(HashError::Busy)
        );
        let proven = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Proven, None, || 2).await }
        });
        while pool.reserve.available_permits() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never in the reserve"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.run(Lane::Proven, None, || 9).await,
            Err(HashError::Busy),
            "the reserve is bounded too"
        );
        let _ = release.send(());
        let _ = release_queued.send(());
        assert_eq!(running.await.ok(), Some(Ok(0)));
        assert_eq!(queued.await.ok(), Some(Ok(1)));
        assert_eq!(proven.await.ok(), Some(Ok(2)));
        assert_eq!(pool.reserve.available_permits(), 1, "the reserve is back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_queued_check_frees_its_place() {
        let pool = Arc::new(HashPool::new(1, 1, 8));
        let (started_tx, started) = mpsc::channel();
        let (check, release) = gated(started_tx, 0);
        let running = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Known, None, check).await }
        });
        assert_eq!(started.recv_timeout(Duration::from_secs(10)), Ok(0));
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(Lane::Known, None, || 1).await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pool.admitted.available_permits() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
        queued.abort();
        let _ = queued.await;
        assert_eq!(pool.admitted.available_permits(), 1, "the place is back");
        let _ = release.send(());
        assert_eq!(running.await.ok(), Some(Ok(0)));
    }
}
