//! The benchmark's users: `u0000001`, `u0000002`, …, each with one HOTP
//! SHA-1 6-digit token and a random 20-byte secret, written both as an
//! oath-toolkit users file and into the agent through `Request::Import`.
//! Both copies start at counter 0, and each module's next counter per user is
//! tracked on this side.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use freeauth_otp::{hotp, Algorithm, Secret};
use freeauth_proto::{
    Client, HashAlgorithm, ImportEntry, NewToken, Request, Response, SecretString, TokenKind, MAX_FRAME_LEN,
};

/// Secret length in bytes: the 160 bits RFC 4226 recommends for SHA-1.
pub const SECRET_LEN: usize = 20;

/// Code length of every token; also what the `HOTP` type of a users.oath
/// line means in oath-toolkit 2.6.7 (`HOTP/E/6`).
pub const DIGITS: u8 = 6;

/// Time one import request may take before the client gives up.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);

/// All users' secrets, back to back: user `i` has bytes
/// `i * SECRET_LEN .. (i + 1) * SECRET_LEN`.
pub struct Population {
    secrets: Vec<u8>,
    names: Vec<std::ffi::CString>,
}

impl Population {
    /// Draws `count` random secrets from the operating system's generator.
    pub fn generate(count: usize) -> Result<Population, String> {
        let mut secrets = vec![0u8; count * SECRET_LEN];
        getrandom::getrandom(&mut secrets).map_err(|err| format!("the random generator failed: {err}"))?;
        let names = (0..count)
            .map(|index| std::ffi::CString::new(user_name(index)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("invalid user name: {err}"))?;
        Ok(Population { secrets, names })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Name of user `index`, as PAM_USER.
    pub fn name(&self, index: usize) -> &std::ffi::CStr {
        &self.names[index]
    }

    fn secret(&self, index: usize) -> Secret {
        let start = index * SECRET_LEN;
        Secret::new(self.secrets[start..start + SECRET_LEN].to_vec())
    }

    /// Computes the HOTP code of user `index` at `counter`.
    pub fn code(&self, index: usize, counter: u64) -> String {
        hotp(&self.secret(index), counter, DIGITS, Algorithm::Sha1).to_string()
    }

    /// Writes the oath-toolkit users file: one `HOTP user - hexsecret` line per
    /// user (no password, counter 0), mode 0600 as pam_oath's README recommends.
    pub fn write_users_oath(&self, path: &Path) -> Result<Duration, String> {
        let started = Instant::now();
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|err| format!("cannot create {}: {err}", path.display()))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        for index in 0..self.len() {
            let line = format!("HOTP {} - {}\n", user_name(index), self.secret(index).to_hex().as_str());
            writer
                .write_all(line.as_bytes())
                .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        }
        writer
            .into_inner()
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?
            .sync_all()
            .map_err(|err| format!("cannot sync {}: {err}", path.display()))?;
        Ok(started.elapsed())
    }

    /// Imports every user's token into the agent, `chunk` tokens per request.
    /// Each request is one transaction of the agent, so a failure stops here
    /// with the earlier chunks imported.
    pub fn import(&self, admin_socket: &Path, chunk: usize) -> Result<Duration, String> {
        let mut client = Client::connect(admin_socket, "freeauth-bench-pam", IMPORT_TIMEOUT)
            .map_err(|err| format!("cannot open the admin socket: {err}"))?;
        let started = Instant::now();
        let mut first = 0;
        while first < self.len() {
            let end = (first + chunk).min(self.len());
            let entries: Vec<ImportEntry> = (first..end).map(|index| self.import_entry(index)).collect();
            let response = client.call(Request::Import { entries }).map_err(|err| {
                format!(
                    "import of users {}..{} failed: {err} (one request must fit in {MAX_FRAME_LEN} bytes; try a smaller --import-chunk)",
                    first + 1,
                    end
                )
            })?;
            match response {
                Response::Imported { tokens, .. } if tokens as usize == end - first => {}
                other => {
                    return Err(format!(
                        "import of users {}..{} returned {other:?} instead of {} imported tokens",
                        first + 1,
                        end,
                        end - first
                    ))
                }
            }
            first = end;
        }
        Ok(started.elapsed())
    }

    fn import_entry(&self, index: usize) -> ImportEntry {
        ImportEntry {
            user: user_name(index),
            token: NewToken {
                kind: TokenKind::Hotp,
                algorithm: HashAlgorithm::Sha1,
                digits: DIGITS,
                // Not used by HOTP; 30 is the value enrolment stores.
                period: 30,
                counter: 0,
                last_step: None,
                secret_hex: SecretString::new(self.secret(index).to_hex().as_str()),
                pin: None,
                label: None,
            },
            backup_codes: Vec::new(),
        }
    }
}

/// Name of user `index`: `u0000001` for index 0.
pub fn user_name(index: usize) -> String {
    format!("u{:07}", index + 1)
}

/// Marks a user without an accepted code in [`Counters`].
const NONE_ACCEPTED: u64 = u64::MAX;

/// The next HOTP counter of every user on one module's side, and the
/// counter of the last code the module accepted for each.
pub struct Counters {
    next: Vec<AtomicU64>,
    accepted: Vec<AtomicU64>,
}

impl Counters {
    pub fn new(count: usize) -> Counters {
        Counters {
            next: (0..count).map(|_| AtomicU64::new(0)).collect(),
            accepted: (0..count).map(|_| AtomicU64::new(NONE_ACCEPTED)).collect(),
        }
    }

    /// Returns user `index`'s next counter and advances it. Callers never
    /// let two threads work on the same user at once, so the counter always
    /// matches the code that is sent.
    pub fn take(&self, index: usize) -> u64 {
        self.next[index].fetch_add(1, Ordering::Relaxed)
    }

    /// Notes that the module accepted user `index`'s code of `counter`.
    pub fn note_accepted(&self, index: usize, counter: u64) {
        self.accepted[index].store(counter, Ordering::Relaxed);
    }

    /// Returns user `index`'s next counter and the counter of its last
    /// accepted code, if any.
    pub fn get(&self, index: usize) -> (u64, Option<u64>) {
        let accepted = self.accepted[index].load(Ordering::Relaxed);
        (
            self.next[index].load(Ordering::Relaxed),
            (accepted != NONE_ACCEPTED).then_some(accepted),
        )
    }

    /// Sets user `index`'s counters, as a forked loop left them.
    pub fn set(&self, index: usize, next: u64, accepted: Option<u64>) {
        self.next[index].store(next, Ordering::Relaxed);
        self.accepted[index].store(accepted.unwrap_or(NONE_ACCEPTED), Ordering::Relaxed);
    }
}
