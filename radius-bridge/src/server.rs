//! The UDP side: one receive loop per listening socket, and one task per
//! request that checks it, asks the agent and replies.
//!
//! Datagrams that are malformed, come from an unknown source, or carry a bad
//! or missing Message-Authenticator are dropped silently (RFC 2865 section
//! 3), counted per client and reason, and logged with a rate limit. Every
//! reply carries a Message-Authenticator as its first attribute and copies
//! the request's Proxy-State attributes in order.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use freeauth_proto::{ErrorKind, Origin, Request, Response, SecretString, VerifyResult};
use tokio::sync::oneshot;

use crate::agent_link::{AgentLink, Called};
use crate::codec::{attr, unhide_password, verify_message_authenticator, Code, Packet, ReplyBuilder, VENDOR_MICROSOFT};
use crate::config::{Client, MessageAuthenticatorPolicy};
use crate::dedup::{Cache, CachedReply, RequestKey, Seen};
use crate::ratelog::RateLog;
use crate::seen::FileWrite;
use crate::seen::SeenClients;
use crate::udp::Listener;

/// Counter and log bucket of datagrams not (yet) tied to a client.
const UNKNOWN_SOURCE: &str = "(unknown source)";

/// Receive buffer: one byte more than the largest packet shows oversize.
const RECEIVE_BUFFER: usize = crate::codec::MAX_PACKET_LEN + 1;

/// The running bridge, shared by every task.
pub struct Bridge {
    pub clients: RwLock<Arc<Vec<Client>>>,
    pub link: AgentLink,
    pub dedup: Mutex<Cache>,
    pub seen: Mutex<SeenClients>,
    pub log: Arc<RateLog>,
    pub drops: Mutex<HashMap<(String, &'static str), u64>>,
    pub realm_reject_delay: std::time::Duration,
    /// Places for rejections that wait out the agent's failure delay here,
    /// as many as `max_in_flight`. The agent replies to them at once, so they
    /// take no place among the verifications sent to it.
    pub delayed: HeldRejections,
}

/// Places for rejections held back in the bridge. A client may take one
/// more place only while more places are free than it has taken. A
/// flooding client then ends with half of them, a second with a quarter,
/// and so on, so a client without a place still finds one free unless
/// about log2(places) clients flood at once (13 of the default 8192).
pub struct HeldRejections {
    places: usize,
    /// Places in use in all, and by each client.
    in_use: Mutex<(usize, HashMap<String, usize>)>,
}

/// One taken place; dropping it gives the place back.
struct HeldPlace<'a> {
    held: &'a HeldRejections,
    client: String,
}

impl HeldRejections {
    pub fn new(places: usize) -> HeldRejections {
        HeldRejections {
            places,
            in_use: Mutex::new((0, HashMap::new())),
        }
    }

    /// Takes a place for `client`, or returns `None` when the client
    /// has taken as many places as are free.
    fn take(&self, client: &str) -> Option<HeldPlace<'_>> {
        let mut in_use = lock(&self.in_use);
        let (total, per_client) = &mut *in_use;
        let mine = per_client.get(client).copied().unwrap_or(0);
        if mine >= self.places.saturating_sub(*total) {
            return None;
        }
        *total += 1;
        per_client.insert(client.to_owned(), mine + 1);
        Some(HeldPlace {
            held: self,
            client: client.to_owned(),
        })
    }
}

impl std::ops::Drop for HeldPlace<'_> {
    fn drop(&mut self) {
        let mut in_use = lock(&self.held.in_use);
        let (total, per_client) = &mut *in_use;
        *total = total.saturating_sub(1);
        if let Some(mine) = per_client.get_mut(&self.client) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

/// Reason a datagram got no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    UnknownClient,
    BadMessageAuthenticator,
    MissingMessageAuthenticator,
    UnsupportedCode,
    AgentUnavailable,
    AgentBusy,
    Retransmission,
    TooManyDelayed,
    ProxyStateTooLong,
}

impl Drop {
    fn describe(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed packet",
            Drop::UnknownClient => "unknown client",
            Drop::BadMessageAuthenticator => "invalid Message-Authenticator (wrong secret?)",
            Drop::MissingMessageAuthenticator => "missing Message-Authenticator",
            Drop::UnsupportedCode => "unsupported packet code",
            Drop::AgentUnavailable => "agent unavailable; no reply so the client fails over",
            Drop::AgentBusy => "agent busy: max_in_flight verifications are in flight and as many wait",
            Drop::Retransmission => "retransmission of a request still in progress",
            Drop::TooManyDelayed => {
                "rejection dropped: this client has taken as many places for rejections that wait out their delay as are free"
            }
            Drop::ProxyStateTooLong => "Proxy-State attributes too long to copy into a reply",
        }
    }
}

impl Bridge {
    pub fn clients(&self) -> Arc<Vec<Client>> {
        match self.clients.read() {
            Ok(clients) => Arc::clone(&clients),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn set_clients(&self, clients: Vec<Client>) {
        let mut guard = match self.clients.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(clients);
    }

    fn dropped(&self, client: &str, source: SocketAddr, reason: Drop) {
        let client = if client.is_empty() { UNKNOWN_SOURCE } else { client };
        let count = {
            let mut drops = lock(&self.drops);
            let count = drops.entry((client.to_owned(), reason.describe())).or_insert(0);
            *count += 1;
            *count
        };
        // Counters and log keys exist per configured client and reason, plus
        // one "unknown source" bucket, so a flood from many addresses cannot
        // grow them.
        let key = format!("drop/{client}/{reason:?}");
        let message = format!(
            "dropped a datagram from {source} (client {client}): {} [{count} so far]",
            reason.describe()
        );
        self.log.warn(&key, &message);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Receives datagrams on `socket` forever.
pub async fn receive_loop(socket: Arc<Listener>, bridge: Arc<Bridge>) {
    let mut buffer = vec![0u8; RECEIVE_BUFFER];
    loop {
        let received = match socket.receive(&mut buffer).await {
            Ok(received) => received,
            Err(err) => {
                bridge.log.warn("recv", &format!("receive failed: {err}"));
                continue;
            }
        };
        let (source, local) = (received.source, received.local);
        let datagram = buffer[..received.length].to_vec();
        let (socket, bridge) = (Arc::clone(&socket), Arc::clone(&bridge));
        tokio::spawn(async move {
            let reply = handle(&bridge, &datagram, source).await;
            if let Some(reply) = reply {
                if let Err(err) = socket.send(&reply, source, local).await {
                    bridge
                        .log
                        .warn("send", &format!("cannot send reply to {source}: {err}"));
                }
            }
        });
    }
}

/// Checks one datagram and returns the reply to send, if any.
pub async fn handle(bridge: &Arc<Bridge>, datagram: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    let Ok(packet) = Packet::parse(datagram) else {
        bridge.dropped(UNKNOWN_SOURCE, source, Drop::Malformed);
        return None;
    };
    let clients = bridge.clients();
    let nas_identifier = packet
        .find(attr::NAS_IDENTIFIER)
        .map(|a| String::from_utf8_lossy(a.value).into_owned());
    let Some(client) = find_client(&clients, source.ip(), nas_identifier.as_deref()) else {
        bridge.dropped(UNKNOWN_SOURCE, source, Drop::UnknownClient);
        return None;
    };
    let result = match packet.code {
        Code::AccessRequest => access_request(bridge, client, &packet, source, nas_identifier).await,
        Code::StatusServer => status_server(bridge, client, &packet),
        _ => Err(Drop::UnsupportedCode),
    };
    match result {
        Ok(reply) => Some(reply),
        Err(reason) => {
            bridge.dropped(&client.name, source, reason);
            None
        }
    }
}

/// Finds the client for a source address: one that names the request's
/// NAS-Identifier wins, else the most specific network without one.
pub fn find_client<'c>(clients: &'c [Client], ip: IpAddr, nas_identifier: Option<&str>) -> Option<&'c Client> {
    let mut matching: Vec<&Client> = clients.iter().filter(|client| client.network.contains(ip)).collect();
    matching.sort_by_key(|client| std::cmp::Reverse(client.network.prefix));
    if let Some(identifier) = nas_identifier {
        if let Some(client) = matching
            .iter()
            .find(|c| c.nas_identifier.as_deref() == Some(identifier))
        {
            return Some(client);
        }
    }
    matching.into_iter().find(|client| client.nas_identifier.is_none())
}

/// Answers Status-Server (RFC 5997) only while the agent is reachable, so a
/// client's health check fails over exactly when logins would.
fn status_server(bridge: &Bridge, client: &Client, packet: &Packet<'_>) -> Result<Vec<u8>, Drop> {
    // RFC 5997 section 3: a Status-Server without a valid Message-Authenticator is dropped.
    match verify_message_authenticator(packet, &client.secret) {
        Some(true) => {}
        Some(false) => return Err(Drop::BadMessageAuthenticator),
        None => return Err(Drop::MissingMessageAuthenticator),
    }
    if !bridge.link.is_up() {
        return Err(Drop::AgentUnavailable);
    }
    Ok(reply(client, packet, Code::AccessAccept, None))
}

/// Applies the client's Message-Authenticator policy to a request. Returns
/// the rewrite of the `auto` client list when this client is new to it, an
/// earlier write failed, or the write that adds the client has not reached
/// the disk yet.
fn check_message_authenticator(
    bridge: &Bridge,
    client: &Client,
    packet: &Packet<'_>,
) -> Result<Option<FileWrite>, Drop> {
    match verify_message_authenticator(packet, &client.secret) {
        Some(false) => Err(Drop::BadMessageAuthenticator),
        Some(true) if client.message_authenticator == MessageAuthenticatorPolicy::Auto => {
            let write = lock(&bridge.seen).remember(&client.name);
            if write.is_some() {
                tracing::info!(client = %client.name, "client sent a Message-Authenticator; requiring it from now on");
            }
            Ok(write)
        }
        Some(true) => Ok(None),
        None => match client.message_authenticator {
            MessageAuthenticatorPolicy::Require => Err(Drop::MissingMessageAuthenticator),
            MessageAuthenticatorPolicy::Auto if lock(&bridge.seen).contains(&client.name) => {
                Err(Drop::MissingMessageAuthenticator)
            }
            _ => Ok(None),
        },
    }
}

/// Tells whether `client` accepts requests without a Message-Authenticator
/// now, so that anyone who can send from its address can send in its name.
fn accepts_unsigned(bridge: &Bridge, client: &Client) -> bool {
    match client.message_authenticator {
        MessageAuthenticatorPolicy::Require => false,
        MessageAuthenticatorPolicy::Auto => !lock(&bridge.seen).contains(&client.name),
        MessageAuthenticatorPolicy::DangerNotRequired => true,
    }
}

/// Writes the `auto` client list on a blocking thread and waits for it.
/// The write syncs the file to disk, which the thread that serves every
/// socket must not wait for.
async fn write_client_list(bridge: &Bridge, write: FileWrite) {
    let problem = match tokio::task::spawn_blocking(move || write.run()).await {
        Ok(Ok(())) => return,
        Ok(Err(err)) => err,
        Err(err) => format!("the thread that writes the client list failed: {err}"),
    };
    bridge
        .log
        .warn("seen", &format!("{problem}; will retry on the next request"));
    lock(&bridge.seen).mark_unsaved();
}

async fn access_request(
    bridge: &Arc<Bridge>,
    client: &Client,
    packet: &Packet<'_>,
    source: SocketAddr,
    nas_identifier: Option<String>,
) -> Result<Vec<u8>, Drop> {
    // RFC 3579, section 3.2: a request that carries EAP-Message but no
    // Message-Authenticator is discarded silently, whatever the policy.
    if packet.find(attr::EAP_MESSAGE).is_some() && packet.find(attr::MESSAGE_AUTHENTICATOR).is_none() {
        return Err(Drop::MissingMessageAuthenticator);
    }
    let write = check_message_authenticator(bridge, client, packet)?;
    // Proxy-State must come back unchanged (RFC 2865, section 5.33). Only a
    // request without a Message-Authenticator can carry more than a reply
    // with one has room for.
    let proxy_states: usize = packet.all(attr::PROXY_STATE).map(|a| a.value.len() + 2).sum();
    if proxy_states > ReplyBuilder::new(Code::AccessReject, packet.identifier).room() {
        return Err(Drop::ProxyStateTooLong);
    }
    let key = RequestKey {
        client: &client.name,
        source,
        identifier: packet.identifier,
        authenticator: packet.authenticator,
        spoofable: accepts_unsigned(bridge, client),
    };
    let arrived = tokio::time::Instant::now();
    let seen = check_duplicate(bridge, &key);
    // After the duplicate check, so that a resend that arrives during the
    // write is seen as in flight. The reply still waits for the write.
    if let Some(write) = write {
        write_client_list(bridge, write).await;
    }
    match seen {
        Seen::Replied(cached) => {
            tracing::debug!(client = %client.name, %source, id = packet.identifier, "retransmission answered from the cache");
            return Ok(reply(client, packet, cached.code, cached.message));
        }
        Seen::InFlight => return Err(Drop::Retransmission),
        Seen::New => {}
    }
    let mut late = None;
    match decide(bridge, client, packet, nas_identifier, &mut late).await {
        Ok(decided) => {
            lock(&bridge.dedup).finish(&key, decided);
            Ok(reply(client, packet, decided.code, decided.message))
        }
        // The agent counted this rejection already. Its entry stays in
        // flight until it expires, so that resends are dropped and do not
        // count again.
        Err(Drop::TooManyDelayed) => Err(Drop::TooManyDelayed),
        Err(reason) => {
            match late {
                Some(receiver) => cache_late_verdict(bridge, &key, arrived, receiver),
                None => lock(&bridge.dedup).forget(&key),
            }
            Err(reason)
        }
    }
}

/// Waits, in the background, for the response to a verification that
/// outlived `agent_timeout_ms`, and keeps its verdict as the request's
/// reply. Until then the request stays in flight, so resends are dropped.
/// A resend after the verdict gets it from the cache: the agent may have
/// accepted the code, and would reject it as reused if asked again.
fn cache_late_verdict(
    bridge: &Arc<Bridge>,
    key: &RequestKey<'_>,
    arrived: tokio::time::Instant,
    receiver: oneshot::Receiver<Response>,
) {
    let bridge = Arc::clone(bridge);
    let (client, source, identifier, authenticator, spoofable) = (
        key.client.to_owned(),
        key.source,
        key.identifier,
        key.authenticator,
        key.spoofable,
    );
    let expires = arrived + lock(&bridge.dedup).window();
    tokio::spawn(async move {
        let key = RequestKey {
            client: &client,
            source,
            identifier,
            authenticator,
            spoofable,
        };
        // The entry expires `duplicate_seconds` after the request arrived,
        // and a later request with the same key is another one.
        let Ok(response) = tokio::time::timeout_at(expires, receiver).await else {
            return;
        };
        match response.ok().as_ref().and_then(verdict_reply) {
            Some(decided) => {
                if !lock(&bridge.dedup).finish(&key, decided) {
                    return;
                }
                if let Some(suppressed) = bridge.log.allow(&format!("late/{client}")) {
                    tracing::info!(
                        client = %client, %source, id = identifier, verdict = ?decided.code, suppressed,
                        "the agent decided a verification after agent_timeout_ms; a resend gets this verdict from the duplicate cache"
                    );
                }
            }
            None => lock(&bridge.dedup).forget(&key),
        }
    });
}

/// Returns the reply to send at once for a response from the agent, if
/// any: for a verdict that needs no delay, or for a late response, whose
/// client waited longer than a failure delay already.
fn verdict_reply(response: &Response) -> Option<CachedReply> {
    match response {
        Response::Verdict {
            result: VerifyResult::Accepted,
            ..
        }
        | Response::DelayedVerdict {
            result: VerifyResult::Accepted,
            ..
        } => Some(plain(Code::AccessAccept)),
        Response::Verdict { .. }
        | Response::DelayedVerdict { .. }
        | Response::Error {
            kind: ErrorKind::Invalid,
            ..
        } => Some(plain(Code::AccessReject)),
        _ => None,
    }
}

/// Looks the request up in the duplicate cache, and warns when the cache
/// had to forget requests before `duplicate_seconds` ended.
fn check_duplicate(bridge: &Bridge, key: &RequestKey<'_>) -> Seen {
    let now = Instant::now();
    let mut cache = lock(&bridge.dedup);
    let seen = cache.check(key, now);
    let Some(early) = cache.take_early_evictions(now) else {
        return seen;
    };
    let (window, max_entries) = (cache.window(), cache.max_entries());
    drop(cache);
    bridge.log.warn(
        "duplicate-cache-full",
        &format!(
            "duplicate cache full: requests forgotten before duplicate_seconds ({} s) ended since the last warning: {}, \
             the earliest {} ms after it arrived, the most of them, {}, from client {}. A resend of such a \
             request reaches the agent again, which rejects a code it has accepted as reused. Raise [server] \
             duplicate_max_requests ({max_entries}) above requests per second times duplicate_seconds",
            window.as_secs(),
            early.count,
            early.youngest_ms,
            early.client_count,
            early.client
        ),
    );
    seen
}

/// Decides an Access-Request. When the agent has the verification but
/// did not respond in time, `late` receives its response to come.
async fn decide(
    bridge: &Bridge,
    client: &Client,
    packet: &Packet<'_>,
    nas_identifier: Option<String>,
    late: &mut Option<oneshot::Receiver<Response>>,
) -> Result<CachedReply, Drop> {
    if uses_other_method(packet) {
        if let Some(suppressed) = bridge.log.allow(&format!("auth/{}/method", client.name)) {
            tracing::info!(target: "freeauth::auth", client = %client.name, suppressed, "rejected: CHAP, MS-CHAP or EAP request; only PAP is supported");
        }
        return Ok(CachedReply {
            code: Code::AccessReject,
            message: Some("Only PAP is supported by this server."),
        });
    }
    if packet.count(attr::USER_NAME) != 1 || packet.count(attr::USER_PASSWORD) != 1 {
        return reject_invalid(bridge, client, "not exactly one User-Name and one User-Password").await;
    }
    let name = packet
        .find(attr::USER_NAME)
        .map(|a| String::from_utf8_lossy(a.value).into_owned())
        .unwrap_or_default();
    let hidden = packet.find(attr::USER_PASSWORD).map(|a| a.value).unwrap_or_default();
    let Some(code) = unhide_password(hidden, &client.secret, &packet.authenticator) else {
        return reject_invalid(
            bridge,
            client,
            "User-Password length is not a multiple of 16 from 16 to 128",
        )
        .await;
    };
    let account = match account_name(client, &name) {
        Ok(account) => account,
        Err(reason) => {
            // Debug formatting escapes control characters, so a crafted
            // name cannot forge log lines.
            if let Some(suppressed) = bridge.log.allow(&format!("auth/{}/realm", client.name)) {
                tracing::warn!(target: "freeauth::auth", client = %client.name, user = ?name, reason, suppressed, "rejected by realm policy");
            }
            hold_back(bridge, client, bridge.realm_reject_delay).await?;
            return Ok(plain(Code::AccessReject));
        }
    };
    let origin = Origin::Radius {
        client: client.name.clone(),
        nas_identifier,
        nas_ip: packet.find(attr::NAS_IP_ADDRESS).and_then(|a| ipv4_text(a.value)),
        calling_station: packet
            .find(attr::CALLING_STATION_ID)
            .map(|a| String::from_utf8_lossy(a.value).into_owned()),
        caller_delays: Some(true),
    };
    let code = SecretString::new(String::from_utf8_lossy(&code).into_owned());
    let request = Request::Verify {
        user: account,
        code,
        origin,
    };
    let response = match bridge.link.call(request).await {
        Called::Answered(response) => response,
        Called::Unanswered => return Err(Drop::AgentUnavailable),
        Called::Busy => return Err(Drop::AgentBusy),
        Called::Late(receiver) => {
            *late = Some(receiver);
            return Err(Drop::AgentUnavailable);
        }
    };
    match response {
        Response::DelayedVerdict { result, delay_ms } if result != VerifyResult::Accepted => {
            let delay_ms = delay_ms.min(MAX_HOLD_BACK_MS);
            hold_back(bridge, client, std::time::Duration::from_millis(delay_ms)).await?;
            Ok(plain(Code::AccessReject))
        }
        // A name no account can have (empty, white space at an end, control
        // characters): the user's fault, so a reject, not a failover. It
        // waits as long as a realm rejection, which looks like a wrong code.
        Response::Error {
            kind: ErrorKind::Invalid,
            message,
        } => {
            if let Some(suppressed) = bridge.log.allow(&format!("auth/{}/name", client.name)) {
                tracing::info!(target: "freeauth::auth", client = %client.name, user = ?name, reason = ?message, suppressed, "rejected: invalid user name");
            }
            hold_back(bridge, client, bridge.realm_reject_delay).await?;
            Ok(plain(Code::AccessReject))
        }
        Response::Error { message, .. } => {
            // Forbidden (this bridge's user is missing from the agent's
            // bridge_users) or an agent failure: not the user's fault, so no
            // reply, and the client fails over instead of rejecting everyone.
            bridge.log.warn(
                "agent-error",
                &format!(
                    "agent refused a verification for client {}: {message}; sending no reply",
                    client.name
                ),
            );
            Err(Drop::AgentUnavailable)
        }
        other => verdict_reply(&other).ok_or(Drop::AgentUnavailable),
    }
}

/// Rejects an Access-Request that passed the Message-Authenticator check
/// but lacks the attributes a decision needs, or has a User-Password of
/// invalid length, for which RFC 2865 section 5 expects an Access-Reject.
/// A silent drop would make the client retransmit and then fail over, as
/// if this server were down. The rejection waits as long as a realm
/// rejection.
async fn reject_invalid(bridge: &Bridge, client: &Client, reason: &'static str) -> Result<CachedReply, Drop> {
    if let Some(suppressed) = bridge.log.allow(&format!("auth/{}/invalid", client.name)) {
        tracing::warn!(target: "freeauth::auth", client = %client.name, reason, suppressed, "rejected: invalid Access-Request");
    }
    hold_back(bridge, client, bridge.realm_reject_delay).await?;
    Ok(plain(Code::AccessReject))
}

/// Longest delay before the bridge sends a held rejection: the largest
/// `max_failure_delay_ms` the agent accepts. A larger `delay_ms` would
/// keep a place for good.
const MAX_HOLD_BACK_MS: u64 = 600_000;

/// Waits `delay` before a rejection goes out, in one of the bridge's places
/// for delayed rejections. A client's flood of wrong codes can take its
/// share of the places, and its further rejections then get no reply, while
/// accepted codes still get theirs at once.
async fn hold_back(bridge: &Bridge, client: &Client, delay: std::time::Duration) -> Result<(), Drop> {
    let Some(_place) = bridge.delayed.take(&client.name) else {
        return Err(Drop::TooManyDelayed);
    };
    tokio::time::sleep(delay).await;
    Ok(())
}

/// Maps a RADIUS user name to the agent account under the client's realms.
/// `user@realm` needs the realm in the client's list; a bare name gets the
/// default realm, or stays bare when the client lists no realms.
pub fn account_name(client: &Client, name: &str) -> Result<String, &'static str> {
    match name.rsplit_once('@') {
        Some((user, realm)) if !user.is_empty() => {
            let realm = realm.to_lowercase();
            if client.realms.contains(&realm) {
                Ok(format!("{user}@{realm}"))
            } else {
                Err("realm not allowed for this client")
            }
        }
        Some(_) => Err("empty user part"),
        None => match (&client.default_realm, client.realms.is_empty()) {
            (Some(realm), _) => Ok(format!("{name}@{realm}")),
            (None, true) => Ok(name.to_owned()),
            (None, false) => Err("name without realm and no default_realm"),
        },
    }
}

/// Microsoft vendor types that carry MS-CHAP (RFC 2548): MS-CHAP-Response,
/// MS-CHAP-Challenge and MS-CHAP2-Response.
const MS_CHAP_TYPES: [u8; 3] = [1, 11, 25];

fn uses_other_method(packet: &Packet<'_>) -> bool {
    let microsoft = packet.all(attr::VENDOR_SPECIFIC).any(|a| {
        let vendor = a.value.get(..4).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        vendor == Some(VENDOR_MICROSOFT) && a.value.get(4).is_some_and(|kind| MS_CHAP_TYPES.contains(kind))
    });
    packet.find(attr::CHAP_PASSWORD).is_some() || packet.find(attr::EAP_MESSAGE).is_some() || microsoft
}

fn ipv4_text(value: &[u8]) -> Option<String> {
    let octets: [u8; 4] = value.try_into().ok()?;
    Some(std::net::Ipv4Addr::from(octets).to_string())
}

/// Builds a reply with Message-Authenticator first and Proxy-State copied in order.
/// Returns a reply to cache and send without a Reply-Message.
fn plain(code: Code) -> CachedReply {
    CachedReply { code, message: None }
}

fn reply(client: &Client, packet: &Packet<'_>, code: Code, message: Option<&str>) -> Vec<u8> {
    let mut builder = ReplyBuilder::new(code, packet.identifier);
    // Proxy-State must come back unchanged (RFC 2865, section 5.33), so the
    // Reply-Message gets only the room they leave, and is left out
    // without it. The message text is ASCII, so any cut is valid text.
    let proxy_states: usize = packet.all(attr::PROXY_STATE).map(|a| a.value.len() + 2).sum();
    if let Some(message) = message {
        let room = builder.room().saturating_sub(proxy_states);
        if room > 2 {
            let text = message.as_bytes();
            builder.add(attr::REPLY_MESSAGE, &text[..text.len().min(room - 2)]);
        }
    }
    for proxy_state in packet.all(attr::PROXY_STATE) {
        builder.add(attr::PROXY_STATE, proxy_state.value);
    }
    builder.finish(&packet.authenticator, &client.secret, true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::SharedSecret;
    use crate::config::Network;

    fn client(name: &str, address: &str, nas: Option<&str>, realms: &[&str], default: Option<&str>) -> Client {
        Client {
            name: name.into(),
            network: Network::parse(address).unwrap(),
            nas_identifier: nas.map(str::to_owned),
            secret: SharedSecret::new(b"secret-secret-secret".to_vec()),
            secret_file: None,
            realms: realms.iter().map(|r| (*r).to_owned()).collect(),
            default_realm: default.map(str::to_owned),
            message_authenticator: MessageAuthenticatorPolicy::Require,
        }
    }

    #[test]
    fn held_rejections_keep_half_for_others() {
        let held = HeldRejections::new(4);
        let first = held.take("vpn").unwrap();
        let _second = held.take("vpn").unwrap();
        assert!(held.take("vpn").is_none(), "vpn's half is taken");
        let _web = held.take("web").unwrap();
        assert!(held.take("web").is_none(), "web has taken as many as are free");
        let lab = held.take("lab");
        assert!(lab.is_some(), "a third client still finds a place");
        assert!(held.take("dev").is_none(), "every place is taken");
        drop(lab);
        drop(first);
        assert!(held.take("vpn").is_some(), "a place came back");

        // While 12 clients flood, one without a place finds one.
        let many = HeldRejections::new(8192);
        let mut places = Vec::new();
        for flooder in 0..12 {
            let name = format!("flood{flooder}");
            while let Some(place) = many.take(&name) {
                places.push(place);
            }
        }
        assert!(many.take("quiet").is_some(), "{} places held", places.len());

        let one = HeldRejections::new(1);
        let only = one.take("vpn");
        assert!(only.is_some(), "one place is the whole share");
        assert!(one.take("web").is_none());
    }

    #[test]
    fn realms_map_names_to_accounts() {
        let com = client("com", "192.0.2.1", None, &["example.com"], Some("example.com"));
        assert_eq!(account_name(&com, "alice@Example.COM"), Ok("alice@example.com".into()));
        assert_eq!(account_name(&com, "alice"), Ok("alice@example.com".into()));
        assert!(account_name(&com, "alice@example.net").is_err());
        assert!(account_name(&com, "@example.com").is_err());
        let bare = client("bare", "192.0.2.1", None, &[], None);
        assert_eq!(account_name(&bare, "root"), Ok("root".into()));
        assert!(account_name(&bare, "root@example.com").is_err());
        let strict = client("strict", "192.0.2.1", None, &["example.com"], None);
        assert!(account_name(&strict, "alice").is_err());
    }

    /// A 4096-byte request whose Proxy-States leave less room than the
    /// reply's Reply-Message needs: they come back whole, and the message
    /// is cut.
    #[test]
    fn full_request_keeps_proxy_states_whole() {
        let mut bytes = vec![1, 9, 0, 0];
        bytes.extend_from_slice(&[0x11; 16]);
        bytes.extend_from_slice(&[attr::MESSAGE_AUTHENTICATOR, 18]);
        bytes.extend_from_slice(&[0; 16]);
        bytes.extend_from_slice(&[attr::CHAP_PASSWORD, 19]);
        bytes.extend_from_slice(&[7; 17]);
        let mut states = Vec::new();
        let mut fill = 0u8;
        while bytes.len() < 4096 {
            let length = (4096 - bytes.len() - 2).min(253);
            fill = fill.wrapping_add(1);
            let value = vec![fill; length];
            bytes.push(attr::PROXY_STATE);
            bytes.push(u8::try_from(length + 2).unwrap());
            bytes.extend_from_slice(&value);
            states.push(value);
        }
        let length = u16::try_from(bytes.len()).unwrap().to_be_bytes();
        bytes[2..4].copy_from_slice(&length);
        let request = Packet::parse(&bytes).unwrap();
        let com = client("com", "192.0.2.1", None, &[], None);

        let reply = reply(
            &com,
            &request,
            Code::AccessReject,
            Some("Only PAP is supported by this server."),
        );
        let parsed = Packet::parse(&reply).unwrap();
        let copied: Vec<&[u8]> = parsed.all(attr::PROXY_STATE).map(|a| a.value).collect();
        assert_eq!(copied, states.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert!(reply.len() <= 4096);
        let message = parsed.find(attr::REPLY_MESSAGE).map_or(0, |a| a.value.len());
        assert!(
            message < "Only PAP is supported by this server.".len(),
            "the message was cut"
        );
    }

    #[test]
    fn clients_on_one_address_split_by_nas_identifier() {
        let clients = vec![
            client("vpn", "192.0.2.1", Some("vpn1"), &[], None),
            client("web", "192.0.2.1", Some("web1"), &[], None),
            client("lan", "192.0.2.0/24", None, &[], None),
        ];
        let ip = "192.0.2.1".parse().unwrap();
        assert_eq!(find_client(&clients, ip, Some("web1")).unwrap().name, "web");
        assert_eq!(find_client(&clients, ip, Some("vpn1")).unwrap().name, "vpn");
        assert_eq!(find_client(&clients, ip, Some("other")).unwrap().name, "lan");
        assert_eq!(find_client(&clients, ip, None).unwrap().name, "lan");
        assert!(find_client(&clients, "198.51.100.1".parse().unwrap(), None).is_none());
    }
}
