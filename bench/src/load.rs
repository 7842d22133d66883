//! The verification load: K connections to the agent socket, each a closed
//! loop that keeps P requests in flight. Every request verifies the next
//! HOTP counter of a random user that has no other request in flight, so a
//! correct agent accepts every one of them.
//!
//! The users are split between the connections (user `i` belongs to
//! connection `i mod K`), so each connection tracks its users' counters and
//! in-flight state alone, without locks.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use freeauth_otp::{hotp, Algorithm};
use freeauth_proto::frame::{self, read_frame, write_frame};
use freeauth_proto::{
    Hello, HelloReply, Origin, Request, RequestFrame, Response, ResponseFrame, SecretString, VerifyResult,
    PROTOCOL_VERSION,
};

use crate::populate::{user_name, Tokens, DIGITS};

/// Time a socket read or write may block before the run fails.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Shape of the load.
#[derive(Clone, Copy, Debug)]
pub struct LoadSettings {
    pub connections: usize,
    pub in_flight: usize,
}

/// When the measured window starts and ends. Responses before it are warm-up.
/// After it, no new request is sent and the ones in flight are drained.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub measure_start: Instant,
    pub measure_end: Instant,
}

impl Schedule {
    pub fn starting_now(warmup: Duration, duration: Duration) -> Schedule {
        let measure_start = Instant::now() + warmup;
        Schedule {
            measure_start,
            measure_end: measure_start + duration,
        }
    }

    fn contains(&self, instant: Instant) -> bool {
        instant >= self.measure_start && instant < self.measure_end
    }
}

/// Counts and latencies that the clients measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Accepted responses received inside the measured window.
    pub accepted: u64,
    /// Send-to-receive time of each of those, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Every response other than an accepted verdict, warm-up and drain
    /// included, by description.
    pub errors: BTreeMap<String, u64>,
    /// Accepted responses over the whole run, warm-up and drain included.
    pub accepted_total: u64,
}

impl LoadResult {
    fn merge(&mut self, other: LoadResult) {
        self.accepted += other.accepted;
        self.latencies_ns.extend(other.latencies_ns);
        for (description, count) in other.errors {
            *self.errors.entry(description).or_default() += count;
        }
        self.accepted_total += other.accepted_total;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Runs the load until `schedule.measure_end`, then drains every connection.
/// Fails if any connection fails.
pub fn run(socket: &Path, tokens: &Tokens, settings: LoadSettings, schedule: Schedule) -> Result<LoadResult, String> {
    let outcomes: Vec<Result<LoadResult, String>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..settings.connections)
            .map(|index| {
                scope.spawn(move || {
                    let users = (index..tokens.len()).step_by(settings.connections).collect();
                    Connection::open(socket, tokens, users)
                        .and_then(|connection| connection.drive(settings.in_flight, schedule))
                        .map_err(|err| format!("connection {}: {err}", index + 1))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("a load thread panicked".to_owned()))
            })
            .collect()
    });
    let mut total = LoadResult::default();
    for outcome in outcomes {
        total.merge(outcome?);
    }
    Ok(total)
}

/// One client connection and the users it owns.
struct Connection<'t> {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    tokens: &'t Tokens,
    /// Global token index of each of this connection's users.
    users: Vec<usize>,
    /// Next HOTP counter of each user, by position in `users`.
    counters: Vec<u64>,
    /// Positions in `users` of the users with no request in flight.
    idle: Vec<usize>,
    /// User position and send time of each request in flight, by request id.
    pending: HashMap<u64, (usize, Instant)>,
    next_id: u64,
    origin: Origin,
    random: SplitMix64,
}

impl<'t> Connection<'t> {
    fn open(socket: &Path, tokens: &'t Tokens, users: Vec<usize>) -> Result<Connection<'t>, String> {
        let mut stream =
            UnixStream::connect(socket).map_err(|err| format!("cannot connect to {}: {err}", socket.display()))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|err| err.to_string())?;
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|err| err.to_string())?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            client: "freeauth-bench".to_owned(),
        };
        write_frame(&mut stream, &hello).map_err(|err| format!("hello failed: {err}"))?;
        match read_frame::<_, HelloReply>(&mut stream).map_err(|err| format!("hello failed: {err}"))? {
            HelloReply::Welcome { .. } => {}
            HelloReply::Unsupported { supported } => {
                return Err(format!(
                    "the agent speaks protocol version {supported}, not {PROTOCOL_VERSION}"
                ))
            }
        }
        let reader = BufReader::new(stream.try_clone().map_err(|err| err.to_string())?);
        let count = users.len();
        Ok(Connection {
            reader,
            writer: stream,
            tokens,
            users,
            counters: vec![0; count],
            idle: (0..count).collect(),
            pending: HashMap::new(),
            next_id: 1,
            origin: Origin::Pam {
                service: "bench".to_owned(),
                rhost: None,
                tty: None,
                ruser: None,
            },
            random: SplitMix64::from_os()?,
        })
    }

    /// Sends `in_flight` requests, then one new request per response until
    /// the window ends, then waits for the rest.
    fn drive(mut self, in_flight: usize, schedule: Schedule) -> Result<LoadResult, String> {
        let mut result = LoadResult::default();
        for _ in 0..in_flight {
            self.send_next()?;
        }
        while !self.pending.is_empty() {
            let frame: ResponseFrame =
                read_frame(&mut self.reader).map_err(|err| format!("reading a response failed: {err}"))?;
            let received = Instant::now();
            let (user, sent) = self.pending.remove(&frame.id).ok_or_else(|| {
                format!(
                    "the agent answered request id {}, which is not in flight: {:?}",
                    frame.id, frame.response
                )
            })?;
            self.idle.push(user);
            let accepted = matches!(
                frame.response,
                Response::Verdict {
                    result: VerifyResult::Accepted,
                    ..
                }
            );
            if accepted {
                result.accepted_total += 1;
                if schedule.contains(received) {
                    result.accepted += 1;
                    result.latencies_ns.push(nanos(received - sent));
                }
            } else {
                *result.errors.entry(describe(&frame.response)).or_default() += 1;
            }
            if received < schedule.measure_end {
                self.send_next()?;
            }
        }
        Ok(result)
    }

    /// Verifies the next counter of a random idle user.
    fn send_next(&mut self) -> Result<(), String> {
        if self.idle.is_empty() {
            return Err("every user of this connection has a request in flight; use more tokens".to_owned());
        }
        let slot = self.random.below(self.idle.len());
        let user = self.idle.swap_remove(slot);
        let index = self.users[user];
        let counter = self.counters[user];
        // The agent moves the token past this counter when it accepts the code.
        self.counters[user] += 1;
        let code = hotp(&self.tokens.secret(index), counter, DIGITS, Algorithm::Sha1);
        let id = self.next_id;
        self.next_id += 1;
        let request = RequestFrame {
            id,
            request: Request::Verify {
                user: user_name(index),
                code: SecretString::new(code.as_str()),
                origin: self.origin.clone(),
            },
        };
        let bytes = frame::encode(&request).map_err(|err| err.to_string())?;
        self.pending.insert(id, (user, Instant::now()));
        self.writer
            .write_all(&bytes)
            .map_err(|err| format!("sending request {id} failed: {err}"))
    }
}

/// Short description of an unexpected response, used to count errors.
fn describe(response: &Response) -> String {
    match response {
        Response::Verdict { result, .. } => format!("verdict {result:?}"),
        Response::Error { kind, message } => format!("error {kind:?}: {message}"),
        other => format!("unexpected response {other:?}"),
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a small, fast generator for
/// picking users. Not for secrets, which come from the operating system.
struct SplitMix64(u64);

impl SplitMix64 {
    fn from_os() -> Result<SplitMix64, String> {
        let mut seed = [0u8; 8];
        getrandom::getrandom(&mut seed).map_err(|err| format!("the random generator failed: {err}"))?;
        Ok(SplitMix64(u64::from_le_bytes(seed)))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a number in `0..bound`, the high half of a 128-bit product.
    /// The bias is below `bound / 2^64`.
    fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next()) * bound as u128) >> 64) as usize
    }
}
