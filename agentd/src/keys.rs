//! The seed encryption key and what it protects.
//!
//! Seeds and Mobile-OTP PINs are sealed with ChaCha20-Poly1305 under a 32-byte
//! key kept in its own file, so the database alone reveals no seed. The
//! associated data binds each sealed value to its token id and field, so a
//! value copied into another row fails to open. Backup codes are not
//! encrypted but hashed with Argon2id and a per-user salt, so neither the
//! database nor the key file reveals them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

const KEY_LEN: usize = 32;
/// Plain text of the key check in the database's `meta` table.
const KEY_CHECK_MARKER: &[u8] = b"freeauth";
const NONCE_LEN: usize = 12;
const SEALED_VERSION: u8 = 1;

/// Failure to load, create or use the seed key.
#[derive(Debug)]
pub enum KeyError {
    Io { path: String, source: std::io::Error },
    Unsafe { path: String, reason: String },
    Malformed { path: String },
    Random,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Io { path, source } => write!(f, "seed key {path}: {source}"),
            KeyError::Unsafe { path, reason } => write!(f, "{path} is unsafe: {reason}"),
            KeyError::Malformed { path } => write!(
                f,
                "seed key {path} is malformed: expected 64 hexadecimal characters (32 bytes)"
            ),
            KeyError::Random => write!(f, "the operating system's random generator failed"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Seals and opens seeds. No `Debug`, and the key is wiped on drop.
pub struct SeedCipher {
    cipher: ChaCha20Poly1305,
    /// Key of [`SeedCipher::digest`], derived from the seed key.
    digest_key: Zeroizing<[u8; 32]>,
    /// Digest keys of the seed keys that a rekey replaced, kept while the
    /// records of removed secrets made with them last.
    previous: Vec<PreviousDigestKey>,
}

/// The digest key of a replaced seed key, and the Unix time until which
/// a stored digest made with it lasts.
struct PreviousDigestKey {
    key: Zeroizing<[u8; 32]>,
    until: u64,
}

/// Bytes of one [`PreviousDigestKey`] as sealed: the time, then the key.
const PREVIOUS_RECORD_LEN: usize = 8 + 32;

/// Returns HMAC-SHA-256 of `data` under `key`.
fn keyed_digest(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    // HMAC (RFC 2104) takes keys of any length, and the hmac crate's
    // `new_from_slice` rejects none, so the error branch is never taken.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Which secret of a token a sealed value holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Seed,
    Pin,
    /// The marker that tells at start-up whether the key fits the database.
    KeyCheck,
    /// The digest keys of replaced seed keys (see
    /// [`SeedCipher::seal_previous_digest_keys`]).
    PreviousDigestKeys,
}

impl Field {
    fn label(self) -> &'static [u8] {
        match self {
            Field::Seed => b"seed",
            Field::Pin => b"pin",
            Field::KeyCheck => b"key-check",
            Field::PreviousDigestKeys => b"previous-digest-keys",
        }
    }
}

impl SeedCipher {
    /// Builds a cipher from raw key bytes.
    pub fn new(key: &[u8; KEY_LEN]) -> SeedCipher {
        // HMAC (RFC 2104) takes keys of any length, and the hmac crate's
        // `new_from_slice` rejects none, so the error branch is never taken.
        let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        derive.update(b"freeauth code identity digest");
        let digest_key = Zeroizing::new(<[u8; 32]>::from(derive.finalize().into_bytes()));
        SeedCipher {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
            digest_key,
            previous: Vec::new(),
        }
    }

    /// Returns a keyed digest (HMAC-SHA-256) of `data`: equal inputs give
    /// equal digests, and without the key file the digest does not let
    /// anyone test a guess of the input.
    pub fn digest(&self, data: &[u8]) -> [u8; 32] {
        keyed_digest(&self.digest_key, data)
    }

    /// Returns the digests of `data` under the digest keys of earlier seed
    /// keys that are still kept at `now`, newest first.
    pub fn previous_digests(&self, data: &[u8], now: u64) -> Vec<[u8; 32]> {
        self.previous
            .iter()
            .filter(|previous| previous.until > now)
            .map(|previous| keyed_digest(&previous.key, data))
            .collect()
    }

    /// Takes over the digest keys of `old`, the cipher of the seed key that
    /// this one replaces. `old`'s own digest key is kept until `until`, the
    /// end of the last stored digest made with it. `old`'s earlier digest
    /// keys are kept as long as they last after `now`.
    pub fn inherit_digest_keys(&mut self, old: &SeedCipher, until: Option<u64>, now: u64) {
        let mut previous = Vec::new();
        if let Some(until) = until.filter(|until| *until > now) {
            previous.push(PreviousDigestKey {
                key: old.digest_key.clone(),
                until,
            });
        }
        previous.extend(
            old.previous
                .iter()
                .filter(|earlier| earlier.until > now)
                .map(|earlier| PreviousDigestKey {
                    key: earlier.key.clone(),
                    until: earlier.until,
                }),
        );
        self.previous = previous;
    }

    /// Seals the earlier digest keys under this cipher, for the database's
    /// `meta`; `None` when there are none.
    pub fn seal_previous_digest_keys(&self) -> Result<Option<Vec<u8>>, KeyError> {
        if self.previous.is_empty() {
            return Ok(None);
        }
        let mut plain = Zeroizing::new(Vec::with_capacity(self.previous.len() * PREVIOUS_RECORD_LEN));
        for previous in &self.previous {
            plain.extend_from_slice(&previous.until.to_be_bytes());
            plain.extend_from_slice(previous.key.as_slice());
        }
        self.seal(0, Field::PreviousDigestKeys, &plain).map(Some)
    }

    /// Takes the earlier digest keys from `sealed`, the output of
    /// [`SeedCipher::seal_previous_digest_keys`]. Returns `false` when it
    /// does not open or is malformed.
    pub fn adopt_previous_digest_keys(&mut self, sealed: &[u8]) -> bool {
        let Some(plain) = self.open(0, Field::PreviousDigestKeys, sealed) else {
            return false;
        };
        if plain.is_empty() || plain.len() % PREVIOUS_RECORD_LEN != 0 {
            return false;
        }
        self.previous = plain
            .chunks_exact(PREVIOUS_RECORD_LEN)
            .map(|record| {
                let (until, key) = record.split_at(8);
                let mut until_bytes = [0u8; 8];
                until_bytes.copy_from_slice(until);
                let mut previous = PreviousDigestKey {
                    key: Zeroizing::new([0u8; 32]),
                    until: u64::from_be_bytes(until_bytes),
                };
                previous.key.copy_from_slice(key);
                previous
            })
            .collect();
        true
    }

    /// Seals the marker that [`SeedCipher::fits`] checks.
    pub fn seal_key_check(&self) -> Result<Vec<u8>, KeyError> {
        self.seal(0, Field::KeyCheck, KEY_CHECK_MARKER)
    }

    /// Returns whether `sealed`, the database's key check, was sealed under
    /// this key.
    pub fn fits(&self, sealed: &[u8]) -> bool {
        self.open(0, Field::KeyCheck, sealed)
            .is_some_and(|opened| opened.as_slice() == KEY_CHECK_MARKER)
    }

    /// Loads the key file after checking that only its owner, the agent's
    /// user, can read it.
    pub fn load(path: &Path) -> Result<SeedCipher, KeyError> {
        Self::load_owned_by(path, nix::unistd::geteuid().as_raw())
    }

    /// Loads the key file after checking that it belongs to uid `owner` and
    /// that no other user can read it. Root uses it for the agent's key.
    pub fn load_owned_by(path: &Path, owner: u32) -> Result<SeedCipher, KeyError> {
        check_private(path, false, owner)?;
        // The key is 64 hex digits; the rest is room for a line break.
        let text = Zeroizing::new(
            freeauth_toml::read_regular_file(path, 4096).map_err(|source| KeyError::Io {
                path: path.display().to_string(),
                source,
            })?,
        );
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        decode_hex_key(text.trim(), &mut key).ok_or_else(|| KeyError::Malformed {
            path: path.display().to_string(),
        })?;
        Ok(SeedCipher::new(&key))
    }

    /// Writes a new random key to `path` with mode 0600; fails if it exists.
    pub fn create(path: &Path) -> Result<(), KeyError> {
        Self::create_owned(path, None)
    }

    /// Writes a new random key to `path` with mode 0600, owned by `owner`
    /// (uid, gid) when given; fails if `path` exists. The owner is set on
    /// the open file, not through the path. The owner of the key's folder
    /// could otherwise swap the new file for a symbolic link before the
    /// `chown`, and root would give the link's target to that user.
    pub fn create_owned(path: &Path, owner: Option<(u32, u32)>) -> Result<(), KeyError> {
        let io_error = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::getrandom(key.as_mut()).map_err(|_| KeyError::Random)?;
        let mut text = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 1));
        for byte in key.iter() {
            text.push_str(&format!("{byte:02x}"));
        }
        text.push('\n');
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error)?;
        let owned = match owner {
            // Not a permission error of the folder, so that callers do not
            // take it for one.
            Some((uid, gid)) => std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|source| {
                io_error(std::io::Error::other(format!(
                    "cannot give it to uid {uid} and gid {gid}: {source}"
                )))
            }),
            None => Ok(()),
        };
        let written = owned
            .and_then(|()| file.write_all(text.as_bytes()).map_err(io_error))
            .and_then(|()| file.sync_all().map_err(io_error));
        if written.is_err() {
            // An empty or partial key file would pass for a key at the next try.
            let _ = fs::remove_file(path);
        }
        written
    }

    /// Encrypts `plain` for token `token_id`.
    pub fn seal(&self, token_id: i64, field: Field, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|_| KeyError::Random)?;
        let aad = associated_data(token_id, field);
        let payload = Payload { msg: plain, aad: &aad };
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .map_err(|_| KeyError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypts a value sealed for `token_id`; `None` if it was altered,
    /// moved to another row, or sealed under another key.
    pub fn open(&self, token_id: i64, field: Field, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (&version, rest) = sealed.split_first()?;
        if version != SEALED_VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let aad = associated_data(token_id, field);
        let payload = Payload { msg: body, aad: &aad };
        self.cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .ok()
            .map(Zeroizing::new)
    }
}

/// Returns where `freeauthctl rekey` writes the new key before the agent
/// re-seals the database under it: the key's path with `.new` appended.
pub fn new_key_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

fn associated_data(token_id: i64, field: Field) -> Vec<u8> {
    let mut aad = b"freeauth-v1/".to_vec();
    aad.extend_from_slice(field.label());
    aad.push(b'/');
    aad.extend_from_slice(&token_id.to_be_bytes());
    aad
}

fn decode_hex_key(text: &str, key: &mut [u8; KEY_LEN]) -> Option<()> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * KEY_LEN {
        return None;
    }
    for (slot, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        *slot = u8::try_from(high * 16 + low).ok()?;
    }
    Some(())
}

/// Fails unless `path` is a regular file owned by this process's user and
/// not accessible to group or others.
pub fn check_private_file(path: &Path) -> Result<(), KeyError> {
    check_private(path, false, nix::unistd::geteuid().as_raw())
}

/// Fails unless `path` is a regular file (or, with `directory`, a folder)
/// owned by uid `owner` and closed to group and others.
pub fn check_private(path: &Path, directory: bool, owner: u32) -> Result<(), KeyError> {
    let kind = if directory { "state folder" } else { "seed key" };
    let unsafe_because = |reason: String| KeyError::Unsafe {
        path: format!("{kind} {}", path.display()),
        reason,
    };
    let meta = fs::symlink_metadata(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let right_type = if directory {
        meta.file_type().is_dir()
    } else {
        meta.file_type().is_file()
    };
    if !right_type {
        let expected = if directory {
            "not a directory"
        } else {
            "not a regular file"
        };
        return Err(unsafe_because(expected.into()));
    }
    if meta.uid() != owner {
        return Err(unsafe_because(format!(
            "owned by uid {} but the agent runs as uid {owner}; run `chown {owner} {}`",
            meta.uid(),
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        let fix = if directory { 700 } else { 600 };
        return Err(unsafe_because(format!(
            "mode {mode:04o} lets other users read it; run `chmod {fix} {}`",
            path.display()
        )));
    }
    Ok(())
}

/// Argon2id cost for backup codes: 8 MiB and 2 passes, about 20 ms on one
/// core of a 2020s server (an estimate; the benchmark page has the figure).
/// An 8-digit code has 10^8 values, so testing all of them against one
/// stolen user's hashes takes on the order of a core-month.
fn backup_hasher() -> Option<Argon2<'static>> {
    let params = Params::new(8 * 1024, 2, 1, Some(32)).ok()?;
    Some(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a normalised backup code with the user's salt.
pub fn hash_backup_code(code: &str, salt: &[u8]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    backup_hasher()?
        .hash_password_into(code.as_bytes(), salt, &mut out)
        .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cipher() -> SeedCipher {
        SeedCipher::new(&[7u8; KEY_LEN])
    }

    #[test]
    fn opens_what_it_sealed() {
        let sealed = cipher().seal(5, Field::Seed, b"seed bytes").unwrap();
        assert_eq!(
            cipher().open(5, Field::Seed, &sealed).unwrap().as_slice(),
            b"seed bytes"
        );
    }

    #[test]
    fn refuses_value_moved_to_other_row_or_field() {
        let sealed = cipher().seal(5, Field::Seed, b"seed bytes").unwrap();
        assert!(cipher().open(6, Field::Seed, &sealed).is_none());
        assert!(cipher().open(5, Field::Pin, &sealed).is_none());
    }

    #[test]
    fn refuses_other_key_and_tampering() {
        let mut sealed = cipher().seal(5, Field::Seed, b"seed bytes").unwrap();
        assert!(SeedCipher::new(&[8u8; KEY_LEN]).open(5, Field::Seed, &sealed).is_none());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(cipher().open(5, Field::Seed, &sealed).is_none());
        assert!(cipher().open(5, Field::Seed, &[]).is_none());
        assert!(cipher().open(5, Field::Seed, &[1, 2, 3]).is_none());
    }

    #[test]
    fn creates_private_key_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.key");
        SeedCipher::create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(SeedCipher::load(&path).is_ok());
        assert!(SeedCipher::create(&path).is_err());
    }

    #[test]
    fn refuses_key_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.key");
        SeedCipher::create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SeedCipher::load(&path).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn refuses_malformed_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.key");
        fs::write(&path, "not hex\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(SeedCipher::load(&path), Err(KeyError::Malformed { .. })));
    }

    #[test]
    fn replaced_digest_key_kept_until_expiry() {
        let old = cipher();
        let mut new = SeedCipher::new(&[8u8; KEY_LEN]);
        assert_ne!(new.digest(b"ghost"), old.digest(b"ghost"), "the digest key changes");
        new.inherit_digest_keys(&old, Some(200), 100);
        assert_eq!(new.previous_digests(b"ghost", 100), [old.digest(b"ghost")]);
        assert!(new.previous_digests(b"ghost", 200).is_empty(), "expired");

        let sealed = new.seal_previous_digest_keys().unwrap().unwrap();
        let mut loaded = SeedCipher::new(&[8u8; KEY_LEN]);
        assert!(loaded.adopt_previous_digest_keys(&sealed));
        assert_eq!(loaded.previous_digests(b"ghost", 150), [old.digest(b"ghost")]);
        let mut other = SeedCipher::new(&[6u8; KEY_LEN]);
        assert!(!other.adopt_previous_digest_keys(&sealed), "another key cannot open it");

        // A second rekey keeps both earlier keys while they last.
        let mut third = SeedCipher::new(&[5u8; KEY_LEN]);
        third.inherit_digest_keys(&loaded, Some(300), 150);
        assert_eq!(
            third.previous_digests(b"ghost", 150),
            [loaded.digest(b"ghost"), old.digest(b"ghost")]
        );
        let mut fourth = SeedCipher::new(&[4u8; KEY_LEN]);
        fourth.inherit_digest_keys(&third, None, 250);
        assert_eq!(fourth.previous_digests(b"ghost", 250), [loaded.digest(b"ghost")]);
        assert!(SeedCipher::new(&[3u8; KEY_LEN])
            .seal_previous_digest_keys()
            .unwrap()
            .is_none());
    }

    #[test]
    fn key_check_fits_only_its_key() {
        let check = cipher().seal_key_check().unwrap();
        assert!(cipher().fits(&check));
        assert!(!SeedCipher::new(&[8u8; KEY_LEN]).fits(&check));
        let other_field = cipher().seal(0, Field::Seed, KEY_CHECK_MARKER).unwrap();
        assert!(!cipher().fits(&other_field), "a seed is not a key check");
    }

    #[test]
    fn new_key_path_appends_suffix() {
        assert_eq!(
            new_key_path(Path::new("/etc/freeauth/seed.key")),
            Path::new("/etc/freeauth/seed.key.new")
        );
        assert_eq!(new_key_path(Path::new("seed.key")), Path::new("seed.key.new"));
    }

    #[test]
    fn backup_hash_depends_on_salt() {
        let one = hash_backup_code("12345678", b"salt-number-one!").unwrap();
        let two = hash_backup_code("12345678", b"salt-number-two!").unwrap();
        assert_ne!(one, two);
        assert_eq!(one, hash_backup_code("12345678", b"salt-number-one!").unwrap());
    }
}
