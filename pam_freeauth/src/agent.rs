//! The module's side of the agent socket: a connect with a timeout, the
//! trust checks in both directions, and the two requests the module makes.
//!
//! Before anything is sent, the socket file must belong to the agent's user
//! and the peer's credentials (SO_PEERCRED) must show that same user, so a
//! process that took over the socket path cannot collect codes.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use freeauth_proto::{Client, ClientError, ErrorKind, Origin, Request, Response, SecretString};

/// Failure to reach the agent or to get a usable response from it.
#[derive(Debug)]
pub enum AgentError {
    /// The agent's user does not exist on this host.
    UnknownAgentUser { name: String },
    /// The socket is missing, refuses, or timed out.
    Connect { socket: String, source: io::Error },
    /// The socket file or the peer is not the agent's user.
    Untrusted { reason: String },
    /// The conversation with the agent failed.
    Protocol { source: ClientError },
    /// The agent returned an error response.
    Refused { kind: ErrorKind, message: String },
    /// The agent returned a response of the wrong type.
    Unexpected,
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::UnknownAgentUser { name } => write!(f, "agent user {name} does not exist"),
            AgentError::Connect { socket, source } => write!(f, "cannot connect to the agent at {socket}: {source}"),
            AgentError::Untrusted { reason } => write!(f, "agent socket not trusted: {reason}"),
            AgentError::Protocol { source } => write!(f, "{source}"),
            AgentError::Refused { message, .. } => write!(f, "agent refused the request: {message}"),
            AgentError::Unexpected => write!(f, "agent sent a response of an unexpected type"),
        }
    }
}

/// Account state the agent reports before the prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub enrolled: bool,
    pub locked: bool,
    pub prompt: String,
    pub code_lengths: Vec<u8>,
    /// All tokens disabled by an administrator: `nullok` does not apply.
    pub disabled: bool,
    /// Codes may hold the letters a to f (Mobile-OTP), not only digits.
    pub hex_codes: bool,
}

/// A verified connection to the agent.
pub struct Agent {
    client: Client,
    /// Socket path, agent user and timeout of the connection, to connect
    /// again when the agent closes it while the user types.
    socket: PathBuf,
    agent_user: String,
    timeout: Duration,
}

impl Agent {
    /// Connects to `socket` within `timeout`, checks that the socket file
    /// and the peer belong to `agent_user`, and looks up whether `user` has an
    /// active token and is locked. The lookup travels with the hello, in one
    /// round trip.
    pub fn connect_and_lookup(
        socket: &Path,
        agent_user: &str,
        timeout: Duration,
        user: &str,
    ) -> Result<(Agent, Account), AgentError> {
        let stream = connect_trusted(socket, agent_user, timeout)?;
        let request = Request::Lookup { user: user.to_owned() };
        let (client, response) = Client::handshake_with(stream, "pam_freeauth", timeout, request)
            .map_err(|source| AgentError::Protocol { source })?;
        let agent = Agent {
            client,
            socket: socket.to_owned(),
            agent_user: agent_user.to_owned(),
            timeout,
        };
        Ok((agent, account(response)?))
    }

    /// Connects again, with the same trust checks, when the agent closed
    /// the connection since the last request: a restart, or the idle limit
    /// the agent sets on the connections of users other than root. Returns
    /// whether it connected again. Nothing was sent on the closed
    /// connection, so no request is lost or sent twice.
    pub fn reconnect_if_closed(&mut self) -> Result<bool, AgentError> {
        if self.client.is_open() {
            return Ok(false);
        }
        let stream = connect_trusted(&self.socket, &self.agent_user, self.timeout)?;
        self.client = Client::handshake(stream, "pam_freeauth", self.timeout)
            .map_err(|source| AgentError::Protocol { source })?;
        Ok(true)
    }

    /// Wraps a client that skipped the trust checks, for tests.
    #[cfg(test)]
    pub(crate) fn from_client(client: Client) -> Agent {
        Agent {
            client,
            socket: PathBuf::new(),
            agent_user: String::new(),
            timeout: Duration::from_secs(1),
        }
    }

    /// Asks about another name on the same connection.
    pub fn lookup(&mut self, user: &str) -> Result<Account, AgentError> {
        account(self.call(Request::Lookup { user: user.to_owned() })?)
    }

    /// Verifies `code` for `user`.
    pub fn verify(&mut self, user: &str, code: SecretString, origin: Origin) -> Result<Response, AgentError> {
        let request = Request::Verify {
            user: user.to_owned(),
            code,
            origin,
        };
        self.call(request)
    }

    /// Verifies the end of `text`, a password followed by a code, for
    /// `user`.
    pub fn verify_tail(&mut self, user: &str, text: SecretString, origin: Origin) -> Result<Response, AgentError> {
        let request = Request::VerifyTail {
            user: user.to_owned(),
            text,
            origin,
        };
        self.call(request)
    }

    fn call(&mut self, request: Request) -> Result<Response, AgentError> {
        self.client
            .call(request)
            .map_err(|source| AgentError::Protocol { source })
    }
}

/// Connects to `socket` within `timeout` and checks that the socket file
/// and the peer belong to `agent_user`.
fn connect_trusted(socket: &Path, agent_user: &str, timeout: Duration) -> Result<UnixStream, AgentError> {
    let expected_uid = match nix::unistd::User::from_name(agent_user) {
        Ok(Some(user)) => user.uid.as_raw(),
        _ => {
            return Err(AgentError::UnknownAgentUser {
                name: agent_user.to_owned(),
            })
        }
    };
    let owner = std::fs::symlink_metadata(socket)
        .map_err(|source| AgentError::Connect {
            socket: socket.display().to_string(),
            source,
        })?
        .uid();
    if owner != expected_uid {
        return Err(AgentError::Untrusted {
            reason: format!("{} is owned by uid {owner}, not by {agent_user}", socket.display()),
        });
    }
    let stream = connect_with_timeout(socket, timeout).map_err(|source| AgentError::Connect {
        socket: socket.display().to_string(),
        source,
    })?;
    let peer = peer_uid(&stream).map_err(|source| AgentError::Connect {
        socket: socket.display().to_string(),
        source,
    })?;
    if peer != expected_uid {
        return Err(AgentError::Untrusted {
            reason: format!(
                "the process behind {} runs as uid {peer}, not as {agent_user}",
                socket.display()
            ),
        });
    }
    Ok(stream)
}

/// Reads the response to a lookup.
fn account(response: Response) -> Result<Account, AgentError> {
    match response {
        Response::Account {
            enrolled,
            locked,
            prompt,
            code_lengths,
            disabled,
            hex_codes,
        } => Ok(Account {
            enrolled,
            locked,
            prompt,
            code_lengths,
            disabled,
            // An agent that does not say may have Mobile-OTP tokens.
            hex_codes: hex_codes.unwrap_or(true),
        }),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(response: &Response) -> AgentError {
    match response {
        Response::Error { kind, message } => AgentError::Refused {
            kind: *kind,
            message: message.clone(),
        },
        _ => AgentError::Unexpected,
    }
}

/// Pause between connect attempts while the agent's accept queue is full.
const CONNECT_RETRY: Duration = Duration::from_millis(5);

/// Connects a Unix stream socket without blocking longer than `timeout`:
/// a blocking connect can hang when the agent's accept queue is full.
fn connect_with_timeout(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let address = socket_address(path)?;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a socket we just created and own; OwnedFd closes it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let length = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: address is a valid, initialised sockaddr_un of `length` bytes.
        let result = unsafe { libc::connect(fd, std::ptr::addr_of!(address).cast(), length) };
        if result == 0 {
            break;
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            // For a Unix socket whose accept queue is full, Linux returns
            // EAGAIN at once: no connection is under way, so try again.
            Some(libc::EAGAIN) => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the agent is busy: its queue of new connections stayed full until the timeout",
                    ));
                }
                std::thread::sleep(CONNECT_RETRY);
            }
            Some(libc::EINTR) => {}
            Some(libc::EINPROGRESS) => {
                wait_writable(fd, deadline.saturating_duration_since(Instant::now()))?;
                break;
            }
            _ => return Err(error),
        }
    }
    let stream = UnixStream::from(owned);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn socket_address(path: &Path) -> io::Result<libc::sockaddr_un> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all zero bytes is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= address.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or contains NUL",
        ));
    }
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(address)
}

fn wait_writable(fd: i32, timeout: Duration) -> io::Result<()> {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one valid pollfd, count 1.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        match ready {
            0 => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            n if n > 0 => break,
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    let mut error: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR writes one c_int into `error`; `length` says so.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            std::ptr::addr_of_mut!(error).cast(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(())
}

/// Returns the uid of the process on the other end (SO_PEERCRED).
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut credentials = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one ucred into `credentials`; `length` says so.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(credentials).cast(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(credentials.uid)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::undocumented_unsafe_blocks
    )]
    use super::*;
    use std::os::unix::net::UnixListener;

    /// Creates a listening socket at a fresh path whose accept queue takes
    /// one connection (backlog 0), and fills that place.
    fn full_listener(name: &str) -> (UnixListener, UnixStream, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("pam-freeauth-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let listened = unsafe { libc::listen(listener.as_raw_fd(), 0) };
        assert_eq!(listened, 0);
        let first = UnixStream::connect(&path).unwrap();
        (listener, first, path)
    }

    #[test]
    fn full_queue_waits_until_the_timeout() {
        let (_listener, _first, path) = full_listener("full");
        let started = Instant::now();
        let err = connect_with_timeout(&path, Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("busy"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(100), "gave up early");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn full_queue_connects_when_freed() {
        let (listener, first, path) = full_listener("frees");
        let acceptor = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let accepted = listener.accept().unwrap();
            let second = listener.accept().unwrap();
            (first, accepted, second)
        });
        let stream = connect_with_timeout(&path, Duration::from_secs(10)).unwrap();
        assert!(peer_uid(&stream).is_ok());
        acceptor.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
