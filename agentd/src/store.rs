//! Durable token state in SQLite, written only by the agent's engine thread.
//!
//! The database runs in WAL mode with `synchronous = FULL`, so a committed
//! transaction survives a crash or power loss. The engine groups concurrent
//! requests into one transaction, which is what lets many verifications share
//! one fsync. Each request runs inside its own savepoint, so a failed admin
//! change rolls back alone.
//!
//! Everything the engine needs is a method of [`Db`]. A shared PostgreSQL
//! store would implement the same methods, with the one-use rule enforced by
//! the conditional update in [`Db::advance_token`].

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use freeauth_otp::{Algorithm, Kind, State};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// Name of the database file inside the state folder.
pub const DB_FILE: &str = "freeauth.db";

/// Version of the schema below, kept in the `meta` table.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    failures     INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER,
    backup_salt  BLOB
);
CREATE TABLE IF NOT EXISTS tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    digits      INTEGER NOT NULL,
    period      INTEGER NOT NULL,
    counter     INTEGER NOT NULL,
    last_step   INTEGER,
    drift       INTEGER NOT NULL DEFAULT 0,
    enabled     INTEGER NOT NULL DEFAULT 1,
    label       TEXT,
    created     INTEGER NOT NULL,
    last_used   INTEGER,
    sealed_seed BLOB NOT NULL,
    sealed_pin  BLOB
);
CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens(user_id);
CREATE TABLE IF NOT EXISTS backup_codes (
    id      INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    hash    BLOB NOT NULL,
    used_at INTEGER
);
CREATE INDEX IF NOT EXISTS backup_codes_by_user ON backup_codes(user_id);
";

/// A database or state-folder failure.
#[derive(Debug)]
pub enum StoreError {
    Sqlite(rusqlite::Error),
    Folder { path: String, reason: String },
    Corrupt { what: String },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sqlite(err) => write!(f, "database error: {err}"),
            StoreError::Folder { path, reason } => write!(f, "state folder {path}: {reason}"),
            StoreError::Corrupt { what } => write!(f, "database holds an invalid value: {what}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        StoreError::Sqlite(err)
    }
}

/// A user row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub name: String,
    pub failures: u32,
    pub locked_until: Option<u64>,
    pub backup_salt: Option<Vec<u8>>,
}

/// A token row. The seed stays sealed here; the engine opens it when needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub id: i64,
    pub kind: Kind,
    pub algorithm: Algorithm,
    pub digits: u8,
    pub period: u32,
    pub state: State,
    pub enabled: bool,
    pub label: Option<String>,
    pub created: u64,
    pub last_used: Option<u64>,
    pub sealed_seed: Vec<u8>,
    pub sealed_pin: Option<Vec<u8>>,
}

/// The fields of a token to insert, seed not yet sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSettings {
    pub kind: Kind,
    pub algorithm: Algorithm,
    pub digits: u8,
    pub period: u32,
    pub state: State,
    pub label: Option<String>,
}

/// The open database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir`, after checking
    /// that the folder belongs to this user and is closed to everyone else.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        prepare_state_dir(state_dir)?;
        let path = state_dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // 4 MiB of page cache keeps resident memory small at a million tokens.
        conn.pragma_update(None, "cache_size", -4096)?;
        // A separate thread copies the WAL into the database every 100 ms
        // (see `start_checkpointer`). The checkpoint SQLite still runs inside
        // a commit every 1000 pages then finds little left to copy, and that
        // commit lets the WAL start over, which bounds its size.
        conn.pragma_update(None, "wal_autocheckpoint", 1000)?;
        // When the WAL starts over, it shrinks to 64 MiB.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
        let store = Store { conn };
        store.check_schema_version()?;
        Ok(store)
    }

    fn check_schema_version(&self) -> Result<(), StoreError> {
        let db = Db(&self.conn);
        match db.meta("schema_version")? {
            None => {
                db.set_meta("schema_version", SCHEMA_VERSION.to_string().as_bytes())?;
                Ok(())
            }
            Some(value) if value == SCHEMA_VERSION.to_string().as_bytes() => Ok(()),
            Some(_) => Err(StoreError::Corrupt {
                what: "schema_version is not 1; this database was written by another FreeAuth version".into(),
            }),
        }
    }

    /// Starts the transaction a batch of requests runs in.
    pub fn begin(&mut self) -> Result<Transaction<'_>, StoreError> {
        Ok(self.conn.transaction()?)
    }

    /// Read access outside a batch (start-up checks).
    pub fn db(&self) -> Db<'_> {
        Db(&self.conn)
    }
}

/// Copies the WAL back into the database from a second connection every
/// `interval`, while the engine keeps writing. Runs until the process ends.
pub fn start_checkpointer(database: std::path::PathBuf, interval: std::time::Duration) -> Result<(), StoreError> {
    let conn = Connection::open(&database)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let spawned = std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %err, "WAL checkpoint failed; will retry");
            }
        });
    spawned.map(drop).map_err(|err| StoreError::Folder {
        path: database.display().to_string(),
        reason: format!("cannot start the checkpoint thread: {err}"),
    })
}

fn prepare_state_dir(dir: &Path) -> Result<(), StoreError> {
    let folder_error = |reason: String| StoreError::Folder {
        path: dir.display().to_string(),
        reason,
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| folder_error(format!("cannot create it: {err}")))?;
    }
    let meta = fs::metadata(dir).map_err(|err| folder_error(err.to_string()))?;
    if !meta.is_dir() {
        return Err(folder_error("not a directory".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(folder_error(format!(
            "owned by uid {} but the agent runs as uid {euid}; run `chown {euid} {}`",
            meta.uid(),
            dir.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(folder_error(format!(
            "mode {mode:04o} lets other users in; run `chmod 700 {}`",
            dir.display()
        )));
    }
    Ok(())
}

/// Statements on a connection, transaction or savepoint.
#[derive(Clone, Copy)]
pub struct Db<'c>(pub &'c Connection);

impl Db<'_> {
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut statement = self.0.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
        Ok(statement.query_row([key], |row| row.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        self.0.execute("DELETE FROM meta WHERE key = ?1", [key])?;
        Ok(())
    }

    pub fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let mut statement = self
            .0
            .prepare_cached("SELECT id, name, failures, locked_until, backup_salt FROM users WHERE name = ?1")?;
        let row = statement
            .query_row([name], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                    row.get::<_, Option<Vec<u8>>>(4)?,
                ))
            })
            .optional()?;
        let Some((id, name, failures, locked_until, backup_salt)) = row else {
            return Ok(None);
        };
        Ok(Some(Account {
            id,
            name,
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            locked_until: locked_until.map(to_u64).transpose()?,
            backup_salt,
        }))
    }

    /// Returns the account's id, creating the account if needed.
    pub fn ensure_account(&self, name: &str) -> Result<i64, StoreError> {
        self.0.execute(
            "INSERT INTO users (name) VALUES (?1) ON CONFLICT(name) DO NOTHING",
            [name],
        )?;
        let mut statement = self.0.prepare_cached("SELECT id FROM users WHERE name = ?1")?;
        Ok(statement.query_row([name], |row| row.get(0))?)
    }

    pub fn tokens(&self, user_id: i64) -> Result<Vec<TokenRow>, StoreError> {
        let mut statement = self.0.prepare_cached(
            "SELECT id, kind, algorithm, digits, period, counter, last_step, drift, enabled, label,
                    created, last_used, sealed_seed, sealed_pin
             FROM tokens WHERE user_id = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([user_id], |row| {
            Ok(RawToken {
                id: row.get(0)?,
                kind: row.get(1)?,
                algorithm: row.get(2)?,
                digits: row.get(3)?,
                period: row.get(4)?,
                counter: row.get(5)?,
                last_step: row.get(6)?,
                drift: row.get(7)?,
                enabled: row.get(8)?,
                label: row.get(9)?,
                created: row.get(10)?,
                last_used: row.get(11)?,
                sealed_seed: row.get(12)?,
                sealed_pin: row.get(13)?,
            })
        })?;
        let mut tokens = Vec::new();
        for raw in rows {
            tokens.push(raw?.check()?);
        }
        Ok(tokens)
    }

    /// Inserts a token with placeholder seed and returns its id; the caller
    /// seals the seed for that id and stores it with [`Db::set_sealed`].
    pub fn insert_token(&self, user_id: i64, token: &TokenSettings, now: u64) -> Result<i64, StoreError> {
        self.0.execute(
            "INSERT INTO tokens (user_id, kind, algorithm, digits, period, counter, last_step, drift,
                                 label, created, sealed_seed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, x'')",
            params![
                user_id,
                token.kind.to_string(),
                algorithm_name(token.algorithm),
                token.digits,
                token.period,
                to_i64(token.state.counter)?,
                token.state.last_step.map(to_i64).transpose()?,
                token.state.drift,
                token.label,
                to_i64(now)?,
            ],
        )?;
        Ok(self.0.last_insert_rowid())
    }

    pub fn set_sealed(&self, token_id: i64, seed: &[u8], pin: Option<&[u8]>) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE tokens SET sealed_seed = ?2, sealed_pin = ?3 WHERE id = ?1",
            params![token_id, seed, pin],
        )?;
        Ok(())
    }

    /// Moves a token from `old` to `new` state unless another writer moved it
    /// first, and returns whether it did. This one statement is the one-use rule.
    pub fn advance_token(&self, token_id: i64, old: &State, new: &State, now: u64) -> Result<bool, StoreError> {
        let mut statement = self.0.prepare_cached(
            "UPDATE tokens SET counter = ?2, last_step = ?3, drift = ?4, last_used = ?5
             WHERE id = ?1 AND counter = ?6 AND last_step IS ?7",
        )?;
        let changed = statement.execute(params![
            token_id,
            to_i64(new.counter)?,
            new.last_step.map(to_i64).transpose()?,
            new.drift,
            to_i64(now)?,
            to_i64(old.counter)?,
            old.last_step.map(to_i64).transpose()?,
        ])?;
        Ok(changed == 1)
    }

    pub fn set_failures(&self, user_id: i64, failures: u32, locked_until: Option<u64>) -> Result<(), StoreError> {
        let mut statement = self
            .0
            .prepare_cached("UPDATE users SET failures = ?2, locked_until = ?3 WHERE id = ?1")?;
        statement.execute(params![user_id, failures, locked_until.map(to_i64).transpose()?])?;
        Ok(())
    }

    /// Unused backup code hashes of a user, with their ids.
    pub fn backup_codes(&self, user_id: i64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let mut statement = self
            .0
            .prepare_cached("SELECT id, hash FROM backup_codes WHERE user_id = ?1 AND used_at IS NULL ORDER BY id")?;
        let rows = statement.query_map([user_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn backup_codes_left(&self, user_id: i64) -> Result<u32, StoreError> {
        let mut statement = self
            .0
            .prepare_cached("SELECT count(*) FROM backup_codes WHERE user_id = ?1 AND used_at IS NULL")?;
        let count: i64 = statement.query_row([user_id], |row| row.get(0))?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Marks a backup code used unless it already was; returns whether it was unused.
    pub fn consume_backup_code(&self, code_id: i64, user_id: i64, now: u64) -> Result<bool, StoreError> {
        let changed = self.0.execute(
            "UPDATE backup_codes SET used_at = ?3 WHERE id = ?1 AND user_id = ?2 AND used_at IS NULL",
            params![code_id, user_id, to_i64(now)?],
        )?;
        Ok(changed == 1)
    }

    /// Replaces all backup codes of a user with `hashes` made with `salt`.
    pub fn replace_backup_codes(&self, user_id: i64, salt: &[u8], hashes: &[[u8; 32]]) -> Result<(), StoreError> {
        self.0
            .execute("DELETE FROM backup_codes WHERE user_id = ?1", [user_id])?;
        self.0.execute(
            "UPDATE users SET backup_salt = ?2 WHERE id = ?1",
            params![user_id, salt],
        )?;
        let mut statement = self
            .0
            .prepare_cached("INSERT INTO backup_codes (user_id, hash) VALUES (?1, ?2)")?;
        for hash in hashes {
            statement.execute(params![user_id, &hash[..]])?;
        }
        Ok(())
    }

    pub fn set_enabled(&self, user_id: i64, token_id: Option<i64>, enabled: bool) -> Result<u64, StoreError> {
        let changed = match token_id {
            Some(token) => self.0.execute(
                "UPDATE tokens SET enabled = ?3 WHERE user_id = ?1 AND id = ?2 AND enabled != ?3",
                params![user_id, token, enabled],
            )?,
            None => self.0.execute(
                "UPDATE tokens SET enabled = ?2 WHERE user_id = ?1 AND enabled != ?2",
                params![user_id, enabled],
            )?,
        };
        Ok(changed as u64)
    }

    pub fn remove_token(&self, user_id: i64, token_id: i64) -> Result<u64, StoreError> {
        let changed = self.0.execute(
            "DELETE FROM tokens WHERE user_id = ?1 AND id = ?2",
            params![user_id, token_id],
        )?;
        Ok(changed as u64)
    }

    pub fn remove_account(&self, user_id: i64) -> Result<u64, StoreError> {
        let changed = self.0.execute("DELETE FROM users WHERE id = ?1", [user_id])?;
        Ok(changed as u64)
    }

    /// Names of all accounts, sorted.
    pub fn account_names(&self) -> Result<Vec<String>, StoreError> {
        let mut statement = self.0.prepare_cached("SELECT name FROM users ORDER BY name")?;
        let rows = statement.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Numbers of accounts and tokens.
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        let users: i64 = self.0.query_row("SELECT count(*) FROM users", [], |row| row.get(0))?;
        let tokens: i64 = self.0.query_row("SELECT count(*) FROM tokens", [], |row| row.get(0))?;
        Ok((to_u64(users)?, to_u64(tokens)?))
    }
}

struct RawToken {
    id: i64,
    kind: String,
    algorithm: String,
    digits: i64,
    period: i64,
    counter: i64,
    last_step: Option<i64>,
    drift: i64,
    enabled: bool,
    label: Option<String>,
    created: i64,
    last_used: Option<i64>,
    sealed_seed: Vec<u8>,
    sealed_pin: Option<Vec<u8>>,
}

impl RawToken {
    fn check(self) -> Result<TokenRow, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt {
            what: format!("token {}: {what}", self.id),
        };
        Ok(TokenRow {
            id: self.id,
            kind: self.kind.parse().map_err(|_| corrupt("kind"))?,
            algorithm: self.algorithm.parse().map_err(|_| corrupt("algorithm"))?,
            digits: u8::try_from(self.digits).map_err(|_| corrupt("digits"))?,
            period: u32::try_from(self.period).map_err(|_| corrupt("period"))?,
            state: State {
                counter: to_u64(self.counter)?,
                last_step: self.last_step.map(to_u64).transpose()?,
                drift: self.drift,
            },
            enabled: self.enabled,
            label: self.label,
            created: to_u64(self.created)?,
            last_used: self.last_used.map(to_u64).transpose()?,
            sealed_seed: self.sealed_seed,
            sealed_pin: self.sealed_pin,
        })
    }
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Sha1 => "sha1",
        Algorithm::Sha256 => "sha256",
        Algorithm::Sha512 => "sha512",
    }
}

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt {
        what: format!("{value} does not fit a database integer"),
    })
}

fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        what: format!("negative value {value}"),
    })
}
