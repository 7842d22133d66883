//! Library half of `freeauthctl`: parsers for token descriptions that come from
//! outside FreeAuth (otpauth:// URIs, Google Authenticator files, oath-toolkit
//! users files). The binary in `main.rs` is a thin shell over this and the
//! admin protocol.

#![forbid(unsafe_code)]

pub mod import;
pub mod otpauth;
