//! Clients that have sent a valid Message-Authenticator, for the `auto`
//! policy: once a client has sent one, requests without one are dropped,
//! also after a restart. Kept one name per line in the state folder.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Name of the list inside the bridge's state folder.
const FILE_NAME: &str = "message-authenticator-clients";

/// The remembered client names and their file.
pub struct SeenClients {
    path: PathBuf,
    names: BTreeSet<String>,
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

    /// Remembers `client` and rewrites the file (durably) if it is new.
    pub fn remember(&mut self, client: &str) -> Result<(), String> {
        if !self.names.insert(client.to_owned()) {
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
            fs::rename(&temporary, &self.path)
        };
        write().map_err(|err| format!("cannot write {}: {err}", self.path.display()))
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
        seen.remember("vpn").unwrap();
        let again = SeenClients::load(&dir.path().join("state")).unwrap();
        assert!(again.contains("vpn"));
    }
}
