//! Checks that `freeauth-agentd --check` and `freeauthctl check-config` run
//! beyond the configuration file itself: names that must exist, and the
//! modes and owners of the key and state folder that start-up insists on.

use std::os::unix::fs::MetadataExt;

use nix::unistd::{Group, User};

use crate::config::Config;
use crate::keys::check_private;

/// Every problem that would stop the agent from starting, as sentences.
/// Files are judged against the owner of the state folder, so the check
/// gives the same answer whether root or the agent's user runs it.
pub fn installation_problems(config: &Config) -> Vec<String> {
    let mut problems = name_problems(config);
    let state_dir = &config.paths.state_dir;
    match std::fs::metadata(state_dir) {
        Ok(meta) => {
            let owner = meta.uid();
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
