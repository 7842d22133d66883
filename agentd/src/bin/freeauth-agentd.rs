//! `freeauth-agentd --config PATH`: runs the agent in the foreground and
//! logs to standard error (journald keeps it when run by systemd).

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use freeauth_agentd::config::Config;
use tracing_subscriber::EnvFilter;

/// FreeAuth agent: verifies one-time passwords for PAM and RADIUS.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file.
    #[arg(long, short, default_value = "/etc/freeauth/agentd.toml")]
    config: PathBuf,
    /// Check the configuration and exit (0 valid, 2 invalid).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("freeauth-agentd: {err}");
            return ExitCode::from(2);
        }
    };
    let problems = freeauth_agentd::check::installation_problems(&config);
    if !problems.is_empty() {
        eprintln!("freeauth-agentd: {} cannot be used:", args.config.display());
        for problem in &problems {
            eprintln!("  {problem}");
        }
        return ExitCode::from(2);
    }
    if args.check {
        println!("{}: valid", args.config.display());
        if let Some(note) = freeauth_agentd::check::owner_note(&config) {
            println!("{note}");
        }
        return ExitCode::SUCCESS;
    }
    let filter = log_filter(&config.log_level);
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    match freeauth_agentd::daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report_failure(&err);
            ExitCode::from(1)
        }
    }
}

/// Logs why the agent could not run. When the log filter hides errors
/// (FREEAUTH_LOG=off, say), the message goes to standard error directly, so
/// that a failed start always shows its reason.
fn report_failure(err: &freeauth_agentd::daemon::DaemonError) {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("cannot run: {err}");
    } else {
        eprintln!("freeauth-agentd: cannot run: {err}");
    }
}

/// The log filter: FREEAUTH_LOG when it is set to a valid filter, else the
/// configured level. An empty or invalid FREEAUTH_LOG is reported, not
/// taken, so it cannot silence error messages by mistake.
fn log_filter(configured: &str) -> EnvFilter {
    match std::env::var("FREEAUTH_LOG") {
        Ok(value) if !value.trim().is_empty() => match EnvFilter::try_new(&value) {
            Ok(filter) => filter,
            Err(err) => {
                eprintln!("freeauth-agentd: ignoring invalid FREEAUTH_LOG ({err}); using log_level {configured}");
                EnvFilter::new(configured)
            }
        },
        Ok(_) => {
            eprintln!("freeauth-agentd: ignoring empty FREEAUTH_LOG; using log_level {configured}");
            EnvFilter::new(configured)
        }
        Err(_) => EnvFilter::new(configured),
    }
}
