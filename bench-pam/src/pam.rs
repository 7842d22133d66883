//! The application side of libpam: a service file in a private configuration
//! folder, a conversation function that answers the code prompt, and one
//! timed authentication from `pam_start_confdir` to `pam_end`.
//!
//! libpam 1.5.2 (Debian 12) exports `pam_start_confdir`, which reads service
//! files from a folder of the caller's choice, so the benchmark never touches
//! `/etc/pam.d`. The declarations below follow `security/_pam_types.h` and
//! `security/pam_appl.h` of that version.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `PAM_SUCCESS`.
const PAM_SUCCESS: c_int = 0;
/// `PAM_BUF_ERR`: a memory allocation failed.
const PAM_BUF_ERR: c_int = 5;
/// `PAM_AUTH_ERR`: the module did not authenticate the user.
const PAM_AUTH_ERR: c_int = 7;
/// `PAM_CONV_ERR`: the conversation failed.
const PAM_CONV_ERR: c_int = 19;
/// Message styles of `struct pam_message`.
const PAM_PROMPT_ECHO_OFF: c_int = 1;
const PAM_PROMPT_ECHO_ON: c_int = 2;
const PAM_ERROR_MSG: c_int = 3;
const PAM_TEXT_INFO: c_int = 4;
/// `PAM_MAX_NUM_MSG`: libpam never sends more messages in one call.
const PAM_MAX_NUM_MSG: c_int = 32;

/// `struct pam_message`.
#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

/// `struct pam_response`; libpam frees `resp` and the array with free(3).
#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

/// The conversation function type of `struct pam_conv`.
type ConvFunction = extern "C" fn(c_int, *mut *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int;

/// `struct pam_conv`.
#[repr(C)]
struct PamConv {
    conv: Option<ConvFunction>,
    appdata_ptr: *mut c_void,
}

/// `pam_handle_t`, opaque to applications.
#[repr(C)]
struct PamHandle {
    _private: [u8; 0],
}

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_start_confdir(
        service_name: *const c_char,
        user: *const c_char,
        pam_conversation: *const PamConv,
        confdir: *const c_char,
        pamh: *mut *mut PamHandle,
    ) -> c_int;
    fn pam_authenticate(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_end(pamh: *mut PamHandle, pam_status: c_int) -> c_int;
    fn pam_strerror(pamh: *mut PamHandle, errnum: c_int) -> *const c_char;
}

/// A PAM service with one `auth required` line, in its own configuration
/// folder.
#[derive(Clone, Debug)]
pub struct Service {
    name: CString,
    confdir: CString,
    /// Code prompts a successful authentication must have made.
    prompts: u32,
}

impl Service {
    /// Writes `confdir/name` with the single line `auth required MODULE ARGS`.
    /// `module` must be an absolute path, so libpam loads exactly that file.
    pub fn create(confdir: &Path, name: &str, module: &Path, arguments: &[String]) -> Result<Service, String> {
        if !module.is_absolute() {
            return Err(format!("module path {} must be absolute", module.display()));
        }
        fs::create_dir_all(confdir).map_err(|err| format!("cannot create {}: {err}", confdir.display()))?;
        let mut line = format!("auth required {}", module.display());
        for argument in arguments {
            line.push(' ');
            line.push_str(argument);
        }
        line.push('\n');
        let path = confdir.join(name);
        fs::write(&path, line).map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        // libpam 1.5.2 also reads the `other` service at every pam_start and
        // sends a syslog message when it is missing. An empty one adds no module.
        let other = confdir.join("other");
        if !other.exists() {
            fs::write(&other, "").map_err(|err| format!("cannot write {}: {err}", other.display()))?;
        }
        Ok(Service {
            name: c_string(name)?,
            confdir: c_string(&confdir.to_string_lossy())?,
            prompts: 1,
        })
    }

    /// Returns this service for a module that succeeds without prompting,
    /// such as `pam_permit`.
    pub fn without_prompt(self) -> Service {
        Service { prompts: 0, ..self }
    }

    /// Path of the service file, for messages.
    pub fn file(&self) -> PathBuf {
        Path::new(&*self.confdir.to_string_lossy()).join(&*self.name.to_string_lossy())
    }
}

/// The cause of an authentication that did not end in `PAM_SUCCESS`.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The failing call and its return code with libpam's text for it.
    pub reason: String,
    /// Messages the module sent through the conversation.
    pub messages: Vec<String>,
    /// `pam_authenticate` returned `PAM_AUTH_ERR`: the module rejected the
    /// code, as it must refuse a code it accepted before.
    pub rejected: bool,
}

/// State the conversation function reads and writes, reached through
/// `appdata_ptr`.
struct Conversation {
    code: CString,
    prompts: u32,
    messages: Vec<String>,
}

/// Runs `pam_start_confdir`, `pam_authenticate` and `pam_end` for `user`,
/// answering the echo-off prompt with `code`. Returns the time of the three
/// calls on success.
pub fn authenticate(service: &Service, user: &CStr, code: &str) -> Result<Duration, Failure> {
    let mut conversation = Conversation {
        code: CString::new(code).map_err(|_| failure("the code contains a NUL byte".into(), Vec::new()))?,
        prompts: 0,
        messages: Vec::new(),
    };
    let conv = PamConv {
        conv: Some(converse),
        appdata_ptr: std::ptr::addr_of_mut!(conversation).cast(),
    };
    let mut pamh: *mut PamHandle = std::ptr::null_mut();

    let started = Instant::now();
    // SAFETY: every pointer is a valid NUL-terminated string or a live struct
    // of this frame. libpam copies `conv`; `conversation`, which appdata_ptr
    // points to, outlives the handle because pam_end runs in this function.
    let start_status = unsafe {
        pam_start_confdir(
            service.name.as_ptr(),
            user.as_ptr(),
            &conv,
            service.confdir.as_ptr(),
            &mut pamh,
        )
    };
    if start_status != PAM_SUCCESS || pamh.is_null() {
        let text = status_text(std::ptr::null_mut(), start_status);
        let reason = format!(
            "pam_start_confdir({}) returned {start_status} ({text})",
            service.file().display()
        );
        return Err(failure(reason, conversation.messages));
    }
    // SAFETY: pamh is the live handle pam_start_confdir returned.
    let status = unsafe { pam_authenticate(pamh, 0) };
    // The text must be read before pam_end frees the handle.
    let text = (status != PAM_SUCCESS).then(|| status_text(pamh, status));
    // SAFETY: pamh is live and is not used after this call.
    let end_status = unsafe { pam_end(pamh, status) };
    let elapsed = started.elapsed();

    if let Some(text) = text {
        let reason = format!("pam_authenticate returned {status} ({text})");
        return Err(Failure {
            rejected: status == PAM_AUTH_ERR,
            ..failure(reason, conversation.messages)
        });
    }
    if end_status != PAM_SUCCESS {
        let reason = format!("pam_end returned {end_status}");
        return Err(failure(reason, conversation.messages));
    }
    if conversation.prompts != service.prompts {
        let reason = format!(
            "the module succeeded after {} code prompts instead of {}",
            conversation.prompts, service.prompts
        );
        return Err(failure(reason, conversation.messages));
    }
    Ok(elapsed)
}

fn failure(reason: String, messages: Vec<String>) -> Failure {
    Failure {
        reason,
        messages,
        rejected: false,
    }
}

fn c_string(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("{text:?} contains a NUL byte"))
}

/// libpam's text for `status`; `pamh` may be null.
fn status_text(pamh: *mut PamHandle, status: c_int) -> String {
    // SAFETY: pam_strerror accepts a null or live handle and returns a static
    // string or null.
    let text = unsafe { pam_strerror(pamh, status) };
    if text.is_null() {
        return "no description".into();
    }
    // SAFETY: text is a non-null NUL-terminated string owned by libpam.
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}

/// The conversation function: answers every echo-off prompt with the code,
/// records informational and error messages, and fails on echo-on prompts,
/// which neither module under test should send once the user is set.
extern "C" fn converse(
    num_msg: c_int,
    msg: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata_ptr: *mut c_void,
) -> c_int {
    if num_msg <= 0 || num_msg > PAM_MAX_NUM_MSG || msg.is_null() || resp.is_null() || appdata_ptr.is_null() {
        return PAM_CONV_ERR;
    }
    let count = num_msg as usize;
    // SAFETY: appdata_ptr is the Conversation that `authenticate` passed to
    // pam_start_confdir; it is alive and nothing else touches it during a call.
    let conversation = unsafe { &mut *appdata_ptr.cast::<Conversation>() };
    // SAFETY: calloc with a non-zero count; the result is checked for null.
    let replies = unsafe { libc::calloc(count, std::mem::size_of::<PamResponse>()) }.cast::<PamResponse>();
    if replies.is_null() {
        return PAM_BUF_ERR;
    }
    for index in 0..count {
        // SAFETY: libpam passes `num_msg` valid message pointers (the Linux-PAM
        // layout: an array of pointers to struct pam_message).
        let message = unsafe { &**msg.add(index) };
        let text = if message.msg.is_null() {
            String::new()
        } else {
            // SAFETY: msg is a NUL-terminated string owned by the module.
            unsafe { CStr::from_ptr(message.msg) }.to_string_lossy().into_owned()
        };
        match message.msg_style {
            PAM_PROMPT_ECHO_OFF => {
                conversation.prompts += 1;
                // SAFETY: code is a valid NUL-terminated string; the copy is
                // malloc'ed, as libpam frees it with free(3).
                let answer = unsafe { libc::strdup(conversation.code.as_ptr()) };
                if answer.is_null() {
                    free_replies(replies, count);
                    return PAM_BUF_ERR;
                }
                // SAFETY: index < count, the length of the calloc'ed array.
                unsafe { (*replies.add(index)).resp = answer };
            }
            PAM_ERROR_MSG | PAM_TEXT_INFO => conversation.messages.push(text),
            style => {
                let kind = if style == PAM_PROMPT_ECHO_ON {
                    "echo-on prompt".to_owned()
                } else {
                    format!("message of unknown style {style}")
                };
                conversation.messages.push(format!("unexpected {kind}: {text}"));
                free_replies(replies, count);
                return PAM_CONV_ERR;
            }
        }
    }
    // SAFETY: resp is a valid out-pointer given by libpam, which takes
    // ownership of the array.
    unsafe { *resp = replies };
    PAM_SUCCESS
}

/// Frees the responses set so far and their array, when the conversation fails.
fn free_replies(replies: *mut PamResponse, count: usize) {
    for index in 0..count {
        // SAFETY: replies has `count` entries, zeroed by calloc or set by
        // strdup; free(NULL) does nothing.
        unsafe { libc::free((*replies.add(index)).resp.cast()) };
    }
    // SAFETY: replies came from calloc and is not used afterwards.
    unsafe { libc::free(replies.cast()) };
}
