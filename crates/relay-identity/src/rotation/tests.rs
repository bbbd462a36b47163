use super::*;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const T0: i64 = 1_700_000_000_000;

fn policy() -> RotationPolicy {
    RotationPolicy {
        rotation_interval: Duration::from_secs(30 * 24 * 3600),
        publish_ahead: Duration::from_secs(3600),
        token_lifetime: Duration::from_secs(3600),
    }
}

/// Applies `plan` like the service does: creates keys (named k1, k2, ...) and drops
/// expired ones. Returns the actions taken.
fn step(keys: &mut Vec<KeySchedule>, now: i64) -> Vec<RotationAction> {
    let actions = plan(keys, now, &policy());
    let mut next = next_index(keys);
    for action in &actions {
        match *action {
            RotationAction::Create {
                activates_at,
                retires_at,
                expires_at,
            } => keys.push(KeySchedule {
                kid: {
                    next += 1;
                    format!("k{}", next - 1)
                },
                activates_at,
                retires_at: Some(retires_at),
                expires_at: Some(expires_at),
            }),
            RotationAction::DeleteExpired => keys.retain(|k| k.is_published(now)),
        }
    }
    actions
}

/// Keys are named `k1`, `k2`, ... in creation order, also after deletions.
fn next_index(keys: &[KeySchedule]) -> u32 {
    let last = keys
        .iter()
        .filter_map(|k| k.kid.strip_prefix('k')?.parse::<u32>().ok())
        .max();
    last.unwrap_or(0) + 1
}

fn signer_kid(keys: &[KeySchedule], now: i64) -> Option<&str> {
    signer(keys, now).map(|k| k.kid.as_str())
}

#[test]
fn empty_store_gets_a_key_active_at_once() {
    let mut keys = Vec::new();
    let actions = step(&mut keys, T0);
    let expected_retire = T0 + 30 * DAY;
    assert_eq!(
        actions,
        [RotationAction::Create {
            activates_at: T0,
            retires_at: expected_retire,
            expires_at: expected_retire + HOUR + KEY_EXPIRY_LEEWAY_MS,
        }]
    );
    assert_eq!(signer_kid(&keys, T0), Some("k1"));
    assert!(
        step(&mut keys, T0 + MIN).is_empty(),
        "steady state does nothing"
    );
}

#[test]
fn successor_is_published_ahead_and_takes_over_at_retirement() {
    let mut keys = Vec::new();
    step(&mut keys, T0);
    let handover = T0 + 30 * DAY;

    assert!(
        step(&mut keys, handover - HOUR - MIN).is_empty(),
        "too early for a successor"
    );
    let actions = step(&mut keys, handover - HOUR + MIN);
    assert!(
        matches!(actions[..], [RotationAction::Create { activates_at, .. }] if activates_at == handover)
    );
    assert!(
        step(&mut keys, handover - 30 * MIN).is_empty(),
        "one successor only"
    );

    // Published before it signs, the old key signs until the handover.
    assert_eq!(keys.len(), 2);
    assert_eq!(signer_kid(&keys, handover - 1), Some("k1"));
    assert_eq!(signer_kid(&keys, handover), Some("k2"));

    // The old key stays published until its last token expired, then is deleted.
    let k1_expires = handover + HOUR + KEY_EXPIRY_LEEWAY_MS;
    assert!(step(&mut keys, k1_expires - 1).is_empty());
    assert!(keys[0].is_published(k1_expires - 1));
    assert_eq!(step(&mut keys, k1_expires), [RotationAction::DeleteExpired]);
    assert_eq!(
        keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
        ["k2"]
    );
}

#[test]
fn a_late_tick_still_hands_over_without_gap() {
    let mut keys = Vec::new();
    step(&mut keys, T0);
    let handover = T0 + 30 * DAY;
    // All nodes were down until ten minutes before the handover.
    let actions = step(&mut keys, handover - 10 * MIN);
    assert!(
        matches!(actions[..], [RotationAction::Create { activates_at, .. }] if activates_at == handover)
    );
    assert_eq!(signer_kid(&keys, handover), Some("k2"));
}

#[test]
fn downtime_past_retirement_creates_an_immediate_key() {
    let mut keys = Vec::new();
    step(&mut keys, T0);
    // Retired but still published: only a new key is needed.
    let later = T0 + 30 * DAY + 30 * MIN;
    let actions = step(&mut keys, later);
    assert!(
        matches!(actions[..], [RotationAction::Create { activates_at, .. }] if activates_at == later)
    );
    assert_eq!(signer_kid(&keys, later), Some("k2"));

    // Long outage: the old key is also gone from the JWKS.
    let mut keys = Vec::new();
    step(&mut keys, T0);
    let much_later = T0 + 40 * DAY;
    let actions = step(&mut keys, much_later);
    assert!(matches!(
        actions[..],
        [RotationAction::DeleteExpired, RotationAction::Create { activates_at, .. }] if activates_at == much_later
    ));
    assert_eq!(
        keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
        ["k2"]
    );
}

#[test]
fn open_ended_key_gets_a_successor_after_the_interval() {
    let mut keys = vec![KeySchedule {
        kid: "legacy".into(),
        activates_at: T0,
        retires_at: None,
        expires_at: None,
    }];
    let due = T0 + 30 * DAY - HOUR;
    assert!(step(&mut keys, due - 1).is_empty());
    let actions = step(&mut keys, due);
    assert!(
        matches!(actions[..], [RotationAction::Create { activates_at, .. }] if activates_at == due + HOUR)
    );
    assert_eq!(signer_kid(&keys, due + HOUR - 1), Some("legacy"));
    assert_eq!(signer_kid(&keys, due + HOUR), Some("k1"));
}

#[test]
fn racing_nodes_agree_on_the_signer() {
    // Two nodes both created a first key at the same millisecond.
    let keys = vec![
        KeySchedule {
            kid: "b".into(),
            activates_at: T0,
            retires_at: Some(T0 + DAY),
            expires_at: None,
        },
        KeySchedule {
            kid: "a".into(),
            activates_at: T0,
            retires_at: Some(T0 + DAY),
            expires_at: None,
        },
    ];
    assert_eq!(signer_kid(&keys, T0), Some("b"));
    assert!(plan(&keys, T0, &policy()).is_empty());
}

#[test]
fn gap_before_a_future_key_is_bridged_until_it_activates() {
    let future = T0 + 2 * HOUR;
    let keys = vec![KeySchedule {
        kid: "next".into(),
        activates_at: future,
        retires_at: None,
        expires_at: None,
    }];
    let actions = plan(&keys, T0, &policy());
    assert!(matches!(
        actions[..],
        [RotationAction::Create { activates_at: T0, retires_at, .. }] if retires_at == future
    ));
}
