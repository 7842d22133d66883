//! A string that carries a secret across the socket: an OTP code, a seed in
//! base32 or hex, a Mobile-OTP PIN or a backup code.
//!
//! It has no `Display`, its `Debug` prints a placeholder, and its memory is
//! wiped on drop. Copies that serde_json makes while parsing are outside its
//! control; the frame buffers around them are wiped by the readers.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// Upper bound on the length of any secret string on the wire, in bytes.
pub const MAX_SECRET_LEN: usize = 512;

/// A secret string that never prints itself.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Self {
        SecretString(Zeroizing::new(text.into()))
    }

    /// Exposes the secret for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretString {
    fn from(text: &str) -> Self {
        SecretString::new(text)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        if text.len() > MAX_SECRET_LEN {
            return Err(serde::de::Error::custom(format_args!(
                "secret string longer than {MAX_SECRET_LEN} bytes"
            )));
        }
        Ok(SecretString(Zeroizing::new(text.as_str().to_owned())))
    }
}
