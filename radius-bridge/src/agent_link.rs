//! Persistent, pipelined connections to the agent.
//!
//! Each connection task owns one Unix socket to the agent and sends every
//! request it is given at once, with its own id, so many verifications are
//! in flight together and the agent can commit them in one batch. Replies
//! are matched by id. When the agent is unreachable, pending and new calls
//! return [`Called::Unanswered`] (the bridge then sends no reply, so the
//! RADIUS client fails over to its secondary server) and the task
//! reconnects by itself.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use freeauth_proto::frame::{self, FrameError, HEADER_LEN};
use freeauth_proto::{
    ErrorKind, Hello, HelloReply, Origin, Request, RequestFrame, Response, ResponseFrame, CALLER_DELAYS_VERSION,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

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
    /// The call's in-flight slot, kept until the agent replies or the
    /// connection ends, also when the caller stopped waiting earlier.
    slot: OwnedSemaphorePermit,
}

/// How long the link counts as failing after a call that got no response
/// in time, or an error response that leaves the client without a reply,
/// when no call has succeeded since. After this time Status-Server gets a
/// reply again, so a client that has failed over tries its logins here
/// again, and fails over again if they still fail.
pub const FAILING_FOR: Duration = Duration::from_secs(30);

/// A pool of pipelined agent connections.
pub struct AgentLink {
    senders: Vec<mpsc::Sender<Call>>,
    connected: Arc<AtomicUsize>,
    next: AtomicUsize,
    in_flight: Arc<Semaphore>,
    /// Calls waiting for a free in-flight slot. At most `max_waiting` may
    /// wait, so that requests that arrive faster than the agent decides do
    /// not pile up in memory for `timeout` each.
    waiting: AtomicUsize,
    max_waiting: usize,
    timeout: Duration,
    /// Times below are milliseconds since this instant, plus one, so that
    /// 0 means never.
    start: Instant,
    last_success_ms: AtomicU64,
    last_failure_ms: AtomicU64,
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
            waiting: AtomicUsize::new(0),
            max_waiting: settings.max_in_flight.max(1),
            timeout: settings.timeout,
            start: Instant::now(),
            last_success_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
        }
    }

    /// Tells whether logins can work: at least one connection to the agent
    /// is up, and the link is not failing. It fails from a call that got no
    /// response in time, or an error for which the bridge sends no reply,
    /// until a call succeeds or [`FAILING_FOR`] passes. An agent that accepts
    /// connections but sends no response, because it hangs or its database
    /// is locked, counts as down.
    pub fn is_up(&self) -> bool {
        if self.connected.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let failure = self.last_failure_ms.load(Ordering::Relaxed);
        let success = self.last_success_ms.load(Ordering::Relaxed);
        !failing(success, failure, self.now_ms())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Notes how a call ended, for [`AgentLink::is_up`].
    fn note(&self, response: Option<&Response>) {
        let failed = match response {
            Some(Response::Verdict { .. } | Response::DelayedVerdict { .. }) => false,
            // The agent checks a name before anything that a login needs,
            // so this error shows nothing about the agent's health.
            Some(Response::Error {
                kind: ErrorKind::Invalid,
                ..
            }) => return,
            // The bridge sends no reply for the rest, as for no response.
            Some(_) | None => true,
        };
        let stamp = if failed {
            &self.last_failure_ms
        } else {
            &self.last_success_ms
        };
        stamp.fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    /// Sends `request` and waits for the response, at most the link's
    /// timeout, which also bounds the wait for a free in-flight slot. The
    /// slot stays taken until the agent replies, so requests that outlive
    /// their caller still count. Returns [`Called::Busy`] at once when no
    /// slot is free and as many calls as there are slots wait already.
    pub async fn call(&self, request: Request) -> Called {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let free_slot = Arc::clone(&self.in_flight).try_acquire_owned().ok();
        let waiter = match free_slot {
            Some(_) => None,
            None => match Waiter::enter(&self.waiting, self.max_waiting) {
                Some(waiter) => Some(waiter),
                None => return Called::Busy,
            },
        };
        let send = async {
            let slot = match free_slot {
                Some(slot) => slot,
                None => {
                    let _waiter = waiter;
                    Arc::clone(&self.in_flight).acquire_owned().await.ok()?
                }
            };
            let index = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
            let (reply, answer) = oneshot::channel();
            self.senders
                .get(index)?
                .send(Call { request, reply, slot })
                .await
                .ok()?;
            Some(answer)
        };
        let Some(mut answer) = tokio::time::timeout_at(deadline, send).await.ok().flatten() else {
            self.note(None);
            return Called::Unanswered;
        };
        match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(Ok(response)) => {
                self.note(Some(&response));
                Called::Answered(response)
            }
            // The connection ended before the agent replied.
            Ok(Err(_)) => {
                self.note(None);
                Called::Unanswered
            }
            Err(_) => {
                self.note(None);
                Called::Late(answer)
            }
        }
    }
}

/// One call counted in [`AgentLink::waiting`]; dropping it counts it out.
struct Waiter<'a> {
    waiting: &'a AtomicUsize,
}

impl<'a> Waiter<'a> {
    /// Counts a call in, or returns `None` when `max` calls wait already.
    fn enter(waiting: &'a AtomicUsize, max: usize) -> Option<Waiter<'a>> {
        waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                (count < max).then_some(count + 1)
            })
            .ok()?;
        Some(Waiter { waiting })
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The end of a call to the agent.
#[derive(Debug)]
pub enum Called {
    Answered(Response),
    /// Every in-flight slot was taken and as many calls waited for one
    /// already, so the call was not sent.
    Busy,
    /// The agent is unreachable, or the call never reached it within the
    /// timeout, or its connection ended before the response.
    Unanswered,
    /// The agent has the request but did not respond within the timeout. It
    /// may still decide it, and use the code, so its response arrives here.
    Late(oneshot::Receiver<Response>),
}

/// Returns whether the link is failing at `now`, given the times of the
/// last call that succeeded and of the last that failed (0 for never).
fn failing(success_ms: u64, failure_ms: u64, now_ms: u64) -> bool {
    let failing_for = u64::try_from(FAILING_FOR.as_millis()).unwrap_or(u64::MAX);
    failure_ms > success_ms && now_ms.saturating_sub(failure_ms) < failing_for
}

async fn connection_task(
    settings: LinkSettings,
    mut calls: mpsc::Receiver<Call>,
    log: Arc<RateLog>,
    connected: Arc<AtomicUsize>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Each connection offers the newer version first, so that an agent
        // upgraded meanwhile gets it. An older agent refuses it at once.
        let connected_as = match connect(&settings, CALLER_DELAYS_VERSION).await {
            Err(ConnectError::Unsupported { supported }) if supported < CALLER_DELAYS_VERSION => {
                log.info(
                    "agent-old-version",
                    "the agent speaks protocol version 1 only, so it holds rejections back itself",
                );
                connect(&settings, PROTOCOL_VERSION).await
            }
            other => other,
        };
        match connected_as {
            Ok((stream, version)) => {
                log.info("agent-link-up", "connected to the agent");
                backoff = Duration::from_millis(100);
                connected.fetch_add(1, Ordering::Relaxed);
                let caller_delays = version >= CALLER_DELAYS_VERSION;
                // A caller stops waiting after one timeout, but a response
                // up to one more timeout later still reaches its duplicate
                // cache entry (`Called::Late`). Only then does the connection
                // count as stalled.
                let stall = settings.timeout.saturating_mul(2);
                let error = serve(stream, &mut calls, stall, caller_delays).await;
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

/// Failure to connect to the agent.
#[derive(Debug)]
enum ConnectError {
    /// The agent does not speak the offered version; it speaks `supported`.
    Unsupported {
        supported: u32,
    },
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Unsupported { supported } => write!(f, "agent speaks protocol version {supported}"),
            ConnectError::Other(message) => write!(f, "{message}"),
        }
    }
}

impl From<String> for ConnectError {
    fn from(message: String) -> Self {
        ConnectError::Other(message)
    }
}

/// Connects with protocol `version` and checks that the socket and its
/// peer belong to the agent. Returns the stream and the version spoken.
async fn connect(settings: &LinkSettings, version: u32) -> Result<(UnixStream, u32), ConnectError> {
    let owner = std::fs::symlink_metadata(&settings.socket)
        .map_err(|err| err.to_string())?
        .uid();
    if owner != settings.agent_uid {
        return Err(format!("socket is owned by uid {owner}, expected uid {}", settings.agent_uid).into());
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
        )
        .into());
    }
    let hello = Hello {
        version,
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
        HelloReply::Welcome { version: spoken, .. } if spoken == version => Ok((stream, version)),
        HelloReply::Welcome { version: spoken, .. } => {
            Err(format!("the agent welcomed protocol version {version} as version {spoken}").into())
        }
        HelloReply::Unsupported { supported } => Err(ConnectError::Unsupported { supported }),
    }
}

/// Pipelines calls on one connection until it fails (`Some(reason)`) or
/// the bridge shuts down (`None`).
///
/// Requests are written and replies read by two loops that run together,
/// so replies are read while a write waits for the agent to read. A link
/// whose only loop waited on the other could deadlock with an agent that
/// stops reading until its replies are taken. When calls are pending and
/// no byte arrives for `stall`, the connection is dropped and made again.
async fn serve(
    stream: UnixStream,
    calls: &mut mpsc::Receiver<Call>,
    stall: Duration,
    caller_delays: bool,
) -> Option<String> {
    let (mut reader, mut writer) = stream.into_split();
    let pending = std::sync::Mutex::new(PendingCalls::default());
    let send = async {
        let mut next_id: u64 = 1;
        while let Some(call) = calls.recv().await {
            // Every call waiting now goes out in one write.
            let mut batch = zeroize::Zeroizing::new(Vec::new());
            let mut next = Some(call);
            while let Some(mut call) = next {
                let id = next_id;
                next_id = next_id.wrapping_add(1);
                if !caller_delays {
                    // An agent of version 1 would refuse the field.
                    if let Request::Verify {
                        origin: Origin::Radius { caller_delays, .. },
                        ..
                    } = &mut call.request
                    {
                        *caller_delays = None;
                    }
                }
                match frame::encode(&RequestFrame {
                    id,
                    request: call.request,
                }) {
                    Ok(bytes) => batch.extend_from_slice(&zeroize::Zeroizing::new(bytes)),
                    Err(err) => return Some(err.to_string()),
                }
                lock(&pending).insert(id, call.reply, call.slot);
                next = calls.try_recv().ok();
            }
            if let Err(err) = writer.write_all(&batch).await {
                return Some(err.to_string());
            }
        }
        None
    };
    let stall_check = (stall / 4).max(Duration::from_millis(10));
    let receive = async {
        // Replies read and not parsed yet.
        let mut incoming: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        loop {
            if incoming.capacity() - incoming.len() < READ_CHUNK / 2 {
                incoming.reserve(READ_CHUNK);
            }
            // `read_buf` loses nothing when the timeout cuts it short.
            let read = match tokio::time::timeout(stall_check, reader.read_buf(&mut incoming)).await {
                Ok(read) => read,
                Err(_) => {
                    if lock(&pending)
                        .waiting_since()
                        .is_some_and(|since| since.elapsed() >= stall)
                    {
                        return Some(format!("the agent sent no reply for {} ms", stall.as_millis()));
                    }
                    continue;
                }
            };
            match read {
                Ok(0) => return Some("the agent closed the connection".into()),
                Ok(_) => {}
                Err(err) => return Some(err.to_string()),
            }
            let parsed = match take_frames(&incoming, |frame: ResponseFrame| {
                if let Some(reply) = lock(&pending).remove(frame.id) {
                    let _ = reply.send(frame.response);
                }
            }) {
                Ok(parsed) => parsed,
                Err(err) => return Some(err.to_string()),
            };
            incoming.drain(..parsed);
        }
    };
    tokio::select! {
        ended = send => ended,
        ended = receive => ended,
    }
}

/// Locks the pending calls. The lock is never held across an `await`, and
/// a panic while it is held cannot leave the map half changed.
fn lock(pending: &std::sync::Mutex<PendingCalls>) -> std::sync::MutexGuard<'_, PendingCalls> {
    match pending.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Calls sent to the agent that have no reply yet, by request id, each
/// with its in-flight slot. A caller that timed out leaves its entry, and
/// its slot, until the agent replies or the connection ends. So the map
/// never has more entries than the bridge's `max_in_flight`.
#[derive(Default)]
struct PendingCalls {
    calls: HashMap<u64, (oneshot::Sender<Response>, OwnedSemaphorePermit)>,
    /// When the map last became non-empty or last lost a call to a reply.
    progress: Option<std::time::Instant>,
}

impl PendingCalls {
    fn insert(&mut self, id: u64, reply: oneshot::Sender<Response>, slot: OwnedSemaphorePermit) {
        if self.calls.is_empty() {
            self.progress = Some(std::time::Instant::now());
        }
        self.calls.insert(id, (reply, slot));
    }

    /// Removes the call `id` and frees its slot.
    fn remove(&mut self, id: u64) -> Option<oneshot::Sender<Response>> {
        let (reply, _slot) = self.calls.remove(&id)?;
        self.progress = Some(std::time::Instant::now());
        Some(reply)
    }

    /// Returns since when calls have waited without any reply, or `None`
    /// when no call waits.
    fn waiting_since(&self) -> Option<std::time::Instant> {
        if self.calls.is_empty() {
            None
        } else {
            self.progress
        }
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

    #[test]
    fn failing_until_success_or_timeout() {
        let hold = u64::try_from(FAILING_FOR.as_millis()).unwrap();
        assert!(!failing(0, 0, 10), "no call yet");
        assert!(!failing(5, 0, 10), "only successes");
        assert!(failing(5, 8, 10), "failure after the last success");
        assert!(!failing(9, 8, 10), "a success since");
        assert!(failing(0, 8, 8 + hold - 1), "still within the hold");
        assert!(!failing(0, 8, 8 + hold), "the hold has passed");
    }

    #[tokio::test]
    async fn invalid_name_changes_no_health() {
        let settings = LinkSettings {
            socket: PathBuf::from("/nonexistent/agent.sock"),
            agent_uid: 0,
            connections: 1,
            max_in_flight: 1,
            timeout: Duration::from_millis(100),
        };
        let link = AgentLink::start(settings, Arc::new(RateLog::default()));
        link.note(None);
        let failed_at = link.last_failure_ms.load(Ordering::Relaxed);
        assert!(failed_at > 0);
        let invalid = Response::Error {
            kind: ErrorKind::Invalid,
            message: "user name has white space at an end".into(),
        };
        link.note(Some(&invalid));
        assert_eq!(
            link.last_success_ms.load(Ordering::Relaxed),
            0,
            "an invalid name counted as a success"
        );
        assert_eq!(link.last_failure_ms.load(Ordering::Relaxed), failed_at);
        link.note(Some(&verdict(VerifyResult::Rejected)));
        assert!(link.last_success_ms.load(Ordering::Relaxed) >= failed_at);
    }

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
        let slots = Arc::new(Semaphore::new(8));
        let link = tokio::spawn(async move { serve(near, &mut receiver, Duration::from_secs(5), true).await });

        let (first_reply, first_answer) = oneshot::channel();
        calls
            .send(Call {
                request: lookup("alice"),
                reply: first_reply,
                slot: Arc::clone(&slots).acquire_owned().await.unwrap(),
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
                slot: Arc::clone(&slots).acquire_owned().await.unwrap(),
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

    /// Calls, and the slot semaphore they take their slots from.
    async fn calls_with_slots(
        count: usize,
        name_len: usize,
    ) -> (Vec<Call>, Vec<oneshot::Receiver<Response>>, Arc<Semaphore>) {
        let slots = Arc::new(Semaphore::new(count));
        let mut calls = Vec::new();
        let mut answers = Vec::new();
        for n in 0..count {
            let (reply, answer) = oneshot::channel();
            let user = format!("{n:0name_len$}");
            calls.push(Call {
                request: lookup(&user),
                reply,
                slot: Arc::clone(&slots).acquire_owned().await.unwrap(),
            });
            answers.push(answer);
        }
        (calls, answers, slots)
    }

    /// An agent that writes replies before it reads the requests: the
    /// link must read them while its own write waits, or both sides wait
    /// for ever once the socket buffers are full.
    #[tokio::test]
    async fn serve_reads_while_write_waits() {
        const CALLS: usize = 8_000;
        let (near, agent) = UnixStream::pair().unwrap();
        let (sender, mut receiver) = mpsc::channel(CALLS);
        let (calls, answers, _slots) = calls_with_slots(CALLS, 200).await;
        for call in calls {
            sender.send(call).await.unwrap();
        }
        let link = tokio::spawn(async move { serve(near, &mut receiver, Duration::from_secs(30), true).await });
        let (mut agent_reader, mut agent_writer) = agent.into_split();

        // One request read shows that the link has sent its batch, and
        // the batch's calls are pending before its write starts.
        let first: RequestFrame = read_frame(&mut agent_reader).await.unwrap();
        assert_eq!(first.id, 1);

        let mut replies = Vec::new();
        for id in 1..=CALLS as u64 {
            replies.extend(
                frame::encode(&ResponseFrame {
                    id,
                    response: verdict(VerifyResult::Rejected),
                })
                .unwrap(),
            );
        }

        let exchange = async {
            agent_writer.write_all(&replies).await.unwrap();
            for _ in 1..CALLS {
                let _: RequestFrame = read_frame(&mut agent_reader).await.unwrap();
            }
            for answer in answers {
                assert_eq!(answer.await.unwrap(), verdict(VerifyResult::Rejected));
            }
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .expect("the link and the agent wait for each other");
        drop(sender);
        assert_eq!(link.await.unwrap(), None);
    }

    /// A caller that gave up leaves its slot taken until the agent
    /// replies, so the agent never has more than `max_in_flight` requests.
    #[tokio::test]
    async fn serve_frees_slot_at_reply() {
        let (near, mut agent) = UnixStream::pair().unwrap();
        let (sender, mut receiver) = mpsc::channel(1);
        let (mut calls, answers, slots) = calls_with_slots(1, 5).await;
        drop(answers);
        sender.send(calls.remove(0)).await.unwrap();
        let link = tokio::spawn(async move { serve(near, &mut receiver, Duration::from_secs(5), true).await });
        let request = read_request(&mut agent).await;
        assert_eq!(slots.available_permits(), 0, "the slot is taken while the agent works");
        let reply = frame::encode(&ResponseFrame {
            id: request.id,
            response: verdict(VerifyResult::Rejected),
        })
        .unwrap();
        agent.write_all(&reply).await.unwrap();
        let freed = tokio::time::timeout(Duration::from_secs(5), slots.acquire()).await;
        assert!(freed.is_ok(), "the slot is freed by the reply");
        drop(sender);
        assert_eq!(link.await.unwrap(), None);
    }

    #[tokio::test]
    async fn serve_drops_stalled_connection() {
        let (near, mut agent) = UnixStream::pair().unwrap();
        let (sender, mut receiver) = mpsc::channel(1);
        let (mut calls, _answers, slots) = calls_with_slots(1, 5).await;
        sender.send(calls.remove(0)).await.unwrap();
        let link = tokio::spawn(async move { serve(near, &mut receiver, Duration::from_millis(200), true).await });
        let _ = read_request(&mut agent).await;
        let ended = tokio::time::timeout(Duration::from_secs(5), link)
            .await
            .unwrap()
            .unwrap();
        assert!(ended.is_some_and(|reason| reason.contains("no reply")));
        assert_eq!(slots.available_permits(), 1, "the dropped call freed its slot");
    }

    /// Starts a link of one connection to a listener in place of the agent,
    /// in a temporary folder that lives as long as the first value.
    fn link_to_listener(timeout: Duration) -> (tempfile::TempDir, tokio::net::UnixListener, AgentLink) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let settings = LinkSettings {
            socket: path,
            agent_uid: nix::unistd::geteuid().as_raw(),
            connections: 1,
            max_in_flight: 4,
            timeout,
        };
        let link = AgentLink::start(settings, Arc::new(RateLog::default()));
        (dir, listener, link)
    }

    /// An agent of protocol version 1 refuses version 2: the link connects
    /// again with version 1 and leaves `caller_delays` out of requests.
    #[tokio::test]
    async fn link_falls_back_to_version_one() {
        let (_dir, listener, link) = link_to_listener(Duration::from_secs(5));
        let link = Arc::new(link);

        let (mut refused, _) = listener.accept().await.unwrap();
        let hello: Hello = read_frame(&mut refused).await.unwrap();
        assert_eq!(hello.version, CALLER_DELAYS_VERSION);
        let unsupported = frame::encode(&HelloReply::Unsupported { supported: 1 }).unwrap();
        refused.write_all(&unsupported).await.unwrap();
        drop(refused);

        let (mut agent, _) = listener.accept().await.unwrap();
        let hello: Hello = read_frame(&mut agent).await.unwrap();
        assert_eq!(hello.version, PROTOCOL_VERSION);
        let welcome = HelloReply::Welcome {
            version: PROTOCOL_VERSION,
            agent: "freeauth-agentd 0.0.1".into(),
        };
        agent.write_all(&frame::encode(&welcome).unwrap()).await.unwrap();

        let request = Request::Verify {
            user: "alice".into(),
            code: freeauth_proto::SecretString::new("123456"),
            origin: Origin::Radius {
                client: "vpn".into(),
                nas_identifier: None,
                nas_ip: None,
                calling_station: None,
                caller_delays: Some(true),
            },
        };
        let caller = Arc::clone(&link);
        let answer = tokio::spawn(async move { caller.call(request).await });
        let sent = read_request(&mut agent).await;
        let caller_delays = match sent.request {
            Request::Verify {
                origin: Origin::Radius { caller_delays, .. },
                ..
            } => caller_delays,
            _ => Some(false),
        };
        assert_eq!(caller_delays, None, "a version 1 agent would refuse the field");
        let reply = frame::encode(&ResponseFrame {
            id: sent.id,
            response: verdict(VerifyResult::Rejected),
        })
        .unwrap();
        agent.write_all(&reply).await.unwrap();
        let called = answer.await.unwrap();
        assert!(
            matches!(&called, Called::Answered(response) if *response == verdict(VerifyResult::Rejected)),
            "{called:?}"
        );
    }

    /// A response that comes after the timeout still reaches the caller,
    /// through the receiver of `Called::Late`.
    #[tokio::test]
    async fn late_response_reaches_the_caller() {
        let (_dir, listener, link) = link_to_listener(Duration::from_millis(200));
        let (mut agent, _) = listener.accept().await.unwrap();
        let hello: Hello = read_frame(&mut agent).await.unwrap();
        let welcome = HelloReply::Welcome {
            version: hello.version,
            agent: "freeauth-agentd 0.0.1".into(),
        };
        agent.write_all(&frame::encode(&welcome).unwrap()).await.unwrap();

        let request = Request::Verify {
            user: "alice".into(),
            code: freeauth_proto::SecretString::new("123456"),
            origin: Origin::Pam {
                service: "test".into(),
                rhost: None,
                tty: None,
                ruser: None,
            },
        };
        let (called, sent) = tokio::join!(link.call(request), read_request(&mut agent));
        assert!(matches!(called, Called::Late(_)), "{called:?}");
        let Called::Late(answer) = called else {
            return;
        };
        let reply = frame::encode(&ResponseFrame {
            id: sent.id,
            response: verdict(VerifyResult::Accepted),
        })
        .unwrap();
        agent.write_all(&reply).await.unwrap();
        let late = tokio::time::timeout(Duration::from_secs(5), answer).await;
        assert_eq!(late.unwrap().unwrap(), verdict(VerifyResult::Accepted));
    }
}
