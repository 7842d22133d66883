//! Log lines caused by the network, rate-limited per key so a flood of bad
//! packets cannot flood the journal: a key logs at most 10 lines a minute,
//! and the next line it logs gives the number suppressed. Rejections
//! for which no code is verified (another method than PAP, a realm, an
//! invalid name) are limited the same way per client and kind, through
//! [`RateLog::allow`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LINES_PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

/// Per-key line counters.
#[derive(Debug, Default)]
pub struct RateLog {
    keys: Mutex<HashMap<String, (Instant, u32, u64)>>,
}

impl RateLog {
    pub fn warn(&self, key: &str, message: &str) {
        match self.admit(key, Instant::now()) {
            Some(0) => tracing::warn!("{message}"),
            Some(suppressed) => tracing::warn!(suppressed, "{message}"),
            None => {}
        }
    }

    pub fn info(&self, key: &str, message: &str) {
        match self.admit(key, Instant::now()) {
            Some(0) => tracing::info!("{message}"),
            Some(suppressed) => tracing::info!(suppressed, "{message}"),
            None => {}
        }
    }

    /// Counts a line of `key` that the caller logs itself, with its own
    /// target and fields. Returns `None` when the line must be left out,
    /// else the number of lines of `key` left out before it.
    pub fn allow(&self, key: &str) -> Option<u64> {
        self.admit(key, Instant::now())
    }

    fn admit(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = match self.keys.lock() {
            Ok(keys) => keys,
            Err(poisoned) => poisoned.into_inner(),
        };
        if keys.len() > 10_000 && !keys.contains_key(key) {
            keys.clear();
        }
        let (start, lines, suppressed) = keys.entry(key.to_owned()).or_insert((now, 0, 0));
        if now.saturating_duration_since(*start) >= WINDOW {
            *start = now;
            *lines = 0;
        }
        if *lines >= LINES_PER_WINDOW {
            *suppressed += 1;
            return None;
        }
        *lines += 1;
        Some(std::mem::take(suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppresses_after_ten_lines_a_minute() {
        let log = RateLog::default();
        let start = Instant::now();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(log.admit("k", start), Some(0));
        }
        assert_eq!(log.admit("k", start), None);
        assert_eq!(log.admit("k", start + WINDOW), Some(1));
    }
}
