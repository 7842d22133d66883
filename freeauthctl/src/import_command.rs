//! `freeauthctl import`: parse a file of another OTP system completely,
//! then send every token in one request, which the agent stores in one
//! transaction. Any invalid line stops the import before anything is sent.

use std::path::Path;
use std::process::ExitCode;

use freeauth_agentd::config::Config;
use freeauth_proto::{ImportEntry, NewToken, Request, RequestFrame, SecretString, MAX_FRAME_LEN};
use freeauthctl::import::{parse_google_authenticator, parse_users_oath_lines, ImportError};
use freeauthctl::otpauth::TokenDescription;

use crate::cli::{ImportArgs, ImportFormat};
use crate::commands::{call, hash_algorithm, read_file, token_kind, CommandError};
use crate::output;

pub fn run(config: &Config, args: ImportArgs, json: bool) -> Result<ExitCode, CommandError> {
    let entries = match (args.format, args.operands.as_slice()) {
        (ImportFormat::GoogleAuthenticator, [user, file]) => google_authenticator(user, Path::new(file))?,
        (ImportFormat::GoogleAuthenticator, _) => {
            return Err("usage: freeauthctl import --format google-authenticator USER FILE".into())
        }
        (ImportFormat::Oath, [file]) => oath(Path::new(file))?,
        (ImportFormat::Oath, _) => return Err("usage: freeauthctl import --format oath FILE".into()),
    };
    let request = Request::Import { entries };
    check_size(&request)?;
    let response = call(config, request)?;
    output::print_response(&response, json)?;
    Ok(ExitCode::SUCCESS)
}

/// Rejects an import that cannot travel as one request, with the number of
/// tokens that would fit, so that the administrator can split the file.
fn check_size(request: &Request) -> Result<(), CommandError> {
    let Request::Import { entries } = request else {
        return Ok(());
    };
    let size = json_size(request)? + frame_overhead()?;
    if size <= MAX_FRAME_LEN || entries.is_empty() {
        return Ok(());
    }
    let per_token = size.div_ceil(entries.len());
    let fitting = MAX_FRAME_LEN / per_token.max(1);
    Err(format!(
        "the file has {} tokens, {size} bytes as one request, and the agent takes at most {MAX_FRAME_LEN} bytes per request. \
         Split the file into parts of at most {fitting} tokens, with all lines of one user in the same part, \
         and import each part; each part is stored whole or not at all",
        entries.len(),
    ))
}

/// Returns the length of `value` as JSON.
fn json_size<T: serde::Serialize>(value: &T) -> Result<usize, CommandError> {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, value).map_err(|err| format!("cannot encode the import: {err}"))?;
    Ok(counter.0)
}

/// Returns the bytes a [`RequestFrame`] adds around its request, with the
/// longest id.
fn frame_overhead() -> Result<usize, CommandError> {
    let small = Request::Status {};
    let frame = RequestFrame {
        id: u64::MAX,
        request: small.clone(),
    };
    Ok(json_size(&frame)?.saturating_sub(json_size(&small)?))
}

/// Counts the bytes written to it and keeps none, so no copy of a seed is
/// left in memory.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(bytes.len());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn new_token(token: &TokenDescription, last_step: Option<u64>) -> NewToken {
    NewToken {
        kind: token_kind(token.kind),
        algorithm: hash_algorithm(token.algorithm),
        digits: token.digits,
        period: token.period,
        counter: token.counter,
        last_step,
        secret_hex: SecretString::new(token.secret.to_hex().as_str()),
        pin: None,
        label: token.issuer.clone(),
    }
}

/// For a time-based token of a users file, which does not record its last
/// time step: the current step, so a code pam_oath accepted moments ago
/// cannot be used again here. Codes of the next step work.
fn current_step(token: &TokenDescription) -> Option<u64> {
    if token.kind != freeauth_otp::Kind::Totp {
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(freeauth_otp::totp_step(now, token.period))
}

fn google_authenticator(user: &str, path: &Path) -> Result<Vec<ImportEntry>, CommandError> {
    let text = read_file(path)?;
    let file = parse_google_authenticator(&text).map_err(|errors| describe(path, &errors))?;
    if let (Some(recorded), Some(now)) = (file.last_step, current_step(&file.token)) {
        // A step recorded far ahead would mark every code until then as
        // used: the user could not log in, and each try would count as a
        // failure. A day leaves room for clocks that disagree.
        let day = u64::from(86_400 / file.token.period.max(1));
        if recorded > now.saturating_add(day) {
            return Err(format!(
                "{}: line {}: DISALLOW_REUSE records time step {recorded}, more than a day after the current \
                 step {now}; check the clock of the machine the file comes from, or remove the line\n\
                 Nothing was imported.",
                path.display(),
                file.last_step_line
            ));
        }
    }
    for note in &file.notes {
        eprintln!("freeauthctl: note: {}", freeauth_proto::text::printable(note));
    }
    Ok(vec![ImportEntry {
        user: user.to_owned(),
        token: new_token(&file.token, file.last_step),
        backup_codes: file
            .scratch_codes
            .iter()
            .map(|code| SecretString::new(code.as_str()))
            .collect(),
    }])
}

fn oath(path: &Path) -> Result<Vec<ImportEntry>, CommandError> {
    let text = read_file(path)?;
    let (entries, mut errors) = parse_users_oath_lines(&text);
    // Static passwords are reported with the other problems, so that one
    // run lists them all.
    errors.extend(entries.iter().filter(|entry| entry.has_password).map(|entry| {
        ImportError::new(
            entry.line,
            format!(
                "user {} has a static password, which FreeAuth does not keep (PAM asks for the password \
                 separately): replace the password field with -",
                entry.user
            ),
        )
    }));
    let mut per_user: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for entry in &entries {
        let count = per_user.entry(entry.user.as_str()).or_default();
        *count += 1;
        if *count == freeauth_agentd::admin::MAX_TOKENS_PER_USER + 1 {
            errors.push(ImportError::new(
                entry.line,
                format!(
                    "user {} has more than {} tokens, the most one account may have",
                    entry.user,
                    freeauth_agentd::admin::MAX_TOKENS_PER_USER
                ),
            ));
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|err| err.line);
        return Err(describe(path, &errors));
    }
    if entries.is_empty() {
        // An empty file, or a named pipe that nothing writes to.
        return Err(format!("{}: no token lines\nNothing was imported.", path.display()));
    }
    Ok(entries
        .iter()
        .map(|entry| ImportEntry {
            user: entry.user.clone(),
            token: new_token(&entry.token, entry.last_step.or_else(|| current_step(&entry.token))),
            backup_codes: Vec::new(),
        })
        .collect())
}

fn describe<E: std::fmt::Display>(path: &Path, errors: &[E]) -> String {
    let lines: Vec<String> = errors.iter().map(|err| format!("{}: {err}", path.display())).collect();
    format!("{}\nNothing was imported.", lines.join("\n"))
}
