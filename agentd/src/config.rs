//! The agent's configuration file (`agentd.toml`): raw TOML is walked with
//! `freeauth_toml`, then checked into [`Config`], whose values are all valid.
//! Every path may be relative, and then resolves against the file's folder.
//!
//! A setting that would weaken the second factor (a wide window, no lockout)
//! is an error unless its `danger_` switch says the administrator means it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use freeauth_toml::{ConfigError, Document, Section};

/// Default agent socket, for clients that read no configuration.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/freeauth/agent.sock";

/// Validated configuration of `freeauth-agentd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file this was read from.
    pub source: PathBuf,
    pub paths: Paths,
    pub access: Access,
    pub windows: Windows,
    pub lockout: Lockout,
    pub server: Server,
    pub enroll: Enroll,
    pub log_level: String,
}

/// Files and sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// Folder of the SQLite database; mode 0700, owned by the agent's user.
    pub state_dir: PathBuf,
    /// 32-byte key that encrypts seeds; mode 0600.
    pub seed_key: PathBuf,
    pub agent_socket: PathBuf,
    pub admin_socket: PathBuf,
}

impl Paths {
    /// The SQLite database inside the state folder.
    pub fn database(&self) -> PathBuf {
        self.state_dir.join("freeauth.db")
    }
}

/// Access rules: which callers may use which socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Group whose members may use the admin socket besides root.
    pub admin_group: Option<String>,
    /// Users (the RADIUS bridge) that may verify any account for remote clients.
    pub bridge_users: Vec<String>,
    /// Requests per minute a local user other than root may make on the agent socket.
    pub local_requests_per_minute: u32,
}

/// Verification windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// TOTP steps accepted on each side of the token's learned drift.
    pub totp_steps: u32,
    /// Mobile-OTP steps of 10 s accepted on each side of the learned drift.
    pub motp_steps: u32,
    /// HOTP counters looked at beyond the next expected one.
    pub hotp_lookahead: u32,
    /// HOTP counters searched by `resync`.
    pub hotp_resync: u32,
    /// Time steps searched on each side of the server clock by `resync`.
    pub time_resync_steps: u32,
}

/// Brute-force protection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lockout {
    /// Delay of the reply to a first failure; it doubles with each consecutive one.
    pub failure_delay: Duration,
    pub max_failure_delay: Duration,
    /// Consecutive failures that lock the account; 0 only with the danger switch.
    pub threshold: u32,
    /// Consecutive failures from one source, over all accounts, that lock
    /// the source; 0 turns counting by source off.
    pub source_threshold: u32,
    /// How long a lock lasts before it expires by itself.
    pub lock_duration: Duration,
}

/// Socket server limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Server {
    pub max_connections: usize,
    /// Requests one connection may have in flight.
    pub max_in_flight: usize,
    /// Time a client has to send its hello, or the rest of a started frame.
    pub io_timeout: Duration,
    /// Requests the engine commits together in one transaction at most.
    pub max_batch: usize,
    /// Keep the connection thread and the engine thread on one CPU while
    /// the load is light; see `placement`.
    pub thread_placement: bool,
}

/// Settings used when enrolling and prompting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enroll {
    /// Issuer shown by authenticator apps.
    pub issuer: String,
    /// Prompt the PAM module shows.
    pub prompt: String,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = freeauth_toml::read_regular_file(path, freeauth_toml::MAX_CONFIG_LEN).map_err(|source| {
            LoadError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        if let Some(problem) = freeauth_toml::world_writable(path) {
            return Err(LoadError::Unsafe(problem));
        }
        Config::parse(path, &text).map_err(LoadError::Invalid)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let document = Document::parse(path, text)?;
        let root = document.root();
        let paths = root.section("paths").map(|s| read_paths(&s));
        let access = root.section("access").map(|s| read_access(&s));
        let windows = root.section("windows").map(|s| read_windows(&s));
        let lockout = root.section("lockout").map(|s| read_lockout(&s));
        let server = root.section("server").map(|s| read_server(&s));
        let enroll = root.section("enroll").map(|s| read_enroll(&s));
        let log_level = read_log_level(&root);
        root.finish();
        document.finish()?;
        match (paths, access, windows, lockout, server, enroll) {
            (Some(paths), Some(access), Some(windows), Some(lockout), Some(server), Some(enroll)) => Ok(Config {
                source: path.to_owned(),
                paths,
                access,
                windows,
                lockout,
                server,
                enroll,
                log_level,
            }),
            // A section of the wrong type was already recorded as a problem.
            _ => Err(ConfigError {
                path: path.to_owned(),
                problems: Vec::new(),
            }),
        }
    }
}

fn read_paths(section: &Section) -> Paths {
    let paths = Paths {
        state_dir: section.path_or("state_dir", "/var/lib/freeauth"),
        seed_key: section.path_or("seed_key", "/etc/freeauth/seed.key"),
        agent_socket: section.path_or("agent_socket", DEFAULT_AGENT_SOCKET),
        admin_socket: section.path_or("admin_socket", "/run/freeauth/admin.sock"),
    };
    section.finish();
    paths
}

fn read_access(section: &Section) -> Access {
    let admin_group = section.string("admin_group").map(|located| located.value);
    let bridge_users = section.strings("bridge_users").into_iter().map(|l| l.value).collect();
    let limit = section.integer_or("local_requests_per_minute", 1..=100_000, 30);
    section.finish();
    Access {
        admin_group,
        bridge_users,
        local_requests_per_minute: u32::try_from(limit).unwrap_or(30),
    }
}

fn read_windows(section: &Section) -> Windows {
    let danger = section.bool_or("danger_allow_wide_windows", false);
    let totp_steps = section.integer_or("totp_steps", 0..=100, 1);
    let motp_seconds = section.integer_or("motp_seconds", 0..=3600, 180);
    let hotp_lookahead = section.integer_or("hotp_lookahead", 0..=1000, 10);
    let hotp_resync = section.integer_or("hotp_resync", 1..=100_000, 1000);
    let time_resync_steps = section.integer_or("time_resync_steps", 1..=100_000, 2880);
    if !danger {
        if totp_steps > 10 {
            section.problem(
                section.span_of("totp_steps"),
                "totp_steps",
                "above 10 accepts codes minutes old; set danger_allow_wide_windows = true to allow it",
            );
        }
        if motp_seconds > 600 {
            section.problem(
                section.span_of("motp_seconds"),
                "motp_seconds",
                "above 600 accepts codes ten minutes old; set danger_allow_wide_windows = true to allow it",
            );
        }
        if hotp_lookahead > 100 {
            section.problem(
                section.span_of("hotp_lookahead"),
                "hotp_lookahead",
                "above 100 makes guessing easier; set danger_allow_wide_windows = true to allow it",
            );
        }
    }
    section.finish();
    Windows {
        totp_steps: to_u32(totp_steps),
        motp_steps: to_u32(motp_seconds.div_euclid(10)),
        hotp_lookahead: to_u32(hotp_lookahead),
        hotp_resync: to_u32(hotp_resync),
        time_resync_steps: to_u32(time_resync_steps),
    }
}

/// Smallest `failure_delay_ms` allowed without `danger_short_failure_delay`.
/// The delay hides how long a rejection took to decide. A backup-code check
/// may wait `handlers::BACKUP_HASH_WAIT` (250 ms) for a hash slot while
/// other guesses are hashed, then hashes with Argon2 itself, and a name
/// without an account skips work that an account needs. NOTE: the 50 ms
/// left for the hash is an estimate; a machine whose hash takes longer
/// needs a longer delay.
const MIN_SAFE_FAILURE_DELAY_MS: i64 = 300;

fn read_lockout(section: &Section) -> Lockout {
    let danger = section.bool_or("danger_disable_lockout", false);
    let delay_ms = section.integer_or("failure_delay_ms", 0..=60_000, 500);
    let max_delay_ms = section.integer_or("max_failure_delay_ms", 0..=600_000, 8000);
    let threshold = section.integer_or("threshold", 0..=1000, 10);
    let source_threshold = section.integer_or("source_threshold", 0..=100_000, 30);
    let lock_seconds = section.integer_or("lock_seconds", 1..=30 * 86_400, 900);
    if threshold == 0 && !danger {
        section.problem(
            section.span_of("threshold"),
            "threshold",
            "0 disables the lock and allows unlimited guessing; set danger_disable_lockout = true to allow it",
        );
    }
    let short_delay = section.bool_or("danger_short_failure_delay", false);
    if delay_ms < MIN_SAFE_FAILURE_DELAY_MS && !short_delay {
        section.problem(
            section.span_of("failure_delay_ms"),
            "failure_delay_ms",
            format!(
                "is below {MIN_SAFE_FAILURE_DELAY_MS} ms, so the time of a rejection can show which accounts exist or have backup codes; set danger_short_failure_delay = true to allow it"
            ),
        );
    }
    if max_delay_ms < delay_ms {
        section.problem(
            section.span_of("max_failure_delay_ms"),
            "max_failure_delay_ms",
            "must not be smaller than failure_delay_ms",
        );
    }
    section.finish();
    Lockout {
        failure_delay: millis(delay_ms),
        max_failure_delay: millis(max_delay_ms),
        threshold: to_u32(threshold),
        source_threshold: to_u32(source_threshold),
        lock_duration: Duration::from_secs(u64::try_from(lock_seconds).unwrap_or(900)),
    }
}

fn read_server(section: &Section) -> Server {
    let max_connections = section.integer_or("max_connections", 1..=65_536, 1024);
    let max_in_flight = section.integer_or("max_in_flight", 1..=65_536, 256);
    let io_timeout_ms = section.integer_or("io_timeout_ms", 100..=600_000, 10_000);
    let max_batch = section.integer_or("max_batch", 1..=65_536, 1024);
    let thread_placement = section.bool_or("thread_placement", true);
    section.finish();
    Server {
        max_connections: to_usize(max_connections),
        max_in_flight: to_usize(max_in_flight),
        io_timeout: millis(io_timeout_ms),
        max_batch: to_usize(max_batch),
        thread_placement,
    }
}

fn read_enroll(section: &Section) -> Enroll {
    let issuer = section.string_or("issuer", "FreeAuth");
    let prompt = section.string_or("prompt", "Verification code: ");
    section.finish();
    Enroll { issuer, prompt }
}

fn read_log_level(root: &Section) -> String {
    root.choice_or("log_level", &["error", "warn", "info", "debug", "trace"], "info")
}

fn millis(value: i64) -> Duration {
    Duration::from_millis(u64::try_from(value).unwrap_or(0))
}

fn to_u32(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

fn to_usize(value: i64) -> usize {
    usize::try_from(value).unwrap_or(1)
}

/// Failure to load a configuration file.
#[derive(Debug)]
pub enum LoadError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file's permissions let others change it.
    Unsafe(String),
    Invalid(ConfigError),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Read { path, source } => {
                write!(f, "cannot read configuration {}: {source}", path.display())
            }
            LoadError::Unsafe(problem) => f.write_str(problem),
            LoadError::Invalid(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/srv/fa/agentd.toml"), text)
    }

    #[test]
    fn empty_file_gives_package_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.paths.state_dir, Path::new("/var/lib/freeauth"));
        assert_eq!(config.paths.database(), Path::new("/var/lib/freeauth/freeauth.db"));
        assert_eq!(config.windows.totp_steps, 1);
        assert_eq!(config.windows.motp_steps, 18);
        assert_eq!(config.windows.hotp_lookahead, 10);
        assert_eq!(config.lockout.threshold, 10);
        assert_eq!(config.lockout.source_threshold, 30);
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let config = parse("[paths]\nstate_dir = \"state\"\nagent_socket = \"run/agent.sock\"\n").unwrap();
        assert_eq!(config.paths.state_dir, Path::new("/srv/fa/state"));
        assert_eq!(config.paths.agent_socket, Path::new("/srv/fa/run/agent.sock"));
    }

    #[test]
    fn rejects_unknown_keys_everywhere() {
        let err = parse("colour = 1\n[paths]\nstate = \"x\"\n[lockout]\nthreshhold = 3\n").unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        assert_eq!(err.problems[0].line, 1);
    }

    #[test]
    fn rejects_insecure_settings_without_danger() {
        let err = parse("[lockout]\nthreshold = 0\n[windows]\ntotp_steps = 20\n").unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        let ok = parse("[lockout]\nthreshold = 0\ndanger_disable_lockout = true\n");
        assert_eq!(ok.unwrap().lockout.threshold, 0);
    }

    #[test]
    fn short_failure_delay_needs_danger() {
        let err = parse("[lockout]\nfailure_delay_ms = 299\n").unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.to_string().contains("danger_short_failure_delay"), "{err}");
        assert!(parse("[lockout]\nfailure_delay_ms = 300\n").is_ok());
        let ok =
            parse("[lockout]\nfailure_delay_ms = 0\nmax_failure_delay_ms = 0\ndanger_short_failure_delay = true\n");
        assert_eq!(ok.unwrap().lockout.failure_delay, Duration::ZERO);
    }

    /// A backup-code check may wait `BACKUP_HASH_WAIT` for a hash slot
    /// before it hashes, so a delay that a flood of guesses can outlast
    /// needs the danger switch.
    #[test]
    fn short_failure_delay_covers_hash_wait() {
        let wait_ms = crate::handlers::BACKUP_HASH_WAIT.as_millis();
        let err = parse(&format!("[lockout]\nfailure_delay_ms = {}\n", wait_ms + 20)).unwrap_err();
        assert!(err.to_string().contains("danger_short_failure_delay"), "{err}");
        assert!(i128::from(MIN_SAFE_FAILURE_DELAY_MS) > i128::try_from(wait_ms).unwrap());
    }

    #[test]
    fn thread_placement_defaults_to_on() {
        assert!(parse("").unwrap().server.thread_placement);
        let off = parse("[server]\nthread_placement = false\n").unwrap();
        assert!(!off.server.thread_placement);
        let err = parse("[server]\nthread_placement = \"no\"\n").unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].line, 2, "{err}");
    }

    #[test]
    fn rejects_wrong_types_and_ranges() {
        let err = parse("log_level = \"loud\"\n[server]\nmax_batch = \"many\"\nio_timeout_ms = 1\n").unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
    }
}
