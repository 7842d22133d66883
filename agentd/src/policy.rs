//! Brute-force policy: how long a rejected caller waits, and when an account
//! or a source locks. The same rules apply to accounts that do not exist
//! (counted in memory), so a remote party cannot tell them apart by timing or
//! by lock. Sources (the remote host of a PAM login, the Calling-Station-Id
//! of a RADIUS request) are counted in memory too, over all accounts.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::Lockout;

/// Consecutive failure count and lock of one account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub locked_until: Option<u64>,
}

impl Failures {
    /// Whether the lock is in force at `now`.
    pub fn is_locked(&self, now: u64) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }

    /// The state to use at `now`: an expired lock starts a fresh count.
    pub fn current(self, now: u64) -> Failures {
        match self.locked_until {
            Some(until) if until <= now => Failures::default(),
            _ => self,
        }
    }
}

/// Applies the configured [`Lockout`].
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub lockout: Lockout,
}

impl Policy {
    /// The count and lock after one more failure at `now`.
    pub fn after_failure(&self, before: Failures, now: u64) -> Failures {
        let count = before.count.saturating_add(1);
        let threshold = self.lockout.threshold;
        let locked_until = if threshold > 0 && count >= threshold {
            Some(now.saturating_add(self.lockout.lock_duration.as_secs()))
        } else {
            before.locked_until
        };
        Failures { count, locked_until }
    }

    /// Returns the count and lock of a source after one more failure at
    /// `now`. A `source_threshold` of 0 never locks.
    pub fn after_source_failure(&self, before: Failures, now: u64) -> Failures {
        let count = before.count.saturating_add(1);
        let threshold = self.lockout.source_threshold;
        let locked_until = if threshold > 0 && count >= threshold {
            Some(now.saturating_add(self.lockout.lock_duration.as_secs()))
        } else {
            before.locked_until
        };
        Failures { count, locked_until }
    }

    /// Delay before the reply to a rejection, given the count after it:
    /// `failure_delay` doubled for each earlier consecutive failure, capped.
    pub fn delay(&self, count: u32) -> Duration {
        let doublings = count.saturating_sub(1).min(20);
        let delay = self.lockout.failure_delay.saturating_mul(1u32 << doublings);
        delay.min(self.lockout.max_failure_delay)
    }
}

/// Failure counts by name, for user names that have no account and for
/// sources. Kept in memory only, so a restart clears them, and bounded so a
/// flood of made-up names cannot exhaust memory.
#[derive(Debug, Default)]
pub struct FailureTable {
    counts: HashMap<String, Failures>,
}

/// Most names tracked at once in one table.
const MAX_NAMES: usize = 65_536;

impl FailureTable {
    pub fn get(&self, name: &str) -> Failures {
        self.counts.get(name).copied().unwrap_or_default()
    }

    pub fn set(&mut self, name: &str, failures: Failures) {
        if self.counts.len() >= MAX_NAMES && !self.counts.contains_key(name) {
            // Evict one entry (in the map's arbitrary order) rather than the
            // whole table, so a flood of made-up names cannot reset the delay
            // of a name being probed. NOTE: an evicted name does restart its
            // count. Unknown names have nothing to guess, only timing to hide.
            // A source can be evicted only by a flood of requests from other
            // sources, which only a trusted front end can send.
            if let Some(victim) = self.counts.keys().next().cloned() {
                self.counts.remove(&victim);
            }
        }
        self.counts.insert(name.to_owned(), failures);
    }

    pub fn forget(&mut self, name: &str) {
        self.counts.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            lockout: Lockout {
                failure_delay: Duration::from_millis(500),
                max_failure_delay: Duration::from_secs(8),
                threshold: 3,
                source_threshold: 5,
                lock_duration: Duration::from_secs(900),
            },
        }
    }

    #[test]
    fn delay_doubles_then_caps() {
        let delays: Vec<u64> = (1..=7).map(|n| policy().delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(policy().delay(u32::MAX), Duration::from_secs(8));
    }

    #[test]
    fn locks_at_threshold_and_expires() {
        let mut failures = Failures::default();
        for _ in 0..2 {
            failures = policy().after_failure(failures, 1000);
            assert!(!failures.is_locked(1000));
        }
        failures = policy().after_failure(failures, 1000);
        assert_eq!(failures.locked_until, Some(1900));
        assert!(failures.is_locked(1899));
        assert!(!failures.is_locked(1900));
        assert_eq!(failures.current(1900), Failures::default());
        assert_eq!(failures.current(1899), failures);
    }

    #[test]
    fn zero_threshold_never_locks() {
        let mut no_lock = policy();
        no_lock.lockout.threshold = 0;
        let mut failures = Failures::default();
        for _ in 0..100 {
            failures = no_lock.after_failure(failures, 5);
        }
        assert!(!failures.is_locked(5));
    }

    #[test]
    fn source_locks_at_its_own_threshold() {
        let mut failures = Failures::default();
        for _ in 0..4 {
            failures = policy().after_source_failure(failures, 1000);
            assert!(!failures.is_locked(1000));
        }
        failures = policy().after_source_failure(failures, 1000);
        assert_eq!(failures.count, 5);
        assert_eq!(failures.locked_until, Some(1900));
    }

    #[test]
    fn zero_source_threshold_never_locks() {
        let mut off = policy();
        off.lockout.source_threshold = 0;
        let mut failures = Failures::default();
        for _ in 0..100 {
            failures = off.after_source_failure(failures, 5);
        }
        assert!(!failures.is_locked(5));
    }

    #[test]
    fn unknown_names_are_bounded() {
        let mut names = FailureTable::default();
        for i in 0..(MAX_NAMES + 10) {
            names.set(
                &format!("user{i}"),
                Failures {
                    count: 1,
                    locked_until: None,
                },
            );
        }
        assert!(names.counts.len() <= MAX_NAMES);
    }
}
