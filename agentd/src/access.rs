//! Who is calling: the peer's credentials (`SO_PEERCRED`) mapped to what it
//! may ask and what it may learn.
//!
//! On the agent socket, root and the agent's own user may verify any account;
//! the RADIUS bridge's users may verify any account for remote clients and
//! learn only accept or reject; any other user may ask only about the
//! account with its own uid (a screen locker runs PAM as the user), within a
//! rate limit. The admin socket serves root, the agent's user and members of
//! the admin group.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::Access;

/// The resolved form of [`Access`]: names turned into ids once per load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub agent_uid: u32,
    pub admin_gid: Option<u32>,
    pub bridge_uids: HashSet<u32>,
    pub local_requests_per_minute: u32,
}

impl Rules {
    /// Resolves user and group names through NSS. An unknown name is an
    /// error, so a typo cannot silently lock the bridge or admins out.
    pub fn resolve(access: &Access) -> Result<Rules, String> {
        let admin_gid = match &access.admin_group {
            Some(name) => Some(
                Group::from_name(name)
                    .map_err(|err| format!("cannot look up admin group {name}: {err}"))?
                    .ok_or_else(|| format!("admin group {name} does not exist"))?
                    .gid
                    .as_raw(),
            ),
            None => None,
        };
        let mut bridge_uids = HashSet::new();
        for name in &access.bridge_users {
            let user = User::from_name(name)
                .map_err(|err| format!("cannot look up bridge user {name}: {err}"))?
                .ok_or_else(|| format!("bridge user {name} does not exist"))?;
            bridge_uids.insert(user.uid.as_raw());
        }
        Ok(Rules {
            agent_uid: Uid::effective().as_raw(),
            admin_gid,
            bridge_uids,
            local_requests_per_minute: access.local_requests_per_minute,
        })
    }

    /// Classifies a peer of the agent socket. For a local user this asks
    /// the user database (NSS), which may wait for a directory server.
    pub fn agent_caller(&self, uid: u32) -> Caller {
        self.known_caller(uid)
            .unwrap_or_else(|| match User::from_uid(Uid::from_raw(uid)) {
                Ok(Some(user)) => Caller::Local { uid, name: user.name },
                _ => Caller::Nobody { uid },
            })
    }

    /// Returns the caller for root, the agent's user or a bridge user, which
    /// needs no lookup, and `None` for anyone else.
    pub fn known_caller(&self, uid: u32) -> Option<Caller> {
        if uid == 0 || uid == self.agent_uid {
            Some(Caller::Trusted { uid })
        } else if self.bridge_uids.contains(&uid) {
            Some(Caller::Bridge { uid })
        } else {
            None
        }
    }

    /// Whether a peer may use the admin socket.
    pub fn is_admin(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.agent_uid {
            return true;
        }
        let Some(admin_gid) = self.admin_gid else {
            return false;
        };
        gid == admin_gid || pid.is_some_and(|pid| process_in_group(pid, admin_gid))
    }
}

/// A classified peer of the agent socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Root or the agent's own user.
    Trusted { uid: u32 },
    /// A RADIUS bridge user: any account, remote view only.
    Bridge { uid: u32 },
    /// Any other user with a name: only its own account.
    Local { uid: u32, name: String },
    /// A uid without a user name: nothing.
    Nobody { uid: u32 },
    /// A peer of the admin socket that passed [`Rules::is_admin`].
    Admin { uid: u32 },
}

impl Caller {
    pub fn uid(&self) -> u32 {
        match self {
            Caller::Trusted { uid }
            | Caller::Bridge { uid }
            | Caller::Local { uid, .. }
            | Caller::Nobody { uid }
            | Caller::Admin { uid } => *uid,
        }
    }
}

/// Whether process `pid` has `gid` among its supplementary groups, read from
/// `/proc/PID/status`. SO_PEERCRED reports only the primary group.
fn process_in_group(pid: i32, gid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
}

/// Whether `gid` is the primary group of this process, for socket modes.
pub fn current_gid() -> u32 {
    Gid::effective().as_raw()
}

/// A token bucket per uid: `per_minute` requests, refilled continuously.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<u32, (f64, Instant)>,
}

impl RateLimiter {
    /// Takes one request from `uid`'s bucket; false if it is empty.
    pub fn allow(&mut self, uid: u32, per_minute: u32, now: Instant) -> bool {
        let capacity = f64::from(per_minute.max(1));
        let (tokens, last) = self.buckets.entry(uid).or_insert((capacity, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * capacity / 60.0;
        *tokens = (*tokens + refill).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_limiter_empties_and_refills() {
        let mut limiter = RateLimiter::default();
        let start = Instant::now();
        for _ in 0..6 {
            assert!(limiter.allow(1000, 6, start));
        }
        assert!(!limiter.allow(1000, 6, start));
        assert!(limiter.allow(1001, 6, start), "other uids have their own bucket");
        assert!(limiter.allow(1000, 6, start + Duration::from_secs(10)));
        assert!(!limiter.allow(1000, 6, start + Duration::from_secs(10)));
    }

    fn rules() -> Rules {
        Rules {
            agent_uid: 4242,
            admin_gid: Some(777),
            bridge_uids: [5555].into_iter().collect(),
            local_requests_per_minute: 10,
        }
    }

    #[test]
    fn classifies_trusted_and_bridge_callers() {
        assert_eq!(rules().agent_caller(0), Caller::Trusted { uid: 0 });
        assert_eq!(rules().agent_caller(4242), Caller::Trusted { uid: 4242 });
        assert_eq!(rules().agent_caller(5555), Caller::Bridge { uid: 5555 });
    }

    #[test]
    fn admin_needs_root_agent_or_group() {
        assert!(rules().is_admin(0, 0, None));
        assert!(rules().is_admin(4242, 1, None));
        assert!(rules().is_admin(1000, 777, None));
        assert!(!rules().is_admin(1000, 1000, None));
    }
}
