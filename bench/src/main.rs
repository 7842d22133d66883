//! `freeauth-bench-agent`: measures the release `freeauth-agentd` under a
//! verification load, for several token counts, each with a fresh agent in
//! its own temporary folder.
//!
//! For each count it imports that many HOTP tokens through the admin socket,
//! drives K connections with P pipelined verifications each through the
//! agent socket, and reports accepts per second, latency percentiles and the
//! agent's resident memory. `bench/run-agent-bench.sh` builds and runs it;
//! `docs/benchmarks.md` records the results.

mod agent;
mod cpu;
mod load;
mod populate;
mod report;
mod syncs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use freeauth_proto::{Client, Request, Response};

use crate::agent::{AgentBinary, AgentSettings, RunningAgent};
use crate::cpu::{CpuSample, CpuUse};
use crate::load::{LoadSettings, Schedule};
use crate::populate::Tokens;
use crate::report::{Latency, RunResult};

/// Largest `max_in_flight` the agent's configuration accepts.
const MAX_IN_FLIGHT: usize = 65_536;

/// Benchmark of freeauth-agentd: durable HOTP verifications per second,
/// latency and resident memory, for several numbers of tokens.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Numbers of tokens to measure, comma-separated, each with a fresh agent.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    tokens: Vec<usize>,
    /// Connections to the agent socket.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Verify requests each connection keeps in flight.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Tokens per import request. A request must fit in the 1 MiB frame cap,
    /// at about 210 bytes per token.
    #[arg(long, default_value_t = 2000)]
    import_chunk: usize,
    /// Path of freeauth-agentd [default: next to this program].
    #[arg(long)]
    agentd: Option<PathBuf>,
    /// Log level of the agent. At `info`, the package default, it logs one
    /// line per verification.
    #[arg(long, default_value = "info")]
    agent_log_level: String,
    /// Count the agent's fsync and fdatasync calls in the measured window
    /// with `perf stat`, to estimate how many requests each commit carries.
    #[arg(long)]
    count_syncs: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("freeauth-bench-agent: {err}");
            ExitCode::from(2)
        }
    }
}

/// Runs every token count, then prints the table and the targets. Returns
/// false if any response was not an accepted verdict.
fn run(args: &Args) -> Result<bool, String> {
    check_args(args)?;
    let original = agentd_path(args)?;
    let binary = AgentBinary::copy_of(&original)?;
    println!("agent {} (SHA-256 {})", original.display(), binary.sha256);
    let settings = AgentSettings {
        binary: binary.path.clone(),
        max_in_flight: args.in_flight.max(256),
        log_level: args.agent_log_level.clone(),
    };
    println!(
        "{} connections x {} requests in flight; warm-up {} s, measured {} s; agent log_level {}",
        args.connections, args.in_flight, args.warmup, args.duration, settings.log_level
    );
    let mut runs = Vec::new();
    for &count in &args.tokens {
        let result = measure(args, &settings, count)?;
        report::print_line(&result);
        runs.push(result);
    }
    println!();
    report::print_table(&runs);
    println!();
    report::print_targets(&runs);
    let errors: u64 = runs.iter().map(|run| run.errors).sum();
    if errors > 0 {
        println!("{errors} responses were not accepted verdicts, so the figures above are not valid");
    }
    Ok(errors == 0)
}

fn check_args(args: &Args) -> Result<(), String> {
    if args.tokens.is_empty() {
        return Err("--tokens needs at least one number".into());
    }
    if args.connections == 0 || args.in_flight == 0 || args.duration == 0 || args.import_chunk == 0 {
        return Err("--connections, --in-flight, --duration and --import-chunk must be at least 1".into());
    }
    if args.in_flight > MAX_IN_FLIGHT {
        return Err(format!(
            "--in-flight must be at most {MAX_IN_FLIGHT}, the agent's limit"
        ));
    }
    let needed = args.connections * args.in_flight;
    if let Some(count) = args.tokens.iter().find(|&&count| count < needed) {
        return Err(format!(
            "--tokens {count} is too small: {} connections x {} requests in flight need at least {needed} users, \
             because no user may have two requests in flight",
            args.connections, args.in_flight
        ));
    }
    Ok(())
}

/// Returns the agent binary: `--agentd`, else `freeauth-agentd` next to this
/// program.
fn agentd_path(args: &Args) -> Result<PathBuf, String> {
    let path = match &args.agentd {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|err| format!("cannot find this program's path: {err}"))?
            .with_file_name("freeauth-agentd"),
    };
    if !path.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release -p freeauth-agentd` or pass --agentd",
            path.display()
        ));
    }
    Ok(path)
}

/// Measures one token count with a fresh agent, which is stopped and whose
/// folder is removed before this returns, on success and on error.
fn measure(args: &Args, settings: &AgentSettings, count: usize) -> Result<RunResult, String> {
    eprintln!("tokens={count}: generating seeds and starting the agent");
    let tokens = Tokens::generate(count)?;
    let agent = RunningAgent::start(settings)?;
    eprintln!("tokens={count}: agent {} in {}", agent.pid(), agent.folder().display());

    let population = populate::import(&agent.admin_socket(), &tokens, args.import_chunk)?;
    eprintln!(
        "tokens={count}: imported in {:.2} s; warming up for {} s",
        population.as_secs_f64(),
        args.warmup
    );

    let duration = Duration::from_secs(args.duration);
    let schedule = Schedule::starting_now(Duration::from_secs(args.warmup), duration);
    let load_settings = LoadSettings {
        connections: args.connections,
        in_flight: args.in_flight,
    };
    let (load, syncs, cpu) = thread::scope(|scope| {
        let pid = agent.pid();
        let cpu = scope.spawn(move || measure_cpu(pid, schedule));
        let counter = args.count_syncs.then(|| {
            let pid = agent.pid();
            let output = syncs::output_path(agent.folder());
            scope.spawn(move || {
                thread::sleep(schedule.measure_start.saturating_duration_since(Instant::now()));
                syncs::count(pid, duration, &output)
            })
        });
        let load = load::run(&agent.agent_socket(), &tokens, load_settings, schedule);
        let syncs = counter.map(|handle| handle.join().unwrap_or_else(|_| Err("the perf thread panicked".into())));
        let cpu = cpu
            .join()
            .unwrap_or_else(|_| Err("the CPU sampling thread panicked".into()));
        (load, syncs, cpu)
    });
    let mut load =
        load.map_err(|err| format!("tokens={count}: {err}\nend of the agent's log:\n{}", agent.log_tail()))?;
    let syncs = match syncs {
        Some(Ok(counts)) => Some(counts),
        Some(Err(err)) => {
            eprintln!("tokens={count}: counting syncs failed: {err}");
            None
        }
        None => None,
    };
    let cpu = cpu
        .map_err(|err| eprintln!("tokens={count}: measuring CPU use failed: {err}"))
        .ok();

    let memory = agent.memory()?;
    let wal_bytes = agent.wal_bytes()?;
    check_agent_count(&agent, load.accepted_total);
    for (description, times) in &load.errors {
        println!("tokens={count}: error x{times}: {description}");
    }
    agent.stop()?;

    Ok(RunResult {
        tokens: count,
        population,
        accepted: load.accepted,
        accepts_per_second: load.accepted as f64 / duration.as_secs_f64(),
        latency: Latency::of(&mut load.latencies_ns),
        errors: load.error_count(),
        memory,
        wal_bytes,
        syncs,
        cpu,
    })
}

/// Samples CPU time at the start and the end of the measured window.
fn measure_cpu(agent_pid: u32, schedule: Schedule) -> Result<CpuUse, String> {
    thread::sleep(schedule.measure_start.saturating_duration_since(Instant::now()));
    let start = CpuSample::take(agent_pid)?;
    thread::sleep(schedule.measure_end.saturating_duration_since(Instant::now()));
    let end = CpuSample::take(agent_pid)?;
    Ok(start.until(&end))
}

/// Compares the agent's own accept counter with the clients' count and
/// warns on a difference, which would mean the clients miscounted.
fn check_agent_count(agent: &RunningAgent, client_accepted: u64) {
    let status = Client::connect(&agent.admin_socket(), "freeauth-bench", Duration::from_secs(30))
        .and_then(|mut client| client.call(Request::Status {}));
    match status {
        Ok(Response::Status { status }) if status.accepted == client_accepted => {}
        Ok(Response::Status { status }) => eprintln!(
            "warning: the agent counted {} accepts, the clients {client_accepted}",
            status.accepted
        ),
        Ok(other) => eprintln!("warning: status request returned {other:?}"),
        Err(err) => eprintln!("warning: status request failed: {err}"),
    }
}
