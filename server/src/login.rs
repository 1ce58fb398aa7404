//! Proxy-login password checks for the driver (SECURITY.md §2.16): the core asks with
//! `Action::VerifyPassword`, this module answers without blocking the event loop.
//!
//! - bcrypt runs on tokio's blocking pool, at most [`MAX_CONCURRENT`] at a time, so a flood of
//!   Basic attempts costs bounded CPU and never stalls other connections;
//! - a success is remembered for [`MEMO_TTL`] under a keyed hash of (user, password, hash), so
//!   a client that sends Basic on every request pays bcrypt once a minute, and the plaintext is
//!   never stored;
//! - failures are counted per user (keyed hash of the name); after [`FREE_FAILURES`] failures
//!   within [`FAILURE_WINDOW`] further attempts are refused unchecked with a doubling back-off
//!   capped at [`MAX_BACKOFF`]. Both maps are bounded.
//!
//! Logs name a user only by a short keyed hash, and never a password.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dockerproxy_core::login::{self, PasswordCheck, PasswordVerdict};
use tokio::sync::Semaphore;

/// bcrypt checks running at once.
pub const MAX_CONCURRENT: usize = 4;
/// How long a verified credential is remembered.
pub const MEMO_TTL: Duration = Duration::from_secs(60);
/// Remembered credentials at most.
pub const MEMO_CAP: usize = 1024;
/// Failures tolerated before the back-off starts.
pub const FREE_FAILURES: u32 = 5;
/// Failures older than this are forgotten.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(900);
/// Longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Users with tracked failures at most.
pub const FAILURE_CAP: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// The process-wide login checker.
#[derive(Debug)]
pub struct LoginGuard {
    key: [u8; 32],
    memo: Mutex<HashMap<[u8; 32], Instant>>,
    failures: Mutex<HashMap<u64, Failures>>,
    permits: std::sync::Arc<Semaphore>,
}

impl LoginGuard {
    /// A checker keyed with the process secret.
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key,
            memo: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            permits: std::sync::Arc::new(Semaphore::new(MAX_CONCURRENT)),
        }
    }

    /// Answers one `Action::VerifyPassword`.
    pub async fn verify(&self, check: PasswordCheck) -> PasswordVerdict {
        let now = Instant::now();
        let memo_key = login::memo_key(&self.key, &check);
        if self.memo_hit(&memo_key, now) {
            return PasswordVerdict::Valid;
        }
        let user_key = dockerproxy_core::token::identity_hash(
            &self.key,
            format!("login-failures\0{}", check.user).as_bytes(),
        );
        if let Some(wait) = self.blocked_for(user_key, now) {
            return PasswordVerdict::Throttled {
                retry_after_secs: wait.as_secs().max(1),
            };
        }
        let tag = login::user_tag(&self.key, &check.user);
        // The permit moves into the blocking task: a client that leaves while bcrypt runs does
        // not free a slot for another bcrypt (the cap bounds running hashes, not waiting clients).
        let ok = match self.permits.clone().acquire_owned().await {
            Ok(permit) => tokio::task::spawn_blocking(move || {
                let ok = login::verify_password(&check);
                drop(permit);
                ok
            })
            .await
            .unwrap_or(false),
            Err(_) => false,
        };
        let now = Instant::now();
        if ok {
            self.remember(memo_key, now);
            lock(&self.failures).remove(&user_key);
            tracing::debug!(user = %tag, "proxy login verified");
            PasswordVerdict::Valid
        } else {
            let count = self.record_failure(user_key, now);
            tracing::warn!(user = %tag, failures = count, "proxy login failed");
            PasswordVerdict::Invalid
        }
    }

    fn memo_hit(&self, key: &[u8; 32], now: Instant) -> bool {
        let mut memo = lock(&self.memo);
        match memo.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                memo.remove(key);
                false
            }
            None => false,
        }
    }

    fn remember(&self, key: [u8; 32], now: Instant) {
        let mut memo = lock(&self.memo);
        if memo.len() >= MEMO_CAP && !memo.contains_key(&key) {
            memo.retain(|_, until| *until > now);
            if memo.len() >= MEMO_CAP {
                // Still full of live entries: forget the one closest to expiry.
                if let Some(oldest) = memo.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k) {
                    memo.remove(&oldest);
                }
            }
        }
        memo.insert(key, now + MEMO_TTL);
    }

    fn blocked_for(&self, user: u64, now: Instant) -> Option<Duration> {
        let failures = lock(&self.failures);
        let until = failures.get(&user)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failure; returns the count.
    fn record_failure(&self, user: u64, now: Instant) -> u32 {
        let mut failures = lock(&self.failures);
        if failures.len() >= FAILURE_CAP && !failures.contains_key(&user) {
            failures.retain(|_, f| now.duration_since(f.last) < FAILURE_WINDOW);
            if failures.len() >= FAILURE_CAP {
                // Keep the users under the heaviest attack: drop the fewest failures.
                if let Some(k) = failures
                    .iter()
                    .min_by_key(|(_, f)| f.count)
                    .map(|(k, _)| *k)
                {
                    failures.remove(&k);
                }
            }
        }
        let f = failures.entry(user).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        if now.duration_since(f.last) >= FAILURE_WINDOW {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count >= FREE_FAILURES {
            let doublings = (f.count - FREE_FAILURES).min(5);
            let backoff = Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF);
            f.blocked_until = Some(now + backoff);
        }
        f.count
    }

    /// Users with tracked failures (for tests).
    pub fn tracked_failures(&self) -> usize {
        lock(&self.failures).len()
    }
}

/// Locks a map; a poisoned lock (a panic while holding it) still yields the data, which is
/// only counters and expiry times.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dockerproxy_core::login::{LoginSettings, Rule};

    use super::*;

    fn settings() -> LoginSettings {
        LoginSettings {
            users: BTreeMap::from([("alice".to_owned(), bcrypt::hash("pw", 4).expect("hash"))]),
            rules: vec![Rule::everyone_logged_in()],
            admins: vec![],
            dummy_hash: login::dummy_hash(4),
        }
    }

    #[tokio::test]
    async fn valid_invalid_then_throttled_and_memo_survives() {
        let g = LoginGuard::new([3; 32]);
        let s = settings();
        assert_eq!(
            g.verify(s.check_for("alice", "pw")).await,
            PasswordVerdict::Valid
        );
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                g.verify(s.check_for("alice", "nope")).await,
                PasswordVerdict::Invalid
            );
        }
        assert!(matches!(
            g.verify(s.check_for("alice", "nope")).await,
            PasswordVerdict::Throttled {
                retry_after_secs: 1
            }
        ));
        // The remembered good password still works while the user is throttled.
        assert_eq!(
            g.verify(s.check_for("alice", "pw")).await,
            PasswordVerdict::Valid
        );
        assert_eq!(
            g.verify(s.check_for("mallory", "pw")).await,
            PasswordVerdict::Invalid
        );
    }

    #[test]
    fn failure_tracking_is_bounded() {
        let g = LoginGuard::new([3; 32]);
        let now = Instant::now();
        for u in 0..(FAILURE_CAP as u64 + 100) {
            g.record_failure(u, now);
        }
        assert_eq!(g.tracked_failures(), FAILURE_CAP);
        let g = LoginGuard::new([3; 32]);
        for i in 0..(MEMO_CAP + 10) {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_be_bytes());
            g.remember(k, now);
        }
        assert_eq!(lock(&g.memo).len(), MEMO_CAP);
    }
}
