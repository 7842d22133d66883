//! Secret key bytes, and their base32 and hex text forms.
//!
//! [`Secret`] has no `Debug` or `Display`, and [`SecretError`] messages name
//! positions and lengths but never a character of the input.

use std::fmt;

use data_encoding::{BASE32_NOPAD, HEXLOWER};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Secret key bytes: an OTP seed, or a Mobile-OTP PIN.
///
/// The bytes are zeroized on drop, and `==` compares them in constant time
/// for equal lengths.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps key bytes without copying them.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    /// Returns the key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Returns the key length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Returns whether the key has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Generates a key of `len` bytes from the operating system's random
    /// number generator.
    pub fn generate(len: usize) -> Result<Secret, getrandom::Error> {
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        getrandom::getrandom(&mut bytes)?;
        Ok(Secret(bytes))
    }

    /// Decodes a base32 key (RFC 4648 alphabet A-Z and 2-7) in any letter case.
    ///
    /// Spaces, tabs, line breaks and `-` are ignored anywhere. Trailing `=`
    /// padding of any length is ignored, and so are the unused low bits of the
    /// last character, as oathtool 2.6.7 does. The key length must be one
    /// that an encoder can produce: 0, 2, 4, 5 or 7 characters past a multiple
    /// of 8.
    pub fn from_base32(text: &str) -> Result<Secret, SecretError> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(text.len() * 5 / 8 + 1));
        // Key bits not yet written to `bytes`.
        let mut buffer = Zeroizing::new(0u64);
        let mut buffered_bits = 0u32;
        let mut symbols = 0usize;
        let mut padding_seen = false;

        for (index, character) in text.chars().enumerate() {
            let position = index + 1;
            if is_separator(character) {
                continue;
            }
            if character == '=' {
                padding_seen = true;
                continue;
            }
            let Some(value) = base32_value(character) else {
                return Err(SecretError::InvalidCharacter {
                    position,
                    encoding: BASE32,
                });
            };
            if padding_seen {
                return Err(SecretError::MisplacedPadding { position });
            }

            symbols += 1;
            *buffer = (*buffer << 5) | u64::from(value);
            buffered_bits += 5;
            if buffered_bits >= 8 {
                buffered_bits -= 8;
                bytes.push(((*buffer >> buffered_bits) & 0xff) as u8);
                *buffer &= (1 << buffered_bits) - 1;
            }
        }

        if symbols == 0 {
            return Err(SecretError::Empty);
        }
        // Base32 encodes each 5 bytes as 8 characters, and a final group of
        // 1, 3 or 6 characters cannot come from whole bytes, so the key was
        // probably cut short.
        if matches!(symbols % 8, 1 | 3 | 6) {
            return Err(SecretError::InvalidLength {
                encoding: BASE32,
                length: symbols,
            });
        }
        Ok(Secret(bytes))
    }

    /// Decodes a hex key in any letter case. Spaces, tabs and line breaks are
    /// ignored anywhere.
    pub fn from_hex(text: &str) -> Result<Secret, SecretError> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(text.len() / 2 + 1));
        let mut high_nibble: Zeroizing<Option<u8>> = Zeroizing::new(None);
        let mut digits = 0usize;

        for (index, character) in text.chars().enumerate() {
            if character.is_ascii_whitespace() {
                continue;
            }
            let Some(value) = character.to_digit(16) else {
                return Err(SecretError::InvalidCharacter {
                    position: index + 1,
                    encoding: HEX,
                });
            };
            let value = (value & 0x0f) as u8;

            digits += 1;
            match high_nibble.take() {
                Some(high) => bytes.push((high << 4) | value),
                None => *high_nibble = Some(value),
            }
        }

        if digits == 0 {
            return Err(SecretError::Empty);
        }
        if digits % 2 == 1 {
            return Err(SecretError::InvalidLength {
                encoding: HEX,
                length: digits,
            });
        }
        Ok(Secret(bytes))
    }

    /// Encodes the key as uppercase base32 without padding, the form used in
    /// otpauth URIs.
    pub fn to_base32(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(BASE32_NOPAD.encode_len(self.len())));
        BASE32_NOPAD.encode_append(self.as_bytes(), &mut text);
        text
    }

    /// Encodes the key as lowercase hex.
    pub fn to_hex(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(HEXLOWER.encode_len(self.len())));
        HEXLOWER.encode_append(self.as_bytes(), &mut text);
        text
    }
}

impl PartialEq for Secret {
    /// Compares in constant time when both keys have the same length.
    fn eq(&self, other: &Secret) -> bool {
        self.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl Eq for Secret {}

const BASE32: &str = "base32";
const HEX: &str = "hex";

fn is_separator(character: char) -> bool {
    character.is_ascii_whitespace() || character == '-'
}

fn base32_value(character: char) -> Option<u8> {
    match character {
        'A'..='Z' => Some(character as u8 - b'A'),
        'a'..='z' => Some(character as u8 - b'a'),
        '2'..='7' => Some(character as u8 - b'2' + 26),
        _ => None,
    }
}

/// Error from decoding a [`Secret`]. Positions count characters from 1 in the
/// input as typed, separators included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// The input contains no key characters.
    Empty,
    /// A character is neither in the encoding's alphabet nor an ignored
    /// separator.
    InvalidCharacter {
        /// Position of the character, counted from 1.
        position: usize,
        /// `"base32"` or `"hex"`.
        encoding: &'static str,
    },
    /// A base32 key character follows `=` padding.
    MisplacedPadding {
        /// Position of the key character after the padding, counted from 1.
        position: usize,
    },
    /// The number of key characters cannot encode whole bytes.
    InvalidLength {
        /// `"base32"` or `"hex"`.
        encoding: &'static str,
        /// Number of key characters, without separators and padding.
        length: usize,
    },
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::Empty => f.write_str("invalid secret: the key is empty"),
            SecretError::InvalidCharacter { position, encoding } => {
                let allowed = match *encoding {
                    BASE32 => "in A-Z or 2-7",
                    HEX => "a hex digit (0-9, a-f)",
                    _ => "allowed",
                };
                write!(f, "invalid {encoding} secret: character {position} is not {allowed}")
            }
            SecretError::MisplacedPadding { position } => write!(
                f,
                "invalid base32 secret: character {position} follows '=' padding, \
                 which is only allowed at the end"
            ),
            SecretError::InvalidLength { encoding, length } => match *encoding {
                BASE32 => write!(
                    f,
                    "invalid base32 secret: {length} characters cannot encode whole bytes \
                     (the remainder after dividing by 8 must be 0, 2, 4, 5 or 7), \
                     so the key may be cut short"
                ),
                _ => write!(
                    f,
                    "invalid {encoding} secret: {length} digits is an odd number, \
                     but each byte needs two"
                ),
            },
        }
    }
}

impl std::error::Error for SecretError {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn base32_error(input: &str) -> SecretError {
        match Secret::from_base32(input) {
            Ok(_) => panic!("base32 input {input:?} was accepted"),
            Err(error) => error,
        }
    }

    fn hex_error(input: &str) -> SecretError {
        match Secret::from_hex(input) {
            Ok(_) => panic!("hex input {input:?} was accepted"),
            Err(error) => error,
        }
    }

    const RFC_SEED_BASE32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    const RFC_SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn base32_decodes_rfc_seed() {
        let secret = Secret::from_base32(RFC_SEED_BASE32).unwrap();
        assert_eq!(secret.as_bytes(), RFC_SEED);
    }

    #[test]
    fn base32_accepts_lowercase_and_spaces() {
        let inputs = [
            "gezdgnbvgy3tqojqgezdgnbvgy3tqojq",
            "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ",
            "gezd-gnbv-gy3t-qojq-gezd-gnbv-gy3t-qojq",
            " \tGEZDGNBVGY3TQOJQ\nGEZDGNBVGY3TQOJQ \n",
            "GeZdGnBvGy3TqOjQgEzDgNbVgY3tQoJq",
        ];
        for input in inputs {
            let secret = Secret::from_base32(input).unwrap();
            assert_eq!(secret.as_bytes(), RFC_SEED, "input {input:?}");
        }
    }

    #[test]
    fn base32_accepts_padding_or_none() {
        // "MZXW6" is the base32 form of "foo".
        for input in ["MZXW6", "MZXW6===", "mzxw6===", "MZXW6 = = =", "MZXW6=", "MZXW6=== \n"] {
            let secret = Secret::from_base32(input).unwrap();
            assert_eq!(secret.as_bytes(), b"foo", "input {input:?}");
        }
    }

    #[test]
    fn base32_decodes_rfc4648_examples() {
        let cases: [(&str, &[u8]); 6] = [
            ("MY======", b"f"),
            ("MZXQ====", b"fo"),
            ("MZXW6===", b"foo"),
            ("MZXW6YQ=", b"foob"),
            ("MZXW6YTB", b"fooba"),
            ("MZXW6YTBOI======", b"foobar"),
        ];
        for (input, expected) in cases {
            assert_eq!(Secret::from_base32(input).unwrap().as_bytes(), expected);
        }
    }

    #[test]
    fn base32_ignores_unused_trailing_bits() {
        // 26 characters carry 130 bits, so the last 2 bits are unused.
        let zero = Secret::from_base32("AAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let low_bits_set = Secret::from_base32("AAAAAAAAAAAAAAAAAAAAAAAAAD").unwrap();
        assert_eq!(zero.len(), 16);
        assert!(zero == low_bits_set);
    }

    #[test]
    fn base32_reports_invalid_character_position() {
        let error = base32_error("GEZDGN1VGY");
        assert_eq!(
            error,
            SecretError::InvalidCharacter {
                position: 7,
                encoding: "base32"
            }
        );
        assert_eq!(
            error.to_string(),
            "invalid base32 secret: character 7 is not in A-Z or 2-7"
        );
    }

    #[test]
    fn base32_positions_count_separators() {
        let error = base32_error(" ab-c 8");
        assert_eq!(
            error,
            SecretError::InvalidCharacter {
                position: 7,
                encoding: "base32"
            }
        );
        let error = base32_error("ÄBCD");
        assert_eq!(
            error,
            SecretError::InvalidCharacter {
                position: 1,
                encoding: "base32"
            }
        );
    }

    #[test]
    fn base32_rejects_data_after_padding() {
        let error = base32_error("MZXW6=YQ");
        assert_eq!(error, SecretError::MisplacedPadding { position: 7 });
        assert!(error.to_string().contains("character 7 follows '=' padding"));
    }

    #[test]
    fn base32_rejects_impossible_lengths() {
        for (input, length) in [("A", 1), ("ABC", 3), ("ABCDEF", 6), ("ABCDEFGH J", 9)] {
            let error = base32_error(input);
            assert_eq!(
                error,
                SecretError::InvalidLength {
                    encoding: "base32",
                    length
                },
                "input {input:?}"
            );
        }
    }

    #[test]
    fn base32_rejects_empty_input() {
        for input in ["", "   ", "====", " - \t"] {
            assert_eq!(base32_error(input), SecretError::Empty);
        }
    }

    #[test]
    fn base32_errors_never_echo_input() {
        let inputs = [
            "QXJZKVWQ!XJZKVWQ",
            "qxjzkvwq0xjzkvwq",
            "QXJZKVWQ=XJZKVWQ",
            "QXJZKVWQXJZKVWQXJ",
            "QXJZ KVWQ XJZK VWQ1",
        ];
        for input in inputs {
            let message = base32_error(input).to_string();
            let message = message.to_ascii_lowercase();
            for fragment in input.to_ascii_lowercase().as_bytes().windows(3) {
                let fragment = String::from_utf8_lossy(fragment);
                assert!(!message.contains(fragment.as_ref()), "{message:?} echoes {fragment:?}");
            }
            assert!(!message.contains('!'), "{message:?}");
        }
    }

    #[test]
    fn hex_decodes_any_case_and_spaces() {
        for input in ["3132333435", "31 32 33 34 35", "3132\t3334 35\n", " 31323334 35 "] {
            assert_eq!(Secret::from_hex(input).unwrap().as_bytes(), b"12345");
        }
        assert_eq!(
            Secret::from_hex("DEADbeef").unwrap().as_bytes(),
            &[0xde, 0xad, 0xbe, 0xef]
        );
    }

    #[test]
    fn hex_reports_invalid_character_position() {
        let error = hex_error("31 3g");
        assert_eq!(
            error,
            SecretError::InvalidCharacter {
                position: 5,
                encoding: "hex"
            }
        );
        assert_eq!(
            error.to_string(),
            "invalid hex secret: character 5 is not a hex digit (0-9, a-f)"
        );
        assert!(matches!(
            hex_error("31-32"),
            SecretError::InvalidCharacter { position: 3, .. }
        ));
    }

    #[test]
    fn hex_rejects_odd_digit_count() {
        let error = hex_error("31 323");
        assert_eq!(
            error,
            SecretError::InvalidLength {
                encoding: "hex",
                length: 5
            }
        );
        assert_eq!(
            error.to_string(),
            "invalid hex secret: 5 digits is an odd number, but each byte needs two"
        );
    }

    #[test]
    fn hex_rejects_empty_input() {
        assert_eq!(hex_error(" \n"), SecretError::Empty);
    }

    #[test]
    fn encodings_round_trip() {
        let secret = Secret::new((0u8..=40).collect());
        assert!(Secret::from_base32(&secret.to_base32()).unwrap() == secret);
        assert!(Secret::from_hex(&secret.to_hex()).unwrap() == secret);
    }

    #[test]
    fn encodings_use_otpauth_case() {
        let secret = Secret::new(RFC_SEED.to_vec());
        assert_eq!(secret.to_base32().as_str(), RFC_SEED_BASE32);
        let foo = Secret::new(b"foo".to_vec());
        assert_eq!(foo.to_base32().as_str(), "MZXW6");
        assert_eq!(Secret::new(vec![0xab, 0xcd]).to_hex().as_str(), "abcd");
    }

    #[test]
    fn generate_returns_requested_length() {
        let first = Secret::generate(20).unwrap();
        let second = Secret::generate(20).unwrap();
        assert_eq!(first.len(), 20);
        assert!(first != second, "two random 160-bit keys were equal");
        assert!(Secret::generate(0).unwrap().is_empty());
    }

    #[test]
    fn equality_compares_bytes() {
        let secret = Secret::new(vec![1, 2, 3]);
        assert!(secret == Secret::new(vec![1, 2, 3]));
        assert!(secret != Secret::new(vec![1, 2, 4]));
        assert!(secret != Secret::new(vec![1, 2]));
        assert!(secret.clone() == secret);
    }
}
