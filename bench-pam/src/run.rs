//! The measured loops: authenticate a random user of the population with
//! its next HOTP code, again and again, until a deadline or a count is
//! reached, in one thread or in several with their own PAM handles.

use std::time::{Duration, Instant};

use crate::pam::{authenticate, Service};
use crate::population::{Counters, Population};
use crate::stats::{load_average, RunResult};

/// Failures printed per loop; the rest are only counted.
const MAX_PRINTED_FAILURES: u64 = 5;

/// Seed of the user order, so that both modules see the same sequence.
const ORDER_SEED: u64 = 0x5eed_f4ee_a075_0001;

/// When a loop stops: at `duration` or after `max_attempts`, whichever
/// comes first.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub duration: Duration,
    pub max_attempts: u64,
}

/// One module's service with the users and the counters it has consumed.
pub struct Target<'a> {
    pub label: &'static str,
    pub service: &'a Service,
    pub population: &'a Population,
    pub counters: &'a Counters,
}

/// Runs one thread's loop and returns its counts and latencies.
pub fn sequential(target: &Target<'_>, limit: Limit) -> RunResult {
    let load_before = load_average();
    let started = Instant::now();
    let mut result = lane_loop(target, limit, Lane { index: 0, count: 1 }, started);
    result.elapsed = started.elapsed();
    result.load_before = load_before;
    result.load_after = load_average();
    result
}

/// Runs `threads` loops at once, each with its own PAM handles and its own
/// share of the users, so no two threads ever use the same user's counter.
/// `limit.max_attempts` applies to each thread.
pub fn parallel(target: &Target<'_>, limit: Limit, threads: usize) -> RunResult {
    let load_before = load_average();
    let started = Instant::now();
    let mut result = RunResult::default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let lane = Lane { index, count: threads };
                scope.spawn(move || lane_loop(target, limit, lane, started))
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(part) => result.merge(part),
                Err(_) => {
                    eprintln!("{}: a benchmark thread panicked; its results are lost", target.label);
                    result.errors += 1;
                }
            }
        }
    });
    result.elapsed = started.elapsed();
    result.load_before = load_before;
    result.load_after = load_average();
    result
}

/// The users one thread may use: indices `index`, `index + count`, ….
#[derive(Clone, Copy, Debug)]
struct Lane {
    index: usize,
    count: usize,
}

impl Lane {
    fn size(&self, users: usize) -> usize {
        users.saturating_sub(self.index).div_ceil(self.count)
    }
}

fn lane_loop(target: &Target<'_>, limit: Limit, lane: Lane, started: Instant) -> RunResult {
    let mut result = RunResult::default();
    let lane_size = lane.size(target.population.len());
    if lane_size == 0 {
        return result;
    }
    let mut order = SplitMix64(ORDER_SEED ^ lane.index as u64);
    while result.attempts < limit.max_attempts && started.elapsed() < limit.duration {
        let user = lane.index + lane.count * order.below(lane_size);
        let counter = target.counters.take(user);
        let code = target.population.code(user, counter);
        result.attempts += 1;
        match authenticate(target.service, target.population.name(user), &code) {
            Ok(latency) => {
                result.accepted += 1;
                result
                    .latencies_ns
                    .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
            }
            Err(failure) => {
                result.errors += 1;
                if result.errors <= MAX_PRINTED_FAILURES {
                    eprintln!(
                        "{}: authentication of {} at counter {counter} failed: {}; module messages: {:?}",
                        target.label,
                        target.population.name(user).to_string_lossy(),
                        failure.reason,
                        failure.messages
                    );
                }
            }
        }
    }
    if result.errors > MAX_PRINTED_FAILURES {
        eprintln!(
            "{}: {} more failures in thread {} not printed",
            target.label,
            result.errors - MAX_PRINTED_FAILURES,
            lane.index
        );
    }
    result
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a small, fast generator for the
/// user order. Not for secrets.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a number in `0..bound`. The modulo bias is below 1e-12 for
    /// the population sizes used here.
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_cover_every_user_once() {
        let users = 10;
        let threads = 4;
        let mut seen = vec![0; users];
        for index in 0..threads {
            let lane = Lane { index, count: threads };
            for k in 0..lane.size(users) {
                seen[index + threads * k] += 1;
            }
        }
        assert_eq!(seen, vec![1; users]);
    }

    #[test]
    fn lane_beyond_population_is_empty() {
        let lane = Lane { index: 3, count: 4 };
        assert_eq!(lane.size(2), 0);
        assert_eq!(lane.size(4), 1);
    }
}
