//! Placement of the connection thread and the engine thread on CPUs.
//!
//! A request crosses from the connection thread to the engine thread and
//! back. When the kernel runs the two on different CPUs, each crossing wakes
//! the other CPU, and waking a CPU that has been idle for a while is slow:
//! on a virtual machine the host may have descheduled it. On the 2-CPU
//! machine of `docs/benchmarks-pam.md`, one round trip between two threads
//! took 12 µs on two busy CPUs, 24 µs after 0.2 ms of idleness and 118 µs
//! after 1 ms, against 4 to 11 µs on one CPU. Local logins come one at a
//! time with such pauses between their steps.
//!
//! So while the two threads together use less than [`SHARE_BELOW`] of one
//! CPU, [`Placement`] keeps both on the CPU the connection thread runs on.
//! When they need more than [`SPREAD_ABOVE`], or wait for that CPU longer
//! than [`WAIT_ABOVE`] of the time (another program keeps it busy), it
//! gives them back every CPU the agent started with. It looks at the load
//! when a request comes and at least [`INTERVAL`] has passed, so an idle
//! agent does no work for it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Minimum time between two looks at the load.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// Share of one CPU below which the two threads move onto one CPU.
pub const SHARE_BELOW: f64 = 0.5;
/// Share of one CPU above which two threads on one CPU spread again.
pub const SPREAD_ABOVE: f64 = 0.8;
/// Share of the time the two threads on one CPU may wait for it, together,
/// before they spread again. Two threads on one CPU wait for each other
/// at times: 0.15 to 0.26 in the PAM benchmark's loop. Another program
/// that keeps the CPU busy raises the wait to about the threads' own CPU
/// time or more.
pub const WAIT_ABOVE: f64 = 0.35;
/// Share of the time two threads on different CPUs may wait for a CPU
/// and still move onto one.
pub const SHARE_WAIT_BELOW: f64 = 0.1;
/// Time the threads stay where they are after a move, unless their CPU
/// time exceeds [`SPREAD_ABOVE`]. A single busy interval then cannot move
/// them back and forth.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Move of the two threads, chosen after a look at their load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// Put both on the CPU of the connection thread.
    Share,
    /// Give both every CPU the agent started with.
    Spread,
    Stay,
}

/// Decides a move from the load of the last interval. `busy` is the CPU
/// time of both threads and `waiting` the time they waited for a CPU, each
/// as a share of the interval's length. `settled` is false within
/// [`SETTLE`] of the last move.
pub fn decide(sharing: bool, settled: bool, busy: f64, waiting: f64) -> Move {
    if sharing {
        if busy > SPREAD_ABOVE || (settled && waiting > WAIT_ABOVE) {
            Move::Spread
        } else {
            Move::Stay
        }
    } else if settled && busy < SHARE_BELOW && waiting < SHARE_WAIT_BELOW {
        Move::Share
    } else {
        Move::Stay
    }
}

/// Time a thread ran and waited for a CPU, in nanoseconds, from the first
/// two fields of `/proc/self/task/TID/schedstat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Times {
    ran: u64,
    waited: u64,
}

impl Times {
    fn parse(text: &str) -> Option<Times> {
        let mut fields = text.split_ascii_whitespace();
        let ran = fields.next()?.parse().ok()?;
        let waited = fields.next()?.parse().ok()?;
        Some(Times { ran, waited })
    }

    fn read(tid: Pid) -> Option<Times> {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
        Times::parse(&text)
    }
}

/// One look at the load: when, and the times of both threads.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    threads: [Times; 2],
}

/// Moves the connection thread and the engine thread between one shared
/// CPU and every CPU the agent may use; see the module documentation.
#[derive(Debug)]
pub struct Placement {
    /// The connection thread, then the engine thread.
    threads: [Pid; 2],
    /// The CPUs the agent started with, given back by [`Move::Spread`].
    /// A mask set from outside on the connection thread replaces it.
    allowed: CpuSet,
    /// Copy of `allowed` for the runtime's blocking threads as they start.
    blocking_mask: Arc<Mutex<CpuSet>>,
    /// The CPU both threads share now, if they do.
    shared: Option<usize>,
    /// When the threads last moved.
    moved: Option<Instant>,
    last: Option<Sample>,
    /// False when turned off by the configuration, when the agent may use
    /// one CPU only, or after a system call failed.
    active: bool,
}

impl Placement {
    /// Watches the calling thread, which must be the connection thread, and
    /// `engine`. Inactive unless `enabled` and the agent may run on more
    /// than one CPU.
    pub fn new(engine: Pid, enabled: bool) -> Placement {
        let connection = nix::unistd::gettid();
        let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap_or_else(|_| CpuSet::new());
        let cpus = (0..CpuSet::count())
            .filter(|&cpu| allowed.is_set(cpu).unwrap_or(false))
            .count();
        let active = enabled && cpus > 1;
        if enabled && !active {
            tracing::debug!("thread placement off: the agent may use one CPU only");
        }
        Placement {
            threads: [connection, engine],
            allowed,
            blocking_mask: Arc::new(Mutex::new(allowed)),
            shared: None,
            moved: None,
            last: None,
            active,
        }
    }

    /// Returns the CPU both threads share now, if they do.
    pub fn shared_cpu(&self) -> Option<usize> {
        self.shared
    }

    /// Builds the current-thread runtime that the connection thread runs.
    /// The runtime starts its blocking threads (name lookups, hashing of
    /// backup codes) from the connection thread, so they would inherit its
    /// one-CPU mask while it shares a CPU with the engine, and keep it after
    /// a spread. Each blocking thread gets the agent's starting CPUs back
    /// first.
    pub fn build_runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        if self.active {
            let blocking_mask = Arc::clone(&self.blocking_mask);
            builder.on_thread_start(move || {
                let mask = *blocking_mask.lock().unwrap_or_else(PoisonError::into_inner);
                if let Err(err) = sched_setaffinity(Pid::from_raw(0), &mask) {
                    tracing::warn!(error = %err, "cannot give a blocking thread every CPU");
                }
            });
        }
        builder.build()
    }

    /// Looks at the load if [`INTERVAL`] has passed since the last look,
    /// and moves the threads if [`decide`] returns a move. Call it from the
    /// connection thread when a request comes.
    pub fn tick(&mut self, now: Instant) {
        if !self.active {
            return;
        }
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last.at) < INTERVAL)
        {
            return;
        }

        let (Some(connection), Some(engine)) = (Times::read(self.threads[0]), Times::read(self.threads[1])) else {
            tracing::debug!("thread placement off: cannot read the threads' scheduler times");
            self.stop();
            return;
        };
        let sample = Sample {
            at: now,
            threads: [connection, engine],
        };
        let previous = self.last.replace(sample);
        if self.follow_outside_change() {
            self.moved = Some(now);
            return;
        }
        let Some(last) = previous else {
            return;
        };

        let nanos = now.saturating_duration_since(last.at).as_nanos() as f64;
        if nanos <= 0.0 {
            return;
        }
        let delta = |pick: fn(&Times) -> u64| -> f64 {
            sample
                .threads
                .iter()
                .zip(last.threads.iter())
                .map(|(new, old)| pick(new).saturating_sub(pick(old)) as f64)
                .sum::<f64>()
                / nanos
        };
        let busy = delta(|times| times.ran);
        let waiting = delta(|times| times.waited);

        let settled = self.moved.is_none_or(|at| now.saturating_duration_since(at) >= SETTLE);
        match decide(self.shared.is_some(), settled, busy, waiting) {
            Move::Stay => return,
            Move::Share => self.share(busy),
            Move::Spread => self.spread(busy, waiting),
        }
        self.moved = Some(now);
    }

    fn share(&mut self, busy: f64) {
        let Ok(cpu) = sched_getcpu() else {
            tracing::debug!("thread placement off: cannot tell which CPU this thread runs on");
            self.active = false;
            return;
        };
        let mut single_cpu = CpuSet::new();
        if single_cpu.set(cpu).is_err() {
            self.active = false;
            return;
        }
        for (moved, tid) in self.threads.into_iter().enumerate() {
            if let Err(err) = sched_setaffinity(tid, &single_cpu) {
                tracing::warn!(error = %err, %tid, "cannot move a thread to one CPU; thread placement off");
                // Threads pinned before the failure get every CPU back.
                for pinned in &self.threads[..moved] {
                    if let Err(err) = sched_setaffinity(*pinned, &self.allowed) {
                        tracing::warn!(error = %err, tid = %pinned, "cannot give a thread back every CPU");
                    }
                }
                self.active = false;
                return;
            }
        }
        self.shared = Some(cpu);
        tracing::debug!(cpu, load = busy, "connection and engine threads now share one CPU");
    }

    fn spread(&mut self, busy: f64, waiting: f64) {
        // A failure for one thread must not leave the other one pinned.
        let mut failed = false;
        for tid in self.threads {
            if let Err(err) = sched_setaffinity(tid, &self.allowed) {
                tracing::warn!(error = %err, %tid, "cannot give a thread back every CPU; thread placement off");
                failed = true;
            }
        }
        self.shared = None;
        if failed {
            self.active = false;
            return;
        }
        tracing::debug!(
            load = busy,
            waiting,
            "connection and engine threads spread over every CPU again"
        );
    }

    /// Takes a CPU mask that someone else set on the connection thread, such
    /// as an administrator with `taskset -p` or the kernel when a CPU goes
    /// offline, as the agent's CPUs from now on. The engine thread gets the
    /// same mask, and placement turns off when the mask contains one CPU only.
    /// Returns true after such a change.
    fn follow_outside_change(&mut self) -> bool {
        let Ok(current) = sched_getaffinity(self.threads[0]) else {
            return false;
        };
        let current_cpus = cpus_in(&current);
        let expected_cpus = match self.shared {
            Some(cpu) => vec![cpu],
            None => cpus_in(&self.allowed),
        };
        if current_cpus == expected_cpus {
            return false;
        }

        tracing::info!(
            cpus = ?current_cpus,
            "the connection thread's CPU mask was changed from outside; the agent keeps it"
        );
        self.allowed = current;
        *self.blocking_mask.lock().unwrap_or_else(PoisonError::into_inner) = current;
        self.shared = None;
        if let Err(err) = sched_setaffinity(self.threads[1], &current) {
            tracing::warn!(error = %err, "cannot give the engine thread the new CPU mask; thread placement off");
            self.active = false;
        }
        if current_cpus.len() < 2 {
            tracing::info!("thread placement off: the agent may use one CPU only");
            self.active = false;
        }
        true
    }

    /// Turns placement off, spreading the threads first if they share a CPU.
    fn stop(&mut self) {
        if self.shared.is_some() {
            self.spread(0.0, 0.0);
        }
        self.active = false;
    }
}

/// Lists the CPUs in `set`, in ascending order.
fn cpus_in(set: &CpuSet) -> Vec<usize> {
    (0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn light_load_moves_onto_one_cpu() {
        assert_eq!(decide(false, true, 0.1, 0.0), Move::Share);
        assert_eq!(
            decide(false, true, SHARE_BELOW - 0.01, SHARE_WAIT_BELOW - 0.01),
            Move::Share
        );
    }

    #[test]
    fn load_between_the_limits_changes_nothing() {
        // The gap between the two limits keeps the threads from moving back
        // and forth at a steady load.
        for busy in [SHARE_BELOW, 0.6, SPREAD_ABOVE] {
            assert_eq!(decide(false, true, busy, 0.0), Move::Stay, "spread at {busy}");
            assert_eq!(decide(true, true, busy, 0.0), Move::Stay, "shared at {busy}");
        }
        for waiting in [SHARE_WAIT_BELOW, 0.2, WAIT_ABOVE] {
            assert_eq!(
                decide(false, true, 0.1, waiting),
                Move::Stay,
                "spread, waiting {waiting}"
            );
            assert_eq!(
                decide(true, true, 0.1, waiting),
                Move::Stay,
                "shared, waiting {waiting}"
            );
        }
    }

    #[test]
    fn heavy_load_or_waiting_spreads() {
        assert_eq!(decide(true, true, SPREAD_ABOVE + 0.01, 0.0), Move::Spread);
        assert_eq!(decide(true, true, 0.1, WAIT_ABOVE + 0.01), Move::Spread);
    }

    #[test]
    fn only_heavy_load_moves_threads_that_just_moved() {
        assert_eq!(decide(false, false, 0.1, 0.0), Move::Stay);
        assert_eq!(decide(true, false, 0.1, WAIT_ABOVE + 0.01), Move::Stay);
        assert_eq!(decide(true, false, SPREAD_ABOVE + 0.01, 0.0), Move::Spread);
    }

    #[test]
    fn schedstat_fields_parse() {
        assert_eq!(
            Times::parse("123456 7890 42\n"),
            Some(Times {
                ran: 123_456,
                waited: 7890
            })
        );
        assert_eq!(Times::parse("12"), None);
        assert_eq!(Times::parse("x 1 2"), None);
        assert_eq!(Times::parse(""), None);
    }

    #[test]
    fn own_thread_times_are_readable() {
        let times = Times::read(nix::unistd::gettid());
        // Kernels without scheduler statistics have no schedstat file; the
        // agent then leaves placement to the kernel.
        if std::path::Path::new("/proc/thread-self/schedstat").exists() {
            assert!(times.is_some());
        }
    }

    #[test]
    fn sharing_and_spreading_move_real_threads() {
        let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let cpus = cpus_in(&allowed).len();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid()).unwrap();
            let _ = stop_rx.recv();
        });
        let engine = tid_rx.recv().unwrap();
        let mut placement = Placement::new(engine, true);
        if cpus < 2 {
            assert!(!placement.active);
            drop(stop_tx);
            other.join().unwrap();
            return;
        }

        placement.share(0.0);
        let cpu = placement.shared_cpu().unwrap();
        for tid in placement.threads {
            assert_eq!(cpus_in(&sched_getaffinity(tid).unwrap()), vec![cpu]);
        }

        placement.spread(0.0, 0.0);
        assert_eq!(placement.shared_cpu(), None);
        for tid in placement.threads {
            assert_eq!(cpus_in(&sched_getaffinity(tid).unwrap()).len(), cpus);
        }

        drop(stop_tx);
        other.join().unwrap();
    }

    /// Returns how many CPUs this test may use, or `None` when there are
    /// fewer than two, which leaves nothing to place.
    fn two_or_more_cpus() -> Option<usize> {
        let cpus = cpus_in(&sched_getaffinity(Pid::from_raw(0)).unwrap()).len();
        (cpus >= 2).then_some(cpus)
    }

    #[test]
    fn blocking_threads_get_every_cpu_back() {
        let Some(cpus) = two_or_more_cpus() else {
            return;
        };
        // This test thread plays both threads, so sharing pins it alone.
        let mut placement = Placement::new(nix::unistd::gettid(), true);
        let runtime = placement.build_runtime().unwrap();
        placement.share(0.0);
        assert!(placement.shared_cpu().is_some());

        let blocking_mask = runtime
            .block_on(async { tokio::task::spawn_blocking(|| sched_getaffinity(Pid::from_raw(0))).await })
            .unwrap()
            .unwrap();
        placement.spread(0.0, 0.0);

        assert_eq!(cpus_in(&blocking_mask).len(), cpus);
    }

    #[test]
    fn failed_share_leaves_no_thread_pinned() {
        let Some(cpus) = two_or_more_cpus() else {
            return;
        };
        // The engine thread has exited, so pinning it fails with ESRCH
        // after the connection thread, this one, was pinned.
        let exited_tid = std::thread::spawn(nix::unistd::gettid).join().unwrap();
        let mut placement = Placement::new(exited_tid, true);

        placement.share(0.0);

        assert_eq!(placement.shared_cpu(), None);
        assert!(!placement.active);
        let mask = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let count = (0..CpuSet::count()).filter(|&cpu| mask.is_set(cpu).unwrap()).count();
        assert_eq!(count, cpus);
    }

    #[test]
    fn mask_set_from_outside_is_kept() {
        let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let cpus = cpus_in(&allowed);
        if cpus.len() < 2 {
            return;
        }
        // This test thread plays both threads.
        let mut placement = Placement::new(nix::unistd::gettid(), true);
        placement.share(0.0);
        let shared = placement.shared_cpu().unwrap();
        let other = *cpus.iter().find(|&&cpu| cpu != shared).unwrap();
        // What `taskset -p -c OTHER PID` does to the connection thread.
        let mut outside = CpuSet::new();
        outside.set(other).unwrap();
        sched_setaffinity(Pid::from_raw(0), &outside).unwrap();

        assert!(placement.follow_outside_change());

        assert_eq!(placement.shared_cpu(), None);
        assert_eq!(cpus_in(&placement.allowed), vec![other]);
        assert!(!placement.active, "one CPU left, so placement is off");
        placement.stop();
        assert_eq!(cpus_in(&sched_getaffinity(Pid::from_raw(0)).unwrap()), vec![other]);
        assert!(!placement.follow_outside_change());
        sched_setaffinity(Pid::from_raw(0), &allowed).unwrap();
    }

    #[test]
    fn ticks_within_the_interval_do_nothing() {
        let mut placement = Placement::new(nix::unistd::gettid(), true);
        let start = Instant::now();
        placement.tick(start);
        let first = placement.last.map(|sample| sample.at);
        placement.tick(start + INTERVAL / 2);
        assert_eq!(placement.last.map(|sample| sample.at), first);
    }

    #[test]
    fn turned_off_placement_never_moves_threads() {
        let mut placement = Placement::new(nix::unistd::gettid(), false);
        let start = Instant::now();
        placement.tick(start);
        placement.tick(start + INTERVAL * 2);
        assert_eq!(placement.shared_cpu(), None);
        assert!(placement.last.is_none());
    }
}
