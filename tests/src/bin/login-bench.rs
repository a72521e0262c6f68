//! login-bench: what an OS Login SSH login costs with guest-agent, end to end, beside the
//! incumbent's figures (Google's guest-agent / guest-oslogin) and our goals.
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/login-bench
//! ```
//!
//! Needs root (network and mount namespaces, a real sshd). It finds `guest-agent`,
//! `mds-emulator` and `libnss_guestagent.so` next to itself (`target/<profile>/`), starts one
//! OS Login "VM" of the end-to-end harness (emulator with OS Login users, the agent in a private
//! mount namespace, the NSS module through glibc, a real sshd) and prints one table, measured
//! in this one run:
//!
//! 1. AuthorizedKeysCommand: `/srv/guest-agent authorized-keys USER SHA256:...` run inside the
//!    VM as sshd runs it, 100 times; median and p99 of each run's own wall time, timed inside
//!    the VM by this binary (started there through `nsenter`, `--time-runs`), so nsenter's
//!    cost is not in the figures; it is shown on a row of its own (`nsenter ... /bin/true`).
//!    For alice from a new SSH connection each run (the daemon asks the service, as for the
//!    first run of every login), from the same connection (sshd's second run: the decision is
//!    shared), and for an unknown user.
//! 2. Full `ssh alice@127.0.0.1 true` wall time (median of 20) for an OS Login user, beside a
//!    local user made with `useradd -m -p '*'` in the VM with `~/.ssh/authorized_keys`.
//! 3. Metadata requests under `/computeMetadata/v1/oslogin/` per login: warm (user in the
//!    directory), cold (user created in the emulator after the agent's sync), local user.
//! 4. With the service hanging (a `hang` fault on the OS Login endpoints): `getent passwd
//!    alice` (in the cache), `getent passwd nosuchuser`, and how long until alice's SSH login
//!    is refused.
//!
//! It takes about a minute. Everything it starts is stopped and deleted before it exits: the
//! harness's Drop impls do that, and because release builds abort on panic (no Drop), the
//! measuring runs in a child process while this one, a child subreaper, kills by PID whatever
//! that child left behind and deletes its network namespaces and temporary directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest_agent_e2e::bench::{Bench, Row, fmt_d, print_table, row};
use guest_agent_e2e::emulator::Emulator;
use guest_agent_e2e::oslogin::{OsLoginVm, keypair, user};
use guest_agent_e2e::vm::AGENT;
use serde_json::json;

/// Set (to a file to record the temporary directory in) in the measuring child.
const WORKER_ENV: &str = "LOGIN_BENCH_WORKER";
/// Namespace tag: the harness names namespaces `ga-<tag>-<pid>-<n>`.
const TAG: &str = "lbench";
/// The supervisor of the measuring child.
const BENCH: Bench = Bench {
    name: "login-bench",
    worker_env: WORKER_ENV,
    tag: TAG,
};
const OSLOGIN_PREFIX: &str = "/computeMetadata/v1/oslogin/";
/// Runs per AuthorizedKeysCommand series (p99 is the 99th of 100).
const KEY_RUNS: usize = 100;
/// Logins per user for the login wall time.
const LOGINS: usize = 20;
/// Runs of `getent` while the service hangs.
const GETENT_RUNS: usize = 20;
/// Bound on one SSH login attempt while the service hangs.
const SSH_LIMIT_SECS: u32 = 30;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "login-bench: needs root (network and mount namespaces, a private sshd); \
             run it with sudo"
        );
        std::process::exit(1);
    }
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--time-runs") => std::process::exit(inner_time_runs(&args[2..])),
        Some("--time-one") => std::process::exit(inner_time_one(&args[2..])),
        _ => {}
    }
    let code = match std::env::var_os(WORKER_ENV) {
        Some(record) => match worker(Path::new(&record)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("login-bench: {e}");
                1
            }
        },
        None => BENCH.supervise(),
    };
    // Every TestEnv/OsLoginVm lived inside worker() and is dropped by now.
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------
// Timer run inside the VM (this binary, through nsenter): times each run of a program from
// spawn to exit, so the figures hold neither nsenter nor this timer's own start.

/// `--time-one PROG ARGS...`: runs PROG once, prints "NANOSECONDS EXIT_CODE".
fn inner_time_one(argv: &[String]) -> i32 {
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
fn inner_time_runs(argv: &[String]) -> i32 {
    let (Some(n), Some(mode), Some(rest)) = (
        argv.first().and_then(|n| n.parse::<usize>().ok()),
        argv.get(1),
        argv.get(2..),
    ) else {
        eprintln!("usage: --time-runs N same|fresh PROG ARGS...");
        return 2;
    };
    let exe = std::env::current_exe().unwrap_or_default();
    for _ in 0..n {
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
        } else if inner_time_one(rest) != 0 {
            return 1;
        }
    }
    0
}

// ---------------------------------------------------------------------------------------
// Measuring.

/// Sorted samples.
struct Stats(Vec<Duration>);

impl Stats {
    fn new(mut v: Vec<Duration>) -> Stats {
        v.sort();
        Stats(v)
    }

    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    fn median(&self) -> Duration {
        self.pct(50.0)
    }

    fn p99(&self) -> Duration {
        self.pct(99.0)
    }
}

/// Runs `make()` `n` times (output discarded), each timed from spawn to exit.
fn time_runs(n: usize, mut make: impl FnMut() -> Command) -> Result<Stats, String> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let mut cmd = make();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t = Instant::now();
        let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
        v.push(t.elapsed());
        if !status.success() {
            return Err(format!("{cmd:?}: {status}"));
        }
    }
    Ok(Stats::new(v))
}

/// `n` runs of `prog args` timed inside the VM (see [`inner_time_runs`]): the times and the
/// exit codes.
fn time_in_vm(
    vm: &OsLoginVm,
    n: usize,
    fresh: bool,
    prog: &str,
    args: &[&str],
) -> Result<(Vec<Duration>, Vec<i32>), String> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let mode = if fresh { "fresh" } else { "same" };
    let out = vm
        .env
        .vm()
        .command(&exe.to_string_lossy())
        .args(["--time-runs", &n.to_string(), mode, prog])
        .args(args)
        .output()
        .map_err(|e| format!("timer in the VM: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut times = Vec::new();
    let mut codes = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(Ok(ns)), Some(Ok(code))) = (
            f.next().map(str::parse::<u64>),
            f.next().map(str::parse::<i32>),
        ) else {
            return Err(format!("timer in the VM printed {line:?}"));
        };
        times.push(Duration::from_nanos(ns));
        codes.push(code);
    }
    if !out.status.success() || times.len() != n {
        return Err(format!(
            "timer in the VM ({prog}): {} runs, {}: {}",
            times.len(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((times, codes))
}

/// Requests under the OS Login prefix, by the last path segment ("users", "authorize", ...).
fn oslogin_requests(emu: &Emulator) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for r in emu.requests() {
        if let Some(p) = r["path"].as_str().filter(|p| p.starts_with(OSLOGIN_PREFIX)) {
            let last = p.trim_end_matches('/').rsplit('/').next().unwrap_or(p);
            *by.entry(last.to_owned()).or_insert(0) += 1;
        }
    }
    by
}

fn describe(by: &BTreeMap<String, usize>) -> String {
    let total: usize = by.values().sum();
    if by.is_empty() {
        return "0".into();
    }
    let parts: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total} ({})", parts.join(", "))
}

/// `ssh ... USER@127.0.0.1 COMMAND` from the VM's network namespace, bounded by `timeout`,
/// with the same options as [`OsLoginVm::ssh`]: (exit code, wall time).
fn ssh_bounded(vm: &OsLoginVm, key: &Path, user: &str, limit_secs: u32) -> (i32, Duration) {
    let mut cmd = vm.env.ns.command(Path::new("timeout"));
    cmd.args(["-k", "2", &limit_secs.to_string(), "ssh", "-F", "/dev/null"])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-i"])
        .arg(key)
        .arg(format!("{user}@127.0.0.1"))
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t = Instant::now();
    let code = cmd.status().ok().and_then(|s| s.code()).unwrap_or(-1);
    (code, t.elapsed())
}

/// One successful login, timed.
fn login(vm: &OsLoginVm, key: &Path, user: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let out = vm.ssh(key, user, "true");
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "ssh {user}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            vm.sshd().dump()
        ));
    }
    Ok(took)
}

/// Requests under the OS Login prefix made by one login of `user`.
fn requests_per_login(vm: &OsLoginVm, key: &Path, user: &str) -> Result<String, String> {
    let emu = vm.env.emulator();
    // Let anything still in flight from earlier steps land before the count starts.
    std::thread::sleep(Duration::from_millis(300));
    emu.clear_requests();
    login(vm, key, user)?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(describe(&oslogin_requests(emu)))
}

fn fingerprint(public: &Path) -> Result<String, String> {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(public)
        .output()
        .map_err(|e| format!("ssh-keygen -l: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .filter(|f| f.starts_with("SHA256:"))
        .map(str::to_owned)
        .ok_or_else(|| "ssh-keygen -l printed no SHA256 fingerprint".into())
}

fn worker(record: &Path) -> Result<(), String> {
    let agent_bin = guest_agent_e2e::bins::agent();
    let profile = agent_bin
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    eprintln!("login-bench: starting the VM (emulator, agent, sshd) ...");
    let t_all = Instant::now();
    let mut keys = None;
    let vm = OsLoginVm::start(TAG, "", |env| {
        let (alice_key, alice_pub) = keypair(env.dir(), "alice");
        env.emulator().ok(
            "POST",
            "/oslogin/users",
            Some(&user("alice", 200001, &alice_pub, true, false).to_string()),
        );
        keys = Some((alice_key, alice_pub));
    });
    std::fs::write(record, vm.env.dir().to_string_lossy().as_bytes())
        .map_err(|e| format!("{}: {e}", record.display()))?;
    let result = measure(&vm, keys.ok_or("setup did not run")?);
    // Release anything held by the hang fault before the processes go.
    let _ = vm.env.emulator().control("DELETE", "/faults", None);
    let (rows, notes) = result?;
    drop(vm);
    print_table(
        &format!(
            "login-bench: guest-agent ({profile} build, {}) in an OS Login VM with a real sshd; \
             measured in {:.0} s",
            agent_bin.display(),
            t_all.elapsed().as_secs_f64()
        ),
        &rows,
    );
    println!();
    println!(
        "Times are each process's own wall time (spawn to exit), taken inside the VM by this \
         binary run there (`same`: one parent for all runs, i.e. one SSH connection to the \
         daemon; `new connection`: a new parent each run); entering the VM (nsenter) is \
         shown apart. req/run: requests under {OSLOGIN_PREFIX} per run. The incumbent's NSS \
         figure is the lookup alone (nss-bench gives ours in ns); ours is a whole getent process."
    );
    for n in notes {
        println!("{n}");
    }
    Ok(())
}

fn measure(
    vm: &OsLoginVm,
    (alice_key, alice_pub): (PathBuf, String),
) -> Result<(Vec<Row>, Vec<String>), String> {
    let env = &vm.env;
    let emu = env.emulator();
    let mut rows = Vec::new();
    let fp = fingerprint(&alice_key.with_extension("pub"))?;

    // 1. AuthorizedKeysCommand.
    eprintln!("login-bench: 1/4 AuthorizedKeysCommand ({KEY_RUNS} runs per series) ...");
    let out = env
        .vm()
        .command(AGENT)
        .args(["authorized-keys", "alice", &fp])
        .output()
        .map_err(|e| format!("keys command: {e}"))?;
    let material = alice_pub.split_whitespace().nth(1).unwrap_or("-");
    if !String::from_utf8_lossy(&out.stdout).contains(material) {
        return Err(format!(
            "the keys command did not print alice's key: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            env.agent().dump()
        ));
    }
    let exec_base = time_runs(KEY_RUNS, || env.vm().command("/bin/true"))?;
    let series = |fresh: bool, user: &str| -> Result<(Stats, f64), String> {
        let args = ["authorized-keys", user, &fp];
        // Warm-up: the first runs fill caches and negative caches.
        time_in_vm(vm, 3, fresh, AGENT, &args)?;
        std::thread::sleep(Duration::from_millis(100));
        emu.clear_requests();
        let (s, _) = time_in_vm(vm, KEY_RUNS, fresh, AGENT, &args)?;
        let s = Stats::new(s);
        std::thread::sleep(Duration::from_millis(100));
        let reqs: usize = oslogin_requests(emu).values().sum();
        Ok((s, reqs as f64 / KEY_RUNS as f64))
    };
    let cell = |s: &Stats, reqs: f64| {
        format!(
            "median {}, p99 {}; {reqs:.1} req/run",
            fmt_d(s.median()),
            fmt_d(s.p99()),
        )
    };
    let (new_conn, new_reqs) = series(true, "alice")?;
    let (same_conn, same_reqs) = series(false, "alice")?;
    let (unknown, unknown_reqs) = series(false, "ghost")?;
    rows.push(row(
        "1. keys command, alice, new connection (live authorize)",
        cell(&new_conn, new_reqs),
        "19–32 ms",
        "< 3 ms",
    ));
    rows.push(row(
        "   keys command, alice, same connection (sshd's 2nd run)",
        cell(&same_conn, same_reqs),
        "19–32 ms",
        "< 3 ms",
    ));
    rows.push(row(
        "   keys command, unknown user",
        cell(&unknown, unknown_reqs),
        "19–32 ms",
        "< 3 ms",
    ));
    rows.push(row(
        "   (not in the figures: entering the VM, nsenter /bin/true)",
        format!(
            "median {}, p99 {}",
            fmt_d(exec_base.median()),
            fmt_d(exec_base.p99())
        ),
        "",
        "",
    ));

    // 2. Full login wall time, OS Login user beside a local user.
    eprintln!("login-bench: 2/4 ssh logins ({LOGINS} per user) ...");
    let (local_key, local_pub) = keypair(env.dir(), "localuser");
    env.vm().run(&format!(
        "set -e
useradd -m -p '*' localuser
install -d -m 700 -o localuser -g localuser /home/localuser/.ssh
printf '%s\\n' '{local_pub}' > /home/localuser/.ssh/authorized_keys
chown localuser:localuser /home/localuser/.ssh/authorized_keys
chmod 600 /home/localuser/.ssh/authorized_keys"
    ));
    // Warm-up: alice's first login makes her home.
    login(vm, &alice_key, "alice")?;
    login(vm, &local_key, "localuser")?;
    let (mut a, mut l) = (Vec::new(), Vec::new());
    for _ in 0..LOGINS {
        a.push(login(vm, &alice_key, "alice")?);
        l.push(login(vm, &local_key, "localuser")?);
    }
    let (a, l) = (Stats::new(a), Stats::new(l));
    rows.push(row(
        "2. ssh login wall time, OS Login user (alice)",
        format!(
            "median {}, p90 {} ({:.2}x the local user)",
            fmt_d(a.median()),
            fmt_d(a.pct(90.0)),
            a.median().as_secs_f64() / l.median().as_secs_f64().max(1e-9)
        ),
        "",
        "",
    ));
    rows.push(row(
        "   ssh login wall time, local user (useradd)",
        format!("median {}, p90 {}", fmt_d(l.median()), fmt_d(l.pct(90.0))),
        "",
        "",
    ));

    // 3. Metadata requests per login.
    eprintln!("login-bench: 3/4 metadata requests per login ...");
    let warm = requests_per_login(vm, &alice_key, "alice")?;
    let (carol_key, carol_pub) = keypair(env.dir(), "carol");
    emu.ok(
        "POST",
        "/oslogin/users",
        Some(&user("carol", 200003, &carol_pub, true, false).to_string()),
    );
    let cold = requests_per_login(vm, &carol_key, "carol")?;
    let local = requests_per_login(vm, &local_key, "localuser")?;
    rows.push(row(
        "3. metadata requests per login, warm (alice)",
        warm,
        "22",
        "≤ 2",
    ));
    rows.push(row(
        "   metadata requests per login, cold (carol, new)",
        cold,
        "49",
        "",
    ));
    rows.push(row(
        "   metadata requests per login, local user",
        local,
        "",
        "",
    ));

    // 3b. `guest-agent token` served by the daemon, beside a plain HTTP fetch of the same
    // token from the metadata service (curl, one request).
    let (tok, tok_codes) = time_in_vm(vm, KEY_RUNS, false, AGENT, &["token"])?;
    let token_url =
        "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token";
    let (curl, curl_codes) = time_in_vm(
        vm,
        KEY_RUNS,
        false,
        "/usr/bin/curl",
        &["-sf", "-H", "Metadata-Flavor: Google", token_url],
    )?;
    if tok_codes.iter().chain(&curl_codes).any(|c| *c != 0) {
        return Err(format!("token runs failed: {tok_codes:?} {curl_codes:?}"));
    }
    let (tok, curl) = (Stats::new(tok), Stats::new(curl));
    rows.push(row(
        "   guest-agent token (daemon) / curl from the metadata service",
        format!(
            "median {} / {}, p99 {} / {}",
            fmt_d(tok.median()),
            fmt_d(curl.median()),
            fmt_d(tok.p99()),
            fmt_d(curl.p99())
        ),
        "",
        "",
    ));

    // 4. The service hanging.
    eprintln!("login-bench: 4/4 with the OS Login endpoints hanging ...");
    emu.add_fault(json!({"path_prefix": OSLOGIN_PREFIX, "kind": {"kind": "hang"}, "count": null}));
    let getent = |name: &str, n: usize| time_in_vm(vm, n, false, "getent", &["passwd", name]);
    let (alice_nss, alice_codes) = getent("alice", GETENT_RUNS)?;
    if alice_codes.iter().any(|&c| c != 0) {
        return Err(format!(
            "getent passwd alice with the service hanging: exit codes {alice_codes:?}"
        ));
    }
    let alice_nss = Stats::new(alice_nss);
    let root_nss = Stats::new(getent("root", GETENT_RUNS)?.0);
    let (miss, codes) = getent("nosuchuser", 5)?;
    let first_miss = miss[0];
    let miss = Stats::new(miss);
    let since = Instant::now();
    let (ssh_code, ssh_took) = ssh_bounded(vm, &alice_key, "alice", SSH_LIMIT_SECS);
    std::thread::sleep(Duration::from_millis(200));
    let why = vm
        .sshd()
        .lines_since(since, &["guest-agent: alice"])
        .into_iter()
        .next()
        .unwrap_or_else(|| "(no line from the keys command in sshd's log)".into());
    emu.clear_faults();
    rows.push(row(
        "4. hanging: getent passwd alice (cached)",
        format!(
            "median {}, p99 {} (getent root, files only: {})",
            fmt_d(alice_nss.median()),
            fmt_d(alice_nss.p99()),
            fmt_d(root_nss.median())
        ),
        "30–70 µs (lookup)",
        "",
    ));
    rows.push(row(
        "   hanging: getent passwd nosuchuser",
        format!(
            "first {}, median of 5 {}, exit {}",
            fmt_d(first_miss),
            fmt_d(miss.median()),
            codes
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join("/")
        ),
        "3–5 s, then no such user",
        "< 100 ms",
    ));
    rows.push(row(
        "   hanging: ssh alice until refused",
        format!(
            "{} ({})",
            fmt_d(ssh_took),
            match ssh_code {
                255 => "refused".to_owned(),
                0 => "ADMITTED".to_owned(),
                124 | 137 => format!("no answer within {SSH_LIMIT_SECS} s"),
                c => format!("exit {c}"),
            }
        ),
        "",
        "",
    ));
    let notes = vec![format!(
        "4. sshd logged for the refused login: {}",
        why.trim()
    )];
    Ok((rows, notes))
}
