//! `pam_freeauth.so`: a PAM module that asks for a one-time code and has the
//! FreeAuth agent verify it.
//!
//! The module is a thin client. It never sees a seed: it asks the agent over
//! its Unix socket whether the user has an active token, prompts through the
//! PAM conversation, and sends the code with the PAM context (service,
//! remote host, tty, remote user). It starts no threads and no runtime,
//! keeps no state between calls, and opens its socket with close-on-exec, so
//! it is safe in any host process, including one that forks.
//!
//! Every exported function catches panics (a panic becomes
//! `PAM_SERVICE_ERR`) and every outcome is mapped to a PAM code in
//! `flow::Outcome::code`. When the agent cannot be reached, the module fails
//! closed with `PAM_AUTHINFO_UNAVAIL` unless the administrator set
//! `ignore_unavailable`.

mod agent;
mod flow;
mod host;
pub mod options;

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pam::constants::{PamFlag, PamResultCode, PAM_DISALLOW_NULL_AUTHTOK, PAM_SILENT};
use pam::module::{PamHandle, PamHooks};

use crate::host::PamHost;
use crate::options::Options;

/// The hooks libpam calls.
pub struct FreeAuth;

pam::pam_hooks!(FreeAuth);

impl PamHooks for FreeAuth {
    fn sm_authenticate(pamh: &mut PamHandle, args: Vec<&CStr>, flags: PamFlag) -> PamResultCode {
        guarded(|| {
            let mut options = parse_args(&args);
            options.quiet |= flags & PAM_SILENT != 0;
            // With this flag the application requires a token of every
            // user, so it overrides nullok, as it overrides pam_unix's.
            options.nullok &= flags & PAM_DISALLOW_NULL_AUTHTOK == 0;
            let mut host = PamHost::new(pamh, options.debug, options.quiet);
            flow::authenticate(&mut host, &options).code()
        })
    }

    /// Sets no credentials: the module only authenticates.
    fn sm_setcred(_pamh: &mut PamHandle, _args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        PamResultCode::PAM_SUCCESS
    }

    /// Leaves account decisions to the other modules of the stack.
    fn acct_mgmt(_pamh: &mut PamHandle, _args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        PamResultCode::PAM_IGNORE
    }
}

fn parse_args(args: &[&CStr]) -> Options {
    let texts: Vec<String> = args.iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
    Options::parse(texts.iter().map(String::as_str))
}

/// Runs `body`, turning a panic into `PAM_SERVICE_ERR` so that it never
/// unwinds into the host process.
fn guarded(body: impl FnOnce() -> PamResultCode) -> PamResultCode {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(code) => code,
        Err(payload) => {
            // Dropping a panic payload can panic again; leak it instead.
            std::mem::forget(payload);
            PamResultCode::PAM_SERVICE_ERR
        }
    }
}
