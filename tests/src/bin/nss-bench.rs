//! nss-bench: what a user lookup costs with the guest-agent NSS module, beside glibc's own
//! `files` module holding the same users.
//!
//! ```text
//! cargo build --release -p guest-agent-nss -p guest-agent-e2e && sudo target/release/nss-bench
//! sudo target/release/nss-bench path/to/libnss_guestagent.so     # another build of the module
//! ```
//!
//! Needs root. At start it moves into a private mount namespace of its own (nothing it mounts
//! or writes is seen by the host) and there: a tmpfs for its files, an overlay on the library
//! directory holding the module as `libnss_guestagent.so.2`, an overlay on /var/lib for the
//! cache file, and bind mounts of its own nsswitch.conf and passwd. For 100, 10,000 and 100,000
//! users it prints, in ns per lookup of a random existing user:
//! - module: `_nss_guestagent_getpwnam_r` / `_getpwuid_r` called directly (dlopen, dlsym), and
//!   the first call of a process (open, mmap and validation of the cache file, in µs);
//! - glibc: `getpwnam_r` / `getpwuid_r` with `passwd: guestagent`, and with `passwd: files
//!   guestagent` over the host's small /etc/passwd (the installed configuration);
//! - files: `getpwnam_r` / `getpwuid_r` with `passwd: files` and the users in /etc/passwd.
//!
//! Each measurement runs in a forked child, so every one starts with a fresh glibc and module.

use std::ffi::{CString, c_char, c_int};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent_wire::cache::{CacheBuilder, UserEntry};

const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";
const SIZES: [usize; 3] = [100, 10_000, 100_000];
const FIRST_UID: u32 = 300_000;
/// Each timed loop runs at least this long.
const MIN_RUN: Duration = Duration::from_millis(300);

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

fn main() {
    if let Err(e) = run() {
        eprintln!("nss-bench: {e}");
        std::process::exit(1);
    }
}

fn cstring(s: impl AsRef<str>) -> Result<CString, String> {
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

/// The library to measure: the argument, or `libnss_guestagent.so` next to this binary.
fn library() -> Result<PathBuf, String> {
    if let Some(arg) = std::env::args().nth(1) {
        return Ok(PathBuf::from(arg));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let lib = exe.with_file_name("libnss_guestagent.so");
    if lib.is_file() {
        Ok(lib)
    } else {
        Err(format!(
            "{} not found: build it (cargo build --release -p guest-agent-nss) or pass its path",
            lib.display()
        ))
    }
}

/// The files the namespace is made of.
struct Setup {
    work: PathBuf,
    lib: PathBuf,
    nsswitch: PathBuf,
    passwd: PathBuf,
    host_passwd: String,
}

/// Enters a private mount namespace and mounts the test world; returns its files.
fn enter_namespace(work: &Path, library: &Path) -> Result<Setup, String> {
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
        work: work.to_owned(),
        lib,
        nsswitch,
        passwd,
        host_passwd,
    })
}

/// Rewrites a bind-mounted file in place (a rename would leave the mount on the old inode).
fn rewrite(path: &Path, content: &str) -> Result<(), String> {
    std::fs::write(path, content).map_err(|e| format!("{}: {e}", path.display()))
}

fn name(i: usize) -> String {
    format!("bench{i:06}")
}

/// The cache for `n` users, written like the daemon does (temp file, rename), 0644.
fn write_cache(n: usize) -> Result<(), String> {
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

fn passwd_with_users(host: &str, n: usize) -> String {
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

/// xorshift64*: random picks without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

/// Runs `f` in a forked child; returns what it printed (one line of numbers).
fn in_child(f: impl FnOnce() -> Result<Vec<f64>, String>) -> Result<Vec<f64>, String> {
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

/// ns per call of `f(i)`, over at least MIN_RUN; `f` returns false on a failed lookup.
fn time_per_call(mut f: impl FnMut(usize) -> bool) -> Result<f64, String> {
    let mut iters = 16usize;
    loop {
        let t = Instant::now();
        for i in 0..iters {
            if !f(i) {
                return Err(format!("lookup {i} failed"));
            }
        }
        let took = t.elapsed();
        if took >= MIN_RUN || iters >= 1 << 26 {
            return Ok(took.as_nanos() as f64 / iters as f64);
        }
        iters *= 2;
    }
}

/// Random existing users: (name, uid), fixed before timing.
fn picks(n: usize) -> Result<Vec<(CString, u32)>, String> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n as u64);
    (0..4096)
        .map(|_| {
            let i = rng.below(n);
            Ok((cstring(name(i))?, FIRST_UID + i as u32))
        })
        .collect()
}

/// The module called directly: [first call µs, by name ns, by uid ns].
fn direct(lib: &Path, n: usize) -> Result<Vec<f64>, String> {
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
            picks[0].0.as_ptr(),
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
    let name_ns = time_per_call(|i| {
        let (nm, _) = &picks[i % picks.len()];
        // SAFETY: as above.
        unsafe {
            by_name(
                nm.as_ptr(),
                pw.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut errno,
            ) == 1
        }
    })?;
    let uid_ns = time_per_call(|i| {
        let (_, uid) = picks[i % picks.len()];
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

/// glibc's getpwnam_r / getpwuid_r with the current nsswitch.conf: [by name ns, by uid ns].
fn through_glibc(n: usize) -> Result<Vec<f64>, String> {
    let picks = picks(n)?;
    let mut pw = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as c_char; 1024];
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY (both closures): valid pointers for getpw*_r; success is 0 with a non-null result.
    let name_ns = time_per_call(|i| unsafe {
        let (nm, _) = &picks[i % picks.len()];
        libc::getpwnam_r(
            nm.as_ptr(),
            pw.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut res,
        ) == 0
            && !res.is_null()
    })?;
    let uid_ns = time_per_call(|i| unsafe {
        let (_, uid) = picks[i % picks.len()];
        libc::getpwuid_r(uid, pw.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &mut res) == 0
            && !res.is_null()
    })?;
    Ok(vec![name_ns, uid_ns])
}

/// The cost of a miss with no daemon (no socket file): ns.
fn miss_without_daemon(lib: &Path) -> Result<Vec<f64>, String> {
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
    let ns = time_per_call(|_| {
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

fn fmt(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn run() -> Result<(), String> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (private mount namespace, overlays); run it with sudo".into());
    }
    if !Path::new(LIB_DIR).is_dir() {
        return Err(format!(
            "{LIB_DIR} missing: this harness expects Debian/Ubuntu on x86_64"
        ));
    }
    let library = library()?;
    let temp = tempfile::Builder::new()
        .prefix("nss-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let result = bench(temp.path(), &library);
    // The mounts vanish with the namespace; unmount the tmpfs so the temp dir can go now.
    if let Ok(w) = cstring(temp.path().to_str().unwrap_or_default()) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(w.as_ptr(), libc::MNT_DETACH) };
    }
    result
}

fn bench(work: &Path, library: &Path) -> Result<(), String> {
    let s = enter_namespace(work, library)?;
    println!(
        "nss-bench: {} (in a private mount namespace under {})",
        library.display(),
        s.work.display()
    );
    if Path::new(guest_agent_wire::proto::SOCKET_PATH).exists() {
        println!(
            "note: {} exists; the miss row measures a live daemon",
            guest_agent_wire::proto::SOCKET_PATH
        );
    }
    println!();
    println!(
        "{:>7} | {:>10} | {:>8} {:>8} | {:>8} {:>8} | {:>8} {:>8} | {:>9} {:>9}",
        "users", "load us", "module", "", "glibc+gu", "", "files+gu", "", "files", ""
    );
    println!(
        "{:>7} | {:>10} | {:>8} {:>8} | {:>8} {:>8} | {:>8} {:>8} | {:>9} {:>9}",
        "",
        "(1st call)",
        "name ns",
        "uid ns",
        "name ns",
        "uid ns",
        "name ns",
        "uid ns",
        "name ns",
        "uid ns"
    );
    println!("{}", "-".repeat(105));
    for n in SIZES {
        write_cache(n)?;
        rewrite(&s.passwd, &s.host_passwd)?;
        let d = in_child(|| direct(&s.lib, n))?;
        rewrite(&s.nsswitch, "passwd: guestagent\ngroup: guestagent\n")?;
        let g = in_child(|| through_glibc(n))?;
        rewrite(
            &s.nsswitch,
            "passwd: files guestagent\ngroup: files guestagent\n",
        )?;
        let fg = in_child(|| through_glibc(n))?;
        rewrite(&s.passwd, &passwd_with_users(&s.host_passwd, n))?;
        rewrite(&s.nsswitch, "passwd: files\ngroup: files\n")?;
        let f = in_child(|| through_glibc(n))?;
        let v = |x: &[f64], i: usize| x.get(i).copied().map(fmt).unwrap_or_default();
        println!(
            "{:>7} | {:>10} | {:>8} {:>8} | {:>8} {:>8} | {:>8} {:>8} | {:>9} {:>9}",
            n,
            v(&d, 0),
            v(&d, 1),
            v(&d, 2),
            v(&g, 0),
            v(&g, 1),
            v(&fg, 0),
            v(&fg, 1),
            v(&f, 0),
            v(&f, 1)
        );
    }
    let miss = in_child(|| miss_without_daemon(&s.lib))?;
    println!();
    println!(
        "module miss with no daemon (no socket: UNAVAIL at once): {} ns",
        miss.first().copied().map(fmt).unwrap_or_default()
    );
    println!(
        "module = _nss_guestagent_getpw*_r called directly; glibc+gu = getpw*_r with `passwd: guestagent`;\n\
         files+gu = `passwd: files guestagent` over the host's /etc/passwd; files = `passwd: files` with the\n\
         users in /etc/passwd. Random existing users; each column in a fresh process."
    );
    Ok(())
}
