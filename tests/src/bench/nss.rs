//! What a user lookup costs with the guest-agent NSS module, beside glibc's own `files`
//! module holding the same users (`nss-bench` prints it alone, `bench-report` in its table).
//!
//! [`run`] needs root and a single-threaded process: it moves the calling process into a
//! private mount namespace of its own (nothing it mounts or writes is seen by the host) and
//! there: a tmpfs for its files, an overlay on the library directory holding the module as
//! `libnss_guestagent.so.2`, an overlay on /var/lib for the cache file, and bind mounts of its
//! own nsswitch.conf and passwd. For each number of users it measures, in ns per lookup of a
//! random existing user:
//! - module: `_nss_guestagent_getpwnam_r` / `_getpwuid_r` called directly (dlopen, dlsym), and
//!   the first call of a process (open, mmap and validation of the cache file, in µs);
//! - glibc: `getpwnam_r` / `getpwuid_r` with `passwd: guestagent`, and with `passwd: files
//!   guestagent` over the host's small /etc/passwd (the installed configuration);
//! - files: `getpwnam_r` / `getpwuid_r` with `passwd: files` and the users in /etc/passwd;
//! - and for each, an unknown name (no daemon here: the module answers UNAVAIL at once).
//!
//! Each measurement runs in a forked child, so every one starts with a fresh glibc and module.
//! [`run_in_subprocess`] runs it in a new process of the calling binary (which must call
//! [`dispatch`] first in `main`), for callers that have threads or must keep their namespace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Row, row};

mod lookups;

use lookups::{
    LIB_DIR, cstring, direct, enter_namespace, in_child, miss_without_daemon, passwd_with_users,
    rewrite, through_glibc, write_cache,
};

/// The figures for one number of users (ns per lookup unless said otherwise).
#[derive(Debug, Clone, Default)]
pub struct NssSize {
    pub users: usize,
    /// The module's first call in a process (open, mmap, validate the cache), µs.
    pub first_call_us: f64,
    /// `_nss_guestagent_getpw*_r` called directly.
    pub module_name: f64,
    pub module_uid: f64,
    /// getpw*_r with `passwd: guestagent`: by name, by uid, unknown name.
    pub glibc: [f64; 3],
    /// getpw*_r with `passwd: files guestagent` over the host's /etc/passwd.
    pub files_gu: [f64; 3],
    /// getpw*_r with `passwd: files` and the same users in /etc/passwd.
    pub files: [f64; 3],
}

/// What [`run`] measured.
#[derive(Debug, Clone, Default)]
pub struct NssResult {
    pub library: String,
    pub sizes: Vec<NssSize>,
    /// The module's miss with no daemon (no socket: UNAVAIL at once), ns.
    pub miss_no_daemon: f64,
    /// The daemon's socket existed (the miss figure then measures a live daemon).
    pub live_daemon: bool,
}

impl NssSize {
    fn to_json(&self) -> Value {
        json!([
            self.users,
            self.first_call_us,
            self.module_name,
            self.module_uid,
            self.glibc,
            self.files_gu,
            self.files
        ])
    }

    fn from_json(v: &Value) -> Option<NssSize> {
        let f = |i: usize| v.get(i)?.as_f64();
        let three = |i: usize| -> Option<[f64; 3]> {
            let a = v.get(i)?.as_array()?;
            Some([
                a.first()?.as_f64()?,
                a.get(1)?.as_f64()?,
                a.get(2)?.as_f64()?,
            ])
        };
        Some(NssSize {
            users: v.get(0)?.as_u64()? as usize,
            first_call_us: f(1)?,
            module_name: f(2)?,
            module_uid: f(3)?,
            glibc: three(4)?,
            files_gu: three(5)?,
            files: three(6)?,
        })
    }
}

impl NssResult {
    pub fn to_json(&self) -> Value {
        json!({"library": self.library, "miss_no_daemon": self.miss_no_daemon,
               "live_daemon": self.live_daemon,
               "sizes": self.sizes.iter().map(NssSize::to_json).collect::<Vec<_>>()})
    }

    pub fn from_json(v: &Value) -> Option<NssResult> {
        Some(NssResult {
            library: v["library"].as_str()?.to_owned(),
            miss_no_daemon: v["miss_no_daemon"].as_f64()?,
            live_daemon: v["live_daemon"].as_bool()?,
            sizes: v["sizes"]
                .as_array()?
                .iter()
                .map(NssSize::from_json)
                .collect::<Option<_>>()?,
        })
    }
}

/// Handles `--nss-json LIBRARY SIZES MIN_RUN_MS` (what [`run_in_subprocess`] starts): runs
/// [`run`] and prints its result as JSON. `None` for any other arguments.
pub fn dispatch(args: &[String]) -> Option<i32> {
    if args.first().map(String::as_str) != Some("--nss-json") {
        return None;
    }
    let parsed = (|| {
        let lib = PathBuf::from(args.get(1)?);
        let sizes = args
            .get(2)?
            .split(',')
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<usize>>>()?;
        let min_run = Duration::from_millis(args.get(3)?.parse().ok()?);
        Some((lib, sizes, min_run))
    })();
    let Some((lib, sizes, min_run)) = parsed else {
        eprintln!("usage: --nss-json LIBRARY SIZES MIN_RUN_MS");
        return Some(2);
    };
    Some(match run(&lib, &sizes, min_run) {
        Ok(r) => {
            println!("{}", r.to_json());
            0
        }
        Err(e) => {
            eprintln!("nss: {e}");
            1
        }
    })
}

/// [`run`] in a new process of this binary (which handles [`dispatch`]).
pub fn run_in_subprocess(
    library: &Path,
    sizes: &[usize],
    min_run: Duration,
) -> Result<NssResult, String> {
    let exe = super::timer::own_exe();
    let sizes: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
    let out = std::process::Command::new(exe)
        .arg("--nss-json")
        .arg(library)
        .arg(sizes.join(","))
        .arg(min_run.as_millis().to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("nss measurement: {e}"))?;
    if !out.status.success() {
        return Err(format!("nss measurement: {}", out.status));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("nss JSON: {e}"))?;
    NssResult::from_json(&v).ok_or_else(|| format!("nss JSON: {v}"))
}

/// Measures (see the module's documentation). Root; call it in a single-threaded process
/// (it moves that process into a private mount namespace).
pub fn run(library: &Path, sizes: &[usize], min_run: Duration) -> Result<NssResult, String> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (private mount namespace, overlays); run it with sudo".into());
    }
    if !Path::new(LIB_DIR).is_dir() {
        return Err(format!(
            "{LIB_DIR} missing: this harness expects Debian/Ubuntu on x86_64"
        ));
    }
    let temp = tempfile::Builder::new()
        .prefix("nss-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let result = measure(temp.path(), library, sizes, min_run);
    // The mounts vanish with the namespace; unmount the tmpfs so the temp dir can go now.
    if let Ok(w) = cstring(temp.path().to_str().unwrap_or_default()) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(w.as_ptr(), libc::MNT_DETACH) };
    }
    result
}

fn measure(
    work: &Path,
    library: &Path,
    sizes: &[usize],
    min_run: Duration,
) -> Result<NssResult, String> {
    let s = enter_namespace(work, library)?;
    let mut result = NssResult {
        library: library.display().to_string(),
        live_daemon: Path::new(guest_agent_wire::proto::SOCKET_PATH).exists(),
        ..Default::default()
    };
    let three = |v: Vec<f64>| [0, 1, 2].map(|i| v.get(i).copied().unwrap_or(f64::NAN));
    for &n in sizes {
        write_cache(n)?;
        rewrite(&s.passwd, &s.host_passwd)?;
        let d = in_child(|| direct(&s.lib, n, min_run))?;
        rewrite(&s.nsswitch, "passwd: guestagent\ngroup: guestagent\n")?;
        let g = in_child(|| through_glibc(n, min_run))?;
        rewrite(
            &s.nsswitch,
            "passwd: files guestagent\ngroup: files guestagent\n",
        )?;
        let fg = in_child(|| through_glibc(n, min_run))?;
        rewrite(&s.passwd, &passwd_with_users(&s.host_passwd, n))?;
        rewrite(&s.nsswitch, "passwd: files\ngroup: files\n")?;
        let f = in_child(|| through_glibc(n, min_run))?;
        let v = |x: &[f64], i: usize| x.get(i).copied().unwrap_or(f64::NAN);
        result.sizes.push(NssSize {
            users: n,
            first_call_us: v(&d, 0),
            module_name: v(&d, 1),
            module_uid: v(&d, 2),
            glibc: three(g),
            files_gu: three(fg),
            files: three(f),
        });
    }
    let miss = in_child(|| miss_without_daemon(&s.lib, min_run))?;
    result.miss_no_daemon = miss.first().copied().unwrap_or(f64::NAN);
    Ok(result)
}

/// A number of ns with three significant digits or so.
fn fmt(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// ns as µs (`0.14 µs`, `3.8 ms` from 1 ms up).
fn us(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{} ms", fmt(ns / 1e6))
    } else {
        format!("{} µs", fmt(ns / 1e3))
    }
}

/// `100,000`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The wide table `nss-bench` prints.
pub fn print(r: &NssResult) {
    println!("nss-bench: {} (in a private mount namespace)", r.library);
    if r.live_daemon {
        println!(
            "note: {} exists; the miss figures measure a live daemon",
            guest_agent_wire::proto::SOCKET_PATH
        );
    }
    println!();
    println!(
        "{:>7} | {:>10} | {:<17} | {:<26} | {:<26} | {:<29}",
        "users", "load us", "module", "glibc+gu", "files+gu", "files"
    );
    println!(
        "{:>7} | {:>10} | {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>9} {:>9} {:>9}",
        "",
        "(1st call)",
        "name ns",
        "uid ns",
        "name ns",
        "uid ns",
        "miss ns",
        "name ns",
        "uid ns",
        "miss ns",
        "name ns",
        "uid ns",
        "miss ns"
    );
    println!("{}", "-".repeat(136));
    for s in &r.sizes {
        println!(
            "{:>7} | {:>10} | {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>9} {:>9} {:>9}",
            s.users,
            fmt(s.first_call_us),
            fmt(s.module_name),
            fmt(s.module_uid),
            fmt(s.glibc[0]),
            fmt(s.glibc[1]),
            fmt(s.glibc[2]),
            fmt(s.files_gu[0]),
            fmt(s.files_gu[1]),
            fmt(s.files_gu[2]),
            fmt(s.files[0]),
            fmt(s.files[1]),
            fmt(s.files[2])
        );
    }
    println!();
    println!(
        "module miss with no daemon (no socket: UNAVAIL at once): {} ns",
        fmt(r.miss_no_daemon)
    );
    println!(
        "module = _nss_guestagent_getpw*_r called directly; glibc+gu = getpw*_r with `passwd: guestagent`;\n\
         files+gu = `passwd: files guestagent` over the host's /etc/passwd; files = `passwd: files` with the\n\
         users in /etc/passwd. Random existing users; each column in a fresh process."
    );
}

/// guest-oslogin's NSS module, cache hit by name, measured side by side on this kind of
/// machine (issue 15): (users, µs).
const INCUMBENT_HIT_US: [(usize, f64); 2] = [(1_000, 21.5), (100_000, 70.2)];
/// The goal for the module's own cost of a hit at the largest size, ns.
const GOAL_HIT_NS: f64 = 300.0;

/// The report's rows: the module's own cost against the goal, and glibc's view of it beside
/// glibc's `files` with the same users (ratios from this run).
pub fn rows(r: &NssResult) -> Vec<Row> {
    let mut rows = Vec::new();
    let (Some(small), Some(big)) = (r.sizes.first(), r.sizes.last()) else {
        return rows;
    };
    // The goal: at most 0.3 µs at the largest size, random names over every user.
    let flat = big.module_name <= GOAL_HIT_NS && big.module_uid <= GOAL_HIT_NS;
    let per_size: Vec<String> = r
        .sizes
        .iter()
        .map(|s| {
            let ratio = INCUMBENT_HIT_US
                .iter()
                .find(|(n, _)| *n == s.users)
                .map(|(_, inc)| format!(" ({:.0}x)", inc * 1000.0 / s.module_name))
                .unwrap_or_default();
            format!(
                "{} / {} at {}{ratio}",
                us(s.module_name),
                us(s.module_uid),
                thousands(s.users)
            )
        })
        .collect();
    let incumbent: Vec<String> = INCUMBENT_HIT_US
        .iter()
        .map(|(n, v)| format!("{v} µs at {}", thousands(*n)))
        .collect();
    rows.push(
        row(
            "NSS lookup, cached hit: the module's own cost, by name / uid, random names of all \
             the users (ratio to guest-oslogin by name)",
            per_size.join("; "),
            format!("guest-oslogin {} (issue 15)", incumbent.join(", ")),
            format!(
                "≤ {} µs at {} users",
                GOAL_HIT_NS / 1000.0,
                thousands(big.users)
            ),
        )
        .judged(flat),
    );
    let n = thousands(big.users);
    rows.push(row(
        format!("  getpw*_r through glibc, {n} users, by name / uid"),
        format!(
            "`passwd: guestagent` {} / {}, `files guestagent` {} / {}; glibc `files` with the \
             same users {} / {} ({:.0}x / {:.0}x `guestagent`)",
            us(big.glibc[0]),
            us(big.glibc[1]),
            us(big.files_gu[0]),
            us(big.files_gu[1]),
            us(big.files[0]),
            us(big.files[1]),
            big.files[0] / big.glibc[0],
            big.files[1] / big.glibc[1],
        ),
        "",
        "",
    ));
    rows.push(row(
        format!("  getpw*_r, unknown name, {n} users (module: no daemon here)"),
        format!(
            "`files guestagent` {} (the module alone {}); glibc `files` with the same users {}",
            us(big.files_gu[2]),
            us(r.miss_no_daemon),
            us(big.files[2]),
        ),
        "",
        "",
    ));
    rows.push(row(
        "  first lookup of a process (open, mmap, check the cache)",
        format!(
            "{} at {}, {} at {}",
            us(small.first_call_us * 1000.0),
            thousands(small.users),
            us(big.first_call_us * 1000.0),
            n
        ),
        "",
        "",
    ));
    rows
}

/// The library to measure: `arg`, or `libnss_guestagent.so` next to this binary.
pub fn library(arg: Option<&str>) -> Result<PathBuf, String> {
    if let Some(arg) = arg {
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
