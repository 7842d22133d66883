//! `otpauth://` key URIs, the text an authenticator app receives (usually as a
//! QR code) when a token is enrolled, and a QR code renderer for terminals.
//!
//! The format is the "Key Uri Format" page of Google Authenticator's wiki
//! (revision of November 2018): `otpauth://TYPE/LABEL?PARAMETERS`. TYPE is
//! `totp` or `hotp`. LABEL is `account` or `issuer:account`, where the colon
//! may be literal or `%3A` and spaces may precede the account. The parameters
//! are `secret` (base32, required, padding optional), `issuer`, `algorithm`
//! (SHA1 by default), `digits` (6 by default), `period` (seconds, 30 by
//! default, TOTP only) and `counter` (required for HOTP). When both the
//! `issuer` parameter and the label's issuer prefix are present, the wiki
//! states that they should be equal.
//!
//! [`parse_uri`] rejects a wrong scheme or type, a missing or invalid secret,
//! an unknown algorithm, digits other than 6 or 8, a zero period, an HOTP URI
//! without a counter, a repeated parameter, malformed percent-encoding and an
//! issuer parameter that disagrees with the label. Parameters it does not use
//! (such as `image` or `icon`) are ignored. Mobile-OTP has no key URI, so
//! `motp` URIs are rejected. No error message contains the secret or the URI.
//!
//! In the query, `+` is read as a space, as `application/x-www-form-urlencoded`
//! parsers do; in the label it is a literal `+`. [`format_uri`] writes spaces
//! as `%20` and `+` as `%2B`, so its output reads the same either way.

use std::fmt;

use freeauth_otp::{Algorithm, Kind, Secret, SecretError};
use qrcode::{Color, QrCode};
use zeroize::{Zeroize, Zeroizing};

/// Number of digits in a code when a URI has no `digits` parameter.
pub const DEFAULT_DIGITS: u8 = 6;

/// Seconds per time step when a URI has no `period` parameter.
pub const DEFAULT_PERIOD: u32 = 30;

/// Width in modules of the light border around a QR code: four for regular
/// QR codes, as the qrcode crate's own renderers draw it.
const QR_QUIET_ZONE: usize = 4;

/// Maximum length in characters of a rejected value that an error message
/// repeats. Longer values, and shorter ones that could be a secret, are
/// described by their length only, so that a secret pasted into the wrong
/// parameter is not echoed.
const MAX_ECHOED_CHARS: usize = 24;

/// A token as described outside FreeAuth, by an `otpauth://` URI or an import
/// file.
///
/// There is no `Debug` implementation because the description contains the
/// secret.
pub struct TokenDescription {
    /// Algorithm family: counter-based, time-based or Mobile-OTP.
    pub kind: Kind,
    /// Hash function of the HMAC.
    pub algorithm: Algorithm,
    /// Number of digits in a code: 6 or 8.
    pub digits: u8,
    /// Seconds per time step. Only time-based tokens use it.
    pub period: u32,
    /// Next counter value FreeAuth should accept. Only counter-based tokens
    /// use it.
    pub counter: u64,
    /// Shared secret key.
    pub secret: Secret,
    /// Provider or service name that authenticator apps show.
    pub issuer: Option<String>,
    /// Account name that authenticator apps show, usually a user name or an
    /// e-mail address.
    pub account: Option<String>,
}

/// Reason [`parse_uri`] rejected a URI.
///
/// Messages name the part of the URI at fault. They repeat a rejected value
/// of another parameter only when it is at most 24 characters long, and never
/// contain the `secret` parameter or the URI.
#[derive(Debug)]
#[non_exhaustive]
pub enum UriError {
    /// The text does not start with `otpauth://`.
    WrongScheme,
    /// TYPE is neither `totp` nor `hotp`. Contains TYPE, or its length when it is long.
    UnknownType(String),
    /// TYPE is `motp`. Mobile-OTP has no key URI format.
    MobileOtp,
    /// The URI contains a raw space, `#` or control character.
    InvalidCharacter,
    /// A `%` is not followed by two hexadecimal digits, or the decoded bytes
    /// are not UTF-8. `part` names the label or the parameter.
    InvalidPercentEncoding {
        /// Part of the URI that contains the bad escape.
        part: &'static str,
    },
    /// The decoded label or issuer contains a control character.
    ControlCharacter {
        /// Part of the URI that contains the character.
        part: &'static str,
    },
    /// A parameter that FreeAuth reads appears more than once.
    DuplicateParameter(&'static str),
    /// The `secret` parameter is missing or empty.
    MissingSecret,
    /// The `secret` parameter is not valid base32.
    InvalidSecret(SecretError),
    /// The `algorithm` parameter is not SHA1, SHA256 or SHA512. Contains the
    /// value, or its length when it is long.
    UnknownAlgorithm(String),
    /// The `digits` parameter is not 6 or 8. Contains the value, or its length
    /// when it is long.
    InvalidDigits(String),
    /// The `period` parameter is not a whole number of seconds from 1 to
    /// [`freeauth_otp::MAX_PERIOD`].
    /// Contains the value, or its length when it is long.
    InvalidPeriod(String),
    /// An HOTP URI has no `counter` parameter.
    MissingCounter,
    /// The `counter` parameter is not a whole number from 0 to
    /// [`freeauth_otp::MAX_COUNTER`].
    /// Contains the value, or its length when it is long.
    InvalidCounter(String),
    /// The `issuer` parameter differs from the label's issuer prefix.
    IssuerMismatch {
        /// Issuer prefix of the label, or its length when it is long.
        label: String,
        /// Value of the `issuer` parameter, or its length when it is long.
        parameter: String,
    },
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongScheme => write!(f, "not an otpauth URI: it must start with otpauth://"),
            Self::UnknownType(kind) => write!(f, "unknown token type `{kind}` in otpauth URI: expected totp or hotp"),
            Self::MobileOtp => write!(
                f,
                "Mobile-OTP tokens have no otpauth URI: enrol them with --secret-hex and --pin"
            ),
            Self::InvalidCharacter => write!(
                f,
                "invalid character in otpauth URI: spaces, '#' and control characters must be \
                 percent-encoded"
            ),
            Self::InvalidPercentEncoding { part } => write!(
                f,
                "invalid percent-encoding in the {part} of the otpauth URI: '%' must be followed \
                 by two hexadecimal digits and the decoded bytes must be UTF-8"
            ),
            Self::ControlCharacter { part } => write!(f, "the {part} of the otpauth URI contains a control character"),
            Self::DuplicateParameter(name) => write!(f, "parameter `{name}` appears more than once in the otpauth URI"),
            Self::MissingSecret => write!(f, "otpauth URI has no secret parameter, or it is empty"),
            Self::InvalidSecret(error) => {
                write!(f, "invalid secret parameter in otpauth URI: {error}")
            }
            Self::UnknownAlgorithm(value) => write!(
                f,
                "unsupported algorithm `{value}` in otpauth URI: expected SHA1, SHA256 or SHA512"
            ),
            Self::InvalidDigits(value) => {
                write!(f, "invalid digits `{value}` in otpauth URI: FreeAuth supports 6 or 8")
            }
            Self::InvalidPeriod(value) => write!(
                f,
                "invalid period `{value}` in otpauth URI: expected a whole number of seconds \
                 from 1 to {}",
                freeauth_otp::MAX_PERIOD
            ),
            Self::MissingCounter => write!(
                f,
                "hotp URI has no counter parameter: add counter=N with the next counter value \
                 of the token"
            ),
            Self::InvalidCounter(value) => write!(
                f,
                "invalid counter `{value}` in otpauth URI: expected a whole number from 0 to {}",
                freeauth_otp::MAX_COUNTER
            ),
            Self::IssuerMismatch { label, parameter } => write!(
                f,
                "the issuer prefix `{label}` of the label differs from the issuer parameter \
                 `{parameter}` in the otpauth URI"
            ),
        }
    }
}

impl std::error::Error for UriError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None
    }
}

/// Failure to encode text as a QR code, usually because it is too long.
#[derive(Debug)]
pub struct QrError(qrcode::types::QrError);

impl fmt::Display for QrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot encode the text as a QR code: {}", self.0)
    }
}

impl std::error::Error for QrError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Parses an `otpauth://totp/...` or `otpauth://hotp/...` key URI.
///
/// Whitespace around the URI is ignored. For `totp` the returned counter is
/// 0, and for `hotp` the period is [`DEFAULT_PERIOD`]; neither is used.
pub fn parse_uri(uri: &str) -> Result<TokenDescription, UriError> {
    let uri = uri.trim();
    let rest = strip_prefix_ignore_ascii_case(uri, "otpauth://").ok_or(UriError::WrongScheme)?;
    if rest.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#') {
        return Err(UriError::InvalidCharacter);
    }

    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (type_text, raw_label) = path.split_once('/').unwrap_or((path, ""));
    let is_hotp = parse_type(type_text)?;
    let label = parse_label(raw_label)?;
    let parameters = Parameters::parse(query)?;

    let secret_text = parameters
        .secret
        .filter(|text| !text.trim().is_empty())
        .ok_or(UriError::MissingSecret)?;
    let secret = Secret::from_base32(&secret_text).map_err(UriError::InvalidSecret)?;
    if secret.is_empty() {
        return Err(UriError::MissingSecret);
    }

    let algorithm = match parameters.algorithm {
        None => Algorithm::Sha1,
        Some(text) => text
            .parse::<Algorithm>()
            .map_err(|_| UriError::UnknownAlgorithm(excerpt(&text)))?,
    };
    let digits = match parameters.digits {
        None => DEFAULT_DIGITS,
        Some(text) => parse_decimal::<u8>(&text)
            .filter(|digits| *digits == 6 || *digits == 8)
            .ok_or_else(|| UriError::InvalidDigits(excerpt(&text)))?,
    };
    let issuer = resolve_issuer(label.issuer, parameters.issuer)?;

    let (kind, period, counter) = if is_hotp {
        let text = parameters.counter.ok_or(UriError::MissingCounter)?;
        let counter = parse_decimal::<u64>(&text)
            .filter(|counter| *counter <= freeauth_otp::MAX_COUNTER)
            .ok_or_else(|| UriError::InvalidCounter(excerpt(&text)))?;
        (Kind::Hotp, DEFAULT_PERIOD, counter)
    } else {
        let period = match parameters.period {
            None => DEFAULT_PERIOD,
            Some(text) => parse_decimal::<u32>(&text)
                .filter(|period| (1..=freeauth_otp::MAX_PERIOD).contains(period))
                .ok_or_else(|| UriError::InvalidPeriod(excerpt(&text)))?,
        };
        (Kind::Totp, period, 0)
    };

    Ok(TokenDescription {
        kind,
        algorithm,
        digits,
        period,
        counter,
        secret,
        issuer,
        account: label.account,
    })
}

/// Writes `token` as an `otpauth://` key URI that [`parse_uri`] reads back.
///
/// The label is `issuer:account` (percent-encoded), and the parameters are
/// `secret`, `issuer` (when set), `algorithm`, `digits`, and `period` for
/// time-based or `counter` for counter-based tokens. A Mobile-OTP token is
/// written with type `motp`, which authenticator apps and [`parse_uri`]
/// reject. The result contains the secret and is zeroed when dropped.
///
/// NOTE: the key URI format allows no colon inside an issuer or account. An
/// issuer with a colon is written only as the `issuer` parameter, and a colon
/// in the account is written as `%3A`, which [`parse_uri`] then reads as the
/// issuer separator.
pub fn format_uri(token: &TokenDescription) -> Zeroizing<String> {
    let label = format_label(token.issuer.as_deref(), token.account.as_deref());

    let mut parameters = String::new();
    if let Some(issuer) = token.issuer.as_deref().filter(|issuer| !issuer.is_empty()) {
        parameters.push_str("&issuer=");
        parameters.push_str(&percent_encode(issuer, is_unreserved));
    }
    parameters.push_str(&format!("&algorithm={}&digits={}", token.algorithm, token.digits));
    match token.kind {
        Kind::Hotp => parameters.push_str(&format!("&counter={}", token.counter)),
        _ => parameters.push_str(&format!("&period={}", token.period)),
    }

    let kind = token.kind.to_string();
    let secret = token.secret.to_base32();
    // One allocation of the final size, so that no reallocation leaves a copy
    // of the secret behind in freed memory.
    let length = "otpauth://".len() + kind.len() + 1 + label.len() + "?secret=".len() + secret.len() + parameters.len();
    let mut uri = Zeroizing::new(String::with_capacity(length));
    uri.push_str("otpauth://");
    uri.push_str(&kind);
    uri.push('/');
    uri.push_str(&label);
    uri.push_str("?secret=");
    uri.push_str(&secret);
    uri.push_str(&parameters);
    uri
}

/// Draws `text` as a QR code for a terminal, two modules per character row
/// with the Unicode half blocks `▀`, `▄` and `█`, inside a quiet zone of four
/// modules.
///
/// The drawing is for terminals with light text on a dark background: light
/// modules and the quiet zone are printed as blocks in the text colour, and
/// dark modules are left as background. On a terminal with dark text on a
/// light background the code appears inverted, which some scanners cannot
/// read. The result uses no escape sequences, so it can also be written to a
/// file. Every line ends with `\n`.
///
/// The drawing encodes `text`, so it is as secret as `text` is.
pub fn render_qr(text: &str) -> Result<String, QrError> {
    let code = QrCode::new(text.as_bytes()).map_err(QrError)?;
    let width = code.width();
    let modules = code.to_colors();

    // Coordinates include the quiet zone. Anything outside the symbol,
    // including the half row below an odd-sized drawing, is light.
    let is_light = |x: usize, y: usize| -> bool {
        let (Some(column), Some(row)) = (x.checked_sub(QR_QUIET_ZONE), y.checked_sub(QR_QUIET_ZONE)) else {
            return true;
        };
        if column >= width || row >= width {
            return true;
        }
        modules.get(row * width + column) != Some(&Color::Dark)
    };

    let size = width + 2 * QR_QUIET_ZONE;
    let mut drawing = String::with_capacity(size.div_ceil(2) * (size * '█'.len_utf8() + 1));
    for y in (0..size).step_by(2) {
        for x in 0..size {
            let block = match (is_light(x, y), is_light(x, y + 1)) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            };
            drawing.push(block);
        }
        drawing.push('\n');
    }
    Ok(drawing)
}

/// Issuer and account decoded from the LABEL part of a key URI.
struct Label {
    issuer: Option<String>,
    account: Option<String>,
}

/// Raw values of the parameters that FreeAuth reads, percent-decoded.
#[derive(Default)]
struct Parameters {
    secret: Option<Zeroizing<String>>,
    issuer: Option<String>,
    algorithm: Option<String>,
    digits: Option<String>,
    period: Option<String>,
    counter: Option<String>,
}

impl Parameters {
    /// Splits the query at `&` and decodes the parameters FreeAuth reads.
    /// Parameter names are compared without regard to ASCII case.
    fn parse(query: &str) -> Result<Self, UriError> {
        let mut parameters = Self::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(raw_name, true).ok_or(UriError::InvalidPercentEncoding {
                part: "parameter names",
            })?;
            match name.to_ascii_lowercase().as_str() {
                "secret" => {
                    // Base32 has no '+', so a '+' stays and makes the secret invalid.
                    let value = percent_decode(raw_value, false).ok_or(UriError::InvalidPercentEncoding {
                        part: "secret parameter",
                    })?;
                    set_once(&mut parameters.secret, "secret", value)?;
                }
                "issuer" => {
                    let value = decode_text(raw_value, "issuer parameter")?;
                    set_once(&mut parameters.issuer, "issuer", value)?;
                }
                "algorithm" => {
                    let value = decode_text(raw_value, "algorithm parameter")?;
                    set_once(&mut parameters.algorithm, "algorithm", value)?;
                }
                "digits" => {
                    let value = decode_text(raw_value, "digits parameter")?;
                    set_once(&mut parameters.digits, "digits", value)?;
                }
                "period" => {
                    let value = decode_text(raw_value, "period parameter")?;
                    set_once(&mut parameters.period, "period", value)?;
                }
                "counter" => {
                    let value = decode_text(raw_value, "counter parameter")?;
                    set_once(&mut parameters.counter, "counter", value)?;
                }
                // Parameters such as `image` are not decoded at all, so a bad
                // escape inside them does not reject the URI.
                _ => {}
            }
        }
        Ok(parameters)
    }
}

/// Stores `value` in `slot`, or rejects a second occurrence of `name`.
fn set_once<T>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), UriError> {
    if slot.is_some() {
        return Err(UriError::DuplicateParameter(name));
    }
    *slot = Some(value);
    Ok(())
}

/// Returns whether TYPE is `hotp`, or rejects anything but `totp` and `hotp`.
fn parse_type(type_text: &str) -> Result<bool, UriError> {
    if type_text.eq_ignore_ascii_case("totp") {
        Ok(false)
    } else if type_text.eq_ignore_ascii_case("hotp") {
        Ok(true)
    } else if type_text.eq_ignore_ascii_case("motp") {
        Err(UriError::MobileOtp)
    } else {
        Err(UriError::UnknownType(excerpt(type_text)))
    }
}

/// Decodes LABEL and splits it at the first colon into issuer and account.
///
/// The key URI format forbids further colons, but the split is unambiguous,
/// so a colon inside the account is accepted.
fn parse_label(raw_label: &str) -> Result<Label, UriError> {
    let label = percent_decode(raw_label, false).ok_or(UriError::InvalidPercentEncoding { part: "label" })?;
    if label.chars().any(char::is_control) {
        return Err(UriError::ControlCharacter { part: "label" });
    }

    let (issuer, account) = match label.split_once(':') {
        Some((issuer, account)) => (Some(issuer), account.trim_start_matches(' ')),
        None => (None, label.as_str()),
    };
    Ok(Label {
        issuer: issuer.filter(|issuer| !issuer.is_empty()).map(str::to_owned),
        account: Some(account).filter(|account| !account.is_empty()).map(str::to_owned),
    })
}

/// Chooses the issuer from the label prefix and the `issuer` parameter,
/// rejecting a disagreement. An empty `issuer` parameter counts as absent.
fn resolve_issuer(label_issuer: Option<String>, parameter: Option<String>) -> Result<Option<String>, UriError> {
    let parameter = parameter.filter(|issuer| !issuer.is_empty());
    match (label_issuer, parameter) {
        (Some(label), Some(parameter)) if label != parameter => Err(UriError::IssuerMismatch {
            label: excerpt(&label),
            parameter: excerpt(&parameter),
        }),
        (label, parameter) => Ok(parameter.or(label)),
    }
}

/// Percent-decodes a non-secret query value and rejects control characters.
fn decode_text(raw: &str, part: &'static str) -> Result<String, UriError> {
    let value = percent_decode(raw, true).ok_or(UriError::InvalidPercentEncoding { part })?;
    if value.chars().any(char::is_control) {
        return Err(UriError::ControlCharacter { part });
    }
    Ok(value.as_str().to_owned())
}

/// Decodes `%XX` escapes, and `+` as a space when `plus_is_space` is set.
/// Returns `None` for a malformed escape or for bytes that are not UTF-8.
/// Intermediate buffers are zeroed, because the text may be the secret.
fn percent_decode(raw: &str, plus_is_space: bool) -> Option<Zeroizing<String>> {
    let mut decoded = Zeroizing::new(Vec::with_capacity(raw.len()));
    let mut bytes = raw.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'%' => {
                let high = bytes.next().and_then(hex_value)?;
                let low = bytes.next().and_then(hex_value)?;
                decoded.push((high << 4) | low);
            }
            b'+' if plus_is_space => decoded.push(b' '),
            other => decoded.push(other),
        }
    }

    match String::from_utf8(std::mem::take(&mut *decoded)) {
        Ok(text) => Some(Zeroizing::new(text)),
        Err(error) => {
            error.into_bytes().zeroize();
            None
        }
    }
}

/// Value of one ASCII hexadecimal digit.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Writes `issuer:account`, or `account` alone when there is no issuer or the
/// issuer contains a colon.
fn format_label(issuer: Option<&str>, account: Option<&str>) -> String {
    let account = percent_encode(account.unwrap_or(""), is_label_safe);
    match issuer.filter(|issuer| !issuer.is_empty() && !issuer.contains(':')) {
        Some(issuer) => format!("{}:{account}", percent_encode(issuer, is_label_safe)),
        None => account,
    }
}

/// Percent-encodes every byte of `text` for which `keep` is false, with
/// upper-case hexadecimal digits.
fn percent_encode(text: &str, keep: fn(u8) -> bool) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if keep(byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Unreserved characters of RFC 3986, which never need encoding.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Characters left as they are in a label: the unreserved ones and `@`, which
/// keeps e-mail addresses readable as in the wiki's examples.
fn is_label_safe(byte: u8) -> bool {
    is_unreserved(byte) || byte == b'@'
}

/// Parses an unsigned decimal number of ASCII digits only: no sign, no
/// spaces. Returns `None` when it is empty, malformed or too large for `T`.
pub(crate) fn parse_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `text` as an error message may show it: whole with control characters
/// replaced by `?` when it has at most [`MAX_ECHOED_CHARS`] characters and
/// could not be a secret, and otherwise only its length.
fn excerpt(text: &str) -> String {
    let length = text.chars().count();
    if length > MAX_ECHOED_CHARS || could_be_secret(text) {
        return format!("<{length} characters>");
    }
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Returns whether `text` decodes, as base32 or as hexadecimal, to a
/// secret of a length FreeAuth accepts. The shortest, 10 bytes, is 16
/// base32 or 20 hexadecimal characters, within [`MAX_ECHOED_CHARS`].
fn could_be_secret(text: &str) -> bool {
    let accepted = |secret: Secret| freeauth_otp::HMAC_SECRET_LEN.contains(&secret.len());
    Secret::from_base32(text).is_ok_and(accepted) || Secret::from_hex(text).is_ok_and(accepted)
}

/// `text` without `prefix`, compared without regard to ASCII case.
fn strip_prefix_ignore_ascii_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        text.get(prefix.len()..)
    } else {
        None
    }
}

/// Deterministic pseudo-random numbers for the no-panic tests of both
/// parsers (xorshift64*).
#[cfg(test)]
pub(crate) struct TestRng(u64);

#[cfg(test)]
impl TestRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound`; `bound` must not be 0.
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Base32 of the ASCII bytes "12345678901234567890", the RFC 4226 test key.
    const RFC_SECRET_BASE32: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    const RFC_SECRET: &[u8] = b"12345678901234567890";

    fn parse(uri: &str) -> TokenDescription {
        match parse_uri(uri) {
            Ok(token) => token,
            Err(error) => panic!("{uri} was rejected: {error}"),
        }
    }

    fn reject(uri: &str) -> UriError {
        match parse_uri(uri) {
            Ok(_) => panic!("{uri} was accepted"),
            Err(error) => error,
        }
    }

    fn totp_token(issuer: Option<&str>, account: Option<&str>) -> TokenDescription {
        TokenDescription {
            kind: Kind::Totp,
            algorithm: Algorithm::Sha1,
            digits: 6,
            period: 30,
            counter: 0,
            secret: Secret::new(RFC_SECRET.to_vec()),
            issuer: issuer.map(str::to_owned),
            account: account.map(str::to_owned),
        }
    }

    fn assert_same_token(parsed: &TokenDescription, original: &TokenDescription) {
        assert_eq!(parsed.kind.to_string(), original.kind.to_string());
        assert_eq!(parsed.algorithm, original.algorithm);
        assert_eq!(parsed.digits, original.digits);
        assert_eq!(parsed.secret.as_bytes(), original.secret.as_bytes());
        assert_eq!(parsed.issuer, original.issuer);
        assert_eq!(parsed.account, original.account);
        if matches!(original.kind, Kind::Hotp) {
            assert_eq!(parsed.counter, original.counter);
        } else {
            assert_eq!(parsed.period, original.period);
        }
    }

    #[test]
    fn parses_totp_uri_with_all_parameters() {
        let token = parse(&format!(
            "otpauth://totp/Northwind%20Traders:dana%40northwind.example?secret={RFC_SECRET_BASE32}\
             &issuer=Northwind%20Traders&algorithm=SHA256&digits=8&period=60"
        ));
        assert!(matches!(token.kind, Kind::Totp));
        assert_eq!(token.algorithm, Algorithm::Sha256);
        assert_eq!(token.digits, 8);
        assert_eq!(token.period, 60);
        assert_eq!(token.secret.as_bytes(), RFC_SECRET);
        assert_eq!(token.issuer.as_deref(), Some("Northwind Traders"));
        assert_eq!(token.account.as_deref(), Some("dana@northwind.example"));
    }

    #[test]
    fn applies_defaults_to_minimal_totp_uri() {
        let token = parse(&format!("otpauth://totp/dana?secret={RFC_SECRET_BASE32}"));
        assert!(matches!(token.kind, Kind::Totp));
        assert_eq!(token.algorithm, Algorithm::Sha1);
        assert_eq!(token.digits, DEFAULT_DIGITS);
        assert_eq!(token.period, DEFAULT_PERIOD);
        assert_eq!(token.counter, 0);
        assert_eq!(token.issuer, None);
        assert_eq!(token.account.as_deref(), Some("dana"));
    }

    #[test]
    fn parses_hotp_uri_with_counter() {
        let max = freeauth_otp::MAX_COUNTER;
        let token = parse(&format!(
            "otpauth://hotp/Example:dana?secret={RFC_SECRET_BASE32}&counter={max}"
        ));
        assert!(matches!(token.kind, Kind::Hotp));
        assert_eq!(token.counter, max);
        assert_eq!(token.issuer.as_deref(), Some("Example"));
        for counter in [max + 1, u64::MAX] {
            let uri = format!("otpauth://hotp/a?secret={RFC_SECRET_BASE32}&counter={counter}");
            assert!(matches!(parse_uri(&uri), Err(UriError::InvalidCounter(_))), "{counter}");
        }
        let uri = format!("otpauth://totp/a?secret={RFC_SECRET_BASE32}&period=86401");
        assert!(matches!(parse_uri(&uri), Err(UriError::InvalidPeriod(_))));
    }

    #[test]
    fn ignores_parameters_of_other_type() {
        let hotp = parse(&format!(
            "otpauth://hotp/a?secret={RFC_SECRET_BASE32}&counter=5&period=0"
        ));
        assert_eq!(hotp.period, DEFAULT_PERIOD);
        assert_eq!(hotp.counter, 5);
        let totp = parse(&format!("otpauth://totp/a?secret={RFC_SECRET_BASE32}&counter=x"));
        assert_eq!(totp.counter, 0);
    }

    #[test]
    fn accepts_any_case_in_scheme_type_and_names() {
        let token = parse(&format!(
            "OTPAUTH://TOTP/dana?SECRET={}&Algorithm=sha512",
            RFC_SECRET_BASE32.to_ascii_lowercase()
        ));
        assert!(matches!(token.kind, Kind::Totp));
        assert_eq!(token.algorithm, Algorithm::Sha512);
        assert_eq!(token.secret.as_bytes(), RFC_SECRET);
    }

    #[test]
    fn accepts_padded_secret_and_surrounding_whitespace() {
        let token = parse(&format!("  otpauth://totp/dana?secret={RFC_SECRET_BASE32}%3D%3D\n"));
        assert_eq!(token.secret.as_bytes(), RFC_SECRET);
    }

    #[test]
    fn reads_issuer_from_label_without_parameter() {
        let token = parse(&format!("otpauth://totp/Example:dana?secret={RFC_SECRET_BASE32}"));
        assert_eq!(token.issuer.as_deref(), Some("Example"));
        assert_eq!(token.account.as_deref(), Some("dana"));
    }

    #[test]
    fn reads_issuer_from_parameter_without_prefix() {
        let token = parse(&format!(
            "otpauth://totp/dana?secret={RFC_SECRET_BASE32}&issuer=Example"
        ));
        assert_eq!(token.issuer.as_deref(), Some("Example"));
        assert_eq!(token.account.as_deref(), Some("dana"));
    }

    #[test]
    fn splits_label_at_encoded_colon() {
        let token = parse(&format!(
            "otpauth://totp/Big%20Corporation%3A%20%20alice%40bigco.example\
             ?secret={RFC_SECRET_BASE32}"
        ));
        assert_eq!(token.issuer.as_deref(), Some("Big Corporation"));
        assert_eq!(token.account.as_deref(), Some("alice@bigco.example"));
    }

    #[test]
    fn keeps_later_colons_in_account() {
        let token = parse(&format!("otpauth://totp/Example:host:dana?secret={RFC_SECRET_BASE32}"));
        assert_eq!(token.issuer.as_deref(), Some("Example"));
        assert_eq!(token.account.as_deref(), Some("host:dana"));
    }

    #[test]
    fn accepts_empty_label() {
        for uri in [
            format!("otpauth://totp/?secret={RFC_SECRET_BASE32}"),
            format!("otpauth://totp?secret={RFC_SECRET_BASE32}"),
        ] {
            let token = parse(&uri);
            assert_eq!(token.issuer, None, "{uri}");
            assert_eq!(token.account, None, "{uri}");
        }
    }

    #[test]
    fn decodes_utf8_escapes() {
        let token = parse(&format!(
            "otpauth://totp/B%C3%A4ckerei:j%C3%BCrgen?secret={RFC_SECRET_BASE32}\
             &issuer=B%C3%A4ckerei"
        ));
        assert_eq!(token.issuer.as_deref(), Some("Bäckerei"));
        assert_eq!(token.account.as_deref(), Some("jürgen"));
    }

    #[test]
    fn reads_plus_as_space_only_in_query() {
        let token = parse(&format!(
            "otpauth://totp/Acme+Co:a+b?secret={RFC_SECRET_BASE32}&issuer=Acme%2BCo"
        ));
        assert_eq!(token.issuer.as_deref(), Some("Acme+Co"));
        assert_eq!(token.account.as_deref(), Some("a+b"));

        let token = parse(&format!(
            "otpauth://totp/Acme%20Co:dana?secret={RFC_SECRET_BASE32}&issuer=Acme+Co"
        ));
        assert_eq!(token.issuer.as_deref(), Some("Acme Co"));
    }

    #[test]
    fn ignores_unknown_parameters() {
        let token = parse(&format!(
            "otpauth://totp/dana?image=https%3A%2F%2Fexample.com%2Flogo.png\
             &secret={RFC_SECRET_BASE32}\
             &icon=%ZZ&&color=red&lock"
        ));
        assert_eq!(token.secret.as_bytes(), RFC_SECRET);
    }

    #[test]
    fn rejects_wrong_scheme() {
        for uri in [
            format!("otpauth:/totp/dana?secret={RFC_SECRET_BASE32}"),
            format!("https://totp/dana?secret={RFC_SECRET_BASE32}"),
            format!("otpauth-migration://offline?data={RFC_SECRET_BASE32}"),
            String::new(),
            "otp".to_owned(),
        ] {
            assert!(matches!(reject(&uri), UriError::WrongScheme), "{uri}");
        }
    }

    #[test]
    fn rejects_unknown_type() {
        let error = reject(&format!("otpauth://yubikey/dana?secret={RFC_SECRET_BASE32}"));
        assert!(matches!(&error, UriError::UnknownType(kind) if kind == "yubikey"));
        assert!(error.to_string().contains("expected totp or hotp"));
    }

    #[test]
    fn rejects_motp_uri() {
        let error = reject("otpauth://motp/dana?secret=0123456789abcdef");
        assert!(matches!(error, UriError::MobileOtp));
        assert!(error.to_string().contains("--secret-hex"));
    }

    #[test]
    fn rejects_uri_without_secret() {
        for uri in [
            "otpauth://totp/dana",
            "otpauth://totp/dana?issuer=Example",
            "otpauth://totp/dana?secret=",
            "otpauth://totp/dana?secret",
        ] {
            assert!(matches!(reject(uri), UriError::MissingSecret), "{uri}");
        }
    }

    #[test]
    fn rejects_invalid_base32_secret() {
        for uri in [
            "otpauth://totp/dana?secret=JBSWY3DP1HPK3PXP",
            "otpauth://totp/dana?secret=JBSW+Y3DP",
            "otpauth://totp/dana?secret=JBSW%21Y3DP",
        ] {
            assert!(matches!(reject(uri), UriError::InvalidSecret(_)), "{uri}");
        }
        // Padding alone decodes to no key at all.
        let error = reject("otpauth://totp/dana?secret=%3D%3D");
        assert!(matches!(error, UriError::InvalidSecret(_) | UriError::MissingSecret));
    }

    #[test]
    fn rejects_unknown_algorithm() {
        for algorithm in ["MD5", "SHA3-256", "", "SHA+1"] {
            let uri = format!("otpauth://totp/dana?secret={RFC_SECRET_BASE32}&algorithm={algorithm}");
            assert!(matches!(reject(&uri), UriError::UnknownAlgorithm(_)), "{uri}");
        }
        let error = reject(&format!(
            "otpauth://totp/dana?secret={RFC_SECRET_BASE32}&algorithm=SHA%0A1"
        ));
        assert!(matches!(error, UriError::ControlCharacter { .. }));
    }

    #[test]
    fn rejects_digits_other_than_6_or_8() {
        for digits in ["7", "5", "10", "0", "", "six", "+6", "-8", "6.0", "256"] {
            let uri = format!("otpauth://totp/dana?secret={RFC_SECRET_BASE32}&digits={digits}");
            assert!(matches!(reject(&uri), UriError::InvalidDigits(_)), "{uri}");
        }
    }

    #[test]
    fn rejects_zero_or_malformed_period() {
        for period in ["0", "", "-30", "30s", "4294967296", "%2030"] {
            let uri = format!("otpauth://totp/dana?secret={RFC_SECRET_BASE32}&period={period}");
            assert!(matches!(reject(&uri), UriError::InvalidPeriod(_)), "{uri}");
        }
    }

    #[test]
    fn rejects_hotp_without_counter() {
        let error = reject(&format!("otpauth://hotp/dana?secret={RFC_SECRET_BASE32}"));
        assert!(matches!(error, UriError::MissingCounter));
    }

    #[test]
    fn rejects_malformed_counter() {
        for counter in ["", "-1", "1e3", "18446744073709551616", "0x10"] {
            let uri = format!("otpauth://hotp/dana?secret={RFC_SECRET_BASE32}&counter={counter}");
            assert!(matches!(reject(&uri), UriError::InvalidCounter(_)), "{uri}");
        }
    }

    #[test]
    fn rejects_duplicated_parameters() {
        let cases = [
            (
                format!("otpauth://totp/a?secret={RFC_SECRET_BASE32}&secret={RFC_SECRET_BASE32}"),
                "secret",
            ),
            (
                format!("otpauth://totp/a?secret={RFC_SECRET_BASE32}&Secret={RFC_SECRET_BASE32}"),
                "secret",
            ),
            (
                format!("otpauth://totp/a?issuer=X&secret={RFC_SECRET_BASE32}&issuer=X"),
                "issuer",
            ),
            (
                format!("otpauth://totp/a?secret={RFC_SECRET_BASE32}&digits=6&digits=6"),
                "digits",
            ),
            (
                format!("otpauth://totp/a?secret={RFC_SECRET_BASE32}&period=30&period=60"),
                "period",
            ),
            (
                format!("otpauth://hotp/a?secret={RFC_SECRET_BASE32}&counter=1&counter=2"),
                "counter",
            ),
            (
                format!("otpauth://totp/a?secret={RFC_SECRET_BASE32}&algorithm=SHA1&algorithm=SHA1"),
                "algorithm",
            ),
        ];
        for (uri, name) in cases {
            let error = reject(&uri);
            assert!(
                matches!(error, UriError::DuplicateParameter(found) if found == name),
                "{uri}"
            );
        }
    }

    #[test]
    fn rejects_bad_percent_encoding() {
        let cases = [
            (format!("otpauth://totp/dana%G1?secret={RFC_SECRET_BASE32}"), "label"),
            (format!("otpauth://totp/dana%4?secret={RFC_SECRET_BASE32}"), "label"),
            (format!("otpauth://totp/dana%?secret={RFC_SECRET_BASE32}"), "label"),
            (format!("otpauth://totp/dana%FF?secret={RFC_SECRET_BASE32}"), "label"),
            (
                format!("otpauth://totp/dana?secret={RFC_SECRET_BASE32}&issuer=Ex%2"),
                "issuer parameter",
            ),
            ("otpauth://totp/dana?secret=GEZD%C3".to_owned(), "secret parameter"),
            (
                format!("otpauth://totp/dana?secret={RFC_SECRET_BASE32}&%ZZ=1"),
                "parameter names",
            ),
        ];
        for (uri, part) in cases {
            let error = reject(&uri);
            assert!(
                matches!(error, UriError::InvalidPercentEncoding { part: found } if found == part),
                "{uri}"
            );
        }
    }

    #[test]
    fn rejects_raw_space_or_fragment() {
        for uri in [
            format!("otpauth://totp/dana smith?secret={RFC_SECRET_BASE32}"),
            format!("otpauth://totp/dana?secret={RFC_SECRET_BASE32}#fragment"),
            format!("otpauth://totp/dana?secret={RFC_SECRET_BASE32}\u{7}"),
        ] {
            assert!(matches!(reject(&uri), UriError::InvalidCharacter), "{uri:?}");
        }
    }

    #[test]
    fn rejects_encoded_control_characters() {
        let error = reject(&format!("otpauth://totp/dana%0Aroot?secret={RFC_SECRET_BASE32}"));
        assert!(matches!(error, UriError::ControlCharacter { part: "label" }));
        let error = reject(&format!("otpauth://totp/dana?secret={RFC_SECRET_BASE32}&issuer=a%1Bb"));
        assert!(matches!(
            error,
            UriError::ControlCharacter {
                part: "issuer parameter"
            }
        ));
    }

    #[test]
    fn rejects_issuer_that_disagrees_with_label() {
        let error = reject(&format!(
            "otpauth://totp/Example:dana?secret={RFC_SECRET_BASE32}&issuer=Other"
        ));
        assert!(matches!(
            &error,
            UriError::IssuerMismatch { label, parameter } if label == "Example" && parameter == "Other"
        ));
        let error = reject(&format!(
            "otpauth://totp/Example:dana?secret={RFC_SECRET_BASE32}&issuer=example"
        ));
        assert!(matches!(error, UriError::IssuerMismatch { .. }));
    }

    #[test]
    fn errors_never_contain_secret_or_uri() {
        let secret = "MZXW6YTBOI4TCNJSGM2DKNRXHA4TAMJS";
        let uris = [
            format!("otpauth://motp/dana?secret={secret}"),
            format!("otpauth://yubikey/dana?secret={secret}"),
            format!("otpauth://totp/dana?secret={secret}1"),
            format!("otpauth://totp/dana?secret={secret}&secret={secret}"),
            format!("otpauth://totp/dana?secret={secret}&algorithm={secret}"),
            format!("otpauth://totp/dana?secret={secret}&digits={secret}"),
            format!("otpauth://totp/dana?secret={secret}&period={secret}"),
            format!("otpauth://hotp/dana?secret={secret}"),
            format!("otpauth://hotp/dana?secret={secret}&counter={secret}"),
            format!("otpauth://totp/A:dana?secret={secret}&issuer=B"),
            format!("otpauth://totp/dana%ZZ?secret={secret}"),
            format!("otpauth://totp/dana?secret={secret}%ZZ"),
            format!("otpauth://totp/dana smith?secret={secret}"),
        ];
        for uri in uris {
            // Values longer than MAX_ECHOED_CHARS are never repeated.
            let message = reject_hiding(&uri, secret);
            assert!(!message.contains("otpauth://"), "{message}");
        }
    }

    /// Rejects `uri` and checks that neither the error's message nor its
    /// debug form contains `secret`. Returns the message.
    fn reject_hiding(uri: &str, secret: &str) -> String {
        let error = reject(uri);
        let message = error.to_string();
        let debug = format!("{error:?}");
        assert!(!message.contains(secret), "{message}");
        assert!(!debug.contains(secret), "{debug}");
        message
    }

    #[test]
    fn errors_never_contain_short_secret() {
        // Ten bytes, the shortest secret accepted: 16 base32 or 20
        // hexadecimal characters.
        let secrets = ["JBSWY3DPEHPK3PXP", "jbsw y3dp ehpk 3pxp", "3132333435363738393a"];
        for secret in secrets {
            let uris = [
                format!("otpauth://totp/dana?secret=JBSWY3DPEHPK3PXP&algorithm={secret}"),
                format!("otpauth://totp/dana?secret=JBSWY3DPEHPK3PXP&digits={secret}"),
                format!("otpauth://totp/dana?secret=JBSWY3DPEHPK3PXP&period={secret}"),
                format!("otpauth://hotp/dana?secret=JBSWY3DPEHPK3PXP&counter={secret}"),
                format!("otpauth://{secret}/dana?secret=JBSWY3DPEHPK3PXP"),
                format!("otpauth://totp/A:dana?secret=JBSWY3DPEHPK3PXP&issuer={secret}"),
            ];
            for uri in uris {
                reject_hiding(&uri, secret);
            }
        }
    }

    #[test]
    fn excerpt_keeps_non_secret_values() {
        assert_eq!(excerpt("SHA3"), "SHA3");
        assert_eq!(excerpt("Acme Co"), "Acme Co");
        assert_eq!(excerpt("4294967296"), "4294967296");
    }

    #[test]
    fn excerpt_hides_long_values() {
        let long = "A".repeat(MAX_ECHOED_CHARS + 1);
        assert_eq!(excerpt(&long), format!("<{} characters>", MAX_ECHOED_CHARS + 1));
        // Neither base32 nor hexadecimal, so it could not be a secret.
        let limit = "Z9".repeat(MAX_ECHOED_CHARS / 2);
        assert_eq!(excerpt(&limit), limit);
        assert_eq!(excerpt("a\u{1b}b"), "a?b");
    }

    #[test]
    fn formats_totp_uri_exactly() {
        let token = totp_token(Some("Acme Co"), Some("dana@example.com"));
        let uri = format_uri(&token);
        assert_eq!(
            uri.as_str(),
            format!(
                "otpauth://totp/Acme%20Co:dana@example.com?secret={RFC_SECRET_BASE32}\
                 &issuer=Acme%20Co&algorithm=SHA1&digits=6&period=30"
            )
        );
    }

    #[test]
    fn formats_hotp_uri_with_counter() {
        let mut token = totp_token(None, Some("dana"));
        token.kind = Kind::Hotp;
        token.counter = 7;
        let uri = format_uri(&token);
        assert_eq!(
            uri.as_str(),
            format!("otpauth://hotp/dana?secret={RFC_SECRET_BASE32}&algorithm=SHA1&digits=6&counter=7")
        );
    }

    #[test]
    fn round_trips_totp_token() {
        let mut token = totp_token(Some("Northwind"), Some("dana"));
        token.algorithm = Algorithm::Sha512;
        token.digits = 8;
        token.period = 45;
        let parsed = parse(&format_uri(&token));
        assert_same_token(&parsed, &token);
    }

    #[test]
    fn round_trips_hotp_token() {
        for counter in [0, 1, 41, freeauth_otp::MAX_COUNTER] {
            let mut token = totp_token(Some("Northwind"), Some("dana"));
            token.kind = Kind::Hotp;
            token.algorithm = Algorithm::Sha256;
            token.counter = counter;
            let parsed = parse(&format_uri(&token));
            assert_same_token(&parsed, &token);
        }
    }

    #[test]
    fn round_trips_reserved_and_unicode_text() {
        let names = [
            (Some("Bäckerei Müller & Söhne"), Some("jürgen+tag@example.com")),
            (Some("100% /?#=&"), Some("a b%20c")),
            (Some("Ex+ample"), Some("  padded")),
            (None, Some("  padded")),
            (None, Some("only-account")),
            (Some("Only Issuer"), None),
            (None, None),
            (Some("日本"), Some("ユーザー")),
        ];
        for (issuer, account) in names {
            let token = totp_token(issuer, account);
            let uri = format_uri(&token);
            let parsed = parse(&uri);
            assert_eq!(parsed.issuer.as_deref(), issuer, "{}", uri.as_str());
            // Spaces before the account are part of the separator, so a
            // leading space does not survive.
            assert_eq!(
                parsed.account.as_deref(),
                account.map(|account| if issuer.is_some() {
                    account.trim_start()
                } else {
                    account
                }),
                "{}",
                uri.as_str()
            );
        }
    }

    #[test]
    fn round_trips_issuer_containing_colon() {
        let token = totp_token(Some("Host:22"), Some("dana"));
        let uri = format_uri(&token);
        assert!(uri.starts_with("otpauth://totp/dana?"), "{}", uri.as_str());
        let parsed = parse(&uri);
        assert_eq!(parsed.issuer.as_deref(), Some("Host:22"));
        assert_eq!(parsed.account.as_deref(), Some("dana"));
    }

    #[test]
    fn round_trips_every_secret_length() {
        let mut rng = TestRng::new(0x0710);
        for length in 1..=64 {
            let bytes: Vec<u8> = (0..length).map(|_| rng.next_u64() as u8).collect();
            let mut token = totp_token(Some("Example"), Some("dana"));
            token.secret = Secret::new(bytes.clone());
            let parsed = parse(&format_uri(&token));
            assert_eq!(parsed.secret.as_bytes(), bytes.as_slice(), "length {length}");
        }
    }

    #[test]
    fn parse_uri_survives_random_input() {
        let valid = [
            format!(
                "otpauth://totp/Acme%20Co:dana@example.com?secret={RFC_SECRET_BASE32}\
                 &issuer=Acme%20Co&algorithm=SHA256&digits=8&period=60"
            ),
            format!("otpauth://hotp/B%C3%A4ckerei:j%C3%BCrgen?secret={RFC_SECRET_BASE32}&counter=42"),
        ];
        let alphabet = b"%:/?&=+#ABCXYZ2370abcxyz \x00\xc3\xa4";
        let mut rng = TestRng::new(0x5eed);

        for uri in &valid {
            for end in 0..=uri.len() {
                if let Some(prefix) = uri.get(..end) {
                    let _ = parse_uri(prefix);
                }
            }
            for _ in 0..2000 {
                let mut bytes = uri.as_bytes().to_vec();
                for _ in 0..=rng.below(4) {
                    let position = rng.below(bytes.len());
                    match rng.below(3) {
                        0 => bytes[position] = alphabet[rng.below(alphabet.len())],
                        1 => {
                            bytes.remove(position);
                        }
                        _ => bytes.insert(position, alphabet[rng.below(alphabet.len())]),
                    }
                }
                let _ = parse_uri(&String::from_utf8_lossy(&bytes));
            }
        }
        for _ in 0..2000 {
            let length = rng.below(200);
            let mut bytes: Vec<u8> = b"otpauth://".to_vec();
            bytes.extend((0..length).map(|_| rng.next_u64() as u8));
            let _ = parse_uri(&String::from_utf8_lossy(&bytes));
        }
    }

    /// Reads a drawing back into a grid of light (true) and dark modules,
    /// two rows per line.
    fn read_drawing(drawing: &str) -> Vec<Vec<bool>> {
        let mut rows = Vec::new();
        for line in drawing.lines() {
            let (top, bottom): (Vec<bool>, Vec<bool>) = line
                .chars()
                .map(|block| match block {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected character {other:?}"),
                })
                .unzip();
            rows.push(top);
            rows.push(bottom);
        }
        rows
    }

    #[test]
    fn render_qr_draws_every_module() {
        let text = format!("otpauth://totp/Example:dana?secret={RFC_SECRET_BASE32}&issuer=Example");
        let drawing = match render_qr(&text) {
            Ok(drawing) => drawing,
            Err(error) => panic!("{error}"),
        };
        let code = match QrCode::new(text.as_bytes()) {
            Ok(code) => code,
            Err(error) => panic!("{error}"),
        };
        let width = code.width();
        let grid = read_drawing(&drawing);
        let size = width + 2 * QR_QUIET_ZONE;

        assert!(drawing.ends_with('\n'));
        assert_eq!(grid.len(), size.div_ceil(2) * 2);
        for row in &grid {
            assert_eq!(row.len(), size);
        }
        for y in 0..width {
            for x in 0..width {
                let expected = code[(x, y)] == Color::Light;
                assert_eq!(
                    grid[y + QR_QUIET_ZONE][x + QR_QUIET_ZONE],
                    expected,
                    "module ({x}, {y})"
                );
            }
        }
    }

    #[test]
    fn render_qr_surrounds_code_with_quiet_zone() {
        let drawing = match render_qr("otpauth://totp/dana?secret=GEZDGNBV") {
            Ok(drawing) => drawing,
            Err(error) => panic!("{error}"),
        };
        let grid = read_drawing(&drawing);
        let size = grid[0].len();
        let width = size - 2 * QR_QUIET_ZONE;
        for (y, row) in grid.iter().enumerate() {
            for (x, light) in row.iter().enumerate() {
                let inside = (QR_QUIET_ZONE..QR_QUIET_ZONE + width).contains(&x)
                    && (QR_QUIET_ZONE..QR_QUIET_ZONE + width).contains(&y);
                if !inside {
                    assert!(light, "quiet zone module ({x}, {y}) is dark");
                }
            }
        }
        // The top-left finder pattern starts with a dark module.
        assert!(!grid[QR_QUIET_ZONE][QR_QUIET_ZONE]);
    }

    #[test]
    fn render_qr_rejects_oversized_text() {
        let error = match render_qr(&"A".repeat(8000)) {
            Ok(_) => panic!("8000 characters were encoded"),
            Err(error) => error,
        };
        assert!(error.to_string().starts_with("cannot encode the text as a QR code"));
    }
}
