//! `freeauthctl clients`: lists the RADIUS clients of the bridge's
//! configuration after checking it the way `freeauth-radius --check` does.
//! Secrets are never printed, only where each one comes from.

use std::path::Path;
use std::process::ExitCode;

use freeauth_radius::config::{Client, Config, LoadError, MessageAuthenticatorPolicy};
use freeauth_radius::seen::SeenClients;
use serde::Serialize;

use crate::commands::CommandError;

/// One client as `clients` shows it.
#[derive(Serialize)]
struct ClientRow {
    name: String,
    address: String,
    nas_identifier: Option<String>,
    realms: Vec<String>,
    default_realm: Option<String>,
    message_authenticator: &'static str,
    /// For the `auto` policy: whether the bridge has recorded a
    /// Message-Authenticator from this client; `None` when unknown.
    message_authenticator_seen: Option<bool>,
    /// `inline`, or `file PATH`.
    secret: String,
}

/// Checks the bridge's configuration `path` and prints its clients.
pub fn run(path: &Path, json: bool) -> Result<ExitCode, CommandError> {
    let config = Config::load(path).map_err(|err| match &err {
        LoadError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            format!("{err}; pass --radius-config FILE to read the bridge's configuration from another file")
        }
        _ => err.to_string(),
    })?;
    // The bridge's state folder is closed to other users; without it, the
    // auto clients' state is shown as unknown.
    let seen = SeenClients::read(&config.state_dir).ok();
    let rows: Vec<ClientRow> = config.clients.iter().map(|client| row(client, seen.as_ref())).collect();
    if json {
        let text = serde_json::to_string_pretty(&rows).map_err(|err| format!("cannot format JSON: {err}"))?;
        say!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        say!("{}: valid, with no RADIUS client", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<20} {:<24} {:<16} {:<28} {:<22} SECRET",
        "NAME",
        "ADDRESS",
        "NAS-IDENTIFIER",
        "REALMS (* default)",
        "MESSAGE-AUTHENTICATOR"
    );
    for row in &rows {
        say!(
            "{:<20} {:<24} {:<16} {:<28} {:<22} {}",
            row.name,
            row.address,
            row.nas_identifier.as_deref().unwrap_or("-"),
            realms_text(row),
            policy_text(row),
            row.secret
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Describes `client`; `seen` is the bridge's list for `auto`, if readable.
fn row(client: &Client, seen: Option<&std::collections::BTreeSet<String>>) -> ClientRow {
    let network = client.network;
    let full_length = if network.address.is_ipv4() { 32 } else { 128 };
    let address = if network.prefix == full_length {
        network.address.to_string()
    } else {
        format!("{}/{}", network.address, network.prefix)
    };
    let policy = match client.message_authenticator {
        MessageAuthenticatorPolicy::Require => "require",
        MessageAuthenticatorPolicy::Auto => "auto",
        MessageAuthenticatorPolicy::DangerNotRequired => "danger_not_required",
    };
    let message_authenticator_seen = match client.message_authenticator {
        MessageAuthenticatorPolicy::Auto => seen.map(|names| names.contains(&client.name)),
        _ => None,
    };
    let secret = match &client.secret_file {
        Some(file) => format!("file {}", file.display()),
        None => "inline".to_owned(),
    };
    ClientRow {
        name: client.name.clone(),
        address,
        nas_identifier: client.nas_identifier.clone(),
        realms: client.realms.clone(),
        default_realm: client.default_realm.clone(),
        message_authenticator: policy,
        message_authenticator_seen,
        secret,
    }
}

/// Returns the realms joined by commas, the default one marked with `*`.
fn realms_text(row: &ClientRow) -> String {
    if row.realms.is_empty() {
        return "-".to_owned();
    }
    let marked: Vec<String> = row
        .realms
        .iter()
        .map(|realm| {
            if row.default_realm.as_ref() == Some(realm) {
                format!("{realm}*")
            } else {
                realm.clone()
            }
        })
        .collect();
    marked.join(",")
}

/// Returns the policy, with what the bridge recorded for `auto`.
fn policy_text(row: &ClientRow) -> String {
    match row.message_authenticator_seen {
        Some(true) => format!("{} (required now)", row.message_authenticator),
        Some(false) => format!("{} (none seen yet)", row.message_authenticator),
        None => row.message_authenticator.to_owned(),
    }
}
