//! Token kinds and HMAC hash algorithms, with the spellings used in
//! configuration files and otpauth URIs.

use std::fmt;
use std::str::FromStr;

/// Hash function of the HMAC in HOTP and TOTP. Mobile-OTP always uses MD5
/// and ignores this setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// HMAC-SHA-1, the default of RFC 4226 and of most authenticator apps.
    Sha1,
    /// HMAC-SHA-256, allowed by RFC 6238.
    Sha256,
    /// HMAC-SHA-512, allowed by RFC 6238.
    Sha512,
}

impl fmt::Display for Algorithm {
    /// Writes the otpauth URI spelling: `SHA1`, `SHA256` or `SHA512`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        };
        f.write_str(name)
    }
}

impl FromStr for Algorithm {
    type Err = ParseAlgorithmError;

    /// Parses `sha1`, `sha256` or `sha512` in any letter case, with or without
    /// a hyphen after `sha` (`SHA-256`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "sha1" | "sha-1" => Ok(Algorithm::Sha1),
            "sha256" | "sha-256" => Ok(Algorithm::Sha256),
            "sha512" | "sha-512" => Ok(Algorithm::Sha512),
            _ => Err(ParseAlgorithmError { input: text.to_owned() }),
        }
    }
}

/// Error from parsing an [`Algorithm`] name. The message quotes the input,
/// which is a setting and not a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseAlgorithmError {
    input: String,
}

impl fmt::Display for ParseAlgorithmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown OTP algorithm {:?}: expected SHA1, SHA256 or SHA512",
            self.input
        )
    }
}

impl std::error::Error for ParseAlgorithmError {}

/// One-time-password scheme of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Counter-based codes (RFC 4226).
    Hotp,
    /// Time-based codes (RFC 6238).
    Totp,
    /// Mobile-OTP: MD5 over the time step, secret and PIN, as six hex digits.
    Motp,
}

impl fmt::Display for Kind {
    /// Writes `hotp`, `totp` or `motp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Kind::Hotp => "hotp",
            Kind::Totp => "totp",
            Kind::Motp => "motp",
        };
        f.write_str(name)
    }
}

impl FromStr for Kind {
    type Err = ParseKindError;

    /// Parses `hotp`, `totp` or `motp` in any letter case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "hotp" => Ok(Kind::Hotp),
            "totp" => Ok(Kind::Totp),
            "motp" => Ok(Kind::Motp),
            _ => Err(ParseKindError { input: text.to_owned() }),
        }
    }
}

/// Error from parsing a [`Kind`] name. The message quotes the input, which is
/// a setting and not a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseKindError {
    input: String,
}

impl fmt::Display for ParseKindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown token kind {:?}: expected hotp, totp or motp", self.input)
    }
}

impl std::error::Error for ParseKindError {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_parses_common_spellings() {
        let cases = [
            ("sha1", Algorithm::Sha1),
            ("SHA1", Algorithm::Sha1),
            ("sha-1", Algorithm::Sha1),
            ("Sha-1", Algorithm::Sha1),
            ("sha256", Algorithm::Sha256),
            ("SHA-256", Algorithm::Sha256),
            ("sha512", Algorithm::Sha512),
            ("SHA-512", Algorithm::Sha512),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<Algorithm>(), Ok(expected), "input {text:?}");
        }
    }

    #[test]
    fn algorithm_rejects_unknown_names() {
        for text in ["", "md5", "sha", "sha-", "sha_256", "sha 1", " sha1", "sha384"] {
            let error = text.parse::<Algorithm>().unwrap_err();
            let message = error.to_string();
            assert!(message.contains("unknown OTP algorithm"), "{message}");
            assert!(message.contains("SHA256"), "{message}");
        }
    }

    #[test]
    fn algorithm_display_round_trips() {
        for algorithm in [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512] {
            assert_eq!(algorithm.to_string().parse::<Algorithm>(), Ok(algorithm));
        }
        assert_eq!(Algorithm::Sha1.to_string(), "SHA1");
        assert_eq!(Algorithm::Sha256.to_string(), "SHA256");
        assert_eq!(Algorithm::Sha512.to_string(), "SHA512");
    }

    #[test]
    fn algorithm_serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Algorithm::Sha256).unwrap(), "\"sha256\"");
        let parsed: Algorithm = serde_json::from_str("\"sha512\"").unwrap();
        assert_eq!(parsed, Algorithm::Sha512);
    }

    #[test]
    fn kind_parses_any_case() {
        assert_eq!("hotp".parse::<Kind>(), Ok(Kind::Hotp));
        assert_eq!("TOTP".parse::<Kind>(), Ok(Kind::Totp));
        assert_eq!("mOtP".parse::<Kind>(), Ok(Kind::Motp));
    }

    #[test]
    fn kind_rejects_unknown_names() {
        let message = "otp".parse::<Kind>().unwrap_err().to_string();
        assert_eq!(message, "unknown token kind \"otp\": expected hotp, totp or motp");
    }

    #[test]
    fn kind_display_and_serde_lowercase() {
        for kind in [Kind::Hotp, Kind::Totp, Kind::Motp] {
            let text = kind.to_string();
            assert_eq!(text, text.to_lowercase());
            assert_eq!(text.parse::<Kind>(), Ok(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{text}\""));
        }
    }
}
