//! The file steps of `freeauthctl rekey`, around the agent's re-sealing.
//!
//! A rekey writes a new key to the seed key's `.new` file, has the agent
//! seal every seed and PIN under it ([`crate::engine::Engine::rekey`]),
//! and then renames the `.new` file over the old key. At any point, the
//! file that opens the database's key check is the one in use, so
//! [`settle`] can finish or undo a rekey that stopped half way.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};

use crate::config::Config;
use crate::keys::{new_key_path, KeyError, SeedCipher};
use crate::store::read_key_check;

/// Outcome of [`settle`] for a `.new` key file.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// There was no `.new` file.
    Nothing,
    /// The database was still sealed under the old key, so the unused new
    /// key was removed.
    RemovedUnused,
    /// The database was sealed under the new key, which now replaces the
    /// old one.
    MovedInPlace,
}

/// Finishes or undoes a rekey whose `.new` key file is still there,
/// depending on which key fits the database.
pub fn settle(config: &Config) -> Result<Settled, String> {
    let key = &config.paths.seed_key;
    let new = new_key_path(key);
    if new.symlink_metadata().is_err() {
        return Ok(Settled::Nothing);
    }
    let check = read_key_check(&config.paths.state_dir)
        .map_err(|err| format!("cannot read the key check of the database: {err}"))?
        .ok_or_else(|| {
            format!(
                "the database has no key check yet; start the agent once, then remove {} or run the rekey again",
                new.display()
            )
        })?;
    let owner = key_owner(config)?;
    let fits = |path: &Path| -> Result<bool, String> {
        match SeedCipher::load_owned_by(path, owner) {
            Ok(cipher) => Ok(cipher.fits(&check)),
            Err(err) if path.exists() => Err(err.to_string()),
            Err(_) => Ok(false),
        }
    };
    let folder = key_folder(key);
    // The current key goes first. When it fits, the `.new` file is unused
    // whatever it contains, so an empty or damaged one, left by a run that
    // stopped while writing it, does not block the next rekey.
    let key_fits = fits(key);
    if key_fits == Ok(true) {
        std::fs::remove_file(&new).map_err(|err| {
            format!(
                "cannot remove {}, left unused by an earlier rekey: {err}; remove it and run the rekey again",
                new.display()
            )
        })?;
        sync_folder(folder)?;
        return Ok(Settled::RemovedUnused);
    }
    if fits(&new)? {
        std::fs::rename(&new, key)
            .map_err(|err| format!("cannot rename {} to {}: {err}", new.display(), key.display()))?;
        sync_folder(folder)?;
        return Ok(Settled::MovedInPlace);
    }
    key_fits?;
    Err(format!(
        "neither {} nor {} fits the database; restore the key that fits from a backup",
        key.display(),
        new.display()
    ))
}

/// Moves the `.new` key file over the seed key after the agent reported a
/// finished rekey. Unlike [`settle`], it never removes the `.new` file,
/// because the agent has just sealed its database under the key it read
/// there. When that key does not fit the database that `config` names,
/// the two programs use different files, and both keys stay.
pub fn finish(config: &Config) -> Result<(), String> {
    let key = &config.paths.seed_key;
    let new = new_key_path(key);
    let state_dir = &config.paths.state_dir;
    let check = read_key_check(state_dir)
        .map_err(|err| format!("cannot read the key check of the database: {err}"))?
        .unwrap_or_default();
    let new_fits = SeedCipher::load_owned_by(&new, key_owner(config)?)
        .map_err(|err| err.to_string())?
        .fits(&check);
    if !new_fits {
        return Err(format!(
            "{} does not fit the database in {}, so the agent sealed another database or used another key file; \
             both key files are left as they are. Check that freeauthctl and the agent use the same configuration file",
            new.display(),
            state_dir.display()
        ));
    }
    std::fs::rename(&new, key).map_err(|err| format!("cannot rename {} to {}: {err}", new.display(), key.display()))?;
    sync_folder(key_folder(key))
}

/// Fails unless an agent holds the flock of the state folder of `config`.
/// The caller checks first that an agent replies on the admin socket, which
/// would otherwise seal one database while the command checks another.
pub fn check_agent_uses(config: &Config) -> Result<(), String> {
    let state_dir = &config.paths.state_dir;
    if crate::store::in_use_by_agent(state_dir) {
        return Ok(());
    }
    Err(format!(
        "the agent on {} does not use the state folder {} of this configuration; \
         run freeauthctl with the agent's configuration file (-c) and try again",
        config.paths.admin_socket.display(),
        state_dir.display()
    ))
}

/// Takes an exclusive `flock` on the seed key file for one run of
/// `freeauthctl rekey`, or fails at once when another run or a backup has
/// it. Without it, a second run could take the first run's `.new` file for
/// a leftover and remove it while the agent seals the database under it.
/// Returns `None` when the key file is missing, because then no rekey can
/// start and [`settle`] only moves a fitting `.new` file in place.
pub fn lock_key(config: &Config) -> Result<Option<Flock<File>>, String> {
    let key = &config.paths.seed_key;
    match lock_key_file(key, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => Ok(locked),
        Err(KeyLockError::Busy) => Err(format!(
            "another `freeauthctl rekey` is running on {}, or a `freeauthctl backup`; wait for it to finish",
            key.display()
        )),
        Err(KeyLockError::Denied(err)) => Err(format!(
            "cannot open seed key {}: {err}; run `freeauthctl rekey` as root or as the agent's user",
            key.display()
        )),
        Err(KeyLockError::Other(message)) => Err(message),
    }
}

/// Takes a shared `flock` on the seed key file for one `freeauthctl
/// backup`, from before the copy until it has named the key that opens the
/// copy, or fails at once while a rekey runs. A rekey finished in between
/// would replace that key, and no key on disk would open the copy.
/// Returns `None` when the key file is missing or cannot be locked.
pub fn lock_key_for_backup(config: &Config) -> Result<Option<Flock<File>>, String> {
    let key = &config.paths.seed_key;
    match lock_key_file(key, FlockArg::LockSharedNonblock) {
        Ok(locked) => Ok(locked),
        Err(KeyLockError::Busy) => Err(format!(
            "a `freeauthctl rekey` is running on {}, and it replaces the key that opens a copy made now; \
             wait for it to finish and run the backup again",
            key.display()
        )),
        // A key that cannot be locked does not stop the copy.
        Err(KeyLockError::Denied(_) | KeyLockError::Other(_)) => Ok(None),
    }
}

/// Failure of [`lock_key_file`].
enum KeyLockError {
    /// Another process holds a conflicting lock.
    Busy,
    /// This user may not open the key file.
    Denied(std::io::Error),
    Other(String),
}

/// Locks the seed key file `key` with `arg`, a non-blocking `flock`
/// operation, and returns `None` when the file is missing.
fn lock_key_file(key: &Path, arg: FlockArg) -> Result<Option<Flock<File>>, KeyLockError> {
    // A run that holds the lock renames the `.new` file over the key and
    // so leaves its lock on the old file, which the path no longer names.
    for _ in 0..3 {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(key)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => return Err(KeyLockError::Denied(err)),
            Err(err) => {
                return Err(KeyLockError::Other(format!(
                    "cannot open seed key {}: {err}",
                    key.display()
                )))
            }
        };
        let locked = match Flock::lock(file, arg) {
            Ok(locked) => locked,
            Err((_, Errno::EWOULDBLOCK)) => return Err(KeyLockError::Busy),
            Err((_, errno)) => {
                return Err(KeyLockError::Other(format!(
                    "cannot lock seed key {}: {errno}",
                    key.display()
                )))
            }
        };
        let opened = locked
            .metadata()
            .map_err(|err| KeyLockError::Other(format!("cannot read seed key {}: {err}", key.display())))?;
        match std::fs::symlink_metadata(key) {
            Ok(current) if (current.dev(), current.ino()) == (opened.dev(), opened.ino()) => return Ok(Some(locked)),
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(KeyLockError::Other(format!(
                    "cannot read seed key {}: {err}",
                    key.display()
                )))
            }
        }
    }
    Err(KeyLockError::Other(format!(
        "seed key {} was replaced three times while this command tried to lock it; another `freeauthctl rekey` may be running, so wait for it and try again",
        key.display()
    )))
}

/// Writes a new random key to the seed key's `.new` file, with the owner
/// of the current key, and returns its path.
pub fn write_new_key(config: &Config) -> Result<std::path::PathBuf, String> {
    let key = &config.paths.seed_key;
    let meta = std::fs::metadata(key).map_err(|err| format!("cannot read seed key {}: {err}", key.display()))?;
    let new = new_key_path(key);
    let folder = key_folder(key);
    SeedCipher::create_owned(&new, Some((meta.uid(), meta.gid()))).map_err(|err| match err {
        KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => format!(
            "cannot create {}: {source}; this user may not write the key's folder {}, so run freeauthctl rekey as root",
            new.display(),
            folder.display()
        ),
        other => other.to_string(),
    })?;
    sync_folder(folder)?;
    Ok(new)
}

/// Returns the uid that the key files must belong to: the owner of the
/// state folder, which is the agent's user.
fn key_owner(config: &Config) -> Result<u32, String> {
    let state_dir = &config.paths.state_dir;
    std::fs::metadata(state_dir)
        .map(|meta| meta.uid())
        .map_err(|err| format!("cannot read state folder {}: {err}", state_dir.display()))
}

/// Returns the folder of the key file, `.` for a bare file name.
fn key_folder(key: &Path) -> &Path {
    key.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn sync_folder(folder: &Path) -> Result<(), String> {
    File::open(folder)
        .and_then(|handle| handle.sync_all())
        .map_err(|err| format!("cannot sync folder {}: {err}", folder.display()))
}
