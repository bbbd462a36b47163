//! The issue 22 row 5 and row 6 attacks as a measurement, not a pass/fail test:
//!
//! ```text
//! RELAY_ATTACK_ROW=5 cargo test --release -p relay-identity --test token_endpoint \
//!     measure_lockout_attack -- --ignored --nocapture
//! ```
//!
//! Row 5: `RELAY_ATTACK_RATE` (5) wrong secrets per second for `acme` from 127.0.0.1.
//! Row 6: wrong secrets for 150 known tenants from 420 addresses (127.1.x.y),
//! `RELAY_ATTACK_TASKS` (256) requests in flight, paced to `RELAY_ATTACK_RATE` (2900)/s.
//! Default configuration in both. Meanwhile the real client (`acme`, from 127.0.0.2; its
//! secret verified once before the attack) asks for a token `RELAY_ATTACK_SECONDS` (20)
//! times, 1.13 s apart, once the attack is under way; in row 6 each time also a client that
//! has never asked from the same address (`cold{n}`) and one from an address never seen
//! (`fresh{n}` from 127.0.3.n). Prints the fraction of 200s and the statuses seen.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use relay_store::{CredentialScope, NewTenant};
use tokio::time::{Instant, MissedTickBehavior};

use crate::common::{Seed, TestIdentity};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn tenant_with_secret(seed: &Seed, name: String) -> String {
    let tenant = seed
        .store
        .create_tenant(NewTenant {
            name,
            ..NewTenant::default()
        })
        .await
        .expect("tenant");
    let (_, secret) = seed
        .store
        .create_secret(&tenant.id, None, CredentialScope::Connector)
        .await
        .expect("secret");
    secret
}

/// Statuses by code, and the fraction that were 200.
fn summary(statuses: &[u16]) -> String {
    let mut by = BTreeMap::new();
    for s in statuses {
        *by.entry(*s).or_insert(0usize) += 1;
    }
    let ok = by.get(&200).copied().unwrap_or(0);
    format!("{ok}/{} got 200 {by:?}", statuses.len())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn measure_lockout_attack() {
    let row = env("RELAY_ATTACK_ROW", 5);
    let seconds = env("RELAY_ATTACK_SECONDS", 20);
    let seed = Seed::new().await;
    let (rate, tasks, tenants, sources): (u64, u64, usize, Vec<IpAddr>) = if row == 5 {
        (
            env("RELAY_ATTACK_RATE", 5),
            1,
            0,
            vec![[127, 0, 0, 1].into()],
        )
    } else {
        let sources = (0..420u32)
            .map(|i| IpAddr::from([127, 1, (i / 200) as u8, (i % 200 + 1) as u8]))
            .collect();
        (
            env("RELAY_ATTACK_RATE", 2900),
            env("RELAY_ATTACK_TASKS", 256),
            150,
            sources,
        )
    };
    for i in 0..tenants {
        tenant_with_secret(&seed, format!("victim{i}")).await;
    }
    let (mut cold, mut fresh) = (Vec::new(), Vec::new());
    if row != 5 {
        for i in 0..seconds {
            cold.push((
                format!("cold{i}"),
                tenant_with_secret(&seed, format!("cold{i}")).await,
            ));
            fresh.push((
                format!("fresh{i}"),
                tenant_with_secret(&seed, format!("fresh{i}")).await,
            ));
        }
    }
    let id = Arc::new(TestIdentity::serve(&seed).await);
    let real: IpAddr = [127, 0, 0, 2].into();
    let warm = id.token_from(real, &id.form("acme", &id.secret)).await;
    assert_eq!(warm.status.as_u16(), 200, "before the attack");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let sources: Arc<[IpAddr]> = sources.into();
    let flood: Vec<_> = (0..tasks)
        .map(|_| {
            let (id, stop, sent, sources) =
                (id.clone(), stop.clone(), sent.clone(), sources.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut pace = tokio::time::interval(Duration::from_secs_f64(
                    tasks as f64 / rate.max(1) as f64,
                ));
                pace.set_missed_tick_behavior(MissedTickBehavior::Skip);
                while !stop.load(Ordering::Relaxed) {
                    pace.tick().await;
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    let client = if tenants == 0 {
                        "acme".to_owned()
                    } else {
                        format!("victim{}", n % tenants)
                    };
                    let source = sources[n % sources.len()];
                    let answer = id
                        .token_from(source, &id.form(&client, &format!("wrong{n}")))
                        .await;
                    seen.push(answer.status.as_u16());
                }
                seen
            })
        })
        .collect();

    // Past the bucket's burst (row 5) or one second into the attack (row 6); then samples
    // 1.13 s apart, so that they do not keep one phase against the attack's pacing.
    let warmup = if row == 5 { 25 } else { rate as usize };
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.load(Ordering::Relaxed) < warmup {
        assert!(Instant::now() < deadline, "attack too slow");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let mut warm_statuses = Vec::new();
    let mut cold_statuses = Vec::new();
    let mut fresh_statuses = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1130));
    for second in 0..seconds {
        tick.tick().await;
        let answer = id.token_from(real, &id.form("acme", &id.secret)).await;
        warm_statuses.push(answer.status.as_u16());
        if let Some((name, secret)) = cold.get(second as usize) {
            let answer = id.token_from(real, &id.form(name, secret)).await;
            cold_statuses.push(answer.status.as_u16());
        }
        if let Some((name, secret)) = fresh.get(second as usize) {
            let address = IpAddr::from([127, 0, 3, second as u8 + 1]);
            let answer = id.token_from(address, &id.form(name, secret)).await;
            fresh_statuses.push(answer.status.as_u16());
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut attack = Vec::new();
    for task in flood {
        attack.extend(task.await.expect("flooder"));
    }
    println!(
        "row {row}: attack {:.0} req/s achieved ({}), {} sources, {} tenants",
        attack.len() as f64 / elapsed,
        summary(&attack),
        sources.len(),
        tenants.max(1)
    );
    println!(
        "row {row}: real client, secret verified before: {}",
        summary(&warm_statuses)
    );
    if !cold_statuses.is_empty() {
        println!(
            "row {row}: first-time clients from the real client's address: {}",
            summary(&cold_statuses)
        );
        println!(
            "row {row}: first-time clients from addresses never seen: {}",
            summary(&fresh_statuses)
        );
    }
}
