//! Checks code generation and verification against the reference values of
//! RFC 4226 Appendix D and RFC 6238 Appendix B in tests/data/rfc-vectors.json.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use freeauth_otp::{hotp, totp, verify, Algorithm, Code, Kind, Params, Secret, State, Window};
use serde::Deserialize;

#[derive(Deserialize)]
struct VectorFile {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    kind: Kind,
    inputs: Inputs,
    expected: Expected,
    source: String,
}

#[derive(Deserialize)]
struct Inputs {
    secret_hex: String,
    secret_base32: String,
    counter: Option<u64>,
    unix_time: Option<u64>,
    period: Option<u32>,
    digits: u8,
    algorithm: String,
}

#[derive(Deserialize)]
struct Expected {
    otp: String,
}

fn load_vectors() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc-vectors.json");
    let text = std::fs::read_to_string(path).expect("read tests/data/rfc-vectors.json");
    let file: VectorFile = serde_json::from_str(&text).expect("parse rfc-vectors.json");
    file.vectors
}

fn label(index: usize, vector: &Vector) -> String {
    format!("vector {index} ({}, {})", vector.kind, vector.source)
}

#[test]
fn vector_file_covers_both_rfcs() {
    let vectors = load_vectors();
    let hotp_count = vectors.iter().filter(|v| v.kind == Kind::Hotp).count();
    let totp_count = vectors.iter().filter(|v| v.kind == Kind::Totp).count();
    assert_eq!(hotp_count, 10, "RFC 4226 Appendix D lists counters 0 to 9");
    assert_eq!(totp_count, 18, "RFC 6238 Appendix B lists 6 times for 3 hashes");
}

#[test]
fn generated_codes_match_vectors() {
    for (index, vector) in load_vectors().iter().enumerate() {
        let inputs = &vector.inputs;
        let secret = Secret::from_hex(&inputs.secret_hex).unwrap();
        let algorithm: Algorithm = inputs.algorithm.parse().unwrap();

        let code = match vector.kind {
            Kind::Hotp => hotp(&secret, inputs.counter.unwrap(), inputs.digits, algorithm),
            Kind::Totp => totp(
                &secret,
                inputs.unix_time.unwrap(),
                inputs.period.unwrap(),
                inputs.digits,
                algorithm,
            ),
            Kind::Motp => panic!("{}: no Mobile-OTP vectors expected", label(index, vector)),
        };
        assert_eq!(code.as_str(), vector.expected.otp, "{}", label(index, vector));
    }
}

#[test]
fn base32_and_hex_seeds_agree() {
    for (index, vector) in load_vectors().iter().enumerate() {
        let from_hex = Secret::from_hex(&vector.inputs.secret_hex).unwrap();
        let from_base32 = Secret::from_base32(&vector.inputs.secret_base32).unwrap();
        assert!(from_hex == from_base32, "{}", label(index, vector));
        assert_eq!(
            from_hex.to_base32().trim_end_matches('='),
            vector.inputs.secret_base32.trim_end_matches('='),
            "{}",
            label(index, vector)
        );
    }
}

#[test]
fn verify_accepts_vector_codes_exactly() {
    let window = Window {
        steps: 0,
        hotp_lookahead: 0,
    };
    for (index, vector) in load_vectors().iter().enumerate() {
        let inputs = &vector.inputs;
        let secret = Secret::from_hex(&inputs.secret_hex).unwrap();
        let params = Params {
            kind: vector.kind,
            algorithm: inputs.algorithm.parse().unwrap(),
            digits: inputs.digits,
            period: inputs.period.unwrap_or(30),
        };
        let state = State {
            counter: inputs.counter.unwrap_or(0),
            ..State::default()
        };
        let now = inputs.unix_time.unwrap_or(0);
        let code = Code::parse(&vector.expected.otp, params.charset()).unwrap();

        let matched = verify(&params, &secret, None, &state, &window, now, &code);
        assert!(matched.is_some(), "{}", label(index, vector));
        assert_eq!(matched.unwrap().offset, 0, "{}", label(index, vector));
    }
}
