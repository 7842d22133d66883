//! The engine driven directly with a manual clock: window, drift, replay and
//! lock rules at exact step and second boundaries, and batches in which two
//! requests race for the same code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use freeauth_agentd::admin::AdminOp;
use freeauth_agentd::config::{Lockout, Windows};
use freeauth_agentd::engine::{BackupCheck, BackupMatch, Engine, Job, Lookup, Outcome, Reason, Settings, Verdict};
use freeauth_agentd::keys::SeedCipher;
use freeauth_agentd::store::Store;
use freeauth_otp::{motp, totp, Algorithm, ManualClock, Secret};
use freeauth_proto::{HashAlgorithm, NewToken, Response, SecretString, TokenKind};
use tokio::sync::oneshot;

const SEED_HEX: &str = "3132333435363738393031323334353637383930";
const PERIOD: u64 = 30;
/// A time exactly at the start of a TOTP step.
const STEP_START: u64 = 1_800_000_000 - 1_800_000_000 % PERIOD;

struct Harness {
    engine: Engine,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn settings(threshold: u32) -> Settings {
    Settings {
        windows: Windows {
            totp_steps: 1,
            motp_steps: 18,
            hotp_lookahead: 10,
            hotp_resync: 100,
            time_resync_steps: 100,
        },
        lockout: Lockout {
            failure_delay: Duration::from_millis(500),
            max_failure_delay: Duration::from_secs(8),
            threshold,
            source_threshold: 4,
            lock_duration: Duration::from_secs(900),
        },
        prompt: "Code: ".into(),
        max_batch: 64,
    }
}

fn harness(threshold: u32) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let clock = Arc::new(ManualClock::new(STEP_START));
    let engine = Engine::new(store, SeedCipher::new(&[9u8; 32]), clock.clone(), settings(threshold));
    let mut harness = Harness {
        engine,
        clock,
        _dir: dir,
    };
    harness.enroll("alice");
    harness
}

impl Harness {
    fn enroll(&mut self, user: &str) {
        let token = NewToken {
            kind: TokenKind::Totp,
            algorithm: HashAlgorithm::Sha1,
            digits: 6,
            period: 30,
            counter: 0,
            last_step: None,
            secret_hex: SEED_HEX.into(),
            pin: None,
            label: None,
        };
        let (reply, mut answer) = oneshot::channel();
        let op = AdminOp::Enroll {
            user: user.into(),
            token,
            backup: None,
        };
        self.engine.run_batch(vec![Job::Admin { op, reply }]);
        assert!(matches!(answer.try_recv().unwrap(), Response::Enrolled { .. }));
    }

    /// Runs several verifications in one batch and returns their verdicts.
    fn verify_batch(&mut self, codes: &[(&str, String)]) -> Vec<Verdict> {
        let sourced: Vec<(&str, String, Option<&str>)> =
            codes.iter().map(|(user, code)| (*user, code.clone(), None)).collect();
        self.verify_sourced(&sourced)
    }

    /// Runs verifications with their sources in one batch.
    fn verify_sourced(&mut self, codes: &[(&str, String, Option<&str>)]) -> Vec<Verdict> {
        self.verify_jobs(codes, false)
    }

    /// Verifies the end of `text` as `forward_pass` sends it, from `source`.
    fn verify_tail(&mut self, user: &str, text: &str, source: &str) -> Verdict {
        self.verify_jobs(&[(user, text.to_owned(), Some(source))], true)
            .remove(0)
    }

    fn verify_jobs(&mut self, codes: &[(&str, String, Option<&str>)], tail: bool) -> Vec<Verdict> {
        let mut answers = Vec::new();
        let jobs = codes
            .iter()
            .map(|(user, code, source)| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                Job::Verify {
                    user: (*user).into(),
                    code: SecretString::new(code.as_str()),
                    tail,
                    source: source.map(str::to_owned),
                    reply,
                }
            })
            .collect();
        self.engine.run_batch(jobs);
        answers
            .into_iter()
            .map(|mut a| a.try_recv().unwrap().unwrap())
            .collect()
    }

    fn verify(&mut self, user: &str, code: String) -> Verdict {
        self.verify_batch(&[(user, code)]).remove(0)
    }

    fn verify_from(&mut self, user: &str, code: String, source: &str) -> Verdict {
        self.verify_sourced(&[(user, code, Some(source))]).remove(0)
    }

    /// Sends `count` wrong codes for `user` from `source`.
    fn fail_from(&mut self, user: &str, source: &str, count: usize) {
        for _ in 0..count {
            self.verify_from(user, "000000".into(), source);
        }
    }

    /// Enrols `user` with a TOTP token and the backup code 12345678.
    fn enroll_with_backup(&mut self, user: &str) {
        self.enroll_backup_set(
            user,
            "00112233445566778899aabbccddeeff00112233",
            "12345678",
            b"0123456789abcdef",
        );
    }

    /// Enrols `user` with a TOTP token of `secret_hex` and a new set of
    /// backup codes holding `code`, hashed with `salt`.
    fn enroll_backup_set(&mut self, user: &str, secret_hex: &str, code: &str, salt: &[u8]) {
        let backup = freeauth_agentd::admin::BackupSet {
            salt: salt.to_vec(),
            hashes: vec![freeauth_agentd::keys::hash_backup_code(code, salt).unwrap()],
        };
        let op = AdminOp::Enroll {
            user: user.into(),
            token: totp_token(secret_hex),
            backup: Some(backup),
        };
        assert!(matches!(self.admin(op), Response::Enrolled { .. }));
    }

    /// Removes `user` with all tokens, as `freeauthctl remove USER` does.
    fn remove(&mut self, user: &str) {
        let op = AdminOp::Remove {
            user: user.into(),
            token: None,
        };
        let removed = self.admin(op);
        assert!(matches!(removed, Response::Done { .. }), "{removed:?}");
    }

    fn admin(&mut self, op: AdminOp) -> Response {
        let (reply, mut answer) = oneshot::channel();
        self.engine.run_batch(vec![Job::Admin { op, reply }]);
        answer.try_recv().unwrap()
    }

    /// Runs the first half of a backup-code check and hashes `code` as the
    /// connection thread would; returns the stored code it matched.
    fn begin_backup(&mut self, user: &str, code: &str) -> BackupMatch {
        let verdict = self.verify(user, code.into());
        let Outcome::CheckBackup { salt, hashes } = verdict.outcome else {
            panic!("no backup check: {verdict:?}");
        };
        let hash = freeauth_agentd::keys::hash_backup_code(code, &salt).unwrap();
        let (id, stored) = hashes.into_iter().find(|(_, stored)| stored[..] == hash[..]).unwrap();
        BackupMatch { id, hash: stored }
    }

    /// Runs a lookup of `user`, as PAM does before it prompts.
    fn lookup(&mut self, user: &str) -> Lookup {
        let (reply, mut answer) = oneshot::channel();
        self.engine.run_batch(vec![Job::Lookup {
            user: user.into(),
            reply,
        }]);
        answer.try_recv().unwrap().unwrap()
    }

    /// Disables every token of `user`, as `freeauthctl disable USER` does.
    fn disable(&mut self, user: &str) {
        let disabled = self.admin(AdminOp::SetEnabled {
            user: user.into(),
            token: None,
            enabled: false,
        });
        assert!(matches!(disabled, Response::Done { .. }), "{disabled:?}");
    }

    /// Stops the engine and starts a new one on the same database, as a
    /// restart of the agent does.
    fn restart(self, threshold: u32) -> Harness {
        let Harness {
            engine,
            clock,
            _dir: dir,
        } = self;
        drop(engine);
        let store = Store::open(&dir.path().join("state")).unwrap();
        let engine = Engine::new(store, SeedCipher::new(&[9u8; 32]), clock.clone(), settings(threshold));
        Harness {
            engine,
            clock,
            _dir: dir,
        }
    }

    /// Runs the second half of a backup-code check.
    fn finish_backup(&mut self, user: &str, matched: BackupCheck) -> Verdict {
        let (reply, mut answer) = oneshot::channel();
        self.engine.run_batch(vec![Job::BackupResult {
            user: user.into(),
            matched,
            source: None,
            reply,
        }]);
        answer.try_recv().unwrap().unwrap()
    }
}

fn totp_token(secret_hex: &str) -> NewToken {
    NewToken {
        kind: TokenKind::Totp,
        algorithm: HashAlgorithm::Sha1,
        digits: 6,
        period: 30,
        counter: 0,
        last_step: None,
        secret_hex: secret_hex.into(),
        pin: None,
        label: None,
    }
}

/// The code of the step that contains `time`.
fn code_at(time: u64) -> String {
    let secret = Secret::from_hex(SEED_HEX).unwrap();
    totp(&secret, time, 30, 6, Algorithm::Sha1).to_string()
}

#[test]
fn accepts_previous_step_at_step_start() {
    let mut h = harness(10);
    let verdict = h.verify("alice", code_at(STEP_START - 1));
    assert_eq!(verdict.outcome, Outcome::Accepted);
    assert!(matches!(verdict.reason, Reason::AcceptedToken { offset: -1, .. }));
}

#[test]
fn rejects_two_steps_back_at_step_start() {
    let mut h = harness(10);
    let verdict = h.verify("alice", code_at(STEP_START - PERIOD - 1));
    assert_eq!(verdict.outcome, Outcome::Rejected);
}

#[test]
fn accepts_next_step_in_last_second() {
    let mut h = harness(10);
    h.clock.set(STEP_START + PERIOD - 1);
    assert_eq!(
        h.verify("alice", code_at(STEP_START + PERIOD)).outcome,
        Outcome::Accepted
    );
}

#[test]
fn rejects_step_after_next_in_last_second() {
    let mut h = harness(10);
    h.clock.set(STEP_START + PERIOD - 1);
    assert_eq!(
        h.verify("alice", code_at(STEP_START + 2 * PERIOD)).outcome,
        Outcome::Rejected
    );
}

#[test]
fn rejects_reused_code_in_same_and_later_step() {
    let mut h = harness(10);
    let code = code_at(STEP_START);
    assert_eq!(h.verify("alice", code.clone()).outcome, Outcome::Accepted);
    let again = h.verify("alice", code.clone());
    assert_eq!((again.outcome, again.reason), (Outcome::Rejected, Reason::ReusedCode));
    h.clock.set(STEP_START + PERIOD);
    assert_eq!(
        h.verify("alice", code).outcome,
        Outcome::Rejected,
        "still inside the window one step later"
    );
}

#[test]
fn wrong_clock_is_told_apart_from_wrong_code() {
    let mut h = harness(10);
    let ahead = h.verify("alice", code_at(STEP_START + 11 * PERIOD));
    assert_eq!(ahead.outcome, Outcome::Rejected, "outside the window");
    assert!(
        matches!(
            ahead.reason,
            Reason::WrongCodeClock {
                offset: 11,
                period: 30,
                ..
            }
        ),
        "{:?}",
        ahead.reason
    );
    let behind = h.verify("alice", code_at(STEP_START - 20 * PERIOD));
    assert!(
        matches!(behind.reason, Reason::WrongCodeClock { offset: -20, .. }),
        "{:?}",
        behind.reason
    );
    let far = h.verify("alice", code_at(STEP_START + 40 * PERIOD));
    assert_eq!(far.reason, Reason::WrongCode, "beyond the 15 minutes searched");
    assert_eq!(h.verify("alice", "000000".into()).reason, Reason::WrongCode);
}

#[test]
fn clock_hint_skips_used_steps() {
    let mut h = harness(10);
    assert_eq!(h.verify("alice", code_at(STEP_START)).outcome, Outcome::Accepted);
    let old = h.verify("alice", code_at(STEP_START - 5 * PERIOD));
    assert_eq!(old.reason, Reason::WrongCode, "a step before the last accepted one");
}

#[test]
fn rejects_older_step_after_newer_accepted() {
    let mut h = harness(10);
    assert_eq!(h.verify("alice", code_at(STEP_START)).outcome, Outcome::Accepted);
    let older = h.verify("alice", code_at(STEP_START - 1));
    assert_eq!(older.outcome, Outcome::Rejected);
}

#[test]
fn same_code_twice_in_one_batch_is_accepted_once() {
    let mut h = harness(10);
    let code = code_at(STEP_START);
    let verdicts = h.verify_batch(&[("alice", code.clone()), ("alice", code)]);
    assert_eq!(verdicts[0].outcome, Outcome::Accepted);
    assert_eq!(verdicts[1].outcome, Outcome::Rejected);
}

#[test]
fn drift_moves_the_window() {
    let mut h = harness(10);
    assert_eq!(
        h.verify("alice", code_at(STEP_START + PERIOD)).outcome,
        Outcome::Accepted
    );
    h.clock.set(STEP_START + 10 * PERIOD);
    let ahead = h.verify("alice", code_at(STEP_START + 12 * PERIOD));
    assert_eq!(
        ahead.outcome,
        Outcome::Accepted,
        "window centred on the learned drift of +1"
    );
    assert!(matches!(ahead.reason, Reason::AcceptedToken { offset: 2, .. }));
}

#[test]
fn lock_starts_at_threshold_and_ends_on_the_second() {
    let mut h = harness(3);
    let delays: Vec<Duration> = (0..3).map(|_| h.verify("alice", "000000".into()).delay).collect();
    assert_eq!(
        delays,
        [
            Duration::from_millis(500),
            Duration::from_secs(1),
            Duration::from_secs(2)
        ]
    );
    h.clock.set(STEP_START + 899);
    let locked = h.verify("alice", code_at(STEP_START + 899));
    assert_eq!((locked.outcome, locked.reason), (Outcome::Locked, Reason::Locked));
    h.clock.set(STEP_START + 900);
    assert_eq!(h.verify("alice", code_at(STEP_START + 900)).outcome, Outcome::Accepted);
}

#[test]
fn clock_set_back_ends_locks() {
    let mut h = harness(3);
    for _ in 0..3 {
        h.verify("alice", "000000".into());
        h.verify("mallory", "000000".into());
    }
    // An NTP correction or an admin sets the clock back by a day. The locks
    // are over, but the counts stay: one more failure locks again, for
    // 900 s from the new time.
    let back = STEP_START - 86_400;
    h.clock.set(back);
    let again = h.verify("alice", "000000".into());
    assert_eq!((again.outcome, again.failures), (Outcome::Rejected, 4));
    let unknown = h.verify("mallory", "000000".into());
    assert_eq!((unknown.reason, unknown.failures), (Reason::UnknownUser, 4));
    h.clock.set(back + 899);
    assert_eq!(h.verify("alice", code_at(back + 899)).outcome, Outcome::Locked);
    assert_eq!(h.verify("mallory", "000000".into()).failures, 4);
    h.clock.set(back + 900);
    assert_eq!(h.verify("alice", code_at(back + 900)).outcome, Outcome::Accepted);
    assert_eq!(h.verify("mallory", "000000".into()).failures, 1);
}

/// A lock taken as ended because the clock was set back stays stored. With
/// no failure or accepted code in between, it is in force again once the
/// clock reaches the time it began, until its end.
#[test]
fn ended_lock_returns_at_its_start() {
    let mut h = harness(3);
    for _ in 0..3 {
        h.verify("alice", "000000".into());
    }
    let lookup_locked = |h: &mut Harness| {
        let (reply, mut answer) = oneshot::channel();
        h.engine.run_batch(vec![Job::Lookup {
            user: "alice".into(),
            reply,
        }]);
        answer.try_recv().unwrap().unwrap().locked
    };
    assert!(lookup_locked(&mut h));

    h.clock.set(STEP_START - 86_400);
    assert!(!lookup_locked(&mut h), "the lock is not in force before its start");
    h.clock.set(STEP_START + 10);
    assert!(lookup_locked(&mut h), "the lock is in force again from its start");
    let verdict = h.verify("alice", code_at(STEP_START + 10));
    assert_eq!(verdict.outcome, Outcome::Locked);
}

#[test]
fn unknown_user_gets_same_delays_and_lock() {
    let mut h = harness(3);
    let known: Vec<Verdict> = (0..4).map(|_| h.verify("alice", "000000".into())).collect();
    let unknown: Vec<Verdict> = (0..4).map(|_| h.verify("mallory", "000000".into())).collect();
    for (k, u) in known.iter().zip(&unknown) {
        assert_eq!(k.delay, u.delay);
        assert_eq!(k.failures, u.failures);
    }
    assert_eq!(unknown[3].reason, Reason::UnknownUser);
}

#[test]
fn source_locks_across_accounts() {
    let mut h = harness(10);
    h.enroll("bob");
    let attacker = "192.0.2.66";
    let users = ["alice", "bob", "mallory", "alice"];
    let verdicts: Vec<Verdict> = users
        .iter()
        .map(|user| h.verify_from(user, "000000".into(), attacker))
        .collect();
    let delays: Vec<Duration> = verdicts.iter().map(|verdict| verdict.delay).collect();
    assert_eq!(
        delays,
        [
            Duration::from_millis(500),
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4)
        ],
        "the delay grows with the source's count, not only the account's"
    );

    let blocked = h.verify_from("bob", code_at(STEP_START), attacker);
    assert_eq!(
        (blocked.outcome, blocked.reason),
        (Outcome::Locked, Reason::SourceLocked)
    );
    let elsewhere = h.verify_from("bob", code_at(STEP_START), "192.0.2.10");
    assert_eq!(
        elsewhere.outcome,
        Outcome::Accepted,
        "the blocked attempt did not use the code"
    );
    let unsourced = h.verify("alice", code_at(STEP_START));
    assert_eq!(
        unsourced.outcome,
        Outcome::Accepted,
        "accounts themselves are not locked"
    );

    h.clock.set(STEP_START + 900);
    let later = h.verify_from("bob", code_at(STEP_START + 900), attacker);
    assert_eq!(later.outcome, Outcome::Accepted, "the source lock expires by itself");
}

#[test]
fn accepted_code_leaves_source_count() {
    let mut h = harness(10);
    let office = "198.51.100.1";
    h.fail_from("mallory", office, 3);
    let own = h.verify_from("alice", code_at(STEP_START), office);
    assert_eq!(own.outcome, Outcome::Accepted);
    h.verify_from("mallory", "000000".into(), office);
    let after = h.verify_from("alice", code_at(STEP_START + PERIOD), office);
    assert_eq!(
        (after.outcome, after.reason),
        (Outcome::Locked, Reason::SourceLocked),
        "a login between guesses does not reset the source's count"
    );
}

#[test]
fn source_count_decays_with_time() {
    // 900 s of lock over a threshold of 4: one failure is forgiven every 225 s.
    let mut h = harness(10);
    let source = "203.0.113.9";
    h.fail_from("mallory", source, 3);
    h.clock.set(STEP_START + 225);
    let decayed = h.verify_from("mallory", "000000".into(), source);
    assert_eq!(
        decayed.reason,
        Reason::UnknownUser,
        "2 left after decay, 3 with this one"
    );
    let fourth = h.verify_from("mallory", "000000".into(), source);
    assert_eq!(fourth.reason, Reason::UnknownUser, "this failure reaches the threshold");
    let locked = h.verify_from("alice", code_at(STEP_START + 225), source);
    assert_eq!(locked.reason, Reason::SourceLocked);
}

#[test]
fn locked_account_retries_skip_source() {
    let mut h = harness(2);
    h.enroll("bob");
    let source = "192.0.2.50";
    h.fail_from("alice", source, 2);
    for _ in 0..5 {
        let retry = h.verify_from("alice", "000000".into(), source);
        assert_eq!(retry.reason, Reason::Locked, "the account is locked");
    }
    let bob = h.verify_from("bob", code_at(STEP_START), source);
    assert_eq!(
        bob.outcome,
        Outcome::Accepted,
        "2 counted failures, under the source threshold of 4"
    );
}

#[test]
fn admin_unlocks_a_source() {
    let mut h = harness(10);
    let source = "pam:192.0.2.66";
    h.fail_from("mallory", source, 4);
    let locked = h.verify_from("alice", code_at(STEP_START), source);
    assert_eq!(locked.reason, Reason::SourceLocked);

    let (reply, mut answer) = oneshot::channel();
    let op = AdminOp::UnlockSource {
        source: "192.0.2.66".into(),
    };
    h.engine.run_batch(vec![Job::Admin { op, reply }]);
    assert_eq!(answer.try_recv().unwrap(), Response::Done { changed: 1 });
    let unlocked = h.verify_from("alice", code_at(STEP_START), source);
    assert_eq!(unlocked.outcome, Outcome::Accepted);
}

#[test]
fn backup_code_guesses_count_for_source() {
    let mut h = harness(10);
    h.enroll_with_backup("bea");
    let source = "pam:192.0.2.88";
    for _ in 0..4 {
        let guess = h.verify_from("bea", "99999999".into(), source);
        assert!(matches!(guess.outcome, Outcome::CheckBackup { .. }));
    }
    let after = h.verify_from("alice", code_at(STEP_START), source);
    assert_eq!(
        after.reason,
        Reason::SourceLocked,
        "four backup-code guesses lock the source"
    );
}

/// Locks the source `key` with four failures, each for another unknown
/// name, so that no name reaches its own lock.
fn lock_source(h: &mut Harness, key: &str) {
    for n in 0..4 {
        h.verify_from(&format!("nobody{n}"), "000000".into(), key);
    }
    let locked = h.verify_from("alice", "000000".into(), key);
    assert_eq!(locked.reason, Reason::SourceLocked, "{key}");
}

fn unlock_source(h: &mut Harness, typed: &str) -> u64 {
    let (reply, mut answer) = oneshot::channel();
    let op = AdminOp::UnlockSource { source: typed.into() };
    h.engine.run_batch(vec![Job::Admin { op, reply }]);
    match answer.try_recv().unwrap() {
        Response::Done { changed } => changed,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unlock_source_matches_names_and_addresses() {
    use freeauth_agentd::policy::{source_address, source_key};
    let mut h = harness(10);
    let mac = source_key(Some("VPN"), &source_address("00:1B:63:84:45:E6").unwrap());
    let v6 = source_key(Some("a:b"), &source_address("2001:db8:5:6::1").unwrap());
    let pam = source_key(None, "192.0.2.5");
    let radius = source_key(Some("vpn"), "192.0.2.5");
    for key in [&mac, &v6, &pam, &radius] {
        lock_source(&mut h, key);
    }
    assert_eq!(mac, "radius:vpn:00:1b:63:84:45:e6");
    assert_eq!(v6, "radius:a%3ab:2001:db8:5:6::/64");

    assert_eq!(unlock_source(&mut h, "45:e6"), 0, "no match on the end of an address");
    assert_eq!(unlock_source(&mut h, "/64"), 0);
    assert_eq!(
        unlock_source(&mut h, "b:2001:db8:5:6::1"),
        0,
        "no match on the end of a client name"
    );
    assert_eq!(
        unlock_source(&mut h, "RADIUS:A%3AB:2001:db8:5:6::77"),
        1,
        "a whole name, another host of the /64"
    );
    assert_eq!(
        unlock_source(&mut h, "Radius:VPN:00:1B:63:84:45:E6"),
        1,
        "a whole name as logged, any case"
    );
    assert_eq!(
        unlock_source(&mut h, "192.0.2.5"),
        2,
        "an address under every front end"
    );
}

#[test]
fn new_source_threshold_clears_source_counts() {
    let mut h = harness(10);
    let source = "192.0.2.77";
    h.fail_from("mallory", source, 4);
    let reload = |h: &mut Harness, source_threshold: u32| {
        let mut settings = settings(10);
        settings.lockout.source_threshold = source_threshold;
        h.engine.run_batch(vec![Job::Reload { settings }]);
    };
    reload(&mut h, 0);
    reload(&mut h, 4);
    let verdict = h.verify_from("alice", code_at(STEP_START), source);
    assert_eq!(verdict.outcome, Outcome::Accepted, "the old lock does not come back");
}

/// `freeauthctl status` counts a source as locked only while the engine
/// rejects its codes as locked.
#[test]
fn status_skips_source_lock_that_ended() {
    let mut h = harness(10);
    let source = "pam:192.0.2.70";
    lock_source(&mut h, source);
    let locked_sources = |h: &mut Harness| match h.admin(AdminOp::Counts) {
        Response::Status { status } => status.locked_sources,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(locked_sources(&mut h), 1);

    // A reload lowers lock_seconds to 60, so the lock would have begun
    // 840 s from now: the engine takes it as ended.
    let mut shorter = settings(10);
    shorter.lockout.lock_duration = Duration::from_secs(60);
    h.engine.run_batch(vec![Job::Reload { settings: shorter }]);
    h.clock.set(STEP_START + 10);
    let verdict = h.verify_from("alice", code_at(STEP_START + 10), source);
    assert_eq!(verdict.outcome, Outcome::Accepted, "the source was still locked");
    assert_eq!(locked_sources(&mut h), 0, "status counts an ended lock");
}

#[test]
fn locked_source_does_not_count_further() {
    let mut h = harness(10);
    let source = "203.0.113.5";
    h.fail_from("mallory", source, 4);
    h.clock.set(STEP_START + 600);
    for _ in 0..10 {
        let verdict = h.verify_from("mallory", "000000".into(), source);
        assert_eq!(verdict.reason, Reason::SourceLocked);
    }
    h.clock.set(STEP_START + 900);
    let verdict = h.verify_from("alice", code_at(STEP_START + 900), source);
    assert_eq!(
        verdict.outcome,
        Outcome::Accepted,
        "attempts while locked do not extend the lock"
    );
}

#[test]
fn zero_source_threshold_counts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let clock = Arc::new(ManualClock::new(STEP_START));
    let mut off = settings(10);
    off.lockout.source_threshold = 0;
    let engine = Engine::new(store, SeedCipher::new(&[9u8; 32]), clock.clone(), off);
    let mut h = Harness {
        engine,
        clock,
        _dir: dir,
    };
    h.enroll("alice");
    let delays: Vec<Duration> = ["bob", "carol", "dave"]
        .iter()
        .map(|user| h.verify_from(user, "000000".into(), "192.0.2.66").delay)
        .collect();
    assert!(
        delays.iter().all(|delay| *delay == Duration::from_millis(500)),
        "{delays:?}"
    );
    let verdict = h.verify_from("alice", code_at(STEP_START), "192.0.2.66");
    assert_eq!(verdict.outcome, Outcome::Accepted);
}

#[test]
fn malformed_code_counts_as_failure() {
    let mut h = harness(10);
    let verdict = h.verify("alice", "12ab56".into());
    assert_eq!(
        (verdict.outcome, verdict.reason, verdict.failures),
        (Outcome::Rejected, Reason::MalformedCode, 1)
    );
    let short = h.verify("alice", "12345".into());
    assert_eq!(short.failures, 2);
}

#[test]
fn backup_code_attempt_counts_before_hashing() {
    let mut h = harness(3);
    h.enroll_with_backup("bea");
    let guesses: Vec<Verdict> = (0..4).map(|_| h.verify("bea", "99999999".into())).collect();
    assert!(matches!(guesses[0].outcome, Outcome::CheckBackup { .. }));
    assert_eq!(guesses[0].failures, 1, "counted before the hash runs");
    assert_eq!(guesses[2].failures, 3);
    assert_eq!(guesses[3].outcome, Outcome::Locked, "pipelined guesses meet the lock");
}

#[test]
fn backup_check_stops_at_disable() {
    let mut h = harness(10);
    h.enroll_with_backup("bea");
    let matched = h.begin_backup("bea", "12345678");
    let disabled = h.admin(AdminOp::SetEnabled {
        user: "bea".into(),
        token: None,
        enabled: false,
    });
    assert!(matches!(disabled, Response::Done { .. }), "{disabled:?}");
    let verdict = h.finish_backup("bea", BackupCheck::Matched(matched.clone()));
    assert_eq!(
        (verdict.outcome, verdict.reason),
        (Outcome::NoToken, Reason::NoActiveToken)
    );
    h.admin(AdminOp::SetEnabled {
        user: "bea".into(),
        token: None,
        enabled: true,
    });
    let verdict = h.finish_backup("bea", BackupCheck::Matched(matched));
    assert_eq!(verdict.outcome, Outcome::Accepted, "the code was not used up");
}

#[test]
fn backup_check_stops_at_new_set() {
    let mut h = harness(10);
    h.enroll_with_backup("bea");
    let old = h.begin_backup("bea", "12345678");
    // A second token with a new set of codes replaces the old set; the new
    // code takes the row id the old one had.
    h.enroll_backup_set(
        "bea",
        "ffeeddccbbaa99887766554433221100ffeeddcc",
        "87654321",
        b"fedcba9876543210",
    );
    let verdict = h.finish_backup("bea", BackupCheck::Matched(old.clone()));
    assert_eq!(verdict.outcome, Outcome::Rejected, "{verdict:?}");
    let new = h.begin_backup("bea", "87654321");
    assert_eq!(new.id, old.id, "the test needs the id to be reused");
    assert_eq!(
        h.finish_backup("bea", BackupCheck::Matched(new)).outcome,
        Outcome::Accepted,
        "the new code is still unused"
    );
}

#[test]
fn backup_check_stops_at_reenrol() {
    let mut h = harness(10);
    h.enroll_with_backup("bea");
    let old = h.begin_backup("bea", "12345678");
    h.remove("bea");
    h.enroll_backup_set(
        "bea",
        "00112233445566778899aabbccddeeff00112233",
        "87654321",
        b"fedcba9876543210",
    );
    assert_eq!(
        h.finish_backup("bea", BackupCheck::Matched(old)).outcome,
        Outcome::Rejected
    );
    let new = h.begin_backup("bea", "87654321");
    assert_eq!(
        h.finish_backup("bea", BackupCheck::Matched(new)).outcome,
        Outcome::Accepted
    );
}

#[test]
fn unreadable_token_still_counts_failures() {
    let mut h = harness(3);
    h.enroll_backup_set(
        "carl",
        "00112233445566778899aabbccddeeff00112233",
        "12345678",
        b"0123456789abcdef",
    );
    h.enroll_backup_set(
        "carl",
        "ffeeddccbbaa99887766554433221100ffeeddcc",
        "12345678",
        b"0123456789abcdef",
    );

    // The second token's sealed seed no longer opens, as after a damaged
    // row or a row restored under another key.
    let database = h._dir.path().join("state").join(freeauth_agentd::store::DB_FILE);
    let connection = rusqlite::Connection::open(database).unwrap();
    let changed = connection
        .execute(
            "UPDATE tokens SET sealed_seed = x'00' WHERE id = (SELECT max(id) FROM tokens)",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(connection);

    let secret = Secret::from_hex("00112233445566778899aabbccddeeff00112233").unwrap();
    let good = totp(&secret, STEP_START, 30, 6, Algorithm::Sha1).to_string();
    assert_eq!(
        h.verify("carl", good).outcome,
        Outcome::Accepted,
        "the readable token still works"
    );

    let failures: Vec<u32> = (0..3).map(|_| h.verify("carl", "000000".into()).failures).collect();
    assert_eq!(failures, [1, 2, 3]);
    assert_eq!(h.verify("carl", "000000".into()).outcome, Outcome::Locked);
}

#[test]
fn same_codes_token_rejected() {
    let mut h = harness(10);
    let is_same_codes_error = |response: Response| match response {
        Response::Error { message, .. } => message.contains("gives the same codes"),
        _ => false,
    };

    // HMAC pads the key with zero bytes: these two secrets are one key.
    let padded = h.admin(AdminOp::Enroll {
        user: "alice".into(),
        token: totp_token(&format!("{SEED_HEX}0000")),
        backup: None,
    });
    assert!(is_same_codes_error(padded.clone()), "{padded:?}");

    let motp = |secret_hex: &str, pin: &str| NewToken {
        kind: TokenKind::Motp,
        algorithm: HashAlgorithm::Sha1,
        digits: 6,
        period: 10,
        counter: 0,
        last_step: None,
        secret_hex: secret_hex.into(),
        pin: Some(pin.into()),
        label: None,
    };
    let first = h.admin(AdminOp::Enroll {
        user: "mo".into(),
        token: motp("0011223344556677", "123456"),
        backup: None,
    });
    assert!(matches!(first, Response::Enrolled { .. }), "{first:?}");

    // Mobile-OTP hashes the secret's hex text and the PIN as one text.
    let second = h.admin(AdminOp::Enroll {
        user: "mo".into(),
        token: motp("001122334455667712", "3456"),
        backup: None,
    });
    assert!(is_same_codes_error(second.clone()), "{second:?}");
    let other_pin = h.admin(AdminOp::Enroll {
        user: "mo".into(),
        token: motp("001122334455667712", "3457"),
        backup: None,
    });
    assert!(matches!(other_pin, Response::Enrolled { .. }), "{other_pin:?}");

    assert_eq!(h.verify("alice", code_at(STEP_START)).outcome, Outcome::Accepted);
}

#[test]
fn unrun_backup_check_counts_failure() {
    let mut h = harness(10);
    h.enroll_with_backup("bea");
    let matched = h.begin_backup("bea", "12345678");
    let verdict = h.finish_backup("bea", BackupCheck::NotRun);
    assert_eq!(
        (verdict.outcome, verdict.reason, verdict.failures),
        (Outcome::Rejected, Reason::BackupCheckBusy, 1)
    );
    assert_eq!(verdict.delay, Duration::from_millis(500));
    assert_eq!(
        h.finish_backup("bea", BackupCheck::Matched(matched)).outcome,
        Outcome::Accepted,
        "the code stays unused"
    );
}

#[test]
fn reenrolled_secret_keeps_used_codes() {
    let mut h = harness(10);
    let code = code_at(STEP_START);
    assert_eq!(h.verify("alice", code.clone()).outcome, Outcome::Accepted);
    h.remove("alice");
    // The same secret again, for the same user and for another one, and
    // with a trailing zero byte, which HMAC does not see.
    h.enroll("alice");
    h.enroll("bob");
    let padded = h.admin(AdminOp::Enroll {
        user: "carol".into(),
        token: totp_token(&format!("{SEED_HEX}00")),
        backup: None,
    });
    assert!(matches!(padded, Response::Enrolled { .. }), "{padded:?}");
    for user in ["alice", "bob", "carol"] {
        let verdict = h.verify(user, code.clone());
        assert_eq!(verdict.outcome, Outcome::Rejected, "{user}");
        assert_eq!(verdict.reason, Reason::ReusedCode, "{user}");
    }
    let next = code_at(STEP_START + PERIOD);
    for user in ["alice", "bob", "carol"] {
        assert_eq!(h.verify(user, next.clone()).outcome, Outcome::Accepted, "{user}");
    }
}

#[test]
fn unused_removed_secret_starts_afresh() {
    let mut h = harness(10);
    h.remove("alice");
    h.enroll("alice");
    assert_eq!(h.verify("alice", code_at(STEP_START)).outcome, Outcome::Accepted);
}

#[test]
fn retired_secret_expires_after_day() {
    let mut h = harness(10);
    assert_eq!(h.verify("alice", code_at(STEP_START)).outcome, Outcome::Accepted);
    h.remove("alice");
    h.clock.set(STEP_START + 24 * 3600);
    // Another removal drops expired records.
    h.enroll("bob");
    h.remove("bob");
    // Back in time, only to show that the record is gone: its code would be
    // rejected as used if it were still there.
    h.clock.set(STEP_START);
    h.enroll("alice");
    assert_eq!(h.verify("alice", code_at(STEP_START)).outcome, Outcome::Accepted);
}

#[test]
fn hotp_counter_over_limit_rejected() {
    let mut h = harness(10);
    let mut token = totp_token("ffeeddccbbaa99887766554433221100ffeeddcc");
    token.kind = TokenKind::Hotp;
    token.counter = freeauth_otp::MAX_COUNTER + 1;
    let rejected = h.admin(AdminOp::Enroll {
        user: "hal".into(),
        token: token.clone(),
        backup: None,
    });
    assert!(
        matches!(&rejected, Response::Error { message, .. } if message.contains("at most")),
        "{rejected:?}"
    );
    token.counter = freeauth_otp::MAX_COUNTER;
    let enrolled = h.admin(AdminOp::Enroll {
        user: "hal".into(),
        token,
        backup: None,
    });
    assert!(matches!(enrolled, Response::Enrolled { .. }), "{enrolled:?}");
    let secret = Secret::from_hex("ffeeddccbbaa99887766554433221100ffeeddcc").unwrap();
    let code = freeauth_otp::hotp(&secret, freeauth_otp::MAX_COUNTER, 6, Algorithm::Sha1).to_string();
    assert_eq!(
        h.verify("hal", code).outcome,
        Outcome::Accepted,
        "the last counter still works"
    );
}

#[test]
fn last_step_far_ahead_rejected() {
    let mut h = harness(10);
    let current = STEP_START / PERIOD;
    for last_step in [current + 2 * 2880, 1 << 62] {
        let mut token = totp_token("ffeeddccbbaa99887766554433221100ffeeddcc");
        token.last_step = Some(last_step);
        let rejected = h.admin(AdminOp::Enroll {
            user: "tom".into(),
            token,
            backup: None,
        });
        assert!(
            matches!(&rejected, Response::Error { message, .. } if message.contains("more than a day after")),
            "{last_step}: {rejected:?}"
        );
    }
    let mut token = totp_token("ffeeddccbbaa99887766554433221100ffeeddcc");
    token.last_step = Some(current + 1);
    let enrolled = h.admin(AdminOp::Enroll {
        user: "tom".into(),
        token,
        backup: None,
    });
    assert!(matches!(enrolled, Response::Enrolled { .. }), "{enrolled:?}");
}

/// An admin request rolls back its savepoint between two uses of the same
/// code in one batch. The batch's prepared statements and the noted row
/// states must not let the second use in.
#[test]
fn rolled_back_admin_between_reuses() {
    let mut h = harness(10);
    let code = code_at(STEP_START);

    // The second token's secret is invalid, so the whole import rolls back.
    let mut bad = totp_token(SEED_HEX);
    bad.secret_hex = "zz".into();
    let import = AdminOp::Import {
        tokens: vec![("dave".into(), totp_token(SEED_HEX)), ("erin".into(), bad)],
        backups: Vec::new(),
    };

    let mut answers = Vec::new();
    let verify = |answers: &mut Vec<_>| {
        let (reply, answer) = oneshot::channel();
        answers.push(answer);
        Job::Verify {
            user: "alice".into(),
            code: SecretString::new(code.as_str()),
            tail: false,
            source: None,
            reply,
        }
    };
    let first = verify(&mut answers);
    let second = verify(&mut answers);
    let (reply, mut imported) = oneshot::channel();

    h.engine
        .run_batch(vec![first, Job::Admin { op: import, reply }, second]);
    assert!(matches!(imported.try_recv().unwrap(), Response::Error { .. }));

    let outcomes: Vec<Outcome> = answers
        .into_iter()
        .map(|mut a| a.try_recv().unwrap().unwrap().outcome)
        .collect();
    assert_eq!(outcomes, vec![Outcome::Accepted, Outcome::Rejected]);
    assert_eq!(h.verify("alice", code_at(STEP_START)).outcome, Outcome::Rejected);
}

/// Seed of the 8-digit HOTP token that [`enroll_hotp8`] adds.
const HOTP8_SEED_HEX: &str = "0102030405060708090a0b0c0d0e0f1011121314";

/// Gives `user` an 8-digit HOTP token besides the 6-digit TOTP one.
fn enroll_hotp8(h: &mut Harness, user: &str) {
    let mut token = totp_token(HOTP8_SEED_HEX);
    token.kind = TokenKind::Hotp;
    token.digits = 8;
    let op = AdminOp::Enroll {
        user: user.into(),
        token,
        backup: None,
    };
    assert!(matches!(h.admin(op), Response::Enrolled { .. }));
}

fn hotp8_code(counter: u64) -> String {
    let secret = Secret::from_hex(HOTP8_SEED_HEX).unwrap();
    freeauth_otp::hotp(&secret, counter, 8, Algorithm::Sha1).to_string()
}

#[test]
fn tail_checks_each_token_length() {
    let mut h = harness(10);
    enroll_hotp8(&mut h, "alice");
    let source = "pam:192.0.2.7";
    // Four logins with a 6-digit code after a password that ends in
    // digits: its last 8 characters are digits too, but each login costs
    // no failure, so the source (threshold 4) stays open.
    for n in 0..4 {
        let now = STEP_START + n * PERIOD;
        h.clock.set(now);
        let verdict = h.verify_tail("alice", &format!("secret12{}", code_at(now)), source);
        assert_eq!(verdict.outcome, Outcome::Accepted, "login {n}");
        assert_eq!(verdict.code_length, Some(6), "login {n}");
    }
    let hotp = h.verify_tail("alice", &format!("secret{}", hotp8_code(0)), source);
    assert_eq!(hotp.outcome, Outcome::Accepted);
    assert_eq!(hotp.code_length, Some(8));
    // A wrong end counts one failure, though two lengths were tried.
    let wrong = h.verify_tail("alice", "secret12000000", source);
    assert_eq!((wrong.outcome, wrong.failures), (Outcome::Rejected, 1));
    let after = h.verify_from("alice", code_at(STEP_START + 4 * PERIOD), source);
    assert_eq!(after.outcome, Outcome::Accepted, "the source was locked");
}

#[test]
fn tail_too_short_or_cut_is_rejected() {
    let mut h = harness(10);
    let source = "pam:192.0.2.8";
    let short = h.verify_tail("alice", &code_at(STEP_START)[1..], source);
    assert_eq!(short.outcome, Outcome::Rejected);
    // A multi-byte character across the cut does not panic.
    let cut = h.verify_tail("alice", "x\u{e9}12345", source);
    assert_eq!(cut.outcome, Outcome::Rejected);
    let code = h.verify_tail("alice", &format!("\u{e9}{}", code_at(STEP_START)), source);
    assert_eq!(code.outcome, Outcome::Accepted);
}

#[test]
fn tail_checks_backup_codes() {
    let mut h = harness(10);
    h.enroll_with_backup("bea");
    let first = h.verify_tail("bea", "pass12345678", "pam:192.0.2.9");
    let Outcome::CheckBackup { salt, hashes } = first.outcome else {
        panic!("no backup check: {first:?}");
    };
    let hash = freeauth_agentd::keys::hash_backup_code("12345678", &salt).unwrap();
    let (id, stored) = hashes.into_iter().find(|(_, stored)| stored[..] == hash[..]).unwrap();
    let verdict = h.finish_backup("bea", BackupCheck::Matched(BackupMatch { id, hash: stored }));
    assert_eq!(verdict.outcome, Outcome::Accepted);
    assert_eq!(verdict.code_length, Some(8));
}

#[test]
fn disabled_account_rejects_every_code() {
    let mut h = harness(10);
    h.enroll_with_backup("bea");
    h.disable("alice");
    h.disable("bea");

    let token_code = h.verify("alice", code_at(STEP_START));
    assert_eq!(
        (token_code.outcome, token_code.reason),
        (Outcome::NoToken, Reason::NoActiveToken)
    );
    let backup_code = h.verify("bea", "12345678".into());
    assert_eq!(
        (backup_code.outcome, backup_code.reason),
        (Outcome::NoToken, Reason::NoActiveToken),
        "no backup-code check starts without an enabled token"
    );

    let lookup = h.lookup("alice");
    assert!(lookup.disabled);
    assert!(!lookup.enrolled);
    assert!(lookup.code_lengths.is_empty(), "{:?}", lookup.code_lengths);
}

#[test]
fn accepted_code_resets_failure_count() {
    let mut h = harness(10);
    h.verify("alice", "000000".into());
    h.verify("alice", "000000".into());
    assert_eq!(h.verify("alice", code_at(STEP_START)).outcome, Outcome::Accepted);
    let next = h.verify("alice", "000000".into());
    assert_eq!(next.failures, 1);
}

#[test]
fn backup_code_resets_failure_count() {
    let mut h = harness(10);
    h.enroll_with_backup("bea");
    h.verify("bea", "000000".into());
    h.verify("bea", "000000".into());
    let matched = h.begin_backup("bea", "12345678");
    assert_eq!(
        h.finish_backup("bea", BackupCheck::Matched(matched)).outcome,
        Outcome::Accepted
    );
    let next = h.verify("bea", "000000".into());
    assert_eq!(next.failures, 1);
}

/// Two checks of one backup code overlap, as with pipelined requests, so
/// both hash the code before either finishes.
#[test]
fn overlapping_backup_checks_accept_once() {
    let mut h = harness(10);
    h.enroll_with_backup("bea");
    let first = h.begin_backup("bea", "12345678");
    let second = h.begin_backup("bea", "12345678");
    assert_eq!(
        h.finish_backup("bea", BackupCheck::Matched(first)).outcome,
        Outcome::Accepted
    );
    let again = h.finish_backup("bea", BackupCheck::Matched(second));
    assert_eq!((again.outcome, again.reason), (Outcome::Rejected, Reason::ReusedCode));
}

#[test]
fn used_backup_code_not_offered_again() {
    let mut h = harness(10);
    let salt = b"0123456789abcdef";
    let hash = |code: &str| freeauth_agentd::keys::hash_backup_code(code, salt).unwrap();
    let backup = freeauth_agentd::admin::BackupSet {
        salt: salt.to_vec(),
        hashes: vec![hash("12345678"), hash("87654321")],
    };
    let enrolled = h.admin(AdminOp::Enroll {
        user: "bea".into(),
        token: totp_token("00112233445566778899aabbccddeeff00112233"),
        backup: Some(backup),
    });
    assert!(matches!(enrolled, Response::Enrolled { .. }), "{enrolled:?}");

    let used = h.begin_backup("bea", "12345678");
    assert_eq!(
        h.finish_backup("bea", BackupCheck::Matched(used.clone())).outcome,
        Outcome::Accepted
    );
    let retry = h.verify("bea", "12345678".into());
    let Outcome::CheckBackup { hashes, .. } = retry.outcome else {
        panic!("no backup check: {retry:?}");
    };
    assert_eq!(hashes.len(), 1, "one code is left");
    assert!(hashes.iter().all(|(_, stored)| stored[..] != used.hash[..]));

    let last = h.begin_backup("bea", "87654321");
    assert_eq!(
        h.finish_backup("bea", BackupCheck::Matched(last)).outcome,
        Outcome::Accepted
    );
    assert_eq!(h.lookup("bea").code_lengths, [6], "no backup code is left");
    let spent = h.verify("bea", "87654321".into());
    assert_eq!(spent.outcome, Outcome::Rejected, "no backup-code check without codes");
}

#[test]
fn reused_hotp_code_reported_reused() {
    let mut h = harness(10);
    enroll_hotp8(&mut h, "alice");
    assert_eq!(h.verify("alice", hotp8_code(0)).outcome, Outcome::Accepted);
    let again = h.verify("alice", hotp8_code(0));
    assert_eq!((again.outcome, again.reason), (Outcome::Rejected, Reason::ReusedCode));
}

#[test]
fn unknown_name_count_survives_restart() {
    let mut h = harness(3);
    h.verify("mallory", "000000".into());
    h.verify("mallory", "000000".into());
    let mut h = h.restart(3);
    let third = h.verify("mallory", "000000".into());
    assert_eq!((third.reason, third.failures), (Reason::UnknownUser, 3));
    let locked = h.verify("mallory", "000000".into());
    assert_eq!(locked.failures, 3, "the lock stops the count");
    assert!(!locked.counted);
}

#[test]
fn lookup_shows_lock_of_unknown_name() {
    let mut h = harness(3);
    for _ in 0..3 {
        h.verify("mallory", "000000".into());
    }
    let lookup = h.lookup("mallory");
    assert!(!lookup.enrolled);
    assert!(lookup.locked, "a name without an account locks like an account");
}

/// Two accounts used one secret up to different steps. When the account
/// with the later use is removed first, the record still keeps that use.
#[test]
fn retired_secret_keeps_latest_use() {
    let mut h = harness(10);
    h.enroll("bob");
    assert_eq!(h.verify("bob", code_at(STEP_START)).outcome, Outcome::Accepted);
    h.clock.set(STEP_START + PERIOD);
    let latest = code_at(STEP_START + PERIOD);
    assert_eq!(h.verify("alice", latest.clone()).outcome, Outcome::Accepted);
    h.remove("alice");
    h.remove("bob");

    h.enroll("carol");
    let verdict = h.verify("carol", latest);
    assert_eq!(
        (verdict.outcome, verdict.reason),
        (Outcome::Rejected, Reason::ReusedCode)
    );
}

/// The record of a removed secret lasts a day even when the window would
/// let it go sooner, so a clock set back within that day brings back no
/// used code.
#[test]
fn retired_secret_outlives_its_window() {
    let mut h = harness(10);
    let code = code_at(STEP_START);
    assert_eq!(h.verify("alice", code.clone()).outcome, Outcome::Accepted);
    h.remove("alice");
    h.clock.set(STEP_START + 10 * PERIOD);
    h.enroll("alice");
    h.clock.set(STEP_START);
    assert_eq!(h.verify("alice", code).outcome, Outcome::Rejected);
}

#[test]
fn last_step_one_day_ahead_accepted() {
    let mut h = harness(10);
    let day_of_steps = 86_400 / PERIOD;
    let mut token = totp_token("ffeeddccbbaa99887766554433221100ffeeddcc");
    token.last_step = Some(STEP_START / PERIOD + day_of_steps);
    let enrolled = h.admin(AdminOp::Enroll {
        user: "tom".into(),
        token,
        backup: None,
    });
    assert!(matches!(enrolled, Response::Enrolled { .. }), "{enrolled:?}");
}

/// Enrols `user` with a Mobile-OTP token and returns a function that
/// computes the token's code for a time step.
fn enroll_motp(h: &mut Harness, user: &str, secret_hex: &str, pin: &str) -> impl Fn(u64) -> String {
    let token = NewToken {
        kind: TokenKind::Motp,
        algorithm: HashAlgorithm::Sha1,
        digits: 6,
        period: 10,
        counter: 0,
        last_step: None,
        secret_hex: secret_hex.into(),
        pin: Some(pin.into()),
        label: None,
    };
    let op = AdminOp::Enroll {
        user: user.into(),
        token,
        backup: None,
    };
    let enrolled = h.admin(op);
    assert!(matches!(enrolled, Response::Enrolled { .. }), "{enrolled:?}");
    let secret = Secret::from_hex(secret_hex).unwrap();
    let pin = Secret::new(pin.as_bytes().to_vec());
    move |step| motp(&secret, &pin, step).to_string()
}

/// Mobile-OTP tokens have a window of their own (`motp_steps`, 18 steps of
/// 10 s in these settings), wider than the TOTP window of 1 step.
#[test]
fn motp_window_uses_motp_steps() {
    let mut h = harness(10);
    let server_step = STEP_START / 10;
    let mo_code = enroll_motp(&mut h, "mo", "0011223344556677", "1234");
    let edge = h.verify("mo", mo_code(server_step + 18));
    assert_eq!(edge.outcome, Outcome::Accepted);
    assert!(matches!(edge.reason, Reason::AcceptedToken { offset: 18, .. }));

    let mp_code = enroll_motp(&mut h, "mp", "8899aabbccddeeff", "4321");
    assert_eq!(h.verify("mp", mp_code(server_step + 19)).outcome, Outcome::Rejected);
}

/// Resynchronises the 8-digit HOTP token with the codes of counters 50 and
/// 51, which are past the login look-ahead of 10 and inside `hotp_resync`
/// (100).
#[test]
fn hotp_resync_stores_next_counter() {
    let mut h = harness(10);
    enroll_hotp8(&mut h, "alice");
    let resynced = h.admin(AdminOp::Resync {
        user: "alice".into(),
        token: None,
        first: SecretString::new(hotp8_code(50).as_str()),
        second: SecretString::new(hotp8_code(51).as_str()),
    });
    assert!(
        matches!(
            resynced,
            Response::Resynced {
                next_counter: Some(52),
                ..
            }
        ),
        "{resynced:?}"
    );

    let second = h.verify("alice", hotp8_code(51));
    assert_eq!((second.outcome, second.reason), (Outcome::Rejected, Reason::ReusedCode));
    assert_eq!(h.verify("alice", hotp8_code(52)).outcome, Outcome::Accepted);
}

/// A wrong backup code from a source with earlier failures gets the delay
/// of the source's count, though the account failed only once.
#[test]
fn wrong_backup_code_waits_for_source() {
    let mut h = harness(10);
    h.enroll_with_backup("bea");
    let source = "pam:192.0.2.90";
    h.fail_from("mallory", source, 2);
    let guess = h.verify_from("bea", "99999999".into(), source);
    assert!(matches!(guess.outcome, Outcome::CheckBackup { .. }), "{guess:?}");

    let (reply, mut answer) = oneshot::channel();
    h.engine.run_batch(vec![Job::BackupResult {
        user: "bea".into(),
        matched: BackupCheck::NoMatch,
        source: Some(source.into()),
        reply,
    }]);
    let verdict = answer.try_recv().unwrap().unwrap();
    assert_eq!((verdict.outcome, verdict.failures), (Outcome::Rejected, 1));
    assert_eq!(verdict.delay, Duration::from_secs(2), "3 failures of the source");
}

/// Starts a verification job of `code` for `user`, and returns the
/// receiver of its verdict.
fn verify_job(
    user: &str,
    code: String,
) -> (
    Job,
    oneshot::Receiver<Result<Verdict, freeauth_agentd::engine::EngineError>>,
) {
    let (reply, answer) = oneshot::channel();
    let job = Job::Verify {
        user: user.into(),
        code: SecretString::new(code.as_str()),
        tail: false,
        source: None,
        reply,
    };
    (job, answer)
}

/// A rekey queued between verifications ends their batch and runs alone.
/// The jobs after it seal and open under the new key, which fits the
/// database from then on.
#[test]
fn rekey_runs_alone_between_batches() {
    use freeauth_agentd::engine::EngineCore;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = dir.path().join("seed.key");
    let new_key = freeauth_agentd::keys::new_key_path(&key);
    SeedCipher::create(&new_key).unwrap();
    let old = SeedCipher::new(&[9u8; 32]);
    let unknown_digest = old.digest(b"ghost");
    let clock = Arc::new(ManualClock::new(STEP_START));
    let engine = Engine::new(Store::open(&state).unwrap(), old, clock.clone(), settings(5)).with_key_file(&key);
    let mut harness = Harness {
        engine,
        clock: clock.clone(),
        _dir: dir,
    };
    harness.enroll("alice");
    let core = EngineCore::new(harness.engine);

    let (jobs, receiver) = tokio::sync::mpsc::channel(16);
    let (first, first_verdict) = verify_job("alice", code_at(STEP_START));
    let (rekey_reply, mut rekeyed) = oneshot::channel();
    let (again, again_verdict) = verify_job("alice", code_at(STEP_START));
    let (enroll_reply, mut enrolled) = oneshot::channel();
    let token = NewToken {
        kind: TokenKind::Motp,
        algorithm: HashAlgorithm::Sha1,
        digits: 6,
        period: 10,
        counter: 0,
        last_step: None,
        secret_hex: "5ec4e7de5ec4e7de".into(),
        pin: Some("9731".into()),
        label: None,
    };
    for job in [
        first,
        Job::Admin {
            op: AdminOp::Rekey,
            reply: rekey_reply,
        },
        again,
        Job::Admin {
            op: AdminOp::Enroll {
                user: "mo".into(),
                token,
                backup: None,
            },
            reply: enroll_reply,
        },
    ] {
        jobs.try_send(job).unwrap();
    }
    drop(jobs);
    core.run(receiver);

    let outcome = |answer: oneshot::Receiver<Result<Verdict, _>>| answer.blocking_recv().unwrap().unwrap().outcome;
    assert_eq!(outcome(first_verdict), Outcome::Accepted);
    assert_eq!(rekeyed.try_recv().unwrap(), Response::Rekeyed { tokens: 1 });
    assert_eq!(outcome(again_verdict), Outcome::Rejected, "the code stays used");
    assert!(matches!(enrolled.try_recv().unwrap(), Response::Enrolled { .. }));
    drop(core);

    // A new engine with the new key opens both tokens: the one sealed
    // again and the one enrolled after the rekey.
    let cipher = SeedCipher::load(&new_key).unwrap();
    let store = Store::open(&state).unwrap();
    assert_ne!(cipher.digest(b"ghost"), unknown_digest, "the digest key changes");
    let no_records = store.db().meta("previous_digest_keys").unwrap();
    assert!(no_records.is_none(), "no removed secret needs the old digest key");
    let check = store.db().meta("key_check").unwrap().unwrap();
    assert!(cipher.fits(&check));
    assert!(!SeedCipher::new(&[9u8; 32]).fits(&check), "the old key no longer fits");

    clock.set(STEP_START + PERIOD);
    let mut reopened = Harness {
        engine: Engine::new(store, cipher, clock.clone(), settings(5)),
        clock,
        _dir: tempfile::tempdir().unwrap(),
    };
    assert_eq!(
        reopened.verify("alice", code_at(STEP_START + PERIOD)).outcome,
        Outcome::Accepted
    );
    let wrong = reopened.verify("mo", "000000".into());
    assert_eq!(wrong.reason, Reason::WrongCode, "the PIN and seed open: {wrong:?}");
}

/// Builds an engine on the database in `state` with the seed key in the
/// file `key`, as the agent does at start.
fn engine_from_files(state: &std::path::Path, key: &std::path::Path, clock: Arc<ManualClock>) -> Engine {
    let store = Store::open(state).unwrap();
    let mut cipher = SeedCipher::load(key).unwrap();
    if let Some(sealed) = store.db().meta("previous_digest_keys").unwrap() {
        assert!(cipher.adopt_previous_digest_keys(&sealed));
    }
    Engine::new(store, cipher, clock, settings(5)).with_key_file(key)
}

/// The record of a removed secret outlives a rekey, also across a
/// restart: enrolled again, the secret does not accept its used codes.
/// Once the record has expired, the next rekey drops the old digest key.
#[test]
fn retired_secret_survives_rekey() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = dir.path().join("seed.key");
    let new_key = freeauth_agentd::keys::new_key_path(&key);
    SeedCipher::create(&key).unwrap();
    let clock = Arc::new(ManualClock::new(STEP_START));
    // Harness over the files in `dir`, which outlives every harness.
    let open = |clock: &Arc<ManualClock>| Harness {
        engine: engine_from_files(&state, &key, clock.clone()),
        clock: clock.clone(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let rekey = |h: &mut Harness| {
        SeedCipher::create(&new_key).unwrap();
        assert_eq!(h.engine.rekey(), Response::Rekeyed { tokens: 0 });
        std::fs::rename(&new_key, &key).unwrap();
    };

    let mut h = open(&clock);
    h.enroll("alice");
    let used = code_at(STEP_START);
    assert_eq!(h.verify("alice", used.clone()).outcome, Outcome::Accepted);
    h.remove("alice");
    rekey(&mut h);
    drop(h);

    let mut h = open(&clock);
    h.enroll("alice");
    let again = h.verify("alice", used);
    assert_eq!((again.outcome, again.reason), (Outcome::Rejected, Reason::ReusedCode));
    h.remove("alice");

    // Two days later every record has expired.
    clock.set(STEP_START + 2 * 86_400);
    rekey(&mut h);
    drop(h);
    let store = Store::open(&state).unwrap();
    assert!(store.db().meta("previous_digest_keys").unwrap().is_none());
}

/// A rekey clears the failure counts of names without an account, whose
/// digests it cannot make again under the new key.
#[test]
fn rekey_clears_unknown_name_counts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key = dir.path().join("seed.key");
    SeedCipher::create(&key).unwrap();
    let clock = Arc::new(ManualClock::new(STEP_START));
    let mut h = Harness {
        engine: engine_from_files(&state, &key, clock.clone()),
        clock,
        _dir: dir,
    };
    for _ in 0..2 {
        h.verify("mallory", "000000".into());
    }
    SeedCipher::create(&freeauth_agentd::keys::new_key_path(&key)).unwrap();
    assert_eq!(h.engine.rekey(), Response::Rekeyed { tokens: 0 });
    let first = h.verify("mallory", "000000".into());
    assert_eq!((first.reason, first.failures), (Reason::UnknownUser, 1));
}
