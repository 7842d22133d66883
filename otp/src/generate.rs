//! Code generation: HOTP (RFC 4226), TOTP (RFC 6238) and Mobile-OTP.

use data_encoding::HEXLOWER;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::{Algorithm, Kind, Secret};

/// Length of a Mobile-OTP time step in seconds.
pub const MOTP_PERIOD: u32 = 10;

/// Number of hex digits in a Mobile-OTP code.
pub const MOTP_DIGITS: u8 = 6;

/// Computes an HOTP code (RFC 4226): HMAC over the big-endian counter,
/// dynamic truncation to 31 bits, then the value modulo 10^`digits`,
/// zero-padded to `digits` characters.
///
/// RFC 4226 and oathtool 2.6.7 use 6 to 8 digits, and callers must validate
/// that range. Other values follow the same formula, so 10 or more digits
/// return the whole 31-bit value with leading zeros, and 0 digits an empty
/// string.
#[must_use]
pub fn hotp(secret: &Secret, counter: u64, digits: u8, algorithm: Algorithm) -> Zeroizing<String> {
    match KeyedHmac::new(secret.as_bytes(), algorithm) {
        Some(keyed) => keyed.code(counter, digits),
        // HMAC takes keys of any length, so this arm cannot run. An empty
        // code never matches.
        None => Zeroizing::new(String::new()),
    }
}

/// Computes a TOTP code (RFC 6238): the HOTP code of the time step that
/// contains `unix_time`, with T0 = 0. See [`hotp`] for `digits`.
#[must_use]
pub fn totp(secret: &Secret, unix_time: u64, period: u32, digits: u8, algorithm: Algorithm) -> Zeroizing<String> {
    hotp(secret, totp_step(unix_time, period), digits, algorithm)
}

/// Returns the TOTP time step that contains `unix_time`: `unix_time / period`,
/// with T0 = 0. A `period` of 0 is invalid and counts as 1, so that this
/// function cannot panic.
pub fn totp_step(unix_time: u64, period: u32) -> u64 {
    unix_time / u64::from(period.max(1))
}

/// Computes a Mobile-OTP code: the first six lowercase hex digits of the MD5
/// digest of the ASCII text `{step}{secret as lowercase hex}{pin}`.
///
/// `step` is the Unix time divided by [`MOTP_PERIOD`]. The PIN bytes are
/// used as they are, so a PIN typed as text should be stored as its bytes.
#[must_use]
pub fn motp(secret: &Secret, pin: &Secret, step: u64) -> Zeroizing<String> {
    let step_text = step.to_string();
    let secret_hex = secret.to_hex();

    let message_len = step_text.len() + secret_hex.len() + pin.len();
    let mut message = Zeroizing::new(Vec::with_capacity(message_len));
    message.extend_from_slice(step_text.as_bytes());
    message.extend_from_slice(secret_hex.as_bytes());
    message.extend_from_slice(pin.as_bytes());

    let digest = Md5::digest(message.as_slice());
    let mut code = Zeroizing::new(String::with_capacity(usize::from(MOTP_DIGITS)));
    HEXLOWER.encode_append(&digest[..usize::from(MOTP_DIGITS / 2)], &mut code);
    code
}

/// Returns bytes that stand for every code a token can give: two tokens
/// with the same bytes give the same code for the same counter or time
/// step. Raw secrets are not enough to compare:
///
/// - HOTP and TOTP: HMAC pads a key shorter than the hash's block with
///   zero bytes and hashes a longer one first, so `S` and `S` followed by
///   zero bytes, or a long key and its hash, are one key. The bytes are the
///   key as HMAC uses it, without the padding, tagged with the algorithm.
///   HOTP and TOTP share them: the same key gives the same code for the
///   same number.
/// - Mobile-OTP hashes the secret as hex text followed by the PIN, so a
///   secret ending in `12` with the PIN `3456` is a secret without that
///   byte and the PIN `123456`. The bytes are that text.
#[must_use]
pub fn code_identity(kind: Kind, algorithm: Algorithm, secret: &Secret, pin: Option<&Secret>) -> Zeroizing<Vec<u8>> {
    let mut identity = Zeroizing::new(Vec::new());
    if kind == Kind::Motp {
        identity.push(b'm');
        identity.extend_from_slice(secret.to_hex().as_bytes());
        identity.extend_from_slice(pin.map(Secret::as_bytes).unwrap_or_default());
        return identity;
    }
    let key = secret.as_bytes();
    let (tag, block) = match algorithm {
        Algorithm::Sha1 => (b'1', 64),
        Algorithm::Sha256 => (b'2', 64),
        Algorithm::Sha512 => (b'5', 128),
    };
    identity.push(tag);
    if key.len() > block {
        match algorithm {
            Algorithm::Sha1 => identity.extend_from_slice(&Sha1::digest(key)),
            Algorithm::Sha256 => identity.extend_from_slice(&Sha256::digest(key)),
            Algorithm::Sha512 => identity.extend_from_slice(&Sha512::digest(key)),
        }
    } else {
        identity.extend_from_slice(key);
    }
    while identity.len() > 1 && identity.last() == Some(&0) {
        identity.pop();
    }
    identity
}

/// An HMAC with its key already absorbed, for computing many codes of one
/// token.
///
/// Keying HMAC hashes two padded key blocks. A verification window of 11
/// candidates would key it 11 times, almost half of its hashing. This keys
/// it once, and each code clones the keyed state and hashes its counter.
pub(crate) enum KeyedHmac {
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
    Sha512(Hmac<Sha512>),
}

impl KeyedHmac {
    /// Returns `None` only if the HMAC crate rejects the key, and it
    /// accepts keys of every length.
    pub(crate) fn new(key: &[u8], algorithm: Algorithm) -> Option<Self> {
        Some(match algorithm {
            Algorithm::Sha1 => KeyedHmac::Sha1(Mac::new_from_slice(key).ok()?),
            Algorithm::Sha256 => KeyedHmac::Sha256(Mac::new_from_slice(key).ok()?),
            Algorithm::Sha512 => KeyedHmac::Sha512(Mac::new_from_slice(key).ok()?),
        })
    }

    /// Returns the HOTP code of `counter` with `digits` digits; see [`hotp`].
    pub(crate) fn code(&self, counter: u64, digits: u8) -> Zeroizing<String> {
        match self.value(counter) {
            Some(value) => decimal_code(value, digits),
            // Every digest here has the 20 or more bytes that truncation
            // needs, so this arm cannot run. An empty code never matches.
            None => Zeroizing::new(String::new()),
        }
    }
}

impl KeyedHmac {
    /// Returns the truncated 31-bit value of `counter`, before the modulo.
    fn value(&self, counter: u64) -> Option<u32> {
        let message = counter.to_be_bytes();
        match self {
            KeyedHmac::Sha1(mac) => truncated(mac, &message),
            KeyedHmac::Sha256(mac) => truncated(mac, &message),
            KeyedHmac::Sha512(mac) => truncated(mac, &message),
        }
    }

    /// Returns whether `code` is the HOTP code of `counter` with `digits`
    /// digits, comparing in constant time. Equal to comparing with
    /// [`KeyedHmac::code`], without the text on the heap: a verification
    /// computes up to a window's worth of codes.
    pub(crate) fn code_matches(&self, counter: u64, digits: u8, code: &[u8]) -> Choice {
        let mut buffer = Zeroizing::new([0u8; MAX_DIRECT_DIGITS]);
        let places = usize::from(digits);
        match (self.value(counter), buffer.get_mut(..places)) {
            (Some(value), Some(text)) => {
                decimal_digits(value, text);
                code.ct_eq(text)
            }
            // Longer codes than any supported take the general path.
            (Some(_), None) => code.ct_eq(self.code(counter, digits).as_bytes()),
            (None, _) => Choice::from(0),
        }
    }
}

/// Maximum number of digits that [`KeyedHmac::code_matches`] writes into its
/// stack buffer.
const MAX_DIRECT_DIGITS: usize = 10;

fn truncated<M: Mac + Clone>(keyed: &M, message: &[u8]) -> Option<u32> {
    let mut mac = keyed.clone();
    mac.update(message);
    dynamic_truncation(&mac.finalize().into_bytes())
}

/// Applies RFC 4226 dynamic truncation: the low 4 bits of the last byte give
/// an offset, and the 4 bytes there, with the top bit cleared, the value.
fn dynamic_truncation(digest: &[u8]) -> Option<u32> {
    let offset = usize::from(digest.last()? & 0x0f);
    let bytes: [u8; 4] = digest.get(offset..offset + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes) & 0x7fff_ffff)
}

/// Formats `value` modulo 10^`digits` with leading zeros to `digits` places.
fn decimal_code(value: u32, digits: u8) -> Zeroizing<String> {
    let mut code = Zeroizing::new(String::with_capacity(usize::from(digits)));
    for place in (0..u32::from(digits)).rev() {
        code.push(char::from(decimal_digit(value, place)));
    }
    code
}

/// Writes `value` modulo 10^`text.len()` into `text` as ASCII digits, with
/// leading zeros: the bytes [`decimal_code`] returns for that length.
fn decimal_digits(value: u32, text: &mut [u8]) {
    let mut place = u32::try_from(text.len()).unwrap_or(u32::MAX);
    for byte in text.iter_mut() {
        place = place.saturating_sub(1);
        *byte = decimal_digit(value, place);
    }
}

/// Returns the ASCII digit of `value` at decimal `place` (0 for the units). Places
/// of 10^10 and above exceed u32 and hold 0 for a 31-bit value.
fn decimal_digit(value: u32, place: u32) -> u8 {
    let digit = 10u32.checked_pow(place).map_or(0, |unit| value / unit % 10);
    b'0' + u8::try_from(digit).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rfc_seed() -> Secret {
        Secret::new(b"12345678901234567890".to_vec())
    }

    fn same_hotp_codes(a: &Secret, b: &Secret, algorithm: Algorithm) -> bool {
        (0..50).all(|counter| hotp(a, counter, 8, algorithm) == hotp(b, counter, 8, algorithm))
    }

    #[test]
    fn code_identity_normalises_hmac_keys() {
        let identity = |secret: &Secret, algorithm| code_identity(Kind::Totp, algorithm, secret, None);
        for algorithm in [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512] {
            let seed = rfc_seed();
            let padded = Secret::new([seed.as_bytes(), &[0, 0][..]].concat());
            let other = Secret::new([seed.as_bytes(), &[0, 1][..]].concat());
            assert!(same_hotp_codes(&seed, &padded, algorithm));
            assert_eq!(identity(&seed, algorithm), identity(&padded, algorithm));
            assert!(!same_hotp_codes(&seed, &other, algorithm));
            assert_ne!(identity(&seed, algorithm), identity(&other, algorithm));
        }
        assert_ne!(
            identity(&rfc_seed(), Algorithm::Sha1),
            identity(&rfc_seed(), Algorithm::Sha256),
            "another hash gives other codes"
        );

        let long = Secret::new(vec![7; 100]);
        let hashed = Secret::new(Sha1::digest(long.as_bytes()).to_vec());
        assert!(same_hotp_codes(&long, &hashed, Algorithm::Sha1));
        assert_eq!(identity(&long, Algorithm::Sha1), identity(&hashed, Algorithm::Sha1));
        // 100 bytes fit in SHA-512's 128-byte block, so HMAC does not hash them.
        let hashed = Secret::new(Sha512::digest(long.as_bytes()).to_vec());
        assert!(!same_hotp_codes(&long, &hashed, Algorithm::Sha512));
        assert_ne!(identity(&long, Algorithm::Sha512), identity(&hashed, Algorithm::Sha512));
    }

    #[test]
    fn code_identity_joins_motp_text() {
        let short = Secret::from_hex("0011223344556677").unwrap();
        let long = Secret::from_hex("001122334455667712").unwrap();
        let (pin, shorter_pin) = (Secret::new(b"123456".to_vec()), Secret::new(b"3456".to_vec()));
        let identity = |secret, pin| code_identity(Kind::Motp, Algorithm::Sha1, secret, Some(pin));
        assert!((0..50).all(|step| motp(&short, &pin, step) == motp(&long, &shorter_pin, step)));
        assert_eq!(identity(&short, &pin), identity(&long, &shorter_pin));
        assert_ne!(identity(&short, &pin), identity(&long, &pin));
    }

    #[test]
    fn dynamic_truncation_matches_rfc4226_example() {
        // RFC 4226 section 5.4 example digest.
        let digest = Secret::from_hex("1f8698690e02ca16618550ef7f19da8e945b555a").unwrap();
        assert_eq!(dynamic_truncation(digest.as_bytes()), Some(0x50ef7f19));
        assert_eq!(decimal_code(0x50ef7f19, 6).as_str(), "872921");
    }

    #[test]
    fn dynamic_truncation_clears_top_bit() {
        let mut digest = [0xffu8; 20];
        digest[19] = 0x00;
        assert_eq!(dynamic_truncation(&digest), Some(0x7fff_ffff));
    }

    #[test]
    fn dynamic_truncation_uses_last_offset() {
        let mut digest = [0u8; 20];
        digest[15..19].copy_from_slice(&[0x01, 0x02, 0x03, 0x04]);
        digest[19] = 0x0f;
        assert_eq!(dynamic_truncation(&digest), Some(0x0102_0304));
    }

    #[test]
    fn decimal_code_pads_with_zeros() {
        assert_eq!(decimal_code(42, 6).as_str(), "000042");
        assert_eq!(decimal_code(1_284_755_224, 6).as_str(), "755224");
        assert_eq!(decimal_code(1_284_755_224, 8).as_str(), "84755224");
    }

    #[test]
    fn code_matches_every_length() {
        let values = [
            0u32,
            1,
            9,
            10,
            999_999,
            1_000_000,
            999_999_999,
            1_000_000_000,
            0x7fff_ffff,
        ];
        for value in values {
            for len in 0..=MAX_DIRECT_DIGITS {
                let mut text = [0u8; MAX_DIRECT_DIGITS];
                decimal_digits(value, &mut text[..len]);
                let digits = u8::try_from(len).unwrap();
                assert_eq!(&text[..len], decimal_code(value, digits).as_bytes(), "{value} {len}");
            }
        }
        for algorithm in [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512] {
            let keyed = KeyedHmac::new(b"12345678901234567890", algorithm).unwrap();
            for digits in 0..=u8::MAX {
                for counter in 0..8 {
                    let code = keyed.code(counter, digits);
                    for other in counter..counter + 3 {
                        let expected = keyed.code(other, digits).as_str() == code.as_str();
                        assert_eq!(bool::from(keyed.code_matches(other, digits, code.as_bytes())), expected);
                    }
                    for cut in 1..=code.len().min(2) {
                        let short = code.as_bytes().get(..code.len() - cut).unwrap();
                        assert!(!bool::from(keyed.code_matches(counter, digits, short)));
                    }
                    let mut longer = code.as_bytes().to_vec();
                    longer.push(b'0');
                    assert!(!bool::from(keyed.code_matches(counter, digits, &longer)));
                    if let Some(first) = longer.first_mut() {
                        *first = if *first == b'9' { b'0' } else { *first + 1 };
                    }
                    longer.pop();
                    let flipped_expected = longer.as_slice() == code.as_bytes();
                    assert_eq!(
                        bool::from(keyed.code_matches(counter, digits, &longer)),
                        flipped_expected
                    );
                }
            }
        }
    }

    #[test]
    fn decimal_code_handles_unusual_lengths() {
        assert_eq!(decimal_code(0x7fff_ffff, 10).as_str(), "2147483647");
        assert_eq!(decimal_code(0x7fff_ffff, 12).as_str(), "002147483647");
        assert_eq!(decimal_code(5, 1).as_str(), "5");
        assert_eq!(decimal_code(5, 0).as_str(), "");
        assert_eq!(decimal_code(5, u8::MAX).len(), 255);
    }

    #[test]
    fn hotp_matches_rfc4226_counters() {
        assert_eq!(hotp(&rfc_seed(), 0, 6, Algorithm::Sha1).as_str(), "755224");
        assert_eq!(hotp(&rfc_seed(), 9, 6, Algorithm::Sha1).as_str(), "520489");
    }

    #[test]
    fn keyed_hmac_matches_rfc_counters() {
        // RFC 4226 appendix D from one keyed state, so that state carried
        // over from one code to the next fails the test.
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489",
        ];
        let keyed = KeyedHmac::new(rfc_seed().as_bytes(), Algorithm::Sha1).unwrap();
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(keyed.code(counter as u64, 6).as_str(), *code);
        }
        assert_eq!(keyed.code(0, 6).as_str(), "755224");
    }

    #[test]
    fn hotp_accepts_empty_and_long_keys() {
        let empty = Secret::new(Vec::new());
        assert_eq!(hotp(&empty, 0, 6, Algorithm::Sha1).len(), 6);
        let long = Secret::new(vec![0x5a; 300]);
        assert_eq!(hotp(&long, 0, 8, Algorithm::Sha512).len(), 8);
    }

    #[test]
    fn totp_equals_hotp_of_step() {
        let seed = rfc_seed();
        assert_eq!(totp(&seed, 59, 30, 8, Algorithm::Sha1).as_str(), "94287082");
        assert_eq!(
            totp(&seed, 59, 30, 8, Algorithm::Sha1),
            hotp(&seed, 1, 8, Algorithm::Sha1)
        );
    }

    #[test]
    fn totp_step_divides_by_period() {
        assert_eq!(totp_step(0, 30), 0);
        assert_eq!(totp_step(29, 30), 0);
        assert_eq!(totp_step(30, 30), 1);
        assert_eq!(totp_step(59, 30), 1);
        assert_eq!(totp_step(u64::MAX, 1), u64::MAX);
        assert_eq!(totp_step(100, 0), 100);
    }

    #[test]
    fn motp_returns_six_lowercase_hex() {
        let secret = Secret::from_hex("0123456789ABCDEF").unwrap();
        let pin = Secret::new(b"1234".to_vec());
        let code = motp(&secret, &pin, 0);
        assert_eq!(code.len(), 6);
        assert!(code.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    }
}
