//! Text and JSON output of `freeauthctl`.

use freeauth_otp::Kind;
use freeauth_proto::{
    AgentStatus, ErrorKind, Response, SecretString, TokenInfo, UserDetail, UserSummary, VerifyResult,
};
use freeauthctl::otpauth::TokenDescription;
use serde::Serialize;

fn print_json<T: Serialize>(value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|err| format!("cannot format JSON: {err}"))?;
    println!("{text}");
    Ok(())
}

/// Prints any non-error response.
pub fn print_response(response: &Response, json: bool) -> Result<(), String> {
    if json {
        return print_json(response);
    }
    match response {
        Response::Users { users } => print_users(users),
        Response::User { user } => print_user(user),
        Response::Done { changed } => println!("done ({changed} changed)"),
        Response::Resynced { token, drift_steps } => {
            println!("token {token} resynchronised, drift {drift_steps:+} steps")
        }
        Response::Verdict { result } => println!("{}", verdict_text(*result)),
        Response::Status { status } => print_status(status),
        Response::Imported { users, tokens } => println!("imported {tokens} tokens for {users} users"),
        other => println!("{other:?}"),
    }
    Ok(())
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

fn print_users(users: &[UserSummary]) {
    if users.is_empty() {
        println!("no users have tokens");
        return;
    }
    println!(
        "{:<24} {:>6} {:>8} {:>8} {:>7} {:>7}",
        "USER", "TOKENS", "ENABLED", "FAILURES", "LOCKED", "BACKUP"
    );
    for user in users {
        let locked = if user.locked { "yes" } else { "no" };
        println!(
            "{:<24} {:>6} {:>8} {:>8} {:>7} {:>7}",
            user.user, user.tokens, user.enabled_tokens, user.failures, locked, user.backup_codes_left
        );
    }
}

fn print_user(user: &UserDetail) {
    println!("user:              {}", user.user);
    println!("failures:          {}", user.failures);
    match user.locked_until {
        Some(until) => println!("locked until:      {}", format_time(until)),
        None => println!("locked:            no"),
    }
    println!("backup codes left: {}", user.backup_codes_left);
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
    println!("token {}: {kind}, {state}", token.id);
    match token.kind {
        freeauth_proto::TokenKind::Hotp => {
            println!("  {algorithm}, {} digits, next counter {}", token.digits, token.counter);
        }
        freeauth_proto::TokenKind::Motp => {
            println!("  6 hex digits, period 10 s");
            println!("  drift {:+} steps ({:+} s)", token.drift_steps, token.drift_seconds);
        }
        freeauth_proto::TokenKind::Totp => {
            println!("  {algorithm}, {} digits, period {} s", token.digits, token.period);
            println!("  drift {:+} steps ({:+} s)", token.drift_steps, token.drift_seconds);
        }
    }
    if let Some(label) = &token.label {
        println!("  label {label}");
    }
    println!("  enrolled {}", format_time(token.created));
    match token.last_used {
        Some(time) => println!("  last used {}", format_time(time)),
        None => println!("  never used"),
    }
}

fn print_status(status: &AgentStatus) {
    println!("version:          {}", status.version);
    println!("uptime:           {} s", status.uptime_seconds);
    println!("users:            {}", status.users);
    println!("tokens:           {}", status.tokens);
    println!("accepted:         {}", status.accepted);
    println!("rejected:         {}", status.rejected);
    println!("open connections: {}", status.open_connections);
    println!("database:         {}", status.database);
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
    pub json: bool,
}

#[derive(Serialize)]
struct EnrolledJson<'a> {
    user: &'a str,
    token: u64,
    uri: Option<&'a str>,
    secret_hex: &'a str,
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
            secret_hex: &secret_hex,
            backup_codes: codes,
        });
    }
    println!("enrolled token {} for {}", enrolled.token, enrolled.user);
    if let Some(qr) = &enrolled.qr {
        println!("{qr}");
    }
    if let Some(uri) = enrolled.uri {
        println!("URI (shown once; it contains the secret): {uri}");
    }
    if enrolled.description.kind == Kind::Motp {
        println!("Mobile-OTP secret (shown once): {}", secret_hex.as_str());
    }
    if !codes.is_empty() {
        println!("backup codes (shown once; each works one time):");
        for code in codes {
            println!("  {code}");
        }
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

    #[test]
    fn formats_known_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_234_567_890), "2009-02-13 23:31:30 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
