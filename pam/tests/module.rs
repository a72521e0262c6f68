//! The built `.so` as libpam sees it: its exports (nm), and the hooks called through `dlopen`
//! with this test binary playing libpam (`pam_get_user`, `pam_get_item`, `pam_set_data`,
//! `pam_get_data`, exported by build.rs's `--export-dynamic`), a fake conversation and a fake
//! daemon on a temporary socket.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::VecDeque;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::{BufRead, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cdylib Cargo built beside this test (target/<profile>/deps or target/<profile>).
fn module() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    [deps.to_path_buf(), deps.parent()?.to_path_buf()]
        .into_iter()
        .map(|d| d.join("libpam_guestagent.so"))
        .find(|p| p.exists())
}

fn nm(args: &[&str], so: &Path) -> Option<String> {
    let out = Command::new("nm").args(args).arg(so).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_module_exports_the_hooks_and_links_no_libpam() {
    let Some(so) = module() else {
        eprintln!("SKIPPED: libpam_guestagent.so not found beside the test binary");
        return;
    };
    let Some(defined) = nm(&["-D", "--defined-only"], &so) else {
        eprintln!("SKIPPED: nm is not available (binutils)");
        return;
    };
    let exported: Vec<&str> = defined
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    for hook in ["pam_sm_authenticate", "pam_sm_acct_mgmt", "pam_sm_setcred"] {
        assert!(
            exported.contains(&hook),
            "{hook} not exported by {}",
            so.display()
        );
    }
    let undefined = nm(&["-D", "--undefined-only"], &so).unwrap_or_default();
    assert!(
        !undefined.lines().any(|l| l.contains(" pam_")),
        "libpam symbols linked: {undefined}"
    );
}

// ---- A libpam of our own ----

#[repr(C)]
struct PamMessage {
    style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    retcode: c_int,
}

type ConvFn =
    extern "C" fn(c_int, *const *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int;

#[repr(C)]
struct PamConv {
    conv: ConvFn,
    appdata: *mut c_void,
}

/// What the test's "pamh" points at.
struct Handle {
    user: CString,
    conv: PamConv,
    data: *mut c_void,
}

/// The conversation's script and record.
#[derive(Default)]
struct Dialog {
    replies: VecDeque<&'static str>,
    shown: Vec<(c_int, String)>,
}

/// # Safety
/// `pamh` is a `Handle` of this test.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_get_user(
    pamh: *mut c_void,
    user: *mut *const c_char,
    _prompt: *const c_char,
) -> c_int {
    unsafe { *user = (*pamh.cast::<Handle>()).user.as_ptr() };
    0
}

/// # Safety
/// `pamh` is a `Handle` of this test.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_get_item(
    pamh: *const c_void,
    item: c_int,
    out: *mut *const c_void,
) -> c_int {
    if item != 5 {
        return 29; // PAM_BAD_ITEM
    }
    unsafe { *out = (&raw const (*pamh.cast::<Handle>()).conv).cast() };
    0
}

/// # Safety
/// `pamh` is a `Handle` of this test.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_set_data(
    pamh: *mut c_void,
    _name: *const c_char,
    data: *mut c_void,
    _cleanup: *const c_void,
) -> c_int {
    unsafe { (*pamh.cast::<Handle>()).data = data };
    0
}

/// # Safety
/// `pamh` is a `Handle` of this test.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_get_data(
    pamh: *const c_void,
    _name: *const c_char,
    out: *mut *const c_void,
) -> c_int {
    let data = unsafe { (*pamh.cast::<Handle>()).data };
    if data.is_null() {
        return 18; // PAM_NO_MODULE_DATA
    }
    unsafe { *out = data };
    0
}

/// Answers each message from the dialog's script, in malloc'ed memory as libpam wants.
extern "C" fn converse(
    n: c_int,
    msgs: *const *const PamMessage,
    resp: *mut *mut PamResponse,
    appdata: *mut c_void,
) -> c_int {
    let dialog = unsafe { &mut *appdata.cast::<Dialog>() };
    let n = n as usize;
    let out = unsafe { libc::calloc(n, size_of::<PamResponse>()) }.cast::<PamResponse>();
    for i in 0..n {
        let m = unsafe { &**msgs.add(i) };
        let text = unsafe { CStr::from_ptr(m.msg) }
            .to_string_lossy()
            .into_owned();
        dialog.shown.push((m.style, text));
        if m.style <= 2 {
            let Some(reply) = dialog.replies.pop_front() else {
                unsafe { libc::free(out.cast()) };
                return 19; // PAM_CONV_ERR
            };
            let reply = CString::new(reply).unwrap();
            unsafe { (*out.add(i)).resp = libc::strdup(reply.as_ptr()) };
        }
    }
    unsafe { *resp = out };
    0
}

type Hook = unsafe extern "C" fn(*mut c_void, c_int, c_int, *const *const c_char) -> c_int;

struct Module {
    auth: Hook,
    setcred: Hook,
    account: Hook,
}

fn load(so: &Path) -> Module {
    let path = CString::new(so.to_str().unwrap()).unwrap();
    let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!lib.is_null(), "dlopen {}", so.display());
    let hook = |name: &CStr| -> Hook {
        let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
        assert!(!p.is_null(), "{name:?}");
        unsafe { std::mem::transmute::<*mut c_void, Hook>(p) }
    };
    Module {
        auth: hook(c"pam_sm_authenticate"),
        setcred: hook(c"pam_sm_setcred"),
        account: hook(c"pam_sm_acct_mgmt"),
    }
}

/// A daemon answering `answers` in turn, one connection each; returns the request lines.
fn daemon(
    listener: UnixListener,
    answers: Vec<&'static str>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for answer in answers {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&s).read_line(&mut line).unwrap();
            seen.push(line.trim_end().to_owned());
            s.write_all(answer.as_bytes()).unwrap();
        }
        seen
    })
}

/// Calls `hook` for `user` with the module arguments `args` and the dialog's replies.
fn call(hook: Hook, handle: &mut Handle, dialog: &mut Dialog, user: &str, args: &[&str]) -> c_int {
    handle.user = CString::new(user).unwrap();
    handle.conv.appdata = (dialog as *mut Dialog).cast();
    let args: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
    let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    unsafe {
        hook(
            (handle as *mut Handle).cast(),
            0,
            argv.len() as c_int,
            argv.as_ptr(),
        )
    }
}

#[test]
fn the_hooks_through_dlopen() {
    let Some(so) = module() else {
        eprintln!("SKIPPED: libpam_guestagent.so not found beside the test binary");
        return;
    };
    let m = load(&so);
    let dir = std::env::temp_dir().join(format!("ga-pam-module-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    let socket_arg = format!("socket={}", sock.display());
    let args = [socket_arg.as_str(), "call_timeout=5", "debug", "bogus"];
    let mut handle = Handle {
        user: CString::default(),
        conv: PamConv {
            conv: converse,
            appdata: std::ptr::null_mut(),
        },
        data: std::ptr::null_mut(),
    };

    // A TOTP login: the code goes to the daemon in hex, setcred then succeeds.
    let d = daemon(
        UnixListener::bind(&sock).unwrap(),
        vec![
            "OK 2\nsession s1\nchallenge 4 TOTP READY\n",
            "OK 1\nauthenticated\n",
        ],
    );
    let mut dialog = Dialog {
        replies: ["123456"].into(),
        ..Default::default()
    };
    assert_eq!(call(m.auth, &mut handle, &mut dialog, "alice", &args), 0);
    let seen = d.join().unwrap();
    assert!(seen[0].ends_with(" 2fa-start alice"), "{seen:?}");
    assert!(
        seen[1].ends_with(" 2fa-continue alice s1 4 respond 313233343536"),
        "{seen:?}"
    );
    assert_eq!(dialog.shown.len(), 1);
    assert_eq!(dialog.shown[0].0, 1, "the code is read without echo");
    assert_eq!(call(m.setcred, &mut handle, &mut dialog, "alice", &[]), 0);

    // A wrong code: refused with the reason shown; setcred no longer claims success.
    std::fs::remove_file(&sock).unwrap();
    let d = daemon(
        UnixListener::bind(&sock).unwrap(),
        vec![
            "OK 2\nsession s1\nchallenge 4 TOTP READY\n",
            "DENIED Wrong code\n",
        ],
    );
    let mut dialog = Dialog {
        replies: ["000000"].into(),
        ..Default::default()
    };
    assert_eq!(call(m.auth, &mut handle, &mut dialog, "alice", &args), 7);
    d.join().unwrap();
    assert_eq!(
        dialog.shown.last().unwrap(),
        &(3, "Two-step verification failed: Wrong code".to_string())
    );
    assert_eq!(call(m.setcred, &mut handle, &mut dialog, "alice", &[]), 25);

    // The conversation gives nothing: refused.
    std::fs::remove_file(&sock).unwrap();
    let d = daemon(
        UnixListener::bind(&sock).unwrap(),
        vec!["OK 2\nsession s1\nchallenge 4 TOTP READY\n"],
    );
    let mut dialog = Dialog::default();
    assert_eq!(call(m.auth, &mut handle, &mut dialog, "alice", &args), 7);
    d.join().unwrap();

    // Account: OK, DENIED, and no daemon at all.
    std::fs::remove_file(&sock).unwrap();
    let d = daemon(
        UnixListener::bind(&sock).unwrap(),
        vec!["OK 0\n", "DENIED no login role\n"],
    );
    let mut dialog = Dialog::default();
    assert_eq!(call(m.account, &mut handle, &mut dialog, "sa_12", &args), 0);
    assert_eq!(call(m.account, &mut handle, &mut dialog, "alice", &args), 6);
    assert_eq!(
        d.join().unwrap(),
        vec![
            format!(
                "@{} pam-account sa_12",
                guest_agent_wire::proto::PROTOCOL_VERSION
            ),
            format!(
                "@{} pam-account alice",
                guest_agent_wire::proto::PROTOCOL_VERSION
            ),
        ]
    );
    assert_eq!(
        dialog.shown,
        vec![(3, "Login refused: no login role".to_string())]
    );
    std::fs::remove_file(&sock).unwrap();
    assert_eq!(
        call(m.account, &mut handle, &mut dialog, "alice", &args),
        25
    );

    // No daemon: auth fails closed and says why; sa_ users are left to the stack unasked.
    let mut dialog = Dialog::default();
    assert_eq!(call(m.auth, &mut handle, &mut dialog, "alice", &args), 7);
    assert!(
        dialog.shown[0].1.contains("guest agent did not answer"),
        "{:?}",
        dialog.shown
    );
    assert_eq!(call(m.auth, &mut handle, &mut dialog, "sa_12", &args), 25);
    let _ = std::fs::remove_dir_all(&dir);
}
