//! The engine: one thread that owns the database and makes every decision.
//!
//! Requests arrive on a channel. The thread takes all that are waiting (up to
//! `max_batch`), runs each in its own savepoint of one transaction, commits
//! once, and only then sends the replies. So an "accepted" is never sent for
//! a state change that is not yet on disk, many verifications share one
//! fsync, and no two requests can race on a token: they run one after the
//! other on this thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use freeauth_otp::{Clock, Code, Kind, Matched, Secret, State, Window};
use freeauth_proto::{ErrorKind, Response, SecretString};
use rusqlite::Transaction;
use tokio::sync::{mpsc, oneshot};

use crate::admin::AdminOp;
use crate::config::{Lockout, Windows};
use crate::keys::{new_key_path, Field, KeyError, SeedCipher};
use crate::policy::{FailureTable, Failures, Policy, SourceFailures};
use crate::store::{
    Account, BatchStatements, Db, FailureLine, RepeatedFailure, Store, StoreError, TokenRow, UseLog, WalSync,
};

/// Settings the engine reads; replaced on reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub windows: Windows,
    pub lockout: Lockout,
    pub prompt: String,
    pub max_batch: usize,
}

/// Counters shown by `freeauthctl status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub open_connections: AtomicU64,
    /// Requests received and not answered yet, for a clean shutdown.
    pub in_flight: AtomicU64,
}

/// A request for the engine thread.
pub enum Job {
    Lookup {
        user: String,
        reply: oneshot::Sender<Result<Lookup, EngineError>>,
    },
    Verify {
        user: String,
        code: SecretString,
        /// Whether `code` is a text whose end is the code (`forward_pass`),
        /// as [`code_part`] describes.
        tail: bool,
        /// The source of the attempt, set only for trusted front ends.
        /// Failures are counted for it too.
        source: Option<String>,
        reply: oneshot::Sender<Result<Verdict, EngineError>>,
    },
    /// The second half of a backup-code check: which stored hash matched.
    BackupResult {
        user: String,
        matched: BackupCheck,
        source: Option<String>,
        reply: oneshot::Sender<Result<Verdict, EngineError>>,
    },
    Admin {
        op: AdminOp,
        reply: oneshot::Sender<Response>,
    },
    Reload {
        settings: Settings,
    },
    /// Runs an empty batch, so that the use log is folded while idle.
    Maintain,
}

/// Account facts a local caller may learn before it prompts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub enrolled: bool,
    pub locked: bool,
    pub prompt: String,
    pub code_lengths: Vec<u8>,
    /// The account has tokens, all disabled.
    pub disabled: bool,
    /// An enabled token takes hex codes (Mobile-OTP).
    pub hex_codes: bool,
}

/// The engine's decision on a code, with the reason for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: Reason,
    /// Consecutive failures after this attempt.
    pub failures: u32,
    /// How long after the request arrived the reply may be sent.
    pub delay: Duration,
    /// Whether the attempt added to the failure count of its account or
    /// name. An attempt rejected because of a lock did not, because no code
    /// was checked.
    pub counted: bool,
    /// Length of the accepted code, so a caller that sent a text ending in
    /// the code can tell where the code begins.
    pub code_length: Option<u8>,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected,
    Locked,
    NoToken,
    /// No token matched but the code may be a backup code: the caller hashes
    /// it with `salt` off this thread and sends a [`Job::BackupResult`].
    CheckBackup {
        salt: Vec<u8>,
        hashes: Vec<(i64, Vec<u8>)>,
    },
}

/// Result of hashing a typed backup code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupCheck {
    Matched(BackupMatch),
    NoMatch,
    /// Too many checks waited for the hash, so this one did not run.
    NotRun,
}

/// The stored backup code a typed one matched: its row and its hash. The
/// hash makes sure the row is still that code when the check finishes: a
/// new set of codes, or a new account of the same name, may reuse the id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupMatch {
    pub id: i64,
    pub hash: Vec<u8>,
}

/// Why, for the log. Never sent to a remote party.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    AcceptedToken {
        token: i64,
        offset: i64,
    },
    AcceptedBackupCode,
    UnknownUser,
    NoActiveToken,
    Locked,
    SourceLocked,
    WrongCode,
    /// A wrong code that is the token's code of a time step `offset` steps
    /// of `period` seconds away from the server's, outside the window: the
    /// token's clock is probably off.
    WrongCodeClock {
        token: i64,
        offset: i64,
        period: u32,
    },
    ReusedCode,
    MalformedCode,
    BackupCodeNeeded,
    BackupCheckBusy,
}

impl Reason {
    /// Short phrase for log lines.
    pub fn describe(&self) -> String {
        match self {
            Reason::AcceptedToken { token, offset } => format!("code of token {token} matched at offset {offset}"),
            Reason::AcceptedBackupCode => "backup code used".into(),
            Reason::UnknownUser => "unknown user".into(),
            Reason::NoActiveToken => "no enabled token".into(),
            Reason::Locked => "account locked".into(),
            Reason::SourceLocked => "source locked".into(),
            Reason::WrongCode => "wrong code".into(),
            Reason::WrongCodeClock { token, offset, period } => {
                let seconds = offset.unsigned_abs().saturating_mul(u64::from(*period));
                let side = if *offset > 0 { "ahead of" } else { "behind" };
                format!(
                    "wrong code, but it is the code of token {token} for a clock {seconds} s {side} this host's \
                     (time step offset {offset}): check the token's clock, or run freeauthctl resync"
                )
            }
            Reason::ReusedCode => "code already used".into(),
            Reason::MalformedCode => "malformed code".into(),
            Reason::BackupCodeNeeded => "checking backup codes".into(),
            Reason::BackupCheckBusy => "backup code not checked: too many backup-code checks waiting".into(),
        }
    }
}

/// The engine could not decide because storage failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineError {
    pub message: String,
}

impl From<StoreError> for EngineError {
    fn from(err: StoreError) -> Self {
        EngineError {
            message: err.to_string(),
        }
    }
}

enum Pending {
    Lookup(
        oneshot::Sender<Result<Lookup, EngineError>>,
        Result<Lookup, EngineError>,
    ),
    Verdict(
        oneshot::Sender<Result<Verdict, EngineError>>,
        Result<Verdict, EngineError>,
    ),
    Response(oneshot::Sender<Response>, Response),
}

impl Pending {
    fn send(self) {
        // A closed receiver means the client went away; nothing to do.
        let _ = match self {
            Pending::Lookup(reply, value) => reply.send(value).map_err(drop),
            Pending::Verdict(reply, value) => reply.send(value).map_err(drop),
            Pending::Response(reply, value) => reply.send(value).map_err(drop),
        };
    }

    fn fail(self, error: &EngineError) {
        let _ = match self {
            Pending::Lookup(reply, _) => reply.send(Err(error.clone())).map_err(drop),
            Pending::Verdict(reply, _) => reply.send(Err(error.clone())).map_err(drop),
            Pending::Response(reply, _) => reply.send(internal_error()).map_err(drop),
        };
    }
}

/// Response for an admin request whose change could not be stored.
pub fn internal_error() -> Response {
    Response::Error {
        kind: ErrorKind::Internal,
        message: "the agent could not store the change; see its log".into(),
    }
}

/// Owner of the database and the seed key.
pub struct Engine {
    pub(crate) store: Store,
    pub(crate) cipher: SeedCipher,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: Settings,
    pub(crate) counts: MemoryCounts,
    /// Failed commits in a row, for the log.
    commit_failures: RepeatedFailure,
    /// Path of the seed key, whose `.new` file a rekey reads.
    key_file: Option<std::path::PathBuf>,
}

/// Failure counts the engine keeps in memory only.
#[derive(Debug, Default)]
pub(crate) struct MemoryCounts {
    /// User names that have no account.
    pub(crate) unknown: FailureTable,
    /// Sources of attempts, over all accounts.
    pub(crate) sources: FailureTable<SourceFailures>,
    /// When sources without a count or a lock were last dropped.
    pub(crate) sources_pruned_at: u64,
}

/// Seconds between two prunings of the source table.
const SOURCE_PRUNE_INTERVAL: u64 = 60;

/// How far from the server's time a rejected code of a time-based token is
/// searched, in seconds, to tell a token's wrong clock from a wrong code in
/// the log.
const CLOCK_HINT_SECONDS: u64 = 900;

/// Maximum time steps searched on each side for that hint, so that a
/// token with a short period does not cost thousands of HMACs per
/// rejection.
const CLOCK_HINT_MAX_STEPS: u64 = 90;

/// Orders the reasons a rejected code can get from one token, so that the
/// log keeps the most telling one of an account's tokens.
fn rejection_rank(reason: Reason) -> u8 {
    match reason {
        Reason::ReusedCode => 3,
        Reason::WrongCodeClock { .. } => 2,
        Reason::WrongCode => 1,
        _ => 0,
    }
}

impl MemoryCounts {
    /// Drops the sources whose count has decayed to 0 and that have no lock
    /// in force, at most once per [`SOURCE_PRUNE_INTERVAL`].
    fn prune_sources(&mut self, policy: &Policy, now: u64) {
        if now < self.sources_pruned_at.saturating_add(SOURCE_PRUNE_INTERVAL) {
            return;
        }
        self.sources_pruned_at = now;
        self.sources.retain(|source| {
            let current = policy.source_current(*source, now);
            current.count > 0 || current.is_locked(now)
        });
    }
}

impl Engine {
    pub fn new(store: Store, cipher: SeedCipher, clock: Arc<dyn Clock>, settings: Settings) -> Engine {
        let counts = MemoryCounts {
            unknown: load_unknown(store.db()),
            ..MemoryCounts::default()
        };
        Engine {
            store,
            cipher,
            clock,
            settings,
            counts,
            commit_failures: RepeatedFailure::default(),
            key_file: None,
        }
    }

    /// Sets the path of the seed key, which a rekey replaces.
    pub fn with_key_file(mut self, path: &std::path::Path) -> Engine {
        self.key_file = Some(path.to_owned());
        self
    }

    /// Seals every seed and PIN again under the key in the seed key's
    /// `.new` file, in one transaction, and syncs it. From then on the
    /// engine uses the new key, and its digest key. The failure counts of
    /// names without an account start again, and the old digest key stays
    /// only while records of removed secrets need it. Verifications wait
    /// meanwhile.
    pub fn rekey(&mut self) -> Response {
        let invalid = |message: String| {
            tracing::warn!(error = %message, "rekey rejected; the database stays sealed under the current key");
            Response::Error {
                kind: ErrorKind::Invalid,
                message,
            }
        };

        let Some(key_path) = self.key_file.as_deref() else {
            return invalid("this agent was started without a seed key path".into());
        };
        let new_path = new_key_path(key_path);

        let mut new = match SeedCipher::load(&new_path) {
            Ok(new) => new,
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // Most likely freeauthctl wrote its file next to the seed key
                // of another configuration than this agent's.
                let absolute_path = std::path::absolute(&new_path).unwrap_or(new_path);
                return invalid(format!(
                    "the new key {} is missing; run freeauthctl with the configuration file that this agent was started with",
                    absolute_path.display()
                ));
            }
            Err(err) => return invalid(format!("cannot use the new key: {err}")),
        };
        // A copy of the current key would change nothing.
        if let Ok(Some(check)) = self.store.db().meta("key_check") {
            if new.fits(&check) {
                return invalid(format!(
                    "{} contains the current key; remove it and let freeauthctl rekey create a new one",
                    new_path.display()
                ));
            }
        }

        // The records of removed secrets keep the digests of the current
        // key, so its digest key stays until the last of them expires.
        let now = self.clock.unix_time();
        match self.store.db().retired_expiry() {
            Ok(until) => new.inherit_digest_keys(&self.cipher, until, now),
            Err(err) => {
                tracing::error!(error = %err, "rekey failed; the database stays sealed under the current key");
                return internal_error();
            }
        }

        let started = std::time::Instant::now();
        let (cipher, store) = (&self.cipher, &mut self.store);
        // A rekey stages no token use, so the use log needs no update.
        let result = (|| -> Result<u64, RekeyError> {
            let (tx, log) = store.begin()?;
            let db = Db {
                conn: &tx,
                uses: log,
                statements: None,
            };
            let mut tokens = 0u64;
            let mut after = 0;
            loop {
                let rows = db.sealed_after(after, 1000)?;
                let Some(last) = rows.last() else {
                    break;
                };
                after = last.0;
                for (id, seed, pin) in rows {
                    let seed = reseal(cipher, &new, id, Field::Seed, &seed)?;
                    let pin = pin.map(|pin| reseal(cipher, &new, id, Field::Pin, &pin)).transpose()?;
                    db.set_sealed(id, &seed, pin.as_deref())?;
                    tokens += 1;
                }
            }
            db.set_meta("key_check", &new.seal_key_check()?)?;
            match new.seal_previous_digest_keys()? {
                Some(sealed) => db.set_meta("previous_digest_keys", &sealed)?,
                None => db.delete_meta("previous_digest_keys")?,
            }
            // Their digests cannot be made again under the new key.
            db.clear_unknown_failures()?;
            tx.commit()?;
            Ok(tokens)
        })();

        let tokens = match result {
            Ok(tokens) => tokens,
            Err(err) => {
                tracing::error!(error = %err, "rekey failed; the database stays sealed under the current key");
                return match err {
                    RekeyError::Unreadable(_) => Response::Error {
                        kind: ErrorKind::Invalid,
                        message: err.to_string(),
                    },
                    _ => internal_error(),
                };
            }
        };

        if let Err(err) = self.store.sync() {
            tracing::error!(error = %err, "cannot sync the rekeyed database to disk");
            stop_after_failed_sync();
        }
        self.cipher = new;
        self.counts.unknown = FailureTable::default();
        tracing::info!(
            tokens,
            key = %new_path.display(),
            milliseconds = started.elapsed().as_millis() as u64,
            "rekey: every seed and PIN is sealed under the new key"
        );
        Response::Rekeyed { tokens }
    }

    /// Runs `batch` in one transaction and replies once it is committed and
    /// synced to disk.
    pub fn run_batch(&mut self, batch: Vec<Job>) {
        let (pending, wrote) = self.decide(batch);
        if wrote {
            self.sync_and_reply(pending);
        } else {
            pending.into_iter().for_each(Pending::send);
        }
    }

    fn sync_and_reply(&mut self, pending: Vec<Pending>) {
        match self.store.sync() {
            Ok(()) => pending.into_iter().for_each(Pending::send),
            Err(err) => {
                fail_unsynced(pending, &err);
                stop_after_failed_sync();
            }
        }
    }

    /// Runs `batch` in one transaction and commits it. Returns the replies
    /// to send once the commit is on disk, and whether its requests wrote
    /// to the database. A fold of the use log alone does not count. When
    /// the commit fails, the replies are errors, sent here, and the list is
    /// empty.
    fn decide(&mut self, batch: Vec<Job>) -> (Vec<Pending>, bool) {
        self.decide_batch(batch, true)
    }

    /// Like [`Engine::decide`]; without `fold` the use log is not folded,
    /// so a batch of lookups writes nothing.
    fn decide_batch(&mut self, batch: Vec<Job>, fold: bool) -> (Vec<Pending>, bool) {
        let now = self.clock.unix_time();
        let mut settings_update = None;
        let mut pending = Vec::with_capacity(batch.len());
        let (cipher, settings, counts) = (&self.cipher, &self.settings, &mut self.counts);
        let mut uses = None;
        let mut wrote = false;
        let result = (|| -> Result<(), StoreError> {
            let (tx, log) = self.store.begin()?;
            uses = Some(log);
            let changes_before = tx.total_changes();
            let statements = BatchStatements::prepare(&tx)?;
            for job in batch {
                match job {
                    Job::Reload { settings } => settings_update = Some(settings),
                    Job::Maintain => counts.prune_sources(
                        &Policy {
                            lockout: settings.lockout,
                        },
                        now,
                    ),
                    job => {
                        let db = Db {
                            conn: &tx,
                            uses: log,
                            statements: Some(&statements),
                        };
                        pending.extend(run_job(&tx, db, cipher, settings, counts, job, now));
                    }
                }
                // After some errors SQLite ends the transaction by itself.
                // Later savepoints would then commit one by one.
                if tx.is_autocommit() {
                    return Err(StoreError::TransactionLost);
                }
            }
            // Only the requests' own changes hold up their replies. A fold
            // copies states of earlier commits, and its WAL frames come
            // after theirs. A crash that loses the fold loses nothing, and a
            // crash that keeps it kept those commits too.
            wrote = tx.total_changes() != changes_before;
            drop(statements);
            // A batch whose requests changed nothing folds in a transaction
            // of its own afterwards, so that a fold the disk has no room
            // for cannot fail reads such as `status`.
            if fold && wrote {
                log.fold(&tx, std::time::Instant::now())?;
            }
            tx.commit()?;
            Ok(())
        })();
        let line = self.commit_failures.note(
            result.as_ref().err().map(ToString::to_string),
            std::time::Instant::now(),
        );
        match line {
            FailureLine::None => {}
            FailureLine::Failed { error, unlogged } => tracing::error!(
                %error,
                requests = pending.len(),
                suppressed = unlogged,
                "database commit failed; replying with an error to every request of the batch \
                 (this line at most once a minute)"
            ),
            FailureLine::Recovered { failures } => {
                tracing::info!(failed_batches = failures, "database commits work again");
            }
        }
        let committed = result.is_ok();
        match result {
            Ok(()) => {
                uses.inspect(|log| log.committed());
            }
            Err(err) => {
                // Whether or not the staged uses reached the disk, keeping
                // them can only reject a code that the disk would accept.
                uses.inspect(|log| log.keep_staged());
                // The batch changed counts of names without an account in
                // memory; the disk has the truth.
                self.counts.unknown = load_unknown(self.store.db());
                let error = EngineError::from(err);
                std::mem::take(&mut pending).into_iter().for_each(|p| p.fail(&error));
            }
        };
        if let Some(settings) = settings_update {
            // Counts and locks taken under another threshold would come
            // back when the old value returns, so a change starts afresh.
            if settings.lockout.source_threshold != self.settings.lockout.source_threshold {
                self.counts.sources.clear();
                tracing::info!(
                    source_threshold = settings.lockout.source_threshold,
                    "source_threshold changed: every source's failure count and lock are cleared"
                );
            }
            self.settings = settings;
        }
        if fold && committed && !wrote {
            self.fold_alone();
        }
        (pending, wrote)
    }

    /// Folds the use log in a transaction of its own. A failure is logged
    /// like a failed batch, and the next batch tries again.
    fn fold_alone(&mut self) {
        let result = match self.store.begin() {
            Ok((tx, log)) => {
                let folded = log
                    .fold(&tx, std::time::Instant::now())
                    .and_then(|()| tx.commit().map_err(StoreError::from));
                match folded {
                    Ok(()) => log.committed(),
                    Err(_) => log.keep_staged(),
                }
                folded
            }
            Err(err) => Err(err),
        };
        let line = self
            .commit_failures
            .note(result.err().map(|err| err.to_string()), std::time::Instant::now());
        match line {
            FailureLine::None => {}
            FailureLine::Failed { error, unlogged } => tracing::error!(
                %error,
                suppressed = unlogged,
                "database commit of a use log fold failed; the fold is tried again with the next batch \
                 (this line at most once a minute)"
            ),
            FailureLine::Recovered { failures } => {
                tracing::info!(failed_batches = failures, "database commits work again");
            }
        }
    }
}

/// Failure of a rekey before its commit.
#[derive(Debug)]
enum RekeyError {
    Store(StoreError),
    Seal(crate::keys::KeyError),
    /// Id of a token whose seed or PIN does not open with the current key.
    Unreadable(i64),
}

impl std::fmt::Display for RekeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RekeyError::Store(err) => write!(f, "{err}"),
            RekeyError::Seal(err) => write!(f, "{err}"),
            RekeyError::Unreadable(id) => write!(
                f,
                "the secrets of token {id} do not open with the current key; remove that token and run the rekey again"
            ),
        }
    }
}

impl From<StoreError> for RekeyError {
    fn from(err: StoreError) -> Self {
        RekeyError::Store(err)
    }
}

impl From<rusqlite::Error> for RekeyError {
    fn from(err: rusqlite::Error) -> Self {
        RekeyError::Store(StoreError::from(err))
    }
}

impl From<crate::keys::KeyError> for RekeyError {
    fn from(err: crate::keys::KeyError) -> Self {
        RekeyError::Seal(err)
    }
}

/// Opens one sealed value of token `id` with `old` and seals it with `new`.
fn reseal(old: &SeedCipher, new: &SeedCipher, id: i64, field: Field, sealed: &[u8]) -> Result<Vec<u8>, RekeyError> {
    let plain = old.open(id, field, sealed).ok_or(RekeyError::Unreadable(id))?;
    Ok(new.seal(id, field, &plain)?)
}

/// Returns whether `job` is a rekey, which runs alone.
fn is_rekey(job: &Job) -> bool {
    matches!(job, Job::Admin { op: AdminOp::Rekey, .. })
}

/// The engine, shared between its own thread and the thread that serves
/// the connections. That thread may run a lookup itself while the engine
/// thread is idle, which saves two thread wake-ups per lookup.
pub struct EngineCore {
    engine: std::sync::Mutex<Engine>,
    /// Batches sent to the WAL sync thread whose replies are not sent yet.
    waiting: Arc<AtomicU64>,
    /// Channel to the task that sends a batch's replies on the connection
    /// thread, once [`EngineCore::reply_relay`] has been called.
    relay: Arc<Relay>,
}

/// Sender half of the reply relay, described at [`EngineCore::reply_relay`].
type Relay = OnceLock<mpsc::UnboundedSender<Vec<Pending>>>;

impl EngineCore {
    pub fn new(engine: Engine) -> EngineCore {
        EngineCore {
            engine: std::sync::Mutex::new(engine),
            waiting: Arc::new(AtomicU64::new(0)),
            relay: Arc::new(OnceLock::new()),
        }
    }

    /// Returns the task that sends the replies of each batch, to spawn on
    /// the runtime that serves the connections. A reply sent from another
    /// thread wakes that runtime with a `write` to its event file
    /// descriptor, so the task turns a batch's wake-ups into one.
    pub fn reply_relay(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Vec<Pending>>();
        if self.relay.set(sender).is_err() {
            tracing::warn!("the reply relay was started twice; the second one stays idle");
        }
        async move {
            while let Some(batch) = receiver.recv().await {
                batch.into_iter().for_each(Pending::send);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Engine> {
        match self.engine.lock() {
            Ok(guard) => guard,
            Err(_) => stop_after_panic(),
        }
    }

    /// Runs a read-only job (a lookup) on the calling thread when the
    /// engine thread is `idle` (the caller's view: no job queued, no other
    /// request in flight), no batch waits for its sync, and the engine is
    /// not locked. Returns `None` once the job has run and its reply is
    /// sent, or the job itself when it must be queued.
    pub fn try_inline(&self, job: Job, idle: bool) -> Option<Job> {
        if !idle || !matches!(job, Job::Lookup { .. }) {
            return Some(job);
        }
        let mut engine = match self.engine.try_lock() {
            Ok(engine) => engine,
            Err(std::sync::TryLockError::WouldBlock) => return Some(job),
            Err(std::sync::TryLockError::Poisoned(_)) => stop_after_panic(),
        };
        // Checked under the lock, which the engine thread holds while it
        // hands a batch to the sync thread: a reply must not overtake the
        // replies of a batch that is not on disk yet.
        if self.waiting.load(Ordering::SeqCst) != 0 {
            return Some(job);
        }
        // Without the fold a lookup writes nothing, so it needs no sync,
        // and its commit cannot start a checkpoint on this thread.
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.decide_batch(vec![job], false)));
        match decided {
            Ok((pending, false)) => pending.into_iter().for_each(Pending::send),
            // Not reached, because a lookup changes no row. If one ever
            // did, its reply would wait for a sync here.
            Ok((pending, true)) => engine.sync_and_reply(pending),
            Err(_) => stop_after_panic(),
        }
        None
    }

    /// Serves jobs until every sender is dropped.
    ///
    /// The WAL sync of a batch runs on a second thread, so that the engine
    /// decides the next batch meanwhile. The replies of a batch that wrote
    /// leave from that thread after the sync. So do the replies of a batch
    /// that did not write while an earlier one waits for its sync, so that
    /// no reply reports a change that is not on disk yet.
    pub fn run(&self, mut jobs: mpsc::Receiver<Job>) {
        let (to_sync, synced) = std::sync::mpsc::channel::<Synced>();
        let waiting = &self.waiting;
        let syncer = match self.lock().store.wal_sync() {
            Ok(mut wal) => {
                let waiting = Arc::clone(waiting);
                let relay = Arc::clone(&self.relay);
                std::thread::Builder::new()
                    .name("wal-sync".into())
                    .spawn(move || sync_and_reply(&mut wal, &synced, &waiting, &relay))
                    .map_err(|err| err.to_string())
            }
            Err(err) => Err(err.to_string()),
        };
        let syncer = match syncer {
            Ok(handle) => Some(handle),
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the WAL sync thread; the engine syncs each batch itself");
                None
            }
        };
        // A rekey that ended the previous batch, to run before the next one.
        let mut queued_rekey = None;
        while let Some(first) = queued_rekey.take().or_else(|| jobs.blocking_recv()) {
            let mut engine = self.lock();
            if let Job::Admin {
                op: AdminOp::Rekey,
                reply,
            } = first
            {
                let response = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.rekey()));
                let Ok(response) = response else {
                    stop_after_panic();
                };
                let _ = reply.send(response);
                continue;
            }
            let mut batch = vec![first];
            while batch.len() < engine.settings.max_batch {
                match jobs.try_recv() {
                    Ok(job) if is_rekey(&job) => {
                        queued_rekey = Some(job);
                        break;
                    }
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.decide(batch)));
            let Ok((pending, wrote)) = decided else {
                stop_after_panic();
            };
            if syncer.is_none() {
                if wrote {
                    engine.sync_and_reply(pending);
                } else {
                    deliver(&self.relay, pending);
                }
                continue;
            }
            if waiting.load(Ordering::SeqCst) == 0 {
                if !wrote {
                    deliver(&self.relay, pending);
                    continue;
                }
                // With no other request waiting there is nothing to overlap,
                // and syncing here saves waking the sync thread.
                if jobs.is_empty() {
                    if let Err(err) = engine.store.sync() {
                        fail_unsynced(pending, &err);
                        stop_after_failed_sync();
                    }
                    deliver(&self.relay, pending);
                    continue;
                }
            }
            waiting.fetch_add(1, Ordering::SeqCst);
            if let Err(unsent) = to_sync.send(Synced { pending, wrote }) {
                waiting.fetch_sub(1, Ordering::SeqCst);
                engine.sync_and_reply(unsent.0.pending);
            }
        }
        drop(to_sync);
        if syncer.is_some_and(|handle| handle.join().is_err()) {
            tracing::error!("WAL sync thread panicked");
        }
        // The checkpoint thread copies the WAL only every 100 ms, so the
        // last commits may still be in the WAL alone. Copying them now means
        // that freeauth.db by itself contains every change once the agent has
        // stopped cleanly, for an administrator who copies just that file.
        match self.lock().store.checkpoint_truncate() {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "final WAL checkpoint did not finish (database busy); the newest changes stay in freeauth.db-wal, so copy that file along with freeauth.db"
            ),
            Err(err) => tracing::warn!(
                error = %err,
                "final WAL checkpoint failed; the newest changes stay in freeauth.db-wal, so copy that file along with freeauth.db"
            ),
        }
        tracing::debug!("engine thread stops: all request channels closed");
    }
}

/// The replies of one batch, for the WAL sync thread.
struct Synced {
    pending: Vec<Pending>,
    /// The batch wrote to the database.
    wrote: bool,
}

/// Syncs once for every batch waiting, then replies; the body of the WAL
/// sync thread. `waiting` counts the batches sent to it whose replies are
/// not sent yet.
///
/// A failed sync stops the process. Linux may have dropped the pages that
/// failed to reach the disk, so no later sync can vouch for them. The service
/// manager restarts the agent, and its start-up checkpoint writes the WAL
/// into the database from what the page cache still has.
fn sync_and_reply(wal: &mut WalSync, synced: &std::sync::mpsc::Receiver<Synced>, waiting: &AtomicU64, relay: &Relay) {
    while let Ok(first) = synced.recv() {
        let mut batches = vec![first];
        while let Ok(more) = synced.try_recv() {
            batches.push(more);
        }
        let count = u64::try_from(batches.len()).unwrap_or(u64::MAX);
        let wrote = batches.iter().any(|batch| batch.wrote);
        let pending: Vec<Pending> = batches.into_iter().flat_map(|batch| batch.pending).collect();
        let result = if wrote { wal.sync() } else { Ok(()) };
        match result {
            Ok(()) => deliver(relay, pending),
            Err(err) => {
                fail_unsynced(pending, &err);
                stop_after_failed_sync();
            }
        }
        waiting.fetch_sub(count, Ordering::SeqCst);
    }
}

/// Sends the replies of a batch through the relay, or one by one when
/// there is a single reply or no relay. A lone reply gains nothing from the
/// relay and would wait for one more task switch.
fn deliver(relay: &Relay, pending: Vec<Pending>) {
    let pending = match relay.get() {
        Some(sender) if pending.len() > 1 => match sender.send(pending) {
            Ok(()) => return,
            // The runtime has stopped, and with it the relay task.
            Err(unsent) => unsent.0,
        },
        _ => pending,
    };
    pending.into_iter().for_each(Pending::send);
}

/// Stops the process after a panic while deciding a batch. The use log's
/// memory may then disagree with the database, and trusting it could accept
/// a used code again, so the restart rebuilds it from disk.
fn stop_after_panic() -> ! {
    tracing::error!("stopping the agent: a batch failed with a panic, and its state in memory cannot be trusted; the restart reads it back from the database");
    std::process::exit(1);
}

/// Stops the process after a failed WAL sync; see [`sync_and_reply`].
fn stop_after_failed_sync() -> ! {
    tracing::error!("stopping the agent: after a failed sync no commit can be called durable; the restart copies the WAL into the database");
    std::process::exit(1);
}

/// Replies with an error to requests whose commit could not be synced.
fn fail_unsynced(pending: Vec<Pending>, err: &StoreError) {
    tracing::error!(error = %err, requests = pending.len(), "cannot sync the database to disk; replying with an error to every request of the batch");
    let error = EngineError {
        message: err.to_string(),
    };
    pending.into_iter().for_each(|p| p.fail(&error));
}

/// Runs one job of a batch; an admin request runs in its own savepoint.
/// `db` reads and writes through `tx`, with the batch's prepared statements.
fn run_job(
    tx: &Transaction<'_>,
    db: Db<'_, '_>,
    cipher: &SeedCipher,
    settings: &Settings,
    counts: &mut MemoryCounts,
    job: Job,
    now: u64,
) -> Option<Pending> {
    let context = Context { cipher, settings, now };
    // Lookups and verifications need no savepoint of their own: a lookup
    // writes nothing, and a verification that fails halfway leaves either a
    // used code or a counted failure, both of which only make later
    // attempts harder. Savepoints cost two statements per request.
    match job {
        Job::Lookup { user, reply } => {
            let result = context.lookup(db, &counts.unknown, &user);
            Some(Pending::Lookup(reply, result))
        }
        Job::Verify {
            user,
            code,
            tail,
            source,
            reply,
        } => {
            let result = context.verify_from(db, counts, &user, &code, tail, source.as_deref());
            Some(Pending::Verdict(reply, result))
        }
        Job::BackupResult {
            user,
            matched,
            source,
            reply,
        } => {
            let result = context.finish_backup_from(db, counts, &user, matched, source.as_deref());
            Some(Pending::Verdict(reply, result))
        }
        Job::Admin { op, reply } => {
            let result = in_savepoint(tx, db.uses, |db| crate::admin::run(&context, db, counts, op));
            let response = result.unwrap_or_else(|err| {
                tracing::error!(error = %err.message, "admin request failed in the database");
                internal_error()
            });
            Some(Pending::Response(reply, response))
        }
        Job::Reload { .. } | Job::Maintain => None,
    }
}

/// A result that tells whether the changes made to reach it should stay.
trait KeepsChanges {
    fn keeps_changes(&self) -> bool;
}

impl KeepsChanges for Response {
    fn keeps_changes(&self) -> bool {
        !matches!(self, Response::Error { .. })
    }
}

/// Runs `work` in a savepoint that is rolled back if it fails, or if it
/// returns an admin error (so a rejected import leaves nothing behind).
///
/// The savepoint statements are prepared once and cached: parsing them for
/// every request cost about a tenth of the engine's time.
fn in_savepoint<T: KeepsChanges>(
    tx: &Transaction<'_>,
    uses: &UseLog,
    work: impl FnOnce(Db<'_, '_>) -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    let run = |sql: &str| -> Result<(), StoreError> {
        tx.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    let mark = uses.mark();
    run("SAVEPOINT job")?;
    let result = work(Db {
        conn: tx,
        uses,
        statements: None,
    });
    if result.as_ref().is_ok_and(KeepsChanges::keeps_changes) {
        if let Err(err) = run("RELEASE job") {
            // The changes must not outlive a request that reports an error.
            // The staged uses are dropped only once the rows are gone too:
            // a use in memory without its row rejects a code, never the
            // other way round.
            if run("ROLLBACK TO job").is_ok() {
                uses.rollback_to(mark);
            }
            return Err(err.into());
        }
    } else {
        run("ROLLBACK TO job")?;
        uses.rollback_to(mark);
        run("RELEASE job")?;
    }
    result
}

/// State shared by every decision of one batch.
pub(crate) struct Context<'a> {
    pub(crate) cipher: &'a SeedCipher,
    pub(crate) settings: &'a Settings,
    pub(crate) now: u64,
}

/// A token with its seed (and PIN) opened, ready to compute codes.
pub(crate) struct OpenToken {
    pub(crate) row: TokenRow,
    pub(crate) params: freeauth_otp::Params,
    pub(crate) seed: Secret,
    pub(crate) pin: Option<Secret>,
}

impl Context<'_> {
    pub(crate) fn policy(&self) -> Policy {
        Policy {
            lockout: self.settings.lockout,
        }
    }

    fn lookup(&self, db: Db<'_, '_>, unknown: &FailureTable, user: &str) -> Result<Lookup, EngineError> {
        let prompt = self.settings.prompt.clone();
        let Some(account) = db.account(user)? else {
            let locked = self
                .policy()
                .current(unknown.get(&self.unknown_key_of(user)), self.now)
                .is_locked(self.now);
            return Ok(Lookup {
                enrolled: false,
                locked,
                prompt,
                code_lengths: Vec::new(),
                disabled: false,
                hex_codes: false,
            });
        };
        let tokens = db.tokens_of(&account)?;
        let disabled = !tokens.is_empty() && tokens.iter().all(|token| !token.enabled);
        // The tokens' lengths come first, longest first, and the backup
        // code length last, if no token has it.
        let mut code_lengths: Vec<u8> = tokens
            .iter()
            .filter(|token| token.enabled)
            .map(|token| code_length(token.kind, token.digits))
            .collect();
        code_lengths.sort_unstable_by(|a, b| b.cmp(a));
        code_lengths.dedup();
        if !code_lengths.is_empty() && !code_lengths.contains(&BACKUP_CODE_LEN) && db.backup_codes_left(account.id)? > 0
        {
            code_lengths.push(BACKUP_CODE_LEN);
        }
        let hex_codes = tokens.iter().any(|token| token.enabled && token.kind == Kind::Motp);
        Ok(Lookup {
            enrolled: !code_lengths.is_empty(),
            locked: self
                .policy()
                .current(failures_of(&account), self.now)
                .is_locked(self.now),
            prompt,
            code_lengths,
            disabled,
            hex_codes,
        })
    }

    /// Verifies a code and counts a failure for its source as well as for
    /// the account. While the source is locked, every code is rejected
    /// without being checked, and the delay is the longer of the two. An
    /// accepted code leaves the source's count as it is, so that an account
    /// of the attacker's own cannot reset it. The count decays with time.
    fn verify_from(
        &self,
        db: Db<'_, '_>,
        counts: &mut MemoryCounts,
        user: &str,
        code: &SecretString,
        tail: bool,
        source: Option<&str>,
    ) -> Result<Verdict, EngineError> {
        let Some(source) = source.filter(|_| self.settings.lockout.source_threshold > 0) else {
            return self.verify(db, &mut counts.unknown, user, code, tail);
        };
        let policy = self.policy();
        let stored = counts.sources.get(source);
        let before = policy.source_current(stored, self.now);
        if before.is_locked(self.now) {
            return Ok(self.verdict(Outcome::Locked, Reason::SourceLocked, before.count));
        }
        let mut verdict = self.verify(db, &mut counts.unknown, user, code, tail)?;
        // Only attempts that count for their account or name count for the
        // source: retries at a locked account check no code. A backup-code
        // guess counts here, before its slow hash, like the account's count.
        if verdict.counted {
            let after = policy.after_source_failure(stored, self.now);
            // Sources are counted in memory only.
            let _ = counts.sources.set(source, after, self.now);
            log_new_source_lock(source, before, after.failures, self.now);
            verdict.delay = verdict.delay.max(policy.delay(after.failures.count));
        }
        Ok(verdict)
    }

    /// Finishes a backup-code check. The failure was counted for the source
    /// when the check began, so the source's count does not change here.
    fn finish_backup_from(
        &self,
        db: Db<'_, '_>,
        counts: &mut MemoryCounts,
        user: &str,
        matched: BackupCheck,
        source: Option<&str>,
    ) -> Result<Verdict, EngineError> {
        let mut verdict = self.finish_backup(db, &mut counts.unknown, user, matched)?;
        let Some(source) = source.filter(|_| self.settings.lockout.source_threshold > 0) else {
            return Ok(verdict);
        };
        if verdict.outcome != Outcome::Accepted {
            let policy = self.policy();
            let failures = policy.source_current(counts.sources.get(source), self.now);
            verdict.delay = verdict.delay.max(policy.delay(failures.count));
        }
        Ok(verdict)
    }

    fn verify(
        &self,
        db: Db<'_, '_>,
        unknown: &mut FailureTable,
        user: &str,
        code: &SecretString,
        tail: bool,
    ) -> Result<Verdict, EngineError> {
        let Some(account) = db.account(user)? else {
            return self.reject_unknown(db, unknown, user);
        };
        let failures = self.policy().current(failures_of(&account), self.now);
        if failures.is_locked(self.now) {
            return Ok(self.verdict(Outcome::Locked, Reason::Locked, failures.count));
        }
        let tokens: Vec<TokenRow> = db.tokens_of(&account)?.into_iter().filter(|t| t.enabled).collect();
        // Backup codes stand in for a token, so they work only while the
        // account has an enabled one: `disable USER` stops them too.
        if tokens.is_empty() {
            return self.reject(db, &account, failures, Outcome::NoToken, Reason::NoActiveToken);
        }
        let mut reason = Reason::MalformedCode;
        for row in tokens {
            // A token that cannot be opened cannot match. Skipping it keeps
            // the user's other tokens working and still counts the failure;
            // an error here would do neither.
            let token = match self.open(row) {
                Ok(token) => token,
                Err(err) => {
                    tracing::error!(user, error = %err.message, "token skipped: the key file does not open its seed; re-enrol it or restore the key file");
                    continue;
                }
            };
            let Some(part) = code_part(code.expose(), tail, token.params.code_len()) else {
                continue;
            };
            let Ok(typed) = Code::parse(part, token.params.charset()) else {
                continue;
            };
            if typed.len() != token.params.code_len() {
                continue;
            }
            if let Some(matched) = self.match_code(&token, &typed) {
                return self.accept(db, &account, &token, matched);
            }
            // With several tokens, the most telling reason of any of them
            // goes to the log.
            let this = if self.was_used(&token, &typed) {
                Reason::ReusedCode
            } else if let Some(offset) = self.clock_offset(&token, &typed) {
                Reason::WrongCodeClock {
                    token: token.row.id,
                    offset,
                    period: token.params.step_period(),
                }
            } else {
                Reason::WrongCode
            };
            if rejection_rank(this) > rejection_rank(reason) {
                reason = this;
            }
        }
        // Asked only after no token matched, off the path of accepted codes.
        let backup_part = code_part(code.expose(), tail, usize::from(BACKUP_CODE_LEN));
        if backup_part.is_some_and(is_backup_code_shape) && db.backup_codes_left(account.id)? > 0 {
            // The attempt counts as a failure now, before the slow hash runs
            // off this thread, so pipelined guesses meet the lock like any
            // others. A match clears the count again.
            let after = self.policy().after_failure(failures, self.now);
            db.set_failures(account.id, after.count, after.locked_until)?;
            log_new_lock(&account.name, failures, after, self.now);
            let salt = db.backup_salt(account.id)?.unwrap_or_default();
            let hashes = db.backup_codes(account.id)?;
            let outcome = Outcome::CheckBackup { salt, hashes };
            return Ok(Verdict {
                outcome,
                reason: Reason::BackupCodeNeeded,
                failures: after.count,
                delay: Duration::ZERO,
                counted: true,
                code_length: None,
            });
        }
        self.reject(db, &account, failures, Outcome::Rejected, reason)
    }

    fn finish_backup(
        &self,
        db: Db<'_, '_>,
        unknown: &mut FailureTable,
        user: &str,
        matched: BackupCheck,
    ) -> Result<Verdict, EngineError> {
        let Some(account) = db.account(user)? else {
            return self.reject_unknown(db, unknown, user);
        };
        // The failure of this attempt was counted when the check began; a
        // lock it caused does not stop a right code of this same attempt.
        let failures = self.policy().current(failures_of(&account), self.now);
        // The account may have changed while the code was hashed: asked
        // again, as the first half did, a `disable USER` meanwhile stops
        // the code.
        if !db.tokens_of(&account)?.iter().any(|token| token.enabled) {
            return Ok(self.verdict(Outcome::NoToken, Reason::NoActiveToken, failures.count));
        }
        let reason = match matched {
            BackupCheck::Matched(matched) => {
                if db.consume_backup_code(matched.id, account.id, &matched.hash, self.now)? {
                    db.set_failures(account.id, 0, None)?;
                    return Ok(Verdict {
                        code_length: Some(BACKUP_CODE_LEN),
                        ..self.verdict(Outcome::Accepted, Reason::AcceptedBackupCode, 0)
                    });
                }
                Reason::ReusedCode
            }
            BackupCheck::NoMatch => Reason::WrongCode,
            BackupCheck::NotRun => Reason::BackupCheckBusy,
        };
        Ok(self.verdict(Outcome::Rejected, reason, failures.count))
    }

    pub(crate) fn open(&self, row: TokenRow) -> Result<OpenToken, EngineError> {
        let unreadable = || EngineError {
            message: format!("the seed of token {} cannot be decrypted with this key", row.id),
        };
        let seed = self
            .cipher
            .open(row.id, Field::Seed, &row.sealed_seed)
            .ok_or_else(unreadable)?;
        let pin = match &row.sealed_pin {
            Some(sealed) => Some(self.cipher.open(row.id, Field::Pin, sealed).ok_or_else(unreadable)?),
            None => None,
        };
        let params = freeauth_otp::Params {
            kind: row.kind,
            algorithm: row.algorithm,
            digits: row.digits,
            period: row.period,
        };
        Ok(OpenToken {
            params,
            seed: Secret::new(seed.to_vec()),
            pin: pin.map(|pin| Secret::new(pin.to_vec())),
            row,
        })
    }

    pub(crate) fn window(&self, token: &OpenToken) -> Window {
        let steps = match token.params.kind {
            freeauth_otp::Kind::Motp => self.settings.windows.motp_steps,
            _ => self.settings.windows.totp_steps,
        };
        Window {
            steps,
            hotp_lookahead: self.settings.windows.hotp_lookahead,
        }
    }

    fn match_code(&self, token: &OpenToken, code: &Code) -> Option<Matched> {
        let window = self.window(token);
        freeauth_otp::verify(
            &token.params,
            &token.seed,
            token.pin.as_ref(),
            &token.row.state,
            &window,
            self.now,
            code,
        )
    }

    /// Whether `code` would have matched before the token's last use, so the
    /// log can say "already used" instead of "wrong code". Every candidate
    /// is checked, so a reused code is rejected in the same time as a wrong
    /// one.
    fn was_used(&self, token: &OpenToken, code: &Code) -> bool {
        let window = self.window(token);
        let state = token.row.state;
        let earlier = State {
            counter: state.counter.saturating_sub(u64::from(window.hotp_lookahead) + 1),
            last_step: None,
            drift: state.drift,
        };
        let Some(matched) = freeauth_otp::verify_every_candidate(
            &token.params,
            &token.seed,
            token.pin.as_ref(),
            &earlier,
            &window,
            self.now,
            code,
        ) else {
            return false;
        };
        match token.params.kind {
            freeauth_otp::Kind::Hotp => matched.state.counter <= state.counter,
            _ => matched.state.last_step <= state.last_step,
        }
    }

    /// Returns the offset, in time steps from the server's step, at which
    /// `code` is the code of a time-based token beyond the verification
    /// window, up to [`CLOCK_HINT_SECONDS`] away. Only the log uses it: a
    /// code there is rejected like any wrong code. Steps up to the token's
    /// last accepted one do not count, so an old code does not pass for a
    /// clock problem. Every candidate is checked, so the time taken does not
    /// depend on a match.
    fn clock_offset(&self, token: &OpenToken, code: &Code) -> Option<i64> {
        if token.params.kind == Kind::Hotp {
            return None;
        }
        let period = u64::from(token.params.step_period().max(1));
        let steps = (CLOCK_HINT_SECONDS / period).clamp(1, CLOCK_HINT_MAX_STEPS);
        let window = Window {
            steps: u32::try_from(steps).ok()?,
            hotp_lookahead: 0,
        };
        if window.steps <= self.window(token).steps {
            return None;
        }
        let around_server = State {
            counter: 0,
            last_step: token.row.state.last_step,
            drift: 0,
        };
        freeauth_otp::verify_every_candidate(
            &token.params,
            &token.seed,
            token.pin.as_ref(),
            &around_server,
            &window,
            self.now,
            code,
        )
        .map(|matched| matched.offset)
    }

    fn accept(
        &self,
        db: Db<'_, '_>,
        account: &Account,
        token: &OpenToken,
        matched: Matched,
    ) -> Result<Verdict, EngineError> {
        if !db.advance_token(token.row.id, &token.row.state, &matched.state, self.now)? {
            // Only a second agent on a shared database can get here.
            return self.reject(db, account, failures_of(account), Outcome::Rejected, Reason::ReusedCode);
        }
        if account.failures != 0 || account.locked_until.is_some() {
            db.set_failures(account.id, 0, None)?;
        }
        let reason = Reason::AcceptedToken {
            token: token.row.id,
            offset: matched.offset,
        };
        Ok(Verdict {
            code_length: u8::try_from(token.params.code_len()).ok(),
            ..self.verdict(Outcome::Accepted, reason, 0)
        })
    }

    fn reject(
        &self,
        db: Db<'_, '_>,
        account: &Account,
        before: Failures,
        outcome: Outcome,
        reason: Reason,
    ) -> Result<Verdict, EngineError> {
        let after = self.policy().after_failure(before, self.now);
        db.set_failures(account.id, after.count, after.locked_until)?;
        log_new_lock(&account.name, before, after, self.now);
        Ok(Verdict {
            counted: true,
            ..self.verdict(outcome, reason, after.count)
        })
    }

    /// Counts a failure for `user`, a name without an account, in memory
    /// and on disk, as [`Context::reject`] does for an account.
    fn reject_unknown(&self, db: Db<'_, '_>, unknown: &mut FailureTable, user: &str) -> Result<Verdict, EngineError> {
        let digest = self.cipher.digest(user.as_bytes());
        let key = unknown_key(&digest);
        let before = self.policy().current(unknown.get(&key), self.now);
        if before.is_locked(self.now) {
            return Ok(self.verdict(Outcome::NoToken, Reason::UnknownUser, before.count));
        }
        let after = self.policy().after_failure(before, self.now);
        if let Some(evicted) = unknown.set(&key, after, self.now).and_then(|key| digest_of_key(&key)) {
            db.forget_unknown_failures(&evicted)?;
        }
        db.set_unknown_failures(&digest, after.count, after.locked_until)?;
        Ok(Verdict {
            counted: true,
            ..self.verdict(Outcome::NoToken, Reason::UnknownUser, after.count)
        })
    }

    /// Returns the key of `user` in the table of names without an account.
    pub(crate) fn unknown_key_of(&self, user: &str) -> String {
        unknown_key(&self.cipher.digest(user.as_bytes()))
    }

    fn verdict(&self, outcome: Outcome, reason: Reason, failures: u32) -> Verdict {
        let delay = match outcome {
            Outcome::Accepted => Duration::ZERO,
            _ => self.policy().delay(failures.max(1)),
        };
        Verdict {
            outcome,
            reason,
            failures,
            delay,
            counted: false,
            code_length: None,
        }
    }
}

/// Reads the failure counts of names without an account from disk. Rows
/// beyond the table's size are deleted, so that disk and memory agree.
fn load_unknown(db: Db<'_, '_>) -> FailureTable {
    let mut table = FailureTable::default();
    let rows = match db.unknown_failures() {
        Ok(rows) => rows,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the failure counts of names without an account; they start at zero");
            return table;
        }
    };
    for (digest, count, locked_until) in rows {
        let Ok(digest) = <[u8; 32]>::try_from(digest.as_slice()) else {
            continue;
        };
        let evicted = table.set(&unknown_key(&digest), Failures { count, locked_until }, 0);
        if let Some(evicted) = evicted.and_then(|key| digest_of_key(&key)) {
            if let Err(err) = db.forget_unknown_failures(&evicted) {
                tracing::warn!(error = %err, "cannot delete a failure count beyond the table's size");
            }
        }
    }
    table
}

/// Returns the key of a name without an account in [`MemoryCounts::unknown`]:
/// the hexadecimal form of the name's keyed digest, which is the key on disk.
fn unknown_key(digest: &[u8; 32]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Returns the digest that [`unknown_key`] encoded, or `None` for a key it
/// did not make.
fn digest_of_key(key: &str) -> Option<Vec<u8>> {
    if key.len() != 64 {
        return None;
    }
    (0..key.len())
        .step_by(2)
        .map(|at| key.get(at..at + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

/// Logs the failure that locked a source, once, when it happens.
fn log_new_source_lock(source: &str, before: Failures, after: Failures, now: u64) {
    if after.is_locked(now) && !before.is_locked(now) {
        tracing::warn!(target: "freeauth::auth", source, failures = after.count, until = after.locked_until, "source locked after too many failures");
    }
}

/// Logs the failure that locked an account, once, when it happens.
fn log_new_lock(user: &str, before: Failures, after: Failures, now: u64) {
    if after.is_locked(now) && !before.is_locked(now) {
        tracing::warn!(target: "freeauth::auth", user, failures = after.count, until = after.locked_until, "account locked after consecutive failures");
    }
}

pub(crate) fn failures_of(account: &Account) -> Failures {
    Failures {
        count: account.failures,
        locked_until: account.locked_until,
    }
}

/// Number of digits of a backup code.
pub(crate) const BACKUP_CODE_LEN: u8 = 8;

/// Returns the part of `text` to check as a code of `length` characters:
/// all of it, or with `tail` its last `length` bytes. `None` when the text
/// is shorter or the cut falls inside a character.
pub fn code_part(text: &str, tail: bool, length: usize) -> Option<&str> {
    if !tail {
        return Some(text);
    }
    text.get(text.len().checked_sub(length)?..)
}

/// Backup codes are 8 decimal digits, typed with or without a space. In a
/// tail request only the space-free form fits: an 8-byte end with a space
/// contains 7 digits.
fn is_backup_code_shape(text: &str) -> bool {
    Code::parse(text, freeauth_otp::Charset::Decimal).is_ok_and(|code| code.len() == usize::from(BACKUP_CODE_LEN))
}

/// Length of the codes of a token: Mobile-OTP codes always have 6 characters.
fn code_length(kind: freeauth_otp::Kind, digits: u8) -> u8 {
    match kind {
        freeauth_otp::Kind::Motp => freeauth_otp::MOTP_DIGITS,
        _ => digits,
    }
}

/// Counts a finished verdict for `status`.
pub fn count(stats: &Stats, outcome: &Outcome) {
    let counter = match outcome {
        Outcome::Accepted => &stats.accepted,
        Outcome::CheckBackup { .. } => return,
        _ => &stats.rejected,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}
