//! CPU use during the measured window, split between the agent, this
//! benchmark and everything else on the machine, from `/proc/stat` and
//! `/proc/PID/stat`. The client shares the machine with the agent, so a busy
//! neighbour (a build, another test) shows here and explains a slow run.

use std::fs;

/// CPU time counters at one instant, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    /// All CPUs together, idle included.
    machine_total: u64,
    /// All CPUs together, idle and I/O wait excluded.
    machine_busy: u64,
    agent: u64,
    bench: u64,
    cpus: u32,
}

/// CPU use over an interval, in cores (1.0 is one core fully busy).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub agent: f64,
    pub bench: f64,
    /// Busy time of all other processes and the kernel outside them.
    pub other: f64,
    pub cpus: u32,
}

impl CpuSample {
    /// Reads the counters of the machine, of `agent_pid` and of this process.
    pub fn take(agent_pid: u32) -> Result<CpuSample, String> {
        let stat = fs::read_to_string("/proc/stat").map_err(|err| format!("cannot read /proc/stat: {err}"))?;
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("cpu "))
            .ok_or("/proc/stat does not start with a cpu line")?
            .split_whitespace()
            .map(|field| field.parse().map_err(|_| format!("invalid /proc/stat field {field:?}")))
            .collect::<Result<_, _>>()?;
        // The fields are user, nice, system, idle, iowait, irq, softirq and
        // steal. Guest time is already part of user and nice.
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
            return Err("the cpu line of /proc/stat has fewer than 8 fields".into());
        };
        let machine_total = user + nice + system + idle + iowait + irq + softirq + steal;
        let cpus = stat
            .lines()
            .filter(|line| line.starts_with("cpu") && !line.starts_with("cpu "))
            .count();
        Ok(CpuSample {
            machine_total,
            machine_busy: machine_total - idle - iowait,
            agent: process_ticks(&agent_pid.to_string())?,
            bench: process_ticks("self")?,
            cpus: u32::try_from(cpus).unwrap_or(1).max(1),
        })
    }

    /// CPU use between `self` and the later sample `end`.
    pub fn until(&self, end: &CpuSample) -> CpuUse {
        let total = end.machine_total.saturating_sub(self.machine_total).max(1) as f64;
        let cores = |ticks: u64| ticks as f64 / total * f64::from(end.cpus);
        let agent = end.agent.saturating_sub(self.agent);
        let bench = end.bench.saturating_sub(self.bench);
        let busy = end.machine_busy.saturating_sub(self.machine_busy);
        CpuUse {
            agent: cores(agent),
            bench: cores(bench),
            other: cores(busy.saturating_sub(agent + bench)),
            cpus: end.cpus,
        }
    }
}

/// User plus system time of process `pid` (a number or `self`), all threads.
fn process_ticks(pid: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(|err| format!("cannot read {path}: {err}"))?;
    // The command name in brackets may contain spaces, so fields are split
    // after the last ')'.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or(format!("{path} has no command name"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5). Field 3 is the first here.
    let ticks = |index: usize| -> Result<u64, String> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| format!("{path} has no valid field {}", index + 3))
    };
    Ok(ticks(11)? + ticks(12)?)
}
