//! Start-up, signals and shutdown of `freeauth-agentd`.
//!
//! Start-up refuses to run with an unsafe key file or state folder, or with a
//! key that does not fit the database. SIGHUP reloads the configuration; a
//! file that fails to load is logged and the running configuration stays.
//! SIGTERM and SIGINT stop accepting, let requests in flight finish, and
//! remove the socket files.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use freeauth_otp::{Clock, SystemClock};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Semaphore};

use crate::access::{RateLimiter, Rules};
use crate::config::{Config, Server};
use crate::engine::{Engine, EngineCore, Job, Settings, Stats};
use crate::keys::{new_key_path, SeedCipher};
use crate::loglimit::LogLimiter;
use crate::placement::Placement;
use crate::server::{serve, Shared, SocketKind};
use crate::store::{Store, StoreError};

/// Error that kept the agent from starting or stopped it.
#[derive(Debug)]
pub struct DaemonError(pub String);

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DaemonError {}

fn fail(message: impl std::fmt::Display) -> DaemonError {
    DaemonError(message.to_string())
}

/// Builds the engine's settings from a configuration.
pub fn settings_of(config: &Config) -> Settings {
    Settings {
        windows: config.windows,
        lockout: config.lockout,
        prompt: config.enroll.prompt.clone(),
        max_batch: config.server.max_batch,
    }
}

/// Opens the key and the database, creating the key on a first start, and
/// checks that the two belong together.
pub fn open_state(config: &Config) -> Result<(Store, SeedCipher), DaemonError> {
    // An SQLite error alone ("attempt to write a readonly database", say)
    // names no file.
    let store = Store::open(&config.paths.state_dir).map_err(|err| match err {
        StoreError::Sqlite(err) => fail(format!("database {}: {err}", config.paths.database().display())),
        other => fail(other),
    })?;
    let key_path = &config.paths.seed_key;
    let new_path = new_key_path(key_path);
    if !key_path.exists() && !new_path.exists() {
        let (_, tokens) = store.db().counts().map_err(fail)?;
        if tokens > 0 {
            return Err(fail(format!(
                "seed key {} is missing but the database holds {tokens} tokens; restore the key from a backup",
                key_path.display()
            )));
        }
        SeedCipher::create(key_path).map_err(fail)?;
        // No token exists, so no seed is lost: forget the old key's marker,
        // and the digest keys of earlier seed keys, sealed under the old key.
        store.db().delete_meta("key_check").map_err(fail)?;
        store.db().delete_meta("previous_digest_keys").map_err(fail)?;
        tracing::info!(path = %key_path.display(), "created a new seed key");
    }
    let mut cipher = match store.db().meta("key_check").map_err(fail)? {
        Some(sealed) => fitting_key(key_path, &new_path, &sealed)?,
        None => {
            let cipher = SeedCipher::load(key_path).map_err(fail)?;
            let sealed = cipher.seal_key_check().map_err(fail)?;
            store.db().set_meta("key_check", &sealed).map_err(fail)?;
            cipher
        }
    };
    if let Some(sealed) = store.db().meta("previous_digest_keys").map_err(fail)? {
        if !cipher.adopt_previous_digest_keys(&sealed) {
            return Err(fail(
                "the digest keys of replaced seed keys in the database do not open with the seed key that fits its key check; restore the database from a backup",
            ));
        }
    }
    Ok((store, cipher))
}

/// Loads the seed key that fits `key_check`, the marker sealed in the
/// database: the key file, or after a rekey that did not finish, the new
/// key next to it.
fn fitting_key(key_path: &Path, new_path: &Path, key_check: &[u8]) -> Result<SeedCipher, DaemonError> {
    if key_path.exists() {
        let cipher = SeedCipher::load(key_path).map_err(fail)?;
        if cipher.fits(key_check) {
            if new_path.exists() {
                tracing::warn!(
                    path = %new_path.display(),
                    "a rekey did not finish: the database is still sealed under the old key; `freeauthctl rekey` removes the unused new key and starts again"
                );
            }
            return Ok(cipher);
        }
    }
    if new_path.exists() {
        let cipher = SeedCipher::load(new_path).map_err(fail)?;
        if cipher.fits(key_check) {
            tracing::warn!(
                path = %new_path.display(),
                "a rekey did not finish: the database is sealed under the new key, which is still in its temporary file; run `freeauthctl rekey` to move it in place"
            );
            return Ok(cipher);
        }
    }
    if !key_path.exists() {
        return Err(fail(format!(
            "seed key {} is missing, and {} does not fit the database; restore the key from a backup",
            key_path.display(),
            new_path.display()
        )));
    }
    Err(fail(format!(
        "seed key {} does not fit the database: it was sealed with another key",
        key_path.display()
    )))
}

/// Keeps the seed key out of core dumps and away from ptrace by other
/// processes of the same user.
fn protect_memory() {
    use nix::sys::resource::{setrlimit, Resource};
    if let Err(err) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!("cannot disable core dumps: {err}");
    }
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot mark the process non-dumpable: {err}");
    }
}

/// Raises the soft limit on open files so that two pools of
/// `max_connections` fit, and warns when the hard limit is too low.
fn raise_file_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let needed = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(64);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= needed {
        return;
    }
    let target = needed.min(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_err() || target < needed {
        tracing::warn!(
            soft,
            hard,
            needed,
            "the open-file limit is below what max_connections needs; raise LimitNOFILE or lower max_connections"
        );
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    // Files the agent and SQLite create (database, -wal, -shm) are private.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    protect_memory();
    raise_file_limit(config.server.max_connections);
    let rules = Rules::resolve(&config.access).map_err(fail)?;
    let (store, cipher) = open_state(&config)?;
    crate::store::start_checkpointer(config.paths.database(), std::time::Duration::from_millis(100)).map_err(fail)?;
    let stats = Arc::new(Stats::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let engine = Arc::new(EngineCore::new(
        Engine::new(store, cipher, clock, settings_of(&config)).with_key_file(&config.paths.seed_key),
    ));
    let (jobs, receiver) = mpsc::channel(65_536);
    let (tid_sender, tid_receiver) = std::sync::mpsc::channel();
    let engine_thread = {
        let engine = Arc::clone(&engine);
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let _ = tid_sender.send(nix::unistd::gettid());
                engine.run(receiver)
            })
            .map_err(fail)?
    };
    // This thread runs the runtime below, so it is the connection thread.
    let placement = match tid_receiver.recv() {
        Ok(engine_tid) => Placement::new(engine_tid, config.server.thread_placement),
        Err(_) => Placement::new(nix::unistd::gettid(), false),
    };

    // One thread serves every connection. A request then wakes two
    // threads, this one and the engine, where a runtime with two workers
    // often woke a third as well. Each wake-up is a context switch, and a
    // local login waits for them in each round trip (see
    // `docs/benchmarks-pam.md`). The engine does the heavy work on its own
    // thread, so this one keeps up at the rates of `docs/benchmarks.md`.
    let runtime = placement.build_runtime().map_err(fail)?;
    let shared = Arc::new(Shared {
        jobs,
        engine,
        stats,
        rules: RwLock::new(Arc::new(rules)),
        server: config.server,
        rate: Mutex::new(RateLimiter::default()),
        log_limit: LogLimiter::default(),
        connections: Arc::new(Semaphore::new(config.server.max_connections)),
        local_connections: Arc::new(Semaphore::new(config.server.max_connections)),
        connections_per_uid: Mutex::new(Default::default()),
        backup_hashing: Semaphore::new(crate::handlers::BACKUP_HASHES_AT_ONCE),
        name_lookups: Semaphore::new(crate::server::NAME_LOOKUPS_AT_ONCE),
        started: Instant::now(),
        database: config.paths.database().display().to_string(),
        placement: Mutex::new(placement),
    });
    runtime.spawn(shared.engine.reply_relay());
    let result = runtime.block_on(serve_until_stopped(config, Arc::clone(&shared)));
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    drop(shared);
    if engine_thread.join().is_err() {
        tracing::error!("engine thread panicked");
    }
    // A failed start is reported by the caller, and the agent never ran.
    if result.is_ok() {
        tracing::info!("agent stopped");
    }
    result
}

async fn serve_until_stopped(mut config: Config, shared: Arc<Shared>) -> Result<(), DaemonError> {
    let agent = bind(&config.paths.agent_socket, 0o666)?;
    let admin = bind(&config.paths.admin_socket, 0o600)?;
    set_admin_socket_access(&config.paths.admin_socket, shared.rules().admin_gid)?;
    // The socket files as bound; a reload does not move them.
    let sockets = [&config.paths.agent_socket, &config.paths.admin_socket].map(|path| (path.clone(), file_id(path)));
    let mut lost = None;
    let mut hangup = signal(SignalKind::hangup()).map_err(fail)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(fail)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(fail)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        agent_socket = %config.paths.agent_socket.display(),
        admin_socket = %config.paths.admin_socket.display(),
        database = %shared.database,
        "agent started"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    // Lets the engine fold its use log while no request comes.
    let mut maintain = tokio::time::interval(std::time::Duration::from_secs(1));
    maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let listeners = [
        tokio::spawn(accept_loop(agent, SocketKind::Agent, Arc::clone(&shared))),
        tokio::spawn(accept_loop(admin, SocketKind::Admin, Arc::clone(&shared))),
    ];
    loop {
        tokio::select! {
            _ = maintain.tick() => {
                // A full queue means the engine is busy and folds anyway.
                let _ = shared.jobs.try_send(Job::Maintain);
                // A socket file removed (a socket folder deleted by hand, say)
                // leaves the agent running and unreachable for new
                // connections, and logins fail closed without a word. Stopping
                // lets systemd start the agent again with new sockets.
                if let Some((path, _)) = sockets.iter().find(|(path, id)| file_id(path) != *id) {
                    lost = Some(path.clone());
                    break;
                }
            }
            _ = hangup.recv() => {
                // A reload may wait for a directory server; a request to
                // stop ends the wait, and the running configuration stays.
                tokio::select! {
                    new = reload(config.clone(), &shared) => config = new,
                    _ = terminate.recv() => break,
                    _ = interrupt.recv() => break,
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    for listener in listeners {
        // The aborted task drops its listener, which closes the socket.
        listener.abort();
        let _ = listener.await;
    }
    // A path that now names another file, such as the socket of an agent
    // started since, is left alone.
    for (path, id) in &sockets {
        if file_id(path) == *id {
            let _ = fs::remove_file(path);
        }
    }
    if let Some(path) = &lost {
        tracing::error!(
            socket = %path.display(),
            "a socket file was removed or replaced while the agent ran, so new connections cannot reach it; \
             stopping (systemd starts the agent again)"
        );
    }
    tracing::info!("agent stopping: no new connections; finishing requests in flight");
    drain(&shared).await;
    match lost {
        Some(path) => Err(fail(format!(
            "socket {} was removed or replaced while the agent ran; start the agent again",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Returns the device and inode of the file at `path`, or `None` when
/// there is none.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).ok().map(|meta| (meta.dev(), meta.ino()))
}

/// Waits until no request is in flight, at most `DRAIN_LIMIT`, so that
/// replies already decided (and their reply delays) go out before the exit.
async fn drain(shared: &Shared) {
    const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    while shared.stats.in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("requests still in flight after 10 s; stopping anyway");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Accepts connections on `listener` until the task is aborted. After a
/// failed accept it pauses without blocking the thread that serves the
/// other connections.
async fn accept_loop(listener: UnixListener, kind: SocketKind, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, kind, Arc::clone(&shared)));
            }
            Err(err) => {
                shared.log_limit.warn("accept", &format!("accept failed: {err}"));
                // Out of file descriptors (EMFILE): pause instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Loads the configuration again; keeps `current` if the new one is invalid.
async fn reload(current: Config, shared: &Shared) -> Config {
    // Group and user names may be looked up in a directory server, so the
    // loading runs off the thread that serves every connection.
    let source = current.source.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let new = Config::load(&source).map_err(|err| err.to_string())?;
        let rules = Rules::resolve(&new.access).map_err(|err| err.to_string())?;
        Ok::<_, String>((new, rules))
    })
    .await
    .unwrap_or_else(|_| Err("the thread that loads it panicked".into()));
    let (new, rules) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => {
            tracing::error!("configuration reload failed, keeping the running configuration: {err}");
            return current;
        }
    };
    let unchanged_server = Server {
        max_batch: current.server.max_batch,
        ..new.server
    };
    if new.paths != current.paths || unchanged_server != current.server {
        tracing::warn!(
            "changes to [paths], and to [server] settings other than max_batch, take effect at the next restart"
        );
    }
    if new.log_level != current.log_level {
        tracing::warn!("log_level changes take effect at the next restart");
    }
    if new.access.admin_group != current.access.admin_group {
        if let Err(err) = set_admin_socket_access(&current.paths.admin_socket, rules.admin_gid) {
            tracing::error!("configuration reload failed, keeping the running configuration: {err}");
            return current;
        }
    }
    shared.set_rules(rules);
    let _ = shared
        .jobs
        .send(Job::Reload {
            settings: settings_of(&new),
        })
        .await;
    tracing::info!(path = %new.source.display(), "configuration reloaded");
    // The settings that wait for a restart keep their running values, so
    // the next reload compares against what runs, not against the file.
    Config {
        paths: current.paths,
        server: current.server,
        log_level: current.log_level,
        ..new
    }
}

/// Gives the admin socket to the admin group (mode 0660), or to the agent's
/// user alone (mode 0600) when no group is configured.
fn set_admin_socket_access(path: &Path, admin_gid: Option<u32>) -> Result<(), DaemonError> {
    let (gid, mode) = match admin_gid {
        Some(gid) => (gid, 0o660),
        None => (nix::unistd::getegid().as_raw(), 0o600),
    };
    std::os::unix::fs::chown(path, None, Some(gid))
        .map_err(|err| fail(format!("cannot chown {}: {err}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|err| fail(format!("cannot chmod {}: {err}", path.display())))
}

/// Binds a socket at `path`, replacing a stale file but never a live agent.
fn bind(path: &Path, mode: u32) -> Result<UnixListener, DaemonError> {
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|err| fail(format!("cannot create socket folder {}: {err}", parent.display())))?;
            // The umask of 077 would close it; every user must reach the agent socket.
            fs::set_permissions(parent, fs::Permissions::from_mode(0o755))
                .map_err(|err| fail(format!("cannot chmod socket folder {}: {err}", parent.display())))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(fail(format!(
                "another agent is already listening on {}",
                path.display()
            )));
        }
        fs::remove_file(path).map_err(|err| fail(format!("cannot remove stale socket {}: {err}", path.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(|err| fail(format!("cannot listen on {}: {err}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(fail)?;
    Ok(listener)
}
