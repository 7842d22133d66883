//! One-time codes as users type them, normalised for comparison.
//!
//! [`Code`] has no `Debug` or `Display`, and [`CodeError`] messages name
//! positions but never a character of the input.

use std::fmt;

use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

/// Maximum length in bytes of the text given to [`Code::parse`], counted
/// before surrounding whitespace is trimmed.
pub const MAX_CODE_INPUT_LEN: usize = 64;

/// Characters a code may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Charset {
    /// Digits 0-9, as HOTP and TOTP produce.
    Decimal,
    /// Hex digits 0-9 and a-f in any letter case, as Mobile-OTP produces.
    Hex,
}

impl Charset {
    fn normalise(self, character: char) -> Option<char> {
        match self {
            Charset::Decimal => character.is_ascii_digit().then_some(character),
            Charset::Hex => character.is_ascii_hexdigit().then(|| character.to_ascii_lowercase()),
        }
    }
}

/// A one-time code as typed by a user, normalised and zeroized on drop.
///
/// The normalised form has no spaces, keeps leading zeros and stores hex
/// digits in lowercase.
pub struct Code(Zeroizing<String>);

impl Code {
    /// Parses a typed code.
    ///
    /// Surrounding whitespace is trimmed. Inside, single spaces may separate
    /// groups of digits of any size ("123 456", "12 34 56"), but two spaces in
    /// a row, tabs and other characters are rejected. Input longer than
    /// [`MAX_CODE_INPUT_LEN`] bytes is rejected before it is examined.
    pub fn parse(text: &str, charset: Charset) -> Result<Code, CodeError> {
        if text.len() > MAX_CODE_INPUT_LEN {
            return Err(CodeError::TooLong);
        }
        let trimmed_start = text.trim_start();
        let leading_bytes = text.len() - trimmed_start.len();
        let leading_chars = text.get(..leading_bytes).map_or(0, |lead| lead.chars().count());
        let trimmed = trimmed_start.trim_end();
        if trimmed.is_empty() {
            return Err(CodeError::Empty);
        }

        let mut normalised = Zeroizing::new(String::with_capacity(trimmed.len()));
        let mut previous_was_space = false;
        for (index, character) in trimmed.chars().enumerate() {
            let position = leading_chars + index + 1;
            // Trimming guarantees that a space has a digit on its left, so
            // only a second space in a row is misplaced.
            if character == ' ' && !previous_was_space {
                previous_was_space = true;
                continue;
            }
            let Some(digit) = charset.normalise(character) else {
                return Err(CodeError::InvalidCharacter { position });
            };
            normalised.push(digit);
            previous_was_space = false;
        }
        Ok(Code(normalised))
    }

    /// Returns the number of digits in the normalised code.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Returns whether the code has no digits. [`Code::parse`] never returns
    /// such a code.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Returns the normalised code.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares the normalised code with `other`, in constant time when both
    /// have the same length.
    pub fn ct_eq_str(&self, other: &str) -> bool {
        self.ct_eq_choice(other).into()
    }

    pub(crate) fn ct_eq_choice(&self, other: &str) -> Choice {
        self.0.as_bytes().ct_eq(other.as_bytes())
    }
}

/// Error from [`Code::parse`]. Positions count characters from 1 in the
/// input as typed, surrounding whitespace included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeError {
    /// The input is empty or only whitespace.
    Empty,
    /// The input is longer than [`MAX_CODE_INPUT_LEN`] bytes.
    TooLong,
    /// A character is not a digit of the charset and not a single space
    /// between groups.
    InvalidCharacter {
        /// Position of the character, counted from 1.
        position: usize,
    },
}

impl fmt::Display for CodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeError::Empty => f.write_str("invalid code: the input is empty"),
            CodeError::TooLong => write!(f, "invalid code: the input is longer than {MAX_CODE_INPUT_LEN} bytes"),
            CodeError::InvalidCharacter { position } => write!(
                f,
                "invalid code: character {position} is neither a code digit \
                 nor a single space between groups of digits"
            ),
        }
    }
}

impl std::error::Error for CodeError {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn decimal(text: &str) -> Result<String, CodeError> {
        Code::parse(text, Charset::Decimal).map(|code| code.as_str().to_owned())
    }

    fn hex(text: &str) -> Result<String, CodeError> {
        Code::parse(text, Charset::Hex).map(|code| code.as_str().to_owned())
    }

    #[test]
    fn parse_accepts_single_spaces_between_groups() {
        assert_eq!(decimal("123 456").unwrap(), "123456");
        assert_eq!(decimal("1234 5678").unwrap(), "12345678");
        assert_eq!(decimal("12 34 56").unwrap(), "123456");
        assert_eq!(decimal("1 2 3 4 5 6").unwrap(), "123456");
    }

    #[test]
    fn parse_trims_surrounding_whitespace() {
        assert_eq!(decimal(" 123456\n").unwrap(), "123456");
        assert_eq!(decimal("\t\r\n 123 456 \r\n").unwrap(), "123456");
    }

    #[test]
    fn parse_rejects_double_space() {
        assert_eq!(
            decimal("123  456").unwrap_err(),
            CodeError::InvalidCharacter { position: 5 }
        );
    }

    #[test]
    fn parse_rejects_inner_whitespace_other_than_space() {
        for (input, position) in [("123\t456", 4), ("123\n456", 4), ("123\u{a0}456", 4)] {
            assert_eq!(
                decimal(input).unwrap_err(),
                CodeError::InvalidCharacter { position },
                "input {input:?}"
            );
        }
    }

    #[test]
    fn parse_keeps_leading_zeros() {
        let short = Code::parse("12345", Charset::Decimal).unwrap();
        let padded = Code::parse("012345", Charset::Decimal).unwrap();
        assert_eq!(short.as_str(), "12345");
        assert_eq!(padded.as_str(), "012345");
        assert_eq!(padded.len(), 6);
        assert!(!padded.ct_eq_str(short.as_str()));
        assert!(!short.ct_eq_str(padded.as_str()));
    }

    #[test]
    fn decimal_rejects_hex_letters() {
        assert_eq!(
            decimal("12a456").unwrap_err(),
            CodeError::InvalidCharacter { position: 3 }
        );
        assert_eq!(
            decimal("１23456").unwrap_err(),
            CodeError::InvalidCharacter { position: 1 }
        );
    }

    #[test]
    fn hex_lowercases_letters() {
        assert_eq!(hex("AbC123").unwrap(), "abc123");
        assert_eq!(hex(" ab CD ef ").unwrap(), "abcdef");
        assert_eq!(hex("abg123").unwrap_err(), CodeError::InvalidCharacter { position: 3 });
    }

    #[test]
    fn positions_count_leading_whitespace() {
        assert_eq!(
            decimal("  12x456").unwrap_err(),
            CodeError::InvalidCharacter { position: 5 }
        );
        assert_eq!(
            decimal("\u{2003}12x456").unwrap_err(),
            CodeError::InvalidCharacter { position: 4 }
        );
    }

    #[test]
    fn parse_rejects_empty_input() {
        assert_eq!(decimal("").unwrap_err(), CodeError::Empty);
        assert_eq!(decimal(" \t\n").unwrap_err(), CodeError::Empty);
    }

    #[test]
    fn parse_limits_input_to_64_bytes() {
        let at_limit = format!("{}{}", " ".repeat(MAX_CODE_INPUT_LEN - 6), "123456");
        assert_eq!(decimal(&at_limit).unwrap(), "123456");
        let over_limit = format!(" {at_limit}");
        assert_eq!(decimal(&over_limit).unwrap_err(), CodeError::TooLong);
        assert_eq!(decimal(&"1".repeat(65)).unwrap_err(), CodeError::TooLong);
        assert_eq!(decimal(&"1".repeat(64)).unwrap().len(), 64);
    }

    #[test]
    fn errors_never_echo_input() {
        let message = decimal("98x765").unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid code: character 3 is neither a code digit \
             nor a single space between groups of digits"
        );
        assert!(!message.contains("98"));
        assert!(!message.contains('x'));
        assert_eq!(
            CodeError::TooLong.to_string(),
            "invalid code: the input is longer than 64 bytes"
        );
    }

    #[test]
    fn ct_eq_str_compares_normalised_code() {
        let code = Code::parse("123 456", Charset::Decimal).unwrap();
        assert!(code.ct_eq_str("123456"));
        assert!(!code.ct_eq_str("123457"));
        assert!(!code.ct_eq_str("123 456"));
        assert!(!code.ct_eq_str(""));
        assert!(!code.is_empty());
    }
}
