//! Duplicate detection (RFC 5080 section 2.2.2): a retransmission, meaning
//! the same client, source address and port, identifier and Request
//! Authenticator, gets the reply already sent, and the agent is not asked
//! again. So a retransmitted accepted code is not turned into a reject by
//! the one-use rule.
//!
//! The cache keeps the code and message of each reply, not its bytes: a reply is a
//! function of the request and the decision, so a retransmission, which
//! repeats the request, gets the same bytes built again. An entry is then a
//! few dozen bytes whatever the size of the request's Proxy-State.
//!
//! When the cache is full, expired entries go first. Then a client that
//! accepts requests without a Message-Authenticator at the time, which
//! anyone can send in its name, loses its oldest entry: the one of them
//! with the most entries. Only when no such client has entries does the
//! client with the most entries lose its oldest. So a sender without a
//! secret cannot push out the requests of clients that require signed
//! ones, and a client that floods with its secret can bring the others
//! down to an equal share of the cache, not below.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::codec::Code;

/// Identifies one request of one client, as the caller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestKey<'a> {
    pub client: &'a str,
    pub source: SocketAddr,
    pub identifier: u8,
    pub authenticator: [u8; 16],
    /// The client accepts requests without a Message-Authenticator now
    /// (policy `danger_not_required`, or `auto` before its first signed
    /// request), so anyone can send requests in its name. Not part of the
    /// identity; it decides whose entries a full cache evicts first.
    pub spoofable: bool,
}

/// The code and Reply-Message of a reply sent, enough to build the reply
/// again for a retransmission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedReply {
    pub code: Code,
    pub message: Option<&'static str>,
}

/// State of a request in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: the caller must answer it and then call [`Cache::finish`].
    New,
    /// Still being answered: drop the retransmission.
    InFlight,
    /// Replied to: build this reply again and send it.
    Replied(CachedReply),
}

/// A [`RequestKey`] as stored: the client by number, 40 bytes in all, so
/// that the two copies of each key (map and queue) stay small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    client: u32,
    port: u16,
    identifier: u8,
    ip: IpAddr,
    authenticator: [u8; 16],
}

struct Entry {
    /// Tells this entry from an older one of the same key in a queue.
    serial: u64,
    /// Arrival in milliseconds since [`Cache::start`].
    at_ms: u64,
    /// `None` while the request is in flight.
    reply: Option<CachedReply>,
}

/// The queue of one client's entries, oldest first.
#[derive(Default)]
struct ClientQueue {
    /// Arrival in milliseconds, serial and key. A place whose entry was
    /// forgotten or replaced stays until it reaches the front.
    order: VecDeque<(u64, u64, Key)>,
    /// Entries of this client in the map.
    live: usize,
    /// [`RequestKey::spoofable`] of the client's latest request.
    spoofable: bool,
}

/// Default of `duplicate_max_requests`: the maximum number of requests
/// remembered at once. The cap bounds memory: 100,000 distinct requests
/// raised a release bridge's VmRSS by 16 MiB, and by 28 MiB once the full
/// cache had replaced them all, about 0.3 KiB per entry. Above `max_entries / window`
/// requests a second (3,333 with the defaults), entries leave before their
/// window ends, and [`Cache::take_early_evictions`] reports it.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// Recent requests and their replies.
pub struct Cache {
    window: Duration,
    max_entries: usize,
    /// Times are kept as milliseconds since this instant.
    start: Instant,
    next_serial: u64,
    /// Number of each client name seen. A name keeps its number until the
    /// process ends, so a reload cannot give two clients the same number.
    clients: HashMap<String, u32>,
    /// Client names by number.
    names: Vec<String>,
    entries: HashMap<Key, Entry>,
    /// One queue per client number.
    queues: Vec<ClientQueue>,
    /// The next queue whose expired entries a lookup removes, so that the
    /// entries of a client that went quiet leave too.
    sweep: usize,
    /// When a full cache last removed the expired entries of every queue.
    full_sweep_ms: u64,
    /// Entries that the cap removed before their window ended, since the
    /// last report of [`Cache::take_early_evictions`].
    early: EarlyEvictions,
    /// Time of that report in milliseconds, if there was one.
    reported_ms: Option<u64>,
}

/// Shortest time between two passes of a full cache over the expired
/// entries of every client. A pass costs time in proportion to the number
/// of clients, and a full cache runs one for each new request otherwise.
const FULL_SWEEP_INTERVAL_MS: u64 = 100;

/// Shortest time between two reports of early evictions, so that a cache
/// that stays full gives one log line per interval with the totals.
const EARLY_REPORT_INTERVAL_MS: u64 = 10_000;

/// Entries that a full cache forgot before their window ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EarlyEvictions {
    pub count: u64,
    /// Age of the youngest of them, in milliseconds.
    pub youngest_ms: u64,
    /// The client that lost the most of them.
    pub client: String,
    /// How many that client lost.
    pub client_count: u64,
    /// Early evictions per client number since the last report.
    per_client: HashMap<u32, u64>,
}

impl Cache {
    /// Returns an empty cache that remembers a request for `window` and at
    /// most `max_entries` requests at once.
    pub fn new(window: Duration, max_entries: usize) -> Cache {
        Cache {
            window,
            max_entries,
            start: Instant::now(),
            next_serial: 0,
            clients: HashMap::new(),
            names: Vec::new(),
            entries: HashMap::new(),
            queues: Vec::new(),
            sweep: 0,
            full_sweep_ms: 0,
            early: EarlyEvictions::default(),
            reported_ms: None,
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Returns the entries that the cap forgot before their window ended
    /// since the last report, at most once per 10 s. Returns `None` when
    /// there were none or the last report is more recent. A resend of such
    /// a request reaches the agent again.
    pub fn take_early_evictions(&mut self, now: Instant) -> Option<EarlyEvictions> {
        if self.early.count == 0 {
            return None;
        }
        let now = self.millis(now);
        let due = self
            .reported_ms
            .is_none_or(|reported| now.saturating_sub(reported) >= EARLY_REPORT_INTERVAL_MS);
        if !due {
            return None;
        }
        self.reported_ms = Some(now);
        let mut early = std::mem::take(&mut self.early);
        if let Some((&client, &count)) = early.per_client.iter().max_by_key(|(_, count)| **count) {
            early.client = self.names.get(client as usize).cloned().unwrap_or_default();
            early.client_count = count;
        }
        early.per_client.clear();
        Some(early)
    }

    /// Looks `key` up and marks a new request as in flight.
    pub fn check(&mut self, key: &RequestKey<'_>, now: Instant) -> Seen {
        let now = self.millis(now);
        let spoofable = key.spoofable;
        let key = self.stored_key(key);
        let client = key.client as usize;
        self.queues[client].spoofable = spoofable;
        self.expire(key.client as usize, now);
        self.expire_next(now);
        if let Some(entry) = self.entries.get(&key) {
            if self.expired(entry.at_ms, now) {
                // Its queue place has not reached the front yet.
                self.remove(&key);
            } else {
                return match entry.reply {
                    None => Seen::InFlight,
                    Some(reply) => Seen::Replied(reply),
                };
            }
        }
        if self.entries.len() >= self.max_entries && now.saturating_sub(self.full_sweep_ms) >= FULL_SWEEP_INTERVAL_MS {
            self.full_sweep_ms = now;
            for queue in 0..self.queues.len() {
                self.expire(queue, now);
            }
        }
        while self.entries.len() >= self.max_entries {
            let Some(victim) = self.eviction_victim(client) else {
                break;
            };
            if let Some(age) = self.evict_oldest(victim, now) {
                if age < self.window_ms() {
                    self.count_early(victim, age);
                }
            }
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.entries.insert(
            key,
            Entry {
                serial,
                at_ms: now,
                reply: None,
            },
        );
        let queue = &mut self.queues[key.client as usize];
        queue.order.push_back((now, serial, key));
        queue.live += 1;
        Seen::New
    }

    /// Stores the reply sent for `key`; returns whether the cache still had
    /// the request.
    pub fn finish(&mut self, key: &RequestKey<'_>, reply: CachedReply) -> bool {
        let Some(key) = self.known_key(key) else {
            return false;
        };
        match self.entries.get_mut(&key) {
            Some(entry) => {
                entry.reply = Some(reply);
                true
            }
            None => false,
        }
    }

    /// Forgets `key`, so a retransmission is answered afresh (used when no
    /// reply was sent because the agent was unreachable).
    pub fn forget(&mut self, key: &RequestKey<'_>) {
        let Some(key) = self.known_key(key) else {
            return;
        };
        self.remove(&key);
        // A forgotten entry leaves its place in the queue. Drop such places
        // once they could double the queue, so that it stays bounded too.
        let entries = &self.entries;
        let queue = &mut self.queues[key.client as usize];
        if queue.order.len() >= 2 * queue.live.max(16) {
            queue
                .order
                .retain(|(_, serial, key)| entries.get(key).is_some_and(|entry| entry.serial == *serial));
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    fn expired(&self, at_ms: u64, now: u64) -> bool {
        now.saturating_sub(at_ms) >= self.window_ms()
    }

    /// Returns the stored form of `key`, and numbers its client if new.
    fn stored_key(&mut self, key: &RequestKey<'_>) -> Key {
        let client = match self.clients.get(key.client) {
            Some(&number) => number,
            None => {
                let number = u32::try_from(self.clients.len()).unwrap_or(u32::MAX);
                self.clients.insert(key.client.to_owned(), number);
                self.names.push(key.client.to_owned());
                self.queues.push(ClientQueue::default());
                number
            }
        };
        Cache::key_with(client, key)
    }

    /// Returns the stored form of `key`, or `None` for a client never seen.
    fn known_key(&self, key: &RequestKey<'_>) -> Option<Key> {
        let client = *self.clients.get(key.client)?;
        Some(Cache::key_with(client, key))
    }

    fn key_with(client: u32, key: &RequestKey<'_>) -> Key {
        Key {
            client,
            port: key.source.port(),
            identifier: key.identifier,
            ip: key.source.ip(),
            authenticator: key.authenticator,
        }
    }

    /// Removes the entry of `key`, if any; its queue place stays.
    fn remove(&mut self, key: &Key) {
        if self.entries.remove(key).is_some() {
            let queue = &mut self.queues[key.client as usize];
            queue.live = queue.live.saturating_sub(1);
        }
    }

    /// Removes the expired entries at the front of client `client`'s queue.
    fn expire(&mut self, client: usize, now: u64) {
        while let Some(&(time, _, _)) = self.queues.get(client).and_then(|queue| queue.order.front()) {
            if !self.expired(time, now) {
                break;
            }
            self.evict_oldest(client, now);
        }
    }

    /// Expires the queue of the next client in turn.
    fn expire_next(&mut self, now: u64) {
        if self.queues.is_empty() {
            return;
        }
        self.sweep = (self.sweep + 1) % self.queues.len();
        self.expire(self.sweep, now);
    }

    /// Returns the number of the client that loses an entry when the cache
    /// is full, for a new request of client `incoming`. That is the client
    /// with the most entries among the spoofable ones, or among all clients
    /// when no spoofable client has entries. `None` when `incoming` is
    /// spoofable and none of those has entries: the new entry then goes in
    /// without an eviction, one over the cap, and is the first to go later.
    fn eviction_victim(&self, incoming: usize) -> Option<usize> {
        let largest = |spoofable_only: bool| {
            self.queues
                .iter()
                .enumerate()
                .filter(|(_, queue)| queue.live > 0 && (queue.spoofable || !spoofable_only))
                .max_by_key(|(_, queue)| queue.live)
                .map(|(client, _)| client)
        };
        if let Some(victim) = largest(true) {
            return Some(victim);
        }
        if self.queues.get(incoming).is_some_and(|queue| queue.spoofable) {
            return None;
        }
        largest(false)
    }

    /// Removes the oldest queue place of `client` and its entry. Returns
    /// the entry's age in milliseconds when an entry was removed.
    fn evict_oldest(&mut self, client: usize, now: u64) -> Option<u64> {
        let queue = self.queues.get_mut(client)?;
        let (time, serial, key) = queue.order.pop_front()?;
        // A burst leaves a queue with room it no longer needs. Most of it
        // goes back, so that memory follows the entries, not the largest
        // burst of each client.
        if queue.order.capacity() > 64 && queue.order.len() < queue.order.capacity() / 4 {
            queue.order.shrink_to(queue.order.len() * 2);
        }
        // A key forgotten and then seen again has a newer entry, which its
        // own place in the queue removes later.
        if self.entries.get(&key).is_some_and(|entry| entry.serial == serial) {
            self.remove(&key);
            return Some(now.saturating_sub(time));
        }
        None
    }

    fn count_early(&mut self, client: usize, age: u64) {
        let early = &mut self.early;
        early.count += 1;
        early.youngest_ms = if early.count == 1 {
            age
        } else {
            early.youngest_ms.min(age)
        };
        let client = u32::try_from(client).unwrap_or(u32::MAX);
        *early.per_client.entry(client).or_insert(0) += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cached(code: u8) -> CachedReply {
        CachedReply {
            code: Code::Other(code),
            message: None,
        }
    }

    fn key(identifier: u8) -> RequestKey<'static> {
        RequestKey {
            client: "vpn",
            source: "127.0.0.1:4000"
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 4000))),
            identifier,
            authenticator: [1; 16],
            spoofable: false,
        }
    }

    #[test]
    fn retransmission_gets_cached_reply() {
        let mut cache = Cache::new(Duration::from_secs(30), DEFAULT_MAX_ENTRIES);
        let now = Instant::now();
        assert_eq!(cache.check(&key(1), now), Seen::New);
        assert_eq!(cache.check(&key(1), now), Seen::InFlight);
        cache.finish(&key(1), cached(2));
        assert_eq!(cache.check(&key(1), now), Seen::Replied(cached(2)));
        assert_eq!(cache.check(&key(2), now), Seen::New, "other identifier");
    }

    #[test]
    fn entries_expire_after_window() {
        let mut cache = Cache::new(Duration::from_secs(30), DEFAULT_MAX_ENTRIES);
        let now = Instant::now();
        cache.check(&key(1), now);
        cache.finish(&key(1), cached(2));
        assert_eq!(cache.check(&key(1), now + Duration::from_secs(31)), Seen::New);
    }

    #[test]
    fn forgotten_request_is_new_again() {
        let mut cache = Cache::new(Duration::from_secs(30), DEFAULT_MAX_ENTRIES);
        let now = Instant::now();
        cache.check(&key(1), now);
        cache.forget(&key(1));
        assert_eq!(cache.check(&key(1), now), Seen::New);
    }

    #[test]
    fn cache_separates_clients_on_one_address() {
        let mut cache = Cache::new(Duration::from_secs(30), DEFAULT_MAX_ENTRIES);
        let now = Instant::now();
        assert_eq!(cache.check(&key(1), now), Seen::New);
        cache.finish(&key(1), cached(2));
        let other = RequestKey {
            client: "web",
            ..key(1)
        };
        assert_eq!(cache.check(&other, now), Seen::New);
        let other_port = RequestKey {
            source: SocketAddr::from(([127, 0, 0, 1], 4001)),
            ..key(1)
        };
        assert_eq!(cache.check(&other_port, now), Seen::New);
        let other_authenticator = RequestKey {
            authenticator: [2; 16],
            ..key(1)
        };
        assert_eq!(cache.check(&other_authenticator, now), Seen::New);
        assert_eq!(cache.check(&key(1), now), Seen::Replied(cached(2)));
    }

    #[test]
    fn full_cache_evicts_the_oldest() {
        let mut cache = Cache::new(Duration::from_secs(30), 3);
        let now = Instant::now();
        for identifier in 1..=4 {
            assert_eq!(cache.check(&key(identifier), now), Seen::New);
            cache.finish(&key(identifier), cached(identifier));
        }
        assert_eq!(cache.entries.len(), 3);
        assert_eq!(cache.check(&key(4), now), Seen::Replied(cached(4)));
        assert_eq!(cache.check(&key(2), now), Seen::Replied(cached(2)));
        assert_eq!(cache.check(&key(1), now), Seen::New, "the oldest left");
    }

    #[test]
    fn full_cache_reports_early_evictions() {
        let mut cache = Cache::new(Duration::from_secs(30), 2);
        let start = Instant::now();
        cache.check(&key(1), start);
        cache.check(&key(2), start + Duration::from_secs(1));
        assert_eq!(cache.take_early_evictions(start), None, "nothing forgotten yet");
        cache.check(&key(3), start + Duration::from_secs(5));
        cache.check(&key(4), start + Duration::from_secs(8));
        let early = cache.take_early_evictions(start + Duration::from_secs(8));
        assert_eq!(early.as_ref().map(|early| early.count), Some(2));
        assert_eq!(
            early.map(|early| early.youngest_ms),
            Some(5_000),
            "key 1 left at 5 s, key 2 at 7 s"
        );
        assert_eq!(
            cache.take_early_evictions(start + Duration::from_secs(8)),
            None,
            "reported once"
        );
    }

    #[test]
    fn early_evictions_reported_every_ten_seconds() {
        let mut cache = Cache::new(Duration::from_secs(30), 1);
        let start = Instant::now();
        cache.check(&key(1), start);
        cache.check(&key(2), start);
        assert!(cache.take_early_evictions(start).is_some());
        cache.check(&key(3), start + Duration::from_secs(1));
        cache.check(&key(4), start + Duration::from_secs(2));
        assert_eq!(
            cache.take_early_evictions(start + Duration::from_secs(2)),
            None,
            "too soon"
        );
        let later = cache.take_early_evictions(start + Duration::from_secs(10));
        assert_eq!(later.map(|early| early.count), Some(2), "both kept for the next report");
    }

    #[test]
    fn expired_entries_are_not_early_evictions() {
        let mut cache = Cache::new(Duration::from_secs(30), 1);
        let start = Instant::now();
        cache.check(&key(1), start);
        cache.check(&key(2), start + Duration::from_secs(31));
        assert_eq!(cache.take_early_evictions(start + Duration::from_secs(31)), None);
        cache.check(&key(3), start + Duration::from_secs(32));
        let early = cache.take_early_evictions(start + Duration::from_secs(32));
        assert_eq!(early.map(|early| early.count), Some(1));
    }

    #[test]
    fn forgotten_entries_are_not_early_evictions() {
        let mut cache = Cache::new(Duration::from_secs(30), 1);
        let now = Instant::now();
        cache.check(&key(1), now);
        cache.forget(&key(1));
        cache.check(&key(2), now);
        assert_eq!(cache.take_early_evictions(now), None);
        // The queue place of key 1 goes first and removes nothing; then key
        // 2 is forgotten early.
        cache.check(&key(3), now);
        assert_eq!(cache.take_early_evictions(now).map(|early| early.count), Some(1));
    }

    #[test]
    fn cache_reinserted_key_keeps_full_window() {
        let mut cache = Cache::new(Duration::from_secs(30), DEFAULT_MAX_ENTRIES);
        let start = Instant::now();
        cache.check(&key(1), start);
        cache.forget(&key(1));
        let later = start + Duration::from_secs(20);
        assert_eq!(cache.check(&key(1), later), Seen::New);
        cache.finish(&key(1), cached(7));
        // The first insertion's queue place expires at 30 s. It must not
        // remove the second entry.
        let after_first_window = start + Duration::from_secs(31);
        assert_eq!(cache.check(&key(1), after_first_window), Seen::Replied(cached(7)));
        assert_eq!(cache.check(&key(1), later + Duration::from_secs(31)), Seen::New);
    }

    #[test]
    fn cache_ignores_unknown_client() {
        let mut cache = Cache::new(Duration::from_secs(30), DEFAULT_MAX_ENTRIES);
        let stranger = RequestKey {
            client: "never-seen",
            ..key(1)
        };
        cache.finish(&stranger, cached(1));
        cache.forget(&stranger);
        assert!(cache.entries.is_empty());
        assert!(cache.clients.is_empty());
    }

    fn key_of(client: &'static str, identifier: u8, authenticator: u8) -> RequestKey<'static> {
        RequestKey {
            client,
            authenticator: [authenticator; 16],
            ..key(identifier)
        }
    }

    #[test]
    fn flooding_client_evicts_only_itself() {
        let mut cache = Cache::new(Duration::from_secs(30), 10);
        let now = Instant::now();
        for identifier in 0..3 {
            assert_eq!(cache.check(&key_of("vpn", identifier, 0), now), Seen::New);
            cache.finish(&key_of("vpn", identifier, 0), cached(2));
        }
        for round in 0..1_000u32 {
            let flood = key_of(
                "web",
                u8::try_from(round % 256).unwrap_or(0),
                u8::try_from(round / 256).unwrap_or(0),
            );
            assert_eq!(cache.check(&flood, now), Seen::New);
            cache.finish(&flood, cached(3));
        }
        for identifier in 0..3 {
            assert_eq!(
                cache.check(&key_of("vpn", identifier, 0), now),
                Seen::Replied(cached(2)),
                "the other client's request {identifier} was forgotten"
            );
        }
        assert_eq!(cache.entries.len(), 10);
        let early = cache.take_early_evictions(now).unwrap();
        assert_eq!(early.count, 993);
        assert_eq!(early.client, "web");
        assert_eq!(early.client_count, 993);
    }

    #[test]
    fn largest_client_loses_its_oldest() {
        let mut cache = Cache::new(Duration::from_secs(30), 4);
        let now = Instant::now();
        cache.check(&key_of("vpn", 1, 0), now);
        cache.check(&key_of("web", 1, 0), now);
        cache.check(&key_of("web", 2, 0), now);
        cache.check(&key_of("web", 3, 0), now);
        // Full, and web has three of the four: web loses its oldest.
        cache.check(&key_of("vpn", 2, 0), now);
        let vpn_first = cache.known_key(&key_of("vpn", 1, 0)).unwrap();
        let web_first = cache.known_key(&key_of("web", 1, 0)).unwrap();
        assert!(cache.entries.contains_key(&vpn_first), "vpn's oldest stayed");
        assert!(!cache.entries.contains_key(&web_first), "web's oldest left");
        assert_eq!(cache.entries.len(), 4);
    }

    /// Numbers `n` as a distinct request of `client`.
    fn request_of(client: &'static str, n: u32, signed: bool) -> RequestKey<'static> {
        let spoofable = !signed;
        let bytes = n.to_be_bytes();
        RequestKey {
            client,
            identifier: bytes[3],
            authenticator: [
                bytes[0], bytes[1], bytes[2], bytes[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            spoofable,
            ..key(0)
        }
    }

    #[test]
    fn expired_entries_leave_before_fresh_ones() {
        let mut cache = Cache::new(Duration::from_secs(30), 1000);
        let start = Instant::now();
        for n in 0..500 {
            cache.check(&request_of("old", n, true), start);
            cache.finish(&request_of("old", n, true), cached(2));
        }
        let later = start + Duration::from_secs(20);
        for n in 0..500 {
            cache.check(&request_of("vpn", n, true), later);
            cache.finish(&request_of("vpn", n, true), cached(2));
        }
        // At 31 s the cache counts 1,000 entries, but "old"'s 500 expired.
        let expired = start + Duration::from_secs(31);
        assert_eq!(cache.check(&request_of("vpn", 10_000, true), expired), Seen::New);
        for n in 0..500 {
            assert_eq!(
                cache.check(&request_of("vpn", n, true), expired),
                Seen::Replied(cached(2)),
                "vpn's request {n}, 11 s old, was evicted"
            );
        }
        assert_eq!(cache.take_early_evictions(expired), None);
    }

    #[test]
    fn unsigned_flood_keeps_signed_entries() {
        let mut cache = Cache::new(Duration::from_secs(30), 1000);
        let now = Instant::now();
        for n in 0..600 {
            cache.check(&request_of("vpn", n, true), now);
            cache.finish(&request_of("vpn", n, true), cached(2));
        }
        for n in 0..5_000 {
            cache.check(&request_of("open", n, false), now);
        }
        for n in 0..600 {
            assert_eq!(
                cache.check(&request_of("vpn", n, true), now),
                Seen::Replied(cached(2)),
                "the unsigned flood evicted vpn's request {n}"
            );
        }
    }

    #[test]
    fn spoofable_mark_follows_latest_request() {
        let mut cache = Cache::new(Duration::from_secs(30), 1000);
        let start = Instant::now();
        // One request while vpn accepted unsigned ones, then it signs.
        cache.check(&request_of("vpn", 100_000, false), start);
        let later = start + Duration::from_secs(60);
        for n in 0..400 {
            cache.check(&request_of("vpn", n, true), later);
        }
        for n in 0..5_000 {
            cache.check(&request_of("web", n, true), later);
        }
        assert_eq!(cache.queues[0].live, 400, "vpn was treated as spoofable");
    }

    #[test]
    fn first_spoofable_request_evicts_no_signed_entry() {
        let mut cache = Cache::new(Duration::from_secs(30), 1000);
        let now = Instant::now();
        for n in 0..1000 {
            cache.check(&request_of("vpn", n, true), now);
        }
        cache.check(&request_of("open", 0, false), now);
        assert_eq!(
            cache.queues[0].live, 1000,
            "the first spoofable request evicted a signed entry"
        );
        assert_eq!(cache.entries.len(), 1001, "one over the cap");
        for n in 1..50 {
            cache.check(&request_of("open", n, false), now);
        }
        assert_eq!(
            cache.queues[0].live, 1000,
            "later spoofable requests evicted a signed entry"
        );
        assert_eq!(cache.entries.len(), 1001);
    }

    #[test]
    fn signed_flood_leaves_an_equal_share() {
        let mut cache = Cache::new(Duration::from_secs(30), 1000);
        let now = Instant::now();
        for n in 0..400 {
            cache.check(&request_of("vpn", n, true), now);
        }
        for n in 0..5_000 {
            cache.check(&request_of("web", n, true), now);
        }
        // vpn held less than half, so it lost nothing.
        assert_eq!(cache.queues[0].live, 400);
        assert_eq!(cache.queues[1].live, 600);
    }

    #[test]
    fn queue_room_follows_entries() {
        let max = 10_000;
        let mut cache = Cache::new(Duration::from_secs(30), max);
        let start = Instant::now();
        let names: Vec<&'static str> = (0..20).map(|i| &*Box::leak(format!("c{i}").into_boxed_str())).collect();
        // One burst per client, each after the previous one expired.
        for (i, name) in names.iter().enumerate() {
            let at = start + Duration::from_secs(31 * i as u64);
            for n in 0..max as u32 {
                cache.check(&request_of(name, n, true), at);
            }
        }
        let places: usize = cache.queues.iter().map(|queue| queue.order.capacity()).sum();
        assert!(
            places <= 4 * max,
            "room for {places} queue places at a cap of {max} entries"
        );
    }

    #[test]
    fn quiet_client_entries_expire() {
        let mut cache = Cache::new(Duration::from_secs(30), DEFAULT_MAX_ENTRIES);
        let start = Instant::now();
        cache.check(&key_of("vpn", 1, 0), start);
        cache.finish(&key_of("vpn", 1, 0), cached(2));
        for identifier in 0..4 {
            cache.check(&key_of("web", identifier, 0), start + Duration::from_secs(40));
        }
        assert!(
            !cache
                .entries
                .contains_key(&cache.known_key(&key_of("vpn", 1, 0)).unwrap()),
            "requests of other clients sweep a quiet client's queue"
        );
        assert_eq!(cache.queues[0].live, 0);
    }

    #[test]
    fn expired_entry_is_not_answered() {
        // Expired entries still in their queue (not swept yet) count as gone.
        let mut cache = Cache::new(Duration::from_secs(30), DEFAULT_MAX_ENTRIES);
        let start = Instant::now();
        cache.check(&key(1), start);
        cache.finish(&key(1), cached(2));
        let stored = cache.known_key(&key(1)).unwrap();
        // Put the entry behind a fresher place so that the front of the
        // queue has not expired yet.
        let fresh = cache.millis(start) + 31_000;
        cache.queues[0].order.push_front((fresh, u64::MAX, stored));
        assert_eq!(cache.check(&key(1), start + Duration::from_secs(31)), Seen::New);
    }

    #[test]
    fn stored_key_is_small() {
        assert!(std::mem::size_of::<Key>() <= 40, "{}", std::mem::size_of::<Key>());
    }

    #[test]
    fn forget_keeps_the_queue_bounded() {
        let mut cache = Cache::new(Duration::from_secs(30), 3);
        let now = Instant::now();
        for round in 0..10_000u32 {
            let identifier = u8::try_from(round % 200).unwrap_or(0);
            cache.check(&key(identifier), now);
            cache.forget(&key(identifier));
        }
        assert!(cache.entries.is_empty());
        let places = cache.queues[0].order.len();
        assert!(places <= 32, "{places} queue places");
    }
}
