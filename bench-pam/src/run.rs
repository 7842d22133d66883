//! The measured loops: authenticate a random user of the population with
//! its next HOTP code, again and again, until a deadline or a count is
//! reached, in one thread, in several with their own PAM handles, or in
//! several processes forked from this one.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
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

/// Runs `processes` loops at once, each in a child forked from this
/// process, with its own share of the users as in [`parallel`]. pam_oath
/// guards its users file with an `fcntl` lock, which keeps processes apart
/// but not the threads of one process. So this is the one concurrent loop
/// that both modules can run, as they would under `sshd`, which forks for
/// each connection. `limit.max_attempts` applies to each process.
///
/// The caller must have no other thread running: the child gets only the
/// calling thread, and a lock held by another thread would never be
/// released in it. Each child sends its counts, its latencies and its
/// users' counters back through a pipe, and the counters here are set
/// from them, so that later loops send the next codes.
pub fn forked(target: &Target<'_>, limit: Limit, processes: usize) -> Result<RunResult, String> {
    // Buffered output would be written once by each child as well.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let load_before = load_average();
    let started = Instant::now();
    let mut children = Vec::new();
    let mut failure = None;
    for index in 0..processes {
        let lane = Lane {
            index,
            count: processes,
        };
        match fork_lane(target, limit, lane, started) {
            Ok(child) => children.push((lane, child)),
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    let mut result = RunResult::default();
    let mut longest = Duration::ZERO;
    for (lane, (pid, pipe)) in children {
        let message = read_all(pipe);
        let status = wait_for(pid);
        match message.and_then(|bytes| Report::decode(&bytes, lane.size(target.population.len()))) {
            Ok(report) if status == Some(0) => {
                for (k, (next, accepted)) in report.counters.iter().enumerate() {
                    target.counters.set(lane.index + lane.count * k, *next, *accepted);
                }
                longest = longest.max(report.elapsed);
                result.merge(report.result);
            }
            Ok(_) => failure = Some(format!("benchmark process {pid} ended with status {status:?}")),
            Err(err) => failure = Some(format!("benchmark process {pid}: {err}")),
        }
    }
    if let Some(err) = failure {
        return Err(format!("{}: {err}", target.label));
    }
    result.elapsed = longest;
    result.load_before = load_before;
    result.load_after = load_average();
    Ok(result)
}

/// Forks a child that runs `lane`'s loop and writes a [`Report`] to the
/// pipe whose reading end is returned with the child's PID.
fn fork_lane(target: &Target<'_>, limit: Limit, lane: Lane, started: Instant) -> Result<(libc::pid_t, File), String> {
    let mut ends = [0; 2];
    // SAFETY: `ends` has room for the two descriptors pipe2(2) writes.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("cannot create a pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by
    // nothing else.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };

    // SAFETY: the caller guarantees that this process runs no other thread
    // (see `forked`), so the child's copy of the heap and of libc's locks is
    // consistent. The child never returns from this function: it leaves
    // through `_exit`, so no destructor of the parent's data (such as the
    // temporary folder) runs in it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("cannot fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(reader);
        run_child(target, limit, lane, started, File::from(writer));
    }

    drop(writer);
    Ok((pid, File::from(reader)))
}

/// Runs in the forked child: the lane's loop, then its [`Report`] to
/// `pipe`, then `_exit`. A panic must not unwind into the parent's frames,
/// whose destructors would stop the agent and remove the folder.
fn run_child(target: &Target<'_>, limit: Limit, lane: Lane, started: Instant, mut pipe: File) -> ! {
    let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let result = lane_loop(target, limit, lane, started);
        let elapsed = started.elapsed();
        let counters = (0..lane.size(target.population.len()))
            .map(|k| target.counters.get(lane.index + lane.count * k))
            .collect();
        let report = Report {
            result,
            elapsed,
            counters,
        };
        i32::from(pipe.write_all(&report.encode()).is_err())
    }))
    .unwrap_or(2);
    // SAFETY: _exit(2) ends the child at once, without running destructors
    // of data that the parent owns.
    unsafe { libc::_exit(status) }
}

/// Reads a child's pipe to its end.
fn read_all(mut pipe: File) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    pipe.read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read its results: {err}"))?;
    Ok(bytes)
}

/// Waits for child `pid` and returns its exit status, or `None` when it
/// did not exit normally.
fn wait_for(pid: libc::pid_t) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid(2) on a child of this process, with a valid
        // pointer for the status.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited == pid {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        if waited < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// A forked loop's results: its counts and latencies, when its loop ended
/// (from the common start), and for each of its users the next counter and
/// the counter of the last accepted code.
#[derive(Debug, PartialEq)]
struct Report {
    result: RunResult,
    elapsed: Duration,
    counters: Vec<(u64, Option<u64>)>,
}

impl Report {
    /// Little-endian u64 values: elapsed ns, attempts, accepted, errors,
    /// the number of latencies and the latencies, then two values per user:
    /// the next counter, and the last accepted one or `u64::MAX`.
    fn encode(&self) -> Vec<u8> {
        let elapsed = u64::try_from(self.elapsed.as_nanos()).unwrap_or(u64::MAX);
        let head = [
            elapsed,
            self.result.attempts,
            self.result.accepted,
            self.result.errors,
            self.result.latencies_ns.len() as u64,
        ];
        let counters = self
            .counters
            .iter()
            .flat_map(|(next, accepted)| [*next, accepted.unwrap_or(u64::MAX)]);
        head.iter()
            .chain(&self.result.latencies_ns)
            .copied()
            .chain(counters)
            .flat_map(u64::to_le_bytes)
            .collect()
    }

    /// Reads what [`Report::encode`] wrote for a lane of `lane_size` users.
    fn decode(bytes: &[u8], lane_size: usize) -> Result<Report, String> {
        if bytes.len() % 8 != 0 {
            return Err(format!("its results have {} bytes, not a multiple of 8", bytes.len()));
        }
        let values: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|chunk| {
                let mut word = [0; 8];
                word.copy_from_slice(chunk);
                u64::from_le_bytes(word)
            })
            .collect();
        let Some((head, rest)) = values.split_first_chunk::<5>() else {
            return Err("its results end early".into());
        };
        let [elapsed, attempts, accepted, errors, latencies] = *head;
        let latencies = usize::try_from(latencies).unwrap_or(usize::MAX);
        if rest.len() != latencies.saturating_add(lane_size.saturating_mul(2)) {
            return Err(format!(
                "its results hold {} values after the counts, not {latencies} latencies and the counters of {lane_size} users",
                rest.len()
            ));
        }
        let (latencies_ns, counters) = rest.split_at(latencies);
        Ok(Report {
            result: RunResult {
                latencies_ns: latencies_ns.to_vec(),
                attempts,
                accepted,
                errors,
                ..RunResult::default()
            },
            elapsed: Duration::from_nanos(elapsed),
            counters: counters
                .chunks_exact(2)
                .map(|pair| (pair[0], (pair[1] != u64::MAX).then_some(pair[1])))
                .collect(),
        })
    }
}

/// The outcome of [`replay_check`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Replays {
    /// Last accepted codes sent again.
    pub tried: u64,
    /// How many of them the module accepted a second time.
    pub accepted: u64,
    /// Authentications that failed for another reason than a refusal.
    pub errors: u64,
}

/// Sends the last accepted code of up to `max_users` users once more, one
/// after the other, and counts the ones the module accepts again. After
/// the loops no other authentication runs, so a module that kept every
/// use refuses them all.
pub fn replay_check(target: &Target<'_>, max_users: usize) -> Replays {
    let mut replays = Replays::default();
    let users = (0..target.population.len())
        .filter_map(|user| target.counters.get(user).1.map(|counter| (user, counter)))
        .take(max_users);
    for (user, counter) in users {
        replays.tried += 1;
        let code = target.population.code(user, counter);
        match authenticate(target.service, target.population.name(user), &code) {
            Ok(_) => replays.accepted += 1,
            Err(failure) if failure.rejected => {}
            Err(_) => replays.errors += 1,
        }
    }
    replays
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
                target.counters.note_accepted(user, counter);
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
    fn report_survives_encoding() {
        let report = Report {
            result: RunResult {
                latencies_ns: vec![1, 2, u64::MAX],
                attempts: 4,
                accepted: 3,
                errors: 1,
                ..RunResult::default()
            },
            elapsed: Duration::from_millis(5_001),
            counters: vec![(7, Some(6)), (0, None), (9, Some(2))],
        };
        let bytes = report.encode();
        assert_eq!(Report::decode(&bytes, 3), Ok(report));
        assert!(Report::decode(&bytes, 2).is_err());
        assert!(Report::decode(&bytes[..bytes.len() - 1], 3).is_err());
        assert!(Report::decode(&bytes[..16], 0).is_err());
    }

    #[test]
    fn lane_beyond_population_is_empty() {
        let lane = Lane { index: 3, count: 4 };
        assert_eq!(lane.size(2), 0);
        assert_eq!(lane.size(4), 1);
    }
}
