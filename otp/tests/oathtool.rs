//! Compares `hotp` and `totp` with oathtool (OATH Toolkit) on random keys,
//! counters and times. The tests fail if oathtool is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::ErrorKind;
use std::process::Command;

use freeauth_otp::{hotp, totp, Algorithm, Secret};

const CASES: usize = 200;

/// SplitMix64, a small deterministic generator so that failures reproduce.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// Returns a key of 1 to 140 bytes, so some keys exceed the 64-byte
    /// SHA-1 and SHA-256 block and the 128-byte SHA-512 block.
    fn key(&mut self) -> Secret {
        let len = 1 + self.below(140) as usize;
        Secret::new((0..len).map(|_| self.next_u64() as u8).collect())
    }
}

/// Runs oathtool and returns its output without the trailing newline.
fn oathtool(args: &[String]) -> String {
    let output = match Command::new("oathtool").args(args).output() {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            panic!("oathtool is not installed; install it with `apt-get install oathtool`")
        }
        Err(error) => panic!("failed to run oathtool: {error}"),
    };
    assert!(
        output.status.success(),
        "oathtool {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim_end().to_owned()
}

fn oathtool_mode(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Sha1 => "--totp=sha1",
        Algorithm::Sha256 => "--totp=sha256",
        Algorithm::Sha512 => "--totp=sha512",
    }
}

#[test]
fn hotp_sha1_matches_oathtool() {
    let mut random = SplitMix64(0x0123_4567_89ab_cdef);
    for case in 0..CASES {
        let key = random.key();
        let counter = match case % 4 {
            0 => random.below(1000),
            1 => u64::MAX - random.below(3),
            _ => random.next_u64(),
        };
        let digits = random.pick(&[6u8, 7, 8]);

        let args = vec![
            "--hotp".to_owned(),
            "-d".to_owned(),
            digits.to_string(),
            "-c".to_owned(),
            counter.to_string(),
            key.to_hex().to_string(),
        ];
        let expected = oathtool(&args);
        let actual = hotp(&key, counter, digits, Algorithm::Sha1);
        assert_eq!(actual.as_str(), expected, "case {case}: oathtool {args:?}");
    }
}

/// oathtool 2.6.7 has no SHA-2 option for HOTP, but TOTP with 1-second steps
/// from T0 = 0 uses the Unix time as the HOTP counter.
#[test]
fn hotp_sha2_matches_oathtool_totp() {
    let mut random = SplitMix64(0x5eed_0f5b_a256);
    for case in 0..CASES {
        let key = random.key();
        let algorithm = random.pick(&[Algorithm::Sha256, Algorithm::Sha512]);
        let counter = random.below(1 << 40);
        let digits = random.pick(&[6u8, 7, 8]);

        let args = vec![
            oathtool_mode(algorithm).to_owned(),
            "-d".to_owned(),
            digits.to_string(),
            "-s".to_owned(),
            "1".to_owned(),
            "-N".to_owned(),
            format!("@{counter}"),
            key.to_hex().to_string(),
        ];
        let expected = oathtool(&args);
        let actual = hotp(&key, counter, digits, algorithm);
        assert_eq!(actual.as_str(), expected, "case {case}: oathtool {args:?}");
    }
}

#[test]
fn totp_matches_oathtool() {
    let mut random = SplitMix64(0x7077_7077);
    for case in 0..CASES {
        let key = random.key();
        let algorithm = random.pick(&[Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512]);
        let period = random.pick(&[1u32, 30, 45, 60, 17]);
        let digits = random.pick(&[6u8, 8]);
        let unix_time = match case % 4 {
            // Last and first second of a step.
            0 => (1 + random.below(1 << 32)) * u64::from(period) - 1,
            1 => random.below(1 << 32) * u64::from(period),
            _ => random.below(1 << 40),
        };

        let args = vec![
            oathtool_mode(algorithm).to_owned(),
            "-d".to_owned(),
            digits.to_string(),
            "-s".to_owned(),
            period.to_string(),
            "-N".to_owned(),
            format!("@{unix_time}"),
            key.to_hex().to_string(),
        ];
        let expected = oathtool(&args);
        let actual = totp(&key, unix_time, period, digits, algorithm);
        assert_eq!(actual.as_str(), expected, "case {case}: oathtool {args:?}");
    }
}
