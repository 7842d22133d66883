//! Durable token state in SQLite, written only by the agent's engine thread.
//!
//! The database runs in WAL mode. A commit writes its pages to the WAL, and
//! the engine sends no reply of a batch that changed anything until a
//! [`WalSync`] has synced the WAL file to disk, so every reply reports a
//! change that survives a crash or power loss. A batch whose only write is
//! a fold of the use log (below) is not synced by itself: the next sync
//! covers it.
//! SQLite itself runs with `synchronous = NORMAL`: it syncs before and after
//! checkpoints, which keeps the database consistent, and leaves the sync of
//! each commit to [`WalSync`]. That sync can then run on its own thread while
//! the engine decides the next batch. The engine groups concurrent requests
//! into one transaction, which is what lets many verifications share one
//! fsync. Each request runs inside its own savepoint, so a failed admin
//! change rolls back alone.
//!
//! Everything the engine needs is a method of [`Db`]. A shared PostgreSQL
//! store would implement the same methods, with the one-use rule enforced by
//! a conditional update in [`Db::advance_token`].
//!
//! # The use log
//!
//! An accepted code does not rewrite its `tokens` row. It appends the token's
//! new state to `token_uses`, and [`UseLog`] keeps the newest such state of
//! each token in memory, where [`Db::tokens`] finds it. Appends fill pages in
//! order, so a commit of a hundred accepts writes two or three pages instead
//! of a hundred pages scattered over the `tokens` table.
//!
//! A sweep in token-id order folds the log back into `tokens` (see
//! [`UseLog::fold`]). Each batch copies the states of the next range of ids.
//! So one page write carries every token on that page used since the last
//! sweep. When a sweep has passed every id, every log row written before it
//! began is either folded or replaced by a newer row, and those rows are
//! deleted. Folds and deletions run in the batch's transaction, so after a
//! crash the newest state of a token is still the newest log row, or the
//! `tokens` row when the token has no log row left.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use freeauth_otp::{Algorithm, Kind, State};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rusqlite::types::ValueRef;
use rusqlite::{params, CachedStatement, Connection, OptionalExtension, Statement, Transaction};

/// Name of the database file inside the state folder.
pub const DB_FILE: &str = "freeauth.db";

/// Version of the schema below, kept in the `meta` table. Version 1 lacked
/// `token_uses` and `users.token_ids`; opening such a database adds both and
/// moves it to 2.
const SCHEMA_VERSION: i64 = 2;

/// Columns of `tokens`, after its name in a CREATE TABLE statement. The
/// AUTOINCREMENT keeps the id of a removed token from ever being given to a
/// new one, whose uses would then be mixed up with the old one's.
macro_rules! tokens_columns {
    () => {
        "(
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
)"
    };
}

const SCHEMA: &str = concat!(
    "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    failures     INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER,
    backup_salt  BLOB,
    -- Ids of the user's tokens, comma-separated: a copy of what
    -- tokens_by_user holds, so that a verification finds the tokens by id.
    token_ids    TEXT
);
CREATE TABLE IF NOT EXISTS tokens ",
    tokens_columns!(),
    ";
CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens(user_id);
CREATE TABLE IF NOT EXISTS backup_codes (
    id      INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    hash    BLOB NOT NULL,
    used_at INTEGER
);
CREATE INDEX IF NOT EXISTS backup_codes_by_user ON backup_codes(user_id);
-- Time-based tokens removed after a use, for at least a day: a keyed
-- digest of what decides their codes (never the secret) and the end of the
-- newest time step they accepted. A secret enrolled again starts after it.
-- An earlier schema kept sealed seeds of removed tokens here; nothing reads them.
DROP TABLE IF EXISTS retired_tokens;
CREATE TABLE IF NOT EXISTS retired_secrets (
    identity   BLOB PRIMARY KEY,
    used_until INTEGER NOT NULL,
    expires    INTEGER NOT NULL
) WITHOUT ROWID;
-- Failure counts of user names that have no account. Kept on disk as the
-- accounts' counts are, so that a restart does not tell the two apart by
-- their reply delays. Keyed by a keyed digest of the name: people type
-- passwords into the user field, and the name itself is never stored.
CREATE TABLE IF NOT EXISTS unknown_failures (
    name_digest  BLOB PRIMARY KEY,
    failures     INTEGER NOT NULL,
    locked_until INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS token_uses (
    seq       INTEGER PRIMARY KEY,
    token_id  INTEGER NOT NULL,
    counter   INTEGER NOT NULL,
    last_step INTEGER,
    drift     INTEGER NOT NULL,
    used_at   INTEGER NOT NULL
);
"
);

/// Rebuilds a `tokens` table made without AUTOINCREMENT, as the first
/// schema of version 1 did, keeping the rows of existing users.
const REBUILD_TOKENS: &str = concat!(
    "CREATE TABLE tokens_rebuilt ",
    tokens_columns!(),
    ";
INSERT INTO tokens_rebuilt (id, user_id, kind, algorithm, digits, period, counter, last_step,
        drift, enabled, label, created, last_used, sealed_seed, sealed_pin)
    SELECT id, user_id, kind, algorithm, digits, period, counter, last_step,
        drift, enabled, label, created, last_used, sealed_seed, sealed_pin FROM tokens
    WHERE user_id IN (SELECT id FROM users);
DROP TABLE tokens;
ALTER TABLE tokens_rebuilt RENAME TO tokens;
CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens(user_id);
"
);
/// Indexes created after the schema is brought up to date.
const INDEXES: &str = "
-- Holds every column a verification reads from `users`, so that it reads
-- one B-tree to find an account instead of two.
CREATE INDEX IF NOT EXISTS users_by_name ON users(name, id, failures, locked_until, token_ids);
";

/// The statement that brings `users.token_ids` up to date for user ?1.
const REFRESH_TOKEN_IDS: &str = "UPDATE users SET token_ids =
    (SELECT group_concat(id, ',') FROM (SELECT id FROM tokens WHERE user_id = ?1 ORDER BY id))
    WHERE id = ?1";

/// A database or state-folder failure.
#[derive(Debug)]
pub enum StoreError {
    Sqlite(rusqlite::Error),
    Folder {
        path: String,
        reason: String,
    },
    Corrupt {
        what: String,
    },
    /// SQLite ended a batch's transaction by itself after an error.
    TransactionLost,
    /// A file outside the state folder, such as a backup copy.
    File {
        path: String,
        reason: String,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sqlite(err) => write!(f, "database error: {err}"),
            StoreError::Folder { path, reason } => write!(f, "state folder {path}: {reason}"),
            StoreError::Corrupt { what } => write!(f, "database holds an invalid value: {what}"),
            StoreError::TransactionLost => write!(f, "the database ended the transaction after an error"),
            StoreError::File { path, reason } => write!(f, "{path}: {reason}"),
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
    /// Ids of the account's tokens, ascending.
    pub token_ids: Vec<i64>,
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
    uses: UseLog,
    sync: WalSync,
    /// The lock on the state folder, held until the store is dropped.
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir`, after checking
    /// that the folder belongs to this user and is closed to everyone else.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        prepare_state_dir(state_dir)?;
        let lock = lock_state_dir(state_dir)?;
        let path = state_dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Commits are synced by `WalSync` before any reply; see the module
        // documentation.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
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
        // Before SCHEMA changes anything in a database of a newer version.
        reject_newer_schema(&conn)?;
        conn.execute_batch(SCHEMA)?;
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
        check_schema_version(&conn)?;
        // Copies the WAL into the database and syncs both. After a failed
        // sync in an earlier run, the pages that run wrote may still be in
        // the page cache, and this writes them to disk again.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        // The WAL file is opened here, before this process writes to it, so
        // that a write error later is reported to this handle.
        let sync = WalSync::open(&path)?;
        sync_folder(state_dir)?;
        let store = Store {
            conn,
            uses: UseLog::default(),
            sync,
            _lock: lock,
        };
        store.uses.load(&store.conn)?;
        Ok(store)
    }

    /// Starts the transaction a batch of requests runs in, with the use log
    /// its statements see.
    pub fn begin(&mut self) -> Result<(Transaction<'_>, &UseLog), StoreError> {
        let Store { conn, uses, .. } = self;
        Ok((conn.transaction()?, &*uses))
    }

    /// Syncs the WAL file: every transaction committed so far is on disk
    /// when this returns `Ok`.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.sync.sync()
    }

    /// Copies the whole WAL into the database file, syncs it and empties the
    /// WAL (`wal_checkpoint(TRUNCATE)`). Returns `Ok(false)` when another
    /// connection kept the checkpoint from finishing within the busy timeout.
    pub fn checkpoint_truncate(&self) -> Result<bool, StoreError> {
        // The row is (busy, WAL frames, frames copied); busy is 1 when the
        // checkpoint could not finish.
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        Ok(busy == 0)
    }

    /// Returns a second [`WalSync`] for this database, for a thread of its
    /// own. It shares the open file and the failure state of the first.
    pub fn wal_sync(&self) -> Result<WalSync, StoreError> {
        self.sync.try_clone()
    }

    /// Read access outside a batch (start-up checks).
    pub fn db(&self) -> Db<'_, '_> {
        Db {
            conn: &self.conn,
            uses: &self.uses,
            statements: None,
        }
    }
}

/// Makes committed transactions durable by syncing the database's WAL file.
///
/// A sync through any open file of the WAL writes every page the engine's
/// connection wrote to it before. SQLite keeps the WAL file while a
/// connection is open, so the file stays the same one. After a failed sync
/// Linux may have dropped the unwritten pages and a later sync can succeed
/// without them, so one failure makes every later call fail until the agent
/// restarts.
pub struct WalSync {
    path: PathBuf,
    file: File,
    failed: Arc<AtomicBool>,
}

impl WalSync {
    fn open(database: &Path) -> Result<WalSync, StoreError> {
        let mut name = database.as_os_str().to_owned();
        name.push("-wal");
        let path = PathBuf::from(name);
        let file = File::open(&path).map_err(|err| StoreError::Folder {
            path: path.display().to_string(),
            reason: format!("cannot open the WAL file: {err}"),
        })?;
        Ok(WalSync {
            path,
            file,
            failed: Arc::new(AtomicBool::new(false)),
        })
    }

    fn try_clone(&self) -> Result<WalSync, StoreError> {
        let file = self
            .file
            .try_clone()
            .map_err(|err| self.error(format!("cannot duplicate its handle: {err}")))?;
        Ok(WalSync {
            path: self.path.clone(),
            file,
            failed: Arc::clone(&self.failed),
        })
    }

    /// Syncs the WAL file to disk.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(
                self.error("an earlier sync failed, so no commit can be called durable; restart the agent".into())
            );
        }
        self.file.sync_data().map_err(|err| {
            self.failed.store(true, Ordering::SeqCst);
            self.error(format!("sync failed: {err}"))
        })
    }

    fn error(&self, reason: String) -> StoreError {
        StoreError::Folder {
            path: self.path.display().to_string(),
            reason,
        }
    }
}

/// Syncs the state folder, so that the entries of the files SQLite created
/// in it (the database, its WAL) survive a power loss.
fn sync_folder(dir: &Path) -> Result<(), StoreError> {
    let failed = |err: std::io::Error| StoreError::Folder {
        path: dir.display().to_string(),
        reason: format!("cannot sync the folder: {err}"),
    };
    File::open(dir).and_then(|folder| folder.sync_all()).map_err(failed)
}

/// Reads the `schema_version` row, if the database has a `meta` table.
fn read_schema_version(conn: &Connection) -> Result<Option<Vec<u8>>, StoreError> {
    let has_meta: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |row| row.get(0),
    )?;
    if has_meta == 0 {
        return Ok(None);
    }
    let mut statement = conn.prepare("SELECT value FROM meta WHERE key = 'schema_version'")?;
    match statement.query_row([], meta_value).optional() {
        Err(rusqlite::Error::FromSqlConversionFailure(..)) => Err(StoreError::Corrupt {
            what: format!("schema_version in table meta is not text or an integer, expected {SCHEMA_VERSION}"),
        }),
        other => Ok(other?),
    }
}

/// Reads a `meta` value as bytes. The agent writes blobs, but a value
/// edited in the sqlite3 shell may come back as text or as an integer.
fn meta_value(row: &rusqlite::Row<'_>) -> rusqlite::Result<Vec<u8>> {
    match row.get_ref(0)? {
        ValueRef::Blob(bytes) | ValueRef::Text(bytes) => Ok(bytes.to_vec()),
        ValueRef::Integer(number) => Ok(number.to_string().into_bytes()),
        other => Err(rusqlite::Error::FromSqlConversionFailure(
            0,
            other.data_type(),
            "a meta value must be a blob, text or an integer".into(),
        )),
    }
}

/// Refuses a database that a newer FreeAuth version wrote.
fn reject_newer_schema(conn: &Connection) -> Result<(), StoreError> {
    let current = SCHEMA_VERSION.to_string();
    match read_schema_version(conn)?.as_deref() {
        None | Some(b"1") => Ok(()),
        Some(value) if value == current.as_bytes() => Ok(()),
        Some(value) => {
            let newer = std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .is_some_and(|version| version > SCHEMA_VERSION);
            let what = if newer {
                format!("schema_version is not {current}; this database was written by a newer FreeAuth version")
            } else {
                let text = String::from_utf8_lossy(&value[..value.len().min(40)]);
                let printable_value = freeauth_proto::text::printable(&text);
                format!("schema_version in table meta is \"{printable_value}\", expected {current}")
            };
            Err(StoreError::Corrupt { what })
        }
    }
}

/// Brings the tables up to date and creates the indexes, in one transaction.
///
/// The columns decide what to add, not the version row: a version 1 agent
/// stopped between creating its tables and writing `schema_version` left
/// version 1 tables without a version.
fn check_schema_version(conn: &Connection) -> Result<(), StoreError> {
    let current = SCHEMA_VERSION.to_string();
    reject_newer_schema(conn)?;
    let version = read_schema_version(conn)?;

    let tx = conn.unchecked_transaction()?;
    let tokens_sql: String = tx.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tokens'",
        [],
        |row| row.get(0),
    )?;
    if !tokens_sql.to_ascii_uppercase().contains("AUTOINCREMENT") {
        // Rows of users deleted outside the agent (the sqlite3 shell does
        // not enforce foreign keys) would fail the copy; they are dropped.
        let orphans: i64 = tx.query_row(
            "SELECT count(*) FROM tokens WHERE user_id NOT IN (SELECT id FROM users)",
            [],
            |row| row.get(0),
        )?;
        let highest: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM tokens", [], |row| row.get(0))?;
        tx.execute_batch(REBUILD_TOKENS)?;
        // New ids start above every old one, dropped rows included.
        tx.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'tokens'",
            [highest],
        )?;
        tx.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'tokens', ?1
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'tokens')",
            [highest],
        )?;
        tracing::info!(
            dropped_without_user = orphans,
            "table tokens rebuilt with AUTOINCREMENT, so that no token id is given twice"
        );
    }
    let has_token_ids: i64 = tx.query_row(
        "SELECT count(*) FROM pragma_table_info('users') WHERE name = 'token_ids'",
        [],
        |row| row.get(0),
    )?;
    if has_token_ids == 0 {
        tx.execute_batch(
            "ALTER TABLE users ADD COLUMN token_ids TEXT;
             UPDATE users SET token_ids =
                 (SELECT group_concat(id, ',') FROM (SELECT id FROM tokens WHERE user_id = users.id ORDER BY id));",
        )?;
    }
    tx.execute_batch(INDEXES)?;
    if version.as_deref() != Some(current.as_bytes()) {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
            [current.as_bytes()],
        )?;
    }
    tx.commit()?;
    if version.as_deref() == Some(b"1") {
        tracing::info!("database schema upgraded from version 1 to {current}");
    }
    Ok(())
}

/// How long a sweep of the use log takes at most, whatever the load.
const SWEEP_PERIOD: Duration = Duration::from_secs(10);

/// Tokens with unfolded uses above which a sweep speeds up, to bound memory
/// (about 60 bytes each: a 56-byte use and its share of a chunk).
const MAX_UNFOLDED: usize = 262_144;

/// Token states one batch folds at most, to bound the batch's latency.
const MAX_FOLD_PER_BATCH: usize = 8_192;

/// One accepted use of a token: the state it left the token in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Use {
    pub seq: i64,
    pub state: State,
    pub used_at: u64,
    /// The log row of this use may be missing: its batch failed with an
    /// unknown outcome, and the use was kept in memory to stay safe.
    pub unconfirmed: bool,
}

/// The newest state of each token whose use is not yet folded into
/// `tokens`; see the module documentation. Only the engine thread touches
/// it, between the statements of one transaction.
#[derive(Default)]
pub struct UseLog {
    inner: RefCell<Uses>,
}

#[derive(Default)]
struct Uses {
    /// Newest committed, unfolded use per token id.
    committed: Unfolded,
    /// States that [`Db::tokens_of`] took from `tokens` rows, and the
    /// connection's count of changed rows when it read them. While that
    /// count stays the same, no row has changed, so [`Db::advance_token`]
    /// compares with these instead of reading the row again.
    row_states: Vec<(i64, State)>,
    row_states_changes: u64,
    /// Uses written in the open transaction, oldest first.
    staged: Vec<(i64, Use)>,
    /// The newest use in `staged` of each token, for lookups.
    staged_newest: HashMap<i64, Use>,
    /// The sequence number of the next use.
    next_seq: i64,
    /// Token ids below this one were folded in the current sweep.
    cursor: i64,
    /// The highest sequence number written before the current sweep began.
    sweep_start_seq: i64,
    /// Log rows up to this sequence number are deleted.
    deleted_up_to: i64,
    /// When the sweep last advanced.
    last_fold: Option<Instant>,
    /// The fold written in the open transaction.
    fold: Option<Fold>,
    /// The highest token id that had a use, in memory or in the log, since
    /// the start. A batch whose commit failed may have used a token whose
    /// row rolled back together with the AUTOINCREMENT count that gave its
    /// id. A new token must not get that id, and with it the lost use.
    highest_used_id: i64,
}

/// The newest committed, unfolded use per token id, kept in chunks of 64
/// ids. Each chunk has one bit per id and the uses of the ids whose bit is
/// set, in id order. At a million tokens a lookup then reads two or three
/// cache lines, where a `BTreeMap` of up to 262,144 entries reads one node
/// per level, and most lookups stop at a clear bit.
#[derive(Default)]
struct Unfolded {
    /// Chunk `c` covers ids `64 * c` to `64 * c + 63`, for ids from 0 to
    /// [`MAX_CHUNKED_ID`] - 1.
    chunks: Vec<Chunk>,
    /// Bit `c` is set while chunk `c` has a use, so that a walk in id order
    /// skips empty chunks 64 at a time.
    nonempty: Vec<u64>,
    /// Uses of ids outside the chunks' range. AUTOINCREMENT reaches them
    /// only after 2^26 tokens.
    others: BTreeMap<i64, Use>,
    len: usize,
}

#[derive(Default)]
struct Chunk {
    present: u64,
    uses: Vec<Use>,
}

/// Ids below this one go in chunks: 1,048,576 chunks of 32 bytes at most.
/// Token ids count up from 1, one per token ever enrolled.
const MAX_CHUNKED_ID: i64 = 1 << 26;

/// Returns the chunk index and the bit of `id`, for ids in the chunks' range.
fn chunk_of(id: i64) -> Option<(usize, u32)> {
    if !(0..MAX_CHUNKED_ID).contains(&id) {
        return None;
    }
    let id = u32::try_from(id).ok()?;
    Some(((id / 64) as usize, id % 64))
}

/// Returns the bits of `word` at positions `from` and up.
fn bits_from(word: u64, from: u32) -> u64 {
    word & u64::MAX.checked_shl(from).unwrap_or(0)
}

impl Chunk {
    /// Returns the index in `uses` of the id with `bit`, set or not.
    fn rank(&self, bit: u32) -> usize {
        (self.present & !bits_from(u64::MAX, bit)).count_ones() as usize
    }
}

impl Unfolded {
    fn get(&self, id: i64) -> Option<&Use> {
        let Some((index, bit)) = chunk_of(id) else {
            return self.others.get(&id);
        };
        let chunk = self.chunks.get(index)?;
        if chunk.present & (1 << bit) == 0 {
            return None;
        }
        chunk.uses.get(chunk.rank(bit))
    }

    fn insert(&mut self, id: i64, used: Use) {
        let Some((index, bit)) = chunk_of(id) else {
            if self.others.insert(id, used).is_none() {
                self.len += 1;
            }
            return;
        };
        if self.chunks.len() <= index {
            self.chunks.resize_with(index + 1, Chunk::default);
            self.nonempty.resize(index / 64 + 1, 0);
        }
        let chunk = &mut self.chunks[index];
        let rank = chunk.rank(bit);
        if chunk.present & (1 << bit) != 0 {
            chunk.uses[rank] = used;
            return;
        }
        // Grows by four uses at a time, which leaves less unused capacity
        // than doubling.
        if chunk.uses.len() == chunk.uses.capacity() {
            chunk.uses.reserve_exact(4);
        }
        chunk.uses.insert(rank, used);
        chunk.present |= 1 << bit;
        self.nonempty[index / 64] |= 1 << (index % 64);
        self.len += 1;
    }

    fn remove(&mut self, id: i64) {
        let Some((index, bit)) = chunk_of(id) else {
            if self.others.remove(&id).is_some() {
                self.len -= 1;
            }
            return;
        };
        let Some(chunk) = self.chunks.get_mut(index) else {
            return;
        };
        if chunk.present & (1 << bit) == 0 {
            return;
        }
        let rank = chunk.rank(bit);
        chunk.uses.remove(rank);
        chunk.present &= !(1 << bit);
        if chunk.present == 0 {
            chunk.uses = Vec::new();
            self.nonempty[index / 64] &= !(1 << (index % 64));
        }
        self.len -= 1;
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Returns the highest id with a use.
    fn last_id(&self) -> Option<i64> {
        if let Some(&id) = self.others.keys().next_back().filter(|&&id| id >= MAX_CHUNKED_ID) {
            return Some(id);
        }
        let chunked = self
            .nonempty
            .iter()
            .enumerate()
            .rev()
            .find(|(_, &word)| word != 0)
            .map(|(word_index, &word)| {
                let index = word_index * 64 + (63 - word.leading_zeros() as usize);
                let present = self.chunks[index].present;
                index * 64 + (63 - present.leading_zeros() as usize)
            });
        match chunked {
            Some(id) => i64::try_from(id).ok(),
            None => self.others.keys().next_back().copied(),
        }
    }

    /// Returns the index of the first chunk with a use at `from` or above.
    fn next_nonempty(&self, from: usize) -> Option<usize> {
        let mut word_index = from / 64;
        let mut word = bits_from(*self.nonempty.get(word_index)?, (from % 64) as u32);
        loop {
            if word != 0 {
                return Some(word_index * 64 + word.trailing_zeros() as usize);
            }
            word_index += 1;
            word = *self.nonempty.get(word_index)?;
        }
    }

    /// Returns the uses of ids from `first` up, in id order.
    fn starting_at(&self, first: i64) -> impl Iterator<Item = (i64, &Use)> + '_ {
        let below = self.others.range(first.min(0)..0).map(|(&id, used)| (id, used));
        let start = usize::try_from(first.clamp(0, MAX_CHUNKED_ID)).unwrap_or(0);
        // The chunk being walked, the bits of it still to visit, and the
        // index in its `uses` of the lowest of those bits.
        let mut current = self.next_nonempty(start / 64).map(|index| {
            let chunk = &self.chunks[index];
            let from = if index == start / 64 { (start % 64) as u32 } else { 0 };
            (index, bits_from(chunk.present, from), chunk.rank(from))
        });
        let chunked = std::iter::from_fn(move || loop {
            let (index, bits, rank) = current.as_mut()?;
            if *bits != 0 {
                let id = *index * 64 + bits.trailing_zeros() as usize;
                *bits &= *bits - 1;
                let used = &self.chunks[*index].uses[*rank];
                *rank += 1;
                return Some((i64::try_from(id).unwrap_or(i64::MAX), used));
            }
            current = self
                .next_nonempty(*index + 1)
                .map(|index| (index, self.chunks[index].present, 0));
        });
        let above = self
            .others
            .range(first.max(MAX_CHUNKED_ID)..)
            .map(|(&id, used)| (id, used));
        below.chain(chunked).chain(above)
    }
}

/// Changes a fold makes in memory once its transaction commits.
struct Fold {
    /// Token ids and the sequence numbers of the uses copied to `tokens`.
    folded: Vec<(i64, i64)>,
    cursor: i64,
    /// The sweep ended: rows up to `sweep_start_seq` were deleted.
    sweep_done: bool,
    at: Instant,
}

impl UseLog {
    /// Reads the log after a start: the newest row of each token wins.
    fn load(&self, conn: &Connection) -> Result<(), StoreError> {
        let mut uses = self.inner.borrow_mut();
        let mut statement =
            conn.prepare("SELECT seq, token_id, counter, last_step, drift, used_at FROM token_uses ORDER BY seq")?;
        let mut rows = statement.query([])?;
        let mut last = 0;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let token_id: i64 = row.get(1)?;
            let state = State {
                counter: to_u64(row.get(2)?)?,
                last_step: row.get::<_, Option<i64>>(3)?.map(to_u64).transpose()?,
                drift: row.get(4)?,
            };
            let used_at = to_u64(row.get(5)?)?;
            let used = Use {
                seq,
                state,
                used_at,
                unconfirmed: false,
            };
            uses.committed.insert(token_id, used);
            uses.highest_used_id = uses.highest_used_id.max(token_id);
            last = seq;
        }
        uses.next_seq = last + 1;
        // The first sweep folds every state just loaded.
        uses.sweep_start_seq = last;
        Ok(())
    }

    /// Returns the newest use of a token, staged or committed.
    pub fn newest(&self, token_id: i64) -> Option<Use> {
        let uses = self.inner.borrow();
        uses.staged_newest
            .get(&token_id)
            .or_else(|| uses.committed.get(token_id))
            .copied()
    }

    /// Notes the state read from the `tokens` row of `token_id` while the
    /// connection had changed `changes` rows in all.
    fn remember_row(&self, token_id: i64, state: State, changes: u64) {
        let mut uses = self.inner.borrow_mut();
        // A few entries cover the tokens of one account, and more would only
        // slow the search.
        if uses.row_states_changes != changes || uses.row_states.len() >= 16 {
            uses.row_states.clear();
            uses.row_states_changes = changes;
        }
        uses.row_states.push((token_id, state));
    }

    /// Returns the state noted for `token_id` by [`UseLog::remember_row`] if
    /// no row has changed since, that is, if the connection's count of
    /// changed rows is still `changes`. Only the engine's connection changes
    /// rows.
    fn row_state(&self, token_id: i64, changes: u64) -> Option<State> {
        let uses = self.inner.borrow();
        if uses.row_states_changes != changes {
            return None;
        }
        uses.row_states
            .iter()
            .rev()
            .find(|(id, _)| *id == token_id)
            .map(|(_, state)| *state)
    }

    /// Number of tokens with an unfolded use.
    pub fn unfolded(&self) -> usize {
        self.inner.borrow().committed.len()
    }

    /// Returns a point to roll the staged uses back to.
    pub fn mark(&self) -> usize {
        self.inner.borrow().staged.len()
    }

    /// Forgets the uses staged after `mark`, whose savepoint rolled back.
    pub fn rollback_to(&self, mark: usize) {
        let mut uses = self.inner.borrow_mut();
        // A rollback restores rows without lowering the count of changes,
        // so a state noted since may no longer be in its row.
        uses.row_states.clear();
        if uses.staged.len() <= mark {
            return;
        }
        uses.staged.truncate(mark);
        let newest = uses.staged.iter().copied().collect();
        uses.staged_newest = newest;
    }

    /// Forgets everything of a transaction that did not commit.
    pub fn rolled_back(&self) {
        let mut uses = self.inner.borrow_mut();
        uses.row_states.clear();
        uses.staged.clear();
        uses.staged_newest.clear();
        uses.fold = None;
    }

    /// Keeps the staged uses of a transaction whose outcome is unknown, and
    /// drops its fold. Memory may then be ahead of the disk, which rejects
    /// codes the disk would accept and never the other way round.
    pub fn keep_staged(&self) {
        let mut uses = self.inner.borrow_mut();
        uses.row_states.clear();
        uses.fold = None;
        let staged = std::mem::take(&mut uses.staged);
        uses.staged_newest.clear();
        for (token_id, used) in staged {
            let used = Use {
                unconfirmed: true,
                ..used
            };
            uses.committed.insert(token_id, used);
        }
    }

    /// Makes the staged uses and the fold of a committed transaction current.
    pub fn committed(&self) {
        let mut uses = self.inner.borrow_mut();
        uses.row_states.clear();
        if let Some(fold) = uses.fold.take() {
            for (token_id, seq) in fold.folded {
                // A use staged in this same transaction is newer and stays.
                if uses.committed.get(token_id).is_some_and(|used| used.seq == seq) {
                    uses.committed.remove(token_id);
                }
            }
            uses.cursor = fold.cursor;
            uses.last_fold = Some(fold.at);
            if fold.sweep_done {
                uses.deleted_up_to = uses.sweep_start_seq;
                uses.sweep_start_seq = uses.next_seq - 1;
            }
        }
        let staged = std::mem::take(&mut uses.staged);
        uses.staged_newest.clear();
        for (token_id, used) in staged {
            uses.committed.insert(token_id, used);
        }
    }

    fn next_seq(&self) -> i64 {
        let mut uses = self.inner.borrow_mut();
        let seq = uses.next_seq;
        uses.next_seq += 1;
        seq
    }

    fn stage(&self, token_id: i64, used: Use) {
        let mut uses = self.inner.borrow_mut();
        uses.staged.push((token_id, used));
        uses.staged_newest.insert(token_id, used);
        uses.highest_used_id = uses.highest_used_id.max(token_id);
    }

    /// Returns the highest token id that had a use since the start.
    fn highest_used_id(&self) -> i64 {
        self.inner.borrow().highest_used_id
    }

    /// Copies the next range of the sweep into `tokens`, inside the open
    /// transaction. The range covers the ids a full sweep in
    /// [`SWEEP_PERIOD`] would have passed since the last fold, more when
    /// over [`MAX_UNFOLDED`] tokens have unfolded uses. Does nothing and
    /// writes nothing when there is nothing to fold or delete.
    pub fn fold(&self, conn: &Connection, now: Instant) -> Result<(), StoreError> {
        let mut uses = self.inner.borrow_mut();
        let Some(last_id) = uses.committed.last_id() else {
            return Self::finish_idle_sweep(conn, &mut uses, now);
        };
        // The sweep passes `span` ids per SWEEP_PERIOD. Time that did not
        // make up a whole id carries over to the next fold.
        let period = SWEEP_PERIOD.as_micros().max(1);
        let elapsed = uses
            .last_fold
            .map_or(period, |last| now.saturating_duration_since(last).as_micros())
            .min(period);
        let span = u128::try_from(last_id).unwrap_or(0) + 1;
        let advance = span * elapsed / period;
        let swept_until = match uses.last_fold {
            Some(last) if elapsed < period => {
                last + Duration::from_micros(u64::try_from(advance * period / span).unwrap_or(u64::MAX))
            }
            _ => now,
        };
        let end = uses.cursor.saturating_add(i64::try_from(advance).unwrap_or(i64::MAX));
        let excess = uses.committed.len().saturating_sub(MAX_UNFOLDED);

        let mut folded = Vec::new();
        let mut cursor = uses.cursor;
        let mut update = conn.prepare_cached(
            "UPDATE tokens SET counter = ?2, last_step = ?3, drift = ?4, last_used = ?5 WHERE id = ?1",
        )?;
        let mut next_seq = uses.next_seq;
        for (token_id, used) in uses.committed.starting_at(uses.cursor) {
            let due = token_id < end || folded.len() < excess;
            if !due || folded.len() >= MAX_FOLD_PER_BATCH {
                break;
            }
            // Without a log row of its own, a restart would prefer an older
            // row of this token over the state folded here. But when this
            // transaction has already logged a newer use of the token, a row
            // written now would get a higher sequence number than that use,
            // and a restart would go back to the older state.
            if used.unconfirmed && !uses.staged_newest.contains_key(&token_id) {
                insert_use(conn, next_seq, token_id, used)?;
                next_seq += 1;
            }
            update.execute(use_columns(token_id, used)?)?;
            folded.push((token_id, used.seq));
            cursor = token_id + 1;
        }
        drop(update);
        uses.next_seq = next_seq;
        if folded.len() < MAX_FOLD_PER_BATCH && folded.len() >= excess {
            cursor = cursor.max(end);
        }

        let sweep_done = cursor > last_id;
        if sweep_done {
            delete_log(conn, uses.sweep_start_seq)?;
            cursor = 0;
        }
        if folded.is_empty() && !sweep_done {
            // Nothing written; the range passed was empty.
            uses.cursor = cursor;
            uses.last_fold = Some(swept_until);
            return Ok(());
        }
        uses.fold = Some(Fold {
            folded,
            cursor,
            sweep_done,
            at: swept_until,
        });
        Ok(())
    }

    /// With no unfolded use left, ends the sweep: deletes the log rows it
    /// covered, if any are left.
    fn finish_idle_sweep(conn: &Connection, uses: &mut Uses, now: Instant) -> Result<(), StoreError> {
        if uses.sweep_start_seq <= uses.deleted_up_to {
            // A new sweep must pass every id, so it starts from the first.
            uses.sweep_start_seq = uses.next_seq - 1;
            uses.cursor = 0;
            return Ok(());
        }
        delete_log(conn, uses.sweep_start_seq)?;
        uses.fold = Some(Fold {
            folded: Vec::new(),
            cursor: 0,
            sweep_done: true,
            at: now,
        });
        Ok(())
    }
}

/// Appends a use of `token_id` to the log, as sequence number `seq`.
fn insert_use(conn: &Connection, seq: i64, token_id: i64, used: &Use) -> Result<(), StoreError> {
    let mut statement = conn.prepare_cached(INSERT_USE)?;
    insert_use_with(&mut statement, seq, token_id, used)
}

/// Appends a use with `statement`, a prepared [`INSERT_USE`].
fn insert_use_with(statement: &mut Statement<'_>, seq: i64, token_id: i64, used: &Use) -> Result<(), StoreError> {
    let (id, counter, last_step, drift, used_at) = use_columns(token_id, used)?;
    statement.execute((id, counter, last_step, drift, used_at, seq))?;
    Ok(())
}

/// Returns the columns of a use, in the order token id, counter, last step,
/// drift, time of use.
fn use_columns(token_id: i64, used: &Use) -> Result<(i64, i64, Option<i64>, i64, i64), StoreError> {
    Ok((
        token_id,
        to_i64(used.state.counter)?,
        used.state.last_step.map(to_i64).transpose()?,
        used.state.drift,
        to_i64(used.used_at)?,
    ))
}

fn delete_log(conn: &Connection, up_to: i64) -> Result<(), StoreError> {
    let mut statement = conn.prepare_cached("DELETE FROM token_uses WHERE seq <= ?1")?;
    statement.execute([up_to])?;
    Ok(())
}

/// Copies the WAL back into the database from a second connection every
/// `interval`, while the engine keeps writing. Runs until the process ends.
pub fn start_checkpointer(database: std::path::PathBuf, interval: std::time::Duration) -> Result<(), StoreError> {
    let conn = Connection::open(&database)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let spawned = std::thread::Builder::new().name("checkpoint".into()).spawn(move || {
        let mut failures = RepeatedFailure::default();
        loop {
            std::thread::sleep(interval);
            let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            match failures.note(result.err().map(|err| err.to_string()), std::time::Instant::now()) {
                FailureLine::None => {}
                FailureLine::Failed { error, unlogged } => tracing::warn!(
                    %error,
                    suppressed = unlogged,
                    "WAL checkpoint failed; will retry (this line at most once a minute)"
                ),
                FailureLine::Recovered { failures } => {
                    tracing::info!(failed_attempts = failures, "WAL checkpoint works again");
                }
            }
        }
    });
    spawned.map(drop).map_err(|err| StoreError::Folder {
        path: database.display().to_string(),
        reason: format!("cannot start the checkpoint thread: {err}"),
    })
}

/// Failures of one kind, such as WAL checkpoints or commits on a full disk,
/// which can fail many times a second, or fail and succeed by turns. The
/// log gets at most one line about a failure a minute, with the number of
/// failures left out before it, and one line when an attempt succeeds
/// after a logged failure.
#[derive(Debug, Default)]
pub(crate) struct RepeatedFailure {
    /// When the last line about a failure was logged.
    logged_at: Option<std::time::Instant>,
    /// Failures since that line, left out of the log.
    unlogged: u64,
    /// Failures since the last line about a success.
    failures: u64,
    /// Whether a failure was logged after the last line about a success.
    reported: bool,
}

/// The line to log after an attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FailureLine {
    None,
    /// A failure, after `unlogged` failures that were left out.
    Failed {
        error: String,
        unlogged: u64,
    },
    /// A success after a logged failure, and the failures since the last
    /// such line.
    Recovered {
        failures: u64,
    },
}

impl RepeatedFailure {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Counts an attempt that ended with `error` (`None` for success) at
    /// `now`, and returns the line to log.
    pub(crate) fn note(&mut self, error: Option<String>, now: std::time::Instant) -> FailureLine {
        let Some(error) = error else {
            if !self.reported {
                return FailureLine::None;
            }
            self.reported = false;
            return FailureLine::Recovered {
                failures: std::mem::take(&mut self.failures),
            };
        };
        self.failures += 1;
        if self
            .logged_at
            .is_some_and(|logged| now.saturating_duration_since(logged) < Self::EVERY)
        {
            self.unlogged += 1;
            return FailureLine::None;
        }
        self.logged_at = Some(now);
        self.reported = true;
        FailureLine::Failed {
            error,
            unlogged: std::mem::take(&mut self.unlogged),
        }
    }
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

/// Takes an exclusive `flock` on the state folder itself. The agent keeps
/// the newest state of used tokens in memory and is the only writer of the
/// database. A second agent on the same folder, started with another
/// configuration, would accept codes the first one has used. A lock on a
/// file inside the folder would end when someone deletes that file, but the
/// folder cannot go away while it holds the database.
fn lock_state_dir(dir: &Path) -> Result<Flock<File>, StoreError> {
    let folder_error = |reason: String| StoreError::Folder {
        path: dir.display().to_string(),
        reason,
    };
    let folder = File::open(dir).map_err(|err| folder_error(format!("cannot open it to lock it: {err}")))?;
    match Flock::lock(folder, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, Errno::EWOULDBLOCK)) => Err(folder_error(
            "a running agent is using it, or `freeauthctl backup` is copying its database (either holds the lock \
             on this folder); stop that agent first, or try again when the copy is done"
                .into(),
        )),
        Err((_, errno)) => Err(folder_error(format!("cannot lock it: {errno}"))),
    }
}

/// Counts of the users, tokens and bytes that [`backup`] copied.
#[derive(Debug)]
pub struct BackupSummary {
    pub users: u64,
    pub tokens: u64,
    pub bytes: u64,
}

/// Copies the database in `state_dir` into the new file `dest` (mode 0600),
/// consistent as of one moment, while an agent runs or not, and checks the
/// copy. The seed key is not part of it.
///
/// The database is opened read-only and no file is created in the state
/// folder, because a file made there by root would keep the agent's user
/// out of it. See [`open_read_only`] for when the folder's lock is taken.
pub fn backup(state_dir: &Path, dest: &Path) -> Result<BackupSummary, StoreError> {
    // The lock, when taken, is held until the copy is done.
    let (conn, _lock) = open_read_only(state_dir)?;
    // Only the check that reads: the upgrade of a version 1 database writes
    // to it, which this read-only connection cannot. The agent upgrades a
    // restored version 1 copy when it starts.
    reject_newer_schema(&conn)?;
    let count = |sql: &str| conn.query_row(sql, [], |row| row.get::<_, i64>(0));
    let users = u64::try_from(count("SELECT count(*) FROM users")?).unwrap_or(0);
    let tokens = u64::try_from(count("SELECT count(*) FROM tokens")?).unwrap_or(0);

    let file_error = |reason: String| StoreError::File {
        path: dest.display().to_string(),
        reason,
    };
    // SQLite reads a name that starts with `file:` as a URI and `:memory:`
    // as no file at all. An absolute path is never either of those.
    let dest = &std::path::absolute(dest).map_err(|err| file_error(format!("cannot resolve it: {err}")))?;
    let exists = || std::io::Error::from_raw_os_error(Errno::EEXIST as i32);
    if dest.symlink_metadata().is_ok() {
        return Err(file_error(format!("cannot create it: {}", exists())));
    }
    let Some(name) = dest.file_name() else {
        return Err(file_error("is not a file name".into()));
    };
    // The copy is written under a temporary name and linked to `dest` once
    // checked, so a copy killed half way leaves no file that passes for a
    // backup.
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(name);
    partial_name.push(".partial");
    let partial = &dest.with_file_name(partial_name);
    let partial_error = |reason: String| StoreError::File {
        path: partial.display().to_string(),
        reason,
    };
    // The copy has encrypted seeds and hashed backup codes, so it is made
    // with mode 0600. `create_new` fails on a file that exists.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .map_err(|err| match (err.kind(), dest.parent()) {
            // The folder is the administrator's mistake, so name it rather
            // than the temporary file.
            (std::io::ErrorKind::NotFound, Some(folder)) => file_error(format!(
                "cannot create it: folder {} does not exist; create it or choose another folder",
                folder.display()
            )),
            _ => partial_error(format!("cannot create it: {err}")),
        })?;
    // A full disk, say, would otherwise read as a problem of the database.
    let written = vacuum_into(&conn, partial).map_err(|err| match err {
        StoreError::Corrupt { .. } => err,
        other => file_error(format!("cannot write the copy: {other}")),
    });
    let copied = written.and_then(|()| {
        File::open(partial)
            .and_then(|file| file.sync_all())
            .map_err(|err| partial_error(format!("cannot sync it: {err}")))
    });
    let linked =
        copied.and_then(|()| publish_copy(partial, dest).map_err(|err| file_error(format!("cannot create it: {err}"))));
    let _ = fs::remove_file(partial);
    linked?;
    if let Some(folder) = dest.parent() {
        sync_folder(folder)?;
    }
    let bytes = fs::metadata(dest).map(|meta| meta.len()).unwrap_or(0);
    Ok(BackupSummary { users, tokens, bytes })
}

/// Gives the finished copy `partial` the name `dest`, unless `dest` exists.
/// A hard link fails on a `dest` made meanwhile, which `rename` would replace.
/// On file systems without hard links (FAT, some network file systems) it
/// falls back to `rename` after checking that `dest` is still free.
fn publish_copy(partial: &Path, dest: &Path) -> std::io::Result<()> {
    match fs::hard_link(partial, dest) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Err(err),
        Err(_) if dest.symlink_metadata().is_ok() => Err(std::io::Error::from_raw_os_error(Errno::EEXIST as i32)),
        // NOTE: a `dest` made between the check above and the rename is replaced.
        Err(_) => fs::rename(partial, dest),
    }
}

/// Opens the database in `state_dir` read-only, in a way that creates no
/// file. When the WAL and its index exist (an agent runs, or has run), the
/// copy reads through them, and SQLite's own locks keep it consistent while
/// an agent starts, writes or stops. A database that no agent has opened
/// yet has neither, so it is read as a plain file under the folder's lock.
/// The lock keeps an agent from starting and writing to it meanwhile, and
/// is returned with the connection.
fn open_read_only(state_dir: &Path) -> Result<(Connection, Option<Flock<File>>), StoreError> {
    let path = state_dir.join(DB_FILE);
    let folder_error = |reason: String| StoreError::Folder {
        path: state_dir.display().to_string(),
        reason,
    };
    if !path.is_file() {
        return Err(folder_error(format!("has no database {DB_FILE}")));
    }
    let wal = state_dir.join(format!("{DB_FILE}-wal"));
    let shm = state_dir.join(format!("{DB_FILE}-shm"));
    let with_wal = || match (wal.exists(), shm.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        _ => Err(folder_error(format!(
            "{DB_FILE} has a WAL file without its index, or the reverse; start the agent once and try again"
        ))),
    };
    let (uri, lock) = if with_wal()? {
        (format!("file:{}?mode=ro", uri_path(&path)), None)
    } else {
        let lock = lock_state_dir(state_dir)?;
        // An agent may have opened the database before the lock was taken,
        // and stopped since.
        if with_wal()? {
            (format!("file:{}?mode=ro", uri_path(&path)), None)
        } else {
            (format!("file:{}?mode=ro&immutable=1", uri_path(&path)), Some(lock))
        }
    };
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(uri, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok((conn, lock))
}

/// Reads the key check (see [`crate::keys::SeedCipher::fits`]) from the
/// database in `state_dir`, read-only and while the agent runs or not. The
/// WAL is synced first, so that what this reads is on disk.
pub fn read_key_check(state_dir: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let wal = state_dir.join(format!("{DB_FILE}-wal"));
    // Without following a link and without waiting on a pipe: the folder
    // belongs to the agent's user, and root may run this.
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(&wal);
    if let Ok(file) = opened {
        let regular = file.metadata().map(|meta| meta.is_file()).unwrap_or(false);
        let synced = if regular {
            file.sync_data().map_err(|err| format!("cannot sync it: {err}"))
        } else {
            Err("is not a regular file".to_owned())
        };
        synced.map_err(|reason| StoreError::File {
            path: wal.display().to_string(),
            reason,
        })?;
    }
    let (conn, _lock) = open_read_only(state_dir)?;
    let mut statement = conn.prepare("SELECT value FROM meta WHERE key = 'key_check'")?;
    Ok(statement.query_row([], meta_value).optional()?)
}

/// Reads the key check from `copy`, a database file made by [`backup`].
pub fn read_copy_key_check(copy: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let conn = Connection::open_with_flags(copy, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut statement = conn.prepare("SELECT value FROM meta WHERE key = 'key_check'")?;
    Ok(statement.query_row([], meta_value).optional()?)
}

/// Writes the database of `conn` into the empty file `dest` and runs
/// SQLite's integrity check on the copy.
fn vacuum_into(conn: &Connection, dest: &Path) -> Result<(), StoreError> {
    conn.execute("VACUUM INTO ?1", [dest.to_string_lossy()])?;
    let copy = Connection::open_with_flags(dest, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let verdict: String = copy.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
    if verdict != "ok" {
        return Err(StoreError::Corrupt {
            what: format!("the copy failed its integrity check: {verdict}"),
        });
    }
    Ok(())
}

/// Writes `path` for a `file:` URI: every byte but letters, digits and
/// `/._-~` is percent-encoded.
fn uri_path(path: &Path) -> String {
    let mut text = String::new();
    for &byte in path.as_os_str().as_encoded_bytes() {
        if byte.is_ascii_alphanumeric() || b"/._-~".contains(&byte) {
            text.push(char::from(byte));
        } else {
            text.push_str(&format!("%{byte:02X}"));
        }
    }
    text
}

/// Returns whether a running agent holds the lock on the state folder `dir`
/// (see [`lock_state_dir`]). Takes the lock for a moment when it is free.
pub fn in_use_by_agent(dir: &Path) -> bool {
    let Ok(folder) = File::open(dir) else {
        return false;
    };
    matches!(
        Flock::lock(folder, FlockArg::LockExclusiveNonblock),
        Err((_, Errno::EWOULDBLOCK))
    )
}

/// A token's sealed secrets as stored: its id, seed and Mobile-OTP PIN.
pub type SealedSecrets = (i64, Vec<u8>, Option<Vec<u8>>);

/// The failure count of a name without an account, as stored: the name's
/// keyed digest, the count, and the end of its lock.
pub type UnknownFailures = (Vec<u8>, u32, Option<u64>);

/// Statements on a connection, transaction or savepoint, with the use log
/// that contains the newest token states.
#[derive(Clone, Copy)]
pub struct Db<'c, 's> {
    pub conn: &'c Connection,
    pub uses: &'c UseLog,
    /// The statements of a verification, prepared for the whole batch, or
    /// `None` outside a batch and for admin requests.
    pub statements: Option<&'c BatchStatements<'s>>,
}

const SELECT_ACCOUNT: &str =
    "SELECT id, name, failures, locked_until, token_ids FROM users INDEXED BY users_by_name WHERE name = ?1";

const SELECT_TOKEN: &str = "SELECT id, kind, algorithm, digits, period, counter, last_step, drift, enabled, label,
        created, last_used, sealed_seed, sealed_pin, user_id
    FROM tokens WHERE id = ?1";

const INSERT_USE: &str = "INSERT INTO token_uses (token_id, counter, last_step, drift, used_at, seq)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// The statements that every verification runs, taken from the statement
/// cache once per batch. Taking one from the cache hashes its SQL text and
/// returning it hashes the text again, which cost about 0.1 µs per
/// statement in a profile of the engine at a million tokens.
pub struct BatchStatements<'c> {
    account: RefCell<CachedStatement<'c>>,
    token: RefCell<CachedStatement<'c>>,
    insert_use: RefCell<CachedStatement<'c>>,
}

impl<'c> BatchStatements<'c> {
    pub fn prepare(conn: &'c Connection) -> Result<BatchStatements<'c>, StoreError> {
        Ok(BatchStatements {
            account: RefCell::new(conn.prepare_cached(SELECT_ACCOUNT)?),
            token: RefCell::new(conn.prepare_cached(SELECT_TOKEN)?),
            insert_use: RefCell::new(conn.prepare_cached(INSERT_USE)?),
        })
    }
}

/// Runs `work` with the batch's statement from `pick`, or with `sql` from
/// the connection's statement cache when there is no batch.
fn with_statement<'c, 's, T>(
    db: &Db<'c, 's>,
    pick: impl FnOnce(&'c BatchStatements<'s>) -> &'c RefCell<CachedStatement<'s>>,
    sql: &str,
    work: impl FnOnce(&mut Statement<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match db.statements {
        Some(statements) => work(&mut pick(statements).borrow_mut()),
        None => {
            let mut statement = db.conn.prepare_cached(sql)?;
            work(&mut statement)
        }
    }
}

impl Db<'_, '_> {
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut statement = self.conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
        Ok(statement.query_row([key], meta_value).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM meta WHERE key = ?1", [key])?;
        Ok(())
    }

    pub fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let row = with_statement(
            self,
            |statements| &statements.account,
            SELECT_ACCOUNT,
            |statement| {
                let row = statement
                    .query_row([name], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, Option<i64>>(3)?,
                            row.get::<_, Option<String>>(4)?,
                        ))
                    })
                    .optional()?;
                Ok(row)
            },
        )?;
        let Some((id, name, failures, locked_until, token_ids)) = row else {
            return Ok(None);
        };
        let mut ids = Vec::new();
        for part in token_ids
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|part| !part.is_empty())
        {
            ids.push(part.parse().map_err(|_| StoreError::Corrupt {
                what: format!("token_ids of user {id}"),
            })?);
        }
        ids.sort_unstable();
        Ok(Some(Account {
            id,
            name,
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            locked_until: locked_until.map(to_u64).transpose()?,
            token_ids: ids,
        }))
    }

    /// Returns the salt of the account's backup-code hashes, if it has codes.
    pub fn backup_salt(&self, user_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT backup_salt FROM users WHERE id = ?1")?;
        Ok(statement.query_row([user_id], |row| row.get(0)).optional()?.flatten())
    }

    /// Returns the account's id, creating the account if needed.
    pub fn ensure_account(&self, name: &str) -> Result<i64, StoreError> {
        self.conn.execute(
            "INSERT INTO users (name) VALUES (?1) ON CONFLICT(name) DO NOTHING",
            [name],
        )?;
        let mut statement = self.conn.prepare_cached("SELECT id FROM users WHERE name = ?1")?;
        Ok(statement.query_row([name], |row| row.get(0))?)
    }

    /// Returns the tokens of a user, found through `tokens_by_user`.
    pub fn tokens(&self, user_id: i64) -> Result<Vec<TokenRow>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT id, kind, algorithm, digits, period, counter, last_step, drift, enabled, label,
                    created, last_used, sealed_seed, sealed_pin
             FROM tokens WHERE user_id = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([user_id], raw_token)?;
        let mut tokens = Vec::new();
        for raw in rows {
            tokens.push(self.with_newest_state(raw?.check()?));
        }
        Ok(tokens)
    }

    /// Returns the tokens of an account, found by the ids in its row. The
    /// result equals [`Db::tokens`], with one B-tree fewer to read.
    pub fn tokens_of(&self, account: &Account) -> Result<Vec<TokenRow>, StoreError> {
        let mut tokens = Vec::with_capacity(account.token_ids.len());
        for &id in &account.token_ids {
            let row = with_statement(
                self,
                |statements| &statements.token,
                SELECT_TOKEN,
                |statement| {
                    let row = statement
                        .query_row([id], |row| Ok((raw_token(row)?, row.get::<_, i64>(14)?)))
                        .optional()?;
                    Ok(row)
                },
            )?;
            match row {
                Some((raw, owner)) if owner == account.id => tokens.push(self.with_newest_state(raw.check()?)),
                _ => {
                    return Err(StoreError::Corrupt {
                        what: format!("token_ids of user {} names token {id}, which is not theirs", account.id),
                    })
                }
            }
        }
        Ok(tokens)
    }

    fn with_newest_state(&self, mut token: TokenRow) -> TokenRow {
        if let Some(used) = self.uses.newest(token.id) {
            token.state = used.state;
            token.last_used = Some(used.used_at);
        } else {
            self.uses.remember_row(token.id, token.state, self.conn.total_changes());
        }
        token
    }

    /// Inserts a token with placeholder seed and returns its id; the caller
    /// seals the seed for that id and stores it with [`Db::set_sealed`].
    pub fn insert_token(&self, user_id: i64, token: &TokenSettings, now: u64) -> Result<i64, StoreError> {
        self.conn.execute(
            "INSERT INTO tokens (id, user_id, kind, algorithm, digits, period, counter, last_step, drift,
                                 label, created, sealed_seed)
             VALUES ((SELECT CASE WHEN ?11 > coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'tokens'), 0)
                                  THEN ?11 + 1 END),
                     ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, x'')",
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
                self.uses.highest_used_id(),
            ],
        )?;
        let token_id = self.conn.last_insert_rowid();
        self.conn.prepare_cached(REFRESH_TOKEN_IDS)?.execute([user_id])?;
        Ok(token_id)
    }

    /// Returns the sealed seeds and PINs of at most `limit` tokens whose id
    /// is above `after`, in id order: (id, seed, PIN).
    pub fn sealed_after(&self, after: i64, limit: u32) -> Result<Vec<SealedSecrets>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT id, sealed_seed, sealed_pin FROM tokens WHERE id > ?1 ORDER BY id LIMIT ?2")?;
        let rows = statement.query_map(params![after, limit], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_sealed(&self, token_id: i64, seed: &[u8], pin: Option<&[u8]>) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE tokens SET sealed_seed = ?2, sealed_pin = ?3 WHERE id = ?1",
            params![token_id, seed, pin],
        )?;
        Ok(())
    }

    /// Moves a token from `old` to `new` state unless it has moved since it
    /// was read, and returns whether it did. This is the one-use rule. Only
    /// the engine thread writes, so comparing with the newest state in memory
    /// is enough; the new state goes to the use log. A token without a use
    /// in the log is compared with its row, or with the state `tokens_of`
    /// read from that row when no row has changed since.
    pub fn advance_token(&self, token_id: i64, old: &State, new: &State, now: u64) -> Result<bool, StoreError> {
        let current = match self.uses.newest(token_id) {
            Some(used) => Some(used.state),
            None => match self.uses.row_state(token_id, self.conn.total_changes()) {
                Some(state) => Some(state),
                None => self.stored_state(token_id)?,
            },
        };
        if current.as_ref() != Some(old) {
            return Ok(false);
        }
        let used = Use {
            seq: self.uses.next_seq(),
            state: *new,
            used_at: now,
            unconfirmed: false,
        };
        with_statement(
            self,
            |statements| &statements.insert_use,
            INSERT_USE,
            |statement| insert_use_with(statement, used.seq, token_id, &used),
        )?;
        self.uses.stage(token_id, used);
        Ok(true)
    }

    /// Reads the state in the `tokens` row, without the use log.
    fn stored_state(&self, token_id: i64) -> Result<Option<State>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT counter, last_step, drift FROM tokens WHERE id = ?1")?;
        let row = statement
            .query_row([token_id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .optional()?;
        row.map(|(counter, last_step, drift)| {
            Ok(State {
                counter: to_u64(counter)?,
                last_step: last_step.map(to_u64).transpose()?,
                drift,
            })
        })
        .transpose()
    }

    pub fn set_failures(&self, user_id: i64, failures: u32, locked_until: Option<u64>) -> Result<(), StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("UPDATE users SET failures = ?2, locked_until = ?3 WHERE id = ?1")?;
        statement.execute(params![user_id, failures, locked_until.map(to_i64).transpose()?])?;
        Ok(())
    }

    /// Unused backup code hashes of a user, with their ids.
    pub fn backup_codes(&self, user_id: i64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT id, hash FROM backup_codes WHERE user_id = ?1 AND used_at IS NULL ORDER BY id")?;
        let rows = statement.query_map([user_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn backup_codes_left(&self, user_id: i64) -> Result<u32, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT count(*) FROM backup_codes WHERE user_id = ?1 AND used_at IS NULL")?;
        let count: i64 = statement.query_row([user_id], |row| row.get(0))?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Marks a backup code used unless it already was; returns whether it was unused.
    pub fn consume_backup_code(&self, code_id: i64, user_id: i64, hash: &[u8], now: u64) -> Result<bool, StoreError> {
        // With the hash, a row that a new set of codes took over is not
        // that code: a new set has a new salt, so every hash differs.
        let changed = self.conn.execute(
            "UPDATE backup_codes SET used_at = ?4 WHERE id = ?1 AND user_id = ?2 AND hash = ?3 AND used_at IS NULL",
            params![code_id, user_id, hash, to_i64(now)?],
        )?;
        Ok(changed == 1)
    }

    /// Replaces all backup codes of a user with `hashes` made with `salt`.
    pub fn replace_backup_codes(&self, user_id: i64, salt: &[u8], hashes: &[[u8; 32]]) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM backup_codes WHERE user_id = ?1", [user_id])?;
        self.conn.execute(
            "UPDATE users SET backup_salt = ?2 WHERE id = ?1",
            params![user_id, salt],
        )?;
        let mut statement = self
            .conn
            .prepare_cached("INSERT INTO backup_codes (user_id, hash) VALUES (?1, ?2)")?;
        for hash in hashes {
            statement.execute(params![user_id, &hash[..]])?;
        }
        Ok(())
    }

    pub fn set_enabled(&self, user_id: i64, token_id: Option<i64>, enabled: bool) -> Result<u64, StoreError> {
        let changed = match token_id {
            Some(token) => self.conn.execute(
                "UPDATE tokens SET enabled = ?3 WHERE user_id = ?1 AND id = ?2 AND enabled != ?3",
                params![user_id, token, enabled],
            )?,
            None => self.conn.execute(
                "UPDATE tokens SET enabled = ?2 WHERE user_id = ?1 AND enabled != ?2",
                params![user_id, enabled],
            )?,
        };
        Ok(changed as u64)
    }

    // NOTE: the token's rows in `token_uses`, and its state in memory, stay
    // until the sweep passes them. That is safe only because AUTOINCREMENT
    // never gives a removed token's id to a new one, and `insert_token`
    // skips the ids of tokens lost with a failed batch.
    pub fn remove_token(&self, user_id: i64, token_id: i64) -> Result<u64, StoreError> {
        let changed = self.conn.execute(
            "DELETE FROM tokens WHERE user_id = ?1 AND id = ?2",
            params![user_id, token_id],
        )?;
        self.conn.prepare_cached(REFRESH_TOKEN_IDS)?.execute([user_id])?;
        Ok(changed as u64)
    }

    /// Failure counts of names without an account.
    pub fn unknown_failures(&self) -> Result<Vec<UnknownFailures>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT name_digest, failures, locked_until FROM unknown_failures")?;
        let rows = statement.query_map([], |row| {
            let locked_until: Option<i64> = row.get(2)?;
            Ok((
                row.get(0)?,
                row.get(1)?,
                locked_until.map(|time| u64::try_from(time).unwrap_or(0)),
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Stores the failure count of the name without an account whose
    /// digest is `digest`. A count of zero without a lock removes the row.
    pub fn set_unknown_failures(
        &self,
        digest: &[u8],
        failures: u32,
        locked_until: Option<u64>,
    ) -> Result<(), StoreError> {
        if failures == 0 && locked_until.is_none() {
            return self.forget_unknown_failures(digest);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO unknown_failures (name_digest, failures, locked_until) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name_digest) DO UPDATE SET
                     failures = excluded.failures, locked_until = excluded.locked_until",
            )?
            .execute(params![digest, failures, locked_until.map(to_i64).transpose()?])?;
        Ok(())
    }

    /// Removes the failure count of the name without an account whose
    /// digest is `digest`.
    pub fn forget_unknown_failures(&self, digest: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM unknown_failures WHERE name_digest = ?1")?
            .execute([digest])?;
        Ok(())
    }

    /// Drops the records of removed secrets that expired by `now`.
    pub fn prune_retired(&self, now: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM retired_secrets WHERE expires <= ?1")?
            .execute([to_i64(now)?])?;
        Ok(())
    }

    /// Records that the secret with digest `identity` was used up to
    /// `used_until` (Unix time), until `expires`, keeping the later of two
    /// records.
    pub fn retire_secret(&self, identity: &[u8], used_until: u64, expires: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO retired_secrets (identity, used_until, expires) VALUES (?1, ?2, ?3)
                 ON CONFLICT(identity) DO UPDATE SET
                     used_until = max(used_until, excluded.used_until),
                     expires = max(expires, excluded.expires)",
            )?
            .execute(params![identity, to_i64(used_until)?, to_i64(expires)?])?;
        Ok(())
    }

    /// Returns when the last record of a removed secret expires, if any.
    pub fn retired_expiry(&self) -> Result<Option<u64>, StoreError> {
        let expires: Option<i64> = self
            .conn
            .query_row("SELECT max(expires) FROM retired_secrets", [], |row| row.get(0))?;
        Ok(expires.map(|time| u64::try_from(time).unwrap_or(0)))
    }

    /// Forgets the failure counts of all names without an account.
    pub fn clear_unknown_failures(&self) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM unknown_failures", [])?;
        Ok(())
    }

    /// Unix time up to which a removed token with the secret digest
    /// `identity` was used, if its record has not expired at `now`.
    pub fn retired_until(&self, identity: &[u8], now: u64) -> Result<Option<u64>, StoreError> {
        let used_until: Option<i64> = self
            .conn
            .prepare_cached("SELECT used_until FROM retired_secrets WHERE identity = ?1 AND expires > ?2")?
            .query_row(params![identity, to_i64(now)?], |row| row.get(0))
            .optional()?;
        Ok(used_until.map(|time| u64::try_from(time).unwrap_or(0)))
    }

    pub fn remove_account(&self, user_id: i64) -> Result<u64, StoreError> {
        let changed = self.conn.execute("DELETE FROM users WHERE id = ?1", [user_id])?;
        Ok(changed as u64)
    }

    /// Names of all accounts, sorted.
    /// Returns account names in bytewise order: those after `after`, at
    /// most `limit` of them.
    pub fn account_names(&self, after: Option<&str>, limit: Option<u32>) -> Result<Vec<String>, StoreError> {
        // LIMIT -1 is no limit in SQLite. No account has an empty name
        // (`check_user_name`), so `name > ''` matches every account.
        let limit = limit.map_or(-1, i64::from);
        let mut statement = self
            .conn
            .prepare_cached("SELECT name FROM users WHERE name > ?1 ORDER BY name LIMIT ?2")?;
        let rows = statement.query_map(params![after.unwrap_or(""), limit], |row| row.get(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Numbers of accounts and tokens.
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        let users: i64 = self
            .conn
            .query_row("SELECT count(*) FROM users", [], |row| row.get(0))?;
        let tokens: i64 = self
            .conn
            .query_row("SELECT count(*) FROM tokens", [], |row| row.get(0))?;
        Ok((to_u64(users)?, to_u64(tokens)?))
    }
}

fn raw_token(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawToken> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn settings(counter: u64) -> TokenSettings {
        TokenSettings {
            kind: Kind::Hotp,
            algorithm: Algorithm::Sha1,
            digits: 6,
            period: 30,
            state: State {
                counter,
                last_step: None,
                drift: 0,
            },
            label: None,
        }
    }

    fn hotp_state(counter: u64) -> State {
        State {
            counter,
            last_step: None,
            drift: 0,
        }
    }

    /// Runs `work` in one committed transaction, as the engine does.
    fn batch<T>(store: &mut Store, work: impl FnOnce(Db<'_, '_>) -> T) -> T {
        let (tx, uses) = store.begin().unwrap();
        let result = work(Db {
            conn: &tx,
            uses,
            statements: None,
        });
        tx.commit().unwrap();
        uses.committed();
        result
    }

    fn enroll(store: &mut Store, user: &str, counter: u64) -> (i64, i64) {
        batch(store, |db| {
            let user_id = db.ensure_account(user).unwrap();
            let token_id = db.insert_token(user_id, &settings(counter), 100).unwrap();
            db.set_sealed(token_id, b"sealed", None).unwrap();
            (user_id, token_id)
        })
    }

    fn log_rows(store: &Store) -> i64 {
        store
            .conn
            .query_row("SELECT count(*) FROM token_uses", [], |row| row.get(0))
            .unwrap()
    }

    /// Version 1's `meta` and `users`, the first tables it created.
    const V1_FIRST_TABLES: &str = "
        CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
            failures INTEGER NOT NULL DEFAULT 0, locked_until INTEGER, backup_salt BLOB);";

    /// Creates a state folder with a database made by `sql`.
    fn old_database(sql: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::DirBuilder::new().mode(0o700).create(&state).unwrap();
        let conn = Connection::open(state.join(DB_FILE)).unwrap();
        conn.execute_batch(sql).unwrap();
        (dir, state)
    }

    /// Folds as a batch would at `at`.
    fn fold(store: &mut Store, at: Instant) {
        let (tx, uses) = store.begin().unwrap();
        uses.fold(&tx, at).unwrap();
        tx.commit().unwrap();
        uses.committed();
    }

    #[test]
    fn uri_path_percent_encodes_specials() {
        assert_eq!(
            uri_path(Path::new("/var/lib/free auth?#%\u{e9}/freeauth.db")),
            "/var/lib/free%20auth%3F%23%25%C3%A9/freeauth.db"
        );
    }

    #[test]
    fn repeated_failures_logged_once_a_minute() {
        let start = std::time::Instant::now();
        let at = |seconds| start + std::time::Duration::from_secs(seconds);
        let full = || Some("database or disk is full".to_owned());
        let failed = |unlogged| FailureLine::Failed {
            error: full().unwrap(),
            unlogged,
        };
        let mut failures = RepeatedFailure::default();
        assert_eq!(failures.note(None, at(0)), FailureLine::None);
        assert_eq!(failures.note(full(), at(1)), failed(0));
        for second in 2..61 {
            assert_eq!(failures.note(full(), at(second)), FailureLine::None);
        }
        assert_eq!(failures.note(full(), at(61)), failed(59));
        assert_eq!(failures.note(full(), at(62)), FailureLine::None);
        assert_eq!(failures.note(None, at(63)), FailureLine::Recovered { failures: 62 });
        assert_eq!(failures.note(None, at(64)), FailureLine::None);
        // Failing and succeeding by turns: still one line of each a minute.
        for second in 65..120 {
            failures.note(full(), at(second));
            failures.note(None, at(second));
        }
        assert_eq!(failures.note(full(), at(121)), failed(56));
        assert_eq!(failures.note(None, at(121)), FailureLine::Recovered { failures: 56 });
    }

    #[test]
    fn second_store_on_one_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = Store::open(&state).unwrap();
        let Err(err) = Store::open(&state) else {
            panic!("a second store opened the same folder");
        };
        assert!(err.to_string().contains("a running agent is using it"), "{err}");
        drop(first);
        assert!(Store::open(&state).is_ok(), "the lock ends with the first store");
    }

    #[test]
    fn store_locked_by_backup_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        drop(Store::open(&state).unwrap());
        // `backup` takes this lock to copy a database no agent has opened yet.
        let _backup_lock = lock_state_dir(&state).unwrap();
        let Err(err) = Store::open(&state) else {
            panic!("a store opened the folder during a backup");
        };
        assert!(err.to_string().contains("freeauthctl backup"), "{err}");
    }

    #[test]
    fn store_lock_survives_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let _first = Store::open(&state).unwrap();
        // A clean-up of the folder must not let a second store in.
        for entry in fs::read_dir(&state).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with(DB_FILE) {
                fs::remove_file(&path).unwrap();
            }
        }
        let Err(err) = Store::open(&state) else {
            panic!("a second store opened the folder after its other files were removed");
        };
        assert!(err.to_string().contains("a running agent is using it"), "{err}");
    }

    #[test]
    fn use_log_folds_a_use_into_its_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state")).unwrap();
        let (user_id, token_id) = enroll(&mut store, "alice", 5);

        let moved = batch(&mut store, |db| {
            db.advance_token(token_id, &hotp_state(5), &hotp_state(6), 200).unwrap()
        });
        assert!(moved);
        // The row is untouched; the state comes from the log.
        assert_eq!(store.db().stored_state(token_id).unwrap(), Some(hotp_state(5)));
        let token = &store.db().tokens(user_id).unwrap()[0];
        assert_eq!((token.state, token.last_used), (hotp_state(6), Some(200)));
        assert_eq!(log_rows(&store), 1);
        // The old state no longer moves the token: the one-use rule.
        let again = batch(&mut store, |db| {
            db.advance_token(token_id, &hotp_state(5), &hotp_state(6), 201).unwrap()
        });
        assert!(!again);

        let start = Instant::now();
        fold(&mut store, start);
        assert_eq!(store.db().stored_state(token_id).unwrap(), Some(hotp_state(6)));
        assert_eq!(store.uses.unfolded(), 0);
        // The use came after the first sweep began, so the second one
        // deletes its row.
        fold(&mut store, start + SWEEP_PERIOD);
        assert_eq!(log_rows(&store), 0);
        let token = &store.db().tokens(user_id).unwrap()[0];
        assert_eq!((token.state, token.last_used), (hotp_state(6), Some(200)));
    }

    #[test]
    fn use_log_replays_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut store = Store::open(&state).unwrap();
        let (user_id, token_id) = enroll(&mut store, "alice", 5);
        for counter in 5..8 {
            let moved = batch(&mut store, |db| {
                db.advance_token(token_id, &hotp_state(counter), &hotp_state(counter + 1), 300 + counter)
                    .unwrap()
            });
            assert!(moved);
        }
        drop(store);

        let mut store = Store::open(&state).unwrap();
        let token = &store.db().tokens(user_id).unwrap()[0];
        assert_eq!((token.state, token.last_used), (hotp_state(8), Some(307)));
        for stale in 5..8 {
            let moved = batch(&mut store, |db| {
                db.advance_token(token_id, &hotp_state(stale), &hotp_state(stale + 1), 400)
                    .unwrap()
            });
            assert!(!moved, "state {stale} moved the token again after a restart");
        }
    }

    #[test]
    fn sweep_passes_every_token_before_deleting() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut store = Store::open(&state).unwrap();
        let tokens: Vec<(i64, i64)> = (0..50).map(|i| enroll(&mut store, &format!("u{i}"), 0)).collect();
        for &(_, token_id) in &tokens {
            batch(&mut store, |db| {
                db.advance_token(token_id, &hotp_state(0), &hotp_state(1), 10).unwrap()
            });
        }

        // Many short folds, each passing a small range of ids, with uses
        // of tokens both behind and ahead of the sweep in between.
        let start = Instant::now();
        for round in 0..400u64 {
            fold(&mut store, start + SWEEP_PERIOD * u32::try_from(round).unwrap() / 100);
            let (_, token_id) = tokens[usize::try_from(round * 7).unwrap() % tokens.len()];
            let newest = store.uses.newest(token_id).map_or_else(
                || store.db().stored_state(token_id).unwrap().unwrap(),
                |used| used.state,
            );
            let next = hotp_state(newest.counter + 1);
            batch(&mut store, |db| {
                db.advance_token(token_id, &newest, &next, 20 + round).unwrap()
            });
        }

        let expected: Vec<State> = tokens
            .iter()
            .map(|&(user_id, _)| store.db().tokens(user_id).unwrap()[0].state)
            .collect();
        drop(store);

        // Whatever the sweep deleted, a restart reads the same states.
        let store = Store::open(&state).unwrap();
        let after: Vec<State> = tokens
            .iter()
            .map(|&(user_id, _)| store.db().tokens(user_id).unwrap()[0].state)
            .collect();
        assert_eq!(after, expected);
        // Four sweeps ran; only rows of the last two can be left.
        assert!(
            log_rows(&store) <= 200,
            "the log was not trimmed: {} rows",
            log_rows(&store)
        );
    }

    #[test]
    fn use_log_forgets_rolled_back_uses() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state")).unwrap();
        let (_, token_id) = enroll(&mut store, "alice", 5);
        let (tx, uses) = store.begin().unwrap();
        let db = Db {
            conn: &tx,
            uses,
            statements: None,
        };
        let mark = uses.mark();
        assert!(db.advance_token(token_id, &hotp_state(5), &hotp_state(6), 1).unwrap());
        uses.rollback_to(mark);
        assert_eq!(uses.newest(token_id), None);
        assert!(db.advance_token(token_id, &hotp_state(5), &hotp_state(7), 1).unwrap());
        drop(tx);
        uses.rolled_back();
        assert_eq!(uses.newest(token_id), None);
        assert_eq!(store.db().stored_state(token_id).unwrap(), Some(hotp_state(5)));
        assert_eq!(log_rows(&store), 0);
    }

    #[test]
    fn unfolded_keeps_ids_at_edges() {
        let used = |seq| Use {
            seq,
            state: hotp_state(1),
            used_at: 1,
            unconfirmed: false,
        };
        // Ids at chunk edges, the last chunked id, and ids outside the chunks.
        let ids = [0, 1, 63, 64, 1000, MAX_CHUNKED_ID - 1, MAX_CHUNKED_ID, i64::MAX, -3];

        let mut unfolded = Unfolded::default();
        for (seq, &id) in ids.iter().enumerate() {
            assert_eq!(unfolded.get(id), None);
            unfolded.insert(id, used(i64::try_from(seq).unwrap()));
        }
        for (seq, &id) in ids.iter().enumerate() {
            assert_eq!(
                unfolded.get(id).map(|u| u.seq),
                Some(i64::try_from(seq).unwrap()),
                "id {id}"
            );
        }
        for id in [2, 62, 65, 999, 1001, MAX_CHUNKED_ID - 2, MAX_CHUNKED_ID + 1, -2] {
            assert_eq!(unfolded.get(id), None, "id {id}");
        }
        assert_eq!(unfolded.len(), ids.len());
        assert_eq!(unfolded.last_id(), Some(i64::MAX));

        for &id in &ids {
            unfolded.remove(id);
            assert_eq!(unfolded.get(id), None, "id {id}");
        }
        assert!(unfolded
            .chunks
            .iter()
            .all(|chunk| chunk.present == 0 && chunk.uses.is_empty()));
        assert_eq!(unfolded.len(), 0);
        assert_eq!(unfolded.last_id(), None);

        // A removed id can come back.
        unfolded.insert(64, used(9));
        assert_eq!(unfolded.get(64).map(|u| u.seq), Some(9));
    }

    /// `advance_token` compares with the state `tokens_of` read only while
    /// no row has changed since; otherwise it reads the row again.
    #[test]
    fn advance_after_a_row_change_reads_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state")).unwrap();
        let (_, token_id) = enroll(&mut store, "alice", 5);
        let (_, other_id) = enroll(&mut store, "bob", 5);
        let account = store.db().account("alice").unwrap().unwrap();
        let set_counter = |conn: &Connection, id: i64, counter: i64| {
            conn.execute("UPDATE tokens SET counter = ?2 WHERE id = ?1", [id, counter])
                .unwrap();
        };

        // The row changes after the read: the old state no longer moves it.
        let (tx, uses) = store.begin().unwrap();
        let db = Db {
            conn: &tx,
            uses,
            statements: None,
        };
        assert_eq!(db.tokens_of(&account).unwrap()[0].state, hotp_state(5));
        set_counter(&tx, token_id, 9);
        assert!(!db.advance_token(token_id, &hotp_state(5), &hotp_state(6), 1).unwrap());
        assert!(db.advance_token(token_id, &hotp_state(9), &hotp_state(10), 1).unwrap());
        tx.commit().unwrap();
        uses.committed();

        // A savepoint rolls back the change that the read saw, and the
        // count of changes stays where it was. So the state read, 30, must
        // not move the token, whose row is back to 5.
        let (tx, uses) = store.begin().unwrap();
        let db = Db {
            conn: &tx,
            uses,
            statements: None,
        };
        tx.execute_batch("SAVEPOINT job").unwrap();
        let mark = uses.mark();
        set_counter(&tx, other_id, 30);
        let bob = db.account("bob").unwrap().unwrap();
        assert_eq!(db.tokens_of(&bob).unwrap()[0].state, hotp_state(30));
        tx.execute_batch("ROLLBACK TO job; RELEASE job").unwrap();
        uses.rollback_to(mark);
        assert!(!db.advance_token(other_id, &hotp_state(30), &hotp_state(31), 2).unwrap());
        assert!(db.advance_token(other_id, &hotp_state(5), &hotp_state(6), 2).unwrap());
    }

    #[test]
    fn batch_statements_match_cached_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state")).unwrap();
        let (_, token_id) = enroll(&mut store, "alice", 5);
        let (tx, uses) = store.begin().unwrap();
        let statements = BatchStatements::prepare(&tx).unwrap();
        let cached = Db {
            conn: &tx,
            uses,
            statements: None,
        };
        let prepared = Db {
            conn: &tx,
            uses,
            statements: Some(&statements),
        };

        let account = prepared.account("alice").unwrap().unwrap();
        assert_eq!(Some(&account), cached.account("alice").unwrap().as_ref());
        assert_eq!(prepared.account("bob").unwrap(), None);
        assert_eq!(
            prepared.tokens_of(&account).unwrap(),
            cached.tokens_of(&account).unwrap()
        );

        // Each statement runs again after a use, and the insert lands.
        assert!(prepared
            .advance_token(token_id, &hotp_state(5), &hotp_state(6), 1)
            .unwrap());
        assert!(prepared
            .advance_token(token_id, &hotp_state(6), &hotp_state(7), 2)
            .unwrap());
        assert_eq!(prepared.tokens_of(&account).unwrap()[0].state, hotp_state(7));
        drop(statements);
        tx.commit().unwrap();
        uses.committed();
        assert_eq!(log_rows(&store), 2);
    }

    /// A batch whose commit failed with an unknown outcome keeps its uses in
    /// memory. When the transaction in fact rolled back, so did the
    /// AUTOINCREMENT counter, and the next token enrolled gets the id of a
    /// token that never reached the disk, with that token's kept use.
    #[test]
    fn new_token_skips_lost_token_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state")).unwrap();
        enroll(&mut store, "alice", 5);

        // Enrols bob and accepts his code 0 in one batch whose commit fails
        // and rolls back. The engine then keeps the staged use.
        let (tx, uses) = store.begin().unwrap();
        let db = Db {
            conn: &tx,
            uses,
            statements: None,
        };
        let bob = db.ensure_account("bob").unwrap();
        let lost_id = db.insert_token(bob, &settings(0), 100).unwrap();
        assert!(db.advance_token(lost_id, &hotp_state(0), &hotp_state(1), 1).unwrap());
        drop(tx);
        uses.keep_staged();

        // An import then brings carol's token at counter 100, because codes
        // below that were used elsewhere.
        let (_, token_id) = enroll(&mut store, "carol", 100);
        let carol = store.db().account("carol").unwrap().unwrap();
        let state = store.db().tokens_of(&carol).unwrap()[0].state;
        assert_eq!(
            state,
            hotp_state(100),
            "token {token_id} (bob's lost token was {lost_id}) shows the kept use of another token"
        );
    }

    /// `Unfolded` agrees with a `BTreeMap` under any order of inserts and
    /// removals, for ids in chunks, outside them, and at chunk edges.
    #[test]
    fn unfolded_matches_random_model() {
        let used = |seq| Use {
            seq,
            state: hotp_state(1),
            used_at: 1,
            unconfirmed: false,
        };
        let ids = [
            i64::MIN,
            -65,
            -64,
            -1,
            0,
            1,
            63,
            64,
            65,
            127,
            128,
            4095,
            4096,
            MAX_CHUNKED_ID - 65,
            MAX_CHUNKED_ID - 64,
            MAX_CHUNKED_ID - 1,
            MAX_CHUNKED_ID,
            MAX_CHUNKED_ID + 63,
            i64::MAX,
        ];
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut unfolded = Unfolded::default();
        let mut model: BTreeMap<i64, i64> = BTreeMap::new();
        for seq in 0..20_000i64 {
            let id = ids[usize::try_from(rng.below(ids.len() as u64)).unwrap()];
            if rng.below(2) == 0 {
                unfolded.insert(id, used(seq));
                model.insert(id, seq);
            } else {
                unfolded.remove(id);
                model.remove(&id);
            }
            for &probe in &ids {
                assert_eq!(
                    unfolded.get(probe).map(|u| u.seq),
                    model.get(&probe).copied(),
                    "id {probe} at {seq}"
                );
            }
            assert_eq!(unfolded.len(), model.len());
            assert_eq!(unfolded.last_id(), model.keys().next_back().copied());
            // Starts at an id, one below it or one above it.
            let first = ids[usize::try_from(rng.below(ids.len() as u64)).unwrap()].saturating_add(seq % 3 - 1);
            let listed: Vec<(i64, i64)> = unfolded.starting_at(first).map(|(id, used)| (id, used.seq)).collect();
            let expected: Vec<(i64, i64)> = model.range(first..).map(|(&id, &seq)| (id, seq)).collect();
            assert_eq!(listed, expected, "ids from {first} at {seq}");
        }
    }

    #[test]
    fn kept_use_survives_fold_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut store = Store::open(&state).unwrap();
        let (user_id, token_id) = enroll(&mut store, "alice", 5);
        batch(&mut store, |db| {
            db.advance_token(token_id, &hotp_state(5), &hotp_state(6), 1).unwrap()
        });

        // A batch whose outcome is unknown: its use stays in memory only.
        let (tx, uses) = store.begin().unwrap();
        let db = Db {
            conn: &tx,
            uses,
            statements: None,
        };
        assert!(db.advance_token(token_id, &hotp_state(6), &hotp_state(7), 2).unwrap());
        drop(tx);
        uses.keep_staged();

        fold(&mut store, Instant::now());
        assert_eq!(store.db().stored_state(token_id).unwrap(), Some(hotp_state(7)));
        drop(store);
        let store = Store::open(&state).unwrap();
        assert_eq!(store.db().tokens(user_id).unwrap()[0].state, hotp_state(7));
    }

    #[test]
    fn token_ids_follow_enrolment_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state")).unwrap();
        let (user_id, first) = enroll(&mut store, "alice", 0);
        let (_, second) = enroll(&mut store, "alice", 0);
        let account = store.db().account("alice").unwrap().unwrap();
        assert_eq!(account.token_ids, vec![first, second]);
        assert_eq!(
            store.db().tokens_of(&account).unwrap(),
            store.db().tokens(user_id).unwrap()
        );
        batch(&mut store, |db| db.remove_token(user_id, first).unwrap());
        let account = store.db().account("alice").unwrap().unwrap();
        assert_eq!(account.token_ids, vec![second]);
        assert_eq!(store.db().tokens_of(&account).unwrap().len(), 1);
    }

    #[test]
    fn backup_copies_version_1_database() {
        let sql = "
             CREATE TABLE tokens (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL,
                 kind TEXT NOT NULL, counter INTEGER NOT NULL, sealed_seed BLOB NOT NULL);
             INSERT INTO meta VALUES ('schema_version', CAST('1' AS BLOB));
             INSERT INTO users (id, name) VALUES (7, 'alice');
             INSERT INTO tokens (id, user_id, kind, counter, sealed_seed) VALUES (3, 7, 'hotp', 4, x'00');";
        let (dir, state) = old_database(&format!("{V1_FIRST_TABLES}{sql}"));
        let dest = dir.path().join("copy.db");

        let summary = backup(&state, &dest).unwrap();
        assert_eq!((summary.users, summary.tokens), (1, 1));
        let copy = Connection::open(&dest).unwrap();
        let version: Vec<u8> = copy
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(version, b"1", "the copy is the database as it was, not upgraded");
    }

    #[test]
    fn schema_version_1_is_upgraded() {
        // The other tables of version 1, before `token_uses` and `token_ids`.
        let rest = "
             CREATE TABLE tokens (id INTEGER PRIMARY KEY AUTOINCREMENT,
                 user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                 kind TEXT NOT NULL, algorithm TEXT NOT NULL, digits INTEGER NOT NULL,
                 period INTEGER NOT NULL, counter INTEGER NOT NULL, last_step INTEGER,
                 drift INTEGER NOT NULL DEFAULT 0, enabled INTEGER NOT NULL DEFAULT 1, label TEXT,
                 created INTEGER NOT NULL, last_used INTEGER, sealed_seed BLOB NOT NULL, sealed_pin BLOB);
             CREATE INDEX tokens_by_user ON tokens(user_id);
             CREATE TABLE backup_codes (id INTEGER PRIMARY KEY,
                 user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                 hash BLOB NOT NULL, used_at INTEGER);
             CREATE INDEX backup_codes_by_user ON backup_codes(user_id);
             INSERT INTO meta VALUES ('schema_version', CAST('1' AS BLOB));
             INSERT INTO users (id, name) VALUES (7, 'alice'), (8, 'bob');
             INSERT INTO tokens (id, user_id, kind, algorithm, digits, period, counter, created, sealed_seed)
                 VALUES (3, 7, 'hotp', 'sha1', 6, 30, 4, 1, x'00'),
                        (9, 7, 'hotp', 'sha1', 6, 30, 0, 1, x'00');";
        let (_dir, state) = old_database(&format!("{V1_FIRST_TABLES}{rest}"));

        let store = Store::open(&state).unwrap();
        assert_eq!(store.db().meta("schema_version").unwrap(), Some(b"2".to_vec()));
        let alice = store.db().account("alice").unwrap().unwrap();
        assert_eq!(alice.token_ids, vec![3, 9]);
        assert_eq!(store.db().tokens_of(&alice).unwrap()[0].state, hotp_state(4));
        assert!(store.db().account("bob").unwrap().unwrap().token_ids.is_empty());
    }

    /// A small xorshift generator, so that a failing run can be repeated.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    /// Newest state of every token of `tokens`, as the engine reads it.
    fn states_seen(store: &Store, tokens: &BTreeMap<i64, (i64, u64)>) -> BTreeMap<i64, u64> {
        let mut seen = BTreeMap::new();
        for &(user_id, _) in tokens.values() {
            for token in store.db().tokens(user_id).unwrap() {
                seen.insert(token.id, token.state.counter);
            }
        }
        seen
    }

    /// Reopens the store, as after a crash, and checks every token against
    /// the model. A use kept in memory after a failed batch may be lost,
    /// because no code was accepted with it, so a token may come back
    /// anywhere from its last accepted counter (`floor`) to the counter the
    /// engine saw (`model`). Both then move to what the disk holds.
    fn reopen_and_check(
        store: Store,
        state: &Path,
        model: &mut BTreeMap<i64, (i64, u64)>,
        floor: &mut BTreeMap<i64, u64>,
        step: u64,
    ) -> Store {
        drop(store);
        let store = Store::open(state).unwrap();
        let seen = states_seen(&store, model);
        for (token_id, (_, counter)) in model.iter_mut() {
            let now = seen[token_id];
            let accepted = floor[token_id];
            assert!(
                accepted <= now && now <= *counter,
                "step {step}: token {token_id} reopened at {now}, outside {accepted} to {counter}"
            );
            *counter = now;
            floor.insert(*token_id, now);
        }
        store
    }

    #[test]
    fn use_log_survives_rollbacks_removals_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut store = Store::open(&state).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Token id to (user id, counter the engine must see).
        let mut model: BTreeMap<i64, (i64, u64)> = BTreeMap::new();
        // Token id to the counter of its last accepted code.
        let mut floor: BTreeMap<i64, u64> = BTreeMap::new();
        let mut clock = Instant::now();
        let mut next_user = 0;
        for step in 0..3000u64 {
            match rng.below(100) {
                // Enrols a token, sometimes for a user that had one removed.
                0..=4 => {
                    let name = format!("u{}", rng.below(next_user + 1));
                    next_user += 1;
                    let (user_id, token_id) = enroll(&mut store, &name, rng.below(50));
                    let counter = store.db().stored_state(token_id).unwrap().unwrap().counter;
                    model.insert(token_id, (user_id, counter));
                    floor.insert(token_id, counter);
                }
                5..=6 if !model.is_empty() => {
                    let index = usize::try_from(rng.below(model.len() as u64)).unwrap();
                    let (&token_id, &(user_id, _)) = model.iter().nth(index).unwrap();
                    batch(&mut store, |db| db.remove_token(user_id, token_id).unwrap());
                    model.remove(&token_id);
                    floor.remove(&token_id);
                }
                // A batch of accepts, each in a savepoint that may roll back.
                // The batch commits, or rolls back. Or it dies after its
                // commit but before the use log learns of it, as with
                // SIGKILL. Or it fails with an unknown outcome, with or
                // without its commit on disk, and keeps its uses in memory
                // as the engine does then.
                7..=69 if !model.is_empty() => {
                    let ending = rng.below(10);
                    let mut changes = Vec::new();
                    {
                        let (tx, uses) = store.begin().unwrap();
                        let db = Db {
                            conn: &tx,
                            uses,
                            statements: None,
                        };
                        let mut seen: BTreeMap<i64, u64> = BTreeMap::new();
                        for _ in 0..rng.below(6) + 1 {
                            let index = usize::try_from(rng.below(model.len() as u64)).unwrap();
                            let (&token_id, &(_, counter)) = model.iter().nth(index).unwrap();
                            let from = *seen.get(&token_id).unwrap_or(&counter);
                            let to = from + 1 + rng.below(3);

                            let mark = uses.mark();
                            tx.execute_batch("SAVEPOINT job").unwrap();
                            let moved = db
                                .advance_token(token_id, &hotp_state(from), &hotp_state(to), step)
                                .unwrap();
                            assert!(moved, "step {step}: token {token_id} did not move from {from}");
                            // A stale state never moves the token.
                            if from > 0 {
                                let stale = db
                                    .advance_token(token_id, &hotp_state(from - 1), &hotp_state(to + 1), step)
                                    .unwrap();
                                assert!(!stale, "step {step}: token {token_id} moved from a stale state");
                            }

                            if rng.below(4) == 0 {
                                tx.execute_batch("ROLLBACK TO job; RELEASE job").unwrap();
                                uses.rollback_to(mark);
                            } else {
                                tx.execute_batch("RELEASE job").unwrap();
                                seen.insert(token_id, to);
                                changes.push((token_id, to));
                            }
                        }

                        clock += Duration::from_millis(rng.below(3000));
                        uses.fold(&tx, clock).unwrap();
                        match ending {
                            0 => {
                                drop(tx);
                                uses.rolled_back();
                                changes.clear();
                            }
                            2 => {
                                drop(tx);
                                uses.keep_staged();
                            }
                            3 => {
                                tx.commit().unwrap();
                                uses.keep_staged();
                            }
                            _ => {
                                tx.commit().unwrap();
                                if ending != 1 {
                                    uses.committed();
                                }
                            }
                        }
                    }

                    for (token_id, to) in changes {
                        if let Some(entry) = model.get_mut(&token_id) {
                            entry.1 = to;
                        }
                        // A failed batch sent no accept.
                        if !matches!(ending, 2 | 3) {
                            floor.insert(token_id, to);
                        }
                    }
                    if ending == 1 {
                        store = reopen_and_check(store, &state, &mut model, &mut floor, step);
                    }
                }
                70..=97 => {
                    clock += Duration::from_millis(rng.below(4000));
                    fold(&mut store, clock);
                }
                _ => {
                    store = reopen_and_check(store, &state, &mut model, &mut floor, step);
                }
            }

            let expected: BTreeMap<i64, u64> = model.iter().map(|(&id, &(_, counter))| (id, counter)).collect();
            assert_eq!(states_seen(&store, &model), expected, "step {step}");
        }
        reopen_and_check(store, &state, &mut model, &mut floor, 3000);
    }

    /// A use kept in memory after a failed batch is folded in a later batch
    /// that has logged a newer use of the same token. After a restart the
    /// token must be at the newer state, so that the newer code cannot be
    /// accepted again.
    #[test]
    fn kept_use_folded_beside_newer_use() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut store = Store::open(&state).unwrap();
        let (user_id, token_id) = enroll(&mut store, "alice", 5);

        // A batch whose commit failed: its use of counter 6 stays in memory.
        {
            let (tx, uses) = store.begin().unwrap();
            let db = Db {
                conn: &tx,
                uses,
                statements: None,
            };
            assert!(db.advance_token(token_id, &hotp_state(5), &hotp_state(6), 1).unwrap());
            drop(tx);
            uses.keep_staged();
        }

        // The next batch accepts counter 7, then folds, as the engine does
        // at the end of each batch.
        {
            let (tx, uses) = store.begin().unwrap();
            let db = Db {
                conn: &tx,
                uses,
                statements: None,
            };
            assert!(db.advance_token(token_id, &hotp_state(6), &hotp_state(7), 2).unwrap());
            uses.fold(&tx, Instant::now()).unwrap();
            tx.commit().unwrap();
            uses.committed();
        }
        assert_eq!(store.db().tokens(user_id).unwrap()[0].state, hotp_state(7));

        drop(store);
        let mut store = Store::open(&state).unwrap();
        assert_eq!(store.db().tokens(user_id).unwrap()[0].state, hotp_state(7));
        let accepted_again = batch(&mut store, |db| {
            db.advance_token(token_id, &hotp_state(6), &hotp_state(7), 3).unwrap()
        });
        assert!(
            !accepted_again,
            "counter 7 was accepted a second time after the restart"
        );
    }

    /// The other tables of the first schema of version 1, whose `tokens.id`
    /// had no AUTOINCREMENT, with one user, alice (id 7).
    const V1_EARLY_TOKENS: &str = "
             CREATE TABLE tokens (id INTEGER PRIMARY KEY,
                 user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                 kind TEXT NOT NULL, algorithm TEXT NOT NULL, digits INTEGER NOT NULL,
                 period INTEGER NOT NULL, counter INTEGER NOT NULL, last_step INTEGER,
                 drift INTEGER NOT NULL DEFAULT 0, enabled INTEGER NOT NULL DEFAULT 1, label TEXT,
                 created INTEGER NOT NULL, last_used INTEGER, sealed_seed BLOB NOT NULL, sealed_pin BLOB);
             CREATE INDEX tokens_by_user ON tokens(user_id);
             CREATE TABLE backup_codes (id INTEGER PRIMARY KEY,
                 user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                 hash BLOB NOT NULL, used_at INTEGER);
             CREATE INDEX backup_codes_by_user ON backup_codes(user_id);
             INSERT INTO meta VALUES ('schema_version', CAST('1' AS BLOB));
             INSERT INTO users (id, name) VALUES (7, 'alice');
";

    /// The first schema of version 1 made `tokens.id` a plain INTEGER
    /// PRIMARY KEY. Opening such a database rebuilds the table with
    /// AUTOINCREMENT and keeps its rows, so that enrolment works and a new
    /// token never gets the id of an old one.
    #[test]
    fn tokens_without_autoincrement_rebuilt() {
        let rows = "INSERT INTO tokens (id, user_id, kind, algorithm, digits, period, counter, created, sealed_seed)
                 VALUES (3, 7, 'hotp', 'sha1', 6, 30, 4, 1, x'00');";
        let (_dir, state) = old_database(&format!("{V1_FIRST_TABLES}{V1_EARLY_TOKENS}{rows}"));

        let mut store = Store::open(&state).unwrap();
        let alice = store.db().account("alice").unwrap().unwrap();
        assert_eq!(alice.token_ids, vec![3]);
        assert_eq!(store.db().tokens_of(&alice).unwrap()[0].state, hotp_state(4));
        let (_, token_id) = enroll(&mut store, "bob", 0);
        assert_eq!(token_id, 4);
        batch(&mut store, |db| {
            db.remove_token(db.account("bob").unwrap().unwrap().id, token_id)
                .unwrap()
        });
        let (_, next_id) = enroll(&mut store, "carol", 0);
        assert_eq!(next_id, 5, "the id of a removed token was given again");
    }

    /// A token row whose user was deleted outside the agent, with foreign
    /// keys off, is dropped by the rebuild instead of stopping every start.
    #[test]
    fn rebuild_drops_token_without_user() {
        let rows = "INSERT INTO tokens (id, user_id, kind, algorithm, digits, period, counter, created, sealed_seed)
                 VALUES (3, 7, 'hotp', 'sha1', 6, 30, 4, 1, x'00'),
                        (5, 8, 'hotp', 'sha1', 6, 30, 0, 1, x'00');";
        let (_dir, state) = old_database(&format!(
            "PRAGMA foreign_keys = OFF;{V1_FIRST_TABLES}{V1_EARLY_TOKENS}{rows}"
        ));

        let mut store = Store::open(&state).unwrap();
        let alice = store.db().account("alice").unwrap().unwrap();
        assert_eq!(store.db().tokens_of(&alice).unwrap()[0].state, hotp_state(4));
        let (_, token_id) = enroll(&mut store, "bob", 0);
        assert_eq!(token_id, 6, "the dropped row's id is not given again");
    }

    /// A version edited in the sqlite3 shell is read as text or an integer,
    /// and one of another type is a clear error.
    #[test]
    fn schema_version_of_any_type() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        drop(Store::open(&state).unwrap());
        let conn = Connection::open(state.join(DB_FILE)).unwrap();
        for value in ["'2'", "2"] {
            conn.execute_batch(&format!("UPDATE meta SET value = {value} WHERE key = 'schema_version'"))
                .unwrap();
            assert!(Store::open(&state).is_ok(), "version {value} was not read");
        }
        for value in ["2.5", "'two'", "'0'"] {
            conn.execute_batch(&format!("UPDATE meta SET value = {value} WHERE key = 'schema_version'"))
                .unwrap();
            let Err(err) = Store::open(&state) else {
                panic!("version {value} was accepted");
            };
            let message = err.to_string();
            assert!(message.contains("schema_version in table meta is "), "{message}");
            assert!(message.contains(", expected 2"), "{message}");
        }
    }

    /// A database of a newer schema is refused before anything in it changes.
    #[test]
    fn newer_schema_refused_untouched() {
        let rest = "
             CREATE TABLE retired_tokens (id INTEGER PRIMARY KEY);
             INSERT INTO meta VALUES ('schema_version', CAST('99' AS BLOB));";
        let (_dir, state) = old_database(&format!("{V1_FIRST_TABLES}{rest}"));

        let opened = Store::open(&state);
        assert!(
            matches!(opened, Err(StoreError::Corrupt { .. })),
            "a newer database was opened"
        );
        let conn = Connection::open(state.join(DB_FILE)).unwrap();
        let kept: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'retired_tokens'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(kept, 1, "the newer database lost a table");
        let added: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'token_uses'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(added, 0, "a table was added to the newer database");
    }

    #[test]
    fn version_1_database_without_version_row_opens() {
        // A version 1 agent created its tables before it wrote
        // `schema_version`, so one killed in between left this behind.
        let (_dir, state) = old_database(V1_FIRST_TABLES);

        let opened = Store::open(&state);
        let error = opened.as_ref().err().map(ToString::to_string);
        drop(opened);

        // Whatever the open did, a database marked version 2 has the column
        // that version 2 reads.
        let conn = Connection::open(state.join(DB_FILE)).unwrap();
        let version: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |row| {
                row.get(0)
            })
            .optional()
            .unwrap();
        let columns: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('users') WHERE name = 'token_ids'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        if version.as_deref() == Some(b"2".as_slice()) {
            assert_eq!(columns, 1, "marked version 2 without users.token_ids");
        }
        assert_eq!(error, None, "open failed");
    }
}
