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
#[command(version, about)]
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
    if args.check {
        println!("{}: valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    let filter = EnvFilter::try_from_env("FREEAUTH_LOG").unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    match freeauth_agentd::daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("freeauth-agentd: {err}");
            ExitCode::from(1)
        }
    }
}
