//! `freeauth-agentd`, the FreeAuth agent: the only process that can read OTP
//! seeds and the only writer of token state.
//!
//! The PAM module and the RADIUS bridge ask it to verify codes on the agent
//! socket; `freeauthctl` manages tokens on the admin socket. Every request
//! that reads or changes token state runs on one engine thread ([`engine`]),
//! which commits groups of requests in one SQLite transaction ([`store`])
//! before it replies, so a code is accepted at most once, across front ends
//! and across crashes.
//!
//! Not done here: RADIUS (see `radius-bridge`), PAM conversation (see
//! `pam_freeauth`), and rate limits per network source, which the bridge
//! applies because only it knows the source.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod check;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod handlers;
pub mod keys;
pub mod loglimit;
pub mod placement;
pub mod policy;
pub mod rekey;
pub mod server;
pub mod store;
