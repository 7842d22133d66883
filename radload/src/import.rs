//! Imports the users of a users file into a running `freeauth-agentd` over
//! its admin socket, as TOTP tokens (HMAC-SHA-1, 6 digits, 30 s).
//!
//! One `Request::Import` must fit a protocol frame of at most 1 MiB, which
//! has room for a few thousand tokens, so the users are sent in batches sized by
//! their encoded length. Each batch is one transaction in the agent. A batch
//! that fails stops the import, and the batches before it stay imported.

use std::path::Path;
use std::time::Duration;

use freeauth_proto::{
    Client, HashAlgorithm, ImportEntry, NewToken, Request, Response, SecretString, TokenKind, MAX_FRAME_LEN,
};

use crate::users::User;

/// Bytes of encoded entries per batch: the frame limit less room for the
/// request's envelope.
const BATCH_BYTES: usize = MAX_FRAME_LEN - 64 * 1024;

/// Time the agent has to reply to one batch.
const BATCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Totals of a finished import.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub batches: usize,
    pub tokens: u64,
}

fn entry_for(user: &User, label: &str) -> ImportEntry {
    ImportEntry {
        user: user.name.clone(),
        token: NewToken {
            kind: TokenKind::Totp,
            algorithm: HashAlgorithm::Sha1,
            digits: 6,
            period: 30,
            counter: 0,
            last_step: None,
            secret_hex: SecretString::new(user.secret.to_hex().as_str()),
            pin: None,
            label: Some(label.to_owned()),
        },
        backup_codes: Vec::new(),
    }
}

/// Splits `users` into import batches whose encoded entries stay below
/// `max_bytes` each. A single entry larger than that gets a batch alone.
pub fn batches(users: &[User], label: &str, max_bytes: usize) -> Result<Vec<Vec<ImportEntry>>, String> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0usize;
    for user in users {
        let entry = entry_for(user, label);
        let size = serde_json::to_vec(&entry)
            .map_err(|err| format!("cannot encode user {}: {err}", user.name))?
            .len()
            + 1;
        if !current.is_empty() && current_bytes + size > max_bytes {
            batches.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(entry);
        current_bytes += size;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    Ok(batches)
}

/// Sends every user to the agent at `admin_socket`, printing progress to
/// standard error after each batch.
pub fn import(admin_socket: &Path, users: &[User], label: &str) -> Result<Imported, String> {
    let batches = batches(users, label, BATCH_BYTES)?;
    let mut client = Client::connect(admin_socket, "freeauth-radload", BATCH_TIMEOUT).map_err(|err| err.to_string())?;
    let mut done = Imported::default();
    let total = batches.len();
    for (index, entries) in batches.into_iter().enumerate() {
        let count = entries.len();
        match client
            .call(Request::Import { entries })
            .map_err(|err| err.to_string())?
        {
            Response::Imported { tokens, .. } => done.tokens += u64::from(tokens),
            Response::Error { kind, message } => {
                return Err(format!(
                    "the agent rejected import batch {} of {total} ({count} users, {kind:?}): {message}; \
                     {} tokens of earlier batches stay imported",
                    index + 1,
                    done.tokens
                ))
            }
            other => return Err(format!("unexpected agent response to an import: {other:?}")),
        }
        done.batches += 1;
        eprintln!("imported batch {} of {total}: {} tokens so far", index + 1, done.tokens);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::users::generate_users;

    #[test]
    fn batches_fit_the_frame() {
        let users = generate_users("batch", 20_000).unwrap();
        let batches = batches(&users, "radload", BATCH_BYTES).unwrap();
        assert!(batches.len() > 1, "20,000 tokens cannot fit one frame");
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), users.len());
        for batch in &batches {
            let frame = serde_json::to_vec(&Request::Import { entries: batch.clone() }).unwrap();
            assert!(frame.len() <= MAX_FRAME_LEN, "batch of {} bytes", frame.len());
        }
    }

    #[test]
    fn entries_are_sha1_totp_in_hex() {
        let users = generate_users("one", 1).unwrap();
        let batch = batches(&users, "label", 1).unwrap();
        assert_eq!(batch.len(), 1);
        let token = &batch[0][0].token;
        assert_eq!(token.kind, TokenKind::Totp);
        assert_eq!(token.algorithm, HashAlgorithm::Sha1);
        assert_eq!((token.digits, token.period), (6, 30));
        assert_eq!(token.secret_hex.expose(), users[0].secret.to_hex().as_str());
        assert_eq!(token.label.as_deref(), Some("label"));
    }
}
