//! What an OS Login SSH login costs with guest-agent, end to end (`login-bench` prints it
//! alone, `bench-report` in its table). [`run`] starts one OS Login "VM" of the end-to-end
//! harness (emulator with OS Login users, the agent in a private mount namespace, the NSS
//! module through glibc, a real sshd) and measures, in that one run:
//!
//! 1. AuthorizedKeysCommand: `/srv/guest-agent authorized-keys USER SHA256:...` run inside the
//!    VM as sshd runs it; median and p99 of each run's own wall time, timed inside the VM
//!    ([`super::timer`]), so nsenter's cost is not in the figures (it is measured apart,
//!    `nsenter ... /bin/true`). For alice from a new SSH connection each run (the daemon asks
//!    the service, as for the first run of every login), from the same connection (sshd's
//!    second run: the decision is shared), and for an unknown user.
//! 2. Full `ssh alice@127.0.0.1 true` wall time for an OS Login user, beside a local user made
//!    with `useradd -m -p '*'` in the VM with `~/.ssh/authorized_keys`, interleaved.
//! 3. Metadata requests under `/computeMetadata/v1/oslogin/` per login: warm (user in the
//!    directory), cold (user created in the emulator after the agent's sync), local user; and
//!    `guest-agent token` beside `curl` fetching the token from the metadata service; a
//!    metadata change made while the agent's long poll waits (the production 60 s), until the
//!    agent logs it.
//! 4. With the service hanging (a `hang` fault on the OS Login endpoints): `getent passwd
//!    alice` (in the cache), `getent passwd nosuchuser`, and how long until alice's SSH login
//!    is refused.
//! 5. SIGTERM with a long poll in flight: until the daemon has exited.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::timer::time_in_vm;
use super::{Row, Stats, fmt_d, row};
use crate::emulator::Emulator;
use crate::oslogin::{OsLoginVm, keypair, user};
use crate::vm::{AGENT, SSHD_HELPER};

pub const OSLOGIN_PREFIX: &str = "/computeMetadata/v1/oslogin/";
/// Bound on one SSH login attempt while the service hangs.
const SSH_LIMIT_SECS: u32 = 30;

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Runs per AuthorizedKeysCommand series (p99 is the 99th of 100).
    pub key_runs: usize,
    /// Logins per user for the login wall time.
    pub logins: usize,
    /// Runs of `getent` while the service hangs.
    pub getent_runs: usize,
}

impl Params {
    pub const FULL: Params = Params {
        key_runs: 100,
        logins: 20,
        getent_runs: 20,
    };
    pub const QUICK: Params = Params {
        key_runs: 100,
        logins: 5,
        getent_runs: 10,
    };
}

/// A series of keys-command runs and the OS Login requests per run.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub runs: Stats,
    pub requests_per_run: f64,
}

/// What [`run`] measured.
#[derive(Debug, Clone, Default)]
pub struct LoginResult {
    pub keys_new_connection: Series,
    pub keys_same_connection: Series,
    pub keys_unknown_user: Series,
    /// `nsenter ... /bin/true`: entering the VM, not in the figures above.
    pub nsenter: Stats,
    pub login_oslogin: Stats,
    pub login_local: Stats,
    /// OS Login requests by last path segment for one login.
    pub requests_warm: BTreeMap<String, usize>,
    pub requests_cold: BTreeMap<String, usize>,
    pub requests_local: BTreeMap<String, usize>,
    pub token: Stats,
    pub curl_token: Stats,
    /// A metadata change made while the long poll waits, until the agent logged it.
    pub change_seen: Stats,
    /// SIGTERM (a long poll in flight) until the daemon exited, and its exit code.
    pub stop: Option<(Duration, Option<i32>)>,
    /// Service hanging: cached user, files-only user, unknown user (each a getent process).
    pub hang_cached: Stats,
    pub hang_root: Stats,
    pub hang_miss_first: Duration,
    pub hang_miss: Stats,
    pub hang_miss_codes: Vec<i32>,
    /// ssh exit code and time until it ended, and what sshd logged for it.
    pub hang_ssh: (i32, Duration),
    pub hang_ssh_why: String,
    /// Wall time of the whole part.
    pub took: Duration,
}

impl LoginResult {
    pub fn total(by: &BTreeMap<String, usize>) -> usize {
        by.values().sum()
    }
}

/// Starts the VM, measures, stops it. `record`: the worker's record file
/// ([`super::record_dir`]).
pub fn run(record: &Path, params: Params) -> Result<LoginResult, String> {
    let t_all = Instant::now();
    let mut keys = None;
    let mut vm = OsLoginVm::start("lbench", "", |env| {
        let (alice_key, alice_pub) = keypair(env.dir(), "alice");
        env.emulator().ok(
            "POST",
            "/oslogin/users",
            Some(&user("alice", 200001, &alice_pub, true, false).to_string()),
        );
        keys = Some((alice_key, alice_pub));
    });
    super::record_dir(record, &vm.env)?;
    let result = measure(&vm, keys.ok_or("setup did not run")?, params);
    // Release anything held by the hang fault before the processes go.
    let _ = vm.env.emulator().control("DELETE", "/faults", None);
    let mut r = result?;
    // 5. SIGTERM with a long poll in flight.
    eprintln!("  login 5/5: SIGTERM with a long poll in flight ...");
    poll_in_flight(vm.env.emulator())?;
    let t0 = Instant::now();
    vm.env.agent().signal(nix::sys::signal::Signal::SIGTERM);
    r.stop = vm
        .env
        .agent_mut()
        .wait_exit(Duration::from_secs(30))
        .map(|status| (t0.elapsed(), status.code()));
    drop(vm);
    r.took = t_all.elapsed();
    Ok(r)
}

/// Waits until the agent's whole-tree long poll is in flight at the emulator (the last tree
/// request, unanswered). The request log may have been cleared while a long poll waits (up
/// to the production 120 s): then a metadata change (an attribute of no meaning) answers it,
/// and the next one is seen.
fn poll_in_flight(emu: &Emulator) -> Result<(), String> {
    let t0 = Instant::now();
    let mut nudged: Option<Instant> = None;
    loop {
        if t0.elapsed() > Duration::from_secs(1)
            && nudged.is_none_or(|at| at.elapsed() > Duration::from_secs(10))
            && emu.tree_requests().is_empty()
        {
            emu.set_attribute("instance", "bench-nudge", &format!("{:?}", t0.elapsed()));
            nudged = Some(Instant::now());
        }
        let last = emu.tree_requests().last().cloned();
        if last.as_ref().is_some_and(|r| {
            r["status"] == json!(0)
                && r["query"]
                    .as_str()
                    .is_some_and(|q| q.contains("wait_for_change=true"))
        }) {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(format!("no long poll in flight: {last:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Requests under the OS Login prefix, by the last path segment ("users", "authorize", ...).
pub fn oslogin_requests(emu: &Emulator) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for r in emu.requests() {
        if let Some(p) = r["path"].as_str().filter(|p| p.starts_with(OSLOGIN_PREFIX)) {
            let last = p.trim_end_matches('/').rsplit('/').next().unwrap_or(p);
            *by.entry(last.to_owned()).or_insert(0) += 1;
        }
    }
    by
}

/// `3 (authorize 2, users 1)`.
pub fn describe(by: &BTreeMap<String, usize>) -> String {
    let total: usize = by.values().sum();
    if by.is_empty() {
        return "0".into();
    }
    let parts: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total} ({})", parts.join(", "))
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

/// `ssh ... USER@127.0.0.1 true` from the VM's network namespace, bounded by `timeout`, with
/// the same options as [`OsLoginVm::ssh`]: (exit code, wall time).
pub fn ssh_bounded(vm: &OsLoginVm, key: &Path, user: &str, limit_secs: u32) -> (i32, Duration) {
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
fn requests_per_login(
    vm: &OsLoginVm,
    key: &Path,
    user: &str,
) -> Result<BTreeMap<String, usize>, String> {
    let emu = vm.env.emulator();
    // Let anything still in flight from earlier steps land before the count starts.
    std::thread::sleep(Duration::from_millis(300));
    emu.clear_requests();
    login(vm, key, user)?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(oslogin_requests(emu))
}

/// The `SHA256:...` fingerprint of a public key file, as sshd's `%f`.
pub fn fingerprint(public: &Path) -> Result<String, String> {
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

fn measure(
    vm: &OsLoginVm,
    (alice_key, alice_pub): (PathBuf, String),
    p: Params,
) -> Result<LoginResult, String> {
    let env = &vm.env;
    let emu = env.emulator();
    let mut r = LoginResult::default();
    let fp = fingerprint(&alice_key.with_extension("pub"))?;

    // 1. AuthorizedKeysCommand.
    eprintln!(
        "  login 1/5: AuthorizedKeysCommand ({} runs per series) ...",
        p.key_runs
    );
    let out = env
        .vm()
        .command(SSHD_HELPER)
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
    r.nsenter = time_runs(p.key_runs, || env.vm().command("/bin/true"))?;
    let series = |fresh: bool, user: &str| -> Result<Series, String> {
        let args = ["authorized-keys", user, &fp];
        // Warm-up: the first runs fill caches and negative caches.
        time_in_vm(env.vm(), 3, fresh, SSHD_HELPER, &args)?;
        std::thread::sleep(Duration::from_millis(100));
        emu.clear_requests();
        let (s, _) = time_in_vm(env.vm(), p.key_runs, fresh, SSHD_HELPER, &args)?;
        std::thread::sleep(Duration::from_millis(100));
        let reqs: usize = oslogin_requests(emu).values().sum();
        Ok(Series {
            runs: Stats::new(s),
            requests_per_run: reqs as f64 / p.key_runs as f64,
        })
    };
    r.keys_new_connection = series(true, "alice")?;
    r.keys_same_connection = series(false, "alice")?;
    r.keys_unknown_user = series(false, "ghost")?;

    // 2. Full login wall time, OS Login user beside a local user.
    eprintln!("  login 2/5: ssh logins ({} per user) ...", p.logins);
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
    for _ in 0..p.logins {
        a.push(login(vm, &alice_key, "alice")?);
        l.push(login(vm, &local_key, "localuser")?);
    }
    r.login_oslogin = Stats::new(a);
    r.login_local = Stats::new(l);

    // 3. Metadata requests per login.
    eprintln!("  login 3/5: metadata requests per login ...");
    r.requests_warm = requests_per_login(vm, &alice_key, "alice")?;
    let (carol_key, carol_pub) = keypair(env.dir(), "carol");
    emu.ok(
        "POST",
        "/oslogin/users",
        Some(&user("carol", 200003, &carol_pub, true, false).to_string()),
    );
    r.requests_cold = requests_per_login(vm, &carol_key, "carol")?;
    r.requests_local = requests_per_login(vm, &local_key, "localuser")?;

    // 3b. `guest-agent token` served by the daemon, beside a plain HTTP fetch of the same
    // token from the metadata service (curl, one request).
    let (tok, tok_codes) = time_in_vm(env.vm(), p.key_runs, false, AGENT, &["token"])?;
    let token_url =
        "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token";
    let (curl, curl_codes) = time_in_vm(
        env.vm(),
        p.key_runs,
        false,
        "/usr/bin/curl",
        &["-sf", "-H", "Metadata-Flavor: Google", token_url],
    )?;
    if tok_codes.iter().chain(&curl_codes).any(|c| *c != 0) {
        return Err(format!("token runs failed: {tok_codes:?} {curl_codes:?}"));
    }
    r.token = Stats::new(tok);
    r.curl_token = Stats::new(curl);

    // 3c. A metadata change made while the long poll waits, until the agent logs it.
    let mut seen = Vec::new();
    for i in 0..p.logins {
        poll_in_flight(emu)?;
        let t0 = Instant::now();
        emu.set_attribute("instance", "bench-change", &i.to_string());
        let at = env
            .agent()
            .wait_for_line(
                t0,
                &["instance.attributes.bench-change"],
                Duration::from_secs(90),
            )
            .ok_or("the agent did not log a metadata change")?;
        seen.push(at.saturating_duration_since(t0));
    }
    r.change_seen = Stats::new(seen);

    // 4. The service hanging.
    eprintln!("  login 4/5: with the OS Login endpoints hanging ...");
    emu.add_fault(json!({"path_prefix": OSLOGIN_PREFIX, "kind": {"kind": "hang"}, "count": null}));
    let getent = |name: &str, n: usize| time_in_vm(env.vm(), n, false, "getent", &["passwd", name]);
    let (alice_nss, alice_codes) = getent("alice", p.getent_runs)?;
    if alice_codes.iter().any(|&c| c != 0) {
        return Err(format!(
            "getent passwd alice with the service hanging: exit codes {alice_codes:?}"
        ));
    }
    r.hang_cached = Stats::new(alice_nss);
    r.hang_root = Stats::new(getent("root", p.getent_runs)?.0);
    let (miss, codes) = getent("nosuchuser", 5)?;
    r.hang_miss_first = miss[0];
    r.hang_miss = Stats::new(miss);
    r.hang_miss_codes = codes;
    let since = Instant::now();
    r.hang_ssh = ssh_bounded(vm, &alice_key, "alice", SSH_LIMIT_SECS);
    std::thread::sleep(Duration::from_millis(200));
    r.hang_ssh_why = vm
        .sshd()
        .lines_since(since, &["guest-agent: alice"])
        .into_iter()
        .next()
        .unwrap_or_else(|| "(no line from the keys command in sshd's log)".into())
        .trim()
        .to_owned();
    emu.clear_faults();
    Ok(r)
}

/// The keys-command goal: under 3 ms (judged on the median run).
const KEYS_GOAL: Duration = Duration::from_millis(3);
/// The goal for a lookup while the service fails: under 100 ms.
const DOWN_GOAL: Duration = Duration::from_millis(100);
/// A metadata change reaches the agent within a second (the long poll in flight wakes).
const CHANGE_GOAL: Duration = Duration::from_secs(1);
/// SIGTERM ends the daemon within 2 s (it does not wait for the long poll in flight).
const STOP_GOAL: Duration = Duration::from_secs(2);

/// The rows for the AuthorizedKeysCommand, logins and requests per login.
pub fn rows(r: &LoginResult) -> Vec<Row> {
    let mut rows = Vec::new();
    let cell = |s: &Series| format!("{}; {:.1} req/run", s.runs.brief(), s.requests_per_run);
    let keys = |what: &str, s: &Series| {
        row(what, cell(s), "19–32 ms", "< 3 ms (median)").judged(s.runs.median() < KEYS_GOAL)
    };
    rows.push(keys(
        "AuthorizedKeysCommand run, new connection (live authorize)",
        &r.keys_new_connection,
    ));
    rows.push(keys(
        "  same connection (sshd's 2nd run)",
        &r.keys_same_connection,
    ));
    rows.push(keys("  unknown user", &r.keys_unknown_user));
    rows.push(row(
        "  (not in these figures: entering the VM, nsenter /bin/true)",
        r.nsenter.brief(),
        "",
        "",
    ));
    rows.push(row(
        "ssh login wall time, OS Login user / local user",
        format!(
            "median {} / {} ({:.2}x the local user's); p90 {} / {}",
            fmt_d(r.login_oslogin.median()),
            fmt_d(r.login_local.median()),
            r.login_oslogin.median().as_secs_f64() / r.login_local.median().as_secs_f64().max(1e-9),
            fmt_d(r.login_oslogin.pct(90.0)),
            fmt_d(r.login_local.pct(90.0)),
        ),
        "",
        "",
    ));
    rows.push(
        row(
            "metadata requests per OS Login login, warm",
            describe(&r.requests_warm),
            "22",
            "≤ 2",
        )
        .judged(LoginResult::total(&r.requests_warm) <= 2),
    );
    rows.push(row(
        "  cold (user new since the last sync) / local user",
        format!(
            "{} / {}",
            describe(&r.requests_cold),
            describe(&r.requests_local)
        ),
        "49",
        "",
    ));
    rows.push(
        row(
            "metadata change seen by the agent (the long poll in flight woken)",
            r.change_seen.brief(),
            "",
            "< 1 s",
        )
        .judged(r.change_seen.max() < CHANGE_GOAL),
    );
    rows.push(match r.stop {
        Some((took, code)) => row(
            "daemon stop: SIGTERM to exit, a long poll in flight",
            format!(
                "{} (exit {})",
                fmt_d(took),
                code.map_or("by a signal".to_owned(), |c| c.to_string())
            ),
            "",
            "< 2 s, exit 0",
        )
        .judged(took < STOP_GOAL && code == Some(0)),
        None => row(
            "daemon stop: SIGTERM to exit, a long poll in flight",
            "STILL RUNNING after 30 s",
            "",
            "< 2 s, exit 0",
        )
        .judged(false),
    });
    rows.push(row(
        "guest-agent token (daemon) / curl from the metadata service",
        format!(
            "median {} / {}, p99 {} / {}",
            fmt_d(r.token.median()),
            fmt_d(r.curl_token.median()),
            fmt_d(r.token.p99()),
            fmt_d(r.curl_token.p99())
        ),
        "",
        "",
    ));
    rows
}

/// The rows for the service hanging.
pub fn rows_down(r: &LoginResult) -> Vec<Row> {
    let codes: Vec<String> = r.hang_miss_codes.iter().map(|c| c.to_string()).collect();
    vec![
        row(
            "NSS lookup, service hanging: cached user (getent process)",
            format!(
                "{} (getent root, files only: {})",
                r.hang_cached.brief(),
                fmt_d(r.hang_root.median())
            ),
            "30–70 µs (lookup)",
            "< 100 ms",
        )
        .judged(r.hang_cached.max() < DOWN_GOAL),
        row(
            "  unknown user (getent process)",
            format!(
                "first {}, median of {} {}, exit {}",
                fmt_d(r.hang_miss_first),
                r.hang_miss.0.len(),
                fmt_d(r.hang_miss.median()),
                codes.join("/")
            ),
            "3–5 s, then \"no such user\"",
            "< 100 ms",
        )
        .judged(r.hang_miss.max() < DOWN_GOAL),
        row(
            "ssh login, service hanging: refused after",
            format!(
                "{} ({})",
                fmt_d(r.hang_ssh.1),
                match r.hang_ssh.0 {
                    255 => "refused".to_owned(),
                    0 => "ADMITTED".to_owned(),
                    124 | 137 => format!("no answer within {SSH_LIMIT_SECS} s"),
                    c => format!("exit {c}"),
                }
            ),
            "",
            "",
        ),
    ]
}

/// Notes under the table.
pub fn notes(r: &LoginResult) -> Vec<String> {
    vec![
        format!(
            "Keys-command, getent and token times are each process's own wall time (spawn to \
             exit), taken inside the VM by this binary run there (same connection: one parent \
             for all runs; new connection: a new parent each run). req/run: requests under \
             {OSLOGIN_PREFIX} per run. The incumbent's NSS figure is the lookup alone; ours \
             with the service hanging is a whole getent process."
        ),
        format!(
            "With the service hanging, sshd logged for the refused login: {}",
            r.hang_ssh_why
        ),
    ]
}
