//! Brute-force policy: how long a rejected caller waits, and when an account
//! or a source locks. The same rules apply to accounts that do not exist
//! (counted in memory), so a remote party cannot tell them apart by timing or
//! by lock. Sources (the remote host of a PAM login, the Calling-Station-Id
//! of a RADIUS request) are counted in memory too, over all accounts.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use crate::config::Lockout;

/// Consecutive failure count and lock of one account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub locked_until: Option<u64>,
}

impl Failures {
    /// Whether the lock is in force at `now`.
    pub fn is_locked(&self, now: u64) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }

    /// Returns the state at `now`: an expired lock starts a fresh count.
    fn expired_cleared(self, now: u64) -> Failures {
        match self.locked_until {
            Some(until) if until <= now => Failures::default(),
            _ => self,
        }
    }
}

/// Applies the configured [`Lockout`].
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub lockout: Lockout,
}

impl Policy {
    /// Returns the state to use at `now`. An expired lock starts a fresh
    /// count. A lock runs from `lock_seconds` before its end to its end.
    /// When `now` is before that start, because the clock was set back or
    /// `lock_seconds` lowered by a reload, the lock is not in force but the
    /// count stays: the next failure locks again, for `lock_seconds` from
    /// `now`. Otherwise a clock set back by a day would lock an account for
    /// a day. NOTE: the stored lock is not changed here, so unless a failure
    /// or an accepted code replaces it, it is in force again from its start.
    pub fn current(&self, failures: Failures, now: u64) -> Failures {
        let failures = failures.expired_cleared(now);
        let lock_seconds = self.lockout.lock_duration.as_secs();
        match failures.locked_until {
            Some(until) if now < until.saturating_sub(lock_seconds) => Failures {
                count: failures.count,
                locked_until: None,
            },
            _ => failures,
        }
    }

    /// The count and lock after one more failure at `now`.
    pub fn after_failure(&self, before: Failures, now: u64) -> Failures {
        let count = before.count.saturating_add(1);
        let threshold = self.lockout.threshold;
        let locked_until = if threshold > 0 && count >= threshold {
            Some(now.saturating_add(self.lockout.lock_duration.as_secs()))
        } else {
            before.locked_until
        };
        Failures { count, locked_until }
    }

    /// Returns a source's count and lock at `now`. An expired lock starts a
    /// fresh count, and one failure is forgiven every
    /// [`Policy::source_decay`] seconds.
    pub fn source_current(&self, source: SourceFailures, now: u64) -> Failures {
        self.source_decayed(source, now).failures
    }

    /// Returns a source's state after one more failure at `now`. A
    /// `source_threshold` of 0 never locks.
    pub fn after_source_failure(&self, source: SourceFailures, now: u64) -> SourceFailures {
        let current = self.source_decayed(source, now);
        let count = current.failures.count.saturating_add(1);
        let threshold = self.lockout.source_threshold;
        let locked_until = if threshold > 0 && count >= threshold {
            Some(now.saturating_add(self.lockout.lock_duration.as_secs()))
        } else {
            current.failures.locked_until
        };
        SourceFailures {
            failures: Failures { count, locked_until },
            updated: current.updated,
        }
    }

    /// Returns a source's state at `now`, with the forgiven failures taken
    /// off. `updated` moves on by whole decay periods only, so that the part
    /// of a period that has passed still counts towards the next one. With
    /// no failure left, the next period starts at `now`.
    fn source_decayed(&self, source: SourceFailures, now: u64) -> SourceFailures {
        let failures = self.current(source.failures, now);
        if failures.is_locked(now) {
            return SourceFailures { failures, updated: now };
        }
        let decay = self.source_decay();
        // After the clock was set back, decay starts again from `now`.
        let updated = source.updated.min(now);
        let forgiven = now.saturating_sub(updated) / decay;
        let count = failures
            .count
            .saturating_sub(u32::try_from(forgiven).unwrap_or(u32::MAX));
        let updated = if count == 0 {
            now
        } else {
            updated.saturating_add(forgiven.saturating_mul(decay))
        };
        SourceFailures {
            failures: Failures {
                count,
                locked_until: failures.locked_until,
            },
            updated,
        }
    }

    /// Seconds after which one failure of a source is forgiven:
    /// `lock_seconds` divided by `source_threshold`, at least 1. A source
    /// that spreads its failures evenly may so fail `source_threshold` times
    /// per `lock_seconds` without being locked. A burst locks it at
    /// `source_threshold` failures.
    pub fn source_decay(&self) -> u64 {
        let threshold = u64::from(self.lockout.source_threshold.max(1));
        (self.lockout.lock_duration.as_secs() / threshold).max(1)
    }

    /// Delay before the reply to a rejection, given the count after it:
    /// `failure_delay` doubled for each earlier consecutive failure, capped.
    pub fn delay(&self, count: u32) -> Duration {
        let doublings = count.saturating_sub(1).min(20);
        let delay = self.lockout.failure_delay.saturating_mul(1u32 << doublings);
        delay.min(self.lockout.max_failure_delay)
    }
}

/// Maximum length of a source address kept, in bytes. A longer one is cut.
const MAX_SOURCE_LEN: usize = 255;

/// Returns the form of a source address that failures are counted under:
/// lowercase, without a port, and for IPv6 its /64 prefix, because one host
/// usually has a whole /64. These IPv6 addresses are one host each and are
/// kept whole: an IPv4 address mapped into IPv6 or reached through NAT64
/// (64:ff9b::/96) becomes that IPv4 address, and link-local, loopback and
/// other addresses in ::/96 stay as they are. Returns `None` for a blank
/// address.
pub fn source_address(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    // A client picks a new source port for each connection, so a port kept
    // in the name would give every connection a count of its own.
    let without_port = address_without_port(raw).unwrap_or(raw);
    let bare = without_port
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(without_port);
    // A zone index (fe80::1%eth0) names a link; the address is link-local.
    let (address, zone) = match bare.split_once('%') {
        Some((address, zone)) => (address, Some(zone)),
        None => (bare, None),
    };
    let normalized = match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => ipv6_source(v6, zone),
        Err(_) => raw.to_lowercase(),
    };
    // Cut after lowercasing, which can lengthen a string.
    let end = normalized
        .char_indices()
        .map(|(start, c)| start + c.len_utf8())
        .take_while(|&end| end <= MAX_SOURCE_LEN)
        .last()
        .unwrap_or(0);
    Some(normalized[..end].to_owned())
}

/// Returns the address of `raw` when it is an IP address followed by a
/// port, as some NASes write Calling-Station-Id: `192.0.2.7:4500`,
/// `[2001:db8::1]:4500`, or `192.0.2.7[4500]` and `2001:db8::1[4500]`
/// (strongSwan's eap-radius plugin writes this form unless its
/// `station_id_with_port` is off). Returns `None` for anything else. An
/// IPv6 address with a port and without brackets is ambiguous, because its
/// last group may be the port or part of the address, so it stays whole.
fn address_without_port(raw: &str) -> Option<&str> {
    let (address, port) = if let Some(rest) = raw.strip_prefix('[') {
        rest.split_once("]:")?
    } else if let Some(rest) = raw.strip_suffix(']') {
        rest.rsplit_once('[')?
    } else {
        let (address, port) = raw.rsplit_once(':')?;
        address.parse::<std::net::Ipv4Addr>().ok()?;
        (address, port)
    };
    let is_port = (1..=5).contains(&port.len()) && port.bytes().all(|byte| byte.is_ascii_digit());
    let host = address.split_once('%').map_or(address, |(host, _zone)| host);
    (is_port && host.parse::<IpAddr>().is_ok()).then_some(address)
}

/// Returns the source form of an IPv6 address; see [`source_address`].
fn ipv6_source(v6: Ipv6Addr, zone: Option<&str>) -> String {
    const NAT64: u128 = 0x0064_ff9b_0000_0000_0000_0000_0000_0000;
    let bits = u128::from(v6);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return v4.to_string();
    }
    if bits >> 32 == NAT64 >> 32 {
        return std::net::Ipv4Addr::from(u32::try_from(bits & 0xffff_ffff).unwrap_or(0)).to_string();
    }
    let link_local = bits >> 118 == 0xfe80 >> 6;
    if link_local || bits >> 32 == 0 {
        return match zone {
            Some(zone) => format!("{v6}%{}", zone.to_lowercase()),
            None => v6.to_string(),
        };
    }
    format!("{}/64", Ipv6Addr::from(bits & !u128::from(u64::MAX)))
}

/// Returns the name a source is counted under: `pam:ADDRESS` for the
/// remote host of a PAM login, and `radius:CLIENT:ADDRESS` for a
/// Calling-Station-Id from a RADIUS client. The client's name is lowercased,
/// with `%` and `:` written as `%25` and `%3a`, so that the first colon
/// after it always ends it.
pub fn source_key(radius_client: Option<&str>, address: &str) -> String {
    match radius_client {
        None => format!("pam:{address}"),
        Some(client) => {
            let client = client.to_lowercase().replace('%', "%25").replace(':', "%3a");
            format!("radius:{client}:{address}")
        }
    }
}

/// Splits a source name from [`source_key`] into its front end (`pam` or
/// `radius:CLIENT`) and its address.
pub fn split_source_key(key: &str) -> Option<(&str, &str)> {
    if key.starts_with("pam:") {
        return key.split_once(':');
    }
    let rest = key.strip_prefix("radius:")?;
    let (client, address) = rest.split_once(':')?;
    let frontend_len = "radius:".len() + client.len();
    Some((&key[..frontend_len], address))
}

/// A source's failure count and lock, and the start of its current decay
/// period (see [`Policy::source_current`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceFailures {
    pub failures: Failures,
    /// Unix time from which the next forgiven failure is counted.
    pub updated: u64,
}

/// An entry of a [`FailureTable`].
pub trait Entry: Copy + Default {
    /// Returns whether the entry's lock is in force at `now`. Entries
    /// without one are evicted first.
    fn is_locked(&self, now: u64) -> bool;
}

impl Entry for Failures {
    fn is_locked(&self, now: u64) -> bool {
        Failures::is_locked(self, now)
    }
}

impl Entry for SourceFailures {
    fn is_locked(&self, now: u64) -> bool {
        self.failures.is_locked(now)
    }
}

/// Failure counts by name, for user names that have no account and for
/// sources. Kept in memory only, so a restart clears them, and bounded so a
/// flood of made-up names cannot exhaust memory.
#[derive(Debug)]
pub struct FailureTable<E = Failures> {
    counts: HashMap<String, E>,
}

impl<E> Default for FailureTable<E> {
    fn default() -> Self {
        FailureTable { counts: HashMap::new() }
    }
}

/// Maximum number of names in one table.
const MAX_NAMES: usize = 65_536;

/// Entries looked at for one without a lock when the table is full.
const EVICTION_CANDIDATES: usize = 32;

impl<E: Entry> FailureTable<E> {
    pub fn get(&self, name: &str) -> E {
        self.counts.get(name).copied().unwrap_or_default()
    }

    /// Sets the entry of `name`. Returns the name evicted to make room,
    /// if any.
    pub fn set(&mut self, name: &str, entry: E, now: u64) -> Option<String> {
        let mut evicted = None;
        if self.counts.len() >= MAX_NAMES && !self.counts.contains_key(name) {
            // Evict one entry rather than the whole table, so that a flood of
            // made-up names cannot reset the count of a name being probed.
            // An entry without a lock in force goes first. NOTE: a flood can
            // still evict a locked entry once the candidates are all locked,
            // and an evicted name restarts its count.
            let candidates = self.counts.iter().take(EVICTION_CANDIDATES);
            let victim = candidates
                .clone()
                .find(|(_, entry)| !entry.is_locked(now))
                .or_else(|| self.counts.iter().next())
                .map(|(name, _)| name.clone());
            if let Some(victim) = victim {
                self.counts.remove(&victim);
                evicted = Some(victim);
            }
        }
        self.counts.insert(name.to_owned(), entry);
        evicted
    }

    pub fn forget(&mut self, name: &str) {
        self.counts.remove(name);
    }

    /// Removes every entry whose name `matches` accepts; returns how many.
    pub fn forget_matching(&mut self, matches: impl Fn(&str) -> bool) -> usize {
        let before = self.counts.len();
        self.counts.retain(|name, _| !matches(name));
        before - self.counts.len()
    }

    /// Returns the number of entries that `matches` accepts.
    pub fn count_matching(&self, matches: impl Fn(&E) -> bool) -> usize {
        self.counts.values().filter(|entry| matches(entry)).count()
    }

    /// Keeps only the entries that `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&E) -> bool) {
        self.counts.retain(|_, entry| keep(entry));
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.counts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            lockout: Lockout {
                failure_delay: Duration::from_millis(500),
                max_failure_delay: Duration::from_secs(8),
                threshold: 3,
                source_threshold: 5,
                lock_duration: Duration::from_secs(900),
            },
        }
    }

    #[test]
    fn delay_doubles_then_caps() {
        let delays: Vec<u64> = (1..=7).map(|n| policy().delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(policy().delay(u32::MAX), Duration::from_secs(8));
    }

    #[test]
    fn locks_at_threshold_and_expires() {
        let mut failures = Failures::default();
        for _ in 0..2 {
            failures = policy().after_failure(failures, 1000);
            assert!(!failures.is_locked(1000));
        }
        failures = policy().after_failure(failures, 1000);
        assert_eq!(failures.locked_until, Some(1900));
        assert!(failures.is_locked(1899));
        assert!(!failures.is_locked(1900));
        assert_eq!(policy().current(failures, 1900), Failures::default());
        assert_eq!(policy().current(failures, 1899), failures);
    }

    #[test]
    fn lock_ends_after_clock_set_back() {
        let mut failures = Failures::default();
        for _ in 0..3 {
            failures = policy().after_failure(failures, 100_000);
        }
        assert_eq!(failures.locked_until, Some(100_900));
        // A clock set back to a time after the lock began keeps the lock.
        // A clock set back to before that ends it.
        assert_eq!(policy().current(failures, 100_000), failures);
        assert_eq!(policy().current(failures, 100_000 - 1).locked_until, None);
        // Set back by a day: the lock is over, the count stays, and the
        // next failure locks for 900 s from the new time.
        let back = 100_000 - 86_400;
        let current = policy().current(failures, back);
        assert_eq!(
            current,
            Failures {
                count: 3,
                locked_until: None
            }
        );
        let again = policy().after_failure(current, back);
        assert_eq!(again.locked_until, Some(back + 900));
        // A lower lock_seconds after a reload shortens the lock too.
        let mut shorter = policy();
        shorter.lockout.lock_duration = Duration::from_secs(60);
        assert!(!shorter.current(failures, 100_010).is_locked(100_010));
        assert!(shorter.current(failures, 100_840).is_locked(100_840));
        assert!(policy().current(failures, 100_010).is_locked(100_010));
    }

    #[test]
    fn source_decays_after_clock_set_back() {
        let mut source = SourceFailures::default();
        source = policy().after_source_failure(source, 100_000);
        source = policy().after_source_failure(source, 100_000);
        assert_eq!(policy().source_current(source, 100_000).count, 2);
        // After a clock set back by an hour, the next failure starts a decay
        // period at the new time, not an hour later.
        let back = 100_000 - 3_600;
        let decay = policy().source_decay();
        let later = policy().after_source_failure(source, back);
        assert_eq!(later.updated, back);
        assert_eq!(policy().source_current(later, back + decay).count, 2);
        assert_eq!(policy().source_current(later, back + 3 * decay).count, 0);
    }

    #[test]
    fn zero_threshold_never_locks() {
        let mut no_lock = policy();
        no_lock.lockout.threshold = 0;
        let mut failures = Failures::default();
        for _ in 0..100 {
            failures = no_lock.after_failure(failures, 5);
        }
        assert!(!failures.is_locked(5));
    }

    #[test]
    fn source_locks_at_its_own_threshold() {
        let mut source = SourceFailures::default();
        for _ in 0..4 {
            source = policy().after_source_failure(source, 1000);
            assert!(!source.failures.is_locked(1000));
        }
        source = policy().after_source_failure(source, 1000);
        assert_eq!(source.failures.count, 5);
        assert_eq!(source.failures.locked_until, Some(1900));
    }

    #[test]
    fn source_count_forgives_one_failure_per_decay() {
        // 900 s over a threshold of 5: one failure forgiven every 180 s.
        assert_eq!(policy().source_decay(), 180);
        let source = SourceFailures {
            failures: Failures {
                count: 3,
                locked_until: None,
            },
            updated: 1000,
        };
        assert_eq!(policy().source_current(source, 1179).count, 3);
        assert_eq!(policy().source_current(source, 1180).count, 2);
        assert_eq!(policy().source_current(source, 1000 + 3 * 180).count, 0);
        assert_eq!(policy().source_current(source, u64::MAX).count, 0);
    }

    #[test]
    fn source_decay_keeps_part_periods() {
        // Failures 359 s apart, just under two 180-second periods. The part
        // of a period left over counts towards the next, so the count falls.
        let mut source = SourceFailures {
            failures: Failures {
                count: 3,
                locked_until: None,
            },
            updated: 0,
        };
        let mut counts = Vec::new();
        for step in 1..=4u64 {
            source = policy().after_source_failure(source, step * 359);
            counts.push(source.failures.count);
        }
        assert_eq!(counts, [3, 2, 1, 1]);
    }

    #[test]
    fn source_failing_at_the_allowed_rate_never_locks() {
        // One failure forgiven every 180 s: two every 360 s is the rate.
        let mut source = SourceFailures::default();
        for pair in 0..100u64 {
            for _ in 0..2 {
                source = policy().after_source_failure(source, pair * 360);
            }
            assert!(!source.failures.is_locked(pair * 360), "pair {pair}");
        }
        let mut faster = SourceFailures::default();
        for pair in 0..100u64 {
            for _ in 0..2 {
                faster = policy().after_source_failure(faster, pair * 300);
            }
        }
        assert!(faster.failures.is_locked(99 * 300), "two every 300 s is too fast");
    }

    #[test]
    fn zero_source_threshold_never_locks() {
        let mut off = policy();
        off.lockout.source_threshold = 0;
        let mut source = SourceFailures::default();
        for _ in 0..100 {
            source = off.after_source_failure(source, 5);
        }
        assert!(!source.failures.is_locked(5));
    }

    #[test]
    fn source_ports_are_dropped() {
        let cases = [
            ("192.0.2.7:4500", "192.0.2.7"),
            ("192.0.2.7[4500]", "192.0.2.7"),
            ("[2001:db8:1:2::7]:4500", "2001:db8:1:2::/64"),
            ("2001:DB8:1:2::7[4500]", "2001:db8:1:2::/64"),
            ("[fe80::1%eth0]:22", "fe80::1%eth0"),
            ("::ffff:192.0.2.7[500]", "192.0.2.7"),
        ];
        for (raw, counted) in cases {
            assert_eq!(source_address(raw).as_deref(), Some(counted), "{raw}");
        }
    }

    #[test]
    fn source_without_a_port_stays_whole() {
        let cases = [
            // A valid IPv6 address whose last group looks like a port.
            ("::1:4500", "::1:4500"),
            ("00:1B:63:84:45:E6", "00:1b:63:84:45:e6"),
            ("192.0.2.7:", "192.0.2.7:"),
            ("192.0.2.7:450000", "192.0.2.7:450000"),
            ("192.0.2.7[x]", "192.0.2.7[x]"),
            ("host.example.com:22", "host.example.com:22"),
        ];
        for (raw, counted) in cases {
            assert_eq!(source_address(raw).as_deref(), Some(counted), "{raw}");
        }
    }

    #[test]
    fn full_table_evicts_unlocked_names_first() {
        let mut names = FailureTable::default();
        let locked = Failures {
            count: 3,
            locked_until: Some(10_000),
        };
        names.set("locked", locked, 0);
        for i in 0..(MAX_NAMES * 2) {
            let failures = Failures {
                count: 1,
                locked_until: None,
            };
            names.set(&format!("user{i}"), failures, 0);
        }
        assert_eq!(names.get("locked"), locked);
    }

    #[test]
    fn unknown_names_are_bounded() {
        let mut names = FailureTable::default();
        for i in 0..(MAX_NAMES + 10) {
            names.set(
                &format!("user{i}"),
                Failures {
                    count: 1,
                    locked_until: None,
                },
                0,
            );
        }
        assert!(names.counts.len() <= MAX_NAMES);
    }
}
