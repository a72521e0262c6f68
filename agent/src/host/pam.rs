//! sshd's PAM stack while OS Login two-step verification is on: a marked block at the top of
//! `/etc/pam.d/sshd` naming our module for `auth` (the challenge) and `account` (the login
//! role, live). Off again, the file is byte for byte what it was (the block is the only
//! change, see [`super::sshd::strip_block`]).
//!
//! The lines and what the module's answers mean there:
//! - `auth [success=done ignore=ignore default=die]`: the second factor passed ends the auth
//!   stack; not ours (not an OS Login user, an `sa_` account, 2FA off) lets the rest of the
//!   stack decide; anything else (wrong code, timeout, daemon down) fails the attempt.
//! - `account [success=ok ignore=ignore default=die]`: the login role granted goes on to the
//!   rest of the account stack; a denial ends the login.
//!
//! Before the block is written the module must be in place: a root-owned file, not writable
//! by others, that loads and exports the PAM entry points (a stack naming a module that does
//! not load would fail every keyboard-interactive and password login). The daemon writes the
//! PAM block before sshd is told to ask for keyboard-interactive, and removes it after: a
//! crash in between leaves a stack that key users still pass.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::files::{self, FileError};
use super::sshd::{BEGIN_MARK, END_MARK, SshdError, prepend_block, strip_block};

/// Where PAM looks for a module named without a path (Debian's multiarch directories first).
pub const SECURITY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/security",
    "/lib/x86_64-linux-gnu/security",
    "/usr/lib/aarch64-linux-gnu/security",
    "/lib/aarch64-linux-gnu/security",
    "/usr/lib64/security",
    "/lib64/security",
    "/lib/security",
    "/usr/lib/security",
];

#[derive(Debug, thiserror::Error)]
pub enum PamError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {message}")]
    Stack { path: PathBuf, message: String },
    #[error(
        "the PAM module {module} is not usable ({why}); two-step verification needs it: \
         install the package's pam_guestagent.so or set oslogin.pam_module to its path"
    )]
    Module { module: String, why: String },
}

impl From<SshdError> for PamError {
    fn from(e: SshdError) -> Self {
        match e {
            SshdError::BrokenBlock { path } => PamError::Stack {
                path,
                message: format!(
                    "a `{BEGIN_MARK}` line without its `{END_MARK}` (or the reverse); delete the leftover marker line"
                ),
            },
            other => PamError::Stack {
                path: PathBuf::new(),
                message: other.to_string(),
            },
        }
    }
}

/// Our lines for `module` (as PAM names it: a file name or an absolute path).
pub fn lines(module: &str) -> String {
    format!(
        "auth [success=done ignore=ignore default=die] {module}\naccount [success=ok ignore=ignore default=die] {module}\n"
    )
}

/// `text` with our block (and only ours) at the top.
pub fn plan_enable(text: &str, module: &str, path: &Path) -> Result<String, PamError> {
    let base = strip_block(text, path)?;
    Ok(prepend_block(&base, &lines(module)))
}

/// `text` without our block.
pub fn plan_disable(text: &str, path: &Path) -> Result<String, PamError> {
    Ok(strip_block(text, path)?)
}

/// Whether `text` carries our block with exactly `module`'s lines.
pub fn carries(text: &str, module: &str) -> bool {
    text.contains(&format!("{BEGIN_MARK}\n{}{END_MARK}\n", lines(module)))
}

/// The file PAM loads for `module`.
pub fn module_file(module: &str) -> Option<PathBuf> {
    if module.starts_with('/') {
        return Some(PathBuf::from(module));
    }
    SECURITY_DIRS
        .iter()
        .map(|d| Path::new(d).join(module))
        .find(|p| p.is_file())
}

/// The module is a root-owned regular file not writable by group or others, which loads and
/// exports `pam_sm_authenticate` and `pam_sm_acct_mgmt`.
pub fn check_module(module: &str) -> Result<PathBuf, PamError> {
    let bad = |why: String| PamError::Module {
        module: module.to_owned(),
        why,
    };
    let path = module_file(module)
        .ok_or_else(|| bad(format!("not found in {}", SECURITY_DIRS.join(", "))))?;
    let meta = std::fs::metadata(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(bad(format!(
            "{} must be a regular file owned by root and not writable by group or others",
            path.display()
        )));
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| bad("the path holds a NUL byte".into()))?;
    // Loaded lazily and never unloaded (a Rust library's thread-local destructors must not
    // be unmapped); the entry points are looked up, not called.
    // SAFETY: a valid C string; the handle is only passed to dlsym.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or NULL.
        let err = unsafe { libc::dlerror() };
        let why = if err.is_null() {
            "it does not load".to_owned()
        } else {
            // SAFETY: non-null, NUL-terminated.
            unsafe { std::ffi::CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(bad(why));
    }
    for sym in [c"pam_sm_authenticate", c"pam_sm_acct_mgmt"] {
        // SAFETY: a handle from dlopen and a C string.
        if unsafe { libc::dlsym(handle, sym.as_ptr()) }.is_null() {
            return Err(bad(format!("it does not export {}", sym.to_string_lossy())));
        }
    }
    Ok(path)
}

/// Linux-PAM's result codes of a stack that could not run at all (a module that does not
/// load, a symbol missing, a broken line), as opposed to a decision (success, denied,
/// unknown user, expired).
const BROKEN_STACK: &[i32] = &[1, 2, 3, 4, 5, 26, 28];

/// `guest-agent pam-probe SERVICE`: one account transaction of SERVICE for root through the
/// system's libpam (loaded at run time: the agent does not link it), answered with no
/// conversation. Prints `result N` and exits 0 when the stack ran (whatever it decided),
/// 1 when it could not (libpam missing, or a result of [`BROKEN_STACK`]).
pub fn probe_main(service: &str) -> crate::exit::ExitCode {
    match probe_account(service) {
        Ok(code) => {
            println!("result {code}");
            if BROKEN_STACK.contains(&code) {
                crate::exit::ExitCode::from(1)
            } else {
                crate::exit::ExitCode::SUCCESS
            }
        }
        Err(why) => {
            eprintln!("guest-agent pam-probe: {why}");
            crate::exit::ExitCode::from(1)
        }
    }
}

#[repr(C)]
struct PamConv {
    conv: extern "C" fn(
        i32,
        *mut *const libc::c_void,
        *mut *mut libc::c_void,
        *mut libc::c_void,
    ) -> i32,
    appdata: *mut libc::c_void,
}

/// No conversation: every question is answered PAM_CONV_ERR.
extern "C" fn no_conversation(
    _n: i32,
    _msg: *mut *const libc::c_void,
    _resp: *mut *mut libc::c_void,
    _data: *mut libc::c_void,
) -> i32 {
    19 // PAM_CONV_ERR
}

fn probe_account(service: &str) -> Result<i32, String> {
    let service = CString::new(service).map_err(|_| "the service name holds a NUL byte")?;
    // SAFETY: dlopen/dlsym with valid C strings; the function pointers are called with the
    // signatures of <security/pam_appl.h>; the handle is ended with pam_end.
    unsafe {
        let lib = libc::dlopen(c"libpam.so.0".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if lib.is_null() {
            return Err("libpam.so.0 does not load".into());
        }
        let sym = |name: &std::ffi::CStr| {
            let p = libc::dlsym(lib, name.as_ptr());
            (!p.is_null()).then_some(p)
        };
        let (Some(start), Some(acct), Some(end)) =
            (sym(c"pam_start"), sym(c"pam_acct_mgmt"), sym(c"pam_end"))
        else {
            return Err("libpam.so.0 lacks pam_start, pam_acct_mgmt or pam_end".into());
        };
        type Start = unsafe extern "C" fn(
            *const libc::c_char,
            *const libc::c_char,
            *const PamConv,
            *mut *mut libc::c_void,
        ) -> i32;
        type Acct = unsafe extern "C" fn(*mut libc::c_void, i32) -> i32;
        type End = unsafe extern "C" fn(*mut libc::c_void, i32) -> i32;
        let start: Start = std::mem::transmute(start);
        let acct: Acct = std::mem::transmute(acct);
        let end: End = std::mem::transmute(end);
        let conv = PamConv {
            conv: no_conversation,
            appdata: std::ptr::null_mut(),
        };
        let mut handle: *mut libc::c_void = std::ptr::null_mut();
        let r = start(service.as_ptr(), c"root".as_ptr(), &conv, &mut handle);
        if r != 0 || handle.is_null() {
            return Ok(r);
        }
        let code = acct(handle, 0x8000); // PAM_SILENT
        end(handle, code);
        Ok(code)
    }
}

/// Runs `exe pam-probe SERVICE` (a process of its own: a module that crashes takes nothing
/// with it) and returns its result code.
pub fn run_probe(exe: &Path, service: &str) -> Result<i32, String> {
    let out = super::command::run(
        exe,
        &["pam-probe", service],
        std::time::Duration::from_secs(10),
    )
    .map_err(|e| e.to_string())?;
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("result ")?.trim().parse().ok())
        .ok_or_else(|| format!("the PAM probe gave no result: {}", out.message()))
}

fn read(path: &Path) -> Result<Option<String>, PamError> {
    match files::read_optional(path)? {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| PamError::Stack {
                path: path.to_path_buf(),
                message: "not UTF-8 text; the agent edits only text it can put back byte for byte"
                    .into(),
            }),
    }
}

fn write_keeping(path: &Path, text: &str) -> Result<bool, PamError> {
    let meta = std::fs::metadata(path).ok();
    let mode = meta.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    let owner = meta.as_ref().map(|m| (m.uid(), m.gid()));
    Ok(files::write_atomic(path, text.as_bytes(), mode, owner)?)
}

/// Puts our block at the top of `path`, naming the module's file by its absolute path (after
/// checking it). `Ok(true)`: written.
pub fn enable(path: &Path, module: &str) -> Result<bool, PamError> {
    let text = read(path)?.ok_or_else(|| PamError::Stack {
        path: path.to_path_buf(),
        message: "missing: sshd's PAM stack is needed for two-step verification (UsePAM yes)"
            .into(),
    })?;
    // The line names the file found (the package puts it in /usr/lib/TUPLE/security, which a
    // libpam built for /lib/TUPLE/security would not search on a system without merged /usr).
    let file = check_module(module)?;
    let named = file.to_string_lossy();
    if carries(&text, &named) && strip_block(&text, path).is_ok() {
        return Ok(false);
    }
    // A real transaction of the stack before and after (the service is the file's name):
    // the lines stay only when the result is the same (a stack that ran before and cannot run
    // with them would lock everyone out of sshd's account check).
    let service = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sshd".into());
    let exe = std::env::current_exe().ok();
    let probe = |exe: &Option<PathBuf>| exe.as_deref().map(|e| run_probe(e, &service));
    let before = probe(&exe);
    let written = write_keeping(path, &plan_enable(&text, &named, path)?)?;
    if let Some(Ok(before)) = before {
        let after = probe(&exe);
        if after
            .as_ref()
            .is_none_or(|a| a.as_ref().ok() != Some(&before))
        {
            let undo = write_keeping(path, &text);
            let why = format!(
                "a PAM account transaction of {service} gave {before} without the lines and {} with them: the lines were taken out again{}",
                match &after {
                    Some(Ok(a)) => a.to_string(),
                    Some(Err(e)) => e.clone(),
                    None => "no result".into(),
                },
                match undo {
                    Ok(_) => String::new(),
                    Err(e) => format!(" (putting the file back failed: {e})"),
                }
            );
            return Err(PamError::Stack {
                path: path.to_path_buf(),
                message: why,
            });
        }
    } else if let Some(Err(e)) = before {
        tracing::warn!(error = %e, "the PAM stack could not be probed; the lines are kept after the module check alone");
    }
    Ok(written)
}

/// Removes our block from `path`. `Ok(true)`: written.
pub fn disable(path: &Path) -> Result<bool, PamError> {
    let Some(text) = read(path)? else {
        return Ok(false);
    };
    let out = plan_disable(&text, path)?;
    if out == text {
        return Ok(false);
    }
    write_keeping(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "# PAM configuration for the Secure Shell service\n\n# Standard Un*x authentication.\n@include common-auth\n\naccount    required     pam_nologin.so\n@include common-account\n";

    #[test]
    fn the_block_goes_on_top_and_comes_off_byte_for_byte() {
        let p = Path::new("/etc/pam.d/sshd");
        let on = plan_enable(DEBIAN, "pam_guestagent.so", p).unwrap();
        assert!(on.starts_with(&format!("{BEGIN_MARK}\nauth [success=done ignore=ignore default=die] pam_guestagent.so\naccount ")));
        assert!(carries(&on, "pam_guestagent.so"));
        assert!(!carries(&on, "/opt/pam_guestagent.so"));
        assert_eq!(plan_disable(&on, p).unwrap(), DEBIAN);
        // Again: still one block.
        let twice = plan_enable(&on, "pam_guestagent.so", p).unwrap();
        assert_eq!(twice, on);
        // A file without a final newline survives too.
        let bare = "auth required pam_unix.so";
        assert_eq!(
            plan_disable(&plan_enable(bare, "x.so", p).unwrap(), p).unwrap(),
            bare
        );
    }

    #[test]
    fn a_broken_block_is_refused_naming_the_file() {
        let p = Path::new("/etc/pam.d/sshd");
        let broken = format!("{BEGIN_MARK}\nauth required pam_unix.so\n");
        let e = plan_disable(&broken, p).unwrap_err().to_string();
        assert!(e.contains("/etc/pam.d/sshd") && e.contains("marker"), "{e}");
    }

    #[test]
    fn a_missing_module_is_named_with_what_to_do() {
        let e = check_module("pam_guestagent_not_here.so")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pam_guestagent_not_here.so") && e.contains("oslogin.pam_module"),
            "{e}"
        );
        let e = check_module("/nonexistent/pam_x.so")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/pam_x.so"), "{e}");
    }
}
