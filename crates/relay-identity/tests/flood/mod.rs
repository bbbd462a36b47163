//! Hostile clients at the token endpoint: floods of unknown client ids and of wrong secrets.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::http::StatusCode;

use crate::common::{Seed, TestIdentity};

const FLOODERS: usize = 64;
/// Upper bound of flood requests, so the test ends even if something never answers 200.
const MAX_FLOOD: usize = 2_000;

/// What the flood saw: (status, had `Retry-After`) per answer.
pub type Seen = Vec<(StatusCode, bool)>;

/// `FLOODERS` tasks sending `form(n)` from 127.0.0.1 until `stop` (or `MAX_FLOOD` in all);
/// `sent` counts answers so far.
fn flood(
    id: &Arc<TestIdentity>,
    stop: &Arc<AtomicBool>,
    sent: &Arc<AtomicUsize>,
    form: fn(usize) -> String,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let failed = Arc::new(AtomicUsize::new(0));
    flood_from(
        id,
        &[[127, 0, 0, 1].into()],
        (FLOODERS, MAX_FLOOD),
        stop,
        (sent, &failed),
        form,
    )
}

/// `tasks` tasks sending `form(n)` until `stop` (or `max` in all), request `n` from
/// `sources[n % sources.len()]`; `sent` counts requests so far, `failed` the `401` answers.
pub fn flood_from(
    id: &Arc<TestIdentity>,
    sources: &[IpAddr],
    (tasks, max): (usize, usize),
    stop: &Arc<AtomicBool>,
    (sent, failed): (&Arc<AtomicUsize>, &Arc<AtomicUsize>),
    form: fn(usize) -> String,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let sources: Arc<[IpAddr]> = sources.into();
    (0..tasks)
        .map(|_| {
            let (id, stop, sent, sources) =
                (id.clone(), stop.clone(), sent.clone(), sources.clone());
            let failed = failed.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    if n >= max {
                        break;
                    }
                    let source = sources[n % sources.len()];
                    let answer = id.token_from(source, &form(n)).await;
                    if answer.status == StatusCode::UNAUTHORIZED {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    seen.push((answer.status, answer.headers.contains_key("retry-after")));
                }
                seen
            })
        })
        .collect()
}

/// Waits (bounded) until `sent` (the flood's requests, or its `401`s) reaches `n`.
pub async fn until_sent(sent: &AtomicUsize, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sent.load(Ordering::Relaxed) < n {
        assert!(tokio::time::Instant::now() < deadline, "flood too slow");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn collect(tasks: Vec<tokio::task::JoinHandle<Seen>>) -> Seen {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("flooder"));
    }
    all
}

pub fn count(seen: &Seen, status: StatusCode) -> usize {
    seen.iter().filter(|(s, _)| *s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_ids_are_limited_and_a_real_client_still_gets_its_token() {
    let seed = Seed::new().await;
    let id = Arc::new(TestIdentity::serve(&seed).await);
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let flooders = flood(&id, &stop, &sent, |n| {
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("grant_type=client_credentials&client_id=x{n}{random}&client_secret=guess{n}")
    });
    // Well into the flood (past the source's burst of 200), a real client from another
    // address asks for its token.
    until_sent(&sent, 300).await;
    let real = id
        .token_from([127, 0, 0, 2].into(), &id.form("acme", &id.secret))
        .await;
    let during = !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < MAX_FLOOD;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(flooders).await;

    assert_eq!(real.status, StatusCode::OK, "{}", real.json);
    assert!(during, "the flood was still running");
    let limited = count(&seen, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited > 0, "no 429 in {} answers", seen.len());
    for (status, retry_after) in &seen {
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(status),
            "unexpected {status}"
        );
        if *status == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry_after, "429 without Retry-After");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_hash_queue_the_answer_is_503_with_retry_after() {
    let seed = Seed::new().await;
    let id = Arc::new(
        TestIdentity::serve_with(&seed, |config| {
            config.hashing.workers = 1;
            config.hashing.queue = 1;
            config.rate_limit.burst = 1_000;
            config.rate_limit.per_source_burst = 1_000;
        })
        .await,
    );
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    // Wrong secrets of a client that exists: each is worth a real check.
    let flooders = flood(&id, &stop, &sent, |n| {
        format!("grant_type=client_credentials&client_id=acme&client_secret=wrong{n}")
    });
    until_sent(&sent, 200).await;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(flooders).await;

    let busy = count(&seen, StatusCode::SERVICE_UNAVAILABLE);
    assert!(busy > 0, "no 503 in {} answers", seen.len());
    for (status, retry_after) in &seen {
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::SERVICE_UNAVAILABLE].contains(status),
            "unexpected {status}"
        );
        if *status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(retry_after, "503 without Retry-After");
        }
    }
    // Once the flood is over, the queue is free again.
    let after = id.token(&id.form("acme", &id.secret)).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.json);
}
