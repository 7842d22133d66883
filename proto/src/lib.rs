//! The protocol spoken on FreeAuth's two Unix sockets.
//!
//! `freeauth-agentd` listens on an agent socket (verification, used by the PAM
//! module and the RADIUS bridge) and an admin socket (management, used by
//! `freeauthctl`). Both carry the same framing: a 4-byte big-endian length,
//! then one JSON document of at most [`MAX_FRAME_LEN`] bytes. The length is
//! checked before the body is read, so a peer cannot make the other side
//! allocate more than that.
//!
//! A connection starts with [`Hello`] from the client and [`HelloReply`] from
//! the agent, which rejects any version other than [`PROTOCOL_VERSION`] and
//! [`CALLER_DELAYS_VERSION`]. After
//! that the client sends [`RequestFrame`]s, each with an id of its choosing,
//! and may have many in flight; the agent answers each with a
//! [`ResponseFrame`] carrying the same id, in whatever order they complete.
//!
//! This crate has no async runtime and no OTP code, so the PAM module can link
//! it without pulling either into the host process.

#![forbid(unsafe_code)]

pub mod client;
pub mod frame;
pub mod message;
pub mod secret;
pub mod text;

pub use client::{Client, ClientError};
pub use frame::{FrameError, MAX_FRAME_LEN};
pub use message::*;
pub use secret::SecretString;

/// Version of the protocol described in [`message`]. Bump it on any change
/// that an older peer would misread.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version 1 plus `caller_delays` in [`Origin::Radius`] and
/// [`Response::DelayedVerdict`], which only the RADIUS bridge uses. The
/// agent accepts both versions and welcomes a client with the version it
/// sent. The bridge offers this one first and falls back to version 1 when
/// an older agent refuses it, as during a package upgrade.
pub const CALLER_DELAYS_VERSION: u32 = 2;
