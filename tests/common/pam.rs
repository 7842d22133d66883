//! PAM helpers of the end-to-end tests: PAM service files in a temporary
//! folder, and `pamtester` run under pam_wrapper, which makes the real
//! libpam read those files instead of `/etc/pam.d`. The module under test is
//! the built `libpam_freeauth.so`, loaded by absolute path.
//!
//! pam_wrapper also prints what modules send to `pam_syslog` on standard
//! error (`PWRAP_...SYSLOG(priority): message`, for priorities up to info
//! at `PAM_WRAPPER_DEBUGLEVEL=2`), so tests can check the module's log.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::Duration;

use crate::{bin_dir, Agent};

/// What pamtester prints for `PAM_SUCCESS` from `pam_authenticate`.
pub const SUCCESS: &str = "pamtester: successfully authenticated";
/// `pam_strerror` texts of Linux-PAM 1.5 (Debian 12), which pamtester prints
/// after "pamtester: " when authentication fails.
pub const AUTH_ERR: &str = "Authentication failure";
pub const USER_UNKNOWN: &str = "User not known to the underlying authentication module";
pub const MAXTRIES: &str = "Have exhausted maximum number of retries for service";
pub const AUTHINFO_UNAVAIL: &str = "Authentication service cannot retrieve authentication info";
pub const CONV_ERR: &str = "Conversation error";
/// What libpam returns when every module of a stack returned `PAM_IGNORE`.
pub const PERM_DENIED: &str = "Permission denied";

/// The module's prompt when neither `prompt=` nor the agent sets one.
pub const CODE_PROMPT: &str = "Verification code: ";
/// The module's prompt for password and code in one answer (`forward_pass`).
pub const FORWARD_PROMPT: &str = "Password followed by verification code: ";

/// Returns the path of the built PAM module, failing with a hint when it
/// was not built.
pub fn module_path() -> PathBuf {
    let path = bin_dir().join("libpam_freeauth.so");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p pam_freeauth` first",
        path.display()
    );
    path
}

/// Finds `name` (a pam_wrapper library or test module) under
/// `/usr/lib/<multiarch>/` or `/usr/lib/<multiarch>/pam_wrapper/`.
pub fn pam_wrapper_file(name: &str) -> PathBuf {
    let mut found = None;
    for entry in fs::read_dir("/usr/lib").unwrap().flatten() {
        for candidate in [entry.path().join(name), entry.path().join("pam_wrapper").join(name)] {
            if candidate.is_file() {
                found = Some(candidate);
            }
        }
    }
    found.unwrap_or_else(|| panic!("{name} not found under /usr/lib: install it with `apt-get install libpam-wrapper`"))
}

/// Returns whether this process runs as root: `/proc/self` belongs to the effective
/// uid of the process that looks at it.
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self").map(|meta| meta.uid() == 0).unwrap_or(false)
}

/// Returns the name of the user running the tests, which is the user the test agent
/// runs as and therefore the right `agent_user=`.
pub fn current_user_name() -> String {
    let output = Command::new("id").arg("-un").output().unwrap();
    assert!(output.status.success(), "id -un failed");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `socket=` and `agent_user=` for the test agent, and a short `timeout=`
/// so that a hanging test fails in seconds.
pub fn agent_args(agent: &Agent) -> String {
    format!(
        "socket={} agent_user={} timeout=5",
        agent.agent_socket().display(),
        current_user_name()
    )
}

/// Returns an `auth` line that loads the built module with `control` and `args`.
pub fn freeauth_line(control: &str, args: &str) -> String {
    format!("auth {control} {} {args}", module_path().display())
}

/// A stack that succeeds only when the module returns `PAM_IGNORE`: the
/// `ignore=1` action jumps over `pam_deny`, and any other code ends the stack
/// with that code (`PAM_SUCCESS` then turns into "Permission denied").
pub fn ignore_probe_stack(args: &str) -> Vec<String> {
    vec![
        freeauth_line("[ignore=1 default=die]", args),
        "auth requisite pam_deny.so".to_owned(),
        "auth required pam_permit.so".to_owned(),
    ]
}

/// A folder of PAM service files, readable by every user so that pamtester
/// can also run as uid 65534.
pub struct Services {
    dir: tempfile::TempDir,
}

impl Services {
    pub fn new() -> Services {
        let dir = tempfile::Builder::new().prefix("freeauth-pam-").tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        // Without an `other` file libpam logs "no default config other".
        fs::write(dir.path().join("other"), "").unwrap();
        Services { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the service file `service` with one PAM line per entry.
    pub fn write(&self, service: &str, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(self.dir.path().join(service), text).unwrap();
    }

    /// Writes an executable script next to the service files.
    pub fn write_script(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Prepares a pamtester run of `authenticate` for `user` on `service`.
    pub fn pamtester(&self, service: &str, user: &str) -> Pamtester<'_> {
        Pamtester {
            services: self,
            service: service.to_owned(),
            user: user.to_owned(),
            input: String::new(),
            env: Vec::new(),
            items: Vec::new(),
            as_nobody: false,
            flags: None,
        }
    }
}

impl Default for Services {
    fn default() -> Self {
        Services::new()
    }
}

/// One `pamtester SERVICE USER authenticate` run, configured step by step.
pub struct Pamtester<'a> {
    services: &'a Services,
    service: String,
    user: String,
    input: String,
    env: Vec<(String, String)>,
    items: Vec<String>,
    as_nobody: bool,
    /// Flags of `pam_authenticate` in pamtester's syntax, such as
    /// `PAM_DISALLOW_NULL_AUTHTOK`.
    flags: Option<String>,
}

impl Pamtester<'_> {
    /// Adds one response to the conversation (pamtester reads responses
    /// from standard input, one per line).
    pub fn response(mut self, text: &str) -> Self {
        self.input.push_str(text);
        self.input.push('\n');
        self
    }

    /// Sets an environment variable of pamtester, for example `PAM_AUTHTOK`,
    /// which `pam_set_items.so` copies into the PAM item of that name.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets a PAM item before authentication (`rhost=...`, `tty=...`).
    pub fn item(mut self, assignment: &str) -> Self {
        self.items.push(assignment.to_owned());
        self
    }

    /// Passes `flags` to `pam_authenticate`, written as pamtester reads
    /// them: flag names joined by `|`.
    pub fn flags(mut self, flags: &str) -> Self {
        self.flags = Some(flags.to_owned());
        self
    }

    /// Runs pamtester as uid and gid 65534 (`nobody`) through setpriv.
    pub fn as_nobody(mut self) -> Self {
        self.as_nobody = true;
        self
    }

    /// Runs pamtester with the responses given so far and waits for it.
    pub fn run(self) -> PamRun {
        self.spawn().finish()
    }

    /// Starts pamtester and writes the responses given so far, leaving its
    /// standard input open for [`RunningPamtester::respond`].
    pub fn spawn(self) -> RunningPamtester {
        let preload = format!("LD_PRELOAD={}", pam_wrapper_file("libpam_wrapper.so").display());
        // Only pamtester may load pam_wrapper: in setpriv, which execs without
        // running destructors, it would leave its copy of the services in /tmp.
        let mut command = if self.as_nobody {
            let mut command = Command::new("setpriv");
            command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "env", &preload]);
            command
        } else {
            let mut command = Command::new("env");
            command.arg(&preload);
            command
        };

        command.arg("pamtester");
        for item in &self.items {
            command.arg(format!("-I{item}"));
        }
        let operation = match &self.flags {
            Some(flags) => format!("authenticate({flags})"),
            None => "authenticate".to_owned(),
        };
        command
            .args([&self.service, &self.user, &operation])
            .env("PAM_WRAPPER", "1")
            .env("PAM_WRAPPER_SERVICE_DIR", self.services.path())
            .env("PAM_WRAPPER_DEBUGLEVEL", "2")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        // pam_wrapper 1.1.4 checks that `/tmp/pam.X` is free before it creates it, not
        // atomically, so two pamtesters starting at once can share one copy of the services.
        let guard = PAM_WRAPPER_START
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().unwrap();
        let (ready, started) = mpsc::channel();
        let stderr = thread::spawn(move || read_stderr(stderr, ready));
        // The reader signals the end of initialisation, or of the output.
        let _ = started.recv_timeout(Duration::from_secs(30));
        drop(guard);

        let mut running = RunningPamtester { child, stdin, stderr };
        running.respond_raw(&self.input);
        running
    }
}

/// Lock held while one pamtester initialises pam_wrapper.
// NOTE: it covers the pamtesters of one test process only. Test binaries
// that run at the same time (two `cargo test` runs, or a runner with a
// process per test) can still share a pam_wrapper folder.
static PAM_WRAPPER_START: Mutex<()> = Mutex::new(());

/// Line that pam_wrapper prints on standard error at `PAM_WRAPPER_DEBUGLEVEL=2`
/// once its copy of the services is in place.
const PAM_WRAPPER_READY: &str = "Successfully initialized pam_wrapper";

/// Collects pamtester's standard error, and signals `ready` when
/// pam_wrapper has finished its initialisation or the output ends.
fn read_stderr(stderr: std::process::ChildStderr, ready: mpsc::Sender<()>) -> String {
    let mut text = String::new();
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let piece = String::from_utf8_lossy(&line);
                if piece.contains(PAM_WRAPPER_READY) {
                    let _ = ready.send(());
                }
                text.push_str(&piece);
            }
        }
    }
    let _ = ready.send(());
    text
}

/// A pamtester run that may still wait for responses.
pub struct RunningPamtester {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stderr: thread::JoinHandle<String>,
}

impl RunningPamtester {
    /// Sends one more response to the conversation.
    pub fn respond(&mut self, text: &str) {
        self.respond_raw(&format!("{text}\n"));
    }

    fn respond_raw(&mut self, input: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            // pamtester may exit without reading, so a broken pipe is expected.
            let _ = stdin.write_all(input.as_bytes());
        }
    }

    /// Closes standard input, so that a later prompt gets no answer, and
    /// waits for pamtester to end.
    pub fn finish(mut self) -> PamRun {
        self.stdin = None;
        let output = self.child.wait_with_output().unwrap();
        let stderr = self.stderr.join().unwrap();

        // env(1) exits with 127 when it cannot find the command.
        assert_ne!(
            output.status.code(),
            Some(127),
            "cannot run pamtester; install it with `apt-get install pamtester`:\n{stderr}"
        );
        PamRun {
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
        }
    }
}

/// The result of one pamtester run.
pub struct PamRun {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl PamRun {
    /// Standard output and standard error together: prompts, messages of the
    /// conversation, pamtester's verdict and the modules' log.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Messages that modules sent to `pam_syslog`, without pam_wrapper's
    /// prefix.
    pub fn log_lines(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter_map(|line| line.split_once("SYSLOG(").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_once("): ").map(|(_, message)| message.to_owned()))
            .collect()
    }

    pub fn logged(&self, text: &str) -> bool {
        self.log_lines().iter().any(|line| line.contains(text))
    }

    pub fn prompted(&self, prompt: &str) -> bool {
        self.output().contains(prompt)
    }

    /// Asserts that pam_authenticate returned `PAM_SUCCESS`.
    pub fn assert_success(&self, case: &str) {
        assert_eq!(self.status, Some(0), "{case}: pamtester exit status\n{self}");
        assert!(self.stdout.contains(SUCCESS), "{case}: pamtester verdict\n{self}");
    }

    /// Asserts that pam_authenticate failed with the code whose
    /// `pam_strerror` text is `error_text`.
    pub fn assert_failure(&self, error_text: &str, case: &str) {
        assert_eq!(self.status, Some(1), "{case}: pamtester exit status\n{self}");
        let verdict = format!("pamtester: {error_text}");
        assert!(
            self.stderr.lines().any(|line| line.ends_with(&verdict)),
            "{case}: expected \"{verdict}\"\n{self}"
        );
    }
}

impl fmt::Display for PamRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "exit status: {:?}", self.status)?;
        writeln!(f, "--- stdout\n{}", self.stdout)?;
        write!(f, "--- stderr\n{}", self.stderr)
    }
}
