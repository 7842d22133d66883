//! Text and JSON output of `freeauthctl`.

use freeauth_otp::Kind;
use freeauth_proto::text::printable;
use freeauth_proto::{
    AgentStatus, ErrorKind, Response, SecretString, TokenInfo, UserDetail, UserSummary, VerifyResult,
};
use freeauthctl::otpauth::TokenDescription;
use serde::Serialize;

pub fn print_json<T: Serialize>(value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|err| format!("cannot format JSON: {err}"))?;
    say!("{text}");
    Ok(())
}

/// Prints any non-error response.
pub fn print_response(response: &Response, json: bool) -> Result<(), String> {
    if json {
        return print_json(response);
    }
    match response {
        Response::Users { users, .. } => {
            let mut table = UserTable::default();
            table.print(users);
            table.finish();
        }
        Response::User { user } => print_user(user),
        Response::Done { changed } => say!("done ({changed} changed)"),
        Response::Resynced {
            token,
            next_counter: Some(counter),
            ..
        } => say!("token {token} resynchronised, next counter {counter}"),
        Response::Resynced { token, drift_steps, .. } => {
            say!("token {token} resynchronised, drift {drift_steps:+} steps")
        }
        Response::Verdict { result, reason } => say!("{}", verdict_line(*result, reason.as_deref())),
        Response::Status { status } => print_status(status),
        Response::Imported { users, tokens } => say!(
            "imported {tokens} {} for {users} {}",
            if *tokens == 1 { "token" } else { "tokens" },
            if *users == 1 { "user" } else { "users" }
        ),
        other => say!("{other:?}"),
    }
    Ok(())
}

/// Formats the verdict of `verify`, with the agent's reason when it names
/// one, so that "unknown user" distinguishes a mistyped name from a user
/// whose tokens are all disabled.
fn verdict_line(result: VerifyResult, reason: Option<&str>) -> String {
    match (result, reason) {
        (VerifyResult::Rejected | VerifyResult::NoToken, Some(reason)) => format!("rejected: {}", printable(reason)),
        _ => verdict_text(result).to_owned(),
    }
}

fn verdict_text(result: VerifyResult) -> &'static str {
    match result {
        VerifyResult::Accepted => "accepted",
        VerifyResult::Rejected => "rejected",
        VerifyResult::Locked => "rejected: the account is locked (freeauthctl unlock clears it)",
        VerifyResult::NoToken => "rejected: the user has no enabled token",
    }
}

/// Word used in error messages for each kind of refusal.
pub fn error_kind(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Malformed => "malformed request",
        ErrorKind::Forbidden => "forbidden",
        ErrorKind::NotFound => "not found",
        ErrorKind::Invalid => "invalid",
        ErrorKind::Conflict => "conflict",
        ErrorKind::RateLimited => "rate limited",
        ErrorKind::Internal => "internal error",
    }
}

/// The text table of `freeauthctl list`, printed a page at a time.
#[derive(Default)]
pub struct UserTable {
    rows: u64,
}

impl UserTable {
    /// Prints the rows of `users`, after the header if they are the first.
    pub fn print(&mut self, users: &[UserSummary]) {
        if self.rows == 0 && !users.is_empty() {
            say!(
                "{:<NAME_WIDTH$} {:>6} {:>8} {:>8} {:>7} {:>7}",
                "USER",
                "TOKENS",
                "ENABLED",
                "FAILURES",
                "LOCKED",
                "BACKUP"
            );
        }
        for user in users {
            for line in user_row_lines(user) {
                say!("{line}");
            }
        }
        self.rows += users.len() as u64;
    }

    /// Prints a line saying that there are no users, if no row was printed.
    pub fn finish(self) {
        if self.rows == 0 {
            say!("no users have tokens");
        }
    }
}

/// Width in characters of the USER column of `list`.
const NAME_WIDTH: usize = 24;

/// Formats one row of the `list` table. A name wider than its column takes
/// a line of its own and the numbers follow on the next one, so that they
/// stay under their headers on every page.
fn user_row_lines(user: &UserSummary) -> Vec<String> {
    let name = printable(&user.user);
    let locked = if user.locked { "yes" } else { "no" };
    let numbers = format!(
        "{:>6} {:>8} {:>8} {:>7} {:>7}",
        user.tokens, user.enabled_tokens, user.failures, locked, user.backup_codes_left
    );
    if name.chars().count() > NAME_WIDTH {
        vec![name.into_owned(), format!("{:<NAME_WIDTH$} {numbers}", "")]
    } else {
        vec![format!("{name:<NAME_WIDTH$} {numbers}")]
    }
}

/// Explains why the backup codes of `user`, who has no enabled token, do
/// not work yet.
pub fn no_enabled_token_note(user: &str) -> String {
    format!(
        "{} has no enabled token, so the agent rejects these backup codes until a token is enabled or enrolled",
        printable(user)
    )
}

fn print_user(user: &UserDetail) {
    say!("user:              {}", printable(&user.user));
    say!("failures:          {}", user.failures);
    match user.locked_until {
        Some(until) => say!("locked until:      {}", format_time(until)),
        None => say!("locked:            no"),
    }
    if user.backup_codes_left > 0 && !user.tokens.iter().any(|token| token.enabled) {
        say!(
            "backup codes left: {} (rejected while no token is enabled)",
            user.backup_codes_left
        );
    } else {
        say!("backup codes left: {}", user.backup_codes_left);
    }
    for token in &user.tokens {
        print_token(token);
    }
}

fn print_token(token: &TokenInfo) {
    let state = if token.enabled { "enabled" } else { "disabled" };
    let kind = match token.kind {
        freeauth_proto::TokenKind::Hotp => "HOTP",
        freeauth_proto::TokenKind::Totp => "TOTP",
        freeauth_proto::TokenKind::Motp => "Mobile-OTP",
    };
    let algorithm = match token.algorithm {
        freeauth_proto::HashAlgorithm::Sha1 => "SHA1",
        freeauth_proto::HashAlgorithm::Sha256 => "SHA256",
        freeauth_proto::HashAlgorithm::Sha512 => "SHA512",
    };
    say!("token {}: {kind}, {state}", token.id);
    match token.kind {
        freeauth_proto::TokenKind::Hotp => {
            say!("  {algorithm}, {} digits, next counter {}", token.digits, token.counter);
        }
        freeauth_proto::TokenKind::Motp => {
            say!("  6 hex digits, period 10 s");
            say!("  drift {:+} steps ({:+} s)", token.drift_steps, token.drift_seconds);
        }
        freeauth_proto::TokenKind::Totp => {
            say!("  {algorithm}, {} digits, period {} s", token.digits, token.period);
            say!("  drift {:+} steps ({:+} s)", token.drift_steps, token.drift_seconds);
        }
    }
    if let Some(label) = &token.label {
        say!("  label {}", printable(label));
    }
    say!("  enrolled {}", format_time(token.created));
    match token.last_used {
        Some(time) => say!("  last used {}", format_time(time)),
        None => say!("  never used"),
    }
}

fn print_status(status: &AgentStatus) {
    say!("version:          {}", status.version);
    say!("uptime:           {} s", status.uptime_seconds);
    say!("users:            {}", status.users);
    say!("tokens:           {}", status.tokens);
    say!("accepted:         {}", status.accepted);
    say!("rejected:         {}", status.rejected);
    say!("open connections: {}", status.open_connections);
    say!("database:         {}", status.database);
    say!("locked sources:   {}", status.locked_sources);
}

/// What `enroll` prints; the URI and QR code carry the secret and are shown
/// this once.
pub struct Enrolled<'a> {
    pub user: &'a str,
    pub token: u64,
    pub description: &'a TokenDescription,
    pub uri: Option<&'a str>,
    pub qr: Option<String>,
    pub backup_codes: &'a [SecretString],
    /// Whether the secret was generated here and must be shown once.
    pub show_secret: bool,
    pub json: bool,
}

#[derive(Serialize)]
struct EnrolledJson<'a> {
    user: &'a str,
    token: u64,
    uri: Option<&'a str>,
    secret_hex: Option<&'a str>,
    backup_codes: Vec<&'a str>,
}

pub fn print_enrolled(enrolled: &Enrolled<'_>) -> Result<(), String> {
    let secret_hex = enrolled.description.secret.to_hex();
    let codes: Vec<&str> = enrolled.backup_codes.iter().map(SecretString::expose).collect();
    if enrolled.json {
        return print_json(&EnrolledJson {
            user: enrolled.user,
            token: enrolled.token,
            uri: enrolled.uri,
            secret_hex: enrolled.show_secret.then_some(secret_hex.as_str()),
            backup_codes: codes,
        });
    }
    say!("enrolled token {} for {}", enrolled.token, printable(enrolled.user));
    if let Some(qr) = &enrolled.qr {
        say!("{qr}");
    }
    if let Some(uri) = enrolled.uri {
        say!("URI (shown once; it contains the secret): {uri}");
    }
    if !enrolled.show_secret {
        say!("the secret you supplied is stored encrypted; it is not printed");
    } else if enrolled.description.kind == Kind::Motp {
        say!("Mobile-OTP secret (shown once): {}", secret_hex.as_str());
    }
    if !codes.is_empty() {
        say!("backup codes (shown once; each works one time):");
        for code in codes {
            say!("  {code}");
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct BackupCodesJson<'a> {
    user: &'a str,
    backup_codes: Vec<&'a str>,
}

/// Prints the new backup codes of `user`, or that they were removed.
pub fn print_backup_codes(user: &str, backup_codes: &[SecretString], json: bool) -> Result<(), String> {
    let codes: Vec<&str> = backup_codes.iter().map(SecretString::expose).collect();
    if json {
        return print_json(&BackupCodesJson {
            user,
            backup_codes: codes,
        });
    }
    if codes.is_empty() {
        say!("backup codes of {} removed", printable(user));
        return Ok(());
    }
    say!(
        "new backup codes for {} (shown once; each works one time; earlier ones no longer work):",
        printable(user)
    );
    for code in codes {
        say!("  {code}");
    }
    Ok(())
}

/// Formats Unix time as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn format_time(unix: u64) -> String {
    let days = unix / 86_400;
    let seconds = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// published days-to-civil algorithm, restated).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(user: &str) -> UserSummary {
        UserSummary {
            user: user.to_owned(),
            tokens: 2,
            enabled_tokens: 1,
            failures: 3,
            locked: true,
            backup_codes_left: 10,
        }
    }

    #[test]
    fn list_row_of_short_name_is_one_line() {
        assert_eq!(
            user_row_lines(&summary("alice")),
            ["alice                         2        1        3     yes      10"]
        );
    }

    #[test]
    fn list_row_of_long_name_keeps_columns() {
        let name = "a-rather-long-account-name.example.org";
        let lines = user_row_lines(&summary(name));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], name);
        assert_eq!(
            lines[1],
            user_row_lines(&summary("alice"))[0].replacen("alice", "     ", 1)
        );
    }

    #[test]
    fn list_row_measures_escaped_name() {
        // 20 characters, of which one is escaped as 8: too wide once printed.
        let name = format!("{}\\u{{200c}}", "n".repeat(19));
        let lines = user_row_lines(&summary(&format!("{}\u{200c}", "n".repeat(19))));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], name);
    }

    #[test]
    fn verdict_names_unknown_user() {
        assert_eq!(
            verdict_line(VerifyResult::NoToken, Some("unknown user")),
            "rejected: unknown user"
        );
    }

    #[test]
    fn verdict_without_reason_uses_result() {
        assert_eq!(
            verdict_line(VerifyResult::NoToken, None),
            "rejected: the user has no enabled token"
        );
        assert_eq!(verdict_line(VerifyResult::Accepted, None), "accepted");
        assert_eq!(
            verdict_line(VerifyResult::Rejected, Some("wrong code")),
            "rejected: wrong code"
        );
    }

    #[test]
    fn formats_known_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_234_567_890), "2009-02-13 23:31:30 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
