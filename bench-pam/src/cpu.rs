//! CPU time per login of the benchmark process and of each agent thread,
//! from `/proc` before and after a loop. The rate of a loop moves with
//! whatever else the machine runs. The CPU time of a login moves much less,
//! so it shows where a change saves work.

use std::collections::BTreeMap;
use std::fs;
use std::io;

/// CPU time of every thread of one process, and its minor page faults.
pub struct Snapshot {
    /// Running time in nanoseconds by thread id, with the thread's name.
    threads: BTreeMap<u32, (String, u64)>,
    minor_faults: u64,
}

impl Snapshot {
    /// Reads `/proc/PID/task/*/schedstat` and `comm`, and the process's
    /// minor fault count from `/proc/PID/stat`.
    pub fn take(pid: u32) -> io::Result<Snapshot> {
        let mut threads = BTreeMap::new();
        for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
            let entry = entry?;
            let Some(tid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            // A thread that exits between the listing and these reads is
            // left out.
            let (Ok(comm), Ok(schedstat)) = (
                fs::read_to_string(entry.path().join("comm")),
                fs::read_to_string(entry.path().join("schedstat")),
            ) else {
                continue;
            };
            let Some(run_ns) = schedstat.split_whitespace().next().and_then(|field| field.parse().ok()) else {
                continue;
            };
            threads.insert(tid, (comm.trim().to_owned(), run_ns));
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Ok(Snapshot {
            threads,
            minor_faults: minor_faults(&stat).unwrap_or(0),
        })
    }
}

/// Field 10 of `/proc/PID/stat`. The name in field 2 may contain spaces and
/// parentheses, so the count starts after its last `)`.
fn minor_faults(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// CPU time per login of the threads of one process, summed by thread name.
pub struct Split {
    /// Thread name and microseconds of CPU per login, busiest first.
    pub threads: Vec<(String, f64)>,
    pub minor_faults: f64,
}

/// Divides the CPU time between two snapshots of one process by `logins`.
/// A thread that started between them counts from zero. A thread that
/// exited between them is missing from `after`, so its time is lost.
pub fn per_login(before: &Snapshot, after: &Snapshot, logins: u64) -> Split {
    let logins = logins.max(1) as f64;
    let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
    for (tid, (name, run_ns)) in &after.threads {
        let start = before.threads.get(tid).map_or(0, |(_, ns)| *ns);
        *by_name.entry(name).or_default() += run_ns.saturating_sub(start);
    }
    let mut threads: Vec<(String, f64)> = by_name
        .into_iter()
        .map(|(name, ns)| (name.to_owned(), ns as f64 / 1000.0 / logins))
        .filter(|(_, micros)| *micros >= 0.05)
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    Split {
        threads,
        minor_faults: after.minor_faults.saturating_sub(before.minor_faults) as f64 / logins,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn snapshot(threads: &[(u32, &str, u64)], minor_faults: u64) -> Snapshot {
        Snapshot {
            threads: threads
                .iter()
                .map(|(tid, name, ns)| (*tid, ((*name).to_owned(), *ns)))
                .collect(),
            minor_faults,
        }
    }

    #[test]
    fn minor_faults_after_odd_name() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 1234 0 0 0 5 6 0 0 20 0 1 0 100 0 0";
        assert_eq!(minor_faults(stat), Some(1234));
    }

    #[test]
    fn minor_faults_of_truncated_stat() {
        assert_eq!(minor_faults("42 (a) S 1"), None);
        assert_eq!(minor_faults("no parenthesis"), None);
    }

    #[test]
    fn per_login_sums_threads_by_name() {
        let before = snapshot(&[(1, "main", 1_000_000), (2, "worker", 0), (3, "worker", 500_000)], 10);
        let after = snapshot(
            &[
                (1, "main", 3_000_000),
                (2, "worker", 1_000_000),
                (3, "worker", 1_500_000),
                (4, "new", 400_000),
            ],
            50,
        );
        let split = per_login(&before, &after, 100);
        assert_eq!(split.threads.len(), 3);
        assert_eq!(split.threads[0], ("main".to_owned(), 20.0));
        assert_eq!(split.threads[1], ("worker".to_owned(), 20.0));
        assert_eq!(split.threads[2], ("new".to_owned(), 4.0));
        assert_eq!(split.minor_faults, 0.4);
    }

    #[test]
    fn per_login_of_no_logins_is_finite() {
        let before = snapshot(&[(1, "main", 0)], 0);
        let after = snapshot(&[(1, "main", 1_000)], 3);
        let split = per_login(&before, &after, 0);
        assert_eq!(split.threads, vec![("main".to_owned(), 1.0)]);
        assert_eq!(split.minor_faults, 3.0);
    }

    #[test]
    fn snapshot_of_this_process() {
        let snapshot = Snapshot::take(std::process::id()).unwrap();
        assert!(!snapshot.threads.is_empty());
        assert!(snapshot.minor_faults > 0);
    }
}
