//! The two Unix sockets: accepting connections, checking the peer, reading
//! frames, and turning requests into engine jobs.
//!
//! Each connection has a reader loop and a writer task. Requests run as
//! separate tasks, so one connection may have up to `max_in_flight` of them
//! pending (the RADIUS bridge pipelines), and replies go out in the order
//! they complete. A peer that sends a bad frame gets one error reply and is
//! disconnected; a peer that stalls in the middle of a frame is cut off after
//! `io_timeout`. Neither affects other connections.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use freeauth_proto::frame::{self, FrameError, HEADER_LEN};
use freeauth_proto::{
    ErrorKind, Hello, HelloReply, Origin, Request, RequestFrame, Response, ResponseFrame, CALLER_DELAYS_VERSION,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::access::{Caller, RateLimiter, Rules};
use crate::config::Server;
use crate::engine::{EngineCore, Job, Stats};
use crate::handlers;
use crate::loglimit::LogLimiter;
use crate::placement::Placement;
use crate::policy::{source_address, source_key};

/// Socket that a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    Agent,
    Admin,
}

/// State shared by every connection.
pub struct Shared {
    pub jobs: mpsc::Sender<Job>,
    /// The engine, for lookups run on this thread while it is idle.
    pub engine: Arc<EngineCore>,
    pub stats: Arc<Stats>,
    pub rules: RwLock<Arc<Rules>>,
    pub server: Server,
    pub rate: Mutex<RateLimiter>,
    pub log_limit: LogLimiter,
    pub connections: Arc<Semaphore>,
    /// Connections of local users other than root and the agent's user.
    pub local_connections: Arc<Semaphore>,
    pub connections_per_uid: Mutex<std::collections::HashMap<u32, usize>>,
    /// Bounds concurrent backup-code hashing; see `handlers::BACKUP_HASHES_AT_ONCE`.
    pub backup_hashing: Semaphore,
    /// Bounds concurrent name lookups of local callers; see
    /// [`NAME_LOOKUPS_AT_ONCE`].
    pub name_lookups: Semaphore,
    pub started: Instant,
    pub database: String,
    /// Placement of the connection and engine threads on CPUs, used by
    /// the connection thread only.
    pub placement: Mutex<Placement>,
}

impl Shared {
    pub fn rules(&self) -> Arc<Rules> {
        match self.rules.read() {
            Ok(rules) => Arc::clone(&rules),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn set_rules(&self, rules: Rules) {
        let mut guard = match self.rules.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(rules);
    }
}

/// Serves one accepted connection to its end.
pub async fn serve(stream: UnixStream, kind: SocketKind, shared: Arc<Shared>) {
    let Some(peer) = classify(&stream, kind, &shared) else {
        return;
    };
    // Local users draw from their own pool, capped per uid, so no local
    // user can take the connections root, the bridge and admins need. Both
    // limits apply before the name lookup, so that a flood of connections
    // cannot queue lookups either.
    let (pool, uid, local) = match &peer {
        Peer::Known(caller) => (&shared.connections, caller.uid(), false),
        Peer::Local { uid } => (&shared.local_connections, *uid, true),
    };
    let Ok(permit) = Arc::clone(pool).try_acquire_owned() else {
        shared.log_limit.warn(
            "connections",
            &format!("connection from uid {uid} refused: max_connections reached"),
        );
        return;
    };
    let Some(_uid_slot) = UidSlot::take(&shared, uid, local) else {
        shared.log_limit.warn(
            "connections-per-uid",
            &format!("connection from uid {uid} refused: more than {MAX_LOCAL_CONNECTIONS_PER_UID} open"),
        );
        return;
    };
    let caller = match peer {
        Peer::Known(caller) => caller,
        Peer::Local { uid } => match local_caller(&shared, uid).await {
            // A uid without a user name may ask nothing: close at once.
            Caller::Nobody { uid } => {
                shared.log_limit.warn(
                    "nameless-uid",
                    &format!("connection from uid {uid}, which has no user name, closed"),
                );
                return;
            }
            caller => caller,
        },
    };
    shared.stats.open_connections.fetch_add(1, Ordering::Relaxed);
    if let Err((stage, err)) = converse(stream, kind, caller.clone(), &shared).await {
        match err {
            FrameError::Closed => {}
            // Each stage has its own log limit, so that a flood of silent
            // peers cannot hide the other kind of bad peer.
            other => shared.log_limit.warn(
                stage.log_key(),
                &format!("connection from uid {} ended: {other}", caller.uid()),
            ),
        }
    }
    shared.stats.open_connections.fetch_sub(1, Ordering::Relaxed);
    drop(permit);
}

/// A peer of either socket, before the name lookup of a local user.
enum Peer {
    /// Root, the agent's user, a bridge user or an admin.
    Known(Caller),
    /// Any other user of the agent socket; its name is not looked up yet.
    Local { uid: u32 },
}

/// Stage of the conversation at which a connection ended.
#[derive(Clone, Copy, Debug)]
enum Stage {
    Hello,
    Requests,
}

impl Stage {
    fn log_key(self) -> &'static str {
        match self {
            Stage::Hello => "bad-peer-hello",
            Stage::Requests => "bad-peer",
        }
    }
}

/// Name lookups of local callers that may run at once. Each holds a
/// blocking thread until the directory server replies.
pub const NAME_LOOKUPS_AT_ONCE: usize = 4;

/// Largest frame accepted on the agent socket: a lookup or verification is
/// a few hundred bytes.
pub const MAX_AGENT_FRAME_LEN: usize = 16 * 1024;

/// Connections one local user other than root may hold open at once.
pub const MAX_LOCAL_CONNECTIONS_PER_UID: usize = 8;

/// Time a local user's connection may stay idle between requests.
const LOCAL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One of a local uid's connection slots, given back on drop.
struct UidSlot<'a> {
    shared: &'a Shared,
    uid: u32,
}

impl<'a> UidSlot<'a> {
    /// Takes a slot for a local caller; other callers need none.
    fn take(shared: &'a Shared, uid: u32, local: bool) -> Option<Option<UidSlot<'a>>> {
        if !local {
            return Some(None);
        }
        let mut open = lock(&shared.connections_per_uid);
        let count = open.entry(uid).or_insert(0);
        if *count >= MAX_LOCAL_CONNECTIONS_PER_UID {
            return None;
        }
        *count += 1;
        Some(Some(UidSlot { shared, uid }))
    }
}

impl Drop for UidSlot<'_> {
    fn drop(&mut self) {
        let mut open = lock(&self.shared.connections_per_uid);
        if let Some(count) = open.get_mut(&self.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Classifies a peer by its credentials, without any name lookup; `None`
/// closes the connection.
fn classify(stream: &UnixStream, kind: SocketKind, shared: &Shared) -> Option<Peer> {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(err) => {
            shared
                .log_limit
                .warn("peer-cred", &format!("cannot read peer credentials: {err}"));
            return None;
        }
    };
    let rules = shared.rules();
    match kind {
        SocketKind::Agent => Some(match rules.known_caller(cred.uid()) {
            Some(caller) => Peer::Known(caller),
            None => Peer::Local { uid: cred.uid() },
        }),
        SocketKind::Admin if rules.is_admin(cred.uid(), cred.gid(), cred.pid()) => {
            Some(Peer::Known(Caller::Admin { uid: cred.uid() }))
        }
        SocketKind::Admin => {
            shared.log_limit.warn(
                "admin-denied",
                &format!(
                    "admin connection from uid {} refused: not root, the agent's user or the admin group",
                    cred.uid()
                ),
            );
            None
        }
    }
}

/// Looks up the user name of a local caller. The lookup may wait for a
/// directory server, so it runs on a blocking thread, at most
/// [`NAME_LOOKUPS_AT_ONCE`] at a time: one thread serves every connection,
/// and a slow directory must not hold up root's logins or the bridge.
async fn local_caller(shared: &Shared, uid: u32) -> Caller {
    // The semaphore is never closed, so this always waits for a turn.
    let _turn = shared.name_lookups.acquire().await;
    let rules = shared.rules();
    tokio::task::spawn_blocking(move || rules.agent_caller(uid))
        .await
        .unwrap_or_else(|err| {
            tracing::error!(uid, error = %err, "name lookup of a local caller failed");
            Caller::Nobody { uid }
        })
}

async fn converse(
    stream: UnixStream,
    kind: SocketKind,
    caller: Caller,
    shared: &Arc<Shared>,
) -> Result<(), (Stage, FrameError)> {
    let (reader, mut writer) = stream.into_split();
    // Buffered, so a frame costs one read system call, not three.
    let mut reader = WipingReader::new(reader);
    let timeout = shared.server.io_timeout;
    // Only the admin socket carries large messages (imports).
    let max_len = match kind {
        SocketKind::Admin => frame::MAX_FRAME_LEN,
        SocketKind::Agent => MAX_AGENT_FRAME_LEN,
    };
    let hello: Hello = read_frame(&mut reader, timeout, true, max_len)
        .await
        .map_err(|err| (Stage::Hello, err))?;
    let accepted = hello.version == PROTOCOL_VERSION || hello.version == CALLER_DELAYS_VERSION;
    let reply = if accepted {
        HelloReply::Welcome {
            version: hello.version,
            agent: format!("freeauth-agentd {}", env!("CARGO_PKG_VERSION")),
        }
    } else {
        HelloReply::Unsupported {
            supported: CALLER_DELAYS_VERSION,
        }
    };
    let welcome = frame::encode(&reply).map_err(|err| (Stage::Hello, err))?;
    if !accepted {
        writer
            .write_all(&welcome)
            .await
            .map_err(|err| (Stage::Hello, FrameError::from(err)))?;
        let reason = format!("client {:?} speaks protocol version {}", hello.client, hello.version);
        return Err((Stage::Hello, FrameError::Malformed { reason }));
    }

    let (replies, mut outgoing) = mpsc::channel::<Reply>(64);
    let stats = Arc::clone(&shared.stats);
    let write_task = tokio::spawn(async move {
        // Replies that are ready together go out in one write. The buffer
        // wipes each block it outgrows, which may hold backup codes.
        let mut batch = frame::WipingBuffer::with_capacity(4096);
        let mut broken = false;
        let mut welcome = true;
        while let Some(first) = outgoing.recv().await {
            // A client that sends its first request right behind the hello
            // (the PAM module does) gets the welcome and that reply in one
            // write, and wakes up once: the task of that request runs
            // before this one goes on. Later replies do not wait.
            if std::mem::take(&mut welcome) {
                tokio::task::yield_now().await;
            }
            let mut answered = 0;
            let mut append = |reply: Reply| {
                let bytes = zeroize::Zeroizing::new(reply.bytes);
                // `WipingBuffer::write` always returns `Ok`.
                let _ = std::io::Write::write_all(&mut batch, &bytes);
                answered += u64::from(reply.for_request);
            };
            append(first);
            while let Ok(more) = outgoing.try_recv() {
                append(more);
            }
            // After a failed write the replies are dropped, but each still
            // leaves the in-flight count, so that a shutdown does not wait
            // for it.
            if !broken {
                if let Err(err) = writer.write_all(batch.as_slice()).await {
                    tracing::debug!(error = %err, "cannot write replies; the peer is gone");
                    broken = true;
                }
            }
            batch.clear();
            // Counted only once written, so that a shutdown, which waits
            // until no request is in flight, does not cut a reply off.
            stats.in_flight.fetch_sub(answered, Ordering::Relaxed);
        }
    });
    let welcome = Reply {
        bytes: welcome,
        for_request: false,
    };
    // The writer task was just spawned and keeps its receiver until
    // `replies` is dropped, so this send finds it.
    let _ = replies.send(welcome).await;
    let in_flight = Arc::new(Semaphore::new(shared.server.max_in_flight));
    let delayed = Arc::new(Semaphore::new(
        shared.server.max_in_flight.saturating_mul(DELAYED_PER_IN_FLIGHT),
    ));
    let idle_limit = matches!(caller, Caller::Local { .. }).then_some(LOCAL_IDLE_TIMEOUT);
    let result = loop {
        let next = read_frame(&mut reader, timeout, false, max_len);
        let frame: Result<RequestFrame, FrameError> = match idle_limit {
            Some(limit) => tokio::time::timeout(limit, next)
                .await
                .unwrap_or_else(|_| Err(timed_out("next request"))),
            None => next.await,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => break Err(err),
        };
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break Ok(());
        };
        let task_shared = Arc::clone(shared);
        // Shared with the task, and held until the reply is handed to the
        // writer, so that a peer that reads no reply stops this loop.
        let slot = Arc::new(std::sync::Mutex::new(Some(permit)));
        let arrived = Instant::now();
        if let Ok(mut placement) = shared.placement.try_lock() {
            placement.tick(arrived);
        }
        let task = Task {
            shared: Arc::clone(shared),
            caller: caller.clone(),
            kind,
            arrived,
            slot: Arc::clone(&slot),
            delayed: Arc::clone(&delayed),
        };
        let replies = replies.clone();
        shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let response = task.handle(frame.request).await;
            let id = frame.id;
            // An admin reply can be large (a page of `list`), and one
            // thread serves every connection, so it is encoded elsewhere.
            let encoded = match kind {
                SocketKind::Agent => encode_reply(id, response),
                SocketKind::Admin => tokio::task::spawn_blocking(move || encode_reply(id, response))
                    .await
                    .unwrap_or_else(|err| {
                        tracing::error!(id, error = %err, "encoding an admin reply failed");
                        Err(FrameError::Malformed {
                            reason: "the thread that encodes the reply panicked".into(),
                        })
                    }),
            };
            let sent = match encoded {
                Ok(bytes) => replies
                    .send(Reply {
                        bytes,
                        for_request: true,
                    })
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if !sent {
                task_shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            drop(slot);
        });
    };
    if let Err(err @ (FrameError::Malformed { .. } | FrameError::BadLength { .. })) = &result {
        let reply = ResponseFrame {
            id: 0,
            response: Response::Error {
                kind: ErrorKind::Malformed,
                message: format!("malformed request, closing the connection: {err}"),
            },
        };
        if let Ok(bytes) = frame::encode(&reply) {
            let reply = Reply {
                bytes,
                for_request: false,
            };
            let _ = replies.send(reply).await;
        }
    }
    // Let requests already in flight finish and reply before closing.
    let _ = in_flight
        .acquire_many(u32::try_from(shared.server.max_in_flight).unwrap_or(u32::MAX))
        .await;
    drop(replies);
    let _ = write_task.await;
    result.map_err(|err| (Stage::Requests, err))
}

/// An encoded reply for a connection's writer task.
struct Reply {
    bytes: Vec<u8>,
    /// The reply is to a request counted in `Stats::in_flight`.
    for_request: bool,
}

/// Encodes the reply to request `id`. A reply over the frame cap becomes an
/// error reply, so the client does not wait in vain.
fn encode_reply(id: u64, response: Response) -> Result<Vec<u8>, FrameError> {
    frame::encode(&ResponseFrame { id, response }).or_else(|err| {
        tracing::error!(id, error = %err, "cannot send a reply; sending an error instead");
        let response = Response::Error {
            kind: ErrorKind::Internal,
            message: format!("the reply is too large to send: {err}"),
        };
        frame::encode(&ResponseFrame { id, response })
    })
}

/// Size of a connection's read buffer.
const READ_BUFFER_LEN: usize = 8 * 1024;

/// A buffered reader whose buffer is wiped when the connection ends.
/// Requests carry codes, and tokio's `BufReader` frees its buffer unwiped.
pub struct WipingReader<R> {
    inner: R,
    buffer: zeroize::Zeroizing<Vec<u8>>,
    start: usize,
    end: usize,
}

impl<R> WipingReader<R> {
    pub fn new(inner: R) -> WipingReader<R> {
        WipingReader {
            inner,
            buffer: zeroize::Zeroizing::new(vec![0; READ_BUFFER_LEN]),
            start: 0,
            end: 0,
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WipingReader<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            // A read at least as large as the buffer skips it.
            if out.remaining() >= this.buffer.len() {
                return std::pin::Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let mut fill = tokio::io::ReadBuf::new(&mut this.buffer);
            std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
            this.start = 0;
            this.end = fill.filled().len();
        }
        let available = &this.buffer[this.start..this.end];
        let copied = available.len().min(out.remaining());
        out.put_slice(&available[..copied]);
        this.start += copied;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Reads one frame. Between frames the peer may stay idle as long as it
/// likes unless `first` is set; once a frame has begun, it must arrive whole
/// within `timeout`.
async fn read_frame<T: serde::de::DeserializeOwned + Send + 'static>(
    reader: &mut WipingReader<OwnedReadHalf>,
    timeout: Duration,
    first: bool,
    max_len: usize,
) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = if first {
        tokio::time::timeout(timeout, reader.read(&mut header[..1]))
            .await
            .map_err(|_| timed_out("hello"))??
    } else {
        reader.read(&mut header[..1]).await?
    };
    if got == 0 {
        return Err(FrameError::Closed);
    }
    let rest = async {
        read_full(reader, &mut header[1..], 1).await?;
        let length = frame::body_len(header)?;
        if length > max_len {
            return Err(FrameError::BadLength {
                length: length as u64,
                max: max_len as u64,
            });
        }
        let mut body = zeroize::Zeroizing::new(vec![0u8; length]);
        read_full(reader, &mut body, 0).await?;
        Ok(body)
    };
    let body = tokio::time::timeout(timeout, rest)
        .await
        .map_err(|_| timed_out("frame"))??;
    if body.len() <= DECODE_IN_PLACE_LEN {
        return frame::decode(&body);
    }
    // A large frame (an import) takes milliseconds to decode, which would
    // hold up every other connection on this thread.
    tokio::task::spawn_blocking(move || frame::decode(&body))
        .await
        .unwrap_or_else(|err| {
            tracing::error!(error = %err, "decoding a large request failed");
            Err(FrameError::Malformed {
                reason: "the thread that decodes the request panicked".into(),
            })
        })
}

/// Largest frame body decoded on the thread that serves the connections.
/// Every frame of the agent socket is smaller.
const DECODE_IN_PLACE_LEN: usize = 64 * 1024;

fn timed_out(what: &str) -> FrameError {
    FrameError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("peer stalled: {what} not complete within io_timeout"),
    ))
}

/// Fills `buffer`, of which `before` bytes of the same part (the length
/// prefix) were read already. A peer that closes first gets an error with
/// the bytes it did send.
async fn read_full(
    reader: &mut WipingReader<OwnedReadHalf>,
    buffer: &mut [u8],
    before: usize,
) -> Result<(), FrameError> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]).await? {
            0 => {
                return Err(FrameError::Truncated {
                    received: before + filled,
                    expected: before + buffer.len(),
                })
            }
            read => filled += read,
        }
    }
    Ok(())
}

/// One request being served.
pub struct Task {
    pub shared: Arc<Shared>,
    pub caller: Caller,
    pub kind: SocketKind,
    pub arrived: Instant,
    /// The request's place among the connection's `max_in_flight`, or its
    /// place for delayed replies once its reply waits out a failure delay.
    /// Freed when the reply has been handed to the connection's writer.
    slot: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    /// The connection's places for replies that wait out a failure delay.
    delayed: Arc<Semaphore>,
}

/// Replies that may wait out a failure delay on one connection, per place
/// of `max_in_flight`. A waiting reply costs only a timer and its
/// task, and the places it frees let the connection's other requests go
/// on. Without this, a flood of wrong codes through the RADIUS bridge held
/// every place for up to `max_failure_delay_ms` and stalled all logins.
const DELAYED_PER_IN_FLIGHT: usize = 16;

impl Task {
    /// Moves this request from the connection's in-flight places to its
    /// places for delayed replies, when one is free. When none is free the
    /// request keeps its in-flight place, which slows the connection down
    /// instead.
    pub fn wait_outside_in_flight(&self) {
        let Ok(place) = Arc::clone(&self.delayed).try_acquire_owned() else {
            return;
        };
        let mut slot = match self.slot.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Some(place);
    }

    async fn handle(self, request: Request) -> Response {
        match (self.kind, request) {
            (_, Request::Lookup { user }) => handlers::lookup(&self, user).await,
            (_, Request::Verify { user, code, origin }) => handlers::verify(&self, user, code, false, origin).await,
            (_, Request::VerifyTail { user, text, origin }) => handlers::verify(&self, user, text, true, origin).await,
            (SocketKind::Admin, request) => handlers::admin(&self, request).await,
            (SocketKind::Agent, _) => forbidden("management requests are served on the admin socket only"),
        }
    }

    /// Sends a job to the engine and waits for its reply. A lookup runs
    /// on this thread at once when the engine thread is idle.
    pub async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        let jobs = &self.shared.jobs;
        // The channel holds no job when all its permits are free. Under
        // load the engine thread takes the lookups, in batches, so that
        // this thread stays free for reading and writing.
        let idle = jobs.capacity() == jobs.max_capacity() && self.shared.stats.in_flight.load(Ordering::Relaxed) <= 1;
        if let Some(job) = self.shared.engine.try_inline(job(reply), idle) {
            jobs.send(job).await.ok()?;
        }
        answer.await.ok()
    }

    /// Checks that this caller may ask about `user` with `origin`; returns
    /// the error response otherwise.
    pub fn check_caller(&self, user: &str, origin: Option<&Origin>) -> Result<(), Response> {
        match (&self.caller, origin) {
            (Caller::Admin { .. }, _)
            | (Caller::Trusted { .. }, Some(Origin::Pam { .. } | Origin::Radius { .. }) | None) => Ok(()),
            (Caller::Bridge { .. }, Some(Origin::Radius { .. })) => Ok(()),
            (Caller::Local { name, .. }, None | Some(Origin::Pam { .. })) if name == user => self.check_rate(),
            (Caller::Local { .. }, _) => Err(forbidden("a local user may ask only about its own account")),
            _ => Err(forbidden("this caller may not make this request")),
        }
    }

    fn check_rate(&self) -> Result<(), Response> {
        let per_minute = self.shared.rules().local_requests_per_minute;
        let mut limiter = match self.shared.rate.lock() {
            Ok(limiter) => limiter,
            Err(poisoned) => poisoned.into_inner(),
        };
        if limiter.allow(self.caller.uid(), per_minute, Instant::now()) {
            return Ok(());
        }
        Err(Response::Error {
            kind: ErrorKind::RateLimited,
            message: format!(
                "more than {per_minute} requests per minute from uid {}; try again later",
                self.caller.uid()
            ),
        })
    }

    /// Returns whether the caller came through the admin socket, and so may
    /// learn why a code was rejected.
    pub fn is_admin(&self) -> bool {
        matches!(self.caller, Caller::Admin { .. })
    }

    /// Returns the source to count failures for; see [`source_of`].
    pub fn source_of(&self, origin: &Origin) -> Option<String> {
        source_of(&self.caller, origin)
    }

    /// Returns whether the caller gets only accept or reject (a remote party).
    pub fn is_remote(&self, origin: &Origin) -> bool {
        matches!(self.caller, Caller::Bridge { .. }) || matches!(origin, Origin::Radius { .. })
    }
}

/// Returns the source to count failures under: `pam:ADDRESS` for the
/// remote host of a PAM login, and `radius:CLIENT:ADDRESS` for the
/// Calling-Station-Id of a RADIUS request, with the address in the form of
/// [`source_address`]. RADIUS sources are kept apart per client, because
/// some NASes copy a value the end user chooses into Calling-Station-Id.
/// Only root, the agent's user, the bridge and admins can name a source,
/// because another local user could otherwise lock any address out.
pub fn source_of(caller: &Caller, origin: &Origin) -> Option<String> {
    if matches!(caller, Caller::Local { .. } | Caller::Nobody { .. }) {
        return None;
    }
    match origin {
        Origin::Pam { rhost, .. } => Some(source_key(None, &source_address(rhost.as_deref()?)?)),
        Origin::Radius {
            client,
            calling_station,
            ..
        } => Some(source_key(Some(client), &source_address(calling_station.as_deref()?)?)),
        Origin::Admin {} => None,
    }
}

/// Builds the response for a request the caller may not make.
pub fn forbidden(message: &str) -> Response {
    Response::Error {
        kind: ErrorKind::Forbidden,
        message: message.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pam_from(rhost: Option<&str>) -> Origin {
        Origin::Pam {
            service: "sshd".into(),
            rhost: rhost.map(str::to_owned),
            tty: None,
            ruser: None,
        }
    }

    #[test]
    fn source_comes_from_trusted_callers_only() {
        let origin = pam_from(Some(" 192.0.2.7 "));
        let trusted = Caller::Trusted { uid: 0 };
        let local = Caller::Local {
            uid: 1000,
            name: "alice".into(),
        };
        assert_eq!(source_of(&trusted, &origin), Some("pam:192.0.2.7".into()));
        assert_eq!(
            source_of(&Caller::Admin { uid: 0 }, &origin),
            Some("pam:192.0.2.7".into())
        );
        assert_eq!(source_of(&local, &origin), None);
        assert_eq!(source_of(&Caller::Nobody { uid: 4242 }, &origin), None);
    }

    #[test]
    fn source_of_radius_is_calling_station() {
        let origin = Origin::Radius {
            client: "vpn".into(),
            nas_identifier: None,
            nas_ip: Some("192.0.2.1".into()),
            calling_station: Some("00-1B-63-84-45-E6".into()),
            caller_delays: None,
        };
        let bridge = Caller::Bridge { uid: 110 };
        assert_eq!(source_of(&bridge, &origin), Some("radius:vpn:00-1b-63-84-45-e6".into()));
    }

    #[test]
    fn source_missing_or_blank_is_none() {
        let trusted = Caller::Trusted { uid: 0 };
        assert_eq!(source_of(&trusted, &pam_from(None)), None);
        assert_eq!(source_of(&trusted, &pam_from(Some("  "))), None);
        assert_eq!(source_of(&trusted, &Origin::Admin {}), None);
    }

    #[test]
    fn long_source_is_cut_at_a_character() {
        let long = "é".repeat(200);
        let address = source_address(&long).unwrap();
        assert_eq!(address.len(), 254);
        assert!(address.chars().all(|c| c == 'é'));
        // Lowercasing "İ" (2 bytes) gives 3 bytes; the cut comes after it.
        let growing = source_address(&"İ".repeat(127)).unwrap();
        assert!(growing.len() <= 255, "{}", growing.len());
    }

    #[tokio::test]
    async fn wiping_reader_returns_every_byte_in_order() {
        use tokio::io::AsyncReadExt;

        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut reader = WipingReader::new(&data[..]);
        let sizes = [1usize, 3, 4096, 7, 9000, 8192, 100];
        let mut received = Vec::new();
        for size in sizes.iter().cycle() {
            let mut chunk = vec![0; *size];
            let got = reader.read(&mut chunk).await.unwrap();
            if got == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..got]);
        }
        assert_eq!(received, data);
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        assert_eq!(source_address("2001:db8:1:2:aaaa::1").unwrap(), "2001:db8:1:2::/64");
        assert_eq!(source_address("[2001:DB8:1:2::ffff]").unwrap(), "2001:db8:1:2::/64");
        assert_eq!(source_address("::ffff:192.0.2.7").unwrap(), "192.0.2.7");
        assert_eq!(source_address("Host.Example.COM").unwrap(), "host.example.com");
        assert_eq!(source_address(" \t"), None);
    }

    #[test]
    fn single_host_ipv6_sources_stay_whole() {
        assert_eq!(source_address("64:ff9b::c000:207").unwrap(), "192.0.2.7", "NAT64");
        assert_eq!(source_address("::1").unwrap(), "::1");
        assert_eq!(source_address("::1.2.3.4").unwrap(), "::102:304");
        assert_eq!(source_address("fe80::1%ETH0").unwrap(), "fe80::1%eth0");
        assert_eq!(source_address("fe80::2").unwrap(), "fe80::2");
    }

    #[test]
    fn radius_source_names_escape_the_client() {
        let key = source_key(Some("Web:App%1"), "192.0.2.1");
        assert_eq!(key, "radius:web%3aapp%251:192.0.2.1");
        assert_eq!(
            crate::policy::split_source_key(&key),
            Some(("radius:web%3aapp%251", "192.0.2.1"))
        );
        assert_eq!(
            crate::policy::split_source_key("pam:2001:db8::/64"),
            Some(("pam", "2001:db8::/64"))
        );
    }
}
