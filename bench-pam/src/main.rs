//! `freeauth-bench-pam`: full PAM authentications per second and their
//! latency, pam_freeauth against oath-toolkit's pam_oath, in one process.
//!
//! For each population size the benchmark makes a temporary folder with
//! random HOTP users, starts `freeauth-agentd` there and imports them,
//! writes the same users into a pam_oath users file, and writes one PAM
//! service file per module. Each authentication is `pam_start_confdir`,
//! `pam_authenticate` and `pam_end` for a random user with that user's next
//! code, so every one is a fresh accept and anything else counts as an error.
//! It prints a Markdown table, the accept-rate ratio per size, and whether
//! the targets are met. `bench-pam/run.sh` builds and runs it.

mod agent;
mod cpu;
mod pam;
mod population;
mod probe;
mod run;
mod stats;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;

use crate::agent::Agent;
use crate::cpu::Snapshot;
use crate::pam::Service;
use crate::population::{Counters, Population};
use crate::probe::{time_steps, Steps, STEPS_HEADER};
use crate::run::{forked, parallel, replay_check, sequential, Limit, Replays, Target};
use crate::stats::{millis, Loops, Row, TABLE_HEADER};

/// Module label of pam_freeauth in the table.
const FREEAUTH: &str = "pam_freeauth";
/// Module label of pam_oath in the table.
const OATH: &str = "pam_oath";
/// Module label of pam_permit in the table.
const PERMIT: &str = "pam_permit";

/// Target: pam_freeauth's accept rate over pam_oath's at this many users.
const RATIO_TARGET_USERS: usize = 10_000;
const RATIO_TARGET: f64 = 10.0;
/// Target: pam_freeauth's p99 latency of one sequential authentication.
const P99_TARGET: Duration = Duration::from_millis(1);

/// Upper bound of `--processes`, so that a typing error cannot fork
/// thousands of processes.
const MAX_PROCESSES: usize = 64;

/// Time limit of each warm-up loop, whatever the value of `--warmup`.
const WARMUP_LIMIT: Duration = Duration::from_secs(3);

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Measures full PAM authentications (pam_start_confdir, pam_authenticate, pam_end) with pam_freeauth and pam_oath"
)]
struct Args {
    /// Population sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,10000,1000000")]
    users: Vec<usize>,

    /// Seconds of each measured loop.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,

    /// Seconds of the pam_oath loop [default: --duration].
    #[arg(long)]
    oath_duration: Option<f64>,

    /// Maximum pam_oath authentications per size; the loop also stops at
    /// --oath-duration.
    #[arg(long, default_value_t = 2000)]
    oath_max: u64,

    /// Threads of the extra multi-threaded pam_freeauth loop, each with its
    /// own PAM handles and users; 0 skips that loop.
    #[arg(long, default_value_t = 4)]
    threads: usize,

    /// Processes of the extra concurrent loops of both modules, each forked
    /// from this program with its own share of the users; 0 skips them.
    /// pam_oath's file lock keeps processes apart, not threads, so this is
    /// how the two modules compare under concurrent logins.
    #[arg(long, default_value_t = 4)]
    processes: usize,

    /// After each module's loops, send the last accepted code of up to this
    /// many users once more, one at a time, and count how many the module
    /// accepts again; 0 skips it. The agent delays each refusal by its
    /// failure_delay_ms (500 ms by default).
    #[arg(long, default_value_t = 20)]
    replay_users: usize,

    /// Unmeasured authentications per module before its loops (at most 3 s).
    #[arg(long, default_value_t = 20)]
    warmup: u64,

    /// Maximum iterations of the step timing of pam_freeauth's agent round
    /// trips (connect, lookup, verify), bounded by --duration too; 0 skips it.
    #[arg(long, default_value_t = 5000)]
    steps: u64,

    /// Tokens per Import request; each request must fit in 1 MiB.
    #[arg(long, default_value_t = 2000)]
    import_chunk: usize,

    /// pam_freeauth module [default: libpam_freeauth.so beside this program].
    #[arg(long)]
    freeauth_module: Option<PathBuf>,

    /// Agent binary [default: freeauth-agentd beside this program].
    #[arg(long)]
    agentd: Option<PathBuf>,

    /// pam_oath module of the libpam-oath package.
    #[arg(long, default_value = "/usr/lib/x86_64-linux-gnu/security/pam_oath.so")]
    oath_module: PathBuf,

    /// User the agent runs as, for pam_freeauth's agent_user= [default: this
    /// process's user].
    #[arg(long)]
    agent_user: Option<String>,

    /// The agent's log_level; at info it logs one line per verification, as
    /// a production agent does.
    #[arg(long, default_value = "info")]
    agent_log_level: String,

    /// Skip pam_oath (no ratio is printed then).
    #[arg(long)]
    skip_oath: bool,

    /// Also time a loop with Linux-PAM's pam_permit, which accepts without
    /// a prompt or any work: the cost of libpam and of loading one module,
    /// a floor for any module in this loop.
    #[arg(long)]
    floor: bool,

    /// pam_permit module, for --floor.
    #[arg(long, default_value = "/usr/lib/x86_64-linux-gnu/security/pam_permit.so")]
    permit_module: PathBuf,
}

/// Resolved programs and settings of a run.
struct Setup {
    freeauth_module: PathBuf,
    agentd: PathBuf,
    oath_module: Option<PathBuf>,
    agent_user: String,
}

/// Everything measured at one population size.
struct SizeReport {
    rows: Vec<Row>,
    steps: Option<Steps>,
    replays: Vec<(&'static str, Replays)>,
    cpu: Vec<CpuRow>,
}

/// CPU time per login of one process during a module's one-thread loop.
struct CpuRow {
    module: &'static str,
    process: &'static str,
    split: cpu::Split,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    check_args(args)?;
    let setup = resolve(args)?;
    println!("pam_freeauth module: {}", setup.freeauth_module.display());
    println!("agent: {} (running as {})", setup.agentd.display(), setup.agent_user);
    match &setup.oath_module {
        Some(path) => println!("pam_oath module: {}", path.display()),
        None => println!("pam_oath: skipped"),
    }
    let mut reports = Vec::new();
    for &users in &args.users {
        reports.push((users, measure_size(args, &setup, users)?));
    }
    print_summary(args, &reports);
    Ok(())
}

fn check_args(args: &Args) -> Result<(), String> {
    if args.users.is_empty() || args.users.contains(&0) {
        return Err("--users must list one or more sizes above 0".into());
    }
    let durations = [Some(args.duration), args.oath_duration];
    if durations
        .iter()
        .flatten()
        .any(|seconds| !(seconds.is_finite() && *seconds > 0.0))
    {
        return Err("--duration and --oath-duration must be positive numbers of seconds".into());
    }
    if args.import_chunk == 0 {
        return Err("--import-chunk must be at least 1".into());
    }
    if args.processes > MAX_PROCESSES {
        return Err(format!("--processes must be at most {MAX_PROCESSES}"));
    }
    Ok(())
}

/// Finds the module and agent beside this program unless given, as
/// absolute paths, and the agent's user name.
fn resolve(args: &Args) -> Result<Setup, String> {
    let exe = std::env::current_exe().map_err(|err| format!("cannot find this program's path: {err}"))?;
    let exe_dir = exe.parent().unwrap_or(Path::new("/")).to_owned();
    let freeauth_module = absolute_file(
        args.freeauth_module
            .clone()
            .unwrap_or_else(|| exe_dir.join("libpam_freeauth.so")),
        "cargo build --release -p pam_freeauth",
    )?;
    let agentd = absolute_file(
        args.agentd.clone().unwrap_or_else(|| exe_dir.join("freeauth-agentd")),
        "cargo build --release -p freeauth-agentd",
    )?;
    let oath_module = if args.skip_oath {
        None
    } else {
        Some(absolute_file(args.oath_module.clone(), "apt-get install libpam-oath")?)
    };
    let agent_user = match &args.agent_user {
        Some(name) => name.clone(),
        None => current_user()?,
    };
    Ok(Setup {
        freeauth_module,
        agentd,
        oath_module,
        agent_user,
    })
}

fn absolute_file(path: PathBuf, hint: &str) -> Result<PathBuf, String> {
    path.canonicalize().map_err(|err| {
        format!(
            "{} not found ({err}); build or install it with `{hint}`",
            path.display()
        )
    })
}

/// Returns the name of this process's effective user, from `id -un`.
fn current_user() -> Result<String, String> {
    let output = Command::new("id")
        .arg("-un")
        .output()
        .map_err(|err| format!("cannot run `id -un` for the agent user: {err}; pass --agent-user"))?;
    let name = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || name.is_empty() {
        return Err("`id -un` printed no user name; pass --agent-user".into());
    }
    Ok(name)
}

/// Converts checked seconds to a duration; values too large for one are
/// treated as no limit.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::MAX)
}

/// Populates both modules with `users` users and runs every loop.
fn measure_size(args: &Args, setup: &Setup, users: usize) -> Result<SizeReport, String> {
    let dir = tempfile::Builder::new()
        .prefix("freeauth-bench-pam-")
        .tempdir()
        .map_err(|err| format!("cannot create a temporary folder: {err}"))?;
    println!("\n== {users} users, in {}", dir.path().display());
    let population = Population::generate(users)?;
    let confdir = dir.path().join("pam.d");
    let users_oath = dir.path().join("users.oath");
    if setup.oath_module.is_some() {
        let took = population.write_users_oath(&users_oath)?;
        println!("users.oath written in {:.1} s", took.as_secs_f64());
    }

    let mut agent = Agent::start(&setup.agentd, dir.path(), &args.agent_log_level)?;
    println!("agent started, PID {}", agent.pid().unwrap_or(0));
    let took = population.import(&agent.admin_socket(), args.import_chunk)?;
    println!("agent import of {users} tokens took {:.1} s", took.as_secs_f64());

    let mut rows = Vec::new();
    let mut replays = Vec::new();
    let freeauth_service = Service::create(
        &confdir,
        "bench-freeauth",
        &setup.freeauth_module,
        &[
            format!("socket={}", agent.agent_socket().display()),
            format!("agent_user={}", setup.agent_user),
        ],
    )?;
    let freeauth_counters = Counters::new(users);
    let freeauth = Target {
        label: FREEAUTH,
        service: &freeauth_service,
        population: &population,
        counters: &freeauth_counters,
    };
    warm_up(args, &freeauth);
    let limit = Limit {
        duration: seconds(args.duration),
        max_attempts: u64::MAX,
    };
    let mut cpu = Vec::new();
    let processes = [
        Some(("benchmark", std::process::id())),
        agent.pid().map(|pid| ("agent", pid)),
    ];
    let (result, split) = with_cpu(&processes, || sequential(&freeauth, limit));
    cpu.extend(split.into_iter().map(|(process, split)| CpuRow {
        module: FREEAUTH,
        process,
        split,
    }));
    rows.push(measured_row(users, FREEAUTH, Loops::Threads(1), result));
    if args.threads > 0 {
        rows.push(measured_row(
            users,
            FREEAUTH,
            Loops::Threads(args.threads),
            parallel(&freeauth, limit, args.threads),
        ));
    }
    if args.processes > 0 {
        let result = forked(&freeauth, limit, args.processes)?;
        rows.push(measured_row(users, FREEAUTH, Loops::Processes(args.processes), result));
    }
    let steps = (args.steps > 0).then(|| {
        let limit = Limit {
            duration: seconds(args.duration),
            max_attempts: args.steps,
        };
        time_steps(&agent.agent_socket(), &population, &freeauth_counters, limit)
    });
    if args.replay_users > 0 {
        replays.push((FREEAUTH, replay_check(&freeauth, args.replay_users)));
    }

    if let Some(module) = &setup.oath_module {
        let oath_service = Service::create(
            &confdir,
            "bench-oath",
            module,
            &[format!("usersfile={}", users_oath.display()), "window=10".into()],
        )?;
        let limit = Limit {
            duration: seconds(args.oath_duration.unwrap_or(args.duration)),
            max_attempts: args.oath_max,
        };
        let counters = Counters::new(population.len());
        let oath = Target {
            label: OATH,
            service: &oath_service,
            population: &population,
            counters: &counters,
        };
        warm_up(args, &oath);
        let (result, split) = with_cpu(&[Some(("benchmark", std::process::id()))], || sequential(&oath, limit));
        cpu.extend(split.into_iter().map(|(process, split)| CpuRow {
            module: OATH,
            process,
            split,
        }));
        rows.push(measured_row(users, OATH, Loops::Threads(1), result));
        if args.processes > 0 {
            let result = forked(&oath, limit, args.processes)?;
            rows.push(measured_row(users, OATH, Loops::Processes(args.processes), result));
        }
        if args.replay_users > 0 {
            replays.push((OATH, replay_check(&oath, args.replay_users)));
        }
    }

    if args.floor {
        let permit_service = Service::create(&confdir, "bench-permit", &args.permit_module, &[])?.without_prompt();
        let limit = Limit {
            duration: seconds(args.duration),
            max_attempts: u64::MAX,
        };
        rows.push(one_thread_row(args, PERMIT, &permit_service, &population, limit));
    }

    print_sizes(dir.path(), &users_oath);
    agent.stop()?;
    dir.close()
        .map_err(|err| format!("cannot remove the temporary folder: {err}"))?;
    Ok(SizeReport {
        rows,
        steps,
        replays,
        cpu,
    })
}

/// Runs `body`, a loop, and returns its result with the CPU time per
/// accepted login of each named process. A process whose `/proc` files
/// cannot be read is left out, with a note.
fn with_cpu(
    processes: &[Option<(&'static str, u32)>],
    body: impl FnOnce() -> stats::RunResult,
) -> (stats::RunResult, Vec<(&'static str, cpu::Split)>) {
    let take = |name: &str, pid: u32| {
        Snapshot::take(pid)
            .map_err(|err| println!("cannot read the CPU time of the {name} process {pid}: {err}"))
            .ok()
    };
    let before: Vec<_> = processes
        .iter()
        .flatten()
        .filter_map(|(name, pid)| take(name, *pid).map(|snapshot| (*name, *pid, snapshot)))
        .collect();
    let result = body();
    let split = before
        .into_iter()
        .filter_map(|(name, pid, before)| {
            take(name, pid).map(|after| (name, cpu::per_login(&before, &after, result.accepted)))
        })
        .collect();
    (result, split)
}

/// Runs up to `--warmup` unmeasured authentications, so that the first
/// measured one does not pay for cold caches.
fn warm_up(args: &Args, target: &Target<'_>) {
    if args.warmup == 0 {
        return;
    }
    let limit = Limit {
        duration: WARMUP_LIMIT,
        max_attempts: args.warmup,
    };
    let result = sequential(target, limit);
    println!(
        "{} warm-up: {} accepted, {} errors",
        target.label, result.accepted, result.errors
    );
}

/// Warms up and measures the one-thread loop of the module behind
/// `service`, with counters of its own.
fn one_thread_row(args: &Args, label: &'static str, service: &Service, population: &Population, limit: Limit) -> Row {
    let counters = Counters::new(population.len());
    let target = Target {
        label,
        service,
        population,
        counters: &counters,
    };
    warm_up(args, &target);
    measured_row(population.len(), label, Loops::Threads(1), sequential(&target, limit))
}

fn measured_row(users: usize, module: &'static str, loops: Loops, mut result: stats::RunResult) -> Row {
    let latency = result.latency();
    let row = Row {
        users,
        module,
        loops,
        result,
        latency,
    };
    println!(
        "{module}, {loops}: {} accepted, {} errors in {:.2} s = {:.1} accepts/s, p50 {} ms, p99 {} ms",
        row.result.accepted,
        row.result.errors,
        row.result.elapsed.as_secs_f64(),
        row.result.accept_rate(),
        millis(row.latency.p50_ns),
        millis(row.latency.p99_ns),
    );
    row
}

/// Prints the sizes of the two stores after the loops.
fn print_sizes(dir: &Path, users_oath: &Path) {
    let size = |path: &Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let state = dir.join("state");
    let database = size(&state.join("freeauth.db")) + size(&state.join("freeauth.db-wal"));
    println!(
        "agent database with WAL: {:.1} MiB; users.oath: {:.1} MiB",
        database as f64 / 1048576.0,
        size(users_oath) as f64 / 1048576.0
    );
}

fn print_summary(args: &Args, reports: &[(usize, SizeReport)]) {
    println!("\n## Full PAM authentications (pam_start_confdir + pam_authenticate + pam_end)\n");
    println!("{TABLE_HEADER}");
    for (_, report) in reports {
        for row in &report.rows {
            println!("{}", row.markdown());
        }
    }

    if reports.iter().any(|(_, report)| report.steps.is_some()) {
        println!("\n## pam_freeauth's agent round trips, timed without libpam\n");
        println!("{STEPS_HEADER}");
        for (users, report) in reports {
            if let Some(steps) = &report.steps {
                steps.markdown(*users).iter().for_each(|line| println!("{line}"));
                if steps.errors > 0 {
                    println!("(step timing at {users} users: {} errors)", steps.errors);
                }
            }
        }
    }

    println!("\n## Ratio of accept rates, pam_freeauth (1 thread) / pam_oath\n");
    for (users, report) in reports {
        match ratio(report) {
            Some(ratio) => println!("- {users} users: {ratio:.1}x"),
            None => println!("- {users} users: no ratio (pam_oath skipped or accepted nothing)"),
        }
    }

    if args.processes > 0 {
        println!(
            "\n## Ratio of accept rates under concurrent logins, pam_freeauth / pam_oath, {} processes each (for information)\n",
            args.processes
        );
        let loops = Loops::Processes(args.processes);
        for (users, report) in reports {
            let errors = |module: &str| {
                report
                    .rows
                    .iter()
                    .find(|row| row.module == module && row.loops == loops)
                    .map_or(0, |row| row.result.errors)
            };
            let failed = format!(
                "fresh codes refused: pam_freeauth {}, pam_oath {}",
                errors(FREEAUTH),
                errors(OATH)
            );
            match concurrent_ratio(report, args.processes) {
                Some(ratio) => println!("- {users} users: {ratio:.1}x ({failed})"),
                None => println!("- {users} users: no ratio (pam_oath skipped or accepted nothing)"),
            }
        }
    }

    print_cpu(reports);

    if args.replay_users > 0 {
        println!("\n## Accepted codes sent again after the loops, one at a time\n");
        for (users, report) in reports {
            for (module, replays) in &report.replays {
                println!(
                    "- {users} users, {module}: {} of {} accepted again ({} other errors)",
                    replays.accepted, replays.tried, replays.errors
                );
            }
        }
    }

    if args.floor {
        println!("\n## Floor: pam_permit in the same loop\n");
        for (users, report) in reports {
            print_floor(*users, report);
        }
    }

    println!("\n## Targets\n");
    print_ratio_target(args, reports);
    for (users, report) in reports {
        for row in report.rows.iter().filter(|row| row.module == FREEAUTH) {
            let p99 = Duration::from_nanos(row.latency.p99_ns);
            let verdict = if p99 < P99_TARGET && row.result.errors == 0 {
                "MET"
            } else {
                "MISSED"
            };
            let kind = if row.loops == Loops::Threads(1) {
                "target".to_owned()
            } else {
                format!("{}, for information", row.loops)
            };
            println!(
                "- pam_freeauth p99 under {} ms at {users} users ({kind}): {verdict} (p99 {} ms, {} errors)",
                P99_TARGET.as_millis(),
                millis(row.latency.p99_ns),
                row.result.errors
            );
        }
    }
}

/// Prints the CPU time per login of the one-thread loops. The benchmark
/// process runs libpam, the module and the dynamic loader, and each agent
/// thread appears by name.
fn print_cpu(reports: &[(usize, SizeReport)]) {
    if reports.iter().all(|(_, report)| report.cpu.is_empty()) {
        return;
    }
    println!("\n## CPU time per accepted login in the one-thread loops (from /proc, for information)\n");
    println!("| users | module | process | thread | µs per login |");
    println!("|---:|---|---|---|---:|");
    for (users, report) in reports {
        for row in &report.cpu {
            let total: f64 = row.split.threads.iter().map(|(_, micros)| micros).sum();
            for (thread, micros) in &row.split.threads {
                println!(
                    "| {users} | {} | {} | {thread} | {micros:.1} |",
                    row.module, row.process
                );
            }
            println!("| {users} | {} | {} | all | {total:.1} |", row.module, row.process);
        }
    }
    println!();
    for (users, report) in reports {
        for row in report.cpu.iter().filter(|row| row.process == "benchmark") {
            println!(
                "- {users} users, {}: {:.1} minor page faults per login in the benchmark process",
                row.module, row.split.minor_faults
            );
        }
    }
}

fn print_ratio_target(args: &Args, reports: &[(usize, SizeReport)]) {
    let report = reports.iter().find(|(users, _)| *users == RATIO_TARGET_USERS);
    match report.and_then(|(_, report)| ratio(report)) {
        Some(ratio) => {
            let verdict = if ratio >= RATIO_TARGET { "MET" } else { "MISSED" };
            println!("- pam_freeauth at least {RATIO_TARGET}x pam_oath's accept rate at {RATIO_TARGET_USERS} users: {verdict} ({ratio:.1}x)");
        }
        None if args.skip_oath => println!("- accept-rate ratio: not measured (--skip-oath)"),
        None => println!("- accept-rate ratio at {RATIO_TARGET_USERS} users: not measured (size not in --users)"),
    }
}

/// Prints pam_permit's rate beside the rate that the ratio target requires.
fn print_floor(users: usize, report: &SizeReport) {
    let Some(floor) = one_thread_rate(report, PERMIT) else {
        return;
    };
    let needed = match one_thread_rate(report, OATH) {
        Some(oath) => format!(
            "; {RATIO_TARGET} times pam_oath is {:.1}/s, {:.0} % of the floor",
            oath * RATIO_TARGET,
            100.0 * oath * RATIO_TARGET / floor
        ),
        None => String::new(),
    };
    println!("- {users} users: pam_permit {floor:.1} authentications/s{needed}");
}

/// Returns the accept rate of `module`'s one-thread loop.
fn one_thread_rate(report: &SizeReport, module: &str) -> Option<f64> {
    rate(report, module, Loops::Threads(1))
}

/// Returns the accept rate of `module`'s loop that ran as `loops`.
fn rate(report: &SizeReport, module: &str, loops: Loops) -> Option<f64> {
    report
        .rows
        .iter()
        .find(|row| row.module == module && row.loops == loops)
        .map(|row| row.result.accept_rate())
}

/// Returns pam_freeauth's accept rate over pam_oath's with `processes`
/// processes each.
fn concurrent_ratio(report: &SizeReport, processes: usize) -> Option<f64> {
    let loops = Loops::Processes(processes);
    let oath = rate(report, OATH, loops).filter(|rate| *rate > 0.0)?;
    Some(rate(report, FREEAUTH, loops)? / oath)
}

/// Returns pam_freeauth's single-thread accept rate over pam_oath's.
fn ratio(report: &SizeReport) -> Option<f64> {
    let oath = one_thread_rate(report, OATH).filter(|rate| *rate > 0.0)?;
    Some(one_thread_rate(report, FREEAUTH)? / oath)
}
