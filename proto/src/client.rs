//! A blocking client for the agent and admin sockets, with a timeout on
//! each call (all reads of one reply) and on every write. `freeauthctl` uses it, and so can the
//! PAM module, which must not start threads or a runtime inside its host.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    incoming: Incoming,
    next_id: u64,
    /// Time one call may take to read its reply.
    timeout: Duration,
}

/// Bytes read from the agent and not parsed yet. One read system call
/// usually brings a whole frame, or the welcome and the reply behind it,
/// instead of one call for the header and one for the body. The buffer is
/// wiped when the client is dropped, because admin replies may contain
/// secrets.
struct Incoming {
    buffer: Zeroizing<Vec<u8>>,
    start: usize,
    end: usize,
}

/// Size of [`Incoming`]'s buffer. Agent replies are far smaller, and a
/// larger admin reply is read in several calls.
const INCOMING_LEN: usize = 4096;

impl Incoming {
    fn new() -> Incoming {
        Incoming {
            buffer: Zeroizing::new(vec![0u8; INCOMING_LEN]),
            start: 0,
            end: 0,
        }
    }

    /// Returns a reader that serves the buffered bytes first, then refills
    /// the buffer from `stream` with one read, until `deadline`.
    fn reader<'a>(&'a mut self, stream: &'a mut UnixStream, deadline: Instant) -> BufferedStream<'a> {
        BufferedStream {
            incoming: self,
            stream,
            deadline,
        }
    }
}

struct BufferedStream<'a> {
    incoming: &'a mut Incoming,
    stream: &'a mut UnixStream,
    /// Every read of the stream ends by then, so that an agent that sends
    /// one byte at a time cannot stretch a call past its timeout.
    deadline: Instant,
}

/// Reads from `stream` with a timeout of the time left until `deadline`.
fn read_before(stream: &mut UnixStream, deadline: Instant, out: &mut [u8]) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no complete reply within the timeout",
        ));
    }
    stream.set_read_timeout(Some(left))?;
    stream.read(out)
}

impl Read for BufferedStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let incoming = &mut *self.incoming;
        if incoming.start == incoming.end {
            // A large body goes straight to its own (wiped) buffer.
            if out.len() >= incoming.buffer.len() {
                return read_before(self.stream, self.deadline, out);
            }
            let filled = read_before(self.stream, self.deadline, &mut incoming.buffer[..])?;
            incoming.start = 0;
            incoming.end = filled;
        }
        let count = out.len().min(incoming.end - incoming.start);
        out[..count].copy_from_slice(&incoming.buffer[incoming.start..incoming.start + count]);
        incoming.start += count;
        Ok(count)
    }
}

impl Client {
    /// Connects to `path` and exchanges the hello. `timeout` bounds each call
    /// and each write; the connect of a Unix socket does not block on a live
    /// agent.
    pub fn connect(path: &Path, client_name: &str, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Client::handshake(stream, client_name, timeout)
    }

    /// Exchanges the hello on an already connected stream.
    pub fn handshake(mut stream: UnixStream, client_name: &str, timeout: Duration) -> Result<Client, ClientError> {
        let deadline = Instant::now() + timeout;
        set_timeouts(&stream, timeout)?;
        write_frame(&mut stream, &hello(client_name))?;
        let mut client = Client {
            stream,
            incoming: Incoming::new(),
            next_id: 1,
            timeout,
        };
        client.welcome(deadline)?;
        Ok(client)
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
        let deadline = Instant::now() + timeout;
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
            incoming: Incoming::new(),
            next_id: id + 1,
            timeout,
        };
        client.welcome(deadline)?;
        let response = client.receive(id, deadline)?;
        Ok((client, response))
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let id = self.send(request)?;
        self.receive(id, deadline)
    }

    fn send(&mut self, request: Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        write_frame(&mut self.stream, &RequestFrame { id, request })?;
        Ok(id)
    }

    fn receive(&mut self, id: u64, deadline: Instant) -> Result<Response, ClientError> {
        let frame: ResponseFrame = read_frame(&mut self.incoming.reader(&mut self.stream, deadline))?;
        // Id 0 carries the agent's error for a request it could not read,
        // such as a code longer than any code can be. That request is the
        // pending one, as this client sends one at a time.
        if frame.id == 0 && matches!(frame.response, Response::Error { .. }) {
            return Ok(frame.response);
        }
        if frame.id != id {
            return Err(ClientError::UnexpectedId {
                expected: id,
                received: frame.id,
            });
        }
        Ok(frame.response)
    }

    /// Reads the agent's reply to the hello.
    fn welcome(&mut self, deadline: Instant) -> Result<(), ClientError> {
        match read_frame::<_, HelloReply>(&mut self.incoming.reader(&mut self.stream, deadline))? {
            HelloReply::Welcome { version, .. } if version == PROTOCOL_VERSION => Ok(()),
            HelloReply::Welcome { version, .. } => Err(ClientError::Version { supported: version }),
            HelloReply::Unsupported { supported } => Err(ClientError::Version { supported }),
        }
    }

    /// Returns whether the connection can carry another request: the peer
    /// has not closed it and has sent no unrequested bytes, such as an
    /// error frame before closing. Does not block. Waiting bytes are
    /// consumed, so drop the client when this returns `false`.
    pub fn is_open(&mut self) -> bool {
        if self.incoming.start != self.incoming.end {
            return false;
        }
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = Zeroizing::new([0u8; 1]);
        let waiting = self.stream.read(&mut byte[..]);
        let restored = self.stream.set_nonblocking(false).is_ok();
        let idle = matches!(&waiting, Err(err) if err.kind() == io::ErrorKind::WouldBlock);
        idle && restored
    }

    /// Changes the timeout of each later call and write.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.timeout = timeout;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn account(prompt: String) -> Response {
        Response::Account {
            enrolled: true,
            locked: false,
            prompt,
            code_lengths: vec![6],
            disabled: false,
            hex_codes: Some(false),
        }
    }

    fn welcome_frame() -> Vec<u8> {
        encode(&HelloReply::Welcome {
            version: PROTOCOL_VERSION,
            agent: "test".into(),
        })
        .unwrap()
    }

    fn reply_frame(id: u64, response: Response) -> Vec<u8> {
        encode(&ResponseFrame { id, response }).unwrap()
    }

    /// Plays the agent on the far end of a socket pair. It replies to the
    /// hello and a lookup in one write, or one byte per write, then to a
    /// second lookup with an account whose prompt is `second_prompt`. The
    /// client must read both replies whole.
    fn converse(byte_by_byte: bool, second_prompt: String) {
        let (near, mut far) = UnixStream::pair().unwrap();
        let expected = second_prompt.clone();
        let agent = std::thread::spawn(move || {
            let _: Hello = read_frame(&mut far).unwrap();
            read_request(&mut far);
            let mut first = welcome_frame();
            first.extend(reply_frame(1, account("first".into())));
            if byte_by_byte {
                for byte in first {
                    far.write_all(&[byte]).unwrap();
                }
            } else {
                far.write_all(&first).unwrap();
            }
            read_request(&mut far);
            far.write_all(&reply_frame(2, account(second_prompt))).unwrap();
        });
        let lookup = Request::Lookup { user: "alice".into() };
        let (mut client, first) = Client::handshake_with(near, "test", Duration::from_secs(5), lookup).unwrap();
        assert_eq!(first, account("first".into()));
        let second = client.call(Request::Lookup { user: "alice".into() }).unwrap();
        assert_eq!(second, account(expected));
        agent.join().unwrap();
    }

    fn read_request(stream: &mut UnixStream) {
        let _: RequestFrame = read_frame(stream).unwrap();
    }

    /// Returns a client after its handshake, and the agent's end of the
    /// connection.
    fn welcomed_client() -> (Client, UnixStream) {
        let (near, mut far) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let _: Hello = read_frame(&mut far).unwrap();
            far.write_all(&welcome_frame()).unwrap();
            far
        });
        let client = Client::handshake(near, "test", Duration::from_secs(5)).unwrap();
        (client, agent.join().unwrap())
    }

    #[test]
    fn is_open_until_the_peer_closes() {
        let (mut client, far) = welcomed_client();
        assert!(client.is_open(), "a connection whose peer waits");
        drop(far);
        assert!(!client.is_open(), "a connection whose peer closed it");
    }

    #[test]
    fn is_open_false_after_unrequested_bytes() {
        let (mut client, mut far) = welcomed_client();
        far.write_all(&reply_frame(0, account("unrequested".into()))).unwrap();
        assert!(!client.is_open());
    }

    #[test]
    fn reads_frames_that_arrive_in_one_write() {
        converse(false, "second".into());
    }

    #[test]
    fn reads_frames_that_arrive_byte_by_byte() {
        converse(true, "second".into());
    }

    #[test]
    fn reads_a_frame_larger_than_the_buffer() {
        converse(false, "x".repeat(3 * INCOMING_LEN));
    }

    #[test]
    fn slow_agent_hits_call_deadline() {
        let (near, mut far) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let _: Hello = read_frame(&mut far).unwrap();
            // One byte every 20 ms: each read comes well within the 150 ms
            // timeout, the whole welcome (about 70 bytes) would not.
            for byte in welcome_frame() {
                if far.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let result = Client::handshake(near, "test", Duration::from_millis(150));
        match result {
            Err(ClientError::Frame(FrameError::Io(err))) => {
                assert!(
                    matches!(err.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock),
                    "{err}"
                );
            }
            other => panic!("expected a timeout, got {:?}", other.map(|_| ())),
        }
        agent.join().unwrap();
    }

    #[test]
    fn other_welcome_version_fails() {
        let (near, mut far) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let _: Hello = read_frame(&mut far).unwrap();
            let welcome = HelloReply::Welcome {
                version: PROTOCOL_VERSION + 1,
                agent: "test".into(),
            };
            far.write_all(&encode(&welcome).unwrap()).unwrap();
        });
        let result = Client::handshake(near, "test", Duration::from_secs(5));
        assert!(
            matches!(result, Err(ClientError::Version { supported }) if supported == PROTOCOL_VERSION + 1),
            "{:?}",
            result.map(|_| ())
        );
        agent.join().unwrap();
    }
}
