//! Signing-key rotation as a pure function of (keys, now, policy).
//!
//! Every key is scheduled in full when it is created: it signs from `activates_at` until
//! `retires_at = activates_at + rotation_interval` and stays in the JWKS until
//! `expires_at = retires_at + token_lifetime + leeway`, when the last token it signed has
//! expired. A successor is created `publish_ahead` before the current key retires and
//! activates exactly when it retires. Keys are never updated, only inserted and deleted,
//! so any number of identity nodes can run this against the shared DB: a race creates at
//! most a spare key, and every node picks the same signer ([`signer`]).

use std::time::Duration;

use relay_store::SigningKeyRecord;

/// Margin added to a key's JWKS lifetime beyond the longest token it signed, in ms
/// (twice the validators' clock leeway).
pub const KEY_EXPIRY_LEEWAY_MS: i64 = 2 * relay_token::LEEWAY_SECS as i64 * 1000;

/// The configuration the plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    pub rotation_interval: Duration,
    pub publish_ahead: Duration,
    pub token_lifetime: Duration,
}

/// The schedule of one key (a [`SigningKeyRecord`] without key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchedule {
    pub kid: String,
    pub activates_at: i64,
    /// `None`: signs until a newer key activates.
    pub retires_at: Option<i64>,
    /// `None`: published forever.
    pub expires_at: Option<i64>,
}

impl From<&SigningKeyRecord> for KeySchedule {
    fn from(r: &SigningKeyRecord) -> Self {
        Self {
            kid: r.kid.clone(),
            activates_at: r.activates_at,
            retires_at: r.retires_at,
            expires_at: r.expires_at,
        }
    }
}

impl KeySchedule {
    /// Published in the JWKS at `now`.
    pub fn is_published(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }

    /// Allowed to sign at `now`.
    pub fn can_sign(&self, now: i64) -> bool {
        self.activates_at <= now
            && self.retires_at.is_none_or(|r| now < r)
            && self.is_published(now)
    }
}

/// One step the rotation must take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationAction {
    /// Generate and insert a key with this schedule.
    Create {
        activates_at: i64,
        retires_at: i64,
        expires_at: i64,
    },
    /// Delete keys whose `expires_at` has passed.
    DeleteExpired,
}

/// The key that signs at `now`: the newest (by `activates_at`, then `kid`) that may sign.
pub fn signer<K>(keys: &[K], now: i64) -> Option<&K>
where
    K: AsRef<KeySchedule>,
{
    keys.iter()
        .filter(|k| k.as_ref().can_sign(now))
        .max_by(|a, b| {
            let (a, b) = (a.as_ref(), b.as_ref());
            (a.activates_at, &a.kid).cmp(&(b.activates_at, &b.kid))
        })
}

impl AsRef<KeySchedule> for KeySchedule {
    fn as_ref(&self) -> &KeySchedule {
        self
    }
}

/// What to do at `now` so that a key signs now and a successor is published in time.
pub fn plan(keys: &[KeySchedule], now: i64, policy: &RotationPolicy) -> Vec<RotationAction> {
    let interval = millis(policy.rotation_interval);
    let ahead = millis(policy.publish_ahead);
    let lifetime = millis(policy.token_lifetime);
    let create = |activates_at: i64, retires_at: i64| RotationAction::Create {
        activates_at,
        retires_at,
        expires_at: retires_at
            .saturating_add(lifetime)
            .saturating_add(KEY_EXPIRY_LEEWAY_MS),
    };

    let mut actions = Vec::new();
    if keys.iter().any(|k| !k.is_published(now)) {
        actions.push(RotationAction::DeleteExpired);
    }
    let live: Vec<&KeySchedule> = keys.iter().filter(|k| k.is_published(now)).collect();
    let Some(current) = signer(&live, now) else {
        // Nothing signs now: a key active at once, retiring when a published successor
        // (if any) takes over.
        let next = live
            .iter()
            .map(|k| k.activates_at)
            .filter(|&a| a > now)
            .min();
        let retires_at = next.unwrap_or(now.saturating_add(interval));
        actions.push(create(now, retires_at));
        return actions;
    };
    let has_successor = live.iter().any(|k| k.activates_at > current.activates_at);
    let ends = current
        .retires_at
        .unwrap_or(current.activates_at.saturating_add(interval));
    if !has_successor && now >= ends.saturating_sub(ahead) {
        // A scheduled key hands over exactly at its retirement (already in the future,
        // since it signs now); an open-ended one gets the full pre-publication window.
        let activates_at = match current.retires_at {
            Some(retires_at) => retires_at,
            None => now.saturating_add(ahead),
        };
        actions.push(create(activates_at, activates_at.saturating_add(interval)));
    }
    actions
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
