//! Checks that `freeauth-agentd --check` and `freeauthctl check-config` run
//! beyond the configuration file itself: names that must exist, and the
//! modes and owners of the key and state folder that start-up insists on.

use std::os::unix::fs::MetadataExt;

use nix::unistd::{Group, User};

use crate::config::Config;
use crate::keys::check_private;

/// Every problem that would stop the agent from starting, as sentences.
/// Run by another user than root, the check judges files against that
/// user, as the agent does. Run by root, it judges them against the owner
/// of the state folder, because root may be checking for the service's
/// user ([`owner_note`] names that user).
pub fn installation_problems(config: &Config) -> Vec<String> {
    let mut problems = name_problems(config);
    let state_dir = &config.paths.state_dir;
    match std::fs::metadata(state_dir) {
        Ok(meta) => {
            let euid = nix::unistd::geteuid().as_raw();
            let owner = if euid == 0 { meta.uid() } else { euid };
            if let Err(err) = check_private(state_dir, true, owner) {
                problems.push(err.to_string());
            }
            let key = &config.paths.seed_key;
            match std::fs::symlink_metadata(key) {
                Ok(_) => {
                    if let Err(err) = check_private(key, false, owner) {
                        problems.push(err.to_string());
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => problems.push(format!("cannot check seed key {}: {err}", key.display())),
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => problems.push(format!("cannot check state folder {}: {err}", state_dir.display())),
    }
    problems
}

/// Returns a note for root when the state folder belongs to another user:
/// the agent starts only as that user. `None` for other callers, whom
/// [`installation_problems`] already judges as the agent would.
pub fn owner_note(config: &Config) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let state_dir = &config.paths.state_dir;
    let owner = std::fs::metadata(state_dir).ok()?.uid();
    if owner == 0 {
        return None;
    }
    let name = match User::from_uid(owner.into()) {
        Ok(Some(user)) => format!("{} (uid {owner})", user.name),
        _ => format!("uid {owner}"),
    };
    Some(format!(
        "note: the agent must run as {name}, the owner of state folder {}; started as another user it stops with an error",
        state_dir.display()
    ))
}

/// Unknown admin group or bridge users, all of them at once.
fn name_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(group) = &config.access.admin_group {
        match Group::from_name(group) {
            Ok(Some(_)) => {}
            Ok(None) => problems.push(format!("access.admin_group: group {group} does not exist")),
            Err(err) => problems.push(format!("access.admin_group: cannot look up {group}: {err}")),
        }
    }
    for user in &config.access.bridge_users {
        match User::from_name(user) {
            Ok(Some(_)) => {}
            Ok(None) => problems.push(format!("access.bridge_users: user {user} does not exist")),
            Err(err) => problems.push(format!("access.bridge_users: cannot look up {user}: {err}")),
        }
    }
    problems
}
