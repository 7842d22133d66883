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
    let (reader, mut writer) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(reader);
    let mut pending: HashMap<u64, oneshot::Sender<Response>> = HashMap::new();
    let mut next_id: u64 = 1;
    loop {
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
            frame = read_frame::<ResponseFrame, _>(&mut reader) => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(err) => return Some(err.to_string()),
                };
                if let Some(reply) = pending.remove(&frame.id) {
                    let _ = reply.send(frame.response);
                }
            }
        }
    }
}

async fn read_frame<T: serde::de::DeserializeOwned, R: AsyncReadExt + Unpin>(reader: &mut R) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).await?;
    let length = frame::body_len(header)?;
    let mut body = zeroize::Zeroizing::new(vec![0u8; length]);
    reader.read_exact(&mut body).await?;
    frame::decode(&body)
}
