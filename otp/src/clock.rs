//! Wall-clock sources, injected so that tests control time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Source of the current time in Unix seconds.
pub trait Clock: Send + Sync {
    /// Returns the current time in whole seconds since 1970-01-01 00:00:00 UTC.
    fn unix_time(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// Returns the system time, or 0 if the system clock is set before 1970.
    fn unix_time(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
    }
}

/// A clock that stays at the time it is given, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Creates a clock showing `unix_time`.
    pub fn new(unix_time: u64) -> ManualClock {
        ManualClock(AtomicU64::new(unix_time))
    }

    /// Sets the clock to `unix_time`.
    pub fn set(&self, unix_time: u64) {
        self.0.store(unix_time, Ordering::SeqCst);
    }

    /// Moves the clock forward by `secs` seconds, stopping at `u64::MAX`.
    pub fn advance(&self, secs: u64) {
        // The closure always returns Some, so fetch_update cannot fail.
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| Some(now.saturating_add(secs)));
    }
}

impl Clock for ManualClock {
    fn unix_time(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_sets_and_advances() {
        let clock = ManualClock::new(100);
        assert_eq!(clock.unix_time(), 100);
        clock.advance(29);
        assert_eq!(clock.unix_time(), 129);
        clock.set(5);
        assert_eq!(clock.unix_time(), 5);
    }

    #[test]
    fn manual_clock_saturates_at_max() {
        let clock = ManualClock::new(u64::MAX - 1);
        clock.advance(10);
        assert_eq!(clock.unix_time(), u64::MAX);
    }

    #[test]
    fn system_clock_is_after_2020() {
        // 2020-01-01 00:00:00 UTC.
        assert!(SystemClock.unix_time() > 1_577_836_800);
    }

    #[test]
    fn clocks_work_as_trait_objects() {
        let clocks: [&dyn Clock; 2] = [&SystemClock, &ManualClock::new(7)];
        assert_eq!(clocks[1].unix_time(), 7);
    }
}
