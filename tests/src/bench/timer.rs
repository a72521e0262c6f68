//! Timers that run inside the VM: the benchmark binary itself, started there through
//! `nsenter` with one of the arguments below, times programs from spawn to exit (so the
//! figures hold neither nsenter nor the timer's own start), fires many at once, or times NSS
//! lookups through glibc as any process in the VM makes them. The host side of each is a
//! function here that starts it and reads back what it printed.
//!
//! Every binary that uses these calls [`dispatch`] first thing in `main`.

use std::ffi::{CString, c_char};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Stats;
use crate::vm::Vm;

/// Handles the in-VM modes (`--time-one`, `--time-runs`, `--burst`, `--time-at`,
/// `--lookups`, `--get`); `None` when `args` (without the program name) asks for none of them.
pub fn dispatch(args: &[String]) -> Option<i32> {
    let (mode, rest) = args.split_first()?;
    Some(match mode.as_str() {
        "--time-one" => time_one(rest),
        "--time-runs" => time_runs(rest),
        "--burst" => burst(rest),
        "--time-at" => time_at(rest),
        "--lookups" => lookups(rest),
        "--get" => get(rest),
        _ => return None,
    })
}

/// This binary as another process can start it, even after a rebuild replaced the file:
/// `/proc/PID/exe` of this process (the running image, not the path).
pub fn own_exe() -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/{}/exe", std::process::id()))
}

/// CLOCK_MONOTONIC in ns: the same clock in every process of the machine.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------------------------------
// In the VM.

/// `--time-one PROG ARGS...`: runs PROG once, prints "NANOSECONDS EXIT_CODE".
fn time_one(argv: &[String]) -> i32 {
    let Some((prog, args)) = argv.split_first() else {
        return 2;
    };
    let t = Instant::now();
    let status = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let took = t.elapsed().as_nanos();
    match status {
        Ok(s) => {
            println!("{took} {}", s.code().unwrap_or(-1));
            0
        }
        Err(e) => {
            eprintln!("{prog}: {e}");
            1
        }
    }
}

/// `--time-runs N same|fresh PROG ARGS...`: N timed runs, one "NANOSECONDS EXIT_CODE" line
/// each. `same`: every run is a child of this process (one SSH connection to the daemon,
/// which tells connections apart by the helper's parent); `fresh`: each run is a child of a
/// new `--time-one` process (a new connection each run, as for the first run of a login).
/// `{i}` in ARGS is replaced by the run's number (0, 1, ...): with a prefix of the caller's, a
/// name asked for the first time in every run.
fn time_runs(argv: &[String]) -> i32 {
    let (Some(n), Some(mode), Some(rest)) = (
        argv.first().and_then(|n| n.parse::<usize>().ok()),
        argv.get(1),
        argv.get(2..),
    ) else {
        eprintln!("usage: --time-runs N same|fresh PROG ARGS...");
        return 2;
    };
    let exe = own_exe();
    for i in 0..n {
        let run: Vec<String> = rest
            .iter()
            .map(|a| a.replace("{i}", &i.to_string()))
            .collect();
        let rest = &run[..];
        if mode == "fresh" {
            match Command::new(&exe).arg("--time-one").args(rest).output() {
                Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
                Ok(o) => {
                    eprint!("{}", String::from_utf8_lossy(&o.stderr));
                    return 1;
                }
                Err(e) => {
                    eprintln!("{}: {e}", exe.display());
                    return 1;
                }
            }
        } else if time_one(rest) != 0 {
            return 1;
        }
    }
    0
}

/// `--time-at AT_NS EXPECT PROG ARGS...`: waits until CLOCK_MONOTONIC reaches AT_NS, runs
/// PROG, prints "NANOSECONDS EXIT_CODE MATCHING_LINES LINES LATE_NS\tSTDERR": the run's wall
/// time, how many lines of its stdout contain EXPECT, how many it printed, how late it
/// started, and the first line of its stderr.
fn time_at(argv: &[String]) -> i32 {
    let (Some(at), Some(expect), Some((prog, args))) = (
        argv.first().and_then(|n| n.parse::<u64>().ok()),
        argv.get(1),
        argv.get(2..).and_then(|r| r.split_first()),
    ) else {
        eprintln!("usage: --time-at AT_NS EXPECT PROG ARGS...");
        return 2;
    };
    let now = monotonic_ns();
    if now < at {
        std::thread::sleep(Duration::from_nanos(at - now));
    }
    let late = monotonic_ns().saturating_sub(at);
    let t = Instant::now();
    let child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return 1;
        }
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
    let took = t.elapsed().as_nanos();
    let said = err.lines().next().unwrap_or_default().replace('\t', " ");
    let matching = out
        .lines()
        .filter(|l| !expect.is_empty() && l.contains(expect.as_str()))
        .count();
    println!(
        "{took} {code} {matching} {} {late}\t{said}",
        out.lines().count()
    );
    0
}

/// `--burst DELAY_MS EXPECT ITEMS PROG ARGS...`: for each comma-separated item, a
/// `--time-at` process (a parent of its own: a connection of its own to the daemon) running
/// PROG with `{}` in ARGS replaced by the item, all released at the same instant DELAY_MS
/// from now; prints each one's line, in the order of the items.
fn burst(argv: &[String]) -> i32 {
    let (Some(delay), Some(expect), Some(items), Some((prog, args))) = (
        argv.first().and_then(|n| n.parse::<u64>().ok()),
        argv.get(1),
        argv.get(2),
        argv.get(3..).and_then(|r| r.split_first()),
    ) else {
        eprintln!("usage: --burst DELAY_MS EXPECT ITEMS PROG ARGS...");
        return 2;
    };
    let exe = own_exe();
    let at = monotonic_ns() + delay * 1_000_000;
    let mut children = Vec::new();
    for item in items.split(',') {
        let spawned = Command::new(&exe)
            .arg("--time-at")
            .arg(at.to_string())
            .arg(expect)
            .arg(prog)
            .args(args.iter().map(|a| a.replace("{}", item)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn();
        match spawned {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("{}: {e}", exe.display());
                return 1;
            }
        }
    }
    let mut code = 0;
    for c in children {
        match c.wait_with_output() {
            Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
            _ => {
                println!("0 -1 0 0 0\t(the timer failed)");
                code = 1;
            }
        }
    }
    code
}

/// xorshift64*: random picks without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

/// The name of user `i` of a numbered directory: `PREFIX` and six digits.
pub fn numbered(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:06}")
}

/// One lookup through glibc: Some(found) or None when the call failed.
fn getpw(name: Option<&CString>, uid: u32, buf: &mut [c_char]) -> bool {
    let mut pw = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid pointers for getpw*_r; success is 0 with a non-null result.
    let r = unsafe {
        match name {
            Some(n) => libc::getpwnam_r(
                n.as_ptr(),
                pw.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut res,
            ),
            None => libc::getpwuid_r(uid, pw.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &mut res),
        }
    };
    r == 0 && !res.is_null()
}

/// Times `count` lookups (`pick(i)`: a name, or None and a uid), printing `KEY NS...`; false
/// (with a message) when one is found or not against `want`.
fn timed_series(
    key: &str,
    count: usize,
    want: bool,
    buf: &mut [c_char],
    pick: &mut dyn FnMut(usize) -> (Option<CString>, u32),
) -> bool {
    let mut line = key.to_owned();
    for i in 0..count {
        let (name, uid) = pick(i);
        let t = Instant::now();
        let found = getpw(name.as_ref(), uid, buf);
        let took = t.elapsed().as_nanos();
        if found != want {
            eprintln!("{key}: lookup of {name:?}/{uid}: found {found}, wanted {want}");
            return false;
        }
        line.push_str(&format!(" {took}"));
    }
    println!("{line}");
    true
}

/// `--lookups N USERS FIRST_UID PREFIX`: glibc lookups in this process, each timed; prints
/// lines `KEY NS...`: `first` (the process's first lookup: nsswitch.conf, the module, the
/// cache file), `name` and `uid` (N random existing users each), `miss` (one unknown name
/// asked N/10 times), `newmiss` (20 names never asked before, each once), `direct` (20 more
/// such names asked of the metadata service straight from this process, see [`timed_get`]).
fn lookups(argv: &[String]) -> i32 {
    let (Some(n), Some(users), Some(first_uid), Some(prefix)) = (
        argv.first().and_then(|v| v.parse::<usize>().ok()),
        argv.get(1).and_then(|v| v.parse::<usize>().ok()),
        argv.get(2).and_then(|v| v.parse::<u32>().ok()),
        argv.get(3),
    ) else {
        eprintln!("usage: --lookups N USERS FIRST_UID PREFIX");
        return 2;
    };
    let mut buf = vec![0 as c_char; 4096];
    let stamp = monotonic_ns();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ stamp);
    let picks: Vec<usize> = (0..n).map(|_| rng.below(users)).collect();
    let cname = |s: String| CString::new(s).ok();
    let ok = timed_series("first", 1, true, &mut buf, &mut |_| {
        (cname(numbered(prefix, 0)), 0)
    }) && timed_series("name", n, true, &mut buf, &mut |i| {
        (cname(numbered(prefix, picks[i])), 0)
    }) && timed_series("uid", n, true, &mut buf, &mut |i| {
        (None, first_uid + picks[i] as u32)
    }) && timed_series("miss", (n / 10).max(10), false, &mut buf, &mut |_| {
        (cname("nosuchbenchuser".into()), 0)
    }) && timed_series("newmiss", 20, false, &mut buf, &mut |i| {
        (cname(format!("nobody{stamp}x{i}")), 0)
    }) && direct_series(&format!("direct{stamp}x"));
    if ok { 0 } else { 1 }
}

/// `direct`: 20 unknown names asked of the metadata service the way guest-oslogin's NSS module
/// asks it for every lookup (a new TCP connection from the looking-up process, one GET of
/// `oslogin/users?username=`, the answer read to its end): the service's own cost of an
/// unknown name from this process, with no daemon in between.
fn direct_series(prefix: &str) -> bool {
    let mut line = "direct".to_owned();
    for i in 0..20 {
        match timed_get(&format!("oslogin/users?username={prefix}{i}")) {
            Some((status, took)) if status == "404" => line.push_str(&format!(" {took}")),
            other => {
                eprintln!("direct: GET of an unknown name answered {other:?}, wanted 404");
                return false;
            }
        }
    }
    println!("{line}");
    true
}

/// `--get N PATH...`: N GETs of each `PATH` (under `/computeMetadata/v1/`, query included),
/// each on a new connection, timed; prints `STATUS NS...` per path, in order.
fn get(argv: &[String]) -> i32 {
    let Some((n, paths)) = argv
        .split_first()
        .and_then(|(n, p)| Some((n.parse::<usize>().ok()?, p)))
    else {
        eprintln!("usage: --get N PATH...");
        return 2;
    };
    for path in paths {
        let mut status = String::new();
        let mut times = String::new();
        for _ in 0..n {
            let Some((s, took)) = timed_get(path) else {
                eprintln!("GET {path}: no answer");
                return 1;
            };
            times.push_str(&format!(" {took}"));
            status = s;
        }
        println!("{status}{times}");
    }
    0
}

/// The service's own time for each of `paths` ([`get`]): `n` GETs each, on new connections
/// from inside the VM; (status, times) per path.
pub fn get_in_vm(vm: &Vm, n: usize, paths: &[String]) -> Result<Vec<(u16, Stats)>, String> {
    let mut argv = vec!["--get".to_owned(), n.to_string()];
    argv.extend(paths.iter().cloned());
    let text = run_self(vm, &argv)?;
    let out: Vec<(u16, Stats)> = text
        .lines()
        .map(|line| {
            let v: Vec<u64> = numbers(line)?;
            let (status, times) = v.split_first().ok_or("--get printed nothing")?;
            Ok((
                *status as u16,
                Stats::new(times.iter().map(|&t| Duration::from_nanos(t)).collect()),
            ))
        })
        .collect::<Result<_, String>>()?;
    if out.len() != paths.len() {
        return Err(format!(
            "--get: {} answers for {} paths",
            out.len(),
            paths.len()
        ));
    }
    Ok(out)
}

/// One GET of `/computeMetadata/v1/PATH` on a new connection to the metadata service, read to
/// its end; its status and the ns it took, from the connect on.
fn timed_get(path: &str) -> Option<(String, u128)> {
    use std::io::Write;
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("169.254.169.254", 80)).ok()?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "GET /computeMetadata/v1/{path} HTTP/1.1\r\n\
         Host: 169.254.169.254\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    let took = t.elapsed().as_nanos();
    let text = String::from_utf8_lossy(&answer);
    Some((text.split_whitespace().nth(1)?.to_owned(), took))
}

// ---------------------------------------------------------------------------------------
// On the host: start the above in the VM and read what it printed.

/// Runs this binary inside `vm` with `args`; its stdout, or an error with its stderr.
fn run_self(vm: &Vm, args: &[String]) -> Result<String, String> {
    let out = vm
        .command(&own_exe().to_string_lossy())
        .args(args)
        .output()
        .map_err(|e| format!("timer in the VM: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "timer in the VM ({}): {}: {}",
            args.first().map_or("", String::as_str),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn numbers<T: std::str::FromStr>(line: &str) -> Result<Vec<T>, String> {
    line.split_whitespace()
        .map(|x| x.parse().map_err(|_| format!("timer printed {line:?}")))
        .collect()
}

/// `n` runs of `prog args` timed inside the VM (see [`time_runs`]): the times and the exit
/// codes.
pub fn time_in_vm(
    vm: &Vm,
    n: usize,
    fresh: bool,
    prog: &str,
    args: &[&str],
) -> Result<(Vec<Duration>, Vec<i32>), String> {
    let mut argv = vec![
        "--time-runs".to_owned(),
        n.to_string(),
        if fresh { "fresh" } else { "same" }.to_owned(),
        prog.to_owned(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let text = run_self(vm, &argv)?;
    let mut times = Vec::new();
    let mut codes = Vec::new();
    for line in text.lines() {
        let v: Vec<i64> = numbers(line)?;
        let (Some(&ns), Some(&code)) = (v.first(), v.get(1)) else {
            return Err(format!("timer in the VM printed {line:?}"));
        };
        times.push(Duration::from_nanos(ns as u64));
        codes.push(code as i32);
    }
    if times.len() != n {
        return Err(format!(
            "timer in the VM ({prog}): {} runs of {n}",
            times.len()
        ));
    }
    Ok((times, codes))
}

/// One run of a burst.
#[derive(Debug, Clone)]
pub struct BurstRun {
    pub took: Duration,
    pub code: i32,
    /// Lines of its stdout that held the expected text.
    pub matching: usize,
    pub lines: usize,
    /// How late it started after the common instant.
    pub late: Duration,
    /// The first line of its stderr.
    pub said: String,
}

/// Runs `prog args` (with `{}` replaced by each item) once per item, all released at the same
/// instant inside the VM, each from a parent of its own (see [`burst`]).
pub fn burst_in_vm(
    vm: &Vm,
    delay: Duration,
    expect: &str,
    items: &[String],
    prog: &str,
    args: &[&str],
) -> Result<Vec<BurstRun>, String> {
    let mut argv = vec![
        "--burst".to_owned(),
        delay.as_millis().to_string(),
        expect.to_owned(),
        items.join(","),
        prog.to_owned(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let text = run_self(vm, &argv)?;
    let runs: Vec<BurstRun> = text
        .lines()
        .map(|l| {
            let (figures, said) = l.split_once('\t').unwrap_or((l, ""));
            let v: Vec<i64> = numbers(figures)?;
            match v[..] {
                [ns, code, matching, lines, late] => Ok(BurstRun {
                    took: Duration::from_nanos(ns.max(0) as u64),
                    code: code as i32,
                    matching: matching.max(0) as usize,
                    lines: lines.max(0) as usize,
                    late: Duration::from_nanos(late.max(0) as u64),
                    said: said.to_owned(),
                }),
                _ => Err(format!("burst printed {l:?}")),
            }
        })
        .collect::<Result<_, String>>()?;
    if runs.len() != items.len() {
        return Err(format!("burst: {} runs of {}", runs.len(), items.len()));
    }
    Ok(runs)
}

/// Lookups through glibc inside the VM (see [`lookups`]).
#[derive(Debug, Clone, Default)]
pub struct Lookups {
    pub first: Duration,
    pub by_name: Stats,
    pub by_uid: Stats,
    pub miss: Stats,
    pub new_miss: Stats,
    /// Unknown names asked of the service directly, on a new connection each.
    pub direct: Stats,
}

/// `n` random lookups by name and by uid of the users `PREFIX000000`.. (`users` of them, uids
/// from `first_uid`), and misses, through glibc in a process inside the VM.
pub fn lookups_in_vm(
    vm: &Vm,
    n: usize,
    users: usize,
    first_uid: u32,
    prefix: &str,
) -> Result<Lookups, String> {
    let argv = [
        "--lookups".to_owned(),
        n.to_string(),
        users.to_string(),
        first_uid.to_string(),
        prefix.to_owned(),
    ];
    let text = run_self(vm, &argv)?;
    let mut l = Lookups::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(' ') else {
            continue;
        };
        let v: Vec<u64> = numbers(rest)?;
        let s = Stats::new(v.into_iter().map(Duration::from_nanos).collect());
        match key {
            "first" => l.first = s.max(),
            "name" => l.by_name = s,
            "uid" => l.by_uid = s,
            "miss" => l.miss = s,
            "newmiss" => l.new_miss = s,
            "direct" => l.direct = s,
            _ => {}
        }
    }
    Ok(l)
}
