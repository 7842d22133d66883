//! `freeauthctl`: the administrator's tool. It reads the agent's
//! configuration for the admin socket path, turns each command into one
//! request on that socket, and prints the answer.
//!
//! Exit codes: 0 success; 1 `verify` rejected the code; 2 any error (usage,
//! configuration, agent unreachable, request refused or invalid).

#![forbid(unsafe_code)]

/// Prints a line on standard output. When the reader has gone away
/// (`freeauthctl list | head`), the tool exits quietly with status 0
/// instead of panicking on the broken pipe. Any other write error (a full
/// disk, /dev/full) exits with status 2, because the output, such as a new
/// secret, was lost. `verify` exits with its verdict's status in both cases
/// (see [`VERDICT_STATUS`]).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout(), $($arg)*) {
            let verdict = crate::VERDICT_STATUS.load(std::sync::atomic::Ordering::Relaxed);
            if verdict >= 0 {
                std::process::exit(verdict);
            }
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("freeauthctl: cannot write to standard output: {err}");
            std::process::exit(2);
        }
    }};
}

/// Exit status of the verdict that `verify` prints, or -1 before one
/// exists. Scripts read the verdict from the exit status, so it must not
/// change when the output cannot be written.
static VERDICT_STATUS: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

mod cli;
mod clients_command;
mod commands;
mod import_command;
mod output;
mod rekey_command;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match commands::run(args) {
        Ok(code) => code,
        Err(err) => {
            // Messages may quote user names and file contents; each line is
            // escaped so that none can send escape sequences to the terminal.
            let lines: Vec<_> = err.split('\n').map(freeauth_proto::text::printable).collect();
            eprintln!("freeauthctl: {}", lines.join("\n"));
            ExitCode::from(2)
        }
    }
}
