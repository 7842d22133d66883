//! One `freeauth-agentd` under benchmark: its temporary folder and
//! configuration, start-up, resident memory and shutdown by SIGTERM.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use freeauth_proto::Client;
use sha2::{Digest, Sha256};

/// Time the agent has to open its sockets after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Time the agent has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A private copy of the agent binary, so that a rebuild of
/// `target/release` during a run cannot mix two versions. Dropping it
/// removes the copy.
pub struct AgentBinary {
    /// Folder of the copy, removed on drop.
    _folder: tempfile::TempDir,
    pub path: PathBuf,
    /// SHA-256 of the binary in hex, to tell runs of different builds apart.
    pub sha256: String,
}

impl AgentBinary {
    /// Copies `original` into a fresh temporary folder.
    pub fn copy_of(original: &Path) -> Result<AgentBinary, String> {
        let bytes = fs::read(original).map_err(|err| format!("cannot read {}: {err}", original.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("freeauth-bench-bin-")
            .tempdir()
            .map_err(|err| format!("cannot create a temporary folder: {err}"))?;
        let path = dir.path().join("freeauth-agentd");
        fs::write(&path, &bytes).map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
            .map_err(|err| format!("cannot make {} executable: {err}", path.display()))?;
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Ok(AgentBinary {
            _folder: dir,
            path,
            sha256,
        })
    }
}

/// Settings written into the agent's configuration file.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub binary: PathBuf,
    /// `[server] max_in_flight`: requests one connection may have pending.
    pub max_in_flight: usize,
    /// `log_level`. At `info` the agent logs one line per verification.
    pub log_level: String,
}

/// Resident memory of a process from `/proc/PID/status`, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the highest resident size since the process started.
    pub hwm_kib: u64,
}

/// A running agent in its own temporary folder. Dropping it stops the agent
/// and removes the folder, so an error path leaves no process behind.
pub struct RunningAgent {
    /// Set until [`RunningAgent::stop`] takes it to remove the folder.
    dir: Option<tempfile::TempDir>,
    folder: PathBuf,
    child: Option<Child>,
    pid: u32,
}

impl RunningAgent {
    /// Writes a configuration into a fresh temporary folder, spawns the agent
    /// and waits until its admin socket accepts a connection.
    pub fn start(settings: &AgentSettings) -> Result<RunningAgent, String> {
        let dir = tempfile::Builder::new()
            .prefix("freeauth-bench-")
            .tempdir()
            .map_err(|err| format!("cannot create a temporary folder: {err}"))?;
        let config = dir.path().join("agentd.toml");
        fs::write(&config, config_text(settings)).map_err(|err| format!("cannot write {}: {err}", config.display()))?;
        let log_path = dir.path().join("agentd.log");
        let log = fs::File::create(&log_path).map_err(|err| format!("cannot create {}: {err}", log_path.display()))?;
        let child = Command::new(&settings.binary)
            .arg("--config")
            .arg(&config)
            // The configuration's log_level applies only without this variable.
            .env_remove("FREEAUTH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", settings.binary.display()))?;
        let pid = child.id();
        let mut agent = RunningAgent {
            folder: dir.path().to_owned(),
            dir: Some(dir),
            child: Some(child),
            pid,
        };
        agent.wait_until_ready()?;
        Ok(agent)
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if Client::connect(&self.admin_socket(), "freeauth-bench", Duration::from_secs(2)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "the agent exited with {status} at start; end of its log:\n{}",
                        self.log_tail()
                    ));
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "the agent did not open {} within {} s; end of its log:\n{}",
            self.admin_socket().display(),
            START_TIMEOUT.as_secs(),
            self.log_tail()
        ))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.folder.join("run/agent.sock")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.folder.join("run/admin.sock")
    }

    /// Returns the size of the database's write-ahead log in bytes, or 0 when
    /// it does not exist.
    pub fn wal_bytes(&self) -> Result<u64, String> {
        let path = self.folder.join("state/freeauth.db-wal");
        match fs::metadata(&path) {
            Ok(meta) => Ok(meta.len()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(err) => Err(format!("cannot read the size of {}: {err}", path.display())),
        }
    }

    /// Reads `VmRSS` and `VmHWM` of the agent.
    pub fn memory(&self) -> Result<Memory, String> {
        let path = format!("/proc/{}/status", self.pid);
        let status = fs::read_to_string(&path).map_err(|err| format!("cannot read {path}: {err}"))?;
        let field = |name: &str| -> Result<u64, String> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| format!("{path} has no valid {name} line"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }

    /// Returns the last 4 KiB of the agent's log, for error messages.
    pub fn log_tail(&self) -> String {
        let path = self.folder.join("agentd.log");
        let Ok(mut file) = fs::File::open(&path) else {
            return format!("({} cannot be opened)", path.display());
        };
        let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(length.saturating_sub(4096)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Stops the agent with SIGTERM, waits for it to exit and removes the
    /// folder. An agent that outlives [`STOP_TIMEOUT`] is killed, and that is
    /// reported as an error.
    pub fn stop(mut self) -> Result<(), String> {
        let stopped = match self.child.take() {
            Some(child) => terminate(child, self.pid, STOP_TIMEOUT),
            None => Ok(()),
        };
        let removed = match self.dir.take() {
            Some(dir) => dir
                .close()
                .map_err(|err| format!("cannot remove {}: {err}", self.folder.display())),
            None => Ok(()),
        };
        stopped.and(removed)
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            if let Err(err) = terminate(child, self.pid, Duration::from_secs(5)) {
                eprintln!("freeauth-bench-agent: {err}");
            }
        }
    }
}

/// Sends SIGTERM to our own child `pid` and waits up to `timeout` for it to
/// exit, then kills it with SIGKILL.
fn terminate(mut child: Child, pid: u32, timeout: Duration) -> Result<(), String> {
    // NOTE: `kill` runs as a command because the workspace denies unsafe code,
    // which a direct kill(2) through libc needs.
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !sent.is_ok_and(|status| status.success()) {
        eprintln!("freeauth-bench-agent: sending SIGTERM to agent {pid} failed; waiting for it anyway");
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(err) => return Err(format!("cannot wait for agent {pid}: {err}")),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!(
        "agent {pid} ignored SIGTERM for {} s and was killed",
        timeout.as_secs()
    ))
}

/// Builds the configuration file. Its paths are relative, so everything
/// stays in the temporary folder, and its failure delays are short, so that a
/// wrong code cannot stall the run.
fn config_text(settings: &AgentSettings) -> String {
    format!(
        "log_level = \"{log_level}\"\n\
         [paths]\n\
         state_dir = \"state\"\n\
         seed_key = \"state/seed.key\"\n\
         agent_socket = \"run/agent.sock\"\n\
         admin_socket = \"run/admin.sock\"\n\
         [lockout]\n\
         threshold = 10\n\
         danger_short_failure_delay = true\n\
         failure_delay_ms = 1\n\
         max_failure_delay_ms = 4\n\
         [server]\n\
         max_in_flight = {max_in_flight}\n",
        log_level = settings.log_level,
        max_in_flight = settings.max_in_flight,
    )
}
