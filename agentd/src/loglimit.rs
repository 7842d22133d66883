//! Rate limiting for log lines caused by peers, so a misbehaving client
//! cannot flood the journal. Each key may log a few lines per minute; the
//! rest are counted and the count is reported with the next line.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines allowed per key and window.
const LINES_PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

/// Per-key counters of recent log lines.
#[derive(Debug, Default)]
pub struct LogLimiter {
    keys: Mutex<HashMap<&'static str, (Instant, u32, u64)>>,
}

impl LogLimiter {
    /// Logs `message` at warning level unless `key` has logged too often.
    pub fn warn(&self, key: &'static str, message: &str) {
        if let Some(suppressed) = self.admit(key, Instant::now()) {
            if suppressed > 0 {
                tracing::warn!(suppressed, "{message} ({suppressed} similar messages suppressed)");
            } else {
                tracing::warn!("{message}");
            }
        }
    }

    /// Returns the number of lines suppressed since the last one logged, or
    /// `None` if this line is to be suppressed. For callers that log with
    /// their own fields and target.
    pub fn admit(&self, key: &'static str, now: Instant) -> Option<u64> {
        let mut keys = match self.keys.lock() {
            Ok(keys) => keys,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (start, lines, suppressed) = keys.entry(key).or_insert((now, 0, 0));
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
    fn suppresses_after_limit_and_reports_count() {
        let limiter = LogLimiter::default();
        let start = Instant::now();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(limiter.admit("k", start), Some(0));
        }
        assert_eq!(limiter.admit("k", start), None);
        assert_eq!(limiter.admit("k", start), None);
        assert_eq!(limiter.admit("other", start), Some(0));
        assert_eq!(limiter.admit("k", start + WINDOW), Some(2));
    }
}
