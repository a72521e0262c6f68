//! glibc NSS module for guest-agent's OS Login users and groups: `libnss_guestagent.so.2`.
//!
//! It runs inside every process that looks a user up, so it is small, never panics across the
//! C boundary, starts no thread and never touches the network: it reads the directory cache
//! file the daemon writes (mapped, its header checked once per version in O(1), a self-checking
//! hash-table probe per lookup) and, on a miss, asks the daemon on its local socket within
//! 100 ms. Only the `_nss_guestagent_*`
//! functions are exported; their signatures and status codes are glibc's (`nss.h`).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)]

mod client;
mod fill;
mod mapping;
mod module;

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{LazyLock, Once};

use libc::{c_char, c_int, c_long, gid_t, group, passwd, size_t, uid_t};

use fill::{Arena, GidList};
use module::{Module, Status};

const NSS_STATUS_TRYAGAIN: c_int = -2;
const NSS_STATUS_UNAVAIL: c_int = -1;
const NSS_STATUS_NOTFOUND: c_int = 0;
const NSS_STATUS_SUCCESS: c_int = 1;

static MODULE: LazyLock<Module> = LazyLock::new(Module::system);

/// Runs `f`, never letting a panic unwind into C, and reports its status the NSS way: a
/// panic (a bug) is answered UNAVAIL, as a module that cannot answer, and the caller lives on.
/// This needs the unwinding panic strategy (the workspace's release profile: Cargo.toml);
/// under `panic = "abort"` the catch would do nothing and sshd or sudo would die of SIGABRT.
///
/// The panic is silent: the module's own panic hook (this shared object links its own copy of
/// std, so the hook is the module's, not its host's) prints nothing, because fd 2 of the
/// process we run in may be anything (a daemon's socket or log file once it closed stderr),
/// and a caller's `RUST_BACKTRACE` must not make a setuid program walk its stack.
fn run(errnop: *mut c_int, f: impl FnOnce() -> Status) -> c_int {
    static SILENT: Once = Once::new();
    SILENT.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let status = catch_unwind(AssertUnwindSafe(f)).unwrap_or(Status::Unavail);
    let (code, errno) = match status {
        Status::Success => (NSS_STATUS_SUCCESS, 0),
        Status::NotFound => (NSS_STATUS_NOTFOUND, libc::ENOENT),
        Status::Unavail => (NSS_STATUS_UNAVAIL, libc::ENOENT),
        Status::Erange => (NSS_STATUS_TRYAGAIN, libc::ERANGE),
        Status::NoMem => (NSS_STATUS_TRYAGAIN, libc::ENOMEM),
    };
    if errno != 0 && !errnop.is_null() {
        // SAFETY: glibc passes a valid errno pointer (checked non-null).
        unsafe { *errnop = errno };
    }
    code
}

/// The caller's result struct and buffer, or None when a pointer is null.
///
/// # Safety
/// `out` and `buffer` must be glibc's: a result struct and a buffer of `buflen` bytes.
unsafe fn outputs<'a, T>(
    out: *mut T,
    buffer: *mut c_char,
    buflen: size_t,
) -> Option<(&'a mut MaybeUninit<T>, Arena)> {
    if out.is_null() {
        return None;
    }
    // SAFETY: per the contract; MaybeUninit makes no claim about the contents.
    unsafe {
        Some((
            &mut *out.cast::<MaybeUninit<T>>(),
            Arena::new(buffer, buflen),
        ))
    }
}

/// The name glibc asks for (None when null).
///
/// # Safety
/// `name` must be null or a NUL-terminated string.
unsafe fn name<'a>(name: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: per the contract.
    (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) }.to_bytes())
}

/// # Safety
/// glibc's `getpwnam_r` module contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _nss_guestagent_getpwnam_r(
    name_: *const c_char,
    result: *mut passwd,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        // SAFETY: glibc's pointers.
        match unsafe { (name(name_), outputs(result, buffer, buflen)) } {
            (Some(n), Some((out, mut arena))) => MODULE.getpwnam(n, out, &mut arena),
            _ => Status::Unavail,
        }
    })
}

/// # Safety
/// glibc's `getpwuid_r` module contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _nss_guestagent_getpwuid_r(
    uid: uid_t,
    result: *mut passwd,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        // SAFETY: glibc's pointers.
        match unsafe { outputs(result, buffer, buflen) } {
            Some((out, mut arena)) => MODULE.getpwuid(uid, out, &mut arena),
            None => Status::Unavail,
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn _nss_guestagent_setpwent(_stayopen: c_int) -> c_int {
    run(std::ptr::null_mut(), || {
        MODULE.setpwent();
        Status::Success
    })
}

/// # Safety
/// glibc's `getpwent_r` module contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _nss_guestagent_getpwent_r(
    result: *mut passwd,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        // SAFETY: glibc's pointers.
        match unsafe { outputs(result, buffer, buflen) } {
            Some((out, mut arena)) => MODULE.getpwent(out, &mut arena),
            None => Status::Unavail,
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn _nss_guestagent_endpwent() -> c_int {
    run(std::ptr::null_mut(), || {
        MODULE.setpwent();
        Status::Success
    })
}

/// # Safety
/// glibc's `getgrnam_r` module contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _nss_guestagent_getgrnam_r(
    name_: *const c_char,
    result: *mut group,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        // SAFETY: glibc's pointers.
        match unsafe { (name(name_), outputs(result, buffer, buflen)) } {
            (Some(n), Some((out, mut arena))) => MODULE.getgrnam(n, out, &mut arena),
            _ => Status::Unavail,
        }
    })
}

/// # Safety
/// glibc's `getgrgid_r` module contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _nss_guestagent_getgrgid_r(
    gid: gid_t,
    result: *mut group,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        // SAFETY: glibc's pointers.
        match unsafe { outputs(result, buffer, buflen) } {
            Some((out, mut arena)) => MODULE.getgrgid(gid, out, &mut arena),
            None => Status::Unavail,
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn _nss_guestagent_setgrent(_stayopen: c_int) -> c_int {
    run(std::ptr::null_mut(), || {
        MODULE.setgrent();
        Status::Success
    })
}

/// # Safety
/// glibc's `getgrent_r` module contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _nss_guestagent_getgrent_r(
    result: *mut group,
    buffer: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        // SAFETY: glibc's pointers.
        match unsafe { outputs(result, buffer, buflen) } {
            Some((out, mut arena)) => MODULE.getgrent(out, &mut arena),
            None => Status::Unavail,
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn _nss_guestagent_endgrent() -> c_int {
    run(std::ptr::null_mut(), || {
        MODULE.setgrent();
        Status::Success
    })
}

/// # Safety
/// glibc's `initgroups_dyn` module contract: `*groupsp` is a malloc'ed array of `*size` gids,
/// the first `*start` of them set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _nss_guestagent_initgroups_dyn(
    user: *const c_char,
    skipgroup: gid_t,
    start: *mut c_long,
    size: *mut c_long,
    groupsp: *mut *mut gid_t,
    limit: c_long,
    errnop: *mut c_int,
) -> c_int {
    run(errnop, || {
        // SAFETY: glibc's pointers.
        let (user, list) = unsafe { (name(user), GidList::new(start, size, groupsp, limit)) };
        match (user, list) {
            (Some(u), Some(mut list)) => MODULE.initgroups(u, skipgroup, &mut list),
            _ => Status::Unavail,
        }
    })
}
