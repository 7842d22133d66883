//! RADIUS packets (RFC 2865) as bytes: parsing with a bounded reader,
//! building replies, and the cryptography tied to the shared secret
//! (User-Password hiding, Response Authenticator, Message-Authenticator of
//! RFC 3579).
//!
//! Parsing never trusts a length: the packet's Length field must fit the
//! datagram, every attribute must fit the packet exactly, and bytes left
//! over inside the packet are an error. Octets after the Length field are
//! padding and ignored, as RFC 2865 section 3 requires. Nothing here panics
//! on any input.

mod crypto;
mod packet;
mod reader;

pub use crypto::{
    hide_password, message_authenticator, response_authenticator, unhide_password, verify_message_authenticator,
    SharedSecret,
};
pub use packet::{Attribute, Code, Packet, ParseError, ReplyBuilder, HEADER_LEN, MAX_PACKET_LEN, MIN_PACKET_LEN};

/// Attribute types used by the bridge (RFC 2865 section 5, RFC 2869, RFC 3162).
pub mod attr {
    pub const USER_NAME: u8 = 1;
    pub const USER_PASSWORD: u8 = 2;
    pub const CHAP_PASSWORD: u8 = 3;
    pub const NAS_IP_ADDRESS: u8 = 4;
    pub const NAS_PORT: u8 = 5;
    pub const SERVICE_TYPE: u8 = 6;
    pub const REPLY_MESSAGE: u8 = 18;
    pub const STATE: u8 = 24;
    pub const VENDOR_SPECIFIC: u8 = 26;
    pub const CALLING_STATION_ID: u8 = 31;
    pub const NAS_IDENTIFIER: u8 = 32;
    pub const PROXY_STATE: u8 = 33;
    pub const CHAP_CHALLENGE: u8 = 60;
    pub const EAP_MESSAGE: u8 = 79;
    pub const MESSAGE_AUTHENTICATOR: u8 = 80;
    pub const NAS_IPV6_ADDRESS: u8 = 95;
}

/// Microsoft's vendor id, whose Vendor-Specific attributes carry MS-CHAP (RFC 2548).
pub const VENDOR_MICROSOFT: u32 = 311;
