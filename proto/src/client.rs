//! A blocking client for the agent and admin sockets, with a timeout on
//! connect and on every read and write. `freeauthctl` uses it, and so can the
//! PAM module, which must not start threads or a runtime inside its host.

use std::fmt;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::frame::{encode, read_frame, write_frame, FrameError};
use zeroize::Zeroizing;

use crate::{Hello, HelloReply, Request, RequestFrame, Response, ResponseFrame, PROTOCOL_VERSION};

/// Failure to talk to the agent.
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be opened.
    Connect { path: PathBuf, source: io::Error },
    /// The agent speaks another protocol version.
    Version { supported: u32 },
    /// The conversation broke off or the agent sent something unexpected.
    Frame(FrameError),
    /// The agent answered a different request id.
    UnexpectedId { expected: u64, received: u64 },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { path, source } => {
                write!(f, "cannot connect to the agent at {}: {source}", path.display())
            }
            ClientError::Version { supported } => write!(
                f,
                "the agent speaks protocol version {supported}, this program speaks {PROTOCOL_VERSION}"
            ),
            ClientError::Frame(err) => write!(f, "agent connection failed: {err}"),
            ClientError::UnexpectedId { expected, received } => write!(
                f,
                "agent answered request {received} while request {expected} was pending"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<FrameError> for ClientError {
    fn from(err: FrameError) -> Self {
        ClientError::Frame(err)
    }
}

/// One connection, one request at a time.
pub struct Client {
    stream: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects to `path` and exchanges the hello. `timeout` bounds each read
    /// and write; the connect of a Unix socket does not block on a live agent.
    pub fn connect(path: &Path, client_name: &str, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Client::handshake(stream, client_name, timeout)
    }

    /// Exchanges the hello on an already connected stream.
    pub fn handshake(mut stream: UnixStream, client_name: &str, timeout: Duration) -> Result<Client, ClientError> {
        set_timeouts(&stream, timeout)?;
        write_frame(&mut stream, &hello(client_name))?;
        welcome(&mut stream)?;
        Ok(Client { stream, next_id: 1 })
    }

    /// Sends the hello and `first` right behind it, then reads both replies.
    /// The agent reads frames in order, so this saves the round trip of
    /// waiting for the welcome. Returns the client and the response to
    /// `first`.
    pub fn handshake_with(
        mut stream: UnixStream,
        client_name: &str,
        timeout: Duration,
        first: Request,
    ) -> Result<(Client, Response), ClientError> {
        set_timeouts(&stream, timeout)?;
        // One write for both frames, so that the agent wakes up once. The
        // buffer is allocated at its full size, so no unwiped copy of the
        // request is freed on the way.
        let id = 1;
        let hello = encode(&hello(client_name))?;
        let request = Zeroizing::new(encode(&RequestFrame { id, request: first })?);
        let mut frames = Zeroizing::new(Vec::with_capacity(hello.len() + request.len()));
        frames.extend_from_slice(&hello);
        frames.extend_from_slice(&request);
        stream.write_all(&frames).map_err(FrameError::Io)?;
        let mut client = Client {
            stream,
            next_id: id + 1,
        };
        welcome(&mut client.stream)?;
        let response = client.receive(id)?;
        Ok((client, response))
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.send(request)?;
        self.receive(id)
    }

    fn send(&mut self, request: Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        write_frame(&mut self.stream, &RequestFrame { id, request })?;
        Ok(id)
    }

    fn receive(&mut self, id: u64) -> Result<Response, ClientError> {
        let frame: ResponseFrame = read_frame(&mut self.stream)?;
        if frame.id != id {
            return Err(ClientError::UnexpectedId {
                expected: id,
                received: frame.id,
            });
        }
        Ok(frame.response)
    }

    /// Changes the timeout of each later read and write.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        set_timeouts(&self.stream, timeout)
    }
}

fn set_timeouts(stream: &UnixStream, timeout: Duration) -> Result<(), ClientError> {
    stream.set_read_timeout(Some(timeout)).map_err(FrameError::Io)?;
    stream.set_write_timeout(Some(timeout)).map_err(FrameError::Io)?;
    Ok(())
}

fn hello(client_name: &str) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        client: client_name.to_owned(),
    }
}

/// Reads the agent's reply to the hello.
fn welcome(stream: &mut UnixStream) -> Result<(), ClientError> {
    match read_frame::<_, HelloReply>(stream)? {
        HelloReply::Welcome { .. } => Ok(()),
        HelloReply::Unsupported { supported } => Err(ClientError::Version { supported }),
    }
}
