//! Access-Requests as a RADIUS client sends them, and the checks of their
//! replies, built on the bridge's codec (`freeauth_radius::codec`).
//!
//! A request carries User-Name, the code hidden in User-Password (RFC 2865
//! section 5.2) and a Message-Authenticator (RFC 3579 section 3.2) as its
//! first attribute. A reply is valid when its Response Authenticator is
//! right and its Message-Authenticator, if it has one, is right too. The
//! caller matches replies to requests by identifier.

use freeauth_radius::codec::{
    attr, hide_password, message_authenticator, response_authenticator, Code, Packet, SharedSecret, HEADER_LEN,
    MAX_PACKET_LEN,
};

/// Length of a Message-Authenticator attribute: type, length and 16 bytes.
const MESSAGE_AUTHENTICATOR_LEN: usize = 18;

/// An encoded Access-Request and the authenticator its reply is checked with.
pub struct AccessRequest {
    pub bytes: Vec<u8>,
    pub authenticator: [u8; 16],
}

/// Returns a fresh random Request Authenticator (RFC 2865 section 3 requires
/// unpredictable values).
pub fn random_authenticator() -> Result<[u8; 16], String> {
    let mut authenticator = [0u8; 16];
    getrandom::getrandom(&mut authenticator).map_err(|err| format!("cannot read random bytes: {err}"))?;
    Ok(authenticator)
}

/// Builds an Access-Request with PAP. `user` must be at most 253 bytes and
/// `password` at most 128 bytes, which the users file and a 6-digit code
/// guarantee.
pub fn access_request(
    identifier: u8,
    authenticator: [u8; 16],
    user: &[u8],
    password: &[u8],
    secret: &SharedSecret,
) -> AccessRequest {
    let hidden = hide_password(password, secret, &authenticator);
    let mut bytes = Vec::with_capacity(HEADER_LEN + MESSAGE_AUTHENTICATOR_LEN + 4 + user.len() + hidden.len());
    bytes.push(Code::AccessRequest.to_byte());
    bytes.push(identifier);
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&authenticator);

    bytes.extend_from_slice(&[attr::MESSAGE_AUTHENTICATOR, 18]);
    bytes.extend_from_slice(&[0u8; 16]);
    push_attribute(&mut bytes, attr::USER_NAME, user);
    push_attribute(&mut bytes, attr::USER_PASSWORD, &hidden);

    let length = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    bytes[2..4].copy_from_slice(&length.to_be_bytes());
    let offset = HEADER_LEN + 2;
    let mac = message_authenticator(&bytes, offset, secret);
    bytes[offset..offset + 16].copy_from_slice(&mac);
    AccessRequest { bytes, authenticator }
}

fn push_attribute(bytes: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let value = &value[..value.len().min(253)];
    bytes.push(kind);
    bytes.push(u8::try_from(value.len() + 2).unwrap_or(u8::MAX));
    bytes.extend_from_slice(value);
}

/// Classification of a datagram from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject,
    /// Access-Challenge: a valid reply, but not a decision.
    Challenge,
    /// Not a valid reply to the request: wrong authenticator or code, or
    /// unparsable.
    Invalid,
}

/// Checks `reply` against the request it replies to.
pub fn check_reply(reply: &[u8], request_authenticator: &[u8; 16], secret: &SharedSecret) -> Verdict {
    let Ok(packet) = Packet::parse(reply) else {
        return Verdict::Invalid;
    };
    let expected = response_authenticator(packet.bytes, request_authenticator, secret);
    if expected != packet.authenticator {
        return Verdict::Invalid;
    }
    let mut found = packet.all(attr::MESSAGE_AUTHENTICATOR);
    if let Some(attribute) = found.next() {
        if found.next().is_some() || attribute.value.len() != 16 {
            return Verdict::Invalid;
        }
        // The reply's Message-Authenticator is computed with the request's
        // authenticator in the header (RFC 3579 section 3.2).
        let mut copy = [0u8; MAX_PACKET_LEN];
        let length = packet.bytes.len();
        copy[..length].copy_from_slice(packet.bytes);
        copy[4..HEADER_LEN].copy_from_slice(request_authenticator);
        if message_authenticator(&copy[..length], attribute.value_offset, secret) != attribute.value {
            return Verdict::Invalid;
        }
    }
    match packet.code {
        Code::AccessAccept => Verdict::Accept,
        Code::AccessReject => Verdict::Reject,
        Code::AccessChallenge => Verdict::Challenge,
        _ => Verdict::Invalid,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use freeauth_radius::codec::{unhide_password, verify_message_authenticator, ReplyBuilder};

    fn secret() -> SharedSecret {
        SharedSecret::new(b"load-test-secret".to_vec())
    }

    #[test]
    fn request_parses_and_authenticates() {
        let authenticator = [9u8; 16];
        let request = access_request(42, authenticator, b"alice", b"123456", &secret());
        let packet = Packet::parse(&request.bytes).unwrap();
        assert_eq!(packet.code, Code::AccessRequest);
        assert_eq!(packet.identifier, 42);
        assert_eq!(packet.bytes.len(), request.bytes.len());
        assert_eq!(packet.attributes[0].kind, attr::MESSAGE_AUTHENTICATOR);
        assert_eq!(packet.find(attr::USER_NAME).unwrap().value, b"alice");
        assert_eq!(verify_message_authenticator(&packet, &secret()), Some(true));
        let hidden = packet.find(attr::USER_PASSWORD).unwrap().value;
        assert_eq!(
            unhide_password(hidden, &secret(), &authenticator).unwrap().as_slice(),
            b"123456"
        );
    }

    #[test]
    fn wrong_secret_fails_message_authenticator() {
        let request = access_request(1, [1; 16], b"bob", b"000000", &secret());
        let packet = Packet::parse(&request.bytes).unwrap();
        assert_eq!(
            verify_message_authenticator(&packet, &SharedSecret::new(b"other".to_vec())),
            Some(false)
        );
    }

    #[test]
    fn replies_are_checked() {
        let request_authenticator = [3u8; 16];
        let accept = ReplyBuilder::new(Code::AccessAccept, 5).finish(&request_authenticator, &secret(), true);
        assert_eq!(check_reply(&accept, &request_authenticator, &secret()), Verdict::Accept);
        let reject = ReplyBuilder::new(Code::AccessReject, 5).finish(&request_authenticator, &secret(), false);
        assert_eq!(check_reply(&reject, &request_authenticator, &secret()), Verdict::Reject);

        assert_eq!(check_reply(&accept, &[4u8; 16], &secret()), Verdict::Invalid);
        assert_eq!(
            check_reply(&accept, &request_authenticator, &SharedSecret::new(b"x".to_vec())),
            Verdict::Invalid
        );
        assert_eq!(
            check_reply(&accept[..10], &request_authenticator, &secret()),
            Verdict::Invalid
        );
    }

    #[test]
    fn tampered_message_authenticator_is_invalid() {
        let request_authenticator = [3u8; 16];
        let mut accept = ReplyBuilder::new(Code::AccessAccept, 5).finish(&request_authenticator, &secret(), true);
        // Flip a bit of the Message-Authenticator, then fix the Response
        // Authenticator so only the inner check can fail.
        accept[HEADER_LEN + 2] ^= 1;
        let fixed = response_authenticator(&accept, &request_authenticator, &secret());
        accept[4..HEADER_LEN].copy_from_slice(&fixed);
        assert_eq!(
            check_reply(&accept, &request_authenticator, &secret()),
            Verdict::Invalid
        );
    }
}
