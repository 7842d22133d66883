//! Duplicate detection (RFC 5080 section 2.2.2): a retransmission, meaning
//! the same client, source address and port, identifier and Request
//! Authenticator, gets the reply already sent, and the agent is not asked
//! again. So a retransmitted accepted code is not turned into a reject by
//! the one-use rule.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Identifies one request of one client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub client: String,
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

enum Entry {
    InFlight,
    Answered(Vec<u8>),
}

/// Most requests remembered at once; the oldest are forgotten first.
/// NOTE: at a sustained rate above MAX_ENTRIES / duplicate_seconds (3,333
/// requests/s with the default 30 s), entries leave before the window ends,
/// and a late retransmission then reaches the agent and is rejected as a
/// reused code. The cap bounds memory (about 0.6 KiB an entry).
const MAX_ENTRIES: usize = 100_000;

/// Recent requests and their replies.
pub struct Cache {
    window: Duration,
    entries: HashMap<RequestKey, (Instant, Entry)>,
    order: VecDeque<(Instant, RequestKey)>,
}

impl Cache {
    pub fn new(window: Duration) -> Cache {
        Cache {
            window,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Looks `key` up and marks a new request as in flight.
    pub fn check(&mut self, key: &RequestKey, now: Instant) -> Seen {
        self.expire(now);
        match self.entries.get(key) {
            Some((_, Entry::InFlight)) => Seen::InFlight,
            Some((_, Entry::Answered(reply))) => Seen::Answered(reply.clone()),
            None => {
                if self.entries.len() >= MAX_ENTRIES {
                    self.evict_oldest();
                }
                self.entries.insert(key.clone(), (now, Entry::InFlight));
                self.order.push_back((now, key.clone()));
                Seen::New
            }
        }
    }

    /// Stores the reply sent for `key`.
    pub fn finish(&mut self, key: &RequestKey, reply: Vec<u8>) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.1 = Entry::Answered(reply);
        }
    }

    /// Forgets `key`, so a retransmission is answered afresh (used when no
    /// reply was sent because the agent was unreachable).
    pub fn forget(&mut self, key: &RequestKey) {
        self.entries.remove(key);
    }

    fn expire(&mut self, now: Instant) {
        while let Some((time, _)) = self.order.front() {
            if now.saturating_duration_since(*time) < self.window {
                break;
            }
            if let Some((time, key)) = self.order.pop_front() {
                if self.entries.get(&key).is_some_and(|(inserted, _)| *inserted == time) {
                    self.entries.remove(&key);
                }
            }
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((time, key)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|(inserted, _)| *inserted == time) {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(identifier: u8) -> RequestKey {
        RequestKey {
            client: "vpn".into(),
            source: "127.0.0.1:4000"
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 4000))),
            identifier,
            authenticator: [1; 16],
        }
    }

    #[test]
    fn retransmission_gets_cached_reply() {
        let mut cache = Cache::new(Duration::from_secs(30));
        let now = Instant::now();
        assert_eq!(cache.check(&key(1), now), Seen::New);
        assert_eq!(cache.check(&key(1), now), Seen::InFlight);
        cache.finish(&key(1), vec![2, 1]);
        assert_eq!(cache.check(&key(1), now), Seen::Answered(vec![2, 1]));
        assert_eq!(cache.check(&key(2), now), Seen::New, "other identifier");
    }

    #[test]
    fn entries_expire_after_window() {
        let mut cache = Cache::new(Duration::from_secs(30));
        let now = Instant::now();
        cache.check(&key(1), now);
        cache.finish(&key(1), vec![2]);
        assert_eq!(cache.check(&key(1), now + Duration::from_secs(31)), Seen::New);
    }

    #[test]
    fn forgotten_request_is_new_again() {
        let mut cache = Cache::new(Duration::from_secs(30));
        let now = Instant::now();
        cache.check(&key(1), now);
        cache.forget(&key(1));
        assert_eq!(cache.check(&key(1), now), Seen::New);
    }
}
