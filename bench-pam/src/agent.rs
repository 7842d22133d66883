//! The `freeauth-agentd` under benchmark: a configuration in the size's
//! temporary folder, start-up, and shutdown by SIGTERM to its PID.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use freeauth_proto::Client;

/// Time the agent has to open its admin socket after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Time the agent has to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running agent. Dropping it stops the process, so an error path leaves
/// no agent behind.
pub struct Agent {
    child: Option<Child>,
    folder: PathBuf,
}

impl Agent {
    /// Writes `folder/agentd.toml`, spawns `binary` with it, and waits until
    /// the admin socket accepts a connection. The agent's log goes to
    /// `folder/agentd.log`.
    pub fn start(binary: &Path, folder: &Path, log_level: &str) -> Result<Agent, String> {
        let config = folder.join("agentd.toml");
        fs::write(&config, config_text(log_level))
            .map_err(|err| format!("cannot write {}: {err}", config.display()))?;
        let log_path = folder.join("agentd.log");
        let log = fs::File::create(&log_path).map_err(|err| format!("cannot create {}: {err}", log_path.display()))?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            // The configuration's log_level applies only without this variable.
            .env_remove("FREEAUTH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", binary.display()))?;
        let mut agent = Agent {
            child: Some(child),
            folder: folder.to_owned(),
        };
        agent.wait_until_ready()?;
        Ok(agent)
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.folder.join("run/agent.sock")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.folder.join("run/admin.sock")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if Client::connect(&self.admin_socket(), "freeauth-bench-pam", Duration::from_secs(2)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "the agent exited with {status} at start; see {}",
                        self.log_path()
                    ));
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "the agent did not open {} within {} s; see {}",
            self.admin_socket().display(),
            START_TIMEOUT.as_secs(),
            self.log_path()
        ))
    }

    fn log_path(&self) -> String {
        self.folder.join("agentd.log").display().to_string()
    }

    /// Sends SIGTERM to the agent's PID and waits for it to exit; sends
    /// SIGKILL (to the same child) if it is still running after
    /// [`STOP_TIMEOUT`].
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) with the PID of a child this process spawned and
            // has not reaped yet, so the PID cannot belong to another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("the agent (PID {pid}) exited with {status} after SIGTERM")),
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(err) => return Err(format!("cannot wait for the agent (PID {pid}): {err}")),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "the agent (PID {pid}) ignored SIGTERM for {} s and was killed",
            STOP_TIMEOUT.as_secs()
        ))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("warning: {err}");
        }
    }
}

/// Returns the agent's configuration: the shipped defaults (conf/agentd.toml), with
/// paths inside the temporary folder and the given log level.
fn config_text(log_level: &str) -> String {
    format!(
        "log_level = \"{log_level}\"\n\n\
         [paths]\n\
         state_dir = \"state\"\n\
         seed_key = \"state/seed.key\"\n\
         agent_socket = \"run/agent.sock\"\n\
         admin_socket = \"run/admin.sock\"\n\n\
         [enroll]\n\
         issuer = \"FreeAuth PAM benchmark\"\n"
    )
}
