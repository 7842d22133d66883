//! TOTP verification at exact time-step boundaries: window size, drift
//! tracking, replay protection and the choice between several matches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use freeauth_otp::{
    hotp, verify, Algorithm, Charset, Clock, Code, Kind, ManualClock, Matched, Params, Secret, State, Window,
};

const PERIOD: u32 = 30;
/// Server time step at the start of most tests.
const SERVER_STEP: u64 = 1000;

fn params() -> Params {
    Params {
        kind: Kind::Totp,
        algorithm: Algorithm::Sha1,
        digits: 6,
        period: PERIOD,
    }
}

fn rfc_seed() -> Secret {
    Secret::new(b"12345678901234567890".to_vec())
}

/// Returns the time of the first second of `step`.
fn start_of(step: u64) -> u64 {
    step * u64::from(PERIOD)
}

fn code_for(secret: &Secret, step: u64) -> Code {
    Code::parse(&hotp(secret, step, 6, Algorithm::Sha1), Charset::Decimal).unwrap()
}

fn window(steps: u32) -> Window {
    Window {
        steps,
        hotp_lookahead: 0,
    }
}

/// Verifies the RFC seed's code for `step` at time `now`.
fn check(state: &State, steps: u32, now: u64, step: u64) -> Option<Matched> {
    let secret = rfc_seed();
    let code = code_for(&secret, step);
    verify(&params(), &secret, None, state, &window(steps), now, &code)
}

#[test]
fn accepts_adjacent_steps_with_window_one() {
    let clock = ManualClock::new(start_of(SERVER_STEP));
    let state = State {
        counter: 7,
        ..State::default()
    };
    for step in [SERVER_STEP - 1, SERVER_STEP, SERVER_STEP + 1] {
        let matched = check(&state, 1, clock.unix_time(), step).expect("step in window");
        let offset = step as i64 - SERVER_STEP as i64;
        assert_eq!(matched.offset, offset, "step {step}");
        assert_eq!(matched.state.last_step, Some(step), "step {step}");
        assert_eq!(matched.state.drift, offset, "step {step}");
        assert_eq!(matched.state.counter, 7, "step {step}");
    }
}

#[test]
fn rejects_steps_outside_window() {
    let clock = ManualClock::new(start_of(SERVER_STEP));
    let state = State::default();
    assert_eq!(check(&state, 1, clock.unix_time(), SERVER_STEP - 2), None);
    assert_eq!(check(&state, 1, clock.unix_time(), SERVER_STEP + 2), None);
}

#[test]
fn window_moves_at_step_boundary() {
    let state = State::default();
    let clock = ManualClock::new(start_of(SERVER_STEP) - 1);

    // Last second of step 999: 998 to 1000 are in the window.
    assert!(check(&state, 1, clock.unix_time(), SERVER_STEP - 2).is_some());
    assert!(check(&state, 1, clock.unix_time(), SERVER_STEP).is_some());
    assert_eq!(check(&state, 1, clock.unix_time(), SERVER_STEP + 1), None);

    // First second of step 1000: 999 to 1001 are in the window.
    clock.advance(1);
    assert_eq!(check(&state, 1, clock.unix_time(), SERVER_STEP - 2), None);
    assert!(check(&state, 1, clock.unix_time(), SERVER_STEP + 1).is_some());

    // Last second of step 1000: still the same window.
    clock.advance(u64::from(PERIOD) - 1);
    assert!(check(&state, 1, clock.unix_time(), SERVER_STEP - 1).is_some());
    assert_eq!(check(&state, 1, clock.unix_time(), SERVER_STEP + 2), None);
}

#[test]
fn zero_window_accepts_current_step_only() {
    let clock = ManualClock::new(start_of(SERVER_STEP) + 29);
    let state = State::default();
    assert!(check(&state, 0, clock.unix_time(), SERVER_STEP).is_some());
    assert_eq!(check(&state, 0, clock.unix_time(), SERVER_STEP - 1), None);
    assert_eq!(check(&state, 0, clock.unix_time(), SERVER_STEP + 1), None);
}

#[test]
fn rejects_reused_step() {
    let clock = ManualClock::new(start_of(SERVER_STEP));
    let first = check(&State::default(), 1, clock.unix_time(), SERVER_STEP).unwrap();

    assert_eq!(check(&first.state, 1, clock.unix_time(), SERVER_STEP), None);

    // A step later the old code is still inside the window, but replayed.
    clock.advance(u64::from(PERIOD));
    assert_eq!(check(&first.state, 1, clock.unix_time(), SERVER_STEP), None);
    assert!(check(&first.state, 1, clock.unix_time(), SERVER_STEP + 1).is_some());
}

#[test]
fn rejects_step_before_last_accepted() {
    let clock = ManualClock::new(start_of(SERVER_STEP));
    let ahead = check(&State::default(), 1, clock.unix_time(), SERVER_STEP + 1).unwrap();
    assert_eq!(ahead.state.last_step, Some(SERVER_STEP + 1));

    assert_eq!(check(&ahead.state, 1, clock.unix_time(), SERVER_STEP), None);
    assert_eq!(check(&ahead.state, 1, clock.unix_time(), SERVER_STEP - 1), None);
}

#[test]
fn window_centres_on_stored_drift() {
    let clock = ManualClock::new(start_of(SERVER_STEP));
    let state = State {
        drift: 3,
        ..State::default()
    };
    for step in [SERVER_STEP + 2, SERVER_STEP + 3, SERVER_STEP + 4] {
        let matched = check(&state, 1, clock.unix_time(), step).expect("step in window");
        assert_eq!(matched.offset, step as i64 - SERVER_STEP as i64, "step {step}");
        assert_eq!(matched.state.drift, matched.offset, "step {step}");
    }
    for step in [SERVER_STEP, SERVER_STEP + 1, SERVER_STEP + 5] {
        assert_eq!(check(&state, 1, clock.unix_time(), step), None, "step {step}");
    }
}

#[test]
fn drift_learned_from_accepted_code() {
    let clock = ManualClock::new(start_of(SERVER_STEP));
    // The token's clock runs one step ahead.
    let first = check(&State::default(), 1, clock.unix_time(), SERVER_STEP + 1).unwrap();
    assert_eq!(first.state.drift, 1);

    // The token reaches two steps ahead. Without the learned drift that is
    // outside the window.
    clock.advance(u64::from(PERIOD));
    let token_step = SERVER_STEP + 3;
    assert_eq!(check(&State::default(), 1, clock.unix_time(), token_step), None);
    let second = check(&first.state, 1, clock.unix_time(), token_step).unwrap();
    assert_eq!(second.offset, 2);
    assert_eq!(second.state.drift, 2);
    assert_eq!(second.state.last_step, Some(token_step));
}

#[test]
fn negative_drift_is_learned() {
    let clock = ManualClock::new(start_of(SERVER_STEP));
    let matched = check(&State::default(), 1, clock.unix_time(), SERVER_STEP - 1).unwrap();
    assert_eq!(matched.offset, -1);
    assert_eq!(matched.state.drift, -1);
}

#[test]
fn nearest_match_wins_over_earlier() {
    // This key's codes for steps 991 and 1005 are equal.
    let secret = collision_key(18_638);
    assert_eq!(hotp(&secret, 991, 6, Algorithm::Sha1).as_str(), "188501");
    assert_eq!(hotp(&secret, 1005, 6, Algorithm::Sha1).as_str(), "188501");

    let code = code_for(&secret, 991);
    let now = start_of(SERVER_STEP);
    let matched = verify(&params(), &secret, None, &State::default(), &window(10), now, &code);
    assert_eq!(matched.unwrap().offset, 5);
}

#[test]
fn later_match_wins_a_tie() {
    // This key's codes for steps 991 and 1009 are equal, 9 steps either side.
    let secret = collision_key(47_109);
    assert_eq!(hotp(&secret, 991, 6, Algorithm::Sha1).as_str(), "627127");
    assert_eq!(hotp(&secret, 1009, 6, Algorithm::Sha1).as_str(), "627127");

    let code = code_for(&secret, 991);
    let now = start_of(SERVER_STEP);
    let matched = verify(&params(), &secret, None, &State::default(), &window(10), now, &code);
    assert_eq!(matched.unwrap().offset, 9);
}

/// Builds the 21-byte test key: `index` as 8 big-endian bytes, then
/// "freeauth-test". The indexes in these tests came from a search for keys
/// with equal codes, and the tests check that the codes are equal.
fn collision_key(index: u64) -> Secret {
    let mut bytes = index.to_be_bytes().to_vec();
    bytes.extend_from_slice(b"freeauth-test");
    Secret::new(bytes)
}

#[test]
fn rejects_code_of_wrong_length() {
    let secret = rfc_seed();
    let now = start_of(SERVER_STEP);
    let state = State::default();
    let eight_digits = hotp(&secret, SERVER_STEP, 8, Algorithm::Sha1);
    let code = Code::parse(&eight_digits, Charset::Decimal).unwrap();
    assert_eq!(verify(&params(), &secret, None, &state, &window(1), now, &code), None);

    let six_digits = hotp(&secret, SERVER_STEP, 6, Algorithm::Sha1);
    let code = Code::parse(&six_digits[1..], Charset::Decimal).unwrap();
    assert_eq!(verify(&params(), &secret, None, &state, &window(1), now, &code), None);
}

#[test]
fn rejects_unsupported_settings() {
    let secret = rfc_seed();
    let state = State::default();
    let zero_period = Params { period: 0, ..params() };
    let code = code_for(&secret, 1000);
    assert_eq!(
        verify(&zero_period, &secret, None, &state, &window(1), 1000, &code),
        None
    );

    let nine_digits = Params { digits: 9, ..params() };
    let code = Code::parse(&hotp(&secret, 1, 9, Algorithm::Sha1), Charset::Decimal).unwrap();
    assert_eq!(verify(&nine_digits, &secret, None, &state, &window(1), 30, &code), None);
}

#[test]
fn window_stops_at_step_zero() {
    let clock = ManualClock::new(0);
    let state = State {
        drift: -1,
        ..State::default()
    };
    let matched = check(&state, 2, clock.unix_time(), 1).unwrap();
    assert_eq!(matched.offset, 1);
    assert!(check(&state, 2, clock.unix_time(), 0).is_some());

    let far_behind = State {
        drift: -5,
        ..State::default()
    };
    assert_eq!(check(&far_behind, 2, clock.unix_time(), 0), None);
}

#[test]
fn extreme_times_do_not_overflow() {
    let secret = rfc_seed();
    let every_second = Params { period: 1, ..params() };
    let code = code_for(&secret, u64::MAX);
    let matched = verify(
        &every_second,
        &secret,
        None,
        &State::default(),
        &window(2),
        u64::MAX,
        &code,
    );
    assert_eq!(matched.unwrap().offset, 0);

    // With the largest drift, steps whose offset exceeds i64 are skipped.
    let state = State {
        drift: i64::MAX,
        ..State::default()
    };
    let code = code_for(&secret, i64::MAX as u64);
    let matched = verify(&every_second, &secret, None, &state, &window(2), 0, &code);
    assert_eq!(matched.unwrap().state.drift, i64::MAX);
    let code = code_for(&secret, i64::MAX as u64 + 1);
    assert_eq!(verify(&every_second, &secret, None, &state, &window(2), 0, &code), None);
}

#[test]
fn ignores_pin_and_counter() {
    let secret = rfc_seed();
    let pin = Secret::new(b"1234".to_vec());
    let state = State {
        counter: 99,
        ..State::default()
    };
    let code = code_for(&secret, SERVER_STEP);
    let now = start_of(SERVER_STEP);
    let matched = verify(&params(), &secret, Some(&pin), &state, &window(0), now, &code).unwrap();
    assert_eq!(matched.state.counter, 99);
}
