//! A real `freeauth-radius` next to a test agent, and `radclient` (package
//! freeradius-utils) as the RADIUS client.

use std::fs;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{binary, Agent};

/// Shared secret of the test clients.
pub const SECRET: &str = "test-secret-0123456789";

/// A running bridge; stopped on drop.
pub struct Bridge {
    pub config: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// A free UDP port on 127.0.0.1 (and, by the same number, on ::1).
pub fn free_udp_port() -> u16 {
    loop {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = socket.local_addr().expect("local address").port();
        if UdpSocket::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

impl Bridge {
    /// Starts a bridge for `agent` with `clients` (TOML `[[client]]` tables).
    pub fn start(agent: &Agent, clients: &str) -> Bridge {
        Bridge::start_at(agent, "run/agent.sock", clients)
    }

    /// Starts a bridge that reaches the agent through `agent_socket`,
    /// relative to the agent's folder.
    pub fn start_at(agent: &Agent, agent_socket: &str, clients: &str) -> Bridge {
        let port = free_udp_port();
        let listen = format!("\"127.0.0.1:{port}\", \"[::1]:{port}\"");
        let mut bridge = Bridge::configure(agent, agent_socket, &listen, port, clients);
        bridge.spawn();
        bridge
    }

    /// Starts a bridge in a new network namespace, where only the loopback
    /// interface exists, after `setup` (shell commands such as `ip addr
    /// add`) ran there. It listens on `listen`, a TOML list of addresses
    /// whose port is `port`. Needs root; reach it with
    /// [`Bridge::radclient_in_namespace`].
    pub fn start_in_network_namespace(agent: &Agent, setup: &str, listen: &str, port: u16, clients: &str) -> Bridge {
        let mut bridge = Bridge::configure(agent, "run/agent.sock", listen, port, clients);
        // unshare and sh exec into the bridge, so the child is the bridge.
        let script = format!(
            "set -e; ip link set lo up; {setup}; exec {bridge} --config {config}",
            bridge = binary("freeauth-radius").display(),
            config = bridge.config.display()
        );
        let mut command = Command::new("unshare");
        command.args(["--net", "sh", "-c", &script]);
        bridge.spawn_command(command);
        bridge
    }

    /// Writes the configuration of a bridge that has not started yet.
    fn configure(agent: &Agent, agent_socket: &str, listen: &str, port: u16, clients: &str) -> Bridge {
        let dir = agent.dir.path();
        let config = dir.join("radius.toml");
        let text = format!(
            "[server]\nlisten = [{listen}]\nagent_socket = \"{agent_socket}\"\n\
             state_dir = \"state-radius\"\nrealm_reject_delay_ms = 10\nduplicate_seconds = 30\n{clients}\n"
        );
        fs::write(&config, text).expect("write radius.toml");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("chmod radius.toml");
        Bridge {
            config,
            log: dir.join("radius.log"),
            port,
            child: None,
        }
    }

    pub fn spawn(&mut self) {
        let mut command = Command::new(binary("freeauth-radius"));
        command.arg("--config").arg(&self.config);
        self.spawn_command(command);
    }

    /// Starts `command`, which runs the bridge with this bridge's
    /// configuration, and waits until it has connected to the agent.
    fn spawn_command(&mut self, mut command: Command) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = command
            .env("FREEAUTH_LOG", "debug")
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .expect("start freeauth-radius");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log_text().contains("connected to the agent") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("bridge did not connect to the agent:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    pub fn signal_hangup(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg("-HUP").arg(child.id().to_string()).status();
        }
    }

    /// Runs radclient against `server` with `attributes` (one per line).
    pub fn radclient(&self, server: &str, kind: &str, secret: &str, attributes: &str) -> Output {
        run_radclient(Command::new("radclient"), server, kind, secret, attributes)
    }

    /// Runs radclient in the network namespace of a bridge started with
    /// [`Bridge::start_in_network_namespace`].
    pub fn radclient_in_namespace(&self, server: &str, kind: &str, secret: &str, attributes: &str) -> Output {
        let pid = self.child.as_ref().expect("the bridge runs").id();
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/proc/{pid}/ns/net")).arg("radclient");
        run_radclient(command, server, kind, secret, attributes)
    }

    /// Sends an Access-Request for `user` with `code` from 127.0.0.1 and
    /// returns radclient's verdict: "accept", "reject" or "none".
    pub fn auth(&self, user: &str, code: &str) -> &'static str {
        self.auth_with(&format!("127.0.0.1:{}", self.port), SECRET, user, code, "")
    }

    pub fn auth_with(&self, server: &str, secret: &str, user: &str, code: &str, extra: &str) -> &'static str {
        let attributes =
            format!("User-Name = \"{user}\"\nUser-Password = \"{code}\"\nMessage-Authenticator = 0x00\n{extra}");
        verdict_of(&self.radclient(server, "auth", secret, &attributes))
    }
}

/// Runs `command`, which starts radclient, with one try and a 2 s timeout,
/// and writes `attributes` to its input.
fn run_radclient(mut command: Command, server: &str, kind: &str, secret: &str, attributes: &str) -> Output {
    let mut child = command
        .args(["-x", "-r", "1", "-t", "2", server, kind, secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot run radclient ({err}); install it with `apt-get install freeradius-utils`")
        });
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(attributes.as_bytes())
        .expect("write attributes");
    child.wait_with_output().expect("radclient output")
}

/// Reads radclient's output: which reply came back, if any.
pub fn verdict_of(output: &Output) -> &'static str {
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Received Access-Accept") {
        "accept"
    } else if text.contains("Received Access-Reject") {
        "reject"
    } else {
        "none"
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `[[client]]` table for 127.0.0.1 and ::1 with the test secret.
pub fn loopback_clients(extra: &str) -> String {
    format!(
        "[[client]]\nname = \"lo4\"\naddress = \"127.0.0.1\"\nsecret = \"{SECRET}\"\n{extra}\n\
         [[client]]\nname = \"lo6\"\naddress = \"::1\"\nsecret = \"{SECRET}\"\n{extra}\n"
    )
}
