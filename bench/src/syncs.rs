//! Optional count of the agent's `fsync` and `fdatasync` calls during the
//! measured window, with `perf stat` on the syscall tracepoints. The engine
//! commits one transaction per batch of requests, and SQLite in WAL mode with
//! `synchronous = FULL` syncs the WAL once per commit, so accepts per sync
//! estimate the batch size from below: WAL checkpoints add syncs of their own.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const EVENTS: &str = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync";

/// Sync calls the agent made while `perf stat` watched it.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncCounts {
    pub fsync: u64,
    pub fdatasync: u64,
}

impl SyncCounts {
    pub fn total(&self) -> u64 {
        self.fsync + self.fdatasync
    }
}

/// Counts the sync calls of process `pid` for `duration`, writing perf's
/// output to `output`. Returns after `duration`, or fails if perf fails or
/// takes 10 s longer, in which case it is killed.
pub fn count(pid: u32, duration: Duration, output: &Path) -> Result<SyncCounts, String> {
    let mut child = Command::new("perf")
        .args(["stat", "-x,", "-e", EVENTS, "-o"])
        .arg(output)
        .arg("-p")
        .arg(pid.to_string())
        .arg("--")
        .arg("sleep")
        .arg(duration.as_secs_f64().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run perf ({err}); install it or leave out --count-syncs"))?;
    let deadline = Instant::now() + duration + Duration::from_secs(10);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "perf stat did not finish within {} s; killed it",
                    duration.as_secs() + 10
                ));
            }
            Err(err) => return Err(format!("cannot wait for perf: {err}")),
        }
    };
    if !status.success() {
        let mut message = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_string(&mut message);
        }
        return Err(format!("perf stat failed with {status}: {}", message.trim()));
    }
    parse(&fs::read_to_string(output).map_err(|err| format!("cannot read {}: {err}", output.display()))?)
}

/// Reads perf's CSV lines (`count,unit,event,…`).
fn parse(text: &str) -> Result<SyncCounts, String> {
    let mut counts = SyncCounts::default();
    let mut found = 0;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(value), Some(event)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let slot = match *event {
            "syscalls:sys_enter_fsync" => &mut counts.fsync,
            "syscalls:sys_enter_fdatasync" => &mut counts.fdatasync,
            _ => continue,
        };
        *slot = value
            .parse()
            .map_err(|_| format!("perf reported {value:?} for {event}; is the tracepoint available?"))?;
        found += 1;
    }
    if found != 2 {
        return Err(format!("perf output lacks the counts of {EVENTS}:\n{text}"));
    }
    Ok(counts)
}

/// Returns where perf writes its output: inside the agent's temporary folder.
pub fn output_path(folder: &Path) -> PathBuf {
    folder.join("perf-syncs.csv")
}
