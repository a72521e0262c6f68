//! PAM module for OS Login two-step verification: `pam_guestagent.so`.
//!
//! It runs inside sshd (a normal process, so std is used), asks the guest-agent daemon on its
//! local socket (`wire::proto`: `2fa-start`, `2fa-continue`, `pam-account`), never touches the
//! network, bounds every exchange with the daemon (`call_timeout`), never panics across the C
//! boundary, and never logs what the user typed. The decisions live in [`flow`], free of PAM.
//!
//! # The PAM lines (what the daemon's sshd integration installs)
//! ```text
//! auth    [success=done ignore=ignore default=die] pam_guestagent.so
//! account [success=ok ignore=ignore default=die]   pam_guestagent.so
//! ```
//! `auth` (`pam_sm_authenticate`), one attempt per call (sshd may call again):
//! - `PAM_SUCCESS`: the user passed OS Login two-step verification: `done`, the rest of the
//!   auth stack is skipped (the first factor was sshd's publickey).
//! - `PAM_IGNORE`: not ours, `ignore`, the rest of the stack decides: an `sa_` user (a service
//!   account: no challenge), a name OS Login never gives, or the daemon's `NOTFOUND` (2FA off,
//!   not an OS Login user).
//! - `PAM_AUTH_ERR`: refused, `die`: the service refused or failed, the code was wrong, no
//!   answer came within `answer_timeout`, and fail closed when the daemon is unreachable or its
//!   answer is an `ERR` or malformed. The reason is shown to the user (PAM_ERROR_MSG) and
//!   logged. A panic inside the module is also PAM_AUTH_ERR.
//!
//! `setcred` (`pam_sm_setcred`, run by libpam over the auth stack with the actions auth's
//! results chose): `PAM_SUCCESS` when this module's `auth` succeeded on this handle (recorded
//! with `pam_set_data`), else `PAM_IGNORE`. Both matter: after an auth success libpam replays
//! `success=done` and takes the setcred code as the stack's result, so an `PAM_IGNORE` there
//! would make pam_setcred fail (PAM_PERM_DENIED) and sshd drop the login; when auth did not
//! run in this process (sshd runs keyboard-interactive PAM in a child, and publickey-only logins
//! never run it) libpam uses the setcred code itself to choose the action, and `PAM_SUCCESS`
//! would be `done`, skipping the setcred of every module below; `PAM_IGNORE` is `ignore`.
//!
//! `account` (`pam_sm_acct_mgmt`), for every user (`sa_` ones included):
//! - `PAM_SUCCESS` (`OK`): the login role is granted (`ok`: the rest of the stack still runs).
//! - `PAM_IGNORE`: `NOTFOUND` (not an OS Login user), a name OS Login never gives, or the
//!   daemon unreachable: the AuthorizedKeysCommand already made this connection's live
//!   decision (and fails closed on its own), so a daemon that stopped since must not lock out a
//!   login the key check allowed.
//! - `PAM_PERM_DENIED`: `DENIED`/`UNAVAIL REASON` (shown and logged), an `ERR` or malformed
//!   answer, or a panic.
//!
//! # Arguments
//! `socket=/PATH` (default [`guest_agent_wire::proto::SOCKET_PATH`]), `call_timeout=SECONDS`
//! (each exchange with the daemon: connect, write, read; default 5, the daemon bounds each
//! metadata call at 3 s itself), `answer_timeout=SECONDS` (default 30: the user's answer to
//! each prompt). The conversation call blocks inside sshd and cannot be interrupted, so the
//! module cannot stop waiting: an answer that comes back later than `answer_timeout` is
//! refused, and the wait itself is bounded by sshd's `LoginGraceTime`. `debug`: a log line per
//! exchange with the daemon (never the credential). Timeouts are 1 to 600 s. An argument not
//! understood is logged and ignored (its default stays).
//!
//! # Log
//! One `LOG_AUTHPRIV` line per call: `pam_guestagent: two-step verification of USER:
//! authenticated` / `refused: REASON` / `not an OS Login user, left to the rest of the stack`,
//! `pam_guestagent: account check of USER: ...`.
//!
//! libpam's functions are found with `dlsym` at call time, not linked: see [`ffi`].
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)]

pub mod args;
mod client;
pub mod ffi;
pub mod flow;

use std::ffi::{CStr, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use guest_agent_wire::proto::{Answer, Request};

use args::Args;
use client::SocketDaemon;
use ffi::{PAM_AUTH_ERR, PAM_IGNORE, PAM_PERM_DENIED, PAM_SUCCESS, PamHandle};
use flow::{Daemon, Outcome, Unreachable, Verdict};

/// Runs `f`, never letting a panic unwind into C: a panic (a bug) is `on_panic`, a refusal,
/// and logged. Needs the unwinding panic strategy (the workspace profile: Cargo.toml). The
/// module's own panic hook (this object links its own std) prints nothing: sshd's stderr may be
/// anything.
fn run(on_panic: c_int, f: impl FnOnce() -> c_int) -> c_int {
    static SILENT: Once = Once::new();
    SILENT.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        ffi::log(libc::LOG_ERR, "internal error (a bug): refused");
        on_panic
    })
}

/// The module arguments libpam passes; complaints are logged.
///
/// # Safety
/// `argv` must be libpam's array of `argc` strings.
unsafe fn module_args(argc: c_int, argv: *const *const c_char) -> Args {
    let mut words = Vec::new();
    for i in 0..usize::try_from(argc).unwrap_or(0) {
        // SAFETY: per the contract.
        let p = unsafe { *argv.add(i) };
        if !p.is_null() {
            // SAFETY: libpam's NUL-terminated strings.
            words.push(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
        }
    }
    let (args, complaints) = args::parse(words.iter().map(String::as_str));
    for c in complaints {
        ffi::log(libc::LOG_WARNING, &c);
    }
    args
}

/// The daemon, with a debug line per exchange (the verb and the kind of answer only).
struct Logged {
    daemon: SocketDaemon,
    debug: bool,
}

impl Daemon for Logged {
    fn ask(&mut self, request: &Request) -> Result<Answer, Unreachable> {
        let answer = self.daemon.ask(request);
        if self.debug {
            let verb = match request {
                Request::TwoFactorStart { .. } => "2fa-start".to_string(),
                Request::TwoFactorContinue {
                    challenge, action, ..
                } => format!("2fa-continue challenge {challenge} {}", action.as_arg()),
                Request::PamAccount { .. } => "pam-account".to_string(),
                _ => "another request".to_string(),
            };
            let got = match &answer {
                Ok(Answer::Ok(lines)) => format!("OK with {} lines", lines.len()),
                Ok(Answer::NotFound) => "NOTFOUND".into(),
                Ok(Answer::Unavailable(r)) => format!("UNAVAIL {r}"),
                Ok(Answer::Denied(r)) => format!("DENIED {r}"),
                Ok(Answer::Error(r)) => format!("ERR {r}"),
                Err(Unreachable(why)) => format!("no answer: {why}"),
            };
            ffi::log(libc::LOG_DEBUG, &format!("asked {verb}: {got}"));
        }
        answer
    }
}

/// A user name fit for a log line (what PAM holds may be anything).
fn shown(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn report(what: &str, name: &str, o: &Outcome) {
    let level = match o.verdict {
        Verdict::Success => libc::LOG_INFO,
        Verdict::Ignore => libc::LOG_INFO,
        Verdict::Deny => libc::LOG_WARNING,
    };
    ffi::log(level, &format!("{what} of {}: {}", shown(name), o.log));
}

/// The hook's common part: the arguments, the user, the conversation, then `decide`.
///
/// # Safety
/// libpam's module-hook contract for `pamh`, `argc`, `argv`.
unsafe fn hook(
    pamh: *mut PamHandle,
    argc: c_int,
    argv: *const *const c_char,
    what: &str,
    decide: impl FnOnce(&str, &Args, &mut Logged, &mut ffi::Conversation) -> Outcome,
) -> Result<Verdict, ()> {
    // SAFETY: per the contract.
    let args = unsafe { module_args(argc, argv) };
    // SAFETY: per the contract.
    let (name, conv) = match unsafe { (ffi::get_user(pamh), ffi::get_conv(pamh)) } {
        (Ok(n), Ok(c)) => (n, c),
        (Err(e), _) | (_, Err(e)) => {
            ffi::log(libc::LOG_ERR, &format!("{what}: refused: {e}"));
            return Err(());
        }
    };
    let mut daemon = Logged {
        daemon: SocketDaemon {
            path: args.socket.clone(),
            timeout: args.call_timeout,
        },
        debug: args.debug,
    };
    let mut user = ffi::Conversation { conv };
    let o = decide(&name, &args, &mut daemon, &mut user);
    report(what, &name, &o);
    Ok(o.verdict)
}

/// # Safety
/// libpam's `pam_sm_authenticate` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_sm_authenticate(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    run(PAM_AUTH_ERR, || {
        // SAFETY: libpam's arguments.
        let verdict = unsafe {
            hook(pamh, argc, argv, "two-step verification", |n, a, d, u| {
                flow::authenticate(n, a.answer_timeout, d, u)
            })
        };
        // SAFETY: libpam's handle.
        unsafe { ffi::set_authenticated(pamh, verdict == Ok(Verdict::Success)) };
        match verdict {
            Ok(Verdict::Success) => PAM_SUCCESS,
            Ok(Verdict::Ignore) => PAM_IGNORE,
            Ok(Verdict::Deny) | Err(()) => PAM_AUTH_ERR,
        }
    })
}

/// # Safety
/// libpam's `pam_sm_setcred` contract. See the crate documentation for why the code depends
/// on this handle's `auth` result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_sm_setcred(
    pamh: *mut PamHandle,
    _flags: c_int,
    _argc: c_int,
    _argv: *const *const c_char,
) -> c_int {
    run(PAM_IGNORE, || {
        // SAFETY: libpam's handle.
        if unsafe { ffi::authenticated(pamh) } {
            PAM_SUCCESS
        } else {
            PAM_IGNORE
        }
    })
}

/// # Safety
/// libpam's `pam_sm_acct_mgmt` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_sm_acct_mgmt(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    run(PAM_PERM_DENIED, || {
        // SAFETY: libpam's arguments.
        let verdict = unsafe {
            hook(pamh, argc, argv, "account check", |n, _, d, u| {
                flow::account(n, d, u)
            })
        };
        match verdict {
            Ok(Verdict::Success) => PAM_SUCCESS,
            Ok(Verdict::Ignore) => PAM_IGNORE,
            Ok(Verdict::Deny) | Err(()) => PAM_PERM_DENIED,
        }
    })
}
