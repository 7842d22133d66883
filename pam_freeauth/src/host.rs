//! [`flow::Host`] over a real PAM handle, with the two libpam calls
//! pam-bindings lacks: `pam_syslog` and `pam_set_item(PAM_AUTHTOK)`.

use std::ffi::{c_char, c_int, c_void, CString};

use freeauth_proto::text::printable;
use freeauth_proto::Origin;
use pam::constants::{PAM_ERROR_MSG, PAM_PROMPT_ECHO_OFF, PAM_TEXT_INFO};
use pam::conv::Conv;
use pam::items::{AuthTok, RHost, RUser, Service, Tty};
use pam::module::PamHandle;
use zeroize::Zeroizing;

use crate::flow::{Host, Priority};

/// PAM_AUTHTOK item type (`security/_pam_types.h`).
const PAM_AUTHTOK: c_int = 6;

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
    fn pam_set_item(pamh: *mut PamHandle, item_type: c_int, item: *const c_void) -> c_int;
}

/// A PAM handle seen as a [`Host`].
pub struct PamHost<'a> {
    pamh: &'a mut PamHandle,
    debug: bool,
    quiet: bool,
}

impl<'a> PamHost<'a> {
    pub fn new(pamh: &'a mut PamHandle, debug: bool, quiet: bool) -> Self {
        PamHost { pamh, debug, quiet }
    }

    fn item_text<'b, T: pam::items::Item<'b> + std::ops::Deref<Target = &'b std::ffi::CStr>>(
        &'b self,
    ) -> Option<String> {
        match self.pamh.get_item::<T>() {
            Ok(Some(item)) => Some(item.to_string_lossy().into_owned()),
            _ => None,
        }
    }

    fn send(&mut self, style: c_int, text: &str) -> Option<Zeroizing<String>> {
        let conv = match self.pamh.get_item::<Conv>() {
            Ok(Some(conv)) => conv,
            _ => return None,
        };
        let answer = conv.send(style, text).ok()??;
        answer.as_str().ok().map(|text| Zeroizing::new(text.to_owned()))
    }
}

impl Host for PamHost<'_> {
    fn user(&mut self) -> Result<String, String> {
        self.pamh
            .get_user(None)
            .map_err(|code| format!("pam_get_user failed with {code:?}"))
    }

    fn database_name(&self, name: &str) -> Result<Option<String>, String> {
        nix::unistd::User::from_name(name)
            .map(|found| found.map(|user| user.name))
            .map_err(|err| format!("getpwnam_r failed: {err}"))
    }

    fn context(&self) -> Origin {
        Origin::Pam {
            service: self.item_text::<Service>().unwrap_or_default(),
            rhost: self.item_text::<RHost>(),
            tty: self.item_text::<Tty>(),
            ruser: self.item_text::<RUser>(),
        }
    }

    fn authtok(&self) -> Option<Zeroizing<String>> {
        let token = self.pamh.get_item::<AuthTok>().ok()??;
        let secret = token.to_owned_secret();
        secret.as_str().ok().map(|text| Zeroizing::new(text.to_owned()))
    }

    fn set_authtok(&mut self, value: &str) -> Result<(), String> {
        let text = CString::new(value).map_err(|_| "the password contains a NUL byte".to_owned())?;
        let pamh: *mut PamHandle = self.pamh;
        // SAFETY: pamh is the live handle libpam passed to this hook, and
        // libpam copies the NUL-terminated string before returning.
        let result = unsafe { pam_set_item(pamh, PAM_AUTHTOK, text.as_ptr().cast()) };
        let _wiped = Zeroizing::new(text.into_bytes());
        match result {
            0 => Ok(()),
            code => Err(format!("pam_set_item(PAM_AUTHTOK) failed with code {code}")),
        }
    }

    fn ask_secret(&mut self, prompt: &str) -> Option<Zeroizing<String>> {
        self.send(PAM_PROMPT_ECHO_OFF, prompt)
    }

    fn tell(&mut self, message: &str, error: bool) {
        if !self.quiet {
            let style = if error { PAM_ERROR_MSG } else { PAM_TEXT_INFO };
            let _ = self.send(style, message);
        }
    }

    fn log(&self, priority: Priority, message: &str) {
        let level = match priority {
            Priority::Error => libc::LOG_ERR,
            Priority::Warning => libc::LOG_WARNING,
            Priority::Notice => libc::LOG_NOTICE,
            Priority::Info => libc::LOG_INFO,
            Priority::Debug if self.debug => libc::LOG_DEBUG,
            Priority::Debug => return,
        };
        let Ok(text) = CString::new(printable(message).as_ref()) else {
            return;
        };
        let pamh: *const PamHandle = &*self.pamh;
        // SAFETY: pamh is the live handle of this call; the format is a
        // constant "%s" with one NUL-terminated string argument.
        unsafe { pam_syslog(pamh, level, c"%s".as_ptr(), text.as_ptr()) };
    }
}
