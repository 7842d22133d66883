//! Duplicate detection (RFC 5080 section 2.2.2): a retransmission, meaning
//! the same client, source address and port, identifier and Request
//! Authenticator, gets the reply already sent, and the agent is not asked
//! again. So a retransmitted accepted code is not turned into a reject by
//! the one-use rule.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Identifies one request of one client, as the caller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestKey<'a> {
    pub client: &'a str,
    pub source: SocketAddr,
    pub identifier: u8,
    pub authenticator: [u8; 16],
}

/// State of a request in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: the caller must answer it and then call [`Cache::finish`].
    New,
    /// Still being answered: drop the retransmission.
    InFlight,
    /// Answered: send these bytes again.
    Answered(Vec<u8>),
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
    /// Tells this entry from an older one of the same key in `order`.
    serial: u64,
    /// `None` while the request is in flight.
    reply: Option<Box<[u8]>>,
}

/// Default of `duplicate_max_requests`: the maximum number of requests
/// remembered at once, the oldest forgotten first. The cap bounds memory,
/// at about 0.33 KiB per entry with its reply (`docs/benchmarks-radius.md`,
/// "Memory"). Above `max_entries / window` requests a second (3,333 with
/// the defaults), entries leave before their window ends, and
/// [`Cache::take_early_evictions`] reports it.
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
    entries: HashMap<Key, Entry>,
    /// Insertion time in milliseconds, serial and key, oldest first.
    order: VecDeque<(u64, u64, Key)>,
    /// Entries that the cap removed before their window ended, since the
    /// last report of [`Cache::take_early_evictions`].
    early: EarlyEvictions,
    /// Time of that report in milliseconds, if there was one.
    reported_ms: Option<u64>,
}

/// Shortest time between two reports of early evictions, so that a cache
/// that stays full gives one log line per interval with the totals.
const EARLY_REPORT_INTERVAL_MS: u64 = 10_000;

/// Entries that a full cache forgot before their window ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EarlyEvictions {
    pub count: u64,
    /// Age of the youngest of them, in milliseconds.
    pub youngest_ms: u64,
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
            entries: HashMap::new(),
            order: VecDeque::new(),
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
        Some(std::mem::take(&mut self.early))
    }

    /// Looks `key` up and marks a new request as in flight.
    pub fn check(&mut self, key: &RequestKey<'_>, now: Instant) -> Seen {
        let now = self.millis(now);
        self.expire(now);
        let key = self.stored_key(key);
        match self.entries.get(&key) {
            Some(Entry { reply: None, .. }) => Seen::InFlight,
            Some(Entry { reply: Some(reply), .. }) => Seen::Answered(reply.to_vec()),
            None => {
                // A queue place of a forgotten entry frees nothing, so
                // evict until one entry is gone.
                while self.entries.len() >= self.max_entries && !self.order.is_empty() {
                    if let Some(age) = self.evict_oldest(now) {
                        self.early.count += 1;
                        self.early.youngest_ms = if self.early.count == 1 {
                            age
                        } else {
                            self.early.youngest_ms.min(age)
                        };
                    }
                }
                let serial = self.next_serial;
                self.next_serial += 1;
                self.entries.insert(key, Entry { serial, reply: None });
                self.order.push_back((now, serial, key));
                Seen::New
            }
        }
    }

    /// Stores the reply sent for `key`.
    pub fn finish(&mut self, key: &RequestKey<'_>, reply: &[u8]) {
        let Some(key) = self.known_key(key) else {
            return;
        };
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.reply = Some(reply.into());
        }
    }

    /// Forgets `key`, so a retransmission is answered afresh (used when no
    /// reply was sent because the agent was unreachable).
    pub fn forget(&mut self, key: &RequestKey<'_>) {
        if let Some(key) = self.known_key(key) {
            self.entries.remove(&key);
        }
        // A forgotten entry leaves its place in the queue. Drop such places
        // once they could double the queue, so that it stays bounded too.
        if self.order.len() >= 2 * self.max_entries.max(1) {
            let entries = &self.entries;
            self.order
                .retain(|(_, serial, key)| entries.get(key).is_some_and(|entry| entry.serial == *serial));
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// Returns the stored form of `key`, and numbers its client if new.
    fn stored_key(&mut self, key: &RequestKey<'_>) -> Key {
        let client = match self.clients.get(key.client) {
            Some(&number) => number,
            None => {
                let number = u32::try_from(self.clients.len()).unwrap_or(u32::MAX);
                self.clients.insert(key.client.to_owned(), number);
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

    fn expire(&mut self, now: u64) {
        let window = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        while let Some(&(time, _, _)) = self.order.front() {
            if now.saturating_sub(time) < window {
                break;
            }
            self.evict_oldest(now);
        }
    }

    /// Removes the oldest queue place and its entry. Returns the entry's
    /// age in milliseconds when an entry was removed.
    fn evict_oldest(&mut self, now: u64) -> Option<u64> {
        let (time, serial, key) = self.order.pop_front()?;
        // A key forgotten and then seen again has a newer entry, which its
        // own place in the queue removes later.
        if self.entries.get(&key).is_some_and(|entry| entry.serial == serial) {
            self.entries.remove(&key);
            return Some(now.saturating_sub(time));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(identifier: u8) -> RequestKey<'static> {
        RequestKey {
            client: "vpn",
            source: "127.0.0.1:4000"
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 4000))),
            identifier,
            authenticator: [1; 16],
        }
    }

    #[test]
    fn retransmission_gets_cached_reply() {
        let mut cache = Cache::new(Duration::from_secs(30), DEFAULT_MAX_ENTRIES);
        let now = Instant::now();
        assert_eq!(cache.check(&key(1), now), Seen::New);
        assert_eq!(cache.check(&key(1), now), Seen::InFlight);
        cache.finish(&key(1), &[2, 1]);
        assert_eq!(cache.check(&key(1), now), Seen::Answered(vec![2, 1]));
        assert_eq!(cache.check(&key(2), now), Seen::New, "other identifier");
    }

    #[test]
    fn entries_expire_after_window() {
        let mut cache = Cache::new(Duration::from_secs(30), DEFAULT_MAX_ENTRIES);
        let now = Instant::now();
        cache.check(&key(1), now);
        cache.finish(&key(1), &[2]);
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
        cache.finish(&key(1), &[2]);
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
        assert_eq!(cache.check(&key(1), now), Seen::Answered(vec![2]));
    }

    #[test]
    fn full_cache_evicts_the_oldest() {
        let mut cache = Cache::new(Duration::from_secs(30), 3);
        let now = Instant::now();
        for identifier in 1..=4 {
            assert_eq!(cache.check(&key(identifier), now), Seen::New);
            cache.finish(&key(identifier), &[identifier]);
        }
        assert_eq!(cache.entries.len(), 3);
        assert_eq!(cache.check(&key(4), now), Seen::Answered(vec![4]));
        assert_eq!(cache.check(&key(2), now), Seen::Answered(vec![2]));
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
        assert_eq!(early.map(|early| early.count), Some(2));
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
        cache.finish(&key(1), &[7]);
        // The first insertion's queue place expires at 30 s. It must not
        // remove the second entry.
        let after_first_window = start + Duration::from_secs(31);
        assert_eq!(cache.check(&key(1), after_first_window), Seen::Answered(vec![7]));
        assert_eq!(cache.check(&key(1), later + Duration::from_secs(31)), Seen::New);
    }

    #[test]
    fn cache_ignores_unknown_client() {
        let mut cache = Cache::new(Duration::from_secs(30), DEFAULT_MAX_ENTRIES);
        let stranger = RequestKey {
            client: "never-seen",
            ..key(1)
        };
        cache.finish(&stranger, &[1]);
        cache.forget(&stranger);
        assert!(cache.entries.is_empty());
        assert!(cache.clients.is_empty());
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
        assert!(cache.order.len() <= 6, "{} queue places", cache.order.len());
    }
}
