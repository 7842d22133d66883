//! `freeauth-bench-floors`: measures what this machine charges for the two
//! things every FreeAuth accept needs and no code change removes: a durable
//! write, and a hand-off between threads or processes.
//!
//! The agent replies "accepted" only after the new token state is on disk,
//! and a login crosses at least two processes (the PAM module or the RADIUS
//! bridge, and the agent). So the latency of a 4 KiB write made durable, and
//! the round trip of a message between two threads, set floors under the
//! benchmark figures in `docs/`. Run it on the filesystem of the agent's
//! state folder to see those floors on another host.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Size of each write: one SQLite page, and one page of the Linux page cache.
const BLOCK: usize = 4096;

/// Blocks each writer thread owns in the file of the concurrent test.
const BLOCKS_PER_THREAD: u64 = 256;

/// Measures durable 4 KiB writes and thread round trips on this machine:
/// floors under the FreeAuth benchmarks.
#[derive(Parser, Debug)]
struct Args {
    /// Folder for the test file, on the filesystem to measure. Use one on the
    /// filesystem of the agent's state folder [default: $TMPDIR or /tmp].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Durable writes per test.
    #[arg(long, default_value_t = 2000)]
    writes: usize,
    /// Round trips per thread placement.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from));
    match run(&args, &dir) {
        // A reader that closed the pipe early (`| head`) wanted no more.
        Ok(()) | Err(Failure::OutputClosed) => ExitCode::SUCCESS,
        Err(Failure::Message(err)) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

/// Reason for stopping the measurements.
enum Failure {
    /// Standard output was closed by its reader.
    OutputClosed,
    Message(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Message(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::Message(message.to_owned())
    }
}

/// Writes one line to standard output. Unlike `println!`, it returns an
/// error instead of panicking when the reader has closed the pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*).map_err(|err| match err.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::OutputClosed,
            _ => Failure::Message(format!("cannot write to standard output: {err}")),
        })
    };
}

fn run(args: &Args, dir: &Path) -> Result<(), Failure> {
    if args.writes == 0 || args.round_trips == 0 {
        return Err("--writes and --round-trips must be at least 1".into());
    }
    let folder = tempfile::Builder::new()
        .prefix("freeauth-floors-")
        .tempdir_in(dir)
        .map_err(|err| format!("cannot create a folder in {}: {err}", dir.display()))?;
    let path = folder.path().join("blocks");

    out!("## Durable 4 KiB writes in {}\n", dir.display())?;
    out!("| write | count | p50 µs | p90 µs | p99 µs | writes/s, one at a time |")?;
    out!("|---|---:|---:|---:|---:|---:|")?;
    for mode in [
        Mode::Append,
        Mode::Overwrite,
        Mode::OverwriteDsync,
        Mode::OverwriteDirectDsync,
    ] {
        match durable_writes(&path, mode, args.writes) {
            Ok(times) => print_row(mode.describe(), &times)?,
            Err(err) => out!("| {} | - | - | - | - | not measured: {err} |", mode.describe())?,
        }
    }

    out!("\n## fdatasync from several threads on one file\n")?;
    out!("Each thread rewrites its own blocks and calls fdatasync after each write.\n")?;
    out!("| threads | syncs/s, all threads | p50 µs | p99 µs |")?;
    out!("|---:|---:|---:|---:|")?;
    for threads in [1, 2, 4] {
        let (rate, times) = concurrent_syncs(&path, threads, args.writes)?;
        out!(
            "| {threads} | {rate:.0} | {:.1} | {:.1} |",
            percentile(&times, 0.50),
            percentile(&times, 0.99)
        )?;
    }

    out!("\n## Round trip of one byte between two threads (Unix socket pair)\n")?;
    out!("| placement | round trips | µs per round trip |")?;
    out!("|---|---:|---:|")?;
    let cpus = allowed_cpus()?;
    let first = cpus[0];
    let same = round_trip(args.round_trips, Some((first, first)))?;
    out!("| both threads on CPU {first} | {} | {same:.1} |", args.round_trips)?;
    match cpus.get(1) {
        Some(&second) => {
            let apart = round_trip(args.round_trips, Some((first, second)))?;
            out!("| CPU {first} and CPU {second} | {} | {apart:.1} |", args.round_trips)?;
        }
        None => out!("| two CPUs | - | not measured: this process may use one CPU only |")?,
    }
    let free = round_trip(args.round_trips, None)?;
    out!(
        "| wherever the scheduler puts them | {} | {free:.1} |",
        args.round_trips
    )?;
    Ok(())
}

/// A way of making a 4 KiB write durable.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `pwrite` past the end of the file, then `fdatasync`: the file grows,
    /// so the sync also writes the inode's new size.
    Append,
    /// `pwrite` over a block written and synced before, then `fdatasync`.
    Overwrite,
    /// `pwrite` over a written block, on a file opened with `O_DSYNC`.
    OverwriteDsync,
    /// The same with `O_DIRECT` too, which bypasses the page cache.
    OverwriteDirectDsync,
}

impl Mode {
    fn describe(self) -> &'static str {
        match self {
            Mode::Append => "append, then fdatasync",
            Mode::Overwrite => "overwrite, then fdatasync",
            Mode::OverwriteDsync => "overwrite with O_DSYNC",
            Mode::OverwriteDirectDsync => "overwrite with O_DIRECT and O_DSYNC",
        }
    }
}

/// Times `count` durable writes of one block in `mode`, each from `pwrite`
/// to the end of its sync.
fn durable_writes(path: &Path, mode: Mode, count: usize) -> Result<Vec<f64>, String> {
    let _ = std::fs::remove_file(path);
    let blocks = u64::try_from(count).map_err(|_| "too many writes")?;
    if !matches!(mode, Mode::Append) {
        prefill(path, blocks)?;
    }
    let flags = match mode {
        Mode::Append | Mode::Overwrite => 0,
        Mode::OverwriteDsync => libc::O_DSYNC,
        Mode::OverwriteDirectDsync => libc::O_DSYNC | libc::O_DIRECT,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(flags)
        .open(path)
        .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
    let block = AlignedBlock::new();
    let sync_after = matches!(mode, Mode::Append | Mode::Overwrite);
    let mut times = Vec::with_capacity(count);
    for index in 0..blocks {
        let started = Instant::now();
        file.write_all_at(block.bytes(), index * BLOCK as u64)
            .map_err(|err| format!("write failed: {err}"))?;
        if sync_after {
            file.sync_data().map_err(|err| format!("fdatasync failed: {err}"))?;
        }
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(times)
}

/// Writes `blocks` blocks of zeros to a new file at `path` and syncs it, so
/// that later writes overwrite allocated, written blocks.
fn prefill(path: &Path, blocks: u64) -> Result<(), String> {
    let mut file = File::create(path).map_err(|err| format!("cannot create {}: {err}", path.display()))?;
    let zeros = vec![0u8; BLOCK];
    for _ in 0..blocks {
        file.write_all(&zeros)
            .map_err(|err| format!("cannot fill {}: {err}", path.display()))?;
    }
    file.sync_all()
        .map_err(|err| format!("cannot sync {}: {err}", path.display()))
}

/// Runs `threads` threads that each rewrite their own blocks of one file
/// with `fdatasync` after each write, `writes` times in all. Returns the
/// syncs per second of all threads together and the time of each write.
fn concurrent_syncs(path: &Path, threads: usize, writes: usize) -> Result<(f64, Vec<f64>), String> {
    let thread_count = u64::try_from(threads).map_err(|_| "too many threads")?;
    let _ = std::fs::remove_file(path);
    prefill(path, thread_count * BLOCKS_PER_THREAD)?;
    let file = Arc::new(
        OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|err| format!("cannot open {}: {err}", path.display()))?,
    );
    let per_thread = writes.div_ceil(threads);
    let started = Instant::now();
    let workers: Vec<_> = (0..thread_count)
        .map(|worker| {
            let file = Arc::clone(&file);
            thread::spawn(move || -> Result<Vec<f64>, String> {
                let block = [1u8; BLOCK];
                let mut times = Vec::with_capacity(per_thread);
                for round in 0..per_thread as u64 {
                    let offset = (worker * BLOCKS_PER_THREAD + round % BLOCKS_PER_THREAD) * BLOCK as u64;
                    let write_started = Instant::now();
                    file.write_all_at(&block, offset)
                        .map_err(|err| format!("write failed: {err}"))?;
                    file.sync_data().map_err(|err| format!("fdatasync failed: {err}"))?;
                    times.push(write_started.elapsed().as_secs_f64() * 1e6);
                }
                Ok(times)
            })
        })
        .collect();
    let mut times = Vec::with_capacity(per_thread * threads);
    for worker in workers {
        let done = worker.join().map_err(|_| "a writer thread panicked".to_string())??;
        times.extend(done);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((times.len() as f64 / elapsed, times))
}

/// Sends one byte back and forth `count` times between two new threads over
/// a Unix socket pair, with the threads pinned to `cpus` when given. Returns
/// the mean round trip in µs.
fn round_trip(count: usize, cpus: Option<(usize, usize)>) -> Result<f64, String> {
    let (mut near, mut far) = UnixStream::pair().map_err(|err| format!("cannot create a socket pair: {err}"))?;
    let echo = thread::spawn(move || -> Result<(), String> {
        if let Some((_, cpu)) = cpus {
            pin_to(cpu)?;
        }
        let mut byte = [0u8; 1];
        for _ in 0..count {
            far.read_exact(&mut byte)
                .map_err(|err| format!("echo read failed: {err}"))?;
            far.write_all(&byte)
                .map_err(|err| format!("echo write failed: {err}"))?;
        }
        Ok(())
    });
    let sender = thread::spawn(move || -> Result<Duration, String> {
        if let Some((cpu, _)) = cpus {
            pin_to(cpu)?;
        }
        let mut byte = [7u8; 1];
        let started = Instant::now();
        for _ in 0..count {
            near.write_all(&byte).map_err(|err| format!("write failed: {err}"))?;
            near.read_exact(&mut byte)
                .map_err(|err| format!("read failed: {err}"))?;
        }
        Ok(started.elapsed())
    });
    // A failed sender drops its end of the pair, so the echo thread's read
    // fails and both joins return.
    let elapsed = sender.join().map_err(|_| "the sending thread panicked".to_string())?;
    let echoed = echo.join().map_err(|_| "the echo thread panicked".to_string())?;
    let elapsed = elapsed?;
    echoed?;
    Ok(elapsed.as_secs_f64() * 1e6 / count as f64)
}

/// Returns the CPUs this process may run on, in order.
fn allowed_cpus() -> Result<Vec<usize>, String> {
    let mask = sched_getaffinity(Pid::from_raw(0)).map_err(|err| format!("sched_getaffinity failed: {err}"))?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&cpu| mask.is_set(cpu).unwrap_or(false))
        .collect();
    if cpus.is_empty() {
        return Err("sched_getaffinity returned no CPU".into());
    }
    Ok(cpus)
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<(), String> {
    let mut mask = CpuSet::new();
    mask.set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &mask))
        .map_err(|err| format!("cannot pin a thread to CPU {cpu}: {err}"))
}

/// One block in memory aligned to 4096 bytes, as `O_DIRECT` requires.
struct AlignedBlock {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBlock {
    fn new() -> AlignedBlock {
        let storage = vec![1u8; 2 * BLOCK];
        let start = (BLOCK - storage.as_ptr() as usize % BLOCK) % BLOCK;
        AlignedBlock { storage, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + BLOCK]
    }
}

fn print_row(label: &str, times: &[f64]) -> Result<(), Failure> {
    let median = percentile(times, 0.50);
    out!(
        "| {label} | {} | {median:.1} | {:.1} | {:.1} | {:.0} |",
        times.len(),
        percentile(times, 0.90),
        percentile(times, 0.99),
        1e6 / median
    )
}

/// Returns the nearest-rank percentile `rank` (0 to 1) of `values`.
fn percentile(values: &[f64], rank: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((rank * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let values = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&values, 0.50), 3.0);
        assert_eq!(percentile(&values, 0.99), 5.0);
        assert_eq!(percentile(&values, 0.0), 1.0);
    }

    #[test]
    fn aligned_block_starts_on_a_page() {
        let block = AlignedBlock::new();
        assert_eq!(block.bytes().as_ptr() as usize % BLOCK, 0);
        assert_eq!(block.bytes().len(), BLOCK);
    }
}
