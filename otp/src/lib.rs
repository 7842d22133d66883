//! One-time-password algorithms for FreeAuth: HOTP (RFC 4226), TOTP
//! (RFC 6238) and Mobile-OTP, with code and secret parsing, search windows,
//! clock-drift tracking, replay protection and resynchronisation.
//!
//! The crate is pure computation. It does no I/O except reading the clock in
//! [`SystemClock`] and the operating system's random number generator in
//! [`Secret::generate`]. It does not store state, lock tokens, limit the rate
//! of guesses or log anything. Callers persist [`State`] after every accepted
//! code and must limit failed attempts, because a 6-digit code with a window
//! of 3 steps is guessed with probability 3 in a million per try.
//!
//! Secrets and codes live in zeroize-on-drop buffers, implement neither
//! `Debug` nor `Display`, and never appear in error messages. Comparisons of
//! secrets and codes run in constant time for equal lengths. [`verify`]
//! compares a wrong code with every candidate of its window and stops at the
//! first match, so only an accepted code's place in the window shows in the
//! time taken; [`verify_every_candidate`] never stops early.
//!
//! NOTE: the hmac, sha1, sha2 and md-5 crates keep copies of key-derived
//! state and digests on the stack that are not zeroized.
//!
//! ```
//! use freeauth_otp::{totp, verify, Algorithm, Code, Kind, Params, Secret, State, Window};
//!
//! let secret = Secret::from_base32("GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ")?;
//! let params = Params { kind: Kind::Totp, algorithm: Algorithm::Sha1, digits: 6, period: 30 };
//! let window = Window { steps: 1, hotp_lookahead: 0 };
//! let now = 1_111_111_111;
//!
//! let typed = totp(&secret, now, 30, 6, Algorithm::Sha1);
//! let code = Code::parse(&typed, params.charset())?;
//! let matched = verify(&params, &secret, None, &State::default(), &window, now, &code);
//! assert_eq!(matched.map(|m| m.offset), Some(0));
//!
//! // Store `matched.state`, so that the same code is rejected next time.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod algorithm;
mod clock;
mod code;
mod generate;
mod params;
mod secret;
mod verify;

pub use algorithm::{Algorithm, Kind, ParseAlgorithmError, ParseKindError};
pub use clock::{Clock, ManualClock, SystemClock};
pub use code::{Charset, Code, CodeError, MAX_CODE_INPUT_LEN};
pub use generate::{code_identity, hotp, motp, totp, totp_step, MOTP_DIGITS, MOTP_PERIOD};
pub use params::{Matched, Params, State, Window};
pub use secret::{Secret, SecretError};
pub use verify::{resync, verify, verify_every_candidate};

/// Highest HOTP counter a token may start at. Counters are stored as signed
/// 64-bit integers (SQLite's), and this leaves room above for any look-ahead
/// or resync window.
pub const MAX_COUNTER: u64 = 1 << 62;

/// Longest TOTP time step, in seconds: one day.
pub const MAX_PERIOD: u32 = 86_400;

/// Sizes of an HOTP or TOTP secret, in bytes: 80 to 1024 bits. RFC 4226
/// requires at least 128 bits, but Google Authenticator secrets have 80.
pub const HMAC_SECRET_LEN: std::ops::RangeInclusive<usize> = 10..=128;
