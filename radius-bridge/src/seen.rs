//! Clients that have sent a valid Message-Authenticator, for the `auto`
//! policy: once a client has sent one, requests without one are dropped,
//! also after a restart. Kept one name per line in the state folder.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Name of the list inside the bridge's state folder.
const FILE_NAME: &str = "message-authenticator-clients";

/// The remembered client names and their file.
pub struct SeenClients {
    path: PathBuf,
    /// Each name with the number of the change that added it (0 for the
    /// names read at start-up).
    names: BTreeMap<String, u64>,
    /// Number of the last change to `names`.
    changes: u64,
    /// A write failed, so the file may lack names that `names` has.
    unsaved: bool,
    /// Number of the change the file contains, shared with pending writes.
    /// Held while a write runs, so that writes run one at a time.
    written: Arc<Mutex<u64>>,
    /// The same number, readable without waiting for a write in progress.
    durable: Arc<AtomicU64>,
}

/// A rewrite of the file, to run off the bridge's thread because it syncs
/// to disk. Writes that run late never replace a newer list.
#[derive(Debug)]
pub struct FileWrite {
    path: PathBuf,
    names: Vec<String>,
    change: u64,
    written: Arc<Mutex<u64>>,
    durable: Arc<AtomicU64>,
}

impl FileWrite {
    /// Writes the list to a temporary file, syncs it and renames it over
    /// the old one, unless the file already has change `change` or a newer
    /// one. A write in progress on another thread is waited for first.
    pub fn run(self) -> Result<(), String> {
        let mut written = match self.written.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *written >= self.change {
            return Ok(());
        }
        let temporary = self.path.with_extension("new");
        let write = || -> std::io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)?;
            for name in &self.names {
                writeln!(file, "{name}")?;
            }
            file.sync_all()?;
            fs::rename(&temporary, &self.path)?;
            // The rename is durable once the folder is synced.
            match self.path.parent() {
                Some(folder) => fs::File::open(folder)?.sync_all(),
                None => Ok(()),
            }
        };
        write().map_err(|err| {
            format!(
                "cannot write {} and rename it to {}: {err}",
                temporary.display(),
                self.path.display()
            )
        })?;
        *written = self.change;
        self.durable.store(self.change, Ordering::Release);
        Ok(())
    }
}

/// Creates `state_dir` (mode 0700) when it is missing and takes an
/// exclusive `flock` on it, held until the returned file is dropped. Each
/// bridge rewrites the whole list from its own memory. So a second bridge
/// on the same folder would drop names the first one added, and a client
/// under `auto` could again send requests without a Message-Authenticator.
pub fn lock_state_dir(state_dir: &Path) -> Result<Flock<fs::File>, String> {
    create_state_dir(state_dir)?;
    let folder = fs::File::open(state_dir)
        .map_err(|err| format!("cannot open state folder {} to lock it: {err}", state_dir.display()))?;
    match Flock::lock(folder, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, Errno::EWOULDBLOCK)) => Err(format!(
            "state folder {}: a running bridge is using it (it holds the lock on this folder); \
             give each bridge its own state_dir, or stop the other one",
            state_dir.display()
        )),
        Err((_, errno)) => Err(format!("cannot lock state folder {}: {errno}", state_dir.display())),
    }
}

/// Creates `state_dir` (mode 0700) when it is missing, and checks that no
/// user but this process's user and root can write it. Another user who
/// could write the folder could delete a client from the list, so that the
/// client may again send requests without a Message-Authenticator after a
/// restart, or put a symbolic link where the bridge writes its temporary
/// file.
fn create_state_dir(state_dir: &Path) -> Result<(), String> {
    if !state_dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|err| format!("cannot create state folder {}: {err}", state_dir.display()))?;
    }
    let metadata =
        fs::metadata(state_dir).map_err(|err| format!("cannot check state folder {}: {err}", state_dir.display()))?;
    if !metadata.is_dir() {
        return Err(format!("state folder {} is not a directory", state_dir.display()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if metadata.uid() != euid {
        return Err(format!(
            "state folder {} is owned by uid {} but the bridge runs as uid {euid}; run `chown {euid} {}`",
            state_dir.display(),
            metadata.uid(),
            state_dir.display()
        ));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "state folder {} has mode {mode:04o}, writable by other users; run `chmod 700 {}`",
            state_dir.display(),
            state_dir.display()
        ));
    }
    Ok(())
}

impl SeenClients {
    /// Loads the list from `state_dir`, creating the folder (mode 0700).
    pub fn load(state_dir: &Path) -> Result<SeenClients, String> {
        create_state_dir(state_dir)?;
        let names = SeenClients::read(state_dir)?;
        Ok(SeenClients {
            path: state_dir.join(FILE_NAME),
            names: names.into_iter().map(|name| (name, 0)).collect(),
            changes: 0,
            unsaved: false,
            written: Arc::new(Mutex::new(0)),
            durable: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Reads the remembered names in `state_dir` without creating anything;
    /// a missing folder or file means none.
    pub fn read(state_dir: &Path) -> Result<BTreeSet<String>, String> {
        let path = state_dir.join(FILE_NAME);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(err) => Err(format!("cannot read {}: {err}", path.display())),
        }
    }

    pub fn contains(&self, client: &str) -> bool {
        self.names.contains_key(client)
    }

    /// Remembers `client`. Returns a write of the file when the name is
    /// new, when an earlier write failed, or when the write that adds the
    /// name has not finished yet. The caller runs it, and waits for it,
    /// where a disk sync may block. In the last case the write only waits
    /// for the earlier one, or does its work if that one failed.
    pub fn remember(&mut self, client: &str) -> Option<FileWrite> {
        let change = match self.names.get(client) {
            Some(&added) if !self.unsaved => {
                if self.durable.load(Ordering::Acquire) >= added {
                    return None;
                }
                added
            }
            _ => {
                self.unsaved = false;
                self.changes += 1;
                self.names.insert(client.to_owned(), self.changes);
                self.changes
            }
        };
        Some(FileWrite {
            path: self.path.clone(),
            names: self.names.keys().cloned().collect(),
            change,
            written: Arc::clone(&self.written),
            durable: Arc::clone(&self.durable),
        })
    }

    /// Records that a write of the file failed, so that the next request
    /// of an `auto` client writes it again.
    pub fn mark_unsaved(&mut self) {
        self.unsaved = true;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn second_lock_on_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = lock_state_dir(&state).unwrap();
        let Err(err) = lock_state_dir(&state) else {
            panic!("a second bridge locked the same folder");
        };
        assert!(err.contains("a running bridge is using it"), "{err}");
        drop(first);
        assert!(lock_state_dir(&state).is_ok(), "the lock ends with the first bridge");
    }

    #[test]
    fn rejects_state_folder_others_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        for mode in [0o777, 0o770, 0o702] {
            fs::set_permissions(&state, fs::Permissions::from_mode(mode)).unwrap();
            let Err(err) = lock_state_dir(&state) else {
                panic!("mode {mode:o}: the bridge used a folder other users can write");
            };
            assert!(err.contains("writable by other users"), "{err}");
            assert!(SeenClients::load(&state).is_err(), "mode {mode:o}");
        }
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(lock_state_dir(&state).is_ok(), "read access for others is fine");
    }

    #[test]
    fn rejects_state_folder_of_other_user() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to give the folder to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
        let Err(err) = lock_state_dir(&state) else {
            panic!("the bridge used a folder of another user");
        };
        assert!(err.contains("owned by uid 65534"), "{err}");
    }

    #[test]
    fn remembers_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = SeenClients::load(&dir.path().join("state")).unwrap();
        assert!(!seen.contains("vpn"));
        seen.remember("vpn").unwrap().run().unwrap();
        assert!(seen.remember("vpn").is_none(), "a known name is not written again");
        let again = SeenClients::load(&dir.path().join("state")).unwrap();
        assert!(again.contains("vpn"));
    }

    #[test]
    fn seen_late_write_keeps_newer_list() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut seen = SeenClients::load(&state).unwrap();
        let first = seen.remember("vpn").unwrap();
        let second = seen.remember("web").unwrap();
        second.run().unwrap();
        first.run().unwrap();
        let again = SeenClients::load(&state).unwrap();
        assert!(again.contains("vpn"));
        assert!(again.contains("web"));
    }

    #[test]
    fn seen_second_request_waits_for_write() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut seen = SeenClients::load(&state).unwrap();
        let first = seen.remember("vpn").unwrap();
        // A second request before the first write ends gets a write too,
        // so that its reply also waits until the name is on disk.
        let second = seen.remember("vpn");
        assert!(second.is_some(), "the name is not on disk yet");
        let second = second.unwrap();
        first.run().unwrap();
        second.run().unwrap();
        assert!(seen.remember("vpn").is_none(), "the name is on disk now");
        assert!(SeenClients::load(&state).unwrap().contains("vpn"));
    }

    #[test]
    fn seen_waiting_write_redoes_failed_one() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut seen = SeenClients::load(&state).unwrap();
        let first = seen.remember("vpn").unwrap();
        let second = seen.remember("vpn").unwrap();
        let blocker = state.join(FILE_NAME).with_extension("new");
        fs::create_dir(&blocker).unwrap();
        assert!(first.run().is_err());
        fs::remove_dir(&blocker).unwrap();
        second.run().unwrap();
        assert!(SeenClients::load(&state).unwrap().contains("vpn"));
        assert!(seen.remember("vpn").is_none());
    }

    #[test]
    fn seen_failed_write_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut seen = SeenClients::load(&state).unwrap();
        // A folder where the temporary file should go makes the write fail.
        fs::create_dir(state.join(FILE_NAME).with_extension("new")).unwrap();
        assert!(seen.remember("vpn").unwrap().run().is_err());
        seen.mark_unsaved();
        fs::remove_dir(state.join(FILE_NAME).with_extension("new")).unwrap();
        seen.remember("vpn").unwrap().run().unwrap();
        let again = SeenClients::load(&state).unwrap();
        assert!(again.contains("vpn"));
    }
}
