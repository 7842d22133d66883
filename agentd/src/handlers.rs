//! What each request does between the socket and the engine: permission and
//! rate checks, backup-code hashing off the engine thread, the reply delay,
//! what the caller may learn, and the log line of every decision.

use std::sync::atomic::Ordering;
use std::time::Duration;

use freeauth_proto::{ErrorKind, ImportEntry, Origin, Request, Response, SecretString, VerifyResult};
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, SemaphorePermit};
use zeroize::Zeroizing;

use crate::admin::{AdminOp, BackupSet};
use crate::engine::{self, internal_error, BackupCheck, BackupMatch, Job, Outcome, Verdict};
use crate::keys::hash_backup_code;
use crate::server::Task;

/// Argon2 computations of backup-code checks allowed at the same time.
pub const BACKUP_HASHES_AT_ONCE: usize = 2;

/// Maximum time a backup-code check waits for a hash slot. After it the
/// attempt is rejected without a hash (its failure was counted when the
/// check began). So a flood of guesses cannot hold up other users' backup
/// codes for long. A check then ends within this wait plus one hash, under
/// the 300 ms that `failure_delay_ms` needs without
/// `danger_short_failure_delay`, so its timing does not tell a remote party
/// that the account exists.
pub(crate) const BACKUP_HASH_WAIT: Duration = Duration::from_millis(250);

/// Most backup codes one enrolment may create.
pub const MAX_BACKUP_CODES: u32 = 100;

fn unavailable() -> Response {
    Response::Error {
        kind: ErrorKind::Internal,
        message: "the agent is shutting down or its engine failed; see its log".into(),
    }
}

/// Rejects names no account can have, before they reach the engine, the
/// unknown-name table or the log.
fn check_name(user: &str) -> Result<(), Response> {
    crate::admin::check_user_name(user).map_err(|problem| Response::Error {
        kind: ErrorKind::Invalid,
        message: problem,
    })
}

pub async fn lookup(task: &Task, user: String) -> Response {
    if let Err(response) = check_name(&user) {
        return response;
    }
    if let Err(response) = task.check_caller(&user, None) {
        return response;
    }
    match task.ask(|reply| Job::Lookup { user, reply }).await {
        Some(Ok(lookup)) => Response::Account {
            enrolled: lookup.enrolled,
            locked: lookup.locked,
            prompt: lookup.prompt,
            code_lengths: lookup.code_lengths,
            disabled: lookup.disabled,
            hex_codes: Some(lookup.hex_codes),
        },
        Some(Err(_)) => internal_error(),
        None => unavailable(),
    }
}

/// Verifies `code`, or with `tail` the end of a text that ends in the code.
/// With `tail` the response is a [`Response::TailVerdict`].
pub async fn verify(task: &Task, user: String, code: SecretString, tail: bool, origin: Origin) -> Response {
    if let Err(response) = check_name(&user) {
        return response;
    }
    if let Err(response) = task.check_caller(&user, Some(&origin)) {
        log_refusal(task, &user, &origin, &response);
        return response;
    }
    let source = task.source_of(&origin);
    let verdict = match decide(task, &user, code, tail, source.clone()).await {
        Ok(verdict) => verdict,
        Err(response) => return response,
    };
    engine::count(&task.shared.stats, &verdict.outcome);
    log_decision(task, &user, &origin, source.as_deref(), &verdict);
    let result = match verdict.outcome {
        Outcome::Accepted => VerifyResult::Accepted,
        _ if task.is_remote(&origin) => VerifyResult::Rejected,
        Outcome::Locked => VerifyResult::Locked,
        Outcome::NoToken => VerifyResult::NoToken,
        Outcome::Rejected | Outcome::CheckBackup { .. } => VerifyResult::Rejected,
    };
    let deadline = task.arrived + verdict.delay;
    let now = std::time::Instant::now();
    // Members of the admin group may verify, but must not skip the failure
    // delay. Root and the agent's user, who can read the seeds, may.
    let caller_delays = matches!(
        origin,
        Origin::Radius {
            caller_delays: Some(true),
            ..
        }
    );
    // A tail verdict carries the code length, which a delayed one cannot,
    // so its delay is waited out here.
    if caller_delays && !task.is_admin() && !tail {
        let remaining = deadline.saturating_duration_since(now);
        return Response::DelayedVerdict {
            result,
            delay_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
        };
    }
    // Sleep only for a real delay: tokio rounds a timer up to the next
    // millisecond, which would add about 1 ms to every accepted code.
    if !verdict.delay.is_zero() && now < deadline {
        task.wait_outside_in_flight();
        tokio::time::sleep_until(deadline.into()).await;
    }
    if tail {
        let code_length = verdict.code_length.filter(|_| result == VerifyResult::Accepted);
        return Response::TailVerdict { result, code_length };
    }
    let reason = task.is_admin().then(|| verdict.reason.describe());
    Response::Verdict { result, reason }
}

/// Runs the engine's decision, including the backup-code round trip.
async fn decide(
    task: &Task,
    user: &str,
    code: SecretString,
    tail: bool,
    source: Option<String>,
) -> Result<Verdict, Response> {
    let first = task
        .ask(|reply| Job::Verify {
            user: user.to_owned(),
            code: code.clone(),
            tail,
            source: source.clone(),
            reply,
        })
        .await
        .ok_or_else(unavailable)?
        .map_err(|_| internal_error())?;
    let Outcome::CheckBackup { salt, hashes } = first.outcome else {
        return Ok(first);
    };
    // The engine requests a backup check only when this part exists.
    let backup = engine::code_part(code.expose(), tail, usize::from(engine::BACKUP_CODE_LEN))
        .map(SecretString::new)
        .ok_or_else(internal_error)?;
    let matched = match hash_slot(&task.shared.backup_hashing, BACKUP_HASH_WAIT).await {
        Ok(Some(_permit)) => {
            match tokio::task::spawn_blocking(move || match_backup_code(&backup, &salt, &hashes)).await {
                Ok(Some(matched)) => BackupCheck::Matched(matched),
                Ok(None) => BackupCheck::NoMatch,
                Err(_) => return Err(internal_error()),
            }
        }
        Ok(None) => {
            task.shared.log_limit.warn(
                "backup-hash-busy",
                &format!(
                    "backup code of {user} rejected unchecked: no hash slot within {} ms; many backup-code guesses arrive at once",
                    BACKUP_HASH_WAIT.as_millis()
                ),
            );
            BackupCheck::NotRun
        }
        Err(()) => return Err(internal_error()),
    };
    task.ask(|reply| Job::BackupResult {
        user: user.to_owned(),
        matched,
        source,
        reply,
    })
    .await
    .ok_or_else(unavailable)?
    .map_err(|_| internal_error())
}

/// Waits at most `wait` for one of the Argon2 slots (each hash takes 8 MiB
/// and about 20 ms). `Ok(None)` when none came free, `Err` when the agent
/// is stopping.
async fn hash_slot(slots: &Semaphore, wait: Duration) -> Result<Option<SemaphorePermit<'_>>, ()> {
    match tokio::time::timeout(wait, slots.acquire()).await {
        Ok(Ok(permit)) => Ok(Some(permit)),
        Ok(Err(_closed)) => Err(()),
        Err(_elapsed) => Ok(None),
    }
}

/// Hashes `code` once with the user's salt and returns the stored hash it
/// equals, with its id, comparing every hash in constant time.
fn match_backup_code(code: &SecretString, salt: &[u8], hashes: &[(i64, Vec<u8>)]) -> Option<BackupMatch> {
    let digits = Zeroizing::new(code.expose().replace(' ', ""));
    let hash = hash_backup_code(digits.trim(), salt)?;
    let mut found = None;
    for (id, stored) in hashes {
        if bool::from(stored.as_slice().ct_eq(&hash[..])) {
            found = Some(BackupMatch {
                id: *id,
                hash: stored.clone(),
            });
        }
    }
    found
}

fn log_decision(task: &Task, user: &str, origin: &Origin, source: Option<&str>, verdict: &Verdict) {
    let result = match verdict.outcome {
        Outcome::Accepted => "accepted",
        _ => "rejected",
    };
    let reason = verdict.reason.describe();
    let uid = task.caller.uid();
    let failures = verdict.failures;
    let source = source.unwrap_or("-");
    match origin {
        Origin::Pam {
            service,
            rhost,
            tty,
            ruser,
        } => tracing::info!(
            target: "freeauth::auth", user, result, reason, failures, frontend = "pam", service,
            rhost = rhost.as_deref().unwrap_or("-"), tty = tty.as_deref().unwrap_or("-"),
            ruser = ruser.as_deref().unwrap_or("-"), source, uid, "verification"
        ),
        Origin::Radius {
            client,
            nas_identifier,
            nas_ip,
            calling_station,
            ..
        } => tracing::info!(
            target: "freeauth::auth", user, result, reason, failures, frontend = "radius", client,
            nas_identifier = nas_identifier.as_deref().unwrap_or("-"), nas_ip = nas_ip.as_deref().unwrap_or("-"),
            calling_station = calling_station.as_deref().unwrap_or("-"), source, uid, "verification"
        ),
        Origin::Admin {} => {
            tracing::info!(target: "freeauth::auth", user, result, reason, failures, frontend = "admin", uid, "verification")
        }
    }
}

fn log_refusal(task: &Task, user: &str, origin: &Origin, response: &Response) {
    if let Response::Error { message, .. } = response {
        let frontend = match origin {
            Origin::Pam { .. } => "pam",
            Origin::Radius { .. } => "radius",
            Origin::Admin {} => "admin",
        };
        // Rate-limited: a local user can send any number of refused requests.
        let Some(suppressed) = task
            .shared
            .log_limit
            .admit("verification-refused", std::time::Instant::now())
        else {
            return;
        };
        tracing::warn!(target: "freeauth::auth", user, frontend, uid = task.caller.uid(), reason = %message, suppressed, "verification refused");
    }
}

/// Serves a request that arrived on the admin socket.
pub async fn admin(task: &Task, request: Request) -> Response {
    log_admin_request(task, &request);
    let op = match into_op(request).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let codes = op.1;
    let response = task
        .ask(|reply| Job::Admin { op: op.0, reply })
        .await
        .unwrap_or_else(unavailable);
    match response {
        Response::Enrolled { user, token, .. } => Response::Enrolled {
            user,
            token,
            backup_codes: codes,
        },
        Response::BackupCodes { user, .. } => Response::BackupCodes {
            user,
            backup_codes: codes,
        },
        Response::Status { mut status } => {
            let stats = &task.shared.stats;
            status.version = env!("CARGO_PKG_VERSION").to_owned();
            status.uptime_seconds = task.shared.started.elapsed().as_secs();
            status.accepted = stats.accepted.load(Ordering::Relaxed);
            status.rejected = stats.rejected.load(Ordering::Relaxed);
            status.open_connections = stats.open_connections.load(Ordering::Relaxed);
            status.database = task.shared.database.clone();
            Response::Status { status }
        }
        other => other,
    }
}

/// Logs who asked for a management change, before it runs.
fn log_admin_request(task: &Task, request: &Request) {
    let (kind, user) = match request {
        Request::Enroll { user, .. } => ("enroll", Some(user)),
        Request::Import { entries } => {
            tracing::info!(
                uid = task.caller.uid(),
                entries = entries.len(),
                "admin request: import"
            );
            return;
        }
        Request::SetEnabled {
            user, enabled: true, ..
        } => ("enable", Some(user)),
        Request::SetEnabled { user, .. } => ("disable", Some(user)),
        Request::Remove { user, .. } => ("remove", Some(user)),
        Request::Resync { user, .. } => ("resync", Some(user)),
        Request::Unlock { user } => ("unlock", Some(user)),
        Request::NewBackupCodes { user, .. } => ("backup-codes", Some(user)),
        Request::UnlockSource { .. } => ("unlock-source", None),
        Request::Rekey {} => ("rekey", None),
        // Reads change nothing and are not logged.
        _ => return,
    };
    tracing::info!(
        uid = task.caller.uid(),
        user = user.map_or("-", String::as_str),
        "admin request: {kind}"
    );
}

type Prepared = (AdminOp, Vec<SecretString>);

/// Turns a request into an engine operation, hashing backup codes first.
async fn into_op(request: Request) -> Result<Prepared, Response> {
    let op = match request {
        Request::Enroll {
            user,
            token,
            backup_codes,
        } => return prepare_enroll(user, token, backup_codes).await,
        Request::Import { entries } => return prepare_import(entries).await,
        Request::NewBackupCodes { user, count } => return prepare_backup_codes(user, count).await,
        Request::List { after, limit } => AdminOp::List { after, limit },
        Request::Show { user } => AdminOp::Show { user },
        Request::SetEnabled { user, token, enabled } => AdminOp::SetEnabled { user, token, enabled },
        Request::Remove { user, token } => AdminOp::Remove { user, token },
        Request::Resync {
            user,
            token,
            first,
            second,
        } => AdminOp::Resync {
            user,
            token,
            first,
            second,
        },
        Request::Unlock { user } => AdminOp::Unlock { user },
        Request::UnlockSource { source } => AdminOp::UnlockSource { source },
        Request::Status {} => AdminOp::Counts,
        Request::Rekey {} => AdminOp::Rekey,
        Request::Lookup { .. } | Request::Verify { .. } | Request::VerifyTail { .. } => return Err(internal_error()),
    };
    Ok((op, Vec::new()))
}

async fn prepare_enroll(user: String, token: freeauth_proto::NewToken, count: u32) -> Result<Prepared, Response> {
    let (backup, codes) = new_backup_set(count).await?;
    Ok((AdminOp::Enroll { user, token, backup }, codes))
}

async fn prepare_backup_codes(user: String, count: u32) -> Result<Prepared, Response> {
    let (backup, codes) = new_backup_set(count).await?;
    let backup = backup.unwrap_or(BackupSet {
        salt: Vec::new(),
        hashes: Vec::new(),
    });
    Ok((AdminOp::ReplaceBackupCodes { user, backup }, codes))
}

/// Creates `count` random backup codes and hashes them off the engine
/// thread. Returns no set for 0 codes.
async fn new_backup_set(count: u32) -> Result<(Option<BackupSet>, Vec<SecretString>), Response> {
    if count > MAX_BACKUP_CODES {
        return Err(invalid(format!("at most {MAX_BACKUP_CODES} backup codes per user")));
    }
    if count == 0 {
        return Ok((None, Vec::new()));
    }
    let codes = (0..count)
        .map(|_| random_backup_code())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(internal_error)?;
    let backup = hash_set(codes.clone()).await?;
    Ok((Some(backup), codes))
}

async fn prepare_import(entries: Vec<ImportEntry>) -> Result<Prepared, Response> {
    let mut tokens = Vec::with_capacity(entries.len());
    let mut codes_by_user: Vec<(String, Vec<SecretString>)> = Vec::new();
    for entry in entries {
        if !entry.backup_codes.is_empty() {
            for code in &entry.backup_codes {
                if code.expose().len() != 8 || !code.expose().bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid(format!(
                        "backup codes of {} must be 8 digits; nothing was imported",
                        entry.user
                    )));
                }
            }
            match codes_by_user.iter_mut().find(|(user, _)| *user == entry.user) {
                Some((_, codes)) => codes.extend(entry.backup_codes),
                None => codes_by_user.push((entry.user.clone(), entry.backup_codes)),
            }
        }
        tokens.push((entry.user, entry.token));
    }
    let mut backups = Vec::with_capacity(codes_by_user.len());
    for (user, codes) in codes_by_user {
        backups.push((user, hash_set(codes).await?));
    }
    Ok((AdminOp::Import { tokens, backups }, Vec::new()))
}

/// Hashes `codes` under a fresh salt on a blocking thread.
async fn hash_set(codes: Vec<SecretString>) -> Result<BackupSet, Response> {
    tokio::task::spawn_blocking(move || {
        let mut salt = vec![0u8; 16];
        getrandom::getrandom(&mut salt).ok()?;
        let hashes = codes
            .iter()
            .map(|code| hash_backup_code(code.expose(), &salt))
            .collect::<Option<Vec<_>>>()?;
        Some(BackupSet { salt, hashes })
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(internal_error)
}

/// A uniformly random 8-digit code.
fn random_backup_code() -> Option<SecretString> {
    loop {
        let mut bytes = [0u8; 4];
        getrandom::getrandom(&mut bytes).ok()?;
        let value = u32::from_be_bytes(bytes);
        // Reject the top of the range so that every code is equally likely.
        if value < 4_200_000_000 {
            return Some(SecretString::new(format!("{:08}", value % 100_000_000)));
        }
    }
}

fn invalid(message: String) -> Response {
    Response::Error {
        kind: ErrorKind::Invalid,
        message,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn hash_slot_gives_up_in_time() {
        let slots = Semaphore::new(1);
        let first = hash_slot(&slots, Duration::from_millis(10)).await.unwrap();
        assert!(first.is_some());
        let started = std::time::Instant::now();
        assert!(hash_slot(&slots, Duration::from_millis(20)).await.unwrap().is_none());
        assert!(started.elapsed() >= Duration::from_millis(20));
        drop(first);
        assert!(hash_slot(&slots, Duration::from_millis(20)).await.unwrap().is_some());
        slots.close();
        assert!(hash_slot(&slots, Duration::from_millis(20)).await.is_err());
    }
}
