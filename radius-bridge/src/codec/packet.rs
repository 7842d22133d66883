//! Packet layout (RFC 2865 section 3): code, identifier, length,
//! authenticator, then attributes of type, length and value.

use std::fmt;

use super::crypto::{message_authenticator, response_authenticator, SharedSecret};
use super::reader::Reader;

/// Size of the fixed header: code, identifier, length and authenticator.
pub const HEADER_LEN: usize = 20;
/// Smallest valid packet (a header without attributes).
pub const MIN_PACKET_LEN: usize = HEADER_LEN;
/// Largest valid packet (RFC 2865 section 3).
pub const MAX_PACKET_LEN: usize = 4096;
/// Largest attribute value: the one-byte length counts type and length too.
pub const MAX_VALUE_LEN: usize = 253;

/// Packet type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    AccessRequest,
    AccessAccept,
    AccessReject,
    AccountingRequest,
    AccountingResponse,
    AccessChallenge,
    StatusServer,
    /// Any other code, kept so logs can print it.
    Other(u8),
}

impl Code {
    pub fn from_byte(byte: u8) -> Code {
        match byte {
            1 => Code::AccessRequest,
            2 => Code::AccessAccept,
            3 => Code::AccessReject,
            4 => Code::AccountingRequest,
            5 => Code::AccountingResponse,
            11 => Code::AccessChallenge,
            12 => Code::StatusServer,
            other => Code::Other(other),
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            Code::AccessRequest => 1,
            Code::AccessAccept => 2,
            Code::AccessReject => 3,
            Code::AccountingRequest => 4,
            Code::AccountingResponse => 5,
            Code::AccessChallenge => 11,
            Code::StatusServer => 12,
            Code::Other(byte) => byte,
        }
    }
}

/// One attribute, borrowed from the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub kind: u8,
    pub value: &'a [u8],
    /// Offset of the value's first byte within the packet.
    pub value_offset: usize,
}

/// A parsed packet, borrowing the datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub code: Code,
    pub identifier: u8,
    pub authenticator: [u8; 16],
    pub attributes: Vec<Attribute<'a>>,
    /// The packet's bytes, exactly as long as its Length field.
    pub bytes: &'a [u8],
}

/// Reason a datagram is not a valid packet. The bridge drops such datagrams
/// silently and counts them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header.
    TooShort { received: usize },
    /// The Length field is below 20, above 4096, or above the datagram size.
    BadLength { declared: usize, received: usize },
    /// An attribute's length is below 2 or runs past the packet's end.
    BadAttribute { offset: usize, length: usize },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooShort { received } => write!(f, "datagram of {received} bytes is shorter than a header"),
            ParseError::BadLength { declared, received } => {
                write!(
                    f,
                    "Length field {declared} is invalid for a datagram of {received} bytes"
                )
            }
            ParseError::BadAttribute { offset, length } => {
                write!(f, "attribute at offset {offset} has invalid length {length}")
            }
        }
    }
}

impl<'a> Packet<'a> {
    /// Parses a datagram. Octets after the Length field are padding.
    pub fn parse(datagram: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        let received = datagram.len();
        let mut header = Reader::new(datagram);
        let (Some(code), Some(identifier), Some(declared), Some(authenticator)) =
            (header.u8(), header.u8(), header.u16(), header.take(16))
        else {
            return Err(ParseError::TooShort { received });
        };
        let declared = usize::from(declared);
        if !(MIN_PACKET_LEN..=MAX_PACKET_LEN).contains(&declared) || declared > received {
            return Err(ParseError::BadLength { declared, received });
        }
        let bytes = datagram
            .get(..declared)
            .ok_or(ParseError::BadLength { declared, received })?;
        let attributes = parse_attributes(bytes)?;
        let mut fixed = [0u8; 16];
        fixed.copy_from_slice(authenticator);
        Ok(Packet {
            code: Code::from_byte(code),
            identifier,
            authenticator: fixed,
            attributes,
            bytes,
        })
    }

    /// Returns the first attribute of `kind`.
    pub fn find(&self, kind: u8) -> Option<&Attribute<'a>> {
        self.attributes.iter().find(|attribute| attribute.kind == kind)
    }

    /// Returns every attribute of `kind`, in packet order.
    pub fn all(&self, kind: u8) -> impl Iterator<Item = &Attribute<'a>> {
        self.attributes.iter().filter(move |attribute| attribute.kind == kind)
    }

    /// Counts the attributes of `kind`.
    pub fn count(&self, kind: u8) -> usize {
        self.all(kind).count()
    }
}

fn parse_attributes(packet: &[u8]) -> Result<Vec<Attribute<'_>>, ParseError> {
    let mut reader = Reader::new(packet);
    let _header = reader.take(HEADER_LEN);
    let mut attributes = Vec::new();
    while !reader.is_empty() {
        let offset = reader.position();
        let bad = |length| ParseError::BadAttribute { offset, length };
        let kind = reader.u8().ok_or(bad(0))?;
        let length = usize::from(reader.u8().ok_or(bad(0))?);
        if length < 2 {
            return Err(bad(length));
        }
        let value = reader.take(length - 2).ok_or(bad(length))?;
        attributes.push(Attribute {
            kind,
            value,
            value_offset: offset + 2,
        });
    }
    Ok(attributes)
}

/// Builds a reply to a request.
#[derive(Clone, Debug)]
pub struct ReplyBuilder {
    code: Code,
    identifier: u8,
    attributes: Vec<u8>,
}

impl ReplyBuilder {
    pub fn new(code: Code, identifier: u8) -> Self {
        ReplyBuilder {
            code,
            identifier,
            attributes: Vec::new(),
        }
    }

    /// Returns the bytes still free for attributes, headers included, in a
    /// reply with a Message-Authenticator.
    pub fn room(&self) -> usize {
        MAX_PACKET_LEN.saturating_sub(HEADER_LEN + 18 + self.attributes.len())
    }

    /// Appends an attribute; values longer than 253 bytes, or that would make
    /// the packet exceed 4096 bytes, are cut to fit (only Reply-Message text
    /// and copied Proxy-State reach here, both already bounded).
    pub fn add(&mut self, kind: u8, value: &[u8]) -> &mut Self {
        let room = self.room().saturating_sub(2);
        let length = value.len().min(MAX_VALUE_LEN).min(room);
        if length == 0 && !value.is_empty() {
            return self;
        }
        self.attributes.push(kind);
        self.attributes.push(u8::try_from(length + 2).unwrap_or(u8::MAX));
        self.attributes.extend_from_slice(&value[..length]);
        self
    }

    /// Finishes the reply: a Message-Authenticator first when asked for,
    /// then the Response Authenticator over everything.
    pub fn finish(
        &self,
        request_authenticator: &[u8; 16],
        secret: &SharedSecret,
        with_message_authenticator: bool,
    ) -> Vec<u8> {
        let mut packet = Vec::with_capacity(HEADER_LEN + 18 + self.attributes.len());
        packet.push(self.code.to_byte());
        packet.push(self.identifier);
        packet.extend_from_slice(&[0, 0]);
        packet.extend_from_slice(request_authenticator);
        if with_message_authenticator {
            packet.extend_from_slice(&[super::attr::MESSAGE_AUTHENTICATOR, 18]);
            packet.extend_from_slice(&[0u8; 16]);
        }
        packet.extend_from_slice(&self.attributes);
        let length = u16::try_from(packet.len()).unwrap_or(u16::MAX).to_be_bytes();
        packet[2..4].copy_from_slice(&length);
        if with_message_authenticator {
            let offset = HEADER_LEN + 2;
            let mac = message_authenticator(&packet, offset, secret);
            packet[offset..offset + 16].copy_from_slice(&mac);
        }
        let authenticator = response_authenticator(&packet, request_authenticator, secret);
        packet[4..HEADER_LEN].copy_from_slice(&authenticator);
        packet
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn header(code: u8, length: u16) -> Vec<u8> {
        let mut bytes = vec![code, 7];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&[0xaa; 16]);
        bytes
    }

    #[test]
    fn parses_header_only_packet() {
        let bytes = header(12, 20);
        let packet = Packet::parse(&bytes).unwrap();
        assert_eq!(packet.code, Code::StatusServer);
        assert_eq!(packet.identifier, 7);
        assert!(packet.attributes.is_empty());
    }

    #[test]
    fn rejects_short_and_lying_lengths() {
        assert_eq!(Packet::parse(&[1, 2, 3]), Err(ParseError::TooShort { received: 3 }));
        let mut bytes = header(1, 19);
        assert!(matches!(
            Packet::parse(&bytes),
            Err(ParseError::BadLength { declared: 19, .. })
        ));
        bytes = header(1, 30);
        assert!(matches!(
            Packet::parse(&bytes),
            Err(ParseError::BadLength {
                declared: 30,
                received: 20
            })
        ));
        bytes = header(1, 4097);
        bytes.resize(4097, 0);
        assert!(matches!(
            Packet::parse(&bytes),
            Err(ParseError::BadLength { declared: 4097, .. })
        ));
    }

    #[test]
    fn ignores_padding_after_length() {
        let mut bytes = header(1, 23);
        bytes.extend_from_slice(&[1, 3, b'a', 0xff, 0xff]);
        let packet = Packet::parse(&bytes).unwrap();
        assert_eq!(packet.bytes.len(), 23);
        assert_eq!(packet.find(1).unwrap().value, b"a");
    }

    #[test]
    fn rejects_attribute_overruns_and_leftovers() {
        let mut bytes = header(1, 24);
        bytes.extend_from_slice(&[1, 6, b'a', b'b']);
        assert!(matches!(
            Packet::parse(&bytes),
            Err(ParseError::BadAttribute { offset: 20, length: 6 })
        ));
        let mut bytes = header(1, 21);
        bytes.push(1);
        assert!(matches!(
            Packet::parse(&bytes),
            Err(ParseError::BadAttribute { offset: 20, .. })
        ));
        let mut bytes = header(1, 22);
        bytes.extend_from_slice(&[1, 1]);
        assert!(matches!(
            Packet::parse(&bytes),
            Err(ParseError::BadAttribute { length: 1, .. })
        ));
    }

    #[test]
    fn builder_caps_values_and_size() {
        let secret = SharedSecret::new(b"s".to_vec());
        let mut builder = ReplyBuilder::new(Code::AccessReject, 1);
        for _ in 0..40 {
            builder.add(18, &[b'x'; 300]);
        }
        let bytes = builder.finish(&[0; 16], &secret, true);
        assert!(bytes.len() <= MAX_PACKET_LEN);
        let packet = Packet::parse(&bytes).unwrap();
        assert!(packet.attributes.iter().all(|a| a.value.len() <= MAX_VALUE_LEN));
        assert_eq!(packet.attributes[0].kind, super::super::attr::MESSAGE_AUTHENTICATOR);
    }
}
