//! The fault matrix (issue 8): every fault the emulator injects, on every metadata path the
//! agent uses, with what must hold in each cell. Needs root.
//!
//! Paths (emulator `path_prefix`, matched on the path without the query):
//! - **tree** `/computeMetadata/v1/`, the whole-tree long poll. That prefix also catches every
//!   other GCE path, so the tree's fault is preceded by pass-through faults (`delay` of 0 ms,
//!   the first matching fault wins) on `instance/`, `project/` and `oslogin/`: only the tree
//!   request itself (path exactly `/computeMetadata/v1/`) meets the fault. Run twice: on a
//!   metadata-keys VM (user bob; what the tree feeds) and on an OS Login VM (the tree carries
//!   `enable-oslogin`; a bad tree must not turn OS Login off).
//! - **users** `.../oslogin/users` (listing, `username=`/`uid=` lookups, group members),
//!   **groups** `.../oslogin/groups`, **authorize** `.../oslogin/authorize`, **certificates**
//!   `.../oslogin/certificates`: an OS Login VM each (alice: login and admin roles, in group
//!   devs; sshd; her first login done before the matrix, so her home and sudo rule exist).
//! - **token** `.../instance/service-accounts/default/token`: a VM with OS Login off and no
//!   keys, `tokens.flavor = "gce"` (with `auto` the EC2 endpoint, which the emulator serves
//!   too, would fetch the token around the fault).
//!
//! Faults, in this order in every path: status 500, 503, 429, 403, 400; hang; delay 0.5 s
//! (a late but good answer); slow body (`slow_body`, 1 byte/s: the emulator has that kind, so
//! the dribble outlasts every deadline); drop; truncate; oversize (5 MiB of valid JSON, over
//! the 4 MiB `metadata.max_body_bytes`); non-JSON (HTML); wrong shape (`["not","a","tree"]`);
//! no `Metadata-Flavor` echo; etag churn (`etag_churn`: a fresh ETag on every answer and
//! `wait_for_change` answered at once).
//!
//! Every cell checks, and fails the test function when one does not hold (after printing the
//! table), that the fault met at least one request of its path (no vacuous cell), and:
//! 1. **daemon up**: the process is alive and answers on its socket (`getpwuid 1`).
//! 2. **files**: a hash (content, mode, owner) of every file the agent owns, taken before the
//!    fault and after it did its work: `/var/lib/guest-agent/*` (the directory cache, its
//!    older-format copies and the delta file without
//!    its `generated_at` stamp, bytes 32..40, which every rewrite renews), sshd_config and its
//!    drop-ins, nsswitch.conf, `/etc/sudoers.d/*`, `/etc/ssh/guest-agent/*` (the CA file),
//!    passwd, group, shadow, gshadow, every `~/.ssh/authorized_keys`. Unchanged, except where
//!    the change is the documented outcome: a late-but-good answer (delay, etag churn) applies
//!    the change made during the cell; on authorize, a 4xx other than 429 or an answer without
//!    `"success": true` is a denial (metadata-protocol.md), which takes alice's sudo rule away
//!    until her next authorized login (checked: back after recovery).
//! 3. **login** as documented (README "OS Login", "Certificates", "Metadata SSH keys",
//!    "Service-account tokens"): tree failing: one "metadata service failing" warning, at once
//!    or, for a hanging or dribbling long poll, at the client's deadline (watch 5 s + request
//!    1.5 s), and the last good snapshot stays (bob's keys work, the key added during the
//!    fault does not yet; alice's OS Login stays on and she logs in);
//!    users/groups failing: a sync during the fault fails, the cached user and group still
//!    resolve through glibc, an unknown name is answered within 3 s, alice logs in (authorize
//!    works); authorize failing: alice is refused (fail closed, no `grace_period_secs`) within
//!    the authorize deadline plus slack; certificates failing: the CA file keeps its keys (far
//!    younger than `ca_max_stale_secs`) and a certificate login works; token failing: `guest-agent
//!    token` serves the cached token after the refresh failed, and refuses it once expired.
//! 4. **recovery**: faults cleared, the next change is applied or the next decision made
//!    normally within a bound (tree: a key added during the fault works; users/groups: a user
//!    or group added now is in the next sync; authorize: alice's next login; certificates: a CA
//!    rotated now reaches the file and a certificate of the new CA logs in; token: a fresh
//!    token is served). "recovered in" counts from the moment the faults were cleared.
//!
//! Short settings keep a cell to a few seconds (production defaults in brackets):
//! `metadata.request_timeout_ms = 1500` [10000], `watch_timeout_secs = 5` [60],
//! `backoff_max_ms = 2000` [30000], `oslogin.authorize_timeout_ms = 1000` [2000],
//! `oslogin.ca_refresh_secs = 1` [60] on the certificates VM, `accounts.check_interval_secs = 2`
//! [30] on the keys VM, and service-account tokens that live 5 s (the emulator's
//! `/tokens/default/rotate`), so the agent refreshes one about 3 s after it got it.
//!
//! The seven paths are seven test functions, run in parallel; each goes through the fifteen
//! faults in sequence and prints its part of the outcome table (fault | daemon up | files
//! unchanged | login outcome | recovered in | check); the last one to finish prints the whole
//! table. `cargo test -p guest-agent-e2e --test fault_matrix -- --nocapture` shows them (the
//! test harness captures the output of passing tests otherwise; a failing test's output is
//! always shown).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use guest_agent_e2e::accounts::{KeysVm, keypair_of};
use guest_agent_e2e::emulator::Emulator;
use guest_agent_e2e::oslogin::{OsLoginVm, keypair, user};
use guest_agent_e2e::vm::Vm;
use guest_agent_e2e::{AgentOptions, TestEnv, require_root};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// Short deadlines and backoff for every VM (see the file's documentation).
const METADATA: &str =
    "[metadata]\nrequest_timeout_ms = 1500\nwatch_timeout_secs = 5\nbackoff_max_ms = 2000\n";
const TREE: &str = "/computeMetadata/v1/";
const SUDOERS: &str = "/etc/sudoers.d/guest-agent-oslogin";
const CA_FILE: &str = "/etc/ssh/guest-agent/trusted-ca.pub";
/// Lifetime of the emulator's tokens on the token VM.
const TOKEN_LIFE_SECS: u64 = 5;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    TreeKeys,
    TreeOsLogin,
    Users,
    Groups,
    Authorize,
    Certificates,
    Token,
}

const TARGETS: usize = 7;

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::TreeKeys => "tree (metadata-keys VM)",
            Target::TreeOsLogin => "tree (OS Login VM)",
            Target::Users => "oslogin/users",
            Target::Groups => "oslogin/groups",
            Target::Authorize => "oslogin/authorize",
            Target::Certificates => "oslogin/certificates",
            Target::Token => "service-account token",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Target::TreeKeys | Target::TreeOsLogin => TREE,
            Target::Users => "/computeMetadata/v1/oslogin/users",
            Target::Groups => "/computeMetadata/v1/oslogin/groups",
            Target::Authorize => "/computeMetadata/v1/oslogin/authorize",
            Target::Certificates => "/computeMetadata/v1/oslogin/certificates",
            Target::Token => "/computeMetadata/v1/instance/service-accounts/default/token",
        }
    }

    fn order(self) -> usize {
        self as usize
    }
}

/// What the agent gets from a path under a fault.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// A usable answer (late, or with a churning etag): all works as without a fault.
    Normal,
    /// No usable answer: the last good state stays.
    Failure,
    /// authorize only: a 4xx (not 429) or an answer without `"success": true` is a denial.
    Denial,
}

fn faults() -> Vec<(&'static str, Value)> {
    vec![
        ("status 500", json!({"kind": "status", "code": 500})),
        ("status 503", json!({"kind": "status", "code": 503})),
        ("status 429", json!({"kind": "status", "code": 429})),
        ("status 403", json!({"kind": "status", "code": 403})),
        ("status 400", json!({"kind": "status", "code": 400})),
        ("hang", json!({"kind": "hang"})),
        ("delay 0.5 s", json!({"kind": "delay", "ms": 500})),
        (
            "slow body 1 B/s",
            json!({"kind": "slow_body", "bytes_per_sec": 1}),
        ),
        ("drop", json!({"kind": "drop"})),
        ("truncate", json!({"kind": "truncate"})),
        (
            "oversize 5 MiB",
            json!({"kind": "oversize", "bytes": 5 << 20}),
        ),
        ("non-JSON", json!({"kind": "non_json"})),
        ("wrong shape", json!({"kind": "wrong_shape"})),
        ("no flavor echo", json!({"kind": "no_flavor"})),
        ("etag churn", json!({"kind": "etag_churn"})),
    ]
}

fn expect(target: Target, fault: &str) -> Expect {
    match fault {
        "delay 0.5 s" | "etag churn" => Expect::Normal,
        "status 403" | "status 400" | "wrong shape" if target == Target::Authorize => {
            Expect::Denial
        }
        _ => Expect::Failure,
    }
}

// ---------------------------------------------------------------------------------------------
// One row of the table.

struct Row {
    fault: &'static str,
    daemon: String,
    files: String,
    login: String,
    recovered: String,
    problems: Vec<String>,
}

impl Row {
    fn new(fault: &'static str) -> Row {
        Row {
            fault,
            daemon: "?".into(),
            files: "?".into(),
            login: "?".into(),
            recovered: "?".into(),
            problems: Vec::new(),
        }
    }

    /// Records a failed check; returns `ok`.
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) -> bool {
        if !ok {
            self.problems.push(what());
        }
        ok
    }

    fn daemon(&mut self, env: &TestEnv) {
        match daemon_up(env) {
            Ok(()) => self.daemon = "yes".into(),
            Err(e) => {
                self.daemon = "NO".into();
                self.problems.push(format!("daemon: {e}"));
            }
        }
    }

    /// Files compared with `before`; `allowed` lists the paths a documented outcome changes.
    fn files(&mut self, vm: &Vm, before: &Files, allowed: &[&str], why: &str) {
        let changed = diff(before, &files(vm));
        let unexpected: Vec<&String> = changed
            .iter()
            .filter(|p| !allowed.contains(&p.as_str()))
            .collect();
        self.files = if changed.is_empty() {
            "unchanged".into()
        } else if unexpected.is_empty() {
            format!("{} changed ({why})", changed.join(", "))
        } else {
            format!("CHANGED: {}", changed.join(", "))
        };
        self.check(unexpected.is_empty(), || {
            format!("files changed: {unexpected:?}")
        });
    }

    /// Recovery `took` (None: not within the give-up); `bound` is 10x what the short settings
    /// allow ([`RECOVERY`]), so only a recovery that waits on something else fails it.
    fn recovered(&mut self, took: Option<Duration>, bound: Duration, what: &str) {
        match took {
            Some(t) => {
                self.recovered = secs(t);
                self.check(t <= bound, || {
                    format!("{what}: recovered after {t:?}, bound {bound:?}")
                });
            }
            None => {
                self.recovered = "NO".into();
                self.problems
                    .push(format!("{what}: not recovered within {bound:?}"));
            }
        }
    }
}

/// Recovery comes with the next attempt: at most the 2 s backoff cap plus a request or a
/// sync here (1 s to 8 s for the token's own backoff): bound 30 s, about 10x, and a give-up of
/// twice that.
const RECOVERY: Duration = Duration::from_secs(30);
const RECOVERY_GIVE_UP: Duration = Duration::from_secs(60);

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// A failing tree is noticed at once, or, for a hanging or dribbling long poll, at the
/// client's deadline (`watch_timeout_secs` 5 + `request_timeout_ms` 1.5 s; waited for up to
/// 10x that); then at least 2 s pass after the change made during the fault, so a faulty
/// answer has had its chance to slip through.
fn tree_failure_noticed(row: &mut Row, env: &TestEnv, since: Instant, changed: Instant) {
    let warned = env
        .agent()
        .wait_for_line(
            since,
            &["metadata service failing"],
            Duration::from_secs(65),
        )
        .is_some();
    row.check(warned, || {
        "no \"metadata service failing\" warning within the long poll's deadline".into()
    });
    let settle = changed + Duration::from_secs(2);
    let now = Instant::now();
    if now < settle {
        std::thread::sleep(settle - now);
    }
}

// ---------------------------------------------------------------------------------------------
// The table: each test function prints its part; the last to finish prints all of it.

/// A row's cells as printed.
type Cells = [String; 6];
/// Each finished path: (order, name, rows).
static PARTS: Mutex<Vec<(usize, String, Vec<Cells>)>> = Mutex::new(Vec::new());

fn cells(row: &Row) -> Cells {
    [
        row.fault.to_owned(),
        row.daemon.clone(),
        row.files.clone(),
        row.login.clone(),
        row.recovered.clone(),
        if row.problems.is_empty() {
            "ok".into()
        } else {
            "FAIL".into()
        },
    ]
}

fn render(rows: &[(String, Cells)], with_path: bool) -> String {
    let mut head = vec![
        "fault",
        "daemon up",
        "files unchanged",
        "login outcome",
        "recovered in",
        "check",
    ];
    if with_path {
        head.insert(0, "path");
    }
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|(path, c)| {
            let mut l: Vec<String> = c.to_vec();
            if with_path {
                l.insert(0, path.clone());
            }
            l
        })
        .collect();
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for l in &lines {
        for (w, c) in width.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt = |cols: Vec<String>| -> String {
        let cells: Vec<String> = cols
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = fmt(head.iter().map(|h| h.to_string()).collect());
    out.push_str(&fmt(width.iter().map(|w| "-".repeat(*w)).collect()));
    for l in lines {
        out.push_str(&fmt(l));
    }
    out
}

/// Prints this path's part (and the whole table when every path is in), then fails the test
/// if a cell failed.
fn publish(target: Target, rows: &[Row], took: Duration) {
    let part: Vec<Cells> = rows.iter().map(cells).collect();
    let title = format!(
        "fault matrix: {} (path_prefix {}), {} faults in {}",
        target.name(),
        target.prefix(),
        rows.len(),
        secs(took)
    );
    let mut text = format!(
        "\n{title}\n{}",
        render(
            &part
                .iter()
                .map(|c| (String::new(), c.clone()))
                .collect::<Vec<_>>(),
            false
        )
    );
    for r in rows.iter().filter(|r| !r.problems.is_empty()) {
        text.push_str(&format!("  {}: {}\n", r.fault, r.problems.join("; ")));
    }
    println!("{text}");
    {
        let mut parts = PARTS.lock().unwrap_or_else(|e| e.into_inner());
        parts.push((target.order(), target.name().to_owned(), part));
        if parts.len() == TARGETS {
            parts.sort_by_key(|p| p.0);
            let all: Vec<(String, Cells)> = parts
                .iter()
                .flat_map(|(_, name, rows)| rows.iter().map(|c| (name.clone(), c.clone())))
                .collect();
            // Straight to stderr, past libtest's capture: the table is in the CI log even
            // when every cell passes.
            use std::io::Write;
            let _ = std::io::stderr().write_all(
                format!("\n=== fault matrix, all paths ===\n{}", render(&all, true)).as_bytes(),
            );
        }
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| format!("{}: {}", r.fault, r.problems.join("; ")))
        .collect();
    assert!(
        failed.is_empty(),
        "{}: {} cell(s) failed:\n{}",
        target.name(),
        failed.len(),
        failed.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Shared checks.

type Files = BTreeMap<String, String>;

/// Every file the agent owns, as `path -> mode:uid:gid sha256`.
fn files(vm: &Vm) -> Files {
    let out = vm.run(
        r#"for f in /var/lib/guest-agent/* /etc/ssh/sshd_config /etc/ssh/sshd_config.d/* \
            /etc/nsswitch.conf /etc/sudoers.d/* /etc/ssh/guest-agent/* /etc/passwd /etc/group \
            /etc/shadow /etc/gshadow /home/*/.ssh/authorized_keys; do
  [ -f "$f" ] || continue
  case "$f" in
    *.tmp-*) continue ;;
    */directory.cache | */directory.v*.cache | */directory.delta) h=$({ head -c 32 "$f"; tail -c +41 "$f"; } | sha256sum) ;;
    *) h=$(sha256sum < "$f") ;;
  esac
  printf '%s %s %s\n' "$f" "$(stat -c '%a:%u:%g' "$f")" "${h%% *}"
done"#,
    );
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, h)| (p.to_owned(), h.to_owned()))
        .collect()
}

fn diff(a: &Files, b: &Files) -> Vec<String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// The daemon's process is alive (not a zombie) and it answers on its socket.
fn daemon_up(env: &TestEnv) -> Result<(), String> {
    let pid = env.agent().pid();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("process {pid}: {e}"))?;
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?");
    if matches!(state, "Z" | "X" | "x") {
        return Err(format!("the daemon exited (state {state})"));
    }
    // Its socket, through its own view of the VM's mounts.
    let path = format!("/proc/{pid}/root{}", guest_agent_wire::proto::SOCKET_PATH);
    let mut s = UnixStream::connect(&path).map_err(|e| format!("connect {path}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"getpwuid 1\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("no answer on the socket: {e}"))?;
    let head = line.split_whitespace().next().unwrap_or("");
    if ["OK", "NOTFOUND", "UNAVAIL", "DENIED", "ERR"].contains(&head) {
        Ok(())
    } else {
        Err(format!("odd answer on the socket: {line:?}"))
    }
}

/// The fault on `target` (for the tree, behind pass-through faults for every other path).
fn install(emu: &Emulator, target: Target, kind: &Value) {
    if target.prefix() == TREE {
        for p in ["instance/", "project/", "oslogin/"] {
            emu.add_fault(json!({"path_prefix": format!("{TREE}{p}"),
                                 "kind": {"kind": "delay", "ms": 0}, "count": null}));
        }
    }
    emu.add_fault(json!({"path_prefix": target.prefix(), "kind": kind, "count": null}));
}

/// Requests the emulator received on `target`'s path so far.
fn seen(emu: &Emulator, target: Target) -> usize {
    let a = emu
        .ok(
            "GET",
            &format!("/requests?path_prefix={}", target.prefix()),
            None,
        )
        .json();
    let requests = a["requests"].as_array().cloned().unwrap_or_default();
    if target.prefix() == TREE {
        requests.iter().filter(|r| r["path"] == json!(TREE)).count()
    } else {
        requests.len()
    }
}

/// Polls `f` every 50 ms until it is true; how long that took, or None after `timeout`.
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if f() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the fault met at least `n` requests more than `before` (a few seconds at most:
/// the 1 s CA refresh, the token's refresh at two thirds of 5 s; given a minute).
fn exercised(row: &mut Row, emu: &Emulator, target: Target, before: usize, n: usize) {
    let ok = wait_until(Duration::from_secs(60), || seen(emu, target) >= before + n).is_some();
    row.check(ok, || {
        format!(
            "the fault never met {n} request(s) on {} (vacuous cell)",
            target.prefix()
        )
    });
}

fn ssh_ok(env: &TestEnv, key: &Path, user: &str) -> (bool, Duration) {
    let t0 = Instant::now();
    let out = guest_agent_e2e::vm::ssh(&env.ns, key, user, "true");
    (out.status.success(), t0.elapsed())
}

/// `sh -c script` in the VM: (exit code, stdout, how long it took).
fn vm_sh(vm: &Vm, script: &str) -> (i32, String, Duration) {
    let t0 = Instant::now();
    let out = vm.sh(script);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        t0.elapsed(),
    )
}

// ---------------------------------------------------------------------------------------------
// OS Login VMs.

struct OsVm {
    vm: OsLoginVm,
    alice_key: PathBuf,
    cert_key: PathBuf,
    cert_pub: String,
}

const ALICE: &str = "alice:*:200001:200001:alice@example.com:/home/alice:/bin/bash";

/// alice (200001, login and admin roles, in devs 300000) and sshd; her first login is done.
fn os_login_vm(tag: &str, extra_oslogin: &str) -> OsVm {
    let mut keys = None;
    let config = format!("authorize_timeout_ms = 1000\n{extra_oslogin}{METADATA}");
    let vm = OsLoginVm::start(tag, &config, |env| {
        let (k, p) = keypair(env.dir(), "alice");
        let (ck, cp) = keypair(env.dir(), "alice-cert-only");
        let emu = env.emulator();
        emu.ok(
            "POST",
            "/oslogin/users",
            Some(&user("alice", 200001, &p, true, true).to_string()),
        );
        emu.ok(
            "POST",
            "/oslogin/groups",
            Some(&json!({"name": "devs", "gid": 300000, "members": ["alice"]}).to_string()),
        );
        keys = Some((k, ck, cp));
    });
    let (alice_key, cert_key, cert_pub) = keys.expect("setup ran");
    let out = vm.ssh(&alice_key, "alice", "true");
    assert!(
        out.status.success(),
        "alice's first login: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.env.agent().dump(),
        vm.sshd().dump()
    );
    assert!(
        vm.env.vm().read(SUDOERS).is_some(),
        "alice's sudo rule after her first login:\n{}",
        vm.env.agent().dump()
    );
    OsVm {
        vm,
        alice_key,
        cert_key,
        cert_pub,
    }
}

fn start(target: Target) -> Option<Instant> {
    let name = format!("fault_matrix {}", target.name());
    require_root(&name).then(Instant::now)
}

/// users: a sync during the fault fails (or works, for a good answer) and changes nothing;
/// alice and devs resolve from the cache; alice logs in. Recovery: a user added after the
/// fault is in the next sync.
#[test]
fn users() {
    let target = Target::Users;
    let Some(t_start) = start(target) else { return };
    let os = os_login_vm("fmusers", "");
    let env = &os.vm.env;
    let mut users = 1;
    let mut rows = Vec::new();
    for (i, (fault, kind)) in faults().into_iter().enumerate() {
        let mut row = Row::new(fault);
        let (t, before) = sync_under_fault(&mut row, env, target, fault, &kind);
        let (code, out, _) = vm_sh(env.vm(), "getent passwd alice");
        let alice = code == 0 && out.trim() == ALICE;
        row.check(alice, || format!("getent passwd alice: {code} {out:?}"));
        let (code, out, _) = vm_sh(env.vm(), "id alice");
        let devs = code == 0 && out.contains("300000(devs)");
        row.check(devs, || format!("id alice: {code} {out:?}"));
        // The module's 90 ms deadline bounds it (a getent process: about 0.1 s): 3 s is 30x,
        // and still under what a lookup waiting on the daemon's 2 s timeout would take.
        let (code, _, took) = vm_sh(env.vm(), &format!("getent passwd nosuch{i}"));
        let unknown = code == 2 && took < Duration::from_secs(3);
        row.check(unknown, || {
            format!("unknown user: exit {code} after {took:?} (want 2 within 3 s)")
        });
        let (login, took) = ssh_ok(env, &os.alice_key, "alice");
        row.check(login, || {
            format!("alice refused:{}", recent(os.vm.sshd(), t))
        });
        row.login = format!(
            "cached alice, devs resolve: {}; unknown name: {}; alice {} ({})",
            yes(alice && devs),
            if unknown { "fast no" } else { "SLOW/WRONG" },
            if login { "in" } else { "REFUSED" },
            secs(took)
        );
        row.files(
            env.vm(),
            &before,
            &[],
            "the cache is rewritten by a good sync",
        );
        row.daemon(env);
        // Recovery: a user added now is in the next sync.
        users += 1;
        let (_, public) = keypair(env.dir(), &format!("carol{i}"));
        let carol = user(
            &format!("carol{i}"),
            200100 + i as u32,
            &public,
            true,
            false,
        );
        recover_by_sync(
            &mut row,
            env,
            "/oslogin/users",
            &carol,
            &format!("users={users}"),
            "a new user in the next sync",
        );
        rows.push(row);
    }
    publish(target, &rows, t_start.elapsed());
}

/// users and groups: installs `kind` on the target's path, asks for a sync (SIGUSR1) and
/// checks it met the fault and failed (or worked, for a late good answer) as expected.
/// Returns when the sync was asked for and the owned files before it.
fn sync_under_fault(
    row: &mut Row,
    env: &guest_agent_e2e::TestEnv,
    target: Target,
    fault: &str,
    kind: &Value,
) -> (Instant, Files) {
    let emu = env.emulator();
    let mode = expect(target, fault);
    emu.clear_requests();
    let before = files(env.vm());
    let n0 = seen(emu, target);
    install(emu, target, kind);
    let t = Instant::now();
    env.agent().signal(Signal::SIGUSR1);
    exercised(row, emu, target, n0, 1);
    let (needle, what) = match mode {
        Expect::Normal => ("OS Login directory synced", "the sync works"),
        _ => ("directory sync failed", "the sync fails"),
    };
    let logged = env
        .agent()
        .wait_for_line(t, &[needle], Duration::from_secs(60))
        .is_some();
    row.check(logged, || format!("{what}: no {needle:?} line"));
    (t, before)
}

/// users and groups, after the fault: clears it, adds `entry` at `route` and checks that the
/// next sync carries it (`count` in the sync line).
fn recover_by_sync(
    row: &mut Row,
    env: &guest_agent_e2e::TestEnv,
    route: &str,
    entry: &Value,
    count: &str,
    what: &str,
) {
    env.emulator().clear_faults();
    let t = Instant::now();
    env.emulator().ok("POST", route, Some(&entry.to_string()));
    env.agent().signal(Signal::SIGUSR1);
    let synced =
        env.agent()
            .wait_for_line(t, &["OS Login directory synced", count], RECOVERY_GIVE_UP);
    row.recovered(synced.map(|s| s - t), RECOVERY, what);
}

/// The last lines `p` printed since `since`, for a failed check's message.
fn recent(p: &guest_agent_e2e::process::Proc, since: Instant) -> String {
    let lines = p.lines_since(since, &[]);
    let tail = &lines[lines.len().saturating_sub(12)..];
    format!("\n    {}", tail.join("\n    "))
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

/// groups: as users, with the cached group devs; recovery: a group added after the fault is
/// in the next sync.
#[test]
fn groups() {
    let target = Target::Groups;
    let Some(t_start) = start(target) else { return };
    let os = os_login_vm("fmgroups", "");
    let env = &os.vm.env;
    let mut groups = 1;
    let mut rows = Vec::new();
    for (i, (fault, kind)) in faults().into_iter().enumerate() {
        let mut row = Row::new(fault);
        let (t, before) = sync_under_fault(&mut row, env, target, fault, &kind);
        let (code, out, _) = vm_sh(env.vm(), "getent group devs");
        let devs = code == 0 && out.trim() == "devs:x:300000:alice";
        row.check(devs, || format!("getent group devs: {code} {out:?}"));
        let (code, out, _) = vm_sh(env.vm(), "id alice");
        let member = code == 0 && out.contains("300000(devs)") && out.contains("uid=200001");
        row.check(member, || format!("id alice: {code} {out:?}"));
        // As for users: the module's 90 ms deadline, 30x.
        let (code, _, took) = vm_sh(env.vm(), &format!("getent group nosuchgroup{i}"));
        let unknown = code == 2 && took < Duration::from_secs(3);
        row.check(unknown, || {
            format!("unknown group: exit {code} after {took:?} (want 2 within 3 s)")
        });
        let (login, took) = ssh_ok(env, &os.alice_key, "alice");
        row.check(login, || {
            format!("alice refused:{}", recent(os.vm.sshd(), t))
        });
        row.login = format!(
            "cached devs resolves: {}; unknown group: {}; alice {} ({})",
            yes(devs && member),
            if unknown { "fast no" } else { "SLOW/WRONG" },
            if login { "in" } else { "REFUSED" },
            secs(took)
        );
        row.files(env.vm(), &before, &[], "");
        row.daemon(env);
        groups += 1;
        let team = json!({"name": format!("team{i}"), "gid": 300100 + i, "members": ["alice"]});
        recover_by_sync(
            &mut row,
            env,
            "/oslogin/groups",
            &team,
            &format!("groups={groups}"),
            "a new group in the next sync",
        );
        rows.push(row);
    }
    publish(target, &rows, t_start.elapsed());
}

/// authorize: alice's login is refused while no decision can be had (fail closed), refused
/// by a denial (4xx, wrong shape: her sudo rule goes too), let in by a late good answer.
/// Recovery: her next login works and everything on disk is as before.
#[test]
fn authorize() {
    let target = Target::Authorize;
    let Some(t_start) = start(target) else { return };
    let os = os_login_vm("fmauth", "");
    let env = &os.vm.env;
    let emu = env.emulator();
    let mut rows = Vec::new();
    for (fault, kind) in faults() {
        let mut row = Row::new(fault);
        let mode = expect(target, fault);
        emu.clear_requests();
        let before = files(env.vm());
        let n0 = seen(emu, target);
        install(emu, target, &kind);
        let t = Instant::now();
        let (login, took) = ssh_ok(env, &os.alice_key, "alice");
        exercised(&mut row, emu, target, n0, 1);
        match mode {
            Expect::Normal => {
                row.check(login, || {
                    format!("alice refused:{}", recent(env.agent(), t))
                });
                row.login = format!("alice in ({})", secs(took));
            }
            Expect::Failure | Expect::Denial => {
                row.check(!login, || "alice let in without a decision".into());
                // The authorize deadline (1 s) cuts it: about 1.4 s with ssh's own time; the
                // bound is 10x that.
                row.check(took < Duration::from_secs(14), || {
                    format!("the refusal took {took:?}")
                });
                let reason = if mode == Expect::Denial {
                    "login role not granted"
                } else {
                    "metadata service unavailable"
                };
                let logged = env
                    .agent()
                    .wait_for_line(t, &[reason], Duration::from_secs(30))
                    .is_some();
                row.check(logged, || format!("no {reason:?} in the agent's log"));
                row.login = format!(
                    "alice {} in {} ({})",
                    if login { "LET IN" } else { "refused" },
                    secs(took),
                    if mode == Expect::Denial {
                        "denial"
                    } else {
                        "fail closed"
                    }
                );
            }
        }
        let (code, out, _) = vm_sh(env.vm(), "getent passwd alice");
        row.check(code == 0 && out.trim() == ALICE, || {
            format!("getent passwd alice: {code} {out:?}")
        });
        let allowed: &[&str] = if mode == Expect::Denial {
            &[SUDOERS]
        } else {
            &[]
        };
        row.files(
            env.vm(),
            &before,
            allowed,
            "denial: sudo rule dropped until the next login",
        );
        row.daemon(env);
        emu.clear_faults();
        let back = wait_until(RECOVERY_GIVE_UP, || ssh_ok(env, &os.alice_key, "alice").0);
        row.recovered(back, RECOVERY, "alice's next login");
        let left = diff(&before, &files(env.vm()));
        row.check(left.is_empty(), || {
            format!("after recovery, still different: {left:?}")
        });
        rows.push(row);
    }
    publish(target, &rows, t_start.elapsed());
}

/// Has the emulator's current CA sign a certificate of alice's cert-only key.
fn sign(os: &OsVm) {
    os.vm
        .env
        .emulator()
        .sign_into("alice", &os.cert_pub, 0, &os.cert_key);
}

/// The blob of the emulator's current CA key.
fn ca_blob(emu: &Emulator) -> String {
    let a = emu.ok("GET", "/ca", None).json();
    a["public_keys"][0]
        .as_str()
        .and_then(|k| k.split_whitespace().nth(1))
        .expect("a CA key")
        .to_owned()
}

/// certificates: the CA file keeps its keys through failed refreshes, certificate logins
/// keep working. Recovery: a CA rotated after the fault reaches the file and a certificate
/// of the new CA logs in.
#[test]
fn certificates() {
    let target = Target::Certificates;
    let Some(t_start) = start(target) else { return };
    let os = os_login_vm("fmcerts", "ca_refresh_secs = 1\n");
    let env = &os.vm.env;
    let emu = env.emulator();
    let mut blob = ca_blob(emu);
    let filled = wait_until(Duration::from_secs(60), || {
        env.vm().read(CA_FILE).unwrap_or_default().contains(&blob)
    });
    assert!(filled.is_some(), "the CA file never got the CA");
    sign(&os);
    let mut rows = Vec::new();
    for (fault, kind) in faults() {
        let mut row = Row::new(fault);
        emu.clear_requests();
        let before = files(env.vm());
        let n0 = seen(emu, target);
        let t = Instant::now();
        install(emu, target, &kind);
        // Two refreshes meet the fault (a hanging one takes the request deadline, 1.5 s).
        exercised(&mut row, emu, target, n0, 2);
        let ca = env.vm().read(CA_FILE).unwrap_or_default();
        let kept = ca.contains(&blob);
        row.check(kept, || format!("the CA file lost its key: {ca:?}"));
        let (login, took) = ssh_ok(env, &os.cert_key, "alice");
        row.check(login, || {
            format!(
                "certificate login refused:{}{}",
                recent(env.agent(), t),
                recent(os.vm.sshd(), t)
            )
        });
        row.login = format!(
            "CA kept: {}; certificate login {} ({})",
            yes(kept),
            if login { "works" } else { "REFUSED" },
            secs(took)
        );
        row.files(env.vm(), &before, &[], "");
        row.daemon(env);
        // Recovery: a rotation reaches the file; the new CA's certificate logs in.
        emu.clear_faults();
        let t = Instant::now();
        emu.ok("POST", "/ca/rotate", None);
        let new_blob = ca_blob(emu);
        let arrived = wait_until(RECOVERY_GIVE_UP, || {
            env.vm()
                .read(CA_FILE)
                .unwrap_or_default()
                .contains(&new_blob)
        });
        let back = arrived.and_then(|_| {
            sign(&os);
            wait_until(Duration::from_secs(30), || {
                ssh_ok(env, &os.cert_key, "alice").0
            })
            .map(|_| t.elapsed())
        });
        row.recovered(
            back,
            RECOVERY,
            "a rotated CA in the file and a new certificate's login",
        );
        blob = new_blob;
        rows.push(row);
    }
    publish(target, &rows, t_start.elapsed());
}

// ---------------------------------------------------------------------------------------------
// The tree.

/// tree on a metadata-keys VM: bob keeps his keys through the fault (the last good snapshot),
/// a key added during the fault is not taken from a faulty answer, and works once it ends.
#[test]
fn tree_keys() {
    let target = Target::TreeKeys;
    let Some(t_start) = start(target) else { return };
    let mut env = TestEnv::with_emulator("fmtreek", None);
    let dir = env.dir().to_owned();
    let (k1, p1) = keypair_of(&dir, "bob1", "ed25519");
    let (k2, p2) = keypair_of(&dir, "bob2", "ed25519");
    let (k3, p3) = keypair_of(&dir, "bob3", "ed25519");
    env.emulator()
        .set_attribute("instance", "ssh-keys", &format!("bob:{p1}\nbob:{p2}\n"));
    let t0 = Instant::now();
    env.start_agent(AgentOptions {
        config: format!("{METADATA}[accounts]\ncheck_interval_secs = 2\n"),
        ..Default::default()
    });
    env.wait_ready(t0, Duration::from_secs(30));
    let sshd = guest_agent_e2e::vm::start_sshd(env.vm(), &[]);
    let vm = KeysVm {
        sshd: Some(sshd),
        env,
    };
    assert!(
        vm.can_login(&k1, "bob"),
        "bob's first login:\n{}",
        vm.dump()
    );
    let env = &vm.env;
    let emu = env.emulator();
    let mut current = (&k2, &p2);
    let mut rows = Vec::new();
    for (i, (fault, kind)) in faults().into_iter().enumerate() {
        let mut row = Row::new(fault);
        let mode = expect(target, fault);
        let (new_key, new_pub) = if i % 2 == 0 { (&k3, &p3) } else { (&k2, &p2) };
        let old_key = current.0;
        emu.clear_requests();
        let before = files(env.vm());
        let n0 = seen(emu, target);
        install(emu, target, &kind);
        // Wake the poll in flight (answered normally: it passed the fault check before): the
        // next poll meets the fault.
        let t = Instant::now();
        emu.set_attribute("instance", "fm-wake", &i.to_string());
        exercised(&mut row, emu, target, n0, 1);
        // The change made during the fault: bob's second key replaced.
        emu.set_attribute(
            "instance",
            "ssh-keys",
            &format!("bob:{p1}\nbob:{new_pub}\n"),
        );
        let changed = Instant::now();
        if mode == Expect::Normal {
            std::thread::sleep(Duration::from_secs(2));
        } else {
            tree_failure_noticed(&mut row, env, t, changed);
        }
        let k1_in = vm.can_login(&k1, "bob");
        row.check(k1_in, || {
            format!("bob's unchanged key refused:{}", recent(env.agent(), t))
        });
        match mode {
            Expect::Normal => {
                let applied = vm
                    .wait_login(new_key, "bob", true, Duration::from_secs(30))
                    .is_some();
                row.check(applied, || "a good answer's change not applied".into());
                row.login = format!("bob in: {}; change applied: {}", yes(k1_in), yes(applied));
                row.files(
                    env.vm(),
                    &before,
                    &["/home/bob/.ssh/authorized_keys"],
                    "the change, from a good answer",
                );
            }
            _ => {
                let old_in = vm.can_login(old_key, "bob");
                let new_in = vm.can_login(new_key, "bob");
                row.check(old_in, || "the last good keys were not kept".into());
                row.check(!new_in, || "a change came through the fault".into());
                row.login = format!(
                    "bob in: {}; last good keys kept: {}; change during fault: {}",
                    yes(k1_in),
                    yes(old_in),
                    if new_in { "APPLIED" } else { "not seen" }
                );
                row.files(env.vm(), &before, &[], "");
            }
        }
        row.daemon(env);
        emu.clear_faults();
        let t = Instant::now();
        let back = vm
            .wait_login(new_key, "bob", true, RECOVERY_GIVE_UP)
            .map(|_| t.elapsed());
        row.recovered(back, RECOVERY, "the key added during the fault");
        let gone = !vm.can_login(old_key, "bob");
        row.check(gone, || {
            "the replaced key still works after recovery".into()
        });
        current = (new_key, new_pub);
        rows.push(row);
    }
    publish(target, &rows, t_start.elapsed());
}

/// tree on an OS Login VM: OS Login stays on (sshd drop-in, nsswitch, cache, sudo rule),
/// alice logs in, an attribute set during the fault is seen only once it ends.
#[test]
fn tree_os_login() {
    let target = Target::TreeOsLogin;
    let Some(t_start) = start(target) else { return };
    let os = os_login_vm("fmtreeo", "");
    let env = &os.vm.env;
    let emu = env.emulator();
    let mut rows = Vec::new();
    for (i, (fault, kind)) in faults().into_iter().enumerate() {
        let mut row = Row::new(fault);
        let mode = expect(target, fault);
        emu.clear_requests();
        let before = files(env.vm());
        let n0 = seen(emu, target);
        install(emu, target, &kind);
        let t_fault = Instant::now();
        emu.set_attribute("instance", "fm-wake", &i.to_string());
        exercised(&mut row, emu, target, n0, 1);
        let t = t_fault;
        let marker = format!("instance.attributes.fm-during-{i:02}");
        emu.set_attribute("instance", &format!("fm-during-{i:02}"), "1");
        let changed = Instant::now();
        if mode == Expect::Normal {
            std::thread::sleep(Duration::from_secs(2));
        } else {
            tree_failure_noticed(&mut row, env, t, changed);
        }
        let (login, took) = ssh_ok(env, &os.alice_key, "alice");
        row.check(login, || {
            format!("alice refused:{}", recent(env.agent(), t))
        });
        let seen_now = !env.agent().lines_since(t, &[&marker]).is_empty();
        match mode {
            Expect::Normal => {
                row.check(seen_now, || "a good answer's change not seen".into());
            }
            _ => {
                row.check(!seen_now, || "a change came through the fault".into());
            }
        }
        let off = !env
            .agent()
            .lines_since(t, &["OS Login disabled"])
            .is_empty();
        row.check(!off, || "OS Login turned off by a fault".into());
        row.login = format!(
            "alice {} ({}); OS Login on: {}; change during fault: {}",
            if login { "in" } else { "REFUSED" },
            secs(took),
            yes(!off),
            if seen_now { "seen" } else { "not seen" }
        );
        row.files(env.vm(), &before, &[], "");
        row.daemon(env);
        emu.clear_faults();
        let t = Instant::now();
        // Seen at once when a good answer already brought it.
        let back = env
            .agent()
            .wait_for_line(t_fault, &[&marker], RECOVERY_GIVE_UP)
            .map(|seen| seen.saturating_duration_since(t));
        row.recovered(back, RECOVERY, "the attribute set during the fault");
        rows.push(row);
    }
    publish(target, &rows, t_start.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Tokens.

/// `guest-agent token --format json` in the VM: (token, expires_in) when one is served, with
/// the instants before and after the call.
fn served(env: &TestEnv) -> (Option<(String, u64)>, Instant, Instant) {
    let before = Instant::now();
    let out = env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .args(["token", "--format", "json"])
        .output()
        .expect("guest-agent token");
    let after = Instant::now();
    let token = out
        .status
        .success()
        .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
        .flatten()
        .and_then(|v| {
            Some((
                v["access_token"].as_str()?.to_owned(),
                v["expires_in"].as_u64()?,
            ))
        });
    (token, before, after)
}

fn rotate(emu: &Emulator) -> String {
    emu.ok(
        "POST",
        "/tokens/default/rotate",
        Some(&json!({"expires_in": TOKEN_LIFE_SECS}).to_string()),
    )
    .json()["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

fn emulator_token(emu: &Emulator) -> String {
    emu.ok("GET", "/tokens/default", None).json()["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// token: after a refresh failed, `guest-agent token` still serves the token it has, and
/// refuses it once expired. Recovery: a fresh token is served.
#[test]
fn token() {
    let target = Target::Token;
    let Some(t_start) = start(target) else { return };
    let mut env = TestEnv::with_emulator("fmtoken", None);
    rotate(env.emulator());
    let t0 = Instant::now();
    env.start_agent(AgentOptions {
        config: format!("{METADATA}[tokens]\nflavor = \"gce\"\n"),
        ..Default::default()
    });
    env.wait_ready(t0, Duration::from_secs(30));
    let env = env;
    let emu = env.emulator();
    let mut rows = Vec::new();
    for (fault, kind) in faults() {
        let mut row = Row::new(fault);
        let mode = expect(target, fault);
        // A fresh token the agent holds with at least 2 s left: its refresh (at two thirds
        // of the lifetime) then comes at least a second before it expires.
        // (token, whole seconds left, the instants around the call that said so): the agent's
        // expiry is at least `before + e` and less than `after + e + 1`.
        let mut held = match served(&env) {
            // Usually the fresh token the last cell's recovery brought.
            (Some((v, e)), before, after) if e >= 2 && v == emulator_token(emu) => {
                Some((v, e, before, after))
            }
            _ => None,
        };
        for _ in 0..4 {
            if held.is_some() {
                break;
            }
            let want = rotate(emu);
            let mut got = None;
            wait_until(Duration::from_secs(6), || {
                let (t, before, after) = served(&env);
                match t {
                    Some((v, e)) if v == want => {
                        got = Some((v, e, before, after));
                        true
                    }
                    _ => false,
                }
            });
            if let Some((v, e, before, after)) = got
                && e >= 2
            {
                held = Some((v, e, before, after));
                break;
            }
        }
        let Some((tok, life, seen_before, seen_at)) = held else {
            row.problems
                .push("the agent never held a fresh token (setup)".into());
            rows.push(row);
            continue;
        };
        // Expires, for the agent, before this (`expires_in` is rounded down).
        let expiry = seen_at + Duration::from_secs(life + 1);
        emu.clear_requests();
        let before = files(env.vm());
        let n0 = seen(emu, target);
        let t = Instant::now();
        install(emu, target, &kind);
        exercised(&mut row, emu, target, n0, 1);
        // Refused early only if the agent said so before its expiry for certain: the whole
        // call ended before `seen_before + life` (not judged on when it was asked: the
        // answer may come later on a loaded machine).
        let (s1, _, answered_by) = served(&env);
        let first = match (&s1, mode) {
            (Some((v, _)), _) if *v == tok => "served".to_owned(),
            (Some((v, _)), Expect::Normal) if *v == emulator_token(emu) => "served".to_owned(),
            (Some(_), _) => {
                row.problems
                    .push("a token other than the held one during the fault".into());
                "OTHER TOKEN".to_owned()
            }
            (None, _) if answered_by < seen_before + Duration::from_secs(life) => {
                row.problems
                    .push("the held token refused before it expired".into());
                "REFUSED EARLY".to_owned()
            }
            (None, _) => "(sampled after expiry: inconclusive)".to_owned(),
        };
        let now = Instant::now();
        if now < expiry + Duration::from_millis(300) {
            std::thread::sleep(expiry + Duration::from_millis(300) - now);
        }
        let second = match mode {
            Expect::Normal => {
                let fresh = wait_until(Duration::from_secs(30), || {
                    matches!(served(&env).0, Some((v, _)) if v != tok && v == emulator_token(emu))
                })
                .is_some();
                row.check(fresh, || "no fresh token from good answers".into());
                if fresh {
                    "a fresh one served"
                } else {
                    "NO FRESH TOKEN"
                }
            }
            _ => {
                let (s2, _, _) = served(&env);
                let refused = s2.is_none();
                row.check(refused, || {
                    format!(
                        "after expiry, served {}",
                        if s2.is_some_and(|(v, _)| v == tok) {
                            "the expired token"
                        } else {
                            "a token from a faulty answer"
                        }
                    )
                });
                let warned = !env
                    .agent()
                    .lines_since(t, &["cannot fetch the service-account token"])
                    .is_empty();
                row.check(warned, || "no failed refresh in the agent's log".into());
                if refused {
                    "refused after expiry"
                } else {
                    "SERVED AFTER EXPIRY"
                }
            }
        };
        row.login = format!("held token after failed refresh: {first}; {second}");
        row.files(env.vm(), &before, &[], "");
        row.daemon(&env);
        emu.clear_faults();
        let t = Instant::now();
        let back = wait_until(
            RECOVERY_GIVE_UP,
            || matches!(served(&env).0, Some((v, _)) if v != tok && v == emulator_token(emu)),
        )
        .map(|_| t.elapsed());
        row.recovered(back, RECOVERY, "a fresh token");
        rows.push(row);
    }
    publish(target, &rows, t_start.elapsed());
}
