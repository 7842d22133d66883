//! Token settings, stored verification state and search windows.

use crate::generate::{MOTP_DIGITS, MOTP_PERIOD};
use crate::{Algorithm, Charset, Kind};

/// Settings of one token, fixed at enrolment.
///
/// Mobile-OTP ignores `algorithm`, `digits` and `period`, and always uses
/// MD5, 6 hex digits and 10-second steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// One-time-password scheme.
    pub kind: Kind,
    /// HMAC hash function for HOTP and TOTP.
    pub algorithm: Algorithm,
    /// Code length for HOTP and TOTP. [`crate::verify`] supports 6 to 8.
    pub digits: u8,
    /// TOTP time step in seconds, at least 1. HOTP ignores it.
    pub period: u32,
}

impl Params {
    /// Returns the characters that codes of this token contain: hex for
    /// Mobile-OTP, decimal otherwise.
    pub fn charset(&self) -> Charset {
        match self.kind {
            Kind::Motp => Charset::Hex,
            Kind::Hotp | Kind::Totp => Charset::Decimal,
        }
    }

    /// Returns the number of characters in a code of this token.
    pub fn code_len(&self) -> usize {
        match self.kind {
            Kind::Motp => usize::from(MOTP_DIGITS),
            Kind::Hotp | Kind::Totp => usize::from(self.digits),
        }
    }

    /// Returns whether [`crate::verify`] and [`crate::resync`] can check codes
    /// for these settings: 6 to 8 digits for HOTP and TOTP, and a period of
    /// at least 1 second for TOTP. Mobile-OTP settings are always supported.
    pub fn is_supported(&self) -> bool {
        match self.kind {
            Kind::Hotp => (6..=8).contains(&self.digits),
            Kind::Totp => (6..=8).contains(&self.digits) && self.period >= 1,
            Kind::Motp => true,
        }
    }

    /// Returns the time step in seconds of TOTP and Mobile-OTP tokens.
    pub fn step_period(&self) -> u32 {
        match self.kind {
            Kind::Motp => MOTP_PERIOD,
            Kind::Hotp | Kind::Totp => self.period,
        }
    }
}

/// Verification state of one token. The caller stores it and replaces it
/// with [`Matched::state`] after every accepted code, because replay
/// protection and drift tracking depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// HOTP counter value expected next.
    pub counter: u64,
    /// TOTP and Mobile-OTP time step of the last accepted code. Codes of this
    /// step and earlier ones are rejected.
    pub last_step: Option<u64>,
    /// TOTP and Mobile-OTP clock offset in time steps learned from accepted
    /// codes: the token's step minus the server's step.
    pub drift: i64,
}

/// How far [`crate::verify`] searches for a matching code.
///
/// Each candidate costs one HMAC or MD5 computation, and each extra
/// candidate adds a chance for a guessed code to match, so callers should
/// keep both values small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    /// TOTP and Mobile-OTP time steps accepted on each side of the server's
    /// step plus the learned drift.
    pub steps: u32,
    /// HOTP counter values accepted after the expected one.
    pub hotp_lookahead: u32,
}

/// Result of an accepted code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matched {
    /// State to store in place of the old one.
    pub state: State,
    /// For HOTP, the matched counter minus the expected counter. For TOTP and
    /// Mobile-OTP, the matched time step minus the server's time step.
    pub offset: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kind: Kind, digits: u8, period: u32) -> Params {
        Params {
            kind,
            algorithm: Algorithm::Sha1,
            digits,
            period,
        }
    }

    #[test]
    fn motp_overrides_digits_and_period() {
        let motp = params(Kind::Motp, 8, 30);
        assert_eq!(motp.code_len(), 6);
        assert_eq!(motp.charset(), Charset::Hex);
        assert_eq!(motp.step_period(), 10);
        assert!(motp.is_supported());
    }

    #[test]
    fn totp_uses_own_digits_and_period() {
        let totp = params(Kind::Totp, 8, 60);
        assert_eq!(totp.code_len(), 8);
        assert_eq!(totp.charset(), Charset::Decimal);
        assert_eq!(totp.step_period(), 60);
    }

    #[test]
    fn supported_settings_at_boundaries() {
        assert!(!params(Kind::Totp, 5, 30).is_supported());
        assert!(params(Kind::Totp, 6, 30).is_supported());
        assert!(params(Kind::Totp, 8, 30).is_supported());
        assert!(!params(Kind::Totp, 9, 30).is_supported());
        assert!(!params(Kind::Totp, 6, 0).is_supported());
        assert!(params(Kind::Totp, 6, 1).is_supported());
        assert!(params(Kind::Hotp, 6, 0).is_supported());
        assert!(!params(Kind::Hotp, 10, 30).is_supported());
    }

    #[test]
    fn debug_output_shows_settings() {
        let text = format!("{:?}", params(Kind::Totp, 6, 30));
        assert!(text.contains("Totp"), "{text}");
        let state = State {
            counter: 3,
            last_step: Some(7),
            drift: -1,
        };
        assert_eq!(
            format!("{state:?}"),
            "State { counter: 3, last_step: Some(7), drift: -1 }"
        );
    }
}
