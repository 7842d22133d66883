//! Results of one measured loop: counts, accept rate and latency
//! percentiles, and the table rows printed from them.

use std::time::Duration;

/// Everything one loop measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunResult {
    /// Latency of each accepted authentication, pam_start to pam_end, in
    /// nanoseconds.
    pub latencies_ns: Vec<u64>,
    pub attempts: u64,
    pub accepted: u64,
    pub errors: u64,
    /// Wall-clock time of the loop; with threads or processes, from the
    /// common start to the end of the last one.
    pub elapsed: Duration,
    /// 1-minute load average before and after the loop (`/proc/loadavg`).
    pub load_before: f64,
    pub load_after: f64,
}

impl RunResult {
    /// Adds a thread's counts and latencies to this result.
    pub fn merge(&mut self, other: RunResult) {
        self.latencies_ns.extend(other.latencies_ns);
        self.attempts += other.attempts;
        self.accepted += other.accepted;
        self.errors += other.errors;
    }

    /// Accepted authentications per second of wall-clock time.
    pub fn accept_rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.accepted as f64 / seconds
        } else {
            0.0
        }
    }

    /// Latency percentiles of the accepted authentications.
    pub fn latency(&mut self) -> Latency {
        self.latencies_ns.sort_unstable();
        Latency {
            p50_ns: percentile(&self.latencies_ns, 0.50),
            p99_ns: percentile(&self.latencies_ns, 0.99),
            p999_ns: percentile(&self.latencies_ns, 0.999),
            max_ns: self.latencies_ns.last().copied().unwrap_or(0),
        }
    }
}

/// Latency percentiles in nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

/// Returns the nearest-rank percentile of `sorted`, or 0 when it is empty.
/// With fewer than 1/(1 - `fraction`) values it is the maximum.
pub fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Reads the 1-minute load average, or returns NaN when `/proc/loadavg`
/// cannot be read.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|field| field.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Formats nanoseconds as milliseconds with three decimals.
pub fn millis(nanoseconds: u64) -> String {
    format!("{:.3}", nanoseconds as f64 / 1e6)
}

/// The loops of one measurement: this many threads of this process, or
/// this many processes forked from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loops {
    Threads(usize),
    Processes(usize),
}

impl std::fmt::Display for Loops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loops::Threads(1) => f.write_str("1 thread"),
            Loops::Threads(count) => write!(f, "{count} threads"),
            Loops::Processes(1) => f.write_str("1 process"),
            Loops::Processes(count) => write!(f, "{count} processes"),
        }
    }
}

/// One row of the results table.
#[derive(Clone, Debug)]
pub struct Row {
    pub users: usize,
    pub module: &'static str,
    pub loops: Loops,
    pub result: RunResult,
    pub latency: Latency,
}

/// Header of the Markdown results table.
pub const TABLE_HEADER: &str = "| users | module | loops | attempts | accepted | errors | seconds | accepts/s | p50 ms | p99 ms | p99.9 ms | max ms | load before/after |\n\
|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";

impl Row {
    /// The row as a Markdown table line.
    pub fn markdown(&self) -> String {
        let latency = &self.latency;
        format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.1} | {} | {} | {} | {} | {:.2}/{:.2} |",
            self.users,
            self.module,
            self.loops,
            self.result.attempts,
            self.result.accepted,
            self.result.errors,
            self.result.elapsed.as_secs_f64(),
            self.result.accept_rate(),
            millis(latency.p50_ns),
            millis(latency.p99_ns),
            millis(latency.p999_ns),
            millis(latency.max_ns),
            self.result.load_before,
            self.result.load_after,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let values: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&values, 0.50), 500);
        assert_eq!(percentile(&values, 0.99), 990);
        assert_eq!(percentile(&values, 0.999), 999);
    }

    #[test]
    fn percentile_of_few_values_is_maximum() {
        assert_eq!(percentile(&[3, 7, 9], 0.99), 9);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
