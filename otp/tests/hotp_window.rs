//! HOTP verification: look-ahead window edges, counter updates, replay
//! protection and counter overflow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use freeauth_otp::{
    hotp, verify, verify_every_candidate, Algorithm, Charset, Code, Kind, Matched, Params, Secret, State, Window,
};

fn params() -> Params {
    Params {
        kind: Kind::Hotp,
        algorithm: Algorithm::Sha256,
        digits: 8,
        period: 30,
    }
}

fn rfc_seed() -> Secret {
    Secret::new(b"12345678901234567890".to_vec())
}

fn lookahead(counters: u32) -> Window {
    Window {
        steps: 1,
        hotp_lookahead: counters,
    }
}

fn code_for(secret: &Secret, counter: u64) -> Code {
    let text = hotp(secret, counter, params().digits, params().algorithm);
    Code::parse(&text, Charset::Decimal).unwrap()
}

/// Verifies the RFC seed's code for `counter` with a look-ahead of 10.
fn check(state: &State, counter: u64) -> Option<Matched> {
    let secret = rfc_seed();
    verify(
        &params(),
        &secret,
        None,
        state,
        &lookahead(10),
        0,
        &code_for(&secret, counter),
    )
}

fn at_counter(counter: u64) -> State {
    State {
        counter,
        ..State::default()
    }
}

#[test]
fn accepts_expected_counter() {
    let state = State {
        counter: 5,
        last_step: Some(9),
        drift: 2,
    };
    let matched = check(&state, 5).unwrap();
    assert_eq!(matched.offset, 0);
    assert_eq!(matched.state.counter, 6);
    assert_eq!(matched.state.last_step, Some(9));
    assert_eq!(matched.state.drift, 2);
}

#[test]
fn accepts_counter_at_lookahead_edge() {
    let matched = check(&at_counter(5), 15).unwrap();
    assert_eq!(matched.offset, 10);
    assert_eq!(matched.state.counter, 16);
}

#[test]
fn rejects_counter_past_lookahead() {
    assert_eq!(check(&at_counter(5), 16), None);
}

#[test]
fn rejects_counter_before_expected() {
    assert_eq!(check(&at_counter(5), 4), None);
}

#[test]
fn rejects_reused_counter() {
    let first = check(&at_counter(5), 7).unwrap();
    assert_eq!(first.state.counter, 8);
    assert_eq!(check(&first.state, 7), None);
    assert_eq!(check(&first.state, 6), None);
    assert!(check(&first.state, 8).is_some());
}

#[test]
fn zero_lookahead_accepts_expected_only() {
    let secret = rfc_seed();
    let state = at_counter(5);
    let exact = verify(
        &params(),
        &secret,
        None,
        &state,
        &lookahead(0),
        0,
        &code_for(&secret, 5),
    );
    assert!(exact.is_some());
    let next = verify(
        &params(),
        &secret,
        None,
        &state,
        &lookahead(0),
        0,
        &code_for(&secret, 6),
    );
    assert_eq!(next, None);
}

#[test]
fn lowest_matching_counter_wins() {
    // This key's SHA-1 codes for counters 3 and 19 are equal. The key is
    // index 2267 as 8 big-endian bytes, then "freeauth-test", found by a
    // search for equal codes.
    let mut key = 2267u64.to_be_bytes().to_vec();
    key.extend_from_slice(b"freeauth-test");
    let secret = Secret::new(key);
    assert_eq!(hotp(&secret, 3, 6, Algorithm::Sha1).as_str(), "073807");
    assert_eq!(hotp(&secret, 19, 6, Algorithm::Sha1).as_str(), "073807");

    let sha1_params = Params {
        algorithm: Algorithm::Sha1,
        digits: 6,
        ..params()
    };
    let code = Code::parse("073807", Charset::Decimal).unwrap();
    let matched = verify(&sha1_params, &secret, None, &State::default(), &lookahead(20), 0, &code);
    let matched = matched.unwrap();
    assert_eq!(matched.offset, 3);
    assert_eq!(matched.state.counter, 4);
}

#[test]
fn stops_before_counter_overflow() {
    let near_end = at_counter(u64::MAX - 3);
    let matched = check(&near_end, u64::MAX - 1).unwrap();
    assert_eq!(matched.state.counter, u64::MAX);
    assert_eq!(matched.offset, 2);

    // Accepting u64::MAX would leave no next counter.
    assert_eq!(check(&near_end, u64::MAX), None);
    assert_eq!(check(&at_counter(u64::MAX), u64::MAX), None);
}

#[test]
fn ignores_clock_and_drift() {
    let secret = rfc_seed();
    let code = code_for(&secret, 3);
    let state = State {
        counter: 3,
        last_step: Some(u64::MAX),
        drift: i64::MIN,
    };
    for now in [0, 1_700_000_000, u64::MAX] {
        let matched = verify(&params(), &secret, None, &state, &lookahead(0), now, &code);
        assert!(matched.is_some(), "time {now}");
    }
}

#[test]
fn rejects_wrong_secret() {
    let other = Secret::new(b"12345678901234567891".to_vec());
    let code = code_for(&rfc_seed(), 5);
    let matched = verify(&params(), &other, None, &at_counter(5), &lookahead(10), 0, &code);
    assert_eq!(matched, None);
}

#[test]
fn every_candidate_search_agrees_with_verify() {
    let secret = rfc_seed();
    let state = State {
        counter: 20,
        last_step: None,
        drift: 0,
    };
    // Counters below, inside and beyond the window.
    for counter in 15..35 {
        let code = code_for(&secret, counter);
        let quick = verify(&params(), &secret, None, &state, &lookahead(10), 0, &code);
        let every = verify_every_candidate(&params(), &secret, None, &state, &lookahead(10), 0, &code);
        assert_eq!(quick, every, "counter {counter}");
        assert_eq!(quick.is_some(), (20..=30).contains(&counter), "counter {counter}");
    }
}
