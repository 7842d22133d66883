//! Readers for the per-user token files of two other PAM modules, so that
//! `freeauthctl import` can move their tokens to FreeAuth with their counters.
//!
//! Both parsers check every line and return every error they find, each with
//! its 1-based line number (0 for the whole file). The caller imports nothing
//! when any error is returned. Error messages never contain a secret, a
//! password, a scratch code or a used code. Both formats are ASCII, and the
//! parsers take `&str`, so the caller decodes the file with
//! `String::from_utf8` and reports invalid UTF-8 as a whole-file error.
//!
//! # `~/.google_authenticator` (google-authenticator-libpam)
//!
//! The facts below come from the `FILEFORMAT` document and
//! `src/pam_google_authenticator.c` of google-authenticator-libpam, read at
//! the upstream repository's state around release 1.11.
//!
//! - The first line is the base32 secret. Codes are six digits of HMAC-SHA1.
//! - Option lines start with a double quote and a space, then an upper-case
//!   name and its arguments. The module reads the first line of each name
//!   and ignores names it does not know.
//! - `HOTP_COUNTER n` selects counter-based mode when n is at least 1. n is
//!   the next counter the module tries: it accepts the codes for n up to
//!   n + WINDOW_SIZE - 1 and then stores the matched counter plus 1. The
//!   `google-authenticator` tool writes `HOTP_COUNTER 1` for a new token.
//! - `TOTP_AUTH` selects time-based mode, but only when there is no
//!   `HOTP_COUNTER` of at least 1. With neither line the module accepts only
//!   scratch codes.
//! - `STEP_SIZE n` is the time step in seconds, from 1 to 60 (default 30).
//! - `WINDOW_SIZE n`, from 1 to 100 (default 3), is the number of time steps
//!   around the current one, or of counter values from HOTP_COUNTER on, whose
//!   codes are accepted.
//! - `DISALLOW_REUSE` followed by numbers makes a time-based code usable once.
//!   FILEFORMAT calls the numbers time stamps, but the module stores and
//!   compares time steps (Unix time divided by STEP_SIZE, plus TIME_SKEW) of
//!   accepted codes, and drops steps that left the window. Without the line a
//!   code can be used again within its window. HOTP mode ignores the line.
//! - `RATE_LIMIT n m` allows at most n (1 to 100) logins in every m (1 to
//!   3600) seconds. The numbers after them are the Unix times of recent
//!   attempts.
//! - `TIME_SKEW n` is a correction in time steps that the module learns after
//!   several codes from a fast or slow token clock, and `RESETTING_TIME_SKEW`
//!   holds its working data.
//! - Every other non-blank line is an emergency scratch code: exactly eight
//!   digits from 10000000 to 99999999, each usable once.
//! - The module rejects files larger than 64 KiB (FILEFORMAT still gives 1 kB).
//!
//! FreeAuth has one time window, one counter window and one set of rate
//! limits for all tokens, and always rejects a reused time step. WINDOW_SIZE,
//! RATE_LIMIT, TIME_SKEW and a missing DISALLOW_REUSE therefore have no
//! per-token equivalent. [`parse_google_authenticator`] describes them in
//! [`GoogleAuthenticatorFile::notes`] for the administrator. It rejects
//! unknown option names and repeated options, which the module would ignore.
//! It also rejects `OTP_DISABLED`, which FILEFORMAT describes as turning OTP
//! off for the user but which the module source does not read.
//!
//! # `users.oath` (oath-toolkit)
//!
//! The facts below come from `liboath/usersfile.c` and its tests in
//! oath-toolkit 2.6.7 (the library behind pam_oath), and from the pam_oath
//! page of the oath-toolkit site.
//!
//! - Each line is `TYPE USER PASSWORD SECRET [COUNTER [LAST_OTP [TIME]]]`,
//!   with spaces or tabs between the fields. Lines that start with `#` are
//!   comments.
//! - TYPE is case-sensitive. `HOTP`, `HOTP/E` and `HOTP/E/6` are event
//!   (counter-based) tokens with 6 digits, and `HOTP/E/7` and `HOTP/E/8` have
//!   7 and 8 digits. `HOTP/T30` and `HOTP/T60` are time-based tokens with 30-
//!   or 60-second steps and 6 digits, and `/6`, `/7` or `/8` may follow them.
//!   There is no `TOTP` spelling, and every type uses HMAC-SHA1. liboath
//!   silently skips a line whose TYPE it does not know, which is how comment
//!   lines are skipped too.
//! - PASSWORD `-` means no password, `+` means another module checks the
//!   password (liboath accepts any), and anything else is a static password
//!   compared as plain text.
//! - SECRET is hexadecimal. liboath 2.6.7 accepts at most 32 bytes.
//! - For event tokens liboath searches from COUNTER (default 0). After a login
//!   it writes the counter of the accepted code, not the next one, with that
//!   code as LAST_OTP and the local time as TIME. It rejects LAST_OTP as a
//!   replay, so on a line with LAST_OTP the next usable counter is COUNTER + 1,
//!   and on a line without it COUNTER itself is next.
//! - For time-based tokens liboath adds the distance in steps between the
//!   accepted code and the current time to COUNTER, so COUNTER is not a time
//!   step, and replays are detected through LAST_OTP alone.
//! - A user may have several lines, one per token, which liboath tries in
//!   order.
//!
//! [`parse_users_oath`] rejects unknown types, 7-digit types (FreeAuth has 6-
//! and 8-digit codes only), lines with fewer than 4 or more than 7 fields,
//! invalid hex secrets, a non-numeric COUNTER and a malformed LAST_OTP or
//! TIME.

use std::fmt;

use freeauth_otp::{code_identity, Algorithm, Kind, Secret};
use zeroize::Zeroizing;

use crate::otpauth::{parse_decimal, TokenDescription, DEFAULT_DIGITS, DEFAULT_PERIOD};

/// Names of the option lines that [`parse_google_authenticator`] accepts.
const GOOGLE_OPTIONS: [&str; 9] = [
    "TOTP_AUTH",
    "HOTP_COUNTER",
    "STEP_SIZE",
    "WINDOW_SIZE",
    "DISALLOW_REUSE",
    "RATE_LIMIT",
    "TIME_SKEW",
    "RESETTING_TIME_SKEW",
    "OTP_DISABLED",
];

/// Token types of liboath 2.6.7: spelling, time step in seconds (`None` for
/// event tokens) and digits.
const OATH_TYPES: [(&str, Option<u32>, u8); 13] = [
    ("HOTP", None, 6),
    ("HOTP/E", None, 6),
    ("HOTP/E/6", None, 6),
    ("HOTP/E/7", None, 7),
    ("HOTP/E/8", None, 8),
    ("HOTP/T30", Some(30), 6),
    ("HOTP/T30/6", Some(30), 6),
    ("HOTP/T30/7", Some(30), 7),
    ("HOTP/T30/8", Some(30), 8),
    ("HOTP/T60", Some(60), 6),
    ("HOTP/T60/6", Some(60), 6),
    ("HOTP/T60/7", Some(60), 7),
    ("HOTP/T60/8", Some(60), 8),
];

/// A problem in an import file. Line 0 means the whole file. The message never
/// contains a secret, a password or a scratch code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    /// 1-based line number, or 0 for the whole file.
    pub line: usize,
    /// Description of the problem and, where it helps, of the fix.
    pub message: String,
}

impl ImportError {
    pub fn new(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "whole file: {}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ImportError {}

/// Contents of a `~/.google_authenticator` file of google-authenticator-libpam.
///
/// There is no `Debug` implementation because the file contains the secret
/// and the scratch codes.
pub struct GoogleAuthenticatorFile {
    /// The token as pam_google_authenticator verifies it: HMAC-SHA1 with six
    /// digits. A counter-based token's `counter` is the next counter to accept.
    pub token: TokenDescription,
    /// Highest time step recorded by `DISALLOW_REUSE`, in the token's own time
    /// (TIME_SKEW included). FreeAuth must accept only later steps. `None` for
    /// counter-based tokens and when nothing is recorded.
    pub last_step: Option<u64>,
    /// Line of the `DISALLOW_REUSE` option, 0 when there is none.
    pub last_step_line: usize,
    /// Unused eight-digit scratch codes, in file order.
    pub scratch_codes: Vec<Zeroizing<String>>,
    /// Sentences for the administrator about settings that FreeAuth does not
    /// import per token.
    pub notes: Vec<String>,
}

/// One line of an oath-toolkit users file: one token of one user.
///
/// There is no `Debug` implementation because the entry contains the secret.
pub struct OathEntry {
    /// 1-based line number in the users file.
    pub line: usize,
    /// User name from the USER field.
    pub user: String,
    /// The token, with the user name as `account` and no issuer. A
    /// counter-based token's `counter` is the next counter to accept.
    pub token: TokenDescription,
    /// Last time step used by a time-based token. Always `None`, because
    /// liboath 2.6.7 records no time step (see the module documentation).
    pub last_step: Option<u64>,
    /// Whether PASSWORD is a static password rather than `-` (none) or `+`
    /// (checked elsewhere). FreeAuth has no static passwords.
    pub has_password: bool,
}

/// Parses a `~/.google_authenticator` file.
///
/// Returns every error found, or the token with its scratch codes and notes.
pub fn parse_google_authenticator(text: &str) -> Result<GoogleAuthenticatorFile, Vec<ImportError>> {
    if text.trim().is_empty() {
        return Err(vec![ImportError::new(
            0,
            "the file is empty: expected a base32 secret on the first line",
        )]);
    }

    let mut errors = Vec::new();
    let mut lines = numbered_lines(text);
    let secret = match lines.next() {
        Some((number, first_line)) => match parse_google_secret(first_line) {
            Ok(secret) => Some(secret),
            Err(message) => {
                errors.push(ImportError::new(number, message));
                None
            }
        },
        None => None,
    };

    let mut options = GoogleOptions::default();
    let mut scratch_codes = Vec::new();
    let mut last_step_line = 0;
    for (number, line) in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("\" DISALLOW_REUSE") {
            last_step_line = number;
        }
        let result = match line.strip_prefix('"') {
            Some(option) => options.apply(option),
            None => parse_scratch_code(line).map(|code| scratch_codes.push(code)),
        };
        if let Err(message) = result {
            errors.push(ImportError::new(number, message));
        }
    }

    // The mode depends on option lines, so it is judged only when all of them
    // were read without error.
    if !errors.is_empty() {
        return Err(errors);
    }
    let mode = match options.mode() {
        Ok(mode) => mode,
        Err(message) => return Err(vec![ImportError::new(0, message)]),
    };
    let Some(secret) = secret else {
        return Err(vec![ImportError::new(1, "the first line must be the base32 secret")]);
    };

    let notes = options.notes(&mode);
    let (kind, period, counter, last_step) = match mode {
        GoogleMode::Hotp { counter } => (Kind::Hotp, DEFAULT_PERIOD, counter, None),
        GoogleMode::Totp { period } => {
            let last_step = options
                .disallow_reuse
                .as_ref()
                .and_then(|steps| steps.iter().max().copied());
            (Kind::Totp, period, 0, last_step)
        }
    };
    Ok(GoogleAuthenticatorFile {
        token: TokenDescription {
            kind,
            algorithm: Algorithm::Sha1,
            digits: DEFAULT_DIGITS,
            period,
            counter,
            secret,
            issuer: None,
            account: None,
        },
        last_step,
        last_step_line,
        scratch_codes,
        notes,
    })
}

/// Parses an oath-toolkit users file, such as `/etc/users.oath` of pam_oath.
///
/// Returns every error found, or one entry per token line in file order. A
/// file with only comments and blank lines has no entries.
pub fn parse_users_oath(text: &str) -> Result<Vec<OathEntry>, Vec<ImportError>> {
    let (entries, errors) = parse_users_oath_lines(text);
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

/// Parses a users file like [`parse_users_oath`], and returns the entries of
/// the valid lines together with the problems of the others.
pub fn parse_users_oath_lines(text: &str) -> (Vec<OathEntry>, Vec<ImportError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    // Positions in `entries` of each user's entries, so that a file with a
    // line per user is not compared line against line.
    let mut by_user: std::collections::HashMap<String, Vec<usize>> = std::collections::HashMap::new();
    for (number, line) in numbered_lines(text) {
        let fields: Vec<&str> = line
            .split([' ', '\t', '\r'])
            .filter(|field| !field.is_empty())
            .collect();
        match fields.first() {
            None => continue,
            Some(first) if first.starts_with('#') => continue,
            Some(_) => {}
        }
        match parse_oath_line(number, &fields) {
            Ok(entry) => match same_codes_as(&entries, by_user.get(&entry.user), &entry) {
                // The agent would refuse the second token: each code would be
                // accepted twice, once per token.
                Some(earlier) => errors.push(ImportError::new(
                    number,
                    format!(
                        "user {} already has a token with this secret on line {earlier}: remove one of the lines",
                        entry.user
                    ),
                )),
                None => {
                    by_user.entry(entry.user.clone()).or_default().push(entries.len());
                    entries.push(entry);
                }
            },
            Err(message) => errors.push(ImportError::new(number, message)),
        }
    }
    (entries, errors)
}

/// Returns the line of an earlier entry of the same user whose token gives
/// the same codes as `entry`'s. `same_user` lists the positions in
/// `earlier` of that user's entries.
fn same_codes_as(earlier: &[OathEntry], same_user: Option<&Vec<usize>>, entry: &OathEntry) -> Option<usize> {
    let identity = |token: &TokenDescription| code_identity(token.kind, token.algorithm, &token.secret, None);
    let new_identity = identity(&entry.token);
    same_user?
        .iter()
        .filter_map(|&position| earlier.get(position))
        .find(|other| identity(&other.token) == new_identity)
        .map(|other| other.line)
}

/// Checks a user name as the agent does: 1 to 253 bytes, no control
/// characters, no white space at either end.
fn check_user(user: &str) -> Result<(), String> {
    if user.len() > MAX_USER_LEN {
        return Err(format!(
            "USER (the second field) has {} bytes; user names have at most {MAX_USER_LEN}",
            user.len()
        ));
    }
    if user.chars().any(char::is_control) {
        return Err("USER (the second field) contains a control character".to_owned());
    }
    if user.trim() != user {
        return Err("USER (the second field) starts or ends with white space, such as a no-break space".to_owned());
    }
    Ok(())
}

/// Maximum length of a user name that the agent accepts, in bytes.
const MAX_USER_LEN: usize = 253;

/// Splits `text` at `\n` into lines numbered from 1, without a trailing `\r`.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n').enumerate().map(|(index, line)| {
        let line = line.strip_suffix('\r').unwrap_or(line);
        (index + 1, line)
    })
}

/// Decodes the base32 secret on the first line of a Google Authenticator file.
fn parse_google_secret(line: &str) -> Result<Secret, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("the first line is empty: it must be the base32 secret".to_owned());
    }
    if line.starts_with('"') {
        return Err("the first line is an option line: it must be the base32 secret".to_owned());
    }
    let secret =
        Secret::from_base32(line).map_err(|error| format!("the first line is not a valid base32 secret: {error}"))?;
    if secret.is_empty() {
        return Err("the secret on the first line is empty".to_owned());
    }
    check_secret_len(&secret, "the secret on the first line")?;
    Ok(secret)
}

/// Checks that an HOTP or TOTP secret has a size FreeAuth accepts.
fn check_secret_len(secret: &Secret, field: &str) -> Result<(), String> {
    let range = freeauth_otp::HMAC_SECRET_LEN;
    if range.contains(&secret.len()) {
        return Ok(());
    }
    Err(format!(
        "{field} has {} bytes; FreeAuth accepts {} to {} bytes ({} to {} bits)",
        secret.len(),
        range.start(),
        range.end(),
        range.start() * 8,
        range.end() * 8
    ))
}

/// Checks one scratch-code line. The error does not repeat the line, because
/// it may be a mistyped scratch code.
fn parse_scratch_code(line: &str) -> Result<Zeroizing<String>, String> {
    let is_code = line.len() == 8 && line.bytes().all(|byte| byte.is_ascii_digit()) && !line.starts_with('0');
    if is_code {
        Ok(Zeroizing::new(line.to_owned()))
    } else {
        Err("expected an eight-digit scratch code that does not start with 0, \
             or an option line that starts with '\" '"
            .to_owned())
    }
}

/// Verification mode that pam_google_authenticator would use for a file.
enum GoogleMode {
    Hotp { counter: u64 },
    Totp { period: u32 },
}

/// Option lines of a Google Authenticator file, as read so far.
#[derive(Default)]
struct GoogleOptions {
    seen: Vec<&'static str>,
    totp_auth: bool,
    hotp_counter: Option<u64>,
    step_size: Option<u64>,
    window_size: Option<u64>,
    disallow_reuse: Option<Vec<u64>>,
    rate_limit: Option<(u64, u64)>,
    time_skew: Option<i64>,
}

impl GoogleOptions {
    /// Reads one option line, given without its leading double quote.
    fn apply(&mut self, line: &str) -> Result<(), String> {
        if line.trim().is_empty() {
            return Err("the option line has no option name".to_owned());
        }
        let Some(line) = line.strip_prefix(' ') else {
            return Err("an option line must start with a double quote and a space, as in '\" TOTP_AUTH'".to_owned());
        };
        let mut words = line.split_ascii_whitespace();
        let Some(name) = words.next() else {
            return Err("the option line has no option name".to_owned());
        };
        let arguments: Vec<&str> = words.collect();

        let Some(name) = GOOGLE_OPTIONS.into_iter().find(|known| *known == name) else {
            return Err(unknown_google_option_message(name));
        };
        if self.seen.contains(&name) {
            return Err(format!(
                "option {name} appears more than once, and pam_google_authenticator reads only \
                 the first: remove the other lines"
            ));
        }
        self.seen.push(name);

        match name {
            "TOTP_AUTH" => {
                if !arguments.is_empty() {
                    return Err("TOTP_AUTH takes no values".to_owned());
                }
                self.totp_auth = true;
            }
            "HOTP_COUNTER" => {
                self.hotp_counter = Some(single_number(name, &arguments, 0, freeauth_otp::MAX_COUNTER)?);
            }
            "STEP_SIZE" => self.step_size = Some(single_number(name, &arguments, 1, 60)?),
            "WINDOW_SIZE" => self.window_size = Some(single_number(name, &arguments, 1, 100)?),
            "DISALLOW_REUSE" => {
                let steps = arguments
                    .iter()
                    .map(|step| parse_decimal::<u64>(step))
                    .collect::<Option<Vec<u64>>>()
                    .ok_or("DISALLOW_REUSE must be followed by time step numbers only")?;
                self.disallow_reuse = Some(steps);
            }
            "RATE_LIMIT" => self.rate_limit = Some(parse_rate_limit(&arguments)?),
            "TIME_SKEW" => {
                let [skew] = arguments.as_slice() else {
                    return Err("TIME_SKEW takes one whole number of time steps".to_owned());
                };
                let skew =
                    parse_signed(skew).ok_or("TIME_SKEW must be a whole number of time steps, such as -1 or 2")?;
                self.time_skew = Some(skew);
            }
            // Intermediate data of the module's skew detection. The learned
            // result, if any, is in TIME_SKEW.
            "RESETTING_TIME_SKEW" => {}
            "OTP_DISABLED" => {
                return Err("OTP_DISABLED is set, which FILEFORMAT describes as turning one-time \
                     passwords off for this user: remove the line to import the token anyway"
                    .to_owned());
            }
            _ => return Err(unknown_google_option_message(name)),
        }
        Ok(())
    }

    /// Chooses the mode as pam_google_authenticator does: HOTP when
    /// HOTP_COUNTER is at least 1, otherwise TOTP when TOTP_AUTH is present.
    fn mode(&self) -> Result<GoogleMode, String> {
        match self.hotp_counter {
            Some(counter) if counter >= 1 => Ok(GoogleMode::Hotp { counter }),
            _ if self.totp_auth => {
                let step = self.step_size.unwrap_or(u64::from(DEFAULT_PERIOD));
                // STEP_SIZE is at most 60, so the conversion cannot fail.
                let period = u32::try_from(step).unwrap_or(DEFAULT_PERIOD);
                Ok(GoogleMode::Totp { period })
            }
            Some(_) => Err("HOTP_COUNTER is 0 and there is no TOTP_AUTH line, so \
                 pam_google_authenticator accepts only scratch codes for this file: there is no \
                 token to import"
                .to_owned()),
            None => Err("the file has neither a TOTP_AUTH nor a HOTP_COUNTER line, so \
                 pam_google_authenticator accepts only scratch codes for it: there is no token to \
                 import"
                .to_owned()),
        }
    }

    /// Sentences about settings that FreeAuth applies globally or not at all.
    fn notes(&self, mode: &GoogleMode) -> Vec<String> {
        let mut notes = Vec::new();
        match mode {
            GoogleMode::Hotp { .. } => {
                if self.totp_auth {
                    notes.push(
                        "The file has both HOTP_COUNTER and TOTP_AUTH. pam_google_authenticator \
                         uses the counter in that case, so the token is imported as counter-based \
                         (HOTP)."
                            .to_owned(),
                    );
                }
                if let Some(window) = self.window_size {
                    notes.push(format!(
                        "WINDOW_SIZE {window}: pam_google_authenticator accepted the codes of the \
                         next {window} counter values for this user. FreeAuth uses its global \
                         counter window instead."
                    ));
                }
            }
            GoogleMode::Totp { period } => {
                if self.hotp_counter == Some(0) {
                    notes.push(
                        "HOTP_COUNTER is 0, which pam_google_authenticator treats as absent, so \
                         the token is imported as time-based (TOTP)."
                            .to_owned(),
                    );
                }
                if let Some(window) = self.window_size {
                    notes.push(format!(
                        "WINDOW_SIZE {window}: pam_google_authenticator accepted codes from \
                         {window} time steps around the current one for this user. FreeAuth uses \
                         its global time window instead."
                    ));
                }
                if self.disallow_reuse.is_none() {
                    notes.push(format!(
                        "The file has no DISALLOW_REUSE line, so pam_google_authenticator \
                         accepted a time-based code more than once. FreeAuth always rejects a \
                         second code from the same time step, so this user can log in at most \
                         once every {period} seconds."
                    ));
                }
                if let Some(skew) = self.time_skew.filter(|skew| *skew != 0) {
                    let direction = if skew > 0 { "ahead of" } else { "behind" };
                    notes.push(format!(
                        "TIME_SKEW {skew}: pam_google_authenticator had learned that the clock \
                         of this token is {} time steps {direction} the server. FreeAuth starts \
                         without this correction, so if the user's codes are rejected, \
                         resynchronise the token with freeauthctl resync.",
                        skew.unsigned_abs()
                    ));
                }
            }
        }
        if let Some((attempts, interval)) = self.rate_limit {
            notes.push(format!(
                "RATE_LIMIT {attempts} {interval}: pam_google_authenticator allowed at most \
                 {attempts} login attempts in every {interval} seconds for this user. FreeAuth \
                 applies its global rate limits instead."
            ));
        }
        notes
    }
}

/// Reads the only value of option `name` as a number from `min` to `max`.
fn single_number(name: &str, arguments: &[&str], min: u64, max: u64) -> Result<u64, String> {
    let range_message = || format!("{name} must be one whole number from {min} to {max}");
    let [value] = arguments else {
        return Err(range_message());
    };
    parse_decimal::<u64>(value)
        .filter(|number| (min..=max).contains(number))
        .ok_or_else(range_message)
}

/// Reads `RATE_LIMIT attempts interval [timestamps...]` as the module checks
/// it: 1 to 100 attempts in 1 to 3600 seconds.
fn parse_rate_limit(arguments: &[&str]) -> Result<(u64, u64), String> {
    let message = "RATE_LIMIT must be followed by the number of attempts (1 to 100), the \
                   interval in seconds (1 to 3600) and optionally Unix times";
    let [attempts, interval, timestamps @ ..] = arguments else {
        return Err(message.to_owned());
    };
    let attempts = parse_decimal::<u64>(attempts).filter(|attempts| (1..=100).contains(attempts));
    let interval = parse_decimal::<u64>(interval).filter(|interval| (1..=3600).contains(interval));
    let timestamps_valid = timestamps
        .iter()
        .all(|timestamp| parse_decimal::<u64>(timestamp).is_some());
    match (attempts, interval, timestamps_valid) {
        (Some(attempts), Some(interval), true) => Ok((attempts, interval)),
        _ => Err(message.to_owned()),
    }
}

/// Parses a decimal number with an optional `+` or `-` sign.
fn parse_signed(text: &str) -> Option<i64> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Message for an unknown option line. The name is repeated only when it
/// looks like an option name, because a malformed line might contain a secret.
fn unknown_google_option_message(name: &str) -> String {
    let known = "TOTP_AUTH, HOTP_COUNTER, STEP_SIZE, WINDOW_SIZE, DISALLOW_REUSE, RATE_LIMIT, \
                 TIME_SKEW and RESETTING_TIME_SKEW";
    let looks_like_option = name.len() <= 40
        && name.contains('_')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit() || byte == b'_');
    if looks_like_option {
        format!("unknown option {name}: FreeAuth reads {known}")
    } else {
        format!("unknown option: FreeAuth reads {known}")
    }
}

/// Converts one users-file line, already split into fields, into an entry.
fn parse_oath_line(number: usize, fields: &[&str]) -> Result<OathEntry, String> {
    let [type_field, user, password, secret_field, optional @ ..] = fields else {
        return Err(format!(
            "expected at least the 4 fields TYPE USER PASSWORD SECRET, found {}",
            fields.len()
        ));
    };
    if optional.len() > 3 {
        return Err(format!(
            "expected at most the 7 fields TYPE USER PASSWORD SECRET COUNTER LAST_OTP TIME, \
             found {}",
            fields.len()
        ));
    }

    let (period, digits) = parse_oath_type(type_field)?;
    let secret = Secret::from_hex(secret_field)
        .map_err(|error| format!("SECRET (the fourth field) is not valid hex: {error}"))?;
    if secret.is_empty() {
        return Err("SECRET (the fourth field) is empty".to_owned());
    }
    check_secret_len(&secret, "SECRET (the fourth field)")?;
    check_user(user)?;

    let counter = match optional.first() {
        Some(text) => Some(
            parse_decimal::<u64>(text)
                .filter(|counter| *counter <= freeauth_otp::MAX_COUNTER)
                .ok_or_else(|| {
                    format!(
                        "COUNTER (the fifth field) must be a whole number from 0 to {}",
                        freeauth_otp::MAX_COUNTER
                    )
                })?,
        ),
        None => None,
    };
    let last_otp = optional.get(1);
    if let Some(code) = last_otp {
        let is_code = (6..=8).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit());
        if !is_code {
            return Err("LAST_OTP (the sixth field) must be the 6- to 8-digit code of the last \
                        login"
                .to_owned());
        }
    }
    if let Some(time) = optional.get(2) {
        if !is_liboath_timestamp(time) {
            return Err("TIME (the seventh field) must be a local time written as \
                        YYYY-MM-DDTHH:MM:SSL, as liboath writes it"
                .to_owned());
        }
    }

    let (kind, period, next_counter) = match period {
        None => {
            let start = counter.unwrap_or(0);
            // liboath stores the counter of the last accepted code, and
            // LAST_OTP marks it as used.
            let next = if last_otp.is_some() {
                start
                    .checked_add(1)
                    .filter(|next| *next <= freeauth_otp::MAX_COUNTER)
                    .ok_or(
                        "COUNTER is at its maximum and its code was already used, so the token has \
                         no counter value left",
                    )?
            } else {
                start
            };
            (Kind::Hotp, DEFAULT_PERIOD, next)
        }
        Some(period) => (Kind::Totp, period, 0),
    };

    Ok(OathEntry {
        line: number,
        user: (*user).to_owned(),
        token: TokenDescription {
            kind,
            algorithm: Algorithm::Sha1,
            digits,
            period,
            counter: next_counter,
            secret,
            issuer: None,
            account: Some((*user).to_owned()),
        },
        // NOTE: TIME is local time without a zone and the accepted code may
        // come from a neighbouring step, so no step is derived from it. A code
        // used under pam_oath less than a window ago may be accepted once more.
        last_step: None,
        has_password: !matches!(*password, "-" | "+"),
    })
}

/// Looks up a liboath token type. Returns the time step (`None` for event
/// tokens) and the number of digits.
fn parse_oath_type(text: &str) -> Result<(Option<u32>, u8), String> {
    let known = OATH_TYPES.iter().find(|(spelling, _, _)| *spelling == text);
    match known {
        Some((_, _, 7)) => Err(format!(
            "token type {text} has 7-digit codes, but FreeAuth supports only 6 or 8 digits"
        )),
        Some((_, period, digits)) => Ok((*period, *digits)),
        None => Err(unknown_oath_type_message(text)),
    }
}

/// Message for an unknown TYPE field. The field is repeated only in its
/// corrected spelling, because a malformed line might start with a secret.
fn unknown_oath_type_message(text: &str) -> String {
    let upper = text.to_ascii_uppercase();
    let corrected = OATH_TYPES.iter().find(|(spelling, _, _)| *spelling == upper);
    if let Some((spelling, _, _)) = corrected {
        return format!("token types are case-sensitive: write {spelling}");
    }
    if upper.starts_with("TOTP") {
        return "liboath has no TOTP type: time-based tokens are HOTP/T30 or HOTP/T60, \
                optionally followed by /6 or /8"
            .to_owned();
    }
    let accepted: Vec<&str> = OATH_TYPES
        .iter()
        .filter(|(_, _, digits)| *digits == 6 || *digits == 8)
        .map(|(spelling, _, _)| *spelling)
        .collect();
    format!(
        "unknown token type in the first field: expected one of {}",
        accepted.join(", ")
    )
}

/// Checks the `%Y-%m-%dT%H:%M:%SL` local time that liboath writes, such as
/// `2024-03-05T09:14:27L`.
fn is_liboath_timestamp(text: &str) -> bool {
    let &[y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2, b'T', h1, h2, b':', n1, n2, b':', s1, s2, b'L'] = text.as_bytes()
    else {
        return false;
    };
    let all_digits = [y1, y2, y3, y4, m1, m2, d1, d2, h1, h2, n1, n2, s1, s2]
        .iter()
        .all(u8::is_ascii_digit);
    let two_digits = |tens: u8, ones: u8| (tens - b'0') * 10 + (ones - b'0');
    all_digits
        && (1..=12).contains(&two_digits(m1, m2))
        && (1..=31).contains(&two_digits(d1, d2))
        && two_digits(h1, h2) <= 23
        && two_digits(n1, n2) <= 59
        // strptime accepts a leap second.
        && two_digits(s1, s2) <= 60
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::otpauth::TestRng;

    const TOTP_FILE: &str = include_str!("../tests/data/google_authenticator_totp");
    const HOTP_FILE: &str = include_str!("../tests/data/google_authenticator_hotp");
    const USERS_FILE: &str = include_str!("../tests/data/users.oath");

    /// Base32 secret of the TOTP fixture.
    const TOTP_SECRET: &str = "QWPCZKPAQQJJMIOXF7WCNXGMBU";

    fn google(text: &str) -> GoogleAuthenticatorFile {
        match parse_google_authenticator(text) {
            Ok(file) => file,
            Err(errors) => panic!("rejected: {errors:?}"),
        }
    }

    fn google_errors(text: &str) -> Vec<ImportError> {
        match parse_google_authenticator(text) {
            Ok(_) => panic!("accepted: {text:?}"),
            Err(errors) => errors,
        }
    }

    fn users(text: &str) -> Vec<OathEntry> {
        match parse_users_oath(text) {
            Ok(entries) => entries,
            Err(errors) => panic!("rejected: {errors:?}"),
        }
    }

    fn users_errors(text: &str) -> Vec<ImportError> {
        match parse_users_oath(text) {
            Ok(_) => panic!("accepted: {text:?}"),
            Err(errors) => errors,
        }
    }

    fn with_totp(lines: &str) -> String {
        format!("{TOTP_SECRET}\n\" TOTP_AUTH\n\" DISALLOW_REUSE\n{lines}")
    }

    fn decode_hex(text: &str) -> Vec<u8> {
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .expect("test hex")
    }

    #[test]
    fn import_error_display_names_line() {
        assert_eq!(ImportError::new(3, "bad").to_string(), "line 3: bad");
        assert_eq!(ImportError::new(0, "bad").to_string(), "whole file: bad");
    }

    #[test]
    fn parses_google_totp_file() {
        let file = google(TOTP_FILE);
        let expected_secret = data_encoding::BASE32_NOPAD
            .decode(TOTP_SECRET.as_bytes())
            .expect("test base32");

        assert!(matches!(file.token.kind, Kind::Totp));
        assert_eq!(file.token.algorithm, Algorithm::Sha1);
        assert_eq!(file.token.digits, 6);
        assert_eq!(file.token.period, 30);
        assert_eq!(file.token.secret.as_bytes(), expected_secret.as_slice());
        assert_eq!(file.token.issuer, None);
        assert_eq!(file.token.account, None);
        assert_eq!(file.last_step, Some(56_987_668));
        let codes: Vec<&str> = file.scratch_codes.iter().map(|code| code.as_str()).collect();
        assert_eq!(codes, ["63411231", "96048833", "69665580", "46098379", "30533140"]);
        assert_eq!(file.notes.len(), 2, "{:?}", file.notes);
        assert!(file.notes.iter().any(|note| note.starts_with("WINDOW_SIZE 17:")));
        assert!(file.notes.iter().any(|note| note.starts_with("RATE_LIMIT 3 30:")));
    }

    #[test]
    fn google_hotp_counter_is_next_value() {
        let file = google(HOTP_FILE);
        assert!(matches!(file.token.kind, Kind::Hotp));
        assert_eq!(file.token.counter, 42);
        assert_eq!(file.token.digits, 6);
        assert_eq!(file.last_step, None);
        assert_eq!(file.scratch_codes.len(), 3);
        assert!(file.notes.iter().any(|note| note.contains("next 5 counter values")));
        assert!(file.notes.iter().any(|note| note.starts_with("RATE_LIMIT 3 30:")));
    }

    #[test]
    fn google_hotp_ignores_disallow_reuse_steps() {
        let file = google(&format!(
            "{TOTP_SECRET}\n\" HOTP_COUNTER 1\n\" DISALLOW_REUSE 56987668\n"
        ));
        assert!(matches!(file.token.kind, Kind::Hotp));
        assert_eq!(file.token.counter, 1);
        assert_eq!(file.last_step, None);
    }

    #[test]
    fn google_totp_without_disallow_reuse_gets_note() {
        let file = google(&format!("{TOTP_SECRET}\n\" TOTP_AUTH\n"));
        assert_eq!(file.last_step, None);
        assert_eq!(file.notes.len(), 1);
        assert!(file.notes[0].contains("no DISALLOW_REUSE"));
        assert!(file.notes[0].contains("once every 30 seconds"));
        assert!(file.scratch_codes.is_empty());
    }

    #[test]
    fn google_empty_disallow_reuse_sets_no_step() {
        let file = google(&with_totp(""));
        assert_eq!(file.last_step, None);
        assert!(file.notes.is_empty(), "{:?}", file.notes);
    }

    #[test]
    fn google_step_size_sets_period() {
        let file = google(&with_totp("\" STEP_SIZE 60\n"));
        assert_eq!(file.token.period, 60);
    }

    #[test]
    fn google_time_skew_becomes_note() {
        let file = google(&with_totp("\" TIME_SKEW -2\n\" RESETTING_TIME_SKEW 1+2 3-4\n"));
        assert_eq!(file.notes.len(), 1, "{:?}", file.notes);
        assert!(file.notes[0].contains("2 time steps behind"));
        let file = google(&with_totp("\" TIME_SKEW 3\n"));
        assert!(file.notes[0].contains("3 time steps ahead of"));
        let file = google(&with_totp("\" TIME_SKEW 0\n"));
        assert!(file.notes.is_empty());
    }

    #[test]
    fn google_hotp_wins_over_totp_auth() {
        let file = google(&format!("{TOTP_SECRET}\n\" TOTP_AUTH\n\" HOTP_COUNTER 9\n"));
        assert!(matches!(file.token.kind, Kind::Hotp));
        assert_eq!(file.token.counter, 9);
        assert!(file.notes[0].contains("both HOTP_COUNTER and TOTP_AUTH"));
    }

    #[test]
    fn google_hotp_counter_zero_falls_back_to_totp() {
        let file = google(&with_totp("\" HOTP_COUNTER 0\n"));
        assert!(matches!(file.token.kind, Kind::Totp));
        assert!(file.notes[0].contains("HOTP_COUNTER is 0"));
    }

    #[test]
    fn google_accepts_crlf_and_blank_lines() {
        let text = TOTP_FILE.replace('\n', "\r\n\r\n");
        let file = google(&text);
        assert_eq!(file.scratch_codes.len(), 5);
        assert_eq!(file.last_step, Some(56_987_668));
    }

    #[test]
    fn google_accepts_options_after_scratch_codes() {
        let file = google(&format!("{TOTP_SECRET}\n12345678\n\" TOTP_AUTH\n"));
        assert!(matches!(file.token.kind, Kind::Totp));
        assert_eq!(file.scratch_codes.len(), 1);
    }

    #[test]
    fn rejects_empty_google_file() {
        for text in ["", "\n\n", "   "] {
            let errors = google_errors(text);
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].line, 0);
            assert!(errors[0].message.contains("empty"));
        }
    }

    #[test]
    fn rejects_google_file_without_mode() {
        let errors = google_errors(&format!("{TOTP_SECRET}\n\" WINDOW_SIZE 3\n12345678\n"));
        assert_eq!(errors, [ImportError::new(0, errors[0].message.clone())]);
        assert!(errors[0].message.contains("neither a TOTP_AUTH nor a HOTP_COUNTER"));

        let errors = google_errors(&format!("{TOTP_SECRET}\n\" HOTP_COUNTER 0\n"));
        assert_eq!(errors[0].line, 0);
        assert!(errors[0].message.contains("HOTP_COUNTER is 0"));
    }

    #[test]
    fn rejects_invalid_google_secret_line() {
        for first_line in ["", "JBSWY3DP1HPK3PXP", "\" TOTP_AUTH", "12345678", "ABC"] {
            let errors = google_errors(&format!("{first_line}\n\" TOTP_AUTH\n"));
            assert_eq!(errors.len(), 1, "{first_line:?}: {errors:?}");
            assert_eq!(errors[0].line, 1, "{first_line:?}");
        }
    }

    #[test]
    fn rejects_unknown_google_option() {
        let errors = google_errors(&with_totp("\" AUTH_CACHE 60\n"));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 4);
        assert!(errors[0].message.starts_with("unknown option AUTH_CACHE"));

        let errors = google_errors(&with_totp("\" lowercase\n\"\n\" \n\"TOTP_AUTH\n"));
        assert_eq!(errors.iter().map(|error| error.line).collect::<Vec<_>>(), [4, 5, 6, 7]);
        assert!(!errors[0].message.contains("lowercase"));
        assert!(errors[1].message.contains("no option name"));
        assert!(errors[2].message.contains("no option name"));
        assert!(errors[3].message.contains("double quote and a space"));
    }

    #[test]
    fn rejects_otp_disabled_option() {
        let errors = google_errors(&with_totp("\" OTP_DISABLED\n"));
        assert_eq!(errors[0].line, 4);
        assert!(errors[0].message.contains("OTP_DISABLED"));
    }

    #[test]
    fn rejects_repeated_google_option() {
        let errors = google_errors(&with_totp("\" TOTP_AUTH\n"));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 4);
        assert!(errors[0].message.contains("more than once"));
    }

    #[test]
    fn rejects_malformed_google_option_values() {
        let lines = [
            "\" TOTP_AUTH yes",
            "\" HOTP_COUNTER",
            "\" HOTP_COUNTER abc",
            "\" HOTP_COUNTER -1",
            "\" HOTP_COUNTER 1 2",
            "\" HOTP_COUNTER 184467440737095516160",
            "\" WINDOW_SIZE 0",
            "\" WINDOW_SIZE 101",
            "\" STEP_SIZE 0",
            "\" STEP_SIZE 61",
            "\" DISALLOW_REUSE 56987668 x",
            "\" DISALLOW_REUSE -5",
            "\" RATE_LIMIT 3",
            "\" RATE_LIMIT 0 30",
            "\" RATE_LIMIT 101 30",
            "\" RATE_LIMIT 3 0",
            "\" RATE_LIMIT 3 3601",
            "\" RATE_LIMIT 3 30 1709630012 soon",
            "\" TIME_SKEW",
            "\" TIME_SKEW --1",
            "\" TIME_SKEW 99999999999999999999",
        ];
        for line in lines {
            let text = format!("{TOTP_SECRET}\n{line}\n\" TOTP_AUTH\n");
            let errors = match parse_google_authenticator(&text) {
                Ok(_) => panic!("accepted {line:?}"),
                Err(errors) => errors,
            };
            // The TOTP_AUTH line itself may be the repeated one.
            assert_eq!(errors[0].line, 2, "{line:?}: {errors:?}");
        }
    }

    #[test]
    fn rejects_malformed_scratch_codes() {
        for code in [
            "1234567",
            "123456789",
            "01234567",
            "1234567a",
            "12 345678",
            "８１２３４５６７",
        ] {
            let errors = google_errors(&with_totp(&format!("{code}\n")));
            assert_eq!(errors.len(), 1, "{code:?}");
            assert_eq!(errors[0].line, 4, "{code:?}");
            assert!(!errors[0].message.contains(code), "{code:?}");
        }
    }

    #[test]
    fn reports_every_bad_google_line() {
        let text = format!("{TOTP_SECRET}\n\" TOTP_AUTH\n1234\n\" STEP_SIZE 99\n87654321\n\" NOPE_NOPE\n");
        let errors = google_errors(&text);
        let lines: Vec<usize> = errors.iter().map(|error| error.line).collect();
        assert_eq!(lines, [3, 4, 6]);
    }

    #[test]
    fn google_errors_never_contain_secrets() {
        let secret = "MZXW6YTBOI4TCNJSGM2DKNRXHA4TAMJS";
        let texts = [
            format!("{secret}1\n\" TOTP_AUTH\n"),
            format!("\" TOTP_AUTH\n{secret}\n"),
            format!("{TOTP_SECRET}\n\" {secret}\n"),
            format!("{TOTP_SECRET}\n\" TOTP_AUTH {secret}\n"),
            format!("{TOTP_SECRET}\n\" HOTP_COUNTER {secret}\n"),
            format!("{TOTP_SECRET}\n\" DISALLOW_REUSE {secret}\n"),
            format!("{TOTP_SECRET}\n\" TIME_SKEW {secret}\n"),
            format!("{TOTP_SECRET}\n\" TOTP_AUTH\n{secret}\n87654321x\n"),
        ];
        for text in texts {
            for error in google_errors(&text) {
                let output = format!("{error} {error:?}");
                assert!(!output.contains(secret), "{output}");
                assert!(!output.contains(TOTP_SECRET), "{output}");
                assert!(!output.contains("87654321"), "{output}");
            }
        }
    }

    #[test]
    fn parses_users_file_with_several_users() {
        let entries = users(USERS_FILE);
        let summary: Vec<(usize, &str)> = entries.iter().map(|entry| (entry.line, entry.user.as_str())).collect();
        assert_eq!(
            summary,
            [
                (4, "alice"),
                (5, "bob"),
                (6, "carol"),
                (8, "dave"),
                (11, "alice"),
                (12, "erin")
            ]
        );

        let alice_event = &entries[0];
        assert!(matches!(alice_event.token.kind, Kind::Hotp));
        assert_eq!(alice_event.token.counter, 0);
        assert_eq!(alice_event.token.digits, 6);
        assert_eq!(alice_event.token.algorithm, Algorithm::Sha1);
        assert_eq!(
            alice_event.token.secret.as_bytes(),
            decode_hex("3d02346ce20f0298ef1b5a648925efaad57cbfd5").as_slice()
        );
        assert_eq!(alice_event.token.account.as_deref(), Some("alice"));
        assert_eq!(alice_event.token.issuer, None);
        assert!(!alice_event.has_password);

        let bob = &entries[1];
        assert!(matches!(bob.token.kind, Kind::Hotp));
        assert_eq!(bob.token.digits, 8);
        assert_eq!(bob.token.counter, 18);

        let carol = &entries[2];
        assert!(matches!(carol.token.kind, Kind::Totp));
        assert_eq!(carol.token.period, 30);
        assert_eq!(carol.token.counter, 0);
        assert_eq!(carol.last_step, None);
        assert!(!carol.has_password);

        let dave = &entries[3];
        assert!(matches!(dave.token.kind, Kind::Totp));
        assert_eq!(dave.token.period, 60);
        assert_eq!(dave.token.digits, 8);

        let alice_phone = &entries[4];
        assert!(matches!(alice_phone.token.kind, Kind::Totp));
        assert_eq!(
            alice_phone.token.secret.as_bytes(),
            decode_hex("e607ac713d0095c5cbb8a13ed6957d34f79e0374").as_slice()
        );

        let erin = &entries[5];
        assert!(erin.has_password);
        assert_eq!(erin.token.counter, 5);
    }

    #[test]
    fn oath_event_counter_follows_last_otp() {
        let secret = "3132333435363738393031323334353637383930";
        let cases = [
            (format!("HOTP u - {secret}"), 0),
            (format!("HOTP u - {secret} 7"), 7),
            (format!("HOTP u - {secret} 7 123456"), 8),
            (format!("HOTP u - {secret} 7 123456 2024-03-05T09:14:27L"), 8),
            (format!("HOTP u - {secret} 0 755224 2024-03-05T09:14:27L"), 1),
        ];
        for (line, next) in cases {
            let entries = users(&line);
            assert_eq!(entries[0].token.counter, next, "{line}");
        }
    }

    #[test]
    fn maps_every_oath_type_spelling() {
        let cases = [
            ("HOTP", None, 6),
            ("HOTP/E", None, 6),
            ("HOTP/E/6", None, 6),
            ("HOTP/E/8", None, 8),
            ("HOTP/T30", Some(30), 6),
            ("HOTP/T30/6", Some(30), 6),
            ("HOTP/T30/8", Some(30), 8),
            ("HOTP/T60", Some(60), 6),
            ("HOTP/T60/6", Some(60), 6),
            ("HOTP/T60/8", Some(60), 8),
        ];
        for (spelling, period, digits) in cases {
            let entries = users(&format!("{spelling} user - 00112233445566778899"));
            let token = &entries[0].token;
            assert_eq!(token.digits, digits, "{spelling}");
            match period {
                None => assert!(matches!(token.kind, Kind::Hotp), "{spelling}"),
                Some(period) => {
                    assert!(matches!(token.kind, Kind::Totp), "{spelling}");
                    assert_eq!(token.period, period, "{spelling}");
                }
            }
        }
    }

    #[test]
    fn oath_password_field_sets_has_password() {
        let cases = [("-", false), ("+", false), ("1234", true), ("--", true), ("+-", true)];
        for (password, expected) in cases {
            let entries = users(&format!("HOTP user {password} 00112233445566778899"));
            assert_eq!(entries[0].has_password, expected, "{password}");
        }
    }

    #[test]
    fn oath_same_secret_twice_per_user() {
        let text = "HOTP alice - 00112233445566778899\n\
                    HOTP bob - 00112233445566778899\n\
                    HOTP alice - 99887766554433221100\n\
                    HOTP/T30 alice - 00112233445566778899\n";
        let (entries, errors) = parse_users_oath_lines(text);
        assert_eq!(entries.len(), 3, "another user or another secret is no duplicate");
        assert_eq!(
            errors.len(),
            1,
            "a time-based token of the same secret gives the same codes"
        );
        assert_eq!(errors[0].line, 4);
        assert!(errors[0].to_string().contains("on line 1"), "{}", errors[0]);
    }

    #[test]
    fn empty_users_file_has_no_entries() {
        for text in ["", "\n", "# only a comment\n\n   \t\n"] {
            assert!(users(text).is_empty(), "{text:?}");
        }
    }

    #[test]
    fn rejects_unknown_oath_type() {
        let errors = users_errors("TOTP alice - 00112233445566778899\nhotp/t30 bob - 00112233445566778899\nHOTP/T45 carol - 00112233445566778899\n");
        assert_eq!(errors.len(), 3);
        assert!(errors[0].message.contains("no TOTP type"));
        assert!(errors[1].message.contains("write HOTP/T30"));
        assert!(errors[2].message.starts_with("unknown token type"));
        assert!(!errors[2].message.contains("T45"));
    }

    #[test]
    fn rejects_seven_digit_oath_types() {
        for spelling in ["HOTP/E/7", "HOTP/T30/7", "HOTP/T60/7"] {
            let errors = users_errors(&format!("{spelling} user - 00112233445566778899"));
            assert!(errors[0].message.contains("7-digit"), "{spelling}");
        }
    }

    #[test]
    fn rejects_invalid_oath_hex_secret() {
        for secret in ["0g", "abc", "-", "0x00ff"] {
            let errors = users_errors(&format!("HOTP user - {secret}"));
            assert_eq!(errors[0].line, 1, "{secret}");
            assert!(errors[0].message.starts_with("SECRET"), "{secret}");
        }
    }

    #[test]
    fn rejects_wrong_number_of_oath_fields() {
        let errors = users_errors("HOTP\nHOTP alice\nHOTP alice -\n");
        assert_eq!(errors.len(), 3);
        assert!(errors[2].message.contains("found 3"));
        let errors = users_errors("HOTP alice - 00112233445566778899 1 123456 2024-03-05T09:14:27L extra\n");
        assert!(errors[0].message.contains("at most the 7 fields"));
    }

    #[test]
    fn rejects_malformed_oath_counter() {
        for counter in ["x", "-1", "+1", "1.5", "18446744073709551616"] {
            let errors = users_errors(&format!("HOTP user - 00112233445566778899 {counter}"));
            assert!(errors[0].message.starts_with("COUNTER"), "{counter}");
        }
        // Time-based lines are checked the same way, as liboath does.
        let errors = users_errors("HOTP/T30 user - 00112233445566778899 x");
        assert!(errors[0].message.starts_with("COUNTER"));
    }

    #[test]
    fn counters_stop_at_agent_limit() {
        let max = freeauth_otp::MAX_COUNTER;
        let entries = users(&format!("HOTP user - 00112233445566778899 {}  123456", max - 1));
        assert_eq!(entries[0].token.counter, max);
        let entries = users(&format!("HOTP user - 00112233445566778899 {max}"));
        assert_eq!(entries[0].token.counter, max);
        let errors = users_errors(&format!("HOTP user - 00112233445566778899 {max} 123456"));
        assert!(errors[0].message.contains("no counter value left"), "{}", errors[0]);
        for counter in [max + 1, u64::MAX] {
            let errors = users_errors(&format!("HOTP user - 00112233445566778899 {counter}"));
            assert!(errors[0].message.starts_with("COUNTER"), "{counter}");
        }
        let errors = google_errors(&format!(
            "{TOTP_SECRET}\n\" HOTP_COUNTER {}\n",
            freeauth_otp::MAX_COUNTER + 1
        ));
        assert_eq!(errors[0].line, 2);
    }

    #[test]
    fn rejects_agent_limits_by_line() {
        for name in ["bob\u{a0}", "\u{3000}bob"] {
            let errors = users_errors(&format!("HOTP {name} - 00112233445566778899\n"));
            assert!(errors[0].message.contains("white space"), "{name:?}: {}", errors[0]);
        }
        let long_name = "u".repeat(254);
        let text = format!(
            "# liboath's own example has a one-byte secret\n\
             HOTP user1 - 00\n\
             HOTP {long_name} - 00112233445566778899\n\
             HOTP bob - 00112233445566778899\n\
             HOTP/T30 bob - 0011223344556677889900\n\
             HOTP carol - 00112233445566778899\n"
        );
        let errors = users_errors(&text);
        let lines: Vec<usize> = errors.iter().map(|error| error.line).collect();
        assert_eq!(lines, [2, 3, 5], "{errors:?}");
        assert!(
            errors[0].message.contains("1 bytes; FreeAuth accepts 10 to 128"),
            "{}",
            errors[0]
        );
        assert!(errors[1].message.contains("at most 253"), "{}", errors[1]);
        assert!(errors[2].message.contains("this secret on line 4"), "{}", errors[2]);
        let short = google_errors("GEZDGNBV\n\" TOTP_AUTH\n");
        assert_eq!(short[0].line, 1);
        assert!(short[0].message.contains("5 bytes"), "{}", short[0]);
    }

    #[test]
    fn rejects_malformed_last_otp_and_time() {
        let bad_codes = ["12345", "123456789", "12345a"];
        for code in bad_codes {
            let errors = users_errors(&format!("HOTP user - 00112233445566778899 1 {code}"));
            assert!(errors[0].message.starts_with("LAST_OTP"), "{code}");
            assert!(!errors[0].message.contains(code), "{code}");
        }
        let bad_times = [
            "2024-03-05T09:14:27",
            "2024-03-05_09:14:27L",
            "2024-13-05T09:14:27L",
            "2024-03-00T09:14:27L",
            "2024-03-05T24:14:27L",
            "2024-03-05T09:60:27L",
            "2024-03-05T09:14:61L",
            "2024-03-05T09:14:27Z",
            "yyyy-03-05T09:14:27L",
            "2024-03-05T09:14:27LL",
        ];
        for time in bad_times {
            let errors = users_errors(&format!("HOTP user - 00112233445566778899 1 123456 {time}"));
            assert!(errors[0].message.starts_with("TIME"), "{time}");
        }
        assert!(is_liboath_timestamp("1999-12-31T23:59:60L"));
    }

    #[test]
    fn reports_every_bad_users_line() {
        let text = "# header\nHOTP ok - 00112233445566778899\nHOTP bad - 0g\n\n\
                    HOTP/E/7 seven - 00112233445566778899\nHOTP ok2 - 00112233445566778899\nFOO x - 00\n";
        let errors = users_errors(text);
        let lines: Vec<usize> = errors.iter().map(|error| error.line).collect();
        assert_eq!(lines, [3, 5, 7]);
    }

    #[test]
    fn users_errors_hide_secrets_and_passwords() {
        let secret = "9608e30e4870bc90b0b2ff5ba2e5fbdb0cdca76f";
        let password = "Winter2024";
        let lines = [
            format!("{secret} alice {password}"),
            format!("HOTP alice {password} {secret}g"),
            format!("HOTP alice {password} {secret} {secret}"),
            format!("HOTP alice {password} {secret} 1 {secret}"),
            format!("HOTP alice {password} {secret} 1 123456 {secret}"),
            format!("HOTP/E/7 alice {password} {secret}"),
            format!("HOTP alice {password} {secret} 1 2 3 {secret}"),
        ];
        for line in lines {
            for error in users_errors(&line) {
                let output = format!("{error} {error:?}");
                assert!(!output.contains(secret), "{output}");
                assert!(!output.contains(password), "{output}");
            }
        }
    }

    /// Feeds truncations and random mutations of `valid` and random bytes to
    /// `parse`. A panic fails the test.
    fn assert_no_panic(valid: &str, seed: u64, parse: impl Fn(&str)) {
        let mut rng = TestRng::new(seed);
        for end in 0..=valid.len() {
            if let Some(prefix) = valid.get(..end) {
                parse(prefix);
            }
        }
        let alphabet = b"\" \t\r\n#-+/0123456789:ABCDEFHLOPTZ_abcdefg\x00\xc3\xa4";
        for _ in 0..3000 {
            let mut bytes = valid.as_bytes().to_vec();
            for _ in 0..=rng.below(6) {
                let position = rng.below(bytes.len().max(1));
                let byte = alphabet[rng.below(alphabet.len())];
                match rng.below(3) {
                    0 if position < bytes.len() => bytes[position] = byte,
                    1 if position < bytes.len() => {
                        bytes.remove(position);
                    }
                    _ => bytes.insert(position.min(bytes.len()), byte),
                }
            }
            parse(&String::from_utf8_lossy(&bytes));
        }
        for _ in 0..1000 {
            let bytes: Vec<u8> = (0..rng.below(300)).map(|_| rng.next_u64() as u8).collect();
            parse(&String::from_utf8_lossy(&bytes));
        }
        parse(&"9".repeat(10_000));
        parse(&"\" HOTP_COUNTER 9999999999999999999999999999\n".repeat(100));
    }

    #[test]
    fn parsers_survive_random_input() {
        assert_no_panic(TOTP_FILE, 1, |text| {
            let _ = parse_google_authenticator(text);
        });
        assert_no_panic(HOTP_FILE, 2, |text| {
            let _ = parse_google_authenticator(text);
        });
        assert_no_panic(USERS_FILE, 3, |text| {
            let _ = parse_users_oath(text);
        });
    }
}
