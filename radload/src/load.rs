//! The load itself: a fixed number of Access-Requests in flight over one or
//! more UDP sockets, each request for a user that the scheduler picks, until
//! the duration or request count is reached.
//!
//! Everything runs on one thread. Each socket is a task with its own 256
//! RADIUS identifiers, handed out oldest-freed first so that an identifier
//! is reused as late as possible. A request ends with its first valid reply,
//! or after its timeout once every retransmission has been spent. Replies
//! that fail the authenticator checks are counted and ignored, so a forged or
//! stale datagram cannot end a request.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use freeauth_otp::{totp, Algorithm};
use freeauth_radius::codec::{SharedSecret, MAX_PACKET_LEN};
use tokio::net::UdpSocket;
use tokio::time::sleep_until;

use crate::packet::{access_request, check_reply, random_authenticator, Verdict};
use crate::schedule::Scheduler;
use crate::stats::Counters;
use crate::users::User;

/// TOTP time step in seconds; the users file's tokens all use it.
pub const PERIOD: u32 = 30;
/// TOTP code length.
pub const DIGITS: u8 = 6;
/// Identifiers per socket: the Identifier field is one byte.
pub const IDS_PER_SOCKET: usize = 256;

/// Settings of a run: server, secret, concurrency and limits.
pub struct Settings {
    pub server: SocketAddr,
    pub secret: SharedSecret,
    pub in_flight: usize,
    pub sockets: usize,
    /// Stop sending after this long; `None` leaves only `max_requests`.
    pub duration: Option<Duration>,
    pub max_requests: Option<u64>,
    pub timeout: Duration,
    /// Retransmissions of a request after a timeout (0: none).
    pub retries: u32,
    /// Print requests and accepts per second to standard error.
    pub progress: bool,
}

/// Counters and timing of a finished run.
pub struct Outcome {
    pub counters: Counters,
    /// From the first send until the later of the last valid reply and the
    /// end of sending, so trailing timeouts do not stretch it.
    pub elapsed: Duration,
    /// Time during which no user was free in the current step.
    pub user_limited: Duration,
}

/// State shared by the socket tasks.
struct Shared {
    scheduler: Scheduler,
    users: Rc<Vec<User>>,
    started: Instant,
    stop_at: Option<Instant>,
    max_requests: Option<u64>,
    sent: u64,
    accepts: u64,
    /// Set once sending has stopped, for `elapsed`.
    stopped_at: Option<Instant>,
    last_reply: Option<Instant>,
    limited_since: Option<Instant>,
    user_limited: Duration,
    first_error: Option<String>,
    errors: u64,
}

/// Result of picking the user of the next request.
enum Pick {
    User(usize),
    /// No user is free in this step; try again at the next one.
    NoUser,
    /// The duration or request count is reached.
    Done,
}

impl Shared {
    fn pick(&mut self, now: Instant, step: u64) -> Pick {
        let over_time = self.stop_at.is_some_and(|stop| now >= stop);
        let over_count = self.max_requests.is_some_and(|max| self.sent >= max);
        if over_time || over_count {
            self.stopped_at.get_or_insert(now);
            self.end_limited(now);
            return Pick::Done;
        }
        match self.scheduler.next(step) {
            Some(index) => {
                self.end_limited(now);
                self.sent += 1;
                Pick::User(index)
            }
            None => {
                self.limited_since.get_or_insert(now);
                Pick::NoUser
            }
        }
    }

    fn end_limited(&mut self, now: Instant) {
        if let Some(since) = self.limited_since.take() {
            self.user_limited += now.saturating_duration_since(since);
        }
    }

    fn is_done(&self, now: Instant) -> bool {
        self.stopped_at.is_some()
            || self.stop_at.is_some_and(|stop| now >= stop)
            || self.max_requests.is_some_and(|max| self.sent >= max)
    }

    fn note_error(&mut self, message: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            eprintln!("freeauth-radload: {message} (later errors are only counted)");
            self.first_error = Some(message);
        }
    }
}

/// One request in flight on a socket.
struct Slot {
    user: usize,
    authenticator: [u8; 16],
    bytes: Vec<u8>,
    first_sent: Instant,
    retries_left: u32,
    /// Tells this request's deadlines from those of an earlier request that
    /// used the same identifier.
    generation: u64,
}

/// Unix time in seconds.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Returns the instant at which the next 30-second step begins.
pub fn next_step_start() -> Instant {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let period = Duration::from_secs(u64::from(PERIOD));
    let into_step = Duration::from_nanos((now.as_nanos() % period.as_nanos()) as u64);
    Instant::now() + (period - into_step)
}

/// Runs the load on a single-threaded runtime and returns its counters.
pub fn run(settings: &Settings, users: Vec<User>) -> Result<Outcome, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the runtime: {err}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run_sockets(settings, users))
}

async fn run_sockets(settings: &Settings, users: Vec<User>) -> Result<Outcome, String> {
    let users = Rc::new(users);
    let started = Instant::now();
    let shared = Rc::new(RefCell::new(Shared {
        scheduler: Scheduler::new(users.len()),
        users: Rc::clone(&users),
        started,
        stop_at: settings.duration.map(|duration| started + duration),
        max_requests: settings.max_requests,
        sent: 0,
        accepts: 0,
        stopped_at: None,
        last_reply: None,
        limited_since: None,
        user_limited: Duration::ZERO,
        first_error: None,
        errors: 0,
    }));
    let secret = Rc::new(settings.secret.clone());

    let mut tasks = Vec::new();
    for index in 0..settings.sockets {
        let share = settings.in_flight / settings.sockets + usize::from(index < settings.in_flight % settings.sockets);
        let socket = open_socket(settings.server).await?;
        let worker = Worker {
            socket,
            limit: share.min(IDS_PER_SOCKET),
            timeout: settings.timeout,
            retries: settings.retries,
            secret: Rc::clone(&secret),
            shared: Rc::clone(&shared),
        };
        tasks.push(tokio::task::spawn_local(worker.run()));
    }
    let progress = settings
        .progress
        .then(|| tokio::task::spawn_local(report_progress(Rc::clone(&shared))));

    let mut counters = Counters::default();
    for task in tasks {
        let part = task.await.map_err(|err| format!("a socket task failed: {err}"))?;
        counters.merge(&part);
    }
    if let Some(progress) = progress {
        progress.abort();
    }

    let shared = shared.borrow();
    let end = match (shared.last_reply, shared.stopped_at) {
        (Some(reply), Some(stop)) => reply.max(stop),
        (Some(reply), None) => reply,
        (None, Some(stop)) => stop,
        (None, None) => Instant::now(),
    };
    counters.socket_errors = shared.errors;
    Ok(Outcome {
        counters,
        elapsed: end.saturating_duration_since(shared.started),
        user_limited: shared.user_limited,
    })
}

async fn open_socket(server: SocketAddr) -> Result<UdpSocket, String> {
    let local: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|err| format!("cannot open a UDP socket: {err}"))?;
    socket
        .connect(server)
        .await
        .map_err(|err| format!("cannot connect a UDP socket to {server}: {err}"))?;
    Ok(socket)
}

async fn report_progress(shared: Rc<RefCell<Shared>>) {
    let mut previous = (0u64, 0u64);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let (sent, accepts, elapsed) = {
            let shared = shared.borrow();
            (shared.sent, shared.accepts, shared.started.elapsed())
        };
        eprintln!(
            "{:>6.1} s  {:>8} requests/s  {:>8} accepts/s",
            elapsed.as_secs_f64(),
            sent - previous.0,
            accepts - previous.1
        );
        previous = (sent, accepts);
    }
}

/// One socket with its identifiers and requests in flight.
struct Worker {
    socket: UdpSocket,
    limit: usize,
    timeout: Duration,
    retries: u32,
    secret: Rc<SharedSecret>,
    shared: Rc<RefCell<Shared>>,
}

/// The per-socket bookkeeping of [`Worker::run`].
struct Flight {
    slots: Vec<Option<Slot>>,
    free: VecDeque<u8>,
    /// Deadlines in the order they were set; all use the same timeout, so
    /// the front is always the earliest.
    deadlines: VecDeque<(Instant, u8, u64)>,
    active: usize,
    generation: u64,
    counters: Counters,
}

impl Worker {
    async fn run(self) -> Counters {
        let mut flight = Flight {
            slots: (0..IDS_PER_SOCKET).map(|_| None).collect(),
            free: (0..=u8::MAX).collect(),
            deadlines: VecDeque::new(),
            active: 0,
            generation: 0,
            counters: Counters::default(),
        };
        let mut buffer = vec![0u8; MAX_PACKET_LEN + 1];
        loop {
            let now = Instant::now();
            self.expire(&mut flight, now).await;
            let mut wait_for_step = None;
            while flight.active < self.limit {
                // One reading of the clock gives both the step the scheduler
                // books and the code, so the two always agree.
                let unix_time = unix_now();
                let pick = self
                    .shared
                    .borrow_mut()
                    .pick(Instant::now(), unix_time / u64::from(PERIOD));
                match pick {
                    Pick::User(user) => self.send_new(&mut flight, user, unix_time).await,
                    Pick::NoUser => {
                        wait_for_step = Some(next_step_start());
                        break;
                    }
                    Pick::Done => break,
                }
            }
            let done = self.shared.borrow().is_done(Instant::now());
            if done && flight.active == 0 {
                return flight.counters;
            }

            let stop_at = if done { None } else { self.shared.borrow().stop_at };
            let wake = [flight.deadlines.front().map(|d| d.0), wait_for_step, stop_at]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + self.timeout);
            tokio::select! {
                received = self.socket.recv(&mut buffer) => match received {
                    Ok(length) => self.receive(&mut flight, &buffer[..length]),
                    // A connected UDP socket reports an ICMP port unreachable
                    // here; the request it concerns then times out.
                    Err(err) => self.shared.borrow_mut().note_error(format!("receive failed: {err}")),
                },
                () = sleep_until(wake.into()) => {}
            }
        }
    }

    async fn send_new(&self, flight: &mut Flight, user: usize, unix_time: u64) {
        let Some(identifier) = flight.free.pop_front() else {
            self.shared.borrow_mut().scheduler.release(user);
            return;
        };
        let authenticator = match random_authenticator() {
            Ok(authenticator) => authenticator,
            Err(message) => {
                flight.free.push_front(identifier);
                let mut shared = self.shared.borrow_mut();
                shared.scheduler.release(user);
                shared.note_error(message);
                return;
            }
        };
        let request = {
            let shared = self.shared.borrow();
            let account = &shared.users[user];
            let code = totp(&account.secret, unix_time, PERIOD, DIGITS, Algorithm::Sha1);
            access_request(
                identifier,
                authenticator,
                account.name.as_bytes(),
                code.as_bytes(),
                &self.secret,
            )
        };
        let now = Instant::now();
        flight.generation += 1;
        flight
            .deadlines
            .push_back((now + self.timeout, identifier, flight.generation));
        flight.active += 1;
        flight.counters.requests += 1;
        if let Err(err) = self.socket.send(&request.bytes).await {
            // Kept in flight: it times out like a lost datagram, which also
            // paces the retries when the server is unreachable.
            self.shared.borrow_mut().note_error(format!("send failed: {err}"));
        }
        flight.slots[usize::from(identifier)] = Some(Slot {
            user,
            authenticator: request.authenticator,
            bytes: request.bytes,
            first_sent: now,
            retries_left: self.retries,
            generation: flight.generation,
        });
    }

    /// Retransmits or gives up on every request whose deadline has passed.
    async fn expire(&self, flight: &mut Flight, now: Instant) {
        while let Some(&(deadline, identifier, generation)) = flight.deadlines.front() {
            if deadline > now {
                break;
            }
            flight.deadlines.pop_front();
            let index = usize::from(identifier);
            let Some(slot) = flight.slots[index]
                .as_mut()
                .filter(|slot| slot.generation == generation)
            else {
                continue;
            };
            if slot.retries_left > 0 {
                slot.retries_left -= 1;
                flight.counters.retransmissions += 1;
                flight.deadlines.push_back((now + self.timeout, identifier, generation));
                if let Err(err) = self.socket.send(&slot.bytes).await {
                    self.shared.borrow_mut().note_error(format!("send failed: {err}"));
                }
                continue;
            }
            flight.counters.timeouts += 1;
            self.finish(flight, identifier);
        }
    }

    fn receive(&self, flight: &mut Flight, datagram: &[u8]) {
        let Some(&identifier) = datagram.get(1) else {
            flight.counters.invalid += 1;
            return;
        };
        let Some(slot) = flight.slots[usize::from(identifier)].as_ref() else {
            flight.counters.unmatched += 1;
            return;
        };
        let verdict = check_reply(datagram, &slot.authenticator, &self.secret);
        let now = Instant::now();
        match verdict {
            Verdict::Invalid => {
                flight.counters.invalid += 1;
                return;
            }
            Verdict::Accept => {
                flight.counters.accepts += 1;
                self.shared.borrow_mut().accepts += 1;
            }
            Verdict::Reject => flight.counters.rejects += 1,
            Verdict::Challenge => flight.counters.challenges += 1,
        }
        flight
            .counters
            .latency
            .record(now.saturating_duration_since(slot.first_sent));
        self.shared.borrow_mut().last_reply = Some(now);
        self.finish(flight, identifier);
    }

    /// Frees the identifier and the user of a finished request.
    fn finish(&self, flight: &mut Flight, identifier: u8) {
        if let Some(slot) = flight.slots[usize::from(identifier)].take() {
            self.shared.borrow_mut().scheduler.release(slot.user);
            flight.free.push_back(identifier);
            flight.active -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::HashMap;
    use std::net::UdpSocket as StdUdpSocket;
    use std::sync::{Arc, Mutex};

    use freeauth_otp::Secret;
    use freeauth_radius::codec::{attr, unhide_password, verify_message_authenticator, Code, Packet, ReplyBuilder};

    use super::*;

    const SECRET: &[u8] = b"unit-test-secret";

    /// Requests the test server received.
    #[derive(Default)]
    struct Seen {
        /// Requests per user and time step; a one-use server rejects the second.
        per_step: HashMap<(String, u64), u32>,
        bad_message_authenticator: u32,
    }

    /// Starts a RADIUS server on a loopback port that accepts each user's
    /// current code once per step, never replies to `silent`, and sends
    /// `forged` a forged reply before the real one.
    fn start_server(users: &[(String, Vec<u8>)], silent: &str, forged: &str) -> (SocketAddr, Arc<Mutex<Seen>>) {
        let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        let secrets: HashMap<String, Secret> = users
            .iter()
            .map(|(name, secret)| (name.clone(), Secret::new(secret.clone())))
            .collect();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = Arc::clone(&seen);
        let (silent, forged) = (silent.to_owned(), forged.to_owned());
        std::thread::spawn(move || {
            let secret = SharedSecret::new(SECRET.to_vec());
            let mut buffer = [0u8; 4096];
            while let Ok((length, source)) = socket.recv_from(&mut buffer) {
                let packet = Packet::parse(&buffer[..length]).unwrap();
                let mut seen = record.lock().unwrap();
                if verify_message_authenticator(&packet, &secret) != Some(true) {
                    seen.bad_message_authenticator += 1;
                    continue;
                }
                let name = String::from_utf8(packet.find(attr::USER_NAME).unwrap().value.to_vec()).unwrap();
                let hidden = packet.find(attr::USER_PASSWORD).unwrap().value;
                let code = unhide_password(hidden, &secret, &packet.authenticator).unwrap();
                let now = unix_now();
                let step = now / u64::from(PERIOD);
                let uses = seen.per_step.entry((name.clone(), step)).or_insert(0);
                *uses += 1;
                if name == silent {
                    continue;
                }
                // The previous step's code counts too, in case the step
                // changed between the client's send and this check.
                let matches = [now, now.saturating_sub(u64::from(PERIOD))].iter().any(|time| {
                    totp(&secrets[&name], *time, PERIOD, DIGITS, Algorithm::Sha1).as_bytes() == code.as_slice()
                });
                let accepted = *uses == 1 && matches;
                let code = if accepted {
                    Code::AccessAccept
                } else {
                    Code::AccessReject
                };
                if name == forged {
                    let fake = ReplyBuilder::new(Code::AccessAccept, packet.identifier).finish(
                        &packet.authenticator,
                        &SharedSecret::new(b"wrong".to_vec()),
                        true,
                    );
                    socket.send_to(&fake, source).unwrap();
                }
                let reply = ReplyBuilder::new(code, packet.identifier).finish(&packet.authenticator, &secret, true);
                socket.send_to(&reply, source).unwrap();
            }
        });
        (address, seen)
    }

    fn users(count: usize) -> Vec<(String, Vec<u8>)> {
        (0..count)
            .map(|i| (format!("user{i}"), format!("secret-of-user-{i:04}").into_bytes()))
            .collect()
    }

    fn to_users(list: &[(String, Vec<u8>)]) -> Vec<User> {
        list.iter()
            .map(|(name, secret)| User {
                name: name.clone(),
                secret: Secret::new(secret.clone()),
            })
            .collect()
    }

    fn settings(server: SocketAddr, in_flight: usize, requests: u64) -> Settings {
        Settings {
            server,
            secret: SharedSecret::new(SECRET.to_vec()),
            in_flight,
            sockets: 2,
            duration: Some(Duration::from_secs(20)),
            max_requests: Some(requests),
            timeout: Duration::from_millis(300),
            retries: 0,
            progress: false,
        }
    }

    #[test]
    fn run_counts_accepts_timeouts_and_forgeries() {
        let list = users(50);
        let (server, seen) = start_server(&list, "user7", "user9");
        let outcome = run(&settings(server, 8, 40), to_users(&list)).unwrap();
        let counters = &outcome.counters;

        assert_eq!(counters.requests, 40);
        assert_eq!(counters.timeouts, 1, "user7 is never answered");
        assert_eq!(counters.invalid, 1, "user9 gets one forged reply");
        assert_eq!(counters.accepts, 39, "{counters:?}");
        assert_eq!(counters.rejects, 0);
        assert_eq!(counters.latency.count(), 39);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.bad_message_authenticator, 0);
        assert!(
            seen.per_step.values().all(|uses| *uses == 1),
            "a user was sent twice in one step"
        );
    }

    #[test]
    fn run_stops_at_users_in_one_step() {
        let list = users(5);
        let (server, seen) = start_server(&list, "", "");
        let mut settings = settings(server, 2, 1000);
        // Long enough to show the wait for users, short enough to usually
        // stay in one step; a step change only adds a second round.
        settings.duration = Some(Duration::from_millis(700));
        let outcome = run(&settings, to_users(&list)).unwrap();

        assert!(
            outcome.counters.requests == 5 || outcome.counters.requests == 10,
            "{:?}",
            outcome.counters
        );
        assert_eq!(outcome.counters.rejects, 0);
        assert!(outcome.user_limited > Duration::ZERO);
        assert!(seen.lock().unwrap().per_step.values().all(|uses| *uses == 1));
    }

    #[test]
    fn retransmission_reuses_the_request() {
        let list = users(3);
        let (server, seen) = start_server(&list, "user0", "");
        let mut settings = settings(server, 1, 1);
        settings.retries = 2;
        settings.timeout = Duration::from_millis(100);
        let outcome = run(&settings, to_users(&list)).unwrap();

        assert_eq!(outcome.counters.requests, 1);
        assert_eq!(outcome.counters.retransmissions, 2);
        assert_eq!(outcome.counters.timeouts, 1);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.per_step.values().sum::<u32>(), 3, "one request sent three times");
    }
}
