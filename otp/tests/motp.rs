//! Checks Mobile-OTP codes against MD5 digests computed independently, with
//! literals from md5sum (GNU coreutils) and with md5sum run on random inputs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};

use freeauth_otp::{motp, verify, Algorithm, Charset, Clock, Code, Kind, ManualClock, Params, Secret, State, Window};

fn pin(text: &str) -> Secret {
    Secret::new(text.as_bytes().to_vec())
}

/// Returns the first six hex digits of md5sum's digest of `text`.
fn md5sum_prefix(text: &str) -> String {
    let mut child = match Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            panic!("md5sum is not installed; install it with `apt-get install coreutils`")
        }
        Err(error) => panic!("failed to run md5sum: {error}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "md5sum failed");
    String::from_utf8(output.stdout).unwrap()[..6].to_owned()
}

fn motp_params() -> Params {
    Params {
        kind: Kind::Motp,
        algorithm: Algorithm::Sha1,
        digits: 6,
        period: 10,
    }
}

#[test]
fn motp_matches_md5sum_literals() {
    // Each expected code is the first six hex digits of
    // `printf '%s' MESSAGE | md5sum`, with MESSAGE in the comment above it.
    let cases = [
        // "00123456789abcdef1234"
        ("0123456789abcdef", "1234", 0, "41e571"),
        // "1730000009f3c0a2b7e41d8c50000"
        ("9f3c0a2b7e41d8c5", "0000", 173_000_000, "5251f9"),
        // "12345678abcdef0123456789987654"
        ("ABCDEF0123456789", "987654", 12_345_678, "96ff2c"),
    ];
    for (secret_hex, pin_text, step, expected) in cases {
        let secret = Secret::from_hex(secret_hex).unwrap();
        let code = motp(&secret, &pin(pin_text), step);
        assert_eq!(code.as_str(), expected, "secret {secret_hex}, step {step}");
    }
}

#[test]
fn motp_matches_md5sum_on_random_inputs() {
    let mut state: u64 = 0x6d6f_7470;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for case in 0..20 {
        let secret = Secret::new(next().to_be_bytes().to_vec());
        let pin_text = format!("{:04}", next() % 10_000);
        let step = next() % 400_000_000;

        let message = format!("{step}{}{pin_text}", secret.to_hex().as_str());
        let expected = md5sum_prefix(&message);
        let code = motp(&secret, &pin(&pin_text), step);
        assert_eq!(code.as_str(), expected, "case {case}: message {message:?}");
    }
}

#[test]
fn verify_accepts_motp_in_any_case() {
    let clock = ManualClock::new(1_730_000_000);
    let secret = Secret::from_hex("9f3c0a2b7e41d8c5").unwrap();
    let window = Window {
        steps: 1,
        hotp_lookahead: 0,
    };
    let expected = motp(&secret, &pin("0000"), 173_000_000);
    let upper = expected.to_ascii_uppercase();
    let code = Code::parse(&upper, Charset::Hex).unwrap();

    let matched = verify(
        &motp_params(),
        &secret,
        Some(&pin("0000")),
        &State::default(),
        &window,
        clock.unix_time(),
        &code,
    )
    .unwrap();
    assert_eq!(matched.offset, 0);
    assert_eq!(matched.state.last_step, Some(173_000_000));
}

#[test]
fn verify_rejects_motp_without_pin() {
    let secret = Secret::from_hex("9f3c0a2b7e41d8c5").unwrap();
    let window = Window {
        steps: 1,
        hotp_lookahead: 0,
    };
    let expected = motp(&secret, &pin("0000"), 173_000_000);
    let code = Code::parse(&expected, Charset::Hex).unwrap();
    let now = 1_730_000_000;
    let state = State::default();

    let without_pin = verify(&motp_params(), &secret, None, &state, &window, now, &code);
    assert_eq!(without_pin, None);
    let wrong_pin = verify(&motp_params(), &secret, Some(&pin("0001")), &state, &window, now, &code);
    assert_eq!(wrong_pin, None);
}

#[test]
fn motp_uses_ten_second_steps() {
    let secret = Secret::from_hex("0123456789abcdef").unwrap();
    let user_pin = pin("1234");
    // Params of a Mobile-OTP token ignore digits and period.
    let params = Params {
        digits: 8,
        period: 30,
        ..motp_params()
    };
    let window = Window {
        steps: 0,
        hotp_lookahead: 0,
    };
    let code = Code::parse(&motp(&secret, &user_pin, 100), Charset::Hex).unwrap();

    for (now, accepted) in [(999, false), (1000, true), (1009, true), (1010, false)] {
        let matched = verify(
            &params,
            &secret,
            Some(&user_pin),
            &State::default(),
            &window,
            now,
            &code,
        );
        assert_eq!(matched.is_some(), accepted, "time {now}");
    }
}
