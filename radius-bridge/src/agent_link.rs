//! Persistent, pipelined connections to the agent.
//!
//! Each connection task owns one Unix socket to the agent and sends every
//! request it is given at once, with its own id, so many verifications are
//! in flight together and the agent can commit them in one batch. Replies
//! are matched by id. When the agent is unreachable, pending and new calls
//! return `None` (the bridge then sends no reply, so the RADIUS client fails
//! over to its secondary server) and the task reconnects by itself.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use freeauth_proto::frame::{self, FrameError, HEADER_LEN};
use freeauth_proto::{Hello, HelloReply, Request, RequestFrame, Response, ResponseFrame, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::ratelog::RateLog;

/// How to reach the agent.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    pub socket: PathBuf,
    /// Uid the socket file and the agent process must have.
    pub agent_uid: u32,
    pub connections: usize,
    pub max_in_flight: usize,
    pub timeout: Duration,
}

struct Call {
    request: Request,
    reply: oneshot::Sender<Response>,
}

/// A pool of pipelined agent connections.
pub struct AgentLink {
    senders: Vec<mpsc::Sender<Call>>,
    connected: Arc<AtomicUsize>,
    next: AtomicUsize,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
}

impl AgentLink {
    /// Starts the connection tasks; they connect in the background.
    pub fn start(settings: LinkSettings, log: Arc<RateLog>) -> AgentLink {
        let mut senders = Vec::with_capacity(settings.connections);
        let connected = Arc::new(AtomicUsize::new(0));
        for _ in 0..settings.connections.max(1) {
            let (sender, receiver) = mpsc::channel(settings.max_in_flight.max(1));
            tokio::spawn(connection_task(
                settings.clone(),
                receiver,
                Arc::clone(&log),
                Arc::clone(&connected),
            ));
            senders.push(sender);
        }
        AgentLink {
            senders,
            connected,
            next: AtomicUsize::new(0),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            timeout: settings.timeout,
        }
    }

    /// Whether at least one connection to the agent is up.
    pub fn is_up(&self) -> bool {
        self.connected.load(Ordering::Relaxed) > 0
    }

    /// Sends `request` and waits for the response; `None` if the agent is
    /// unreachable or does not answer within the timeout, which also bounds
    /// the wait for a free in-flight slot.
    pub async fn call(&self, request: Request) -> Option<Response> {
        let exchange = async {
            let _permit = self.in_flight.acquire().await.ok()?;
            let index = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
            let (reply, answer) = oneshot::channel();
            self.senders.get(index)?.send(Call { request, reply }).await.ok()?;
            answer.await.ok()
        };
        // NOTE: a verification that times out here may still be accepted by
        // the agent; the client's resend then gets a reject for a used code.
        // The default timeout (10 s) exceeds the agent's longest reply delay.
        tokio::time::timeout(self.timeout, exchange).await.ok()?
    }
}

async fn connection_task(
    settings: LinkSettings,
    mut calls: mpsc::Receiver<Call>,
    log: Arc<RateLog>,
    connected: Arc<AtomicUsize>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect(&settings).await {
            Ok(stream) => {
                log.info("agent-link-up", "connected to the agent");
                backoff = Duration::from_millis(100);
                connected.fetch_add(1, Ordering::Relaxed);
                let error = serve(stream, &mut calls).await;
                connected.fetch_sub(1, Ordering::Relaxed);
                let Some(error) = error else {
                    return;
                };
                log.warn("agent-link-down", &format!("agent connection lost: {error}"));
            }
            Err(err) => log.warn(
                "agent-link-down",
                &format!("cannot reach the agent at {}: {err}", settings.socket.display()),
            ),
        }
        // Fail what queued up during the outage, so clients fail over now.
        while let Ok(call) = calls.try_recv() {
            drop(call);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Connects and checks that the socket and its peer belong to the agent.
async fn connect(settings: &LinkSettings) -> Result<UnixStream, String> {
    let owner = std::fs::symlink_metadata(&settings.socket)
        .map_err(|err| err.to_string())?
        .uid();
    if owner != settings.agent_uid {
        return Err(format!(
            "socket is owned by uid {owner}, expected uid {}",
            settings.agent_uid
        ));
    }
    let connect = UnixStream::connect(&settings.socket);
    let mut stream = tokio::time::timeout(settings.timeout, connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|err| err.to_string())?;
    let peer = stream.peer_cred().map_err(|err| err.to_string())?.uid();
    if peer != settings.agent_uid {
        return Err(format!(
            "the agent process runs as uid {peer}, expected uid {}",
            settings.agent_uid
        ));
    }
    let hello = Hello {
        version: PROTOCOL_VERSION,
        client: "freeauth-radius".into(),
    };
    stream
        .write_all(&frame::encode(&hello).map_err(|err| err.to_string())?)
        .await
        .map_err(|err| err.to_string())?;
    let reply: HelloReply = tokio::time::timeout(settings.timeout, read_frame(&mut stream))
        .await
        .map_err(|_| "hello timed out".to_owned())?
        .map_err(|err| err.to_string())?;
    match reply {
        HelloReply::Welcome { .. } => Ok(stream),
        HelloReply::Unsupported { supported } => Err(format!("agent speaks protocol version {supported}")),
    }
}

/// Pipelines calls on one connection until it fails (`Some(reason)`) or
/// the bridge shuts down (`None`).
async fn serve(stream: UnixStream, calls: &mut mpsc::Receiver<Call>) -> Option<String> {
    let (mut reader, mut writer) = stream.into_split();
    // Replies read and not parsed yet. `read_buf` loses nothing when the
    // other branch of the `select!` wins. A frame reader built on
    // `read_exact` would drop the part of a frame it had read.
    let mut incoming: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut pending = PendingCalls::new();
    let mut next_id: u64 = 1;
    loop {
        if incoming.capacity() - incoming.len() < READ_CHUNK / 2 {
            incoming.reserve(READ_CHUNK);
        }
        tokio::select! {
            call = calls.recv() => {
                // Every call waiting now goes out in one write.
                let mut batch = zeroize::Zeroizing::new(Vec::new());
                let mut next = call;
                while let Some(call) = next {
                    let id = next_id;
                    next_id = next_id.wrapping_add(1);
                    match frame::encode(&RequestFrame { id, request: call.request }) {
                        Ok(bytes) => batch.extend_from_slice(&zeroize::Zeroizing::new(bytes)),
                        Err(err) => return Some(err.to_string()),
                    }
                    pending.insert(id, call.reply);
                    next = calls.try_recv().ok();
                }
                if batch.is_empty() {
                    return None;
                }
                if let Err(err) = writer.write_all(&batch).await {
                    return Some(err.to_string());
                }
            }
            read = reader.read_buf(&mut incoming) => {
                match read {
                    Ok(0) => return Some("the agent closed the connection".into()),
                    Ok(_) => {}
                    Err(err) => return Some(err.to_string()),
                }
                let parsed = match take_frames(&incoming, |frame: ResponseFrame| {
                    if let Some(reply) = pending.remove(frame.id) {
                        let _ = reply.send(frame.response);
                    }
                }) {
                    Ok(parsed) => parsed,
                    Err(err) => return Some(err.to_string()),
                };
                incoming.drain(..parsed);
            }
        }
    }
}

/// Number of pending calls at which those whose caller gave up are dropped.
/// The limit then doubles with the calls still waiting.
const PRUNE_PENDING_AT: usize = 1024;

/// Calls sent to the agent that have no reply yet, by request id.
///
/// A caller that timed out leaves its entry until the agent replies. If
/// the agent stops replying, such entries are dropped from time to time,
/// so the map stays bounded.
struct PendingCalls {
    calls: HashMap<u64, oneshot::Sender<Response>>,
    prune_at: usize,
}

impl PendingCalls {
    fn new() -> PendingCalls {
        PendingCalls {
            calls: HashMap::new(),
            prune_at: PRUNE_PENDING_AT,
        }
    }

    fn insert(&mut self, id: u64, reply: oneshot::Sender<Response>) {
        self.calls.insert(id, reply);
        if self.calls.len() >= self.prune_at {
            self.calls.retain(|_, reply| !reply.is_closed());
            self.prune_at = (2 * self.calls.len()).max(PRUNE_PENDING_AT);
        }
    }

    fn remove(&mut self, id: u64) -> Option<oneshot::Sender<Response>> {
        self.calls.remove(&id)
    }
}

/// Most bytes requested from the socket per read. A reply to the bridge
/// takes about 60 bytes.
const READ_CHUNK: usize = 16 * 1024;

/// Decodes every complete frame at the start of `bytes`, hands each to
/// `deliver`, and returns the number of bytes they took.
fn take_frames<T: serde::de::DeserializeOwned>(bytes: &[u8], mut deliver: impl FnMut(T)) -> Result<usize, FrameError> {
    let mut start = 0;
    while let Some(header) = bytes.get(start..start + HEADER_LEN) {
        let mut prefix = [0u8; HEADER_LEN];
        prefix.copy_from_slice(header);
        let length = frame::body_len(prefix)?;
        let body_start = start + HEADER_LEN;
        let Some(body) = bytes.get(body_start..body_start + length) else {
            break;
        };
        deliver(frame::decode(body)?);
        start = body_start + length;
    }
    Ok(start)
}

async fn read_frame<T: serde::de::DeserializeOwned, R: AsyncReadExt + Unpin>(reader: &mut R) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).await?;
    let length = frame::body_len(header)?;
    let mut body = zeroize::Zeroizing::new(vec![0u8; length]);
    reader.read_exact(&mut body).await?;
    frame::decode(&body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use freeauth_proto::VerifyResult;

    fn verdict(result: VerifyResult) -> Response {
        Response::Verdict { result, reason: None }
    }

    fn lookup(user: &str) -> Request {
        Request::Lookup { user: user.into() }
    }

    async fn read_request(stream: &mut UnixStream) -> RequestFrame {
        read_frame(stream).await.unwrap()
    }

    /// A reply split across two writes, with a new call sent in between,
    /// still arrives whole, although the read loses the `select!` once.
    #[tokio::test]
    async fn serve_keeps_a_half_read_reply() {
        let (near, mut agent) = UnixStream::pair().unwrap();
        let (calls, mut receiver) = mpsc::channel(8);
        let link = tokio::spawn(async move { serve(near, &mut receiver).await });

        let (first_reply, first_answer) = oneshot::channel();
        calls
            .send(Call {
                request: lookup("alice"),
                reply: first_reply,
            })
            .await
            .unwrap();
        let first = read_request(&mut agent).await;
        let reply = frame::encode(&ResponseFrame {
            id: first.id,
            response: verdict(VerifyResult::Accepted),
        })
        .unwrap();
        let (head, tail) = reply.split_at(HEADER_LEN + 3);
        agent.write_all(head).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let (second_reply, second_answer) = oneshot::channel();
        calls
            .send(Call {
                request: lookup("bob"),
                reply: second_reply,
            })
            .await
            .unwrap();
        let second = read_request(&mut agent).await;
        agent.write_all(tail).await.unwrap();
        let reply = frame::encode(&ResponseFrame {
            id: second.id,
            response: verdict(VerifyResult::Rejected),
        })
        .unwrap();
        agent.write_all(&reply).await.unwrap();

        assert_eq!(first_answer.await.unwrap(), verdict(VerifyResult::Accepted));
        assert_eq!(second_answer.await.unwrap(), verdict(VerifyResult::Rejected));
        drop(calls);
        assert_eq!(link.await.unwrap(), None, "a clean shutdown when the calls end");
    }

    #[test]
    fn take_frames_stops_at_a_partial_frame() {
        let first = frame::encode(&ResponseFrame {
            id: 1,
            response: verdict(VerifyResult::Accepted),
        })
        .unwrap();
        let second = frame::encode(&ResponseFrame {
            id: 2,
            response: verdict(VerifyResult::Rejected),
        })
        .unwrap();
        let mut bytes = first.clone();
        bytes.extend_from_slice(&second[..5]);
        let mut ids = Vec::new();
        let used = take_frames(&bytes, |frame: ResponseFrame| ids.push(frame.id)).unwrap();
        assert_eq!(used, first.len());
        assert_eq!(ids, vec![1]);
        let used = take_frames(&bytes[..2], |frame: ResponseFrame| ids.push(frame.id)).unwrap();
        assert_eq!(used, 0, "half a header");
    }

    #[test]
    fn take_frames_rejects_a_bad_length() {
        let bytes = [0xff, 0xff, 0xff, 0xff, b'{'];
        assert!(take_frames(&bytes, |_: ResponseFrame| {}).is_err());
    }

    #[test]
    fn pending_calls_drop_callers_that_left() {
        let mut pending = PendingCalls::new();
        let (live, mut live_answer) = oneshot::channel();
        pending.insert(0, live);
        for id in 1..=(2 * PRUNE_PENDING_AT as u64) {
            let (reply, answer) = oneshot::channel();
            drop(answer);
            pending.insert(id, reply);
        }
        assert!(
            pending.calls.len() < PRUNE_PENDING_AT,
            "{} calls kept",
            pending.calls.len()
        );
        let reply = pending.remove(0).expect("the live call is kept");
        reply.send(verdict(VerifyResult::Accepted)).unwrap();
        assert_eq!(live_answer.try_recv().unwrap(), verdict(VerifyResult::Accepted));
    }
}
