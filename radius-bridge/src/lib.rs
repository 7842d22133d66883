//! `freeauth-radius`, the RADIUS bridge: a RADIUS server (RFC 2865, with
//! Message-Authenticator of RFC 3579 and Status-Server of RFC 5997) that
//! asks the FreeAuth agent to verify the codes in Access-Requests.
//!
//! The bridge is the network-facing process, so it holds no OTP seed: a
//! compromise exposes RADIUS client secrets at most.

#![forbid(unsafe_code)]

pub mod agent_link;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod dedup;
pub mod ratelog;
pub mod seen;
pub mod server;
pub mod udp;
