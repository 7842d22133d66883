//! Clients that have sent a valid Message-Authenticator, for the `auto`
//! policy: once a client has sent one, requests without one are dropped,
//! also after a restart. Kept one name per line in the state folder.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Name of the list inside the bridge's state folder.
const FILE_NAME: &str = "message-authenticator-clients";

/// The remembered client names and their file.
pub struct SeenClients {
    path: PathBuf,
    names: BTreeSet<String>,
    /// Number of the last change to `names`.
    changes: u64,
    /// A write failed, so the file may lack names that `names` has.
    unsaved: bool,
    /// Number of the change the file contains, shared with pending writes.
    written: Arc<Mutex<u64>>,
}

/// A rewrite of the file, to run off the bridge's thread because it syncs
/// to disk. Writes that run late never replace a newer list.
#[derive(Debug)]
pub struct FileWrite {
    path: PathBuf,
    names: Vec<String>,
    change: u64,
    written: Arc<Mutex<u64>>,
}

impl FileWrite {
    /// Writes the list to a temporary file, syncs it and renames it over
    /// the old one, unless a newer list was written meanwhile.
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
        Ok(())
    }
}

impl SeenClients {
    /// Loads the list from `state_dir`, creating the folder (mode 0700).
    pub fn load(state_dir: &Path) -> Result<SeenClients, String> {
        if !state_dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(|err| format!("cannot create state folder {}: {err}", state_dir.display()))?;
        }
        let names = SeenClients::read(state_dir)?;
        Ok(SeenClients {
            path: state_dir.join(FILE_NAME),
            names,
            changes: 0,
            unsaved: false,
            written: Arc::new(Mutex::new(0)),
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
        self.names.contains(client)
    }

    /// Remembers `client`. Returns the rewrite of the file when the name is
    /// new or an earlier write failed, for the caller to run where a disk
    /// sync may block.
    pub fn remember(&mut self, client: &str) -> Option<FileWrite> {
        if !self.names.insert(client.to_owned()) && !self.unsaved {
            return None;
        }
        self.unsaved = false;
        self.changes += 1;
        Some(FileWrite {
            path: self.path.clone(),
            names: self.names.iter().cloned().collect(),
            change: self.changes,
            written: Arc::clone(&self.written),
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
    #![allow(clippy::unwrap_used)]
    use super::*;

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
