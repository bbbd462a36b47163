//! Attackers who know a client id (or many) and send wrong secrets: they must not keep the
//! real client from its token (issue 22 rows 5 and 6), and a remembered secret must never
//! outlive its revocation or expiry.

mod measure;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::http::StatusCode;
use relay_store::{CredentialScope, NewTenant, now_ms};

use crate::common::{Answer, Seed, TestIdentity};
use crate::flood::{collect, count, flood_from, until_sent};

/// Wrong secrets for `client_id` from `source`, one after another, until one is answered
/// `429`; every answer before it must be `401`. Panics after 100 tries (the default bucket
/// allows 20 failures, and the source's own bucket 200 requests).
async fn guess_until_limited(id: &TestIdentity, source: IpAddr, client_id: &str) -> Answer {
    for n in 0..100 {
        let answer = id
            .token_from(source, &id.form(client_id, &format!("wrong{n}")))
            .await;
        match answer.status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => return answer,
            other => panic!("guess {n}: unexpected {other}: {}", answer.json),
        }
    }
    panic!("100 wrong secrets from one source were never limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_from_one_source_do_not_lock_the_client_out_elsewhere() {
    let id = TestIdentity::start().await;
    let limited = guess_until_limited(&id, [127, 0, 0, 3].into(), "acme").await;
    assert!(
        limited.headers.contains_key("retry-after"),
        "429 without Retry-After"
    );

    // The real client has not asked before, so its secret is checked in full.
    let real = id
        .token_from([127, 0, 0, 4].into(), &id.form("acme", &id.secret))
        .await;
    assert_eq!(real.status, StatusCode::OK, "{}", real.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_verified_lately_works_even_from_the_guessing_source() {
    let id = TestIdentity::start().await;
    let shared: IpAddr = [127, 0, 0, 5].into();
    let first = id.token_from(shared, &id.form("acme", &id.secret)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);

    // Someone behind the same address (a shared NAT) guesses until limited.
    guess_until_limited(&id, shared, "acme").await;
    let again = id.token_from(shared, &id.form("acme", &id.secret)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.json);
}

/// Tenants `flood0` … `flood{n-1}` with a secret each (the flood's targets: known ids).
async fn flood_targets(seed: &Seed, n: usize) {
    for i in 0..n {
        let tenant = seed
            .store
            .create_tenant(NewTenant {
                name: format!("flood{i}"),
                ..NewTenant::default()
            })
            .await
            .expect("tenant");
        seed.store
            .create_secret(&tenant.id, None, CredentialScope::Connector)
            .await
            .expect("secret");
    }
}

/// Sources 127.0.1.1 … 127.0.1.n.
fn sources(n: u8) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::from([127, 0, 1, i])).collect()
}

/// Tenants `{prefix}0` … with a secret each, as (name, secret).
async fn real_clients(seed: &Seed, prefix: &str, n: usize) -> Vec<(String, String)> {
    let mut real = Vec::new();
    for i in 0..n {
        let tenant = seed
            .store
            .create_tenant(NewTenant {
                name: format!("{prefix}{i}"),
                ..NewTenant::default()
            })
            .await
            .expect("tenant");
        let (_, secret) = seed
            .store
            .create_secret(&tenant.id, None, CredentialScope::Client)
            .await
            .expect("secret");
        real.push((tenant.name, secret));
    }
    real
}

/// A pool of 1 worker and 2 queued places; `acme` gets its token from 127.0.0.2 once; then 64
/// requests at a time of wrong secrets for 10 known tenants from 40 addresses, and while they
/// keep the pool full, each of `asks` (client id, secret, source). Their answers.
/// `(burst, per_minute)`: `[rate_limit]` of failed checks per client id.
async fn asked_during_a_many_source_flood(
    seed: &Seed,
    (burst, per_minute): (u32, u32),
    asks: &[(String, String, IpAddr)],
) -> Vec<(StatusCode, String)> {
    flood_targets(seed, 10).await;
    let id = Arc::new(
        TestIdentity::serve_with(seed, |config| {
            config.hashing.workers = 1;
            config.hashing.queue = 2;
            config.rate_limit.burst = burst;
            config.rate_limit.per_minute = per_minute;
            config.rate_limit.per_source_burst = 100_000;
        })
        .await,
    );
    let real_source: IpAddr = [127, 0, 0, 2].into();
    let first = id
        .token_from(real_source, &id.form("acme", &id.secret))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);

    let (stop, sent, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let max = 50_000;
    let flooders = flood_from(&id, &sources(40), (64, max), &stop, (&sent, &failed), |n| {
        let target = n % 10;
        format!("grant_type=client_credentials&client_id=flood{target}&client_secret=wrong{n}")
    });
    until_sent(&sent, 300).await;
    // Enough failed checks that each of the 10 ids has spent a small bucket.
    until_sent(&failed, 40).await;
    let mut answers = Vec::new();
    for (client_id, secret, source) in asks {
        let answer = id.token_from(*source, &id.form(client_id, secret)).await;
        answers.push((answer.status, answer.json.to_string()));
    }
    let during = sent.load(Ordering::Relaxed) < max;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(flooders).await;

    assert!(during, "the flood was still running");
    assert!(
        count(&seen, StatusCode::SERVICE_UNAVAILABLE) > 0,
        "the flood never filled the pool ({} answers)",
        seen.len()
    );
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_verified_lately_gets_its_token_while_many_sources_fill_the_hash_pool() {
    let seed = Seed::new().await;
    let asks = vec![
        (
            "acme".to_owned(),
            seed.secret.clone(),
            [127, 0, 0, 2].into()
        );
        10
    ];
    for (status, body) in asked_during_a_many_source_flood(&seed, (100_000, 60), &asks).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_from_an_address_that_verified_lately_is_checked_while_many_sources_fill_the_pool()
 {
    let seed = Seed::new().await;
    // Never asked before, so each needs a full check; their address has had a token.
    let asks: Vec<_> = real_clients(&seed, "new", 3)
        .await
        .into_iter()
        .map(|(name, secret)| (name, secret, [127, 0, 0, 2].into()))
        .collect();
    for (status, body) in asked_during_a_many_source_flood(&seed, (100_000, 60), &asks).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_clients_are_checked_while_many_sources_flood_a_few_known_ids() {
    let seed = Seed::new().await;
    // Never asked, from addresses that never had a token: nothing vouches for them, but their
    // ids are not the ones under attack (a bucket of 2 failures, then 6/min, marks those).
    let asks: Vec<_> = real_clients(&seed, "other", 3)
        .await
        .into_iter()
        .zip(9u8..)
        .map(|((name, secret), i)| (name, secret, [127, 0, 2, i].into()))
        .collect();
    for (status, body) in asked_during_a_many_source_flood(&seed, (2, 6), &asks).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_fill_the_hash_pool() {
    let seed = Seed::new().await;
    // Real clients that have never asked: each needs a full check.
    let real = real_clients(&seed, "real", 5).await;
    let id = Arc::new(
        TestIdentity::serve_with(&seed, |config| {
            config.hashing.workers = 1;
            config.hashing.queue = 4;
            config.rate_limit.burst = 100_000;
            config.rate_limit.per_source_burst = 100_000;
        })
        .await,
    );
    let (stop, sent, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let max = 50_000;
    let flooders = flood_from(
        &id,
        &[[127, 0, 0, 6].into()],
        (64, max),
        &stop,
        (&sent, &failed),
        |n| format!("grant_type=client_credentials&client_id=acme&client_secret=wrong{n}"),
    );
    until_sent(&sent, 300).await;
    let mut answers = Vec::new();
    for (name, secret) in &real {
        let answer = id
            .token_from([127, 0, 0, 7].into(), &id.form(name, secret))
            .await;
        answers.push((answer.status, answer.json.to_string()));
    }
    let during = sent.load(Ordering::Relaxed) < max;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(flooders).await;

    assert!(during, "the flood was still running");
    let busy = seen
        .iter()
        .filter(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect::<Vec<_>>();
    assert!(!busy.is_empty(), "the flooding source was never refused");
    assert!(
        busy.iter().all(|(_, retry)| *retry),
        "503 without Retry-After"
    );
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_secret_stops_working_when_revoked_or_expired() {
    let seed = Seed::new().await;
    let id = TestIdentity::serve(&seed).await;
    let store = &seed.store;
    // Long enough to be asked for once on a loaded machine; the test waits it out below.
    let expires_at = now_ms() + 5_000;
    let (_, expiring_secret) = store
        .create_secret(
            &seed.tenant.id,
            Some(expires_at),
            CredentialScope::Connector,
        )
        .await
        .expect("secret");
    let answer = id.token(&id.form("acme", &expiring_secret)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let (revoked, revoked_secret) = store
        .create_secret(&seed.tenant.id, None, CredentialScope::Connector)
        .await
        .expect("secret");
    for secret in [&revoked_secret, &id.secret] {
        let answer = id.token(&id.form("acme", secret)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    }

    assert!(
        store
            .revoke_secret(&seed.tenant.id, &revoked.id)
            .await
            .expect("revoke")
    );
    let answer = id.token(&id.form("acme", &revoked_secret)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.json);
    assert_eq!(answer.json["error"], "invalid_client");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while now_ms() <= expires_at {
        assert!(tokio::time::Instant::now() < deadline, "clock stuck");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = id.token(&id.form("acme", &expiring_secret)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.json);

    let answer = id.token(&id.form("acme", &id.secret)).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the other secret still works"
    );
}
