//! Management requests, run on the engine thread like verifications so that
//! an enrolment, an unlock or a resync never races with a login.

use freeauth_otp::{code_identity, Algorithm, Code, Kind, Secret, State};
use freeauth_proto::{
    AgentStatus, ErrorKind, HashAlgorithm, NewToken, Response, SecretString, TokenInfo, TokenKind, UserDetail,
    UserSummary, MAX_LIST_PAGE, MAX_USER_LEN,
};
use subtle::ConstantTimeEq;

use crate::engine::{failures_of, Context, EngineError, MemoryCounts};
use crate::keys::Field;
use crate::policy::{source_address, split_source_key, FailureTable, Failures, SourceFailures};
use crate::store::{Account, Db, TokenRow, TokenSettings};

/// Most tokens one account may have, enabled or not. Each token adds codes
/// that a guess can hit, and a verification tries every token, so the
/// number stays small. It also bounds the comparison of a new secret with
/// the account's others, which runs on the engine thread.
pub const MAX_TOKENS_PER_USER: usize = 16;

/// Backup codes hashed off the engine thread, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSet {
    pub salt: Vec<u8>,
    pub hashes: Vec<[u8; 32]>,
}

/// An admin request as the engine runs it.
#[derive(Debug)]
pub enum AdminOp {
    Enroll {
        user: String,
        token: NewToken,
        backup: Option<BackupSet>,
    },
    /// Tokens, then backup codes per user; all stored, or none.
    Import {
        tokens: Vec<(String, NewToken)>,
        backups: Vec<(String, BackupSet)>,
    },
    /// A page of users in name order; see `Request::List`.
    List {
        after: Option<String>,
        limit: Option<u32>,
    },
    Show {
        user: String,
    },
    SetEnabled {
        user: String,
        token: Option<u64>,
        enabled: bool,
    },
    Remove {
        user: String,
        token: Option<u64>,
    },
    Resync {
        user: String,
        token: Option<u64>,
        first: SecretString,
        second: SecretString,
    },
    /// Replaces all backup codes of an existing account.
    ReplaceBackupCodes {
        user: String,
        backup: BackupSet,
    },
    Unlock {
        user: String,
    },
    UnlockSource {
        source: String,
    },
    Counts,
    /// Runs alone, outside any batch: see [`crate::engine::Engine::rekey`].
    Rekey,
}

type AdminResult = Result<Response, EngineError>;

/// Runs `op`. An error `Response` makes the caller roll the savepoint back.
pub(crate) fn run(context: &Context<'_>, db: Db<'_, '_>, memory: &mut MemoryCounts, op: AdminOp) -> AdminResult {
    match op {
        AdminOp::Enroll { user, token, backup } => {
            let response = enroll(context, db, &user, &token, backup.as_ref())?;
            if !matches!(response, Response::Error { .. }) {
                forget_unknown(context, db, memory, &user)?;
            }
            Ok(response)
        }
        AdminOp::Import { tokens, backups } => {
            let response = import(context, db, &tokens, &backups)?;
            if !matches!(response, Response::Error { .. }) {
                for (user, _) in &tokens {
                    forget_unknown(context, db, memory, user)?;
                }
            }
            Ok(response)
        }
        AdminOp::List { after, limit } => list(context, db, after.as_deref(), limit),
        AdminOp::Show { user } => show(context, db, &user),
        AdminOp::SetEnabled { user, token, enabled } => set_enabled(db, &user, token, enabled),
        AdminOp::Remove { user, token } => remove(context, db, &user, token),
        AdminOp::Resync {
            user,
            token,
            first,
            second,
        } => resync(context, db, &user, token, &first, &second),
        AdminOp::ReplaceBackupCodes { user, backup } => replace_backup_codes(db, &user, &backup),
        AdminOp::Unlock { user } => unlock(context, db, &mut memory.unknown, &user),
        AdminOp::UnlockSource { source } => Ok(unlock_source(&mut memory.sources, &source)),
        AdminOp::Counts => counts(context, db, memory),
        // The engine runs a rekey itself and never passes it here.
        AdminOp::Rekey => Err(EngineError {
            message: "a rekey reached a batch".into(),
        }),
    }
}

/// Forgets the failure count that `user` collected as a name without an
/// account, now that it has one. Otherwise the count would come back if
/// the account were removed.
fn forget_unknown(
    context: &Context<'_>,
    db: Db<'_, '_>,
    memory: &mut MemoryCounts,
    user: &str,
) -> Result<(), EngineError> {
    db.forget_unknown_failures(&context.cipher.digest(user.as_bytes()))?;
    memory.unknown.forget(&context.unknown_key_of(user));
    Ok(())
}

fn error(kind: ErrorKind, message: impl Into<String>) -> AdminResult {
    Ok(Response::Error {
        kind,
        message: message.into(),
    })
}

/// Checks a user name: 1 to 253 bytes, no control characters, no
/// surrounding white space. Invisible format characters pass: names in
/// Persian and Indic scripts need the zero-width non-joiner and joiner.
/// Logs and freeauthctl print them escaped.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER_LEN {
        return Err(format!("user name must be 1 to {MAX_USER_LEN} bytes long"));
    }
    if name.chars().any(char::is_control) {
        return Err("user name must not contain control characters".into());
    }
    if name.trim() != name {
        return Err("user name must not start or end with white space".into());
    }
    Ok(())
}

/// A checked token with its opened secrets.
struct CheckedToken {
    settings: TokenSettings,
    seed: Secret,
    pin: Option<Secret>,
}

/// Validates a token received from `freeauthctl`.
fn check_token(token: &NewToken) -> Result<CheckedToken, String> {
    let seed = Secret::from_hex(token.secret_hex.expose()).map_err(|err| format!("invalid secret: {err}"))?;
    let kind = kind_of(token.kind);
    let (digits, period) = match kind {
        Kind::Motp => (6, 10),
        Kind::Hotp => (token.digits, 30),
        Kind::Totp => (token.digits, token.period),
    };
    if kind != Kind::Motp && digits != 6 && digits != 8 {
        return Err(format!("{} codes must have 6 or 8 digits, not {}", kind, token.digits));
    }
    if kind == Kind::Hotp && token.counter > freeauth_otp::MAX_COUNTER {
        return Err(format!(
            "HOTP counter must be at most {}, not {}",
            freeauth_otp::MAX_COUNTER,
            token.counter
        ));
    }
    if kind == Kind::Totp && !(1..=86_400).contains(&period) {
        return Err(format!("TOTP period must be 1 to 86400 seconds, not {period}"));
    }
    let (min_len, what) = match kind {
        Kind::Motp => (8, "Mobile-OTP secrets must be at least 8 bytes (16 hex digits)"),
        _ => (10, "HOTP and TOTP secrets must be at least 10 bytes (80 bits)"),
    };
    if seed.len() < min_len || seed.len() > 128 {
        return Err(format!(
            "{what} and at most 128 bytes; this one has {} bytes",
            seed.len()
        ));
    }
    let pin = check_pin(kind, token.pin.as_ref())?;
    if let Some(label) = &token.label {
        check_label(label)?;
    }
    let state = State {
        counter: token.counter,
        last_step: if kind == Kind::Hotp { None } else { token.last_step },
        drift: 0,
    };
    let settings = TokenSettings {
        kind,
        algorithm: algorithm_of(token.algorithm),
        digits,
        period,
        state,
        label: token.label.clone(),
    };
    Ok(CheckedToken { settings, seed, pin })
}

/// Maximum length of a token label, in bytes.
pub const MAX_LABEL_LEN: usize = 128;

/// Checks a token label: 1 to 128 bytes without control characters, which
/// start terminal escape sequences. `show` prints the label to an
/// administrator's terminal (escaping invisible format characters), and a
/// member of the admin group may set it.
fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > MAX_LABEL_LEN {
        return Err(format!("label must be 1 to {MAX_LABEL_LEN} bytes long"));
    }
    if label.chars().any(char::is_control) {
        return Err("label must not contain control characters".into());
    }
    Ok(())
}

fn check_pin(kind: Kind, pin: Option<&SecretString>) -> Result<Option<Secret>, String> {
    match (kind, pin) {
        (Kind::Motp, Some(pin)) => {
            let text = pin.expose();
            if !(4..=16).contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err("Mobile-OTP PIN must be 4 to 16 digits".into());
            }
            Ok(Some(Secret::new(text.as_bytes().to_vec())))
        }
        (Kind::Motp, None) => Err("Mobile-OTP tokens need a PIN".into()),
        (_, Some(_)) => Err("only Mobile-OTP tokens take a PIN".into()),
        (_, None) => Ok(None),
    }
}

/// Stores one checked token for `user`; returns its id.
fn store_token(
    context: &Context<'_>,
    db: Db<'_, '_>,
    user: &str,
    token: &NewToken,
) -> Result<Result<i64, String>, EngineError> {
    if let Err(problem) = check_user_name(user) {
        return Ok(Err(problem));
    }
    let mut checked = match check_token(token) {
        Ok(checked) => checked,
        Err(problem) => return Ok(Err(problem)),
    };
    if let Some(problem) = future_last_step(&checked.settings, context.now) {
        return Ok(Err(problem));
    }
    if checked.settings.kind != Kind::Hotp {
        keep_retired_uses(context, db, user, &mut checked)?;
    }
    let user_id = db.ensure_account(user)?;
    // Two tokens that give the same codes would accept each code twice,
    // once per token. Equal secrets do; so do secrets that differ only in
    // ways the code algorithm does not see (see `code_identity`).
    let new_identity = code_identity(
        checked.settings.kind,
        checked.settings.algorithm,
        &checked.seed,
        checked.pin.as_ref(),
    );
    let rows = db.tokens(user_id)?;
    if rows.len() >= MAX_TOKENS_PER_USER {
        return Ok(Err(format!(
            "user {user} already has {} tokens, the most one account may have; remove one first",
            rows.len()
        )));
    }
    for row in rows {
        let existing = row.id;
        let open = context.open(row)?;
        let same_secret = bool::from(open.seed.as_bytes().ct_eq(checked.seed.as_bytes()));
        let old_identity = code_identity(open.params.kind, open.params.algorithm, &open.seed, open.pin.as_ref());
        if same_secret || bool::from(old_identity.as_slice().ct_eq(new_identity.as_slice())) {
            return Ok(Err(format!(
                "user {user} already has token {existing} with this secret, or one that gives the same codes"
            )));
        }
    }
    let token_id = db.insert_token(user_id, &checked.settings, context.now)?;
    let seal_failed = |_| EngineError {
        message: "the random generator failed while sealing a seed".into(),
    };
    let seed = context
        .cipher
        .seal(token_id, Field::Seed, checked.seed.as_bytes())
        .map_err(seal_failed)?;
    let pin = match &checked.pin {
        Some(pin) => Some(
            context
                .cipher
                .seal(token_id, Field::Pin, pin.as_bytes())
                .map_err(seal_failed)?,
        ),
        None => None,
    };
    db.set_sealed(token_id, &seed, pin.as_deref())?;
    Ok(Ok(token_id))
}

/// Checks that a time-based token's last used step is at most a day after
/// the step of `now`: a step far ahead would mark every code until then as
/// used.
fn future_last_step(settings: &TokenSettings, now: u64) -> Option<String> {
    let last_step = settings.state.last_step?;
    let current = freeauth_otp::totp_step(now, settings.period);
    let day = u64::from(86_400 / settings.period.max(1));
    (last_step > current.saturating_add(day))
        .then(|| format!("last used time step {last_step} is more than a day after the current step {current}"))
}

/// Largest Unix time SQLite's signed 64-bit integers hold.
const MAX_STORED_TIME: u64 = i64::MAX as u64;

/// Seconds for which a removed time-based token's used codes stay used at
/// least, for a new token with the same secret. Longer windows keep them
/// as long as the window lasts.
const RETIRED_FOR: u64 = 24 * 3600;

/// Records, for each removed time-based token that was used, a keyed
/// digest of its code identity and the end of its newest used step, so that
/// [`keep_retired_uses`] can find them when the secret comes back.
fn retire_used_secrets(
    context: &Context<'_>,
    db: Db<'_, '_>,
    user: &str,
    removed: Vec<TokenRow>,
) -> Result<(), EngineError> {
    db.prune_retired(context.now)?;
    let windows = &context.settings.windows;
    for row in removed {
        let Some(last_step) = row.state.last_step.filter(|_| row.kind != Kind::Hotp) else {
            continue;
        };
        let (token_id, kind, period) = (row.id, row.kind, u64::from(row.period));
        let open = match context.open(row) {
            Ok(open) => open,
            Err(err) => {
                tracing::error!(user, token = token_id, error = %err.message, "removed token not recorded: its seed does not open, so its used codes cannot be kept used");
                continue;
            }
        };
        let identity = code_identity(open.params.kind, open.params.algorithm, &open.seed, open.pin.as_ref());
        // Enrolment keeps `last_step` within a day of its time, so this stays
        // far below i64::MAX; the bound only keeps a damaged row storable.
        let used_until = last_step.saturating_add(1).saturating_mul(period).min(MAX_STORED_TIME);
        // The newest used code stays valid for a new token (drift 0) for
        // the window's steps after its own.
        let steps = match kind {
            Kind::Motp => windows.motp_steps,
            _ => windows.totp_steps,
        };
        let valid_until = used_until.saturating_add(u64::from(steps).saturating_mul(period));
        let expires = valid_until
            .max(context.now.saturating_add(RETIRED_FOR))
            .min(MAX_STORED_TIME);
        db.retire_secret(&context.cipher.digest(&identity), used_until, expires)?;
    }
    Ok(())
}

/// Moves the new time-based token's last used step past the codes that a
/// removed token with the same secret used, so that they are not accepted
/// again after the secret is enrolled once more.
fn keep_retired_uses(
    context: &Context<'_>,
    db: Db<'_, '_>,
    user: &str,
    checked: &mut CheckedToken,
) -> Result<(), EngineError> {
    let identity = code_identity(
        checked.settings.kind,
        checked.settings.algorithm,
        &checked.seed,
        checked.pin.as_ref(),
    );
    // A record made before a rekey has the digest of a replaced key.
    let mut used_until = db.retired_until(&context.cipher.digest(&identity), context.now)?;
    for digest in context.cipher.previous_digests(&identity, context.now) {
        used_until = used_until.max(db.retired_until(&digest, context.now)?);
    }
    let Some(used_until) = used_until else {
        return Ok(());
    };
    let period = u64::from(checked.settings.period.max(1));
    // Every step that began before the used code's step ended.
    let used_step = used_until.saturating_sub(1) / period;
    let state = &mut checked.settings.state;
    if state.last_step.is_none_or(|step| step < used_step) {
        state.last_step = Some(used_step);
        tracing::info!(
            user,
            "the new token has the secret of a token removed after a use: codes up to that use stay used"
        );
    }
    Ok(())
}

fn enroll(
    context: &Context<'_>,
    db: Db<'_, '_>,
    user: &str,
    token: &NewToken,
    backup: Option<&BackupSet>,
) -> AdminResult {
    let token_id = match store_token(context, db, user, token)? {
        Ok(id) => id,
        Err(problem) => return error(ErrorKind::Invalid, problem),
    };
    if let Some(backup) = backup {
        let user_id = db.ensure_account(user)?;
        db.replace_backup_codes(user_id, &backup.salt, &backup.hashes)?;
    }
    tracing::info!(user, token = token_id, kind = %kind_of(token.kind), "token enrolled");
    Ok(Response::Enrolled {
        user: user.to_owned(),
        token: u64::try_from(token_id).unwrap_or(0),
        backup_codes: Vec::new(),
    })
}

fn replace_backup_codes(db: Db<'_, '_>, user: &str, backup: &BackupSet) -> AdminResult {
    let account = match find_account(db, user)? {
        Ok(account) => account,
        Err(response) => return Ok(response),
    };
    db.replace_backup_codes(account.id, &backup.salt, &backup.hashes)?;
    tracing::info!(user, count = backup.hashes.len(), "backup codes replaced");
    Ok(Response::BackupCodes {
        user: account.name,
        backup_codes: Vec::new(),
    })
}

fn import(
    context: &Context<'_>,
    db: Db<'_, '_>,
    tokens: &[(String, NewToken)],
    backups: &[(String, BackupSet)],
) -> AdminResult {
    let mut users = std::collections::BTreeSet::new();
    // An import adds accounts; it never stacks tokens on an existing one, so
    // importing a file twice is an error instead of a duplicate.
    for (user, _) in tokens {
        if let Some(account) = db.account(user)? {
            if !db.tokens(account.id)?.is_empty() {
                let message =
                    format!("user {user} already has tokens; remove them first (freeauthctl remove {user}); nothing was imported");
                return error(ErrorKind::Conflict, message);
            }
        }
    }
    for (index, (user, token)) in tokens.iter().enumerate() {
        if let Err(problem) = store_token(context, db, user, token)? {
            let message = format!("entry {} (user {user}): {problem}; nothing was imported", index + 1);
            return error(ErrorKind::Invalid, message);
        }
        users.insert(user.as_str());
    }
    for (user, backup) in backups {
        if let Err(problem) = check_user_name(user) {
            return error(
                ErrorKind::Invalid,
                format!("backup codes of {user}: {problem}; nothing was imported"),
            );
        }
        let user_id = db.ensure_account(user)?;
        db.replace_backup_codes(user_id, &backup.salt, &backup.hashes)?;
        users.insert(user.as_str());
    }
    tracing::info!(users = users.len(), tokens = tokens.len(), "tokens imported");
    Ok(Response::Imported {
        users: u32::try_from(users.len()).unwrap_or(u32::MAX),
        tokens: u32::try_from(tokens.len()).unwrap_or(u32::MAX),
    })
}

fn find_account(db: Db<'_, '_>, user: &str) -> Result<Result<Account, Response>, EngineError> {
    // No account can have such a name: the reason beats "has no tokens".
    if let Err(problem) = check_user_name(user) {
        return Ok(Err(Response::Error {
            kind: ErrorKind::Invalid,
            message: problem,
        }));
    }
    match db.account(user)? {
        Some(account) => Ok(Ok(account)),
        None => Ok(Err(Response::Error {
            kind: ErrorKind::NotFound,
            message: format!("user {user} has no tokens"),
        })),
    }
}

fn list(context: &Context<'_>, db: Db<'_, '_>, after: Option<&str>, limit: Option<u32>) -> AdminResult {
    let limit = limit.map(|limit| limit.clamp(1, MAX_LIST_PAGE));
    // The name after the page, if there is one, shows that another page
    // follows.
    let mut names = db.account_names(after, limit.map(|limit| limit + 1))?;
    let next = match limit {
        Some(limit) if names.len() > limit as usize => {
            names.truncate(limit as usize);
            names.last().cloned()
        }
        _ => None,
    };
    let mut users = Vec::new();
    for name in names {
        let Some(account) = db.account(&name)? else {
            continue;
        };
        let tokens = db.tokens(account.id)?;
        let failures = context.policy().current(failures_of(&account), context.now);
        users.push(UserSummary {
            user: name,
            tokens: count_u32(tokens.len()),
            enabled_tokens: count_u32(tokens.iter().filter(|t| t.enabled).count()),
            failures: failures.count,
            locked: failures.is_locked(context.now),
            backup_codes_left: db.backup_codes_left(account.id)?,
        });
    }
    Ok(Response::Users { users, next })
}

fn show(context: &Context<'_>, db: Db<'_, '_>, user: &str) -> AdminResult {
    let account = match find_account(db, user)? {
        Ok(account) => account,
        Err(response) => return Ok(response),
    };
    let failures = context.policy().current(failures_of(&account), context.now);
    let tokens = db.tokens(account.id)?.iter().map(token_info).collect();
    Ok(Response::User {
        user: UserDetail {
            user: account.name.clone(),
            tokens,
            failures: failures.count,
            locked_until: failures.locked_until.filter(|_| failures.is_locked(context.now)),
            backup_codes_left: db.backup_codes_left(account.id)?,
        },
    })
}

fn token_info(row: &crate::store::TokenRow) -> TokenInfo {
    TokenInfo {
        id: u64::try_from(row.id).unwrap_or(0),
        kind: token_kind(row.kind),
        algorithm: hash_algorithm(row.algorithm),
        digits: row.digits,
        period: row.period,
        enabled: row.enabled,
        counter: row.state.counter,
        last_step: row.state.last_step,
        drift_steps: row.state.drift,
        drift_seconds: row.state.drift.saturating_mul(i64::from(row.period)),
        label: row.label.clone(),
        created: row.created,
        last_used: row.last_used,
    }
}

fn token_id(token: Option<u64>) -> Option<i64> {
    token.map(|id| i64::try_from(id).unwrap_or(-1))
}

fn set_enabled(db: Db<'_, '_>, user: &str, token: Option<u64>, enabled: bool) -> AdminResult {
    let account = match find_account(db, user)? {
        Ok(account) => account,
        Err(response) => return Ok(response),
    };
    let tokens = db.tokens(account.id)?;
    if let Some(wanted) = token_id(token) {
        if !tokens.iter().any(|row| row.id == wanted) {
            return error(ErrorKind::NotFound, format!("user {user} has no token {wanted}"));
        }
    }
    // Counts tokens whose state really changed; 0 means they already were so.
    let changed = db.set_enabled(account.id, token_id(token), enabled)?;
    let action = if enabled { "enabled" } else { "disabled" };
    tracing::info!(user, token, action, changed, "token state changed by an administrator");
    Ok(Response::Done { changed })
}

fn remove(context: &Context<'_>, db: Db<'_, '_>, user: &str, token: Option<u64>) -> AdminResult {
    let account = match find_account(db, user)? {
        Ok(account) => account,
        Err(response) => return Ok(response),
    };
    let removed: Vec<TokenRow> = db
        .tokens(account.id)?
        .into_iter()
        .filter(|row| token_id(token).is_none_or(|id| id == row.id))
        .collect();
    let removed_tokens = count_u32(removed.len());
    retire_used_secrets(context, db, user, removed)?;
    // `changed` counts tokens, as SetEnabled does, also when the whole
    // account is removed.
    let changed = match token_id(token) {
        Some(id) => db.remove_token(account.id, id)?,
        None => {
            db.remove_account(account.id)?;
            u64::from(removed_tokens)
        }
    };
    // An account without tokens keeps nothing worth keeping: drop it, with
    // its backup codes, so `list` shows only users who can authenticate.
    if token.is_some() && changed > 0 && db.tokens(account.id)?.is_empty() {
        db.remove_account(account.id)?;
    }
    if token.is_some() && changed == 0 {
        return error(
            ErrorKind::NotFound,
            format!("user {user} has no token {}", token.unwrap_or(0)),
        );
    }
    tracing::info!(user, token, "removed by an administrator");
    Ok(Response::Done { changed })
}

fn resync(
    context: &Context<'_>,
    db: Db<'_, '_>,
    user: &str,
    token: Option<u64>,
    first: &SecretString,
    second: &SecretString,
) -> AdminResult {
    let account = match find_account(db, user)? {
        Ok(account) => account,
        Err(response) => return Ok(response),
    };
    let wanted = token_id(token);
    let tokens = db.tokens(account.id)?;
    // A missing id needs its own error: the no-match error below blames the codes.
    if let Some(wanted) = wanted {
        if !tokens.iter().any(|row| row.id == wanted) {
            return error(ErrorKind::NotFound, format!("user {user} has no token {wanted}"));
        }
    }
    let rows = tokens.into_iter().filter(|row| wanted.is_none_or(|id| id == row.id));
    for row in rows {
        let open = context.open(row)?;
        let charset = open.params.charset();
        let (Ok(first), Ok(second)) = (
            Code::parse(first.expose(), charset),
            Code::parse(second.expose(), charset),
        ) else {
            continue;
        };
        let search = match open.params.kind {
            Kind::Hotp => context.settings.windows.hotp_resync,
            _ => context.settings.windows.time_resync_steps,
        };
        let state = &open.row.state;
        let Some(matched) = freeauth_otp::resync(
            &open.params,
            &open.seed,
            open.pin.as_ref(),
            state,
            search,
            context.now,
            &first,
            &second,
        ) else {
            continue;
        };
        if db.advance_token(open.row.id, state, &matched.state, context.now)? {
            tracing::info!(
                user,
                token = open.row.id,
                drift_steps = matched.state.drift,
                "token resynchronised"
            );
            return Ok(Response::Resynced {
                token: u64::try_from(open.row.id).unwrap_or(0),
                drift_steps: matched.state.drift,
                next_counter: (open.params.kind == Kind::Hotp).then_some(matched.state.counter),
            });
        }
    }
    let searched = match wanted {
        Some(id) => format!("token {id} of {user}"),
        None => format!("any token of {user}"),
    };
    error(
        ErrorKind::Invalid,
        format!(
            "the two codes do not match consecutive codes of {searched} within the resync window \
             (hotp_resync or time_resync_steps); codes no newer than the last accepted one do not count"
        ),
    )
}

fn unlock(context: &Context<'_>, db: Db<'_, '_>, unknown: &mut FailureTable, user: &str) -> AdminResult {
    let key = context.unknown_key_of(user);
    let had_count = unknown.get(&key) != Failures::default();
    unknown.forget(&key);
    db.forget_unknown_failures(&context.cipher.digest(user.as_bytes()))?;
    let account = match find_account(db, user)? {
        Ok(account) => account,
        Err(_) if had_count => {
            tracing::info!(
                user,
                "failure count of a name without an account cleared by an administrator"
            );
            return Ok(Response::Done { changed: 1 });
        }
        Err(response) => return Ok(response),
    };
    // Counts the account as changed only when it had failures or a lock in
    // force, as disable and enable count only tokens whose state changed.
    let current = context.policy().current(failures_of(&account), context.now);
    let changed = u64::from(current.count > 0 || current.is_locked(context.now));
    db.set_failures(account.id, 0, None)?;
    tracing::info!(user, changed, "unlocked by an administrator");
    Ok(Response::Done { changed })
}

/// Forgets the count and lock of every source that `source` names: a
/// source's whole name as the agent logs it, or an address, which matches
/// it under every front end. Both are compared in their normalized form.
fn unlock_source(sources: &mut FailureTable<SourceFailures>, source: &str) -> Response {
    let typed = source.trim().to_lowercase();
    let whole_name = split_source_key(&typed)
        .and_then(|(frontend, address)| Some(format!("{frontend}:{}", source_address(address)?)));
    let address = source_address(&typed);
    let changed = sources.forget_matching(|key| match (&whole_name, &address) {
        (Some(name), _) => key == name,
        (None, Some(address)) => split_source_key(key).is_some_and(|(_, of_key)| of_key == address),
        (None, None) => false,
    });
    if changed > 0 {
        tracing::info!(source, changed, "source unlocked by an administrator");
    }
    Response::Done {
        changed: u64::try_from(changed).unwrap_or(u64::MAX),
    }
}

fn counts(context: &Context<'_>, db: Db<'_, '_>, memory: &MemoryCounts) -> AdminResult {
    let (users, tokens) = db.counts()?;
    // The policy's view, so that a lock the engine takes as ended (clock
    // set back, lock_seconds lowered) is not counted.
    let policy = context.policy();
    let locked_sources = memory
        .sources
        .count_matching(|source| policy.source_current(*source, context.now).is_locked(context.now));
    Ok(Response::Status {
        status: AgentStatus {
            version: String::new(),
            uptime_seconds: 0,
            users,
            tokens,
            accepted: 0,
            rejected: 0,
            open_connections: 0,
            database: String::new(),
            locked_sources: u64::try_from(locked_sources).unwrap_or(u64::MAX),
        },
    })
}

fn count_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Wire enum to the OTP crate's enum.
pub fn kind_of(kind: TokenKind) -> Kind {
    match kind {
        TokenKind::Hotp => Kind::Hotp,
        TokenKind::Totp => Kind::Totp,
        TokenKind::Motp => Kind::Motp,
    }
}

fn token_kind(kind: Kind) -> TokenKind {
    match kind {
        Kind::Hotp => TokenKind::Hotp,
        Kind::Totp => TokenKind::Totp,
        Kind::Motp => TokenKind::Motp,
    }
}

fn algorithm_of(algorithm: HashAlgorithm) -> Algorithm {
    match algorithm {
        HashAlgorithm::Sha1 => Algorithm::Sha1,
        HashAlgorithm::Sha256 => Algorithm::Sha256,
        HashAlgorithm::Sha512 => Algorithm::Sha512,
    }
}

fn hash_algorithm(algorithm: Algorithm) -> HashAlgorithm {
    match algorithm {
        Algorithm::Sha1 => HashAlgorithm::Sha1,
        Algorithm::Sha256 => HashAlgorithm::Sha256,
        Algorithm::Sha512 => HashAlgorithm::Sha512,
    }
}
