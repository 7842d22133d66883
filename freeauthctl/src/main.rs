//! `freeauthctl`: the administrator's tool. It reads the agent's
//! configuration for the admin socket path, turns each command into one
//! request on that socket, and prints the answer.
//!
//! Exit codes: 0 success; 1 `verify` rejected the code; 2 any error (usage,
//! configuration, agent unreachable, request refused or invalid).

#![forbid(unsafe_code)]

/// Prints a line on standard output. When the reader has gone away
/// (`freeauthctl list | head`), the tool exits quietly with status 0
/// instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod cli;
mod clients_command;
mod commands;
mod import_command;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match commands::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("freeauthctl: {err}");
            ExitCode::from(2)
        }
    }
}
