//! `freeauthctl rekey`: replaces the seed key. The new key goes to the
//! key's `.new` file, the agent seals every seed and PIN under it, and the
//! new file then replaces the old key. A rekey that stopped half way is
//! finished or undone by the next run, from whichever key fits the
//! database (see `freeauth_agentd::rekey`).

use std::process::ExitCode;

use freeauth_agentd::config::Config;
use freeauth_agentd::rekey::{check_agent_uses, finish, lock_key, settle, write_new_key, Settled};
use freeauth_proto::{Request, Response};

use crate::commands::{call, CommandError};
use crate::output;

pub fn run(config: &Config, json: bool) -> Result<ExitCode, CommandError> {
    let key = &config.paths.seed_key;
    let new = freeauth_agentd::keys::new_key_path(key);
    // Held until the command ends, so that rekeys run one at a time.
    let _lock = lock_key(config)?;
    // A running agent must seal the database that this command checks.
    let reachable = call(config, Request::Status {});
    if reachable.is_ok() {
        check_agent_uses(config)?;
    }
    if new.symlink_metadata().is_ok() {
        // A rekey sent earlier may still run in the agent; its reply comes
        // before the reply to this status request.
        wait_for_engine(config)?;
        match settle(config)? {
            Settled::MovedInPlace => {
                let message = format!(
                    "finished an earlier rekey: the database was already sealed under {}, which now replaces {}",
                    new.display(),
                    key.display()
                );
                return report(json, 0, false, &message);
            }
            Settled::RemovedUnused => {
                let note = format!("removed {}, left unused by an earlier rekey", new.display());
                // With --json, standard output contains only the JSON object.
                if json {
                    eprintln!("freeauthctl: note: {note}");
                } else {
                    say!("{note}");
                }
            }
            Settled::Nothing => {}
        }
    }

    // Without a reply, this command cannot tell which database the agent
    // would seal, so it writes no new key.
    if let Err(err) = reachable {
        return Err(format!(
            "{err}\n  A rekey needs the running agent. The seed key is unchanged."
        ));
    }
    write_new_key(config)?;
    let outcome = call(config, Request::Rekey {});
    let tokens = match outcome {
        Ok(Response::Rekeyed { tokens }) => tokens,
        Ok(other) => {
            return Err(after_failure(
                config,
                format!("unexpected reply from the agent: {other:?}"),
            ))
        }
        Err(err) => return Err(after_failure(config, err)),
    };
    if let Err(err) = finish(config) {
        return Err(format!(
            "the agent sealed its database under {}, but it was not moved over {}: {err}\n  \
             Keep both key files: the agent's database may open only with {}.",
            new.display(),
            key.display(),
            new.display()
        ));
    }
    let message = format!(
        "sealed {tokens} {} under a new seed key, now in {}. Database copies made before this need the old key",
        if tokens == 1 { "token" } else { "tokens" },
        key.display()
    );
    report(json, tokens, true, &message)
}

fn report(json: bool, tokens: u64, new_key: bool, message: &str) -> Result<ExitCode, CommandError> {
    if json {
        let value = serde_json::json!({ "tokens": tokens, "new_key": new_key, "message": message });
        output::print_json(&value)?;
    } else {
        say!("{message}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until the agent's engine has run every request sent before, when
/// an agent runs: a status request takes its turn behind them.
fn wait_for_engine(config: &Config) -> Result<(), CommandError> {
    if !freeauth_agentd::store::in_use_by_agent(&config.paths.state_dir) {
        return Ok(());
    }
    let Err(err) = call(config, Request::Status {}) else {
        return Ok(());
    };
    // An agent that has just died closes its sockets a moment before the
    // kernel drops its lock on the state folder.
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if !freeauth_agentd::store::in_use_by_agent(&config.paths.state_dir) {
            return Ok(());
        }
    }
    Err(format!(
        "the agent runs but did not reply, so an earlier rekey may still be running; {} is left as it is: {err}",
        freeauth_agentd::keys::new_key_path(&config.paths.seed_key).display()
    ))
}

/// Finishes or undoes the rekey after a failed request, and returns the
/// error to print with what happened to the new key.
fn after_failure(config: &Config, error: CommandError) -> CommandError {
    let new = freeauth_agentd::keys::new_key_path(&config.paths.seed_key);
    let settled = wait_for_engine(config).and_then(|()| settle(config));
    match settled {
        Ok(Settled::RemovedUnused | Settled::Nothing) => {
            format!("{error}\n  The seed key is unchanged.")
        }
        Ok(Settled::MovedInPlace) => format!(
            "{error}\n  The agent sealed the database under the new key before the failure; it now replaces the old key."
        ),
        Err(settle_error) => format!(
            "{error}\n  {settle_error}\n  Run `freeauthctl rekey` again to finish or undo it; {} stays until then.",
            new.display()
        ),
    }
}
