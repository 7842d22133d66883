//! The benchmark's tokens: one HOTP SHA-1 6-digit token per user `u000001`,
//! `u000002`, …, each with a random 20-byte seed that the client keeps to
//! compute codes, imported through the admin socket in chunks.

use std::path::Path;
use std::time::{Duration, Instant};

use freeauth_otp::Secret;
use freeauth_proto::{
    Client, HashAlgorithm, ImportEntry, NewToken, Request, Response, SecretString, TokenKind, MAX_FRAME_LEN,
};

/// Seed length in bytes: the 160 bits that RFC 4226 recommends for SHA-1.
pub const SECRET_LEN: usize = 20;

/// Code length of every benchmark token.
pub const DIGITS: u8 = 6;

/// Time one import request may take before the client gives up.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);

/// The seeds of all tokens, stored back to back: token `i` has bytes
/// `i * SECRET_LEN .. (i + 1) * SECRET_LEN`.
pub struct Tokens {
    seeds: Vec<u8>,
}

impl Tokens {
    /// Draws `count` random seeds from the operating system's generator.
    pub fn generate(count: usize) -> Result<Tokens, String> {
        let mut seeds = vec![0u8; count * SECRET_LEN];
        getrandom::getrandom(&mut seeds).map_err(|err| format!("the random generator failed: {err}"))?;
        Ok(Tokens { seeds })
    }

    pub fn len(&self) -> usize {
        self.seeds.len() / SECRET_LEN
    }

    /// Returns the seed of token `index`.
    pub fn secret(&self, index: usize) -> Secret {
        let start = index * SECRET_LEN;
        Secret::new(self.seeds[start..start + SECRET_LEN].to_vec())
    }
}

/// Name of the user who owns token `index`: `u000001` for index 0.
pub fn user_name(index: usize) -> String {
    format!("u{:06}", index + 1)
}

/// Imports all tokens with `Request::Import`, `chunk` tokens per request and
/// one request at a time, starting at counter 0. Returns the wall-clock time
/// of the requests, JSON encoding included.
pub fn import(admin_socket: &Path, tokens: &Tokens, chunk: usize) -> Result<Duration, String> {
    let mut client = Client::connect(admin_socket, "freeauth-bench", IMPORT_TIMEOUT).map_err(|err| err.to_string())?;
    let started = Instant::now();
    let mut first = 0;
    while first < tokens.len() {
        let end = (first + chunk).min(tokens.len());
        let entries: Vec<ImportEntry> = (first..end).map(|index| import_entry(tokens, index)).collect();
        let response = client.call(Request::Import { entries }).map_err(|err| {
            format!(
                "import of tokens {}..{} failed: {err} (a request must fit in {MAX_FRAME_LEN} bytes; try a smaller --import-chunk)",
                first + 1,
                end
            )
        })?;
        match response {
            Response::Imported { tokens: imported, .. } if imported as usize == end - first => {}
            other => {
                return Err(format!(
                    "import of tokens {}..{} returned {other:?} instead of {} imported tokens",
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

fn import_entry(tokens: &Tokens, index: usize) -> ImportEntry {
    ImportEntry {
        user: user_name(index),
        token: NewToken {
            kind: TokenKind::Hotp,
            algorithm: HashAlgorithm::Sha1,
            digits: DIGITS,
            period: 30,
            counter: 0,
            last_step: None,
            secret_hex: SecretString::new(tokens.secret(index).to_hex().as_str()),
            pin: None,
            label: None,
        },
        backup_codes: Vec::new(),
    }
}
