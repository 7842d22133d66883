//! Cryptography keyed by the shared secret: User-Password hiding (RFC 2865
//! section 5.2), the Response Authenticator (section 3) and the
//! Message-Authenticator, HMAC-MD5 over the packet (RFC 3579 section 3.2).

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::packet::{Packet, HEADER_LEN};

/// A client's shared secret. No `Debug`, wiped on drop.
#[derive(Clone)]
pub struct SharedSecret(Zeroizing<Vec<u8>>);

impl SharedSecret {
    pub fn new(bytes: Vec<u8>) -> Self {
        SharedSecret(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Most password bytes a User-Password attribute may carry.
pub const MAX_PASSWORD_LEN: usize = 128;

/// Hides `password` for a request with `authenticator` (for clients and
/// tests; the bridge only unhides). Pads with NULs to a multiple of 16.
pub fn hide_password(password: &[u8], secret: &SharedSecret, authenticator: &[u8; 16]) -> Vec<u8> {
    let padded_len = password.len().div_ceil(16).max(1) * 16;
    let mut out = Vec::with_capacity(padded_len);
    let mut previous: [u8; 16] = *authenticator;
    for block in 0..padded_len / 16 {
        let pad = md5_of(&[secret.as_bytes(), &previous]);
        for (i, byte) in pad.iter().enumerate() {
            let plain = password.get(block * 16 + i).copied().unwrap_or(0);
            out.push(plain ^ byte);
        }
        previous.copy_from_slice(&out[block * 16..block * 16 + 16]);
    }
    out
}

/// Recovers the password of a User-Password value; `None` unless its length
/// is a multiple of 16 between 16 and 128. Trailing NULs are removed.
pub fn unhide_password(value: &[u8], secret: &SharedSecret, authenticator: &[u8; 16]) -> Option<Zeroizing<Vec<u8>>> {
    if value.is_empty() || value.len() > MAX_PASSWORD_LEN || value.len() % 16 != 0 {
        return None;
    }
    let mut plain = Zeroizing::new(Vec::with_capacity(value.len()));
    let mut previous: &[u8] = authenticator;
    for block in value.chunks_exact(16) {
        let pad = md5_of(&[secret.as_bytes(), previous]);
        plain.extend(block.iter().zip(pad.iter()).map(|(c, p)| c ^ p));
        previous = block;
    }
    while plain.last() == Some(&0) {
        plain.pop();
    }
    Some(plain)
}

/// Response Authenticator: MD5 of code, identifier, length, the request's
/// authenticator, the reply's attributes and the secret.
pub fn response_authenticator(reply: &[u8], request_authenticator: &[u8; 16], secret: &SharedSecret) -> [u8; 16] {
    let head = reply.get(..4).unwrap_or(&[]);
    let attributes = reply.get(HEADER_LEN..).unwrap_or(&[]);
    md5_of(&[head, request_authenticator, attributes, secret.as_bytes()])
}

/// HMAC-MD5 of `packet` with the 16 bytes at `value_offset` taken as zero.
/// For a reply, the authenticator field must hold the request's
/// authenticator when this is computed.
pub fn message_authenticator(packet: &[u8], value_offset: usize, secret: &SharedSecret) -> [u8; 16] {
    let Ok(mut mac) = Hmac::<Md5>::new_from_slice(secret.as_bytes()) else {
        return [0; 16];
    };
    let before = packet.get(..value_offset).unwrap_or(packet);
    let after = packet.get(value_offset + 16..).unwrap_or(&[]);
    mac.update(before);
    mac.update(&[0u8; 16]);
    mac.update(after);
    let mut out = [0u8; 16];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// Checks the Message-Authenticator of a request. `None` when the packet
/// has none, `Some(false)` when it has a wrong, duplicated or malformed one.
pub fn verify_message_authenticator(packet: &Packet<'_>, secret: &SharedSecret) -> Option<bool> {
    let mut found = packet.all(super::attr::MESSAGE_AUTHENTICATOR);
    let attribute = found.next()?;
    if found.next().is_some() || attribute.value.len() != 16 {
        return Some(false);
    }
    let expected = message_authenticator(packet.bytes, attribute.value_offset, secret);
    Some(bool::from(expected.ct_eq(attribute.value)))
}

fn md5_of(parts: &[&[u8]]) -> [u8; 16] {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hides_and_unhides_every_length() {
        let secret = SharedSecret::new(b"testing123".to_vec());
        let authenticator = [7u8; 16];
        for len in 1..=128 {
            let password: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let hidden = hide_password(&password, &secret, &authenticator);
            assert_eq!(hidden.len() % 16, 0);
            assert_eq!(
                unhide_password(&hidden, &secret, &authenticator).unwrap().as_slice(),
                password.as_slice()
            );
        }
    }

    #[test]
    fn unhide_rejects_bad_lengths() {
        let secret = SharedSecret::new(b"s".to_vec());
        assert!(unhide_password(&[], &secret, &[0; 16]).is_none());
        assert!(unhide_password(&[0; 15], &secret, &[0; 16]).is_none());
        assert!(unhide_password(&[0; 144], &secret, &[0; 16]).is_none());
    }
}
