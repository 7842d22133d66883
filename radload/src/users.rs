//! The users file (`USER BASE32SECRET` per line) that drives the load, and
//! a generator that creates one with random TOTP secrets. The generator also
//! writes the same accounts in the formats that the servers under test
//! import: oath-toolkit's `users.oath` for `freeauthctl import --format
//! oath`, and a FreeRADIUS `users` file that sets `TOTP-Secret` for
//! rlm_totp.
//!
//! Every token is TOTP with HMAC-SHA-1, 6 digits and 30-second steps, the
//! only kind that rlm_totp of FreeRADIUS 3.2 checks. Error messages name the
//! file and line but never contain a secret.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use freeauth_otp::Secret;

/// Longest user name: a RADIUS attribute value is at most 253 bytes long.
pub const MAX_USER_LEN: usize = 253;

/// Secret length of generated tokens: 20 bytes, the HMAC-SHA-1 output size
/// that RFC 4226 recommends. It is 32 base32 characters without padding.
pub const GENERATED_SECRET_LEN: usize = 20;

/// One account of the load: its RADIUS User-Name and TOTP secret.
pub struct User {
    pub name: String,
    pub secret: Secret,
}

/// Parses a users file: one `USER BASE32SECRET` per line, separated by
/// spaces or tabs. Blank lines and lines starting with `#` are skipped.
/// Returns every invalid line, each as `PATH:LINE: problem`.
pub fn parse_users(path: &Path, text: &str) -> Result<Vec<User>, Vec<String>> {
    let mut users = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(user) => users.push(user),
            Err(problem) => errors.push(format!("{}:{number}: {problem}", path.display())),
        }
    }
    if users.is_empty() && errors.is_empty() {
        errors.push(format!("{}: contains no users", path.display()));
    }
    if errors.is_empty() {
        Ok(users)
    } else {
        Err(errors)
    }
}

fn parse_line(line: &str) -> Result<User, String> {
    let mut fields = line.split_whitespace();
    let (Some(name), Some(secret), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err("expected two fields, USER and BASE32SECRET".to_owned());
    };
    if name.len() > MAX_USER_LEN {
        return Err(format!(
            "user name is {} bytes long; the maximum is {MAX_USER_LEN}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("user name contains a control character".to_owned());
    }
    let secret = Secret::from_base32(secret).map_err(|err| format!("invalid secret of user {name}: {err}"))?;
    Ok(User {
        name: name.to_owned(),
        secret,
    })
}

/// Reads and parses a users file; the error lists every problem.
pub fn read_users(path: &Path) -> Result<Vec<User>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("cannot read users file {}: {err}", path.display()))?;
    parse_users(path, &text).map_err(|errors| errors.join("\n"))
}

/// Creates `count` users named `PREFIX` followed by a 7-digit number
/// (`radload0000001`), each with a fresh random secret.
pub fn generate_users(prefix: &str, count: usize) -> Result<Vec<User>, String> {
    (1..=count)
        .map(|number| {
            let secret = Secret::generate(GENERATED_SECRET_LEN)
                .map_err(|err| format!("cannot read random bytes from the operating system: {err}"))?;
            Ok(User {
                name: format!("{prefix}{number:07}"),
                secret,
            })
        })
        .collect()
}

/// Output formats of [`write_users`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `USER BASE32SECRET`, read back by this program.
    Users,
    /// oath-toolkit `users.oath`: `HOTP/T30 USER - HEXSECRET`.
    Oath,
    /// FreeRADIUS `users` (rlm_files): `USER TOTP-Secret := "BASE32SECRET"`.
    FreeRadius,
}

/// Writes `users` to `path` in `format`, creating the file with mode 0600
/// because it contains secrets. An existing file is replaced.
pub fn write_users(path: &Path, users: &[User], format: Format) -> Result<(), String> {
    let fail = |err: std::io::Error| format!("cannot write {}: {err}", path.display());
    let file: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    let mut out = BufWriter::new(file);
    if format == Format::Oath {
        writeln!(
            out,
            "# TOTP, HMAC-SHA-1, 6 digits, 30 s; import with: freeauthctl import --format oath FILE"
        )
        .map_err(fail)?;
    }
    for user in users {
        match format {
            Format::Users => writeln!(out, "{} {}", user.name, user.secret.to_base32().as_str()),
            Format::Oath => writeln!(out, "HOTP/T30 {} - {}", user.name, user.secret.to_hex().as_str()),
            Format::FreeRadius => writeln!(
                out,
                "{} TOTP-Secret := \"{}\"",
                user.name,
                user.secret.to_base32().as_str()
            ),
        }
        .map_err(fail)?;
    }
    out.flush().map_err(fail)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_users_comments_and_blank_lines() {
        let text = "# load users\n\nalice GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\n\tbob\tgezd gnbv\n";
        let error = parse_users(Path::new("u.txt"), text).err().unwrap();
        assert_eq!(error.len(), 1, "{error:?}");
        assert!(error[0].starts_with("u.txt:4:"), "{error:?}");

        let users = parse_users(
            Path::new("u.txt"),
            "alice GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\n  bob gezdgnbv  \n",
        )
        .unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].name, "alice");
        assert_eq!(users[0].secret.as_bytes(), b"12345678901234567890");
        assert_eq!(users[1].name, "bob");
        assert_eq!(users[1].secret.as_bytes(), b"12345");
    }

    #[test]
    fn reports_every_bad_line_without_secrets() {
        let text = "alice\nbob NOT-BASE32!\ncarol A B\n";
        let errors = parse_users(Path::new("u.txt"), text).err().unwrap();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("u.txt:1:"));
        assert!(errors[1].starts_with("u.txt:2:"), "{}", errors[1]);
        assert!(errors[1].contains("bob"), "{}", errors[1]);
        assert!(!errors[1].contains("NOT-BASE32"), "{}", errors[1]);
        assert!(errors[2].starts_with("u.txt:3:"));
    }

    #[test]
    fn empty_file_is_an_error() {
        let errors = parse_users(Path::new("u.txt"), "# nothing\n").err().unwrap();
        assert!(errors[0].contains("no users"), "{errors:?}");
    }

    #[test]
    fn generated_users_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let users = generate_users("t", 3).unwrap();
        assert_eq!(users[2].name, "t0000003");
        assert_eq!(users[0].secret.len(), GENERATED_SECRET_LEN);

        let path = dir.path().join("users.txt");
        write_users(&path, &users, Format::Users).unwrap();
        let read = read_users(&path).unwrap();
        assert_eq!(read.len(), 3);
        assert_eq!(read[1].name, users[1].name);
        assert_eq!(read[1].secret.as_bytes(), users[1].secret.as_bytes());

        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    #[test]
    fn writes_oath_and_freeradius_lines() {
        let dir = tempfile::tempdir().unwrap();
        let users = vec![User {
            name: "alice".into(),
            secret: Secret::new(b"12345678901234567890".to_vec()),
        }];
        let oath = dir.path().join("users.oath");
        write_users(&oath, &users, Format::Oath).unwrap();
        let text = std::fs::read_to_string(&oath).unwrap();
        assert!(
            text.lines()
                .any(|l| l == "HOTP/T30 alice - 3132333435363738393031323334353637383930"),
            "{text}"
        );

        let radius = dir.path().join("authorize");
        write_users(&radius, &users, Format::FreeRadius).unwrap();
        let text = std::fs::read_to_string(&radius).unwrap();
        assert_eq!(text, "alice TOTP-Secret := \"GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\"\n");
    }
}
