//! End-to-end test of `pam_freeauth.so` behind OpenSSH: a real sshd with
//! `UsePAM yes` and keyboard-interactive authentication prompts for the Unix
//! password (pam_unix) and then for the code (pam_freeauth), and the real
//! `ssh` client answers both under `expect`.
//!
//! sshd runs on a free port of 127.0.0.1 inside a private mount namespace
//! (`unshare --mount`), where bind mounts put a private `/etc/pam.d` and
//! private copies of `/etc/passwd`, `/etc/shadow` and `/etc/group` with a
//! test user, and tmpfs mounts give sshd its own `/run` and `/var/log`. The
//! host's files and services stay untouched. When openssh-server is not
//! installed, the test runs the sshd of its Debian package, fetched with
//! `apt-get download` into `target/test-cache/` and unpacked with `dpkg -x`,
//! because installing the package would start an sshd on port 22.
//!
//! The test needs root (for the namespace and to read the private shadow
//! file) and is skipped with a message otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use freeauth_e2e::pam::{current_user_name, module_path, running_as_root};
use freeauth_e2e::*;

const SEED: &str = "3132333435363738393031323334353637383930";
/// The test user, which exists only inside sshd's mount namespace.
const USER: &str = "fa-sshd-test";
const PASSWORD: &str = "Unix-password-42";
/// Debian packages whose files make up a runnable sshd: the server and the
/// TCP wrappers library it links (`libwrap.so.0`), which is often missing.
const SSHD_PACKAGES: [&str; 2] = ["openssh-server", "libwrap0"];

/// An sshd in its own mount namespace, killed by PID when dropped.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts sshd with a PAM stack of pam_unix and then pam_freeauth with
    /// `freeauth_args`, and waits until it listens.
    fn start(freeauth_args: &str) -> Sshd {
        let (binary, library_path) = sshd_binary();
        let dir = tempfile::Builder::new().prefix("freeauth-sshd-").tempdir().unwrap();
        // The test user's home is inside; it must be able to enter it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        write_accounts(dir.path());
        write_pam_service(dir.path(), freeauth_args);
        let host_key = dir.path().join("host_key");
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key),
        );
        let port = free_port();
        write_sshd_config(dir.path(), port, &host_key);
        let script = namespace_script(dir.path(), &binary, library_path.as_deref());
        fs::write(dir.path().join("namespace.sh"), script).unwrap();

        let log = fs::File::create(dir.path().join("sshd.log")).unwrap();
        // unshare and sh exec into sshd, so the child's PID is sshd's.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "/bin/sh"])
            .arg(dir.path().join("namespace.sh"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut sshd = Sshd { child, port, dir };
        sshd.wait_listening();
        sshd
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn wait_listening(&mut self) {
        let ready = format!("Server listening on 127.0.0.1 port {}", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(&ready) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sshd exited with {status} at start:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sshd did not listen within 10 s:\n{}", self.log());
    }

    /// Logs in with `ssh` under `expect`, answering the password prompt with
    /// `password` and the code prompt with `code`, and runs a command that
    /// prints the user it runs as.
    fn login(&self, password: &str, code: &str) -> Login {
        let script = self.dir.path().join("login.exp");
        fs::write(&script, LOGIN_EXPECT).unwrap();
        let output = Command::new("expect")
            .arg("-f")
            .arg(&script)
            .arg(self.port.to_string())
            .arg(USER)
            .arg(password)
            .arg(code)
            .arg(self.dir.path().join("known_hosts"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("cannot run expect ({err}); install it with `apt-get install expect`"));
        Login {
            status: output.status.code(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this PID only; the namespace ends with
        // its last process.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The result of one `ssh` run under `expect`.
struct Login {
    status: Option<i32>,
    output: String,
}

impl Login {
    /// Returns whether the remote command ran as the test user. The command line
    /// that expect echoes contains `$(id -un)`, not the user name.
    fn logged_in(&self) -> bool {
        self.output.contains(&format!("LOGIN-OK as {USER}"))
    }
}

/// Runs ssh with no user configuration and only keyboard-interactive, and
/// answers the prompts. Exit status: ssh's, or 3 on a timeout and 4 when
/// ssh ended before a prompt.
const LOGIN_EXPECT: &str = r#"
set timeout 20
lassign $argv port user password code known_hosts
spawn ssh -F /dev/null -o UserKnownHostsFile=$known_hosts -o GlobalKnownHostsFile=/dev/null \
    -o StrictHostKeyChecking=no -o PreferredAuthentications=keyboard-interactive \
    -o NumberOfPasswordPrompts=1 -o LogLevel=ERROR -p $port $user@127.0.0.1 {echo LOGIN-OK as $(id -un)}
expect {
    -re {Password: ?$} { send -- "$password\r" }
    timeout { puts "TIMEOUT before the password prompt"; exit 3 }
    eof { puts "EOF before the password prompt"; exit 4 }
}
expect {
    -re {Verification code: ?$} { send -- "$code\r" }
    timeout { puts "TIMEOUT before the code prompt"; exit 3 }
    eof { puts "EOF before the code prompt"; exit 4 }
}
expect {
    timeout { puts "TIMEOUT after the code"; exit 3 }
    eof
}
lassign [wait] pid spawn_id os_error status
exit $status
"#;

/// Writes private copies of passwd, group and shadow with the test user,
/// and the `sshd` privilege separation user if the host lacks it.
fn write_accounts(dir: &Path) {
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    let group = fs::read_to_string("/etc/group").unwrap();
    let shadow = fs::read_to_string("/etc/shadow").unwrap();
    let uid = free_id(&passwd, &group);
    let home = dir.join("home");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), Some(uid)).unwrap();

    let mut passwd = without_entry(&passwd, USER);
    passwd.push_str(&format!(
        "{USER}:x:{uid}:{uid}:FreeAuth sshd test:{}:/bin/sh\n",
        home.display()
    ));
    if !passwd.lines().any(|line| line.starts_with("sshd:")) {
        passwd.push_str(&format!("sshd:x:{}:65534::/run/sshd:/usr/sbin/nologin\n", uid + 1));
    }
    let mut group = without_entry(&group, USER);
    group.push_str(&format!("{USER}:x:{uid}:\n"));
    let mut shadow = without_entry(&shadow, USER);
    shadow.push_str(&format!("{USER}:{}:19000:0:99999:7:::\n", password_hash(PASSWORD)));

    fs::write(dir.join("passwd"), passwd).unwrap();
    fs::write(dir.join("group"), group).unwrap();
    fs::write(dir.join("shadow"), shadow).unwrap();
    fs::set_permissions(dir.join("shadow"), fs::Permissions::from_mode(0o600)).unwrap();
}

fn without_entry(table: &str, name: &str) -> String {
    let prefix = format!("{name}:");
    table
        .lines()
        .filter(|line| !line.starts_with(&prefix))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Finds a uid (also used as gid) that neither the host's passwd nor group uses,
/// with the next one free too for the `sshd` user.
fn free_id(passwd: &str, group: &str) -> u32 {
    let used: Vec<u32> = passwd
        .lines()
        .chain(group.lines())
        .filter_map(|line| line.split(':').nth(2))
        .filter_map(|id| id.parse().ok())
        .collect();
    (61_000..65_000)
        .find(|id| !used.contains(id) && !used.contains(&(id + 1)))
        .expect("no free uid between 61000 and 65000")
}

/// Hashes `password` with SHA-512 crypt (`openssl passwd -6`).
fn password_hash(password: &str) -> String {
    let output = Command::new("openssl")
        .args(["passwd", "-6", password])
        .output()
        .unwrap_or_else(|err| panic!("cannot run openssl ({err}); install it with `apt-get install openssl`"));
    assert!(output.status.success(), "openssl passwd failed");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Writes the private `/etc/pam.d`: `sshd` with the password, then the code.
fn write_pam_service(dir: &Path, freeauth_args: &str) {
    let pam_dir = dir.join("pam.d");
    fs::create_dir(&pam_dir).unwrap();
    let sshd = format!(
        "auth required pam_unix.so nodelay\n\
         auth required {} {freeauth_args}\n\
         account required pam_unix.so\n\
         session required pam_permit.so\n\
         password required pam_deny.so\n",
        module_path().display()
    );
    fs::write(pam_dir.join("sshd"), sshd).unwrap();
    let deny_all = "auth required pam_deny.so\naccount required pam_deny.so\n\
                    session required pam_deny.so\npassword required pam_deny.so\n";
    fs::write(pam_dir.join("other"), deny_all).unwrap();
}

fn write_sshd_config(dir: &Path, port: u16, host_key: &Path) {
    let config = format!(
        "ListenAddress 127.0.0.1\n\
         Port {port}\n\
         HostKey {}\n\
         PidFile none\n\
         UsePAM yes\n\
         KbdInteractiveAuthentication yes\n\
         AuthenticationMethods keyboard-interactive\n\
         PasswordAuthentication no\n\
         PubkeyAuthentication no\n\
         PermitRootLogin no\n\
         AllowUsers {USER}\n\
         MaxAuthTries 3\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         LogLevel VERBOSE\n",
        host_key.display()
    );
    fs::write(dir.join("sshd_config"), config).unwrap();
}

/// Returns the shell script to run inside the new mount namespace. Mounts made there
/// are private (`--propagation private`) and vanish with the namespace.
fn namespace_script(dir: &Path, sshd: &Path, library_path: Option<&Path>) -> String {
    let dir = dir.display();
    let library_export = match library_path {
        Some(path) => format!("export LD_LIBRARY_PATH={}\n", path.display()),
        None => String::new(),
    };
    format!(
        "set -e\n\
         mount --bind {dir}/pam.d /etc/pam.d\n\
         mount --bind {dir}/passwd /etc/passwd\n\
         mount --bind {dir}/group /etc/group\n\
         mount --bind {dir}/shadow /etc/shadow\n\
         mount -t tmpfs -o mode=755 tmpfs /run\n\
         mount -t tmpfs -o mode=755 tmpfs /var/log\n\
         mkdir -m 755 /run/sshd\n\
         {library_export}\
         exec {} -D -e -f {dir}/sshd_config\n",
        sshd.display()
    )
}

/// Returns a port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run_ok(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Finds the sshd to run and the library folder it needs, if any: the
/// installed one, or the one unpacked from the Debian packages in the cache.
fn sshd_binary() -> (PathBuf, Option<PathBuf>) {
    let installed = PathBuf::from("/usr/sbin/sshd");
    if installed.exists() {
        return (installed, None);
    }
    let cache = bin_dir().parent().expect("target folder").join("test-cache/openssh");
    let root = cache.join("root");
    if !root.join("usr/sbin/sshd").exists() {
        unpack_sshd(&cache, &root);
    }
    let binary = root.join("usr/sbin/sshd");
    let library_path = root.join("usr/lib/x86_64-linux-gnu");
    check_libraries(&binary, &library_path);
    (binary, Some(library_path))
}

/// Downloads the packages of [`SSHD_PACKAGES`] without installing them
/// (`apt-get download`, retried once after `apt-get update`) and unpacks
/// them into `root`, through a temporary folder so that an interrupted run
/// leaves no half-unpacked tree.
fn unpack_sshd(cache: &Path, root: &Path) {
    // Start empty, so that an older version left in the folder is not
    // unpacked over the new one.
    let debs = cache.join("debs");
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs).unwrap();
    let download = || {
        Command::new("apt-get")
            .arg("download")
            .args(SSHD_PACKAGES)
            .current_dir(&debs)
            .output()
            .unwrap_or_else(|err| panic!("cannot run apt-get ({err}); this test needs Debian's apt"))
    };
    let mut output = download();
    if !output.status.success() {
        run_ok(Command::new("apt-get").args(["update", "-qq"]));
        output = download();
    }
    assert!(
        output.status.success(),
        "apt-get download {} failed; check the network and apt sources:\n{}",
        SSHD_PACKAGES.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let staging = tempfile::Builder::new().prefix("unpack-").tempdir_in(cache).unwrap();
    for entry in fs::read_dir(&debs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "deb") {
            run_ok(Command::new("dpkg").arg("-x").arg(&path).arg(staging.path()));
        }
    }
    let _ = fs::remove_dir_all(root);
    fs::rename(staging.keep(), root).unwrap();
}

/// Fails with the list of missing libraries when `binary` cannot load.
fn check_libraries(binary: &Path, library_path: &Path) {
    let output = Command::new("ldd")
        .arg(binary)
        .env("LD_LIBRARY_PATH", library_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let missing: Vec<&str> = text.lines().filter(|line| line.contains("not found")).collect();
    assert!(
        missing.is_empty(),
        "{} cannot load its libraries; install the packages that provide them:\n{}",
        binary.display(),
        missing.join("\n")
    );
}

#[test]
fn sshd_login_needs_password_and_fresh_code() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root for a mount namespace with a private /etc (CI runs as root)");
        return;
    }
    let agent = Agent::start();
    agent.ctl_ok(&["enroll", USER, "--secret-hex", SEED, "--no-qr"]);
    let args = format!(
        "socket={} agent_user={} timeout=5",
        agent.agent_socket().display(),
        current_user_name()
    );
    let sshd = Sshd::start(&args);
    let host_passwd = fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !host_passwd.contains(&format!("{USER}:")),
        "the test user leaked into the host's /etc/passwd"
    );

    let far_future = oath_totp(SEED, "sha1", 6, 30, now() + 3600);
    let wrong = sshd.login(PASSWORD, &far_future);
    assert_ne!(wrong.status, Some(0), "wrong code: exit status\n{}", wrong.output);
    assert!(!wrong.logged_in(), "wrong code: logged in\n{}", wrong.output);
    assert!(wrong.output.contains("Permission denied"), "{}", wrong.output);

    wait_for_fresh_step(30, 5);
    let code = oath_totp(SEED, "sha1", 6, 30, now());
    let good = sshd.login(PASSWORD, &code);
    assert_eq!(
        good.status,
        Some(0),
        "fresh code: exit status\n{}\n{}",
        good.output,
        sshd.log()
    );
    assert!(good.logged_in(), "fresh code: no command output\n{}", good.output);
    let log = sshd.log();
    assert!(
        log.contains(&format!("Accepted keyboard-interactive/pam for {USER}")),
        "{log}"
    );
    let agent_log = agent.log();
    assert!(agent_log.contains("service=\"sshd\""), "{agent_log}");
    assert!(agent_log.contains("rhost=\"127.0.0.1\""), "{agent_log}");

    let reused = sshd.login(PASSWORD, &code);
    assert_ne!(
        reused.status,
        Some(0),
        "same code again: exit status\n{}",
        reused.output
    );
    assert!(!reused.logged_in(), "same code again: logged in\n{}", reused.output);
    assert!(reused.output.contains("Permission denied"), "{}", reused.output);
    let log = sshd.log();
    assert!(
        log.contains(&format!("Failed keyboard-interactive/pam for {USER}")),
        "{log}"
    );
}
