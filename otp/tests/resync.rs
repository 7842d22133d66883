//! Resynchronisation from two consecutive codes for HOTP, TOTP and
//! Mobile-OTP, at the edges of the search window.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use freeauth_otp::{
    hotp, motp, resync, verify, Algorithm, Charset, Code, Kind, Matched, Params, Secret, State, Window,
};

const PERIOD: u32 = 30;
const SERVER_STEP: u64 = 1000;
const NOW: u64 = SERVER_STEP * PERIOD as u64;

fn rfc_seed() -> Secret {
    Secret::new(b"12345678901234567890".to_vec())
}

fn params(kind: Kind) -> Params {
    Params {
        kind,
        algorithm: Algorithm::Sha1,
        digits: 6,
        period: PERIOD,
    }
}

fn code_for(counter_or_step: u64) -> Code {
    let text = hotp(&rfc_seed(), counter_or_step, 6, Algorithm::Sha1);
    Code::parse(&text, Charset::Decimal).unwrap()
}

/// Resynchronises the RFC seed with its codes for `first` and `second`.
fn resync_with(kind: Kind, state: &State, search: u32, first: u64, second: u64) -> Option<Matched> {
    let params = params(kind);
    resync(
        &params,
        &rfc_seed(),
        None,
        state,
        search,
        NOW,
        &code_for(first),
        &code_for(second),
    )
}

fn at_counter(counter: u64) -> State {
    State {
        counter,
        ..State::default()
    }
}

#[test]
fn hotp_resync_finds_consecutive_codes() {
    let matched = resync_with(Kind::Hotp, &State::default(), 100, 50, 51).unwrap();
    assert_eq!(matched.state.counter, 52);
    assert_eq!(matched.offset, 51);
    assert_eq!(matched.state.last_step, None);
    assert_eq!(matched.state.drift, 0);
}

#[test]
fn hotp_resync_rejects_non_consecutive_codes() {
    assert_eq!(resync_with(Kind::Hotp, &State::default(), 100, 50, 52), None);
    assert_eq!(resync_with(Kind::Hotp, &State::default(), 100, 51, 50), None);
    assert_eq!(resync_with(Kind::Hotp, &State::default(), 100, 50, 50), None);
}

#[test]
fn hotp_resync_search_edge() {
    let state = at_counter(10);
    let edge = resync_with(Kind::Hotp, &state, 100, 110, 111).unwrap();
    assert_eq!(edge.state.counter, 112);
    assert_eq!(edge.offset, 101);
    assert_eq!(resync_with(Kind::Hotp, &state, 100, 111, 112), None);
}

#[test]
fn hotp_resync_rejects_used_counters() {
    let state = at_counter(10);
    assert_eq!(resync_with(Kind::Hotp, &state, 100, 8, 9), None);
    assert_eq!(resync_with(Kind::Hotp, &state, 100, 9, 10), None);
    assert!(resync_with(Kind::Hotp, &state, 100, 10, 11).is_some());
}

#[test]
fn hotp_resync_stops_before_overflow() {
    let state = at_counter(u64::MAX - 5);
    let matched = resync_with(Kind::Hotp, &state, 10, u64::MAX - 2, u64::MAX - 1).unwrap();
    assert_eq!(matched.state.counter, u64::MAX);
    assert_eq!(resync_with(Kind::Hotp, &state, 10, u64::MAX - 1, u64::MAX), None);
}

#[test]
fn totp_resync_learns_large_drift() {
    let matched = resync_with(Kind::Totp, &State::default(), 40, 1039, 1040).unwrap();
    assert_eq!(matched.state.last_step, Some(1040));
    assert_eq!(matched.state.drift, 40);
    assert_eq!(matched.offset, 40);

    // verify now centres its window on the learned drift.
    let window = Window {
        steps: 1,
        hotp_lookahead: 0,
    };
    let next = verify(
        &params(Kind::Totp),
        &rfc_seed(),
        None,
        &matched.state,
        &window,
        NOW,
        &code_for(1041),
    );
    assert_eq!(next.unwrap().offset, 41);
}

#[test]
fn totp_resync_search_edges() {
    let state = State::default();
    let ahead = resync_with(Kind::Totp, &state, 40, 1040, 1041).unwrap();
    assert_eq!(ahead.state.drift, 41);
    assert_eq!(resync_with(Kind::Totp, &state, 40, 1041, 1042), None);

    let behind = resync_with(Kind::Totp, &state, 40, 960, 961).unwrap();
    assert_eq!(behind.state.drift, -39);
    assert_eq!(behind.state.last_step, Some(961));
    assert_eq!(resync_with(Kind::Totp, &state, 40, 959, 960), None);
}

#[test]
fn totp_resync_ignores_stored_drift() {
    let state = State {
        drift: 500,
        counter: 4,
        ..State::default()
    };
    let matched = resync_with(Kind::Totp, &state, 2, SERVER_STEP, SERVER_STEP + 1).unwrap();
    assert_eq!(matched.state.drift, 1);
    assert_eq!(matched.state.counter, 4);
}

#[test]
fn totp_resync_respects_last_step() {
    let state = State {
        last_step: Some(1001),
        ..State::default()
    };
    assert_eq!(resync_with(Kind::Totp, &state, 5, 1000, 1001), None);
    let matched = resync_with(Kind::Totp, &state, 5, 1001, 1002).unwrap();
    assert_eq!(matched.state.last_step, Some(1002));
}

#[test]
fn totp_resync_rejects_non_consecutive_codes() {
    assert_eq!(resync_with(Kind::Totp, &State::default(), 10, 1000, 1002), None);
    assert_eq!(resync_with(Kind::Totp, &State::default(), 10, 1001, 1000), None);
}

#[test]
fn totp_resync_stops_at_step_zero() {
    let params = params(Kind::Totp);
    let matched = resync(
        &params,
        &rfc_seed(),
        None,
        &State::default(),
        3,
        0,
        &code_for(0),
        &code_for(1),
    );
    assert_eq!(matched.unwrap().state.drift, 1);
}

#[test]
fn motp_resync_requires_pin() {
    let secret = Secret::from_hex("0123456789abcdef").unwrap();
    let pin = Secret::new(b"1234".to_vec());
    let params = params(Kind::Motp);
    let now = 17_300_000;
    let server_step = now / 10;
    let first = Code::parse(&motp(&secret, &pin, server_step + 20), Charset::Hex).unwrap();
    let second = Code::parse(&motp(&secret, &pin, server_step + 21), Charset::Hex).unwrap();
    let state = State::default();

    let matched = resync(&params, &secret, Some(&pin), &state, 30, now, &first, &second).unwrap();
    assert_eq!(matched.state.last_step, Some(server_step + 21));
    assert_eq!(matched.state.drift, 21);
    assert_eq!(resync(&params, &secret, None, &state, 30, now, &first, &second), None);
}

#[test]
fn resync_rejects_wrong_length_codes() {
    let params = params(Kind::Hotp);
    let short = Code::parse("12345", Charset::Decimal).unwrap();
    let state = State::default();
    assert_eq!(
        resync(&params, &rfc_seed(), None, &state, 10, NOW, &short, &code_for(1)),
        None
    );
    assert_eq!(
        resync(&params, &rfc_seed(), None, &state, 10, NOW, &code_for(0), &short),
        None
    );
}
