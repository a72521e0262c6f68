//! The C side: Linux-PAM's types and constants, the libpam functions the module calls, the
//! conversation as a [`User`], and syslog.
//!
//! **How libpam is reached.** The libpam functions are looked up at call time with
//! `dlsym(RTLD_DEFAULT, ...)`, not declared `extern` and linked: so the build needs no
//! libpam0g-dev and no `-lpam`, the `.so` has no undefined `pam_*` symbols for a `-z defs` or
//! `-z now` link to trip over, and the crate's own unit-test binary (which links this code as
//! an rlib, without libpam) links and runs. The process that loads the module always has libpam
//! loaded (it is what `dlopen`ed us) in its global scope, where undefined symbols of the module
//! would have been resolved from anyway; if a function is not found, the module fails closed
//! (auth: PAM_AUTH_ERR, account: PAM_PERM_DENIED) and logs it.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::time::Instant;

use crate::flow::{Reply, Secret, User, wipe};

// Linux-PAM's _pam_types.h.
pub const PAM_SUCCESS: c_int = 0;
pub const PAM_PERM_DENIED: c_int = 6;
pub const PAM_AUTH_ERR: c_int = 7;
pub const PAM_AUTHINFO_UNAVAIL: c_int = 9;
pub const PAM_USER_UNKNOWN: c_int = 10;
pub const PAM_CONV_ERR: c_int = 19;
pub const PAM_IGNORE: c_int = 25;
pub const PAM_CONV: c_int = 5;
pub const PAM_PROMPT_ECHO_OFF: c_int = 1;
pub const PAM_PROMPT_ECHO_ON: c_int = 2;
pub const PAM_ERROR_MSG: c_int = 3;
pub const PAM_TEXT_INFO: c_int = 4;

/// `pam_handle_t`, opaque.
#[repr(C)]
pub struct PamHandle {
    _private: [u8; 0],
}

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConvFn = unsafe extern "C" fn(
    c_int,
    *mut *const PamMessage,
    *mut *mut PamResponse,
    *mut c_void,
) -> c_int;

/// `struct pam_conv`.
#[repr(C)]
pub struct PamConv {
    conv: Option<ConvFn>,
    appdata_ptr: *mut c_void,
}

type GetUserFn = unsafe extern "C" fn(*mut PamHandle, *mut *const c_char, *const c_char) -> c_int;
type GetItemFn = unsafe extern "C" fn(*const PamHandle, c_int, *mut *const c_void) -> c_int;
type Cleanup = unsafe extern "C" fn(*mut PamHandle, *mut c_void, c_int);
type SetDataFn =
    unsafe extern "C" fn(*mut PamHandle, *const c_char, *mut c_void, Option<Cleanup>) -> c_int;
type GetDataFn = unsafe extern "C" fn(*const PamHandle, *const c_char, *mut *const c_void) -> c_int;

/// The address of `name` in the process's global scope.
fn lookup(name: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: dlsym with a NUL-terminated name.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if p.is_null() {
        Err(format!("libpam's {} is not loaded", name.to_string_lossy()))
    } else {
        Ok(p)
    }
}

/// The user name PAM has for this handle (asking the application for it if need be).
///
/// # Safety
/// `pamh` must be the handle libpam passed to the module.
pub unsafe fn get_user(pamh: *mut PamHandle) -> Result<String, String> {
    // SAFETY: pam_get_user has this signature (security/pam_modules.h).
    let f: GetUserFn = unsafe { std::mem::transmute(lookup(c"pam_get_user")?) };
    let mut user: *const c_char = std::ptr::null();
    // SAFETY: per the contract; a null prompt is libpam's default.
    let r = unsafe { f(pamh, &mut user, std::ptr::null()) };
    if r != PAM_SUCCESS || user.is_null() {
        return Err(format!("pam_get_user failed ({r})"));
    }
    // SAFETY: libpam returns a NUL-terminated string it owns.
    let user = unsafe { CStr::from_ptr(user) };
    user.to_str()
        .map(str::to_owned)
        .map_err(|_| "the user name is not UTF-8".into())
}

/// The application's conversation (None when it has none).
///
/// # Safety
/// `pamh` must be the handle libpam passed to the module.
pub unsafe fn get_conv(pamh: *mut PamHandle) -> Result<*const PamConv, String> {
    // SAFETY: pam_get_item has this signature (security/pam_appl.h).
    let f: GetItemFn = unsafe { std::mem::transmute(lookup(c"pam_get_item")?) };
    let mut item: *const c_void = std::ptr::null();
    // SAFETY: per the contract.
    let r = unsafe { f(pamh, PAM_CONV, &mut item) };
    if r != PAM_SUCCESS {
        return Err(format!("pam_get_item(PAM_CONV) failed ({r})"));
    }
    Ok(item.cast())
}

const AUTHENTICATED: &CStr = c"pam_guestagent_authenticated";
/// What [`AUTHENTICATED`] points at when set (libpam only keeps the pointer).
static MARKER: u8 = 1;

/// Records on the handle whether this module's `auth` succeeded (for `setcred`).
///
/// # Safety
/// `pamh` must be the handle libpam passed to the module.
pub unsafe fn set_authenticated(pamh: *mut PamHandle, yes: bool) {
    if let Ok(p) = lookup(c"pam_set_data") {
        // SAFETY: pam_set_data has this signature (security/pam_modules.h).
        let f: SetDataFn = unsafe { std::mem::transmute(p) };
        let data = if yes {
            (&raw const MARKER).cast_mut().cast()
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: per the contract; a static needs no cleanup.
        unsafe { f(pamh, AUTHENTICATED.as_ptr(), data, None) };
    }
}

/// Whether [`set_authenticated`] recorded a success on this handle.
///
/// # Safety
/// `pamh` must be the handle libpam passed to the module.
pub unsafe fn authenticated(pamh: *mut PamHandle) -> bool {
    let Ok(p) = lookup(c"pam_get_data") else {
        return false;
    };
    // SAFETY: pam_get_data has this signature (security/pam_modules.h).
    let f: GetDataFn = unsafe { std::mem::transmute(p) };
    let mut data: *const c_void = std::ptr::null();
    // SAFETY: per the contract.
    let r = unsafe { f(pamh, AUTHENTICATED.as_ptr(), &mut data) };
    r == PAM_SUCCESS && !data.is_null()
}

/// `text` as a C string (NULs, which cannot be shown, are dropped).
fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "")).unwrap_or_default()
}

/// The user, through the application's conversation function.
pub struct Conversation {
    pub conv: *const PamConv,
}

impl Conversation {
    /// One message; the reply when there is one (zeroed and freed in C once copied).
    fn converse(&mut self, style: c_int, text: &str) -> Option<Secret> {
        // SAFETY: conv is null or libpam's PAM_CONV item, valid for the call.
        let conv = unsafe { self.conv.as_ref() }?;
        let f = conv.conv?;
        let text = c_string(text);
        let msg = PamMessage {
            msg_style: style,
            msg: text.as_ptr(),
        };
        let mut msgs: *const PamMessage = &msg;
        let mut resp: *mut PamResponse = std::ptr::null_mut();
        // SAFETY: one valid message; the application allocates resp with malloc.
        let r = unsafe { f(1, &mut msgs, &mut resp, conv.appdata_ptr) };
        let mut reply = None;
        if !resp.is_null() {
            // SAFETY: resp is the application's array of one response.
            let s = unsafe { (*resp).resp };
            if !s.is_null() {
                // SAFETY: s is a NUL-terminated malloc'ed string; zeroed before it is freed.
                unsafe {
                    let bytes = std::slice::from_raw_parts_mut(s.cast::<u8>(), libc::strlen(s));
                    reply = Some(Secret::new(bytes.to_vec()));
                    wipe(bytes);
                    libc::free(s.cast());
                }
            }
            // SAFETY: the array was malloc'ed by the application.
            unsafe { libc::free(resp.cast()) };
        }
        if r == PAM_SUCCESS { reply } else { None }
    }
}

impl User for Conversation {
    fn prompt(&mut self, echo: bool, text: &str) -> Option<Reply> {
        let style = if echo {
            PAM_PROMPT_ECHO_ON
        } else {
            PAM_PROMPT_ECHO_OFF
        };
        let t = Instant::now();
        let text = self.converse(style, text)?;
        Some(Reply {
            text,
            elapsed: t.elapsed(),
        })
    }

    fn info(&mut self, text: &str) {
        self.converse(PAM_TEXT_INFO, text);
    }

    fn error(&mut self, text: &str) {
        self.converse(PAM_ERROR_MSG, text);
    }
}

/// One line to the auth log, under the host's own ident (no openlog: that would change
/// sshd's), `text` passed as an argument of "%s", never as the format.
pub fn log(priority: c_int, text: &str) {
    let line = c_string(&format!("pam_guestagent: {text}"));
    // SAFETY: a constant format with one string argument.
    unsafe { libc::syslog(libc::LOG_AUTHPRIV | priority, c"%s".as_ptr(), line.as_ptr()) };
}
