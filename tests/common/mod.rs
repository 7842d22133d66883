//! Shared harness of the end-to-end tests: a real `freeauth-agentd` in a
//! temporary folder, `freeauthctl` against it, raw protocol clients, and
//! `oathtool` as an independent code generator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod pam;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use freeauth_proto::{Client, Origin, Request, Response, SecretString, VerifyResult};

pub mod radius;

/// Folder of the built binaries: the test executable lives in
/// `target/<profile>/deps/`, the binaries one level up.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target folder").to_owned()
}

/// Path of a workspace binary, failing with a hint when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Runs `command` with its output captured, and fails the test if it is
/// still running after `limit`: for commands that must not hang.
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait for the command").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still runs after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("read the command's output")
}

/// Settings of a test agent beyond the defaults. A threshold of 0 turns the
/// lock off (with the danger switch the agent requires for that).
pub struct Options {
    pub threshold: u32,
    pub failure_delay_ms: u64,
    pub max_failure_delay_ms: u64,
    pub lock_seconds: u64,
    pub source_threshold: u32,
    pub extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threshold: 5,
            failure_delay_ms: 1,
            max_failure_delay_ms: 4,
            lock_seconds: 600,
            source_threshold: 30,
            extra: String::new(),
        }
    }
}

/// A running agent in its own temporary folder; stopped on drop.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Agent {
        let dir = tempfile::Builder::new().prefix("freeauth-test-").tempdir().unwrap();
        // Let other users reach the socket folder (the non-root caller test).
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        write_config(dir.path(), &options);
        let mut agent = Agent { dir, child: None };
        agent.spawn();
        agent
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("agentd.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agentd.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.dir.path().join("run/agent.sock")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("run/admin.sock")
    }

    /// Starts the agent process and waits until the admin socket answers.
    pub fn spawn(&mut self) {
        let mut command = Command::new(binary("freeauth-agentd"));
        command.arg("--config").arg(self.config());
        self.spawn_with(command);
    }

    /// Starts the agent with `command`, which must end in the agent's own
    /// process (by `exec`), and waits until the admin socket replies.
    pub fn spawn_with(&mut self, mut command: Command) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = command
            .env("FREEAUTH_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if Client::connect(&self.admin_socket(), "test", Duration::from_secs(2)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited with {status} at start:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent did not start within 20 s:\n{}", self.log());
    }

    /// Stops the agent with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent ignored SIGTERM for 15 s");
        }
    }

    /// Kills the agent with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn signal(&self, signal_number: i32) {
        signal(self.child.as_ref().unwrap(), signal_number);
    }

    /// Runs `freeauthctl --config CONFIG ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(binary("freeauthctl"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `freeauthctl --config CONFIG ARGS` with `input` on its standard
    /// input, through a pipe.
    pub fn ctl_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(binary("freeauthctl"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Small inputs fit in the pipe's buffer, so nothing waits here.
        let mut stdin = child.stdin.take().expect("stdin of freeauthctl");
        stdin.write_all(input.as_bytes()).expect("write to freeauthctl");
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    /// Runs freeauthctl and asserts success; returns standard output.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let output = self.ctl(args);
        assert!(
            output.status.success(),
            "freeauthctl {args:?} failed with {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Exit code of `freeauthctl verify USER CODE`.
    pub fn ctl_verify(&self, user: &str, code: &str) -> i32 {
        self.ctl(&["verify", user, code]).status.code().unwrap_or(-1)
    }

    /// A protocol client on the agent socket.
    pub fn agent_client(&self) -> Client {
        Client::connect(&self.agent_socket(), "test", Duration::from_secs(30)).unwrap()
    }

    /// Verifies through the agent socket as a PAM front end would.
    pub fn verify_pam(&self, user: &str, code: &str) -> VerifyResult {
        verdict(
            self.agent_client()
                .call(verify_request(user, code, pam_origin()))
                .unwrap(),
        )
    }

    /// Verifies through the agent socket with the given origin.
    pub fn verify_from(&self, user: &str, code: &str, origin: Origin) -> VerifyResult {
        verdict(self.agent_client().call(verify_request(user, code, origin)).unwrap())
    }

    /// Verifies through the agent socket as the RADIUS bridge would.
    pub fn verify_radius(&self, user: &str, code: &str) -> VerifyResult {
        verdict(
            self.agent_client()
                .call(verify_request(user, code, radius_origin()))
                .unwrap(),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            std::thread::sleep(Duration::from_millis(50));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal_number` to a child this test spawned and still owns.
fn signal(child: &Child, signal_number: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal_number}"))
        .arg(child.id().to_string())
        .status();
}

fn write_config(dir: &Path, options: &Options) {
    let text = format!(
        "[paths]\nstate_dir = \"state\"\nseed_key = \"state/seed.key\"\nagent_socket = \"run/agent.sock\"\nadmin_socket = \"run/admin.sock\"\n\
         [lockout]\nthreshold = {}\ndanger_disable_lockout = {}\ndanger_short_failure_delay = {}\nfailure_delay_ms = {}\nmax_failure_delay_ms = {}\nlock_seconds = {}\nsource_threshold = {}\n\
         [enroll]\nissuer = \"FreeAuth test\"\n{}\n",
        options.threshold,
        options.threshold == 0,
        // The tests use delays of a few milliseconds to run fast.
        options.failure_delay_ms < 300,
        options.failure_delay_ms, options.max_failure_delay_ms, options.lock_seconds, options.source_threshold, options.extra
    );
    fs::write(dir.join("agentd.toml"), text).unwrap();
}

pub fn pam_origin() -> Origin {
    Origin::Pam {
        service: "sshd".into(),
        rhost: Some("192.0.2.7".into()),
        tty: Some("ssh".into()),
        ruser: None,
    }
}

pub fn radius_origin() -> Origin {
    Origin::Radius {
        client: "vpn-gateway".into(),
        nas_identifier: Some("vpn1".into()),
        nas_ip: None,
        calling_station: None,
        caller_delays: None,
    }
}

pub fn verify_request(user: &str, code: &str, origin: Origin) -> Request {
    Request::Verify {
        user: user.into(),
        code: SecretString::new(code),
        origin,
    }
}

pub fn verdict(response: Response) -> VerifyResult {
    match response {
        Response::Verdict { result, .. } => result,
        other => panic!("expected a verdict, got {other:?}"),
    }
}

/// Runs oathtool with `args` and returns its one-line output.
pub fn oathtool(args: &[&str]) -> String {
    let output = Command::new("oathtool")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run oathtool ({err}); install it with `apt-get install oathtool`"));
    assert!(
        output.status.success(),
        "oathtool {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// HOTP code of `counter` from oathtool.
pub fn oath_hotp(secret_hex: &str, counter: u64, digits: u8) -> String {
    oathtool(&[
        "--hotp",
        "-d",
        &digits.to_string(),
        "-c",
        &counter.to_string(),
        secret_hex,
    ])
}

/// TOTP code at `unix_time` from oathtool.
pub fn oath_totp(secret_hex: &str, algorithm: &str, digits: u8, period: u32, unix_time: u64) -> String {
    oathtool(&[
        &format!("--totp={algorithm}"),
        "-d",
        &digits.to_string(),
        "-s",
        &format!("{period}s"),
        "-N",
        &format!("@{unix_time}"),
        secret_hex,
    ])
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until at least `margin` seconds remain in the current `period`
/// step, so that a code computed now is still current when it arrives.
pub fn wait_for_fresh_step(period: u64, margin: u64) {
    while period - now() % period < margin {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes `bytes` to a raw connection of the agent socket.
pub fn raw_send(stream: &mut UnixStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
}

/// Reads whatever the agent sends until it closes or `timeout` passes.
pub fn raw_read_all(stream: &mut UnixStream, timeout: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A frame with `body` after a correct length prefix.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// The hello frame of protocol version 1.
pub fn hello_frame() -> Vec<u8> {
    frame(br#"{"version":1,"client":"raw-test"}"#)
}

/// Runs the daemon `program` with `--config config`, expecting it to stop
/// at start. Returns its exit status and standard error. Kills it and
/// panics with `still_running` when it runs for 10 s.
pub fn start_expecting_exit(program: &str, config: &Path, still_running: &str) -> (ExitStatus, String) {
    let mut child = Command::new(binary(program))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{still_running}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    (status, stderr)
}
