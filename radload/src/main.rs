//! `freeauth-radload`: a RADIUS load generator for one-time-password servers.
//! It sends PAP Access-Requests with current TOTP codes and a
//! Message-Authenticator, keeps a fixed number in flight, checks every reply's
//! authenticators, and reports accepts per second and latency percentiles.
//! Its subcommands also create test users and import them into the FreeAuth
//! agent. See docs/radload.md.

#![forbid(unsafe_code)]

mod import;
mod load;
mod packet;
mod probe;
mod schedule;
mod stats;
mod users;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use freeauth_radius::codec::SharedSecret;

use crate::load::{Settings, IDS_PER_SOCKET, PERIOD};
use crate::packet::Verdict;
use crate::stats::Report;
use crate::users::{Format, User};

const EXAMPLES: &str = "Examples:
  freeauth-radload generate --count 300000 --users users.txt --oath users.oath --freeradius authorize
  freeauth-radload import --users users.txt --admin-socket /run/freeauth/admin.sock
  freeauth-radload run --users users.txt --server 127.0.0.1:1812 --secret-file secret \\
      --in-flight 64 --duration 10 --align-step

`run` exits 0 after printing its report, also when requests were rejected or timed out;
it exits 2 on invalid options or files. See docs/radload.md for every field of the report.";

/// RADIUS load generator: PAP Access-Requests with TOTP codes (HMAC-SHA-1,
/// 6 digits, 30 s) and Message-Authenticator, with accepts per second and
/// latency percentiles.
///
/// A one-use server accepts each user's code once per 30-second step, so
/// radload sends each user at most one request per step and never two at
/// once. Sustaining R requests per second therefore needs at least R × 30
/// users.
#[derive(Parser)]
#[command(version, about, long_about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send the load and print the results.
    Run(RunArgs),
    /// Create users with random TOTP secrets and write them in the formats
    /// that radload, freeauthctl and FreeRADIUS read.
    Generate(GenerateArgs),
    /// Import a users file into a running freeauth-agentd over its admin
    /// socket, in batches that fit the protocol's 1 MiB frame.
    Import(ImportArgs),
    /// Send requests for one user until the server gives a valid reply
    /// (exit 0) or the wait is over (exit 1).
    Probe(ProbeArgs),
}

#[derive(Args)]
struct ServerArgs {
    /// RADIUS server, ADDRESS:PORT.
    #[arg(long, default_value = "127.0.0.1:1812")]
    server: SocketAddr,
    /// Shared secret of the RADIUS client. It shows in the process list;
    /// prefer --secret-file.
    #[arg(long, conflicts_with = "secret_file", required_unless_present = "secret_file")]
    secret: Option<String>,
    /// File whose first line is the shared secret.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Allow a server address outside the loopback range. A load test can
    /// overload a production server: point it only at servers you run.
    #[arg(long)]
    allow_remote: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Users file: one `USER BASE32SECRET` per line.
    #[arg(long)]
    users: PathBuf,
    /// Requests kept in flight.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Seconds to send for. With --requests, whichever comes first ends the run.
    #[arg(long)]
    duration: Option<f64>,
    /// Number of requests to send.
    #[arg(long)]
    requests: Option<u64>,
    /// Milliseconds to wait for a reply before a retransmission or a timeout.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Retransmissions of a request that got no reply (0: none).
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// UDP sockets (source ports) to spread the requests over; each has 256
    /// identifiers. Default: one per 128 requests in flight.
    #[arg(long)]
    sockets: Option<usize>,
    /// Wait until a new 30-second step begins before sending, so that users
    /// sent by an earlier run in the current step are not sent again.
    #[arg(long)]
    align_step: bool,
    /// Print the results as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Print requests and accepts per second to standard error every second.
    #[arg(long)]
    progress: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Number of users to create.
    #[arg(long)]
    count: usize,
    /// User names are PREFIX followed by a 7-digit number.
    #[arg(long, default_value = "radload")]
    prefix: String,
    /// Users file to write, for `run`, `probe` and `import`.
    #[arg(long)]
    users: PathBuf,
    /// Also write an oath-toolkit users.oath file for
    /// `freeauthctl import --format oath`. freeauthctl sends the whole file as
    /// one 1 MiB frame, so it takes only a few thousand users; use `import`
    /// for more.
    #[arg(long)]
    oath: Option<PathBuf>,
    /// Also write a FreeRADIUS users file that sets TOTP-Secret for rlm_totp.
    #[arg(long)]
    freeradius: Option<PathBuf>,
}

#[derive(Args)]
struct ImportArgs {
    /// Users file to import.
    #[arg(long)]
    users: PathBuf,
    /// The agent's admin socket.
    #[arg(long, default_value = "/run/freeauth/admin.sock")]
    admin_socket: PathBuf,
    /// Label stored with each token, shown by `freeauthctl show`.
    #[arg(long, default_value = "radload")]
    label: String,
}

#[derive(Args)]
struct ProbeArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Users file; its first user is sent.
    #[arg(long)]
    users: PathBuf,
    /// Seconds to keep trying.
    #[arg(long, default_value_t = 30)]
    wait: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Generate(args) => generate(&args),
        Command::Import(args) => import(&args),
        Command::Probe(args) => probe(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("freeauth-radload: {message}");
            ExitCode::from(2)
        }
    }
}

/// Resolves the secret and checks the server address.
fn server_settings(args: &ServerArgs) -> Result<(SocketAddr, SharedSecret), String> {
    if !args.server.ip().is_loopback() && !args.allow_remote {
        return Err(format!(
            "server {} is not a loopback address; pass --allow-remote if you run that server and mean to load it",
            args.server
        ));
    }
    let text = match (&args.secret, &args.secret_file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => read_secret_file(path)?,
        (None, None) => return Err("missing --secret or --secret-file".to_owned()),
    };
    if text.is_empty() || text.len() > 128 {
        return Err("the shared secret must be 1 to 128 bytes".to_owned());
    }
    Ok((args.server, SharedSecret::new(text.into_bytes())))
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("cannot read secret file {}: {err}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

fn run(args: &RunArgs) -> Result<ExitCode, String> {
    let (server, secret) = server_settings(&args.server)?;
    let users = users::read_users(&args.users)?;
    if args.duration.is_none() && args.requests.is_none() {
        return Err("set --duration SECONDS, --requests COUNT, or both".to_owned());
    }
    let duration = match args.duration {
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => Some(Duration::from_secs_f64(seconds)),
        Some(_) => return Err("--duration must be a positive number of seconds".to_owned()),
        None => None,
    };
    if args.in_flight == 0 {
        return Err("--in-flight must be at least 1".to_owned());
    }
    if args.in_flight > users.len() {
        return Err(format!(
            "--in-flight {} exceeds the {} users of {}: a user never has two requests in flight",
            args.in_flight,
            users.len(),
            args.users.display()
        ));
    }
    let sockets = args.sockets.unwrap_or_else(|| args.in_flight.div_ceil(128));
    if sockets == 0 || args.in_flight > sockets * IDS_PER_SOCKET {
        return Err(format!(
            "--in-flight {} needs at least {} sockets of {IDS_PER_SOCKET} identifiers",
            args.in_flight,
            args.in_flight.div_ceil(IDS_PER_SOCKET)
        ));
    }
    if args.align_step {
        let start = load::next_step_start();
        eprintln!(
            "waiting {:.1} s for the next 30-second step",
            start.saturating_duration_since(Instant::now()).as_secs_f64()
        );
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
    }

    let user_count = users.len();
    let settings = Settings {
        server,
        secret,
        in_flight: args.in_flight,
        sockets,
        duration,
        max_requests: args.requests,
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        retries: args.retries,
        progress: args.progress,
    };
    let outcome = load::run(&settings, users)?;
    let mut report = Report::new(
        server.to_string(),
        user_count,
        args.in_flight,
        outcome.elapsed,
        &outcome.counters,
    );
    report.user_limited_s = outcome.user_limited.as_secs_f64();
    report.client_cpu_s = own_cpu_seconds();
    add_warnings(&mut report);

    if args.json {
        let text = serde_json::to_string(&report).map_err(|err| format!("cannot encode the report: {err}"))?;
        println!("{text}");
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

/// User and system CPU time of this process, from `/proc/self/stat` (Linux).
/// The fields count clock ticks of 1/100 s, the fixed `USER_HZ` of Linux on
/// x86 and Arm.
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name in brackets may contain spaces; fields follow the last `)`.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

fn add_warnings(report: &mut Report) {
    let needed = (report.requests_per_s * f64::from(PERIOD)).ceil();
    if needed > report.users as f64 {
        report.warnings.push(format!(
            "{} users are fewer than {needed:.0} ({:.0} requests/s × {PERIOD} s): each user gets one request per \
             time step, so a longer run runs out of users in each step and measures the users file, not the server",
            report.users, report.requests_per_s
        ));
    }
    if report.user_limited_s > 0.0 {
        report.warnings.push(format!(
            "for {:.1} s every user already had its request in the current time step, so the number of users, \
             not the server, limited the load; use at least {PERIOD} × the request rate users",
            report.user_limited_s
        ));
    }
    if report.timeouts > 0 || report.invalid > 0 || report.socket_errors > 0 {
        report.warnings.push(format!(
            "{} timeouts, {} invalid replies and {} socket errors: check the secret and the server's log",
            report.timeouts, report.invalid, report.socket_errors
        ));
    }
}

fn generate(args: &GenerateArgs) -> Result<ExitCode, String> {
    if args.count == 0 {
        return Err("--count must be at least 1".to_owned());
    }
    let users: Vec<User> = users::generate_users(&args.prefix, args.count)?;
    users::write_users(&args.users, &users, Format::Users)?;
    if let Some(path) = &args.oath {
        users::write_users(path, &users, Format::Oath)?;
    }
    if let Some(path) = &args.freeradius {
        users::write_users(path, &users, Format::FreeRadius)?;
    }
    eprintln!("wrote {} users to {}", users.len(), args.users.display());
    Ok(ExitCode::SUCCESS)
}

fn import(args: &ImportArgs) -> Result<ExitCode, String> {
    let users = users::read_users(&args.users)?;
    let done = import::import(&args.admin_socket, &users, &args.label)?;
    println!("imported {} tokens in {} batches", done.tokens, done.batches);
    Ok(ExitCode::SUCCESS)
}

fn probe(args: &ProbeArgs) -> Result<ExitCode, String> {
    let (server, secret) = server_settings(&args.server)?;
    let users = users::read_users(&args.users)?;
    let Some(user) = users.first() else {
        return Err(format!("{} contains no users", args.users.display()));
    };
    match probe::probe(server, &secret, user, Duration::from_secs(args.wait)) {
        Ok((verdict, attempts)) => {
            let name = match verdict {
                Verdict::Accept => "Access-Accept",
                Verdict::Reject => "Access-Reject",
                Verdict::Challenge => "Access-Challenge",
                Verdict::Invalid => "invalid reply",
            };
            println!("{server}: {name} for {} after {attempts} attempts", user.name);
            Ok(ExitCode::SUCCESS)
        }
        Err(message) => {
            eprintln!("freeauth-radload: {message}");
            Ok(ExitCode::from(1))
        }
    }
}
