//! `freeauth-radius --config PATH [--listen ADDR:PORT ...]`: runs the RADIUS
//! bridge in the foreground and logs to standard error.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use freeauth_radius::config::Config;
use tracing_subscriber::EnvFilter;

/// FreeAuth RADIUS bridge: verifies one-time codes of RADIUS clients through the agent.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file.
    #[arg(long, short, default_value = "/etc/freeauth/radius.toml")]
    config: PathBuf,
    /// UDP address to listen on instead of the file's `listen` (repeatable).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Check the configuration and exit (0 valid, 2 invalid).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("freeauth-radius: {err}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        let count = config.clients.len();
        let noun = if count == 1 { "client" } else { "clients" };
        println!("{}: valid ({count} {noun})", args.config.display());
        return ExitCode::SUCCESS;
    }
    let filter = log_filter(&config.log_level);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match freeauth_radius::daemon::run(config, args.listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report_failure(&err);
            ExitCode::from(1)
        }
    }
}

/// Returns the log filter: FREEAUTH_LOG when it is set to a valid filter,
/// else the configured level. An empty or invalid FREEAUTH_LOG is reported
/// and not taken, as the agent does, so it cannot silence error messages by
/// mistake.
fn log_filter(configured: &str) -> EnvFilter {
    let Ok(value) = std::env::var("FREEAUTH_LOG") else {
        return EnvFilter::new(configured);
    };
    if value.trim().is_empty() {
        eprintln!("freeauth-radius: ignoring empty FREEAUTH_LOG; using log_level {configured}");
        return EnvFilter::new(configured);
    }
    EnvFilter::try_new(&value).unwrap_or_else(|err| {
        eprintln!("freeauth-radius: ignoring invalid FREEAUTH_LOG ({err}); using log_level {configured}");
        EnvFilter::new(configured)
    })
}

/// Logs why the bridge could not run. The log goes to standard error, so one
/// line is enough. When the log filter hides errors (FREEAUTH_LOG=off, say),
/// the message goes to standard error directly, so that a failed start
/// always shows its reason.
fn report_failure(err: &freeauth_radius::daemon::DaemonError) {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("cannot run: {err}");
    } else {
        eprintln!("freeauth-radius: cannot run: {err}");
    }
}
