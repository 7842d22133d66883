//! Counters and the latency histogram of a run, and the report printed at
//! its end.
//!
//! Latencies are kept in a log-linear histogram of microseconds: exact below
//! 256 µs, and above that in buckets 1/128 of a power of two wide, so a
//! percentile is reported at most 0.8 % above the true value. Memory stays
//! the same however long the run is.

use std::time::Duration;

use serde::Serialize;

/// Values below this are counted exactly.
const LINEAR: u64 = 256;
/// Buckets per power of two above [`LINEAR`].
const SUB_BUCKETS: u64 = 128;
/// log2 of [`SUB_BUCKETS`].
const SUB_BITS: u32 = 7;
/// Enough buckets for every `u64`.
const BUCKETS: usize = (LINEAR + (64 - 8) * SUB_BUCKETS) as usize;

/// Latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let mantissa = value >> (exponent - SUB_BITS);
    (LINEAR + u64::from(exponent - 8) * SUB_BUCKETS + (mantissa - SUB_BUCKETS)) as usize
}

/// Largest value that falls into bucket `index`.
fn bucket_top(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let exponent = (index - LINEAR) / SUB_BUCKETS + 8;
    let mantissa = (index - LINEAR) % SUB_BUCKETS + SUB_BUCKETS;
    let shift = exponent - u64::from(SUB_BITS);
    let top = (u128::from(mantissa + 1) << shift) - 1;
    u64::try_from(top).unwrap_or(u64::MAX)
}

impl Histogram {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(count) = self.counts.get_mut(bucket_of(micros)) {
            *count += 1;
        }
        self.total += 1;
        self.max = self.max.max(micros);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Returns the latency below which `percent` of the values fall, in
    /// microseconds: the top of its bucket, capped at the maximum. Returns 0
    /// when the histogram is empty.
    pub fn percentile(&self, percent: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((percent / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bucket_top(index).min(self.max);
            }
        }
        self.max
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

/// Counters of one run. Every request sent ends as exactly one of accepts,
/// rejects, challenges or timeouts; `invalid` and `unmatched` count
/// datagrams, which end no request.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub requests: u64,
    /// Datagrams sent again after a timeout (with `--retries`).
    pub retransmissions: u64,
    pub accepts: u64,
    pub rejects: u64,
    pub challenges: u64,
    /// Datagrams that failed the Response Authenticator or
    /// Message-Authenticator check, or were no valid RADIUS reply.
    pub invalid: u64,
    pub timeouts: u64,
    /// Datagrams that matched no request in flight, such as replies that
    /// came after their request timed out.
    pub unmatched: u64,
    /// Failed sends and receives on the sockets, such as the ICMP port
    /// unreachable of a server that is not running.
    pub socket_errors: u64,
    /// Latency of every valid reply, from the first send of its request.
    pub latency: Histogram,
}

impl Counters {
    pub fn merge(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.retransmissions += other.retransmissions;
        self.accepts += other.accepts;
        self.rejects += other.rejects;
        self.challenges += other.challenges;
        self.invalid += other.invalid;
        self.timeouts += other.timeouts;
        self.unmatched += other.unmatched;
        self.socket_errors += other.socket_errors;
        self.latency.merge(&other.latency);
    }
}

/// Latency figures in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub max_ms: f64,
}

/// The result of a run, printed as text or JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub server: String,
    pub users: usize,
    pub in_flight: usize,
    /// From the first send to the later of the last valid reply and the
    /// end of sending.
    pub elapsed_s: f64,
    pub requests: u64,
    pub retransmissions: u64,
    pub accepts: u64,
    pub rejects: u64,
    pub challenges: u64,
    pub invalid: u64,
    pub timeouts: u64,
    pub unmatched: u64,
    pub socket_errors: u64,
    pub requests_per_s: f64,
    pub accepts_per_s: f64,
    pub latency: LatencyReport,
    /// Seconds in which every user already had its request in the current
    /// time step, so no request could be sent.
    pub user_limited_s: f64,
    /// CPU time of this process (user and system), from `/proc/self/stat`.
    pub client_cpu_s: Option<f64>,
    pub warnings: Vec<String>,
}

fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Report {
    pub fn new(server: String, users: usize, in_flight: usize, elapsed: Duration, counters: &Counters) -> Report {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let latency = &counters.latency;
        Report {
            server,
            users,
            in_flight,
            elapsed_s: elapsed.as_secs_f64(),
            requests: counters.requests,
            retransmissions: counters.retransmissions,
            accepts: counters.accepts,
            rejects: counters.rejects,
            challenges: counters.challenges,
            invalid: counters.invalid,
            timeouts: counters.timeouts,
            unmatched: counters.unmatched,
            socket_errors: counters.socket_errors,
            requests_per_s: counters.requests as f64 / seconds,
            accepts_per_s: counters.accepts as f64 / seconds,
            latency: LatencyReport {
                p50_ms: millis(latency.percentile(50.0)),
                p90_ms: millis(latency.percentile(90.0)),
                p99_ms: millis(latency.percentile(99.0)),
                p99_9_ms: millis(latency.percentile(99.9)),
                max_ms: millis(latency.max()),
            },
            user_limited_s: 0.0,
            client_cpu_s: None,
            warnings: Vec::new(),
        }
    }

    /// Formats the report as aligned text lines.
    pub fn to_text(&self) -> String {
        let l = &self.latency;
        let mut text = format!(
            "server          {}\n\
             users           {}\n\
             in flight       {}\n\
             elapsed         {:.2} s\n\
             requests        {} ({:.0}/s)\n\
             accepts         {} ({:.0}/s)\n\
             rejects         {}\n\
             challenges      {}\n\
             timeouts        {}\n\
             invalid replies {}\n\
             retransmissions {}\n\
             unmatched       {}\n\
             socket errors   {}\n\
             latency (ms)    p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n\
             client CPU      {}\n",
            self.server,
            self.users,
            self.in_flight,
            self.elapsed_s,
            self.requests,
            self.requests_per_s,
            self.accepts,
            self.accepts_per_s,
            self.rejects,
            self.challenges,
            self.timeouts,
            self.invalid,
            self.retransmissions,
            self.unmatched,
            self.socket_errors,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p99_9_ms,
            l.max_ms,
            self.client_cpu_s
                .map_or_else(|| "unknown".to_owned(), |seconds| format!("{seconds:.2} s")),
        );
        for warning in &self.warnings {
            text.push_str("warning: ");
            text.push_str(warning);
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        let mut previous_top = None;
        for index in 0..BUCKETS {
            let top = bucket_top(index);
            if let Some(previous) = previous_top {
                assert!(top > previous, "bucket {index}");
            }
            previous_top = Some(top);
        }
        for value in [0, 1, 255, 256, 257, 1000, 12_345, 1 << 40, u64::MAX] {
            let index = bucket_of(value);
            assert!(index < BUCKETS, "{value}");
            assert!(bucket_top(index) >= value, "{value}");
            if index > 0 {
                assert!(bucket_top(index - 1) < value, "{value}");
            }
        }
    }

    #[test]
    fn percentiles_within_one_percent() {
        let mut histogram = Histogram::default();
        for micros in 1..=100_000u64 {
            histogram.record(Duration::from_micros(micros));
        }
        for (percent, exact) in [(50.0, 50_000.0), (90.0, 90_000.0), (99.0, 99_000.0), (99.9, 99_900.0)] {
            let value = histogram.percentile(percent) as f64;
            assert!(value >= exact, "p{percent} = {value} is below {exact}");
            assert!(
                value <= exact * 1.008,
                "p{percent} = {value} is more than 0.8 % above {exact}"
            );
        }
        assert_eq!(histogram.max(), 100_000);
        assert_eq!(histogram.percentile(100.0), 100_000);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let histogram = Histogram::default();
        assert_eq!(histogram.percentile(99.0), 0);
        assert_eq!(histogram.count(), 0);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Counters {
            accepts: 2,
            ..Counters::default()
        };
        a.latency.record(Duration::from_micros(10));
        let mut b = Counters {
            accepts: 3,
            ..Counters::default()
        };
        b.latency.record(Duration::from_micros(5000));
        a.merge(&b);
        assert_eq!(a.accepts, 5);
        assert_eq!(a.latency.count(), 2);
        assert_eq!(a.latency.max(), 5000);
    }
}
