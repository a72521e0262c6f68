//! The measuring half of [`super`]: the private mount namespace with the module, the cache
//! and passwd files of a given size, and the timed lookups, each in a forked child.

use std::ffi::{CString, c_char, c_int};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent_wire::cache::{CacheBuilder, UserEntry};

pub(super) const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";
const FIRST_UID: u32 = 300_000;

type Lookup = unsafe extern "C" fn(
    *const c_char,
    *mut libc::passwd,
    *mut c_char,
    libc::size_t,
    *mut c_int,
) -> c_int;
type LookupUid = unsafe extern "C" fn(
    libc::uid_t,
    *mut libc::passwd,
    *mut c_char,
    libc::size_t,
    *mut c_int,
) -> c_int;

pub(super) fn cstring(s: impl AsRef<str>) -> Result<CString, String> {
    CString::new(s.as_ref()).map_err(|e| e.to_string())
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn mount(
    src: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let (s, t) = (cstring(src)?, cstring(target)?);
    let f = fstype.map(cstring).transpose()?;
    let d = data.map(cstring).transpose()?;
    // SAFETY: NUL-terminated strings or null pointers.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if r != 0 {
        return Err(os_err(&format!("mount {src} on {target}")));
    }
    Ok(())
}

/// The files the namespace is made of.
pub(super) struct Setup {
    pub lib: PathBuf,
    pub nsswitch: PathBuf,
    pub passwd: PathBuf,
    pub host_passwd: String,
}

/// Enters a private mount namespace and mounts the test world; returns its files.
pub(super) fn enter_namespace(work: &Path, library: &Path) -> Result<Setup, String> {
    let host_passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    // SAFETY: single-threaded at this point (CLONE_NEWNS requires it).
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(os_err("unshare(CLONE_NEWNS)"));
    }
    mount("none", "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let w = work.to_str().ok_or("temp dir path is not UTF-8")?;
    mount("tmpfs", w, Some("tmpfs"), 0, Some("mode=0755"))?;
    for d in ["lib-up", "lib-work", "var-up/guest-agent", "var-work"] {
        std::fs::create_dir_all(work.join(d)).map_err(|e| format!("{d}: {e}"))?;
    }
    let lib = work.join("lib-up/libnss_guestagent.so.2");
    std::fs::copy(library, &lib).map_err(|e| format!("copy {}: {e}", library.display()))?;
    let nsswitch = work.join("nsswitch.conf");
    let passwd = work.join("passwd");
    std::fs::write(&nsswitch, "passwd: files\ngroup: files\n").map_err(|e| e.to_string())?;
    std::fs::write(&passwd, &host_passwd).map_err(|e| e.to_string())?;
    mount(
        "overlay",
        LIB_DIR,
        Some("overlay"),
        0,
        Some(&format!(
            "lowerdir={LIB_DIR},upperdir={w}/lib-up,workdir={w}/lib-work"
        )),
    )?;
    mount(
        "overlay",
        "/var/lib",
        Some("overlay"),
        0,
        Some(&format!(
            "lowerdir=/var/lib,upperdir={w}/var-up,workdir={w}/var-work"
        )),
    )?;
    let bind = |src: &Path, dst: &str| {
        mount(
            src.to_str().unwrap_or_default(),
            dst,
            None,
            libc::MS_BIND,
            None,
        )
    };
    bind(&nsswitch, "/etc/nsswitch.conf")?;
    bind(&passwd, "/etc/passwd")?;
    Ok(Setup {
        lib,
        nsswitch,
        passwd,
        host_passwd,
    })
}

/// Rewrites a bind-mounted file in place (a rename would leave the mount on the old inode).
pub(super) fn rewrite(path: &Path, content: &str) -> Result<(), String> {
    std::fs::write(path, content).map_err(|e| format!("{}: {e}", path.display()))
}

fn name(i: usize) -> String {
    format!("bench{i:06}")
}

/// The cache for `n` users, written like the daemon does (temp file, rename), 0644.
pub(super) fn write_cache(n: usize) -> Result<(), String> {
    let mut b = CacheBuilder::new(1000, 0);
    for i in 0..n {
        let uid = FIRST_UID + i as u32;
        b.add_user(UserEntry {
            name: name(i),
            uid,
            gid: uid,
            gecos: format!("Bench User {i}"),
            home: format!("/home/{}", name(i)),
            shell: "/bin/bash".into(),
            groups: vec![],
        });
    }
    let dir = Path::new("/var/lib/guest-agent");
    let tmp = dir.join(".directory.cache.tmp");
    std::fs::write(&tmp, b.build()).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dir.join("directory.cache")).map_err(|e| e.to_string())
}

pub(super) fn passwd_with_users(host: &str, n: usize) -> String {
    let mut s = String::with_capacity(host.len() + n * 64);
    s.push_str(host);
    for i in 0..n {
        let uid = FIRST_UID + i as u32;
        let nm = name(i);
        s.push_str(&format!(
            "{nm}:x:{uid}:{uid}:Bench User {i}:/home/{nm}:/bin/bash\n"
        ));
    }
    s
}

/// Runs `f` in a forked child; returns what it printed (one line of numbers).
pub(super) fn in_child(f: impl FnOnce() -> Result<Vec<f64>, String>) -> Result<Vec<f64>, String> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(os_err("pipe"));
    }
    // SAFETY: this process is single-threaded, so the child may run Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        // SAFETY: the child owns the write end; _exit skips the parent's destructors.
        unsafe {
            libc::close(fds[0]);
            let mut out = std::fs::File::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]));
            let line = match f() {
                Ok(v) => v
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                Err(e) => format!("ERR {e}"),
            };
            let _ = out.write_all(line.as_bytes());
            drop(out);
            libc::_exit(0);
        }
    }
    // SAFETY: the parent owns the read end.
    let mut input = unsafe {
        libc::close(fds[1]);
        std::fs::File::from(std::os::fd::OwnedFd::from_raw_fd(fds[0]))
    };
    let mut text = String::new();
    let _ = input.read_to_string(&mut text);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if let Some(e) = text.strip_prefix("ERR ") {
        return Err(e.to_owned());
    }
    text.split_whitespace()
        .map(|x| {
            x.parse::<f64>()
                .map_err(|e| format!("child said {text:?}: {e}"))
        })
        .collect()
}

/// ns per call of `f(i)`, over at least `min_run`; `f` returns false on a failed lookup.
fn time_per_call(min_run: Duration, mut f: impl FnMut(usize) -> bool) -> Result<f64, String> {
    let mut iters = 16usize;
    loop {
        let t = Instant::now();
        for i in 0..iters {
            if !f(i) {
                return Err(format!("lookup {i} failed"));
            }
        }
        let took = t.elapsed();
        if took >= min_run || iters >= 1 << 26 {
            return Ok(took.as_nanos() as f64 / iters as f64);
        }
        iters *= 2;
    }
}

/// Every user of the directory once, in a random order fixed before timing: a lookup's name is
/// a random one of all `n` (a 4,096-name sample would keep the file's part it touches in the
/// CPU cache, the figure of a warm, repeated name). The names sit back to back in one buffer
/// read in order, so the bench's own reading of them costs no cache miss.
struct Picks {
    /// NUL-terminated names, back to back.
    names: Vec<u8>,
    /// Where each name starts in `names`, and its uid.
    at: Vec<(u32, u32)>,
}

impl Picks {
    /// The `i`-th name (a C string) and uid, cycling.
    fn get(&self, i: usize) -> (*const c_char, u32) {
        let (start, uid) = self.at[i % self.at.len()];
        (self.names[start as usize..].as_ptr().cast(), uid)
    }
}

fn picks(n: usize) -> Result<Picks, String> {
    let mut rng = crate::bench::timer::Rng(0x9E37_79B9_7F4A_7C15 ^ n as u64);
    let mut order: Vec<usize> = (0..n.max(1)).collect();
    for k in (1..order.len()).rev() {
        order.swap(k, rng.below(k + 1));
    }
    let mut names = Vec::with_capacity(order.len() * 16);
    let mut at = Vec::with_capacity(order.len());
    for i in order {
        at.push((names.len() as u32, FIRST_UID + i as u32));
        names.extend_from_slice(cstring(name(i))?.as_bytes_with_nul());
    }
    Ok(Picks { names, at })
}

/// The module called directly: [first call µs, by name ns, by uid ns].
pub(super) fn direct(lib: &Path, n: usize, min_run: Duration) -> Result<Vec<f64>, String> {
    let path = cstring(lib.to_str().unwrap_or_default())?;
    // SAFETY: dlopen/dlsym of our module, whose symbols have the declared signatures.
    let (by_name, by_uid) = unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if h.is_null() {
            return Err(format!("dlopen {}", lib.display()));
        }
        let a = libc::dlsym(h, c"_nss_guestagent_getpwnam_r".as_ptr());
        let b = libc::dlsym(h, c"_nss_guestagent_getpwuid_r".as_ptr());
        if a.is_null() || b.is_null() {
            return Err("dlsym".into());
        }
        (
            std::mem::transmute::<*mut libc::c_void, Lookup>(a),
            std::mem::transmute::<*mut libc::c_void, LookupUid>(b),
        )
    };
    let picks = picks(n)?;
    let mut pw = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as c_char; 1024];
    let mut errno = 0;
    let first = Instant::now();
    // SAFETY: valid pointers for the module's contract.
    let ok = unsafe {
        by_name(
            picks.get(0).0,
            pw.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut errno,
        )
    };
    let first = first.elapsed().as_nanos() as f64 / 1000.0;
    if ok != 1 {
        return Err(format!("first lookup: status {ok}, errno {errno}"));
    }
    let name_ns = time_per_call(min_run, |i| {
        let (nm, _) = picks.get(i);
        // SAFETY: as above.
        unsafe { by_name(nm, pw.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &mut errno) == 1 }
    })?;
    let uid_ns = time_per_call(min_run, |i| {
        let (_, uid) = picks.get(i);
        // SAFETY: as above.
        unsafe {
            by_uid(
                uid,
                pw.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut errno,
            ) == 1
        }
    })?;
    Ok(vec![first, name_ns, uid_ns])
}

/// glibc's getpwnam_r / getpwuid_r with the current nsswitch.conf: [by name ns, by uid ns,
/// unknown name ns].
pub(super) fn through_glibc(n: usize, min_run: Duration) -> Result<Vec<f64>, String> {
    let picks = picks(n)?;
    let mut pw = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as c_char; 1024];
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY (both closures): valid pointers for getpw*_r; success is 0 with a non-null result.
    let name_ns = time_per_call(min_run, |i| unsafe {
        let (nm, _) = picks.get(i);
        libc::getpwnam_r(nm, pw.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &mut res) == 0
            && !res.is_null()
    })?;
    let uid_ns = time_per_call(min_run, |i| unsafe {
        let (_, uid) = picks.get(i);
        libc::getpwuid_r(uid, pw.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &mut res) == 0
            && !res.is_null()
    })?;
    // An unknown name: whatever the status, no entry.
    let miss_ns = time_per_call(min_run, |_| unsafe {
        libc::getpwnam_r(
            c"nosuchuser".as_ptr(),
            pw.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut res,
        );
        res.is_null()
    })?;
    Ok(vec![name_ns, uid_ns, miss_ns])
}

/// The cost of a miss with no daemon (no socket file): ns.
pub(super) fn miss_without_daemon(lib: &Path, min_run: Duration) -> Result<Vec<f64>, String> {
    let path = cstring(lib.to_str().unwrap_or_default())?;
    // SAFETY: as in `direct`.
    let by_name = unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        let a = if h.is_null() {
            std::ptr::null_mut()
        } else {
            libc::dlsym(h, c"_nss_guestagent_getpwnam_r".as_ptr())
        };
        if a.is_null() {
            return Err("dlopen/dlsym".into());
        }
        std::mem::transmute::<*mut libc::c_void, Lookup>(a)
    };
    let mut pw = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as c_char; 1024];
    let mut errno = 0;
    let ns = time_per_call(min_run, |_| {
        // SAFETY: as in `direct`; UNAVAIL (-1) is the expected answer.
        unsafe {
            by_name(
                c"nosuchuser".as_ptr(),
                pw.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut errno,
            ) == -1
        }
    })?;
    Ok(vec![ns])
}
