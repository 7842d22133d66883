//! Picks the user of each request so that one-use TOTP servers can accept
//! every request: a user gets at most one request per time step, and never
//! two at once.
//!
//! A server that enforces one use per code (FreeAuth does) accepts a user's
//! code once per 30-second step. It rightly rejects a second request for the
//! same user in that step, and the load would count that as a failure of the
//! server. Users are taken round robin, which spreads them evenly over the
//! step. When every user has had its request in the current step, the picker
//! returns `None` until the next step begins: the load is then limited by the
//! number of users, not by the server.

/// Marks a user that has not been sent a request yet.
const NEVER: u64 = u64::MAX;

/// Round-robin picker over `count` users.
#[derive(Debug)]
pub struct Scheduler {
    /// Time step of each user's latest request, or [`NEVER`].
    last_step: Vec<u64>,
    busy: Vec<bool>,
    cursor: usize,
    /// Step in which a full pass found no free user.
    exhausted_step: Option<u64>,
}

impl Scheduler {
    pub fn new(count: usize) -> Scheduler {
        Scheduler {
            last_step: vec![NEVER; count],
            busy: vec![false; count],
            cursor: 0,
            exhausted_step: None,
        }
    }

    /// Returns the next user that has no request in flight and none in
    /// `step`, and marks it busy; `None` when there is no such user.
    ///
    /// NOTE: after a pass finds no user, the rest of that step returns
    /// `None` at once, even if a user from an earlier step finishes its
    /// request meanwhile. That user waits for the next step.
    pub fn next(&mut self, step: u64) -> Option<usize> {
        if self.exhausted_step == Some(step) {
            return None;
        }
        let count = self.busy.len();
        for _ in 0..count {
            let index = self.cursor;
            self.cursor = (self.cursor + 1) % count;
            let last = self.last_step[index];
            if !self.busy[index] && (last == NEVER || last < step) {
                self.busy[index] = true;
                self.last_step[index] = step;
                return Some(index);
            }
        }
        self.exhausted_step = Some(step);
        None
    }

    /// Marks the request of user `index` finished (replied to or timed out).
    pub fn release(&mut self, index: usize) {
        if let Some(busy) = self.busy.get_mut(index) {
            *busy = false;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_user_once_per_step() {
        let mut scheduler = Scheduler::new(3);
        let mut picked = Vec::new();
        for _ in 0..3 {
            let user = scheduler.next(100).unwrap();
            scheduler.release(user);
            picked.push(user);
        }
        assert_eq!(picked, vec![0, 1, 2]);
        assert_eq!(scheduler.next(100), None);
        assert_eq!(scheduler.next(101), Some(0));
    }

    #[test]
    fn busy_user_is_skipped_in_a_new_step() {
        let mut scheduler = Scheduler::new(2);
        let first = scheduler.next(7).unwrap();
        let second = scheduler.next(7).unwrap();
        scheduler.release(second);
        assert_eq!(scheduler.next(8), Some(second));
        assert_eq!(scheduler.next(8), None, "user {first} is still in flight");
        scheduler.release(first);
        assert_eq!(scheduler.next(9), Some(first));
    }

    #[test]
    fn clock_going_back_does_not_repeat_a_step() {
        let mut scheduler = Scheduler::new(1);
        let user = scheduler.next(50).unwrap();
        scheduler.release(user);
        assert_eq!(scheduler.next(49), None);
        assert_eq!(scheduler.next(51), Some(0));
    }

    #[test]
    fn round_robin_continues_across_steps() {
        let mut scheduler = Scheduler::new(4);
        let user = scheduler.next(1).unwrap();
        scheduler.release(user);
        assert_eq!(scheduler.next(2), Some(1));
        assert_eq!(scheduler.next(2), Some(2));
    }
}
