//! What metadata `ssh-keys` users cost with guest-agent at scale (1,000 users), end to end
//! (`accounts-bench` prints it alone, `bench-report` in its table). [`run`] starts one
//! metadata-keys "VM" of the end-to-end harness (emulator, a real sshd, the agent with OS Login
//! off in a private mount namespace) and measures, in that one run:
//!
//! 1. 1,000 users from nothing: `ssh-keys` holds 1,000 lines (`user0001` to `user1000`, one
//!    ed25519 key shared by all) before the agent starts; from the agent's start to its
//!    `metadata accounts reconciled` line with `created=1000` (its own `took_ms` and
//!    `processes` beside), to READY=1, and to the end of a real `ssh` login as the last user
//!    (after one as the first). sshd is already running, as on a booting VM.
//! 2. One key change among 1,000 users: `user0500`'s key replaced in the emulator; from the
//!    change to the agent's next `metadata accounts reconciled` line, to the new key's first
//!    login and to the old key's first refusal.
//! 3. Idle with 1,000 managed users (`check_interval_secs = 2`): an idle pass logs nothing,
//!    so its cost is the agent's CPU time over a window of passes divided by the passes (the
//!    watcher's long polls included, so an upper bound), and a self-healing pass is timed by
//!    deleting one user's `authorized_keys` (the pass that restores it logs `took_ms`).
//!    The agent's RSS (/proc/PID/status VmRSS, and VmHWM, the peak) after the 1,000-user
//!    reconcile and when idle.

use std::path::Path;
use std::time::{Duration, Instant};

use super::procfs::{agent_pid, clock_ticks, cpu_time, memory};
use super::{Row, fmt_kib, row};
use crate::AgentOptions;
use crate::TestEnv;
use crate::accounts::{KeysVm, TEST_CONFIG, keypair_of};

/// Metadata users.
pub const USERS: usize = 1000;
/// The user whose key changes in step 2 (and whose file is deleted in step 3).
const CHANGED: usize = 500;
/// The agent's self-healing interval in this run.
const CHECK_SECS: u64 = 2;
const RECONCILED: &str = "metadata accounts reconciled";

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// The idle window over which the agent's CPU time is read.
    pub idle_window: Duration,
}

impl Params {
    pub const FULL: Params = Params {
        idle_window: Duration::from_secs(12),
    };
    pub const QUICK: Params = Params {
        idle_window: Duration::from_secs(4),
    };
}

/// What [`run`] measured.
#[derive(Debug, Clone, Default)]
pub struct AccountsResult {
    /// Agent start to the `reconciled` line with created=1000, and that line.
    pub reconcile: Duration,
    pub reconcile_line: String,
    /// Where the time went (metadata in, accounts, keys).
    pub phases: String,
    pub ready: Duration,
    /// Agent start to the end of the first and the last user's ssh login.
    pub first_login: Duration,
    pub last_login: Duration,
    pub accounts: String,
    pub sudoers: String,
    /// (VmRSS, VmHWM) KiB after the reconcile and idle.
    pub rss_after: (u64, u64),
    pub rss_idle: (u64, u64),
    /// Key change: to the reconcile line (and the line), new key in, old key out.
    pub change_reconcile: Duration,
    pub change_line: String,
    pub new_key_in: Duration,
    pub old_key_out: Duration,
    /// Idle window: CPU time and passes in it.
    pub idle_cpu: Duration,
    pub idle_passes: u64,
    pub idle_window: Duration,
    pub heal_line: String,
    pub heal: Duration,
    pub notes: Vec<String>,
    pub took: Duration,
}

/// A duration, coarser than [`super::fmt_d`]: `1.23 s`, `123 ms`, `12 ms`, `1.2 ms`.
fn fmt_d(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn user_name(i: usize) -> String {
    format!("user{i:04}")
}

/// The `ssh-keys` value: `user0001:KEY` .. `user1000:KEY`, `changed` = (index, other key).
fn ssh_keys(key: &str, changed: Option<(usize, &str)>) -> String {
    let mut s = String::with_capacity(USERS * (key.len() + 12));
    for i in 1..=USERS {
        let k = match changed {
            Some((c, other)) if c == i => other,
            _ => key,
        };
        s.push_str(&user_name(i));
        s.push(':');
        s.push_str(k);
        s.push('\n');
    }
    s
}

/// A `name=value` field of a log line.
pub fn field(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    Some(
        line[at..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// `took_ms N, processes N, keys_written N` from a `metadata accounts reconciled` line.
fn describe_pass(line: &str) -> String {
    let f = |n: &str| field(line, n).unwrap_or_else(|| "?".into());
    format!(
        "took_ms {}, processes {}, keys_written {}",
        f("took_ms"),
        f("processes"),
        f("keys_written")
    )
}

/// Starts the VM, measures, stops it. `record`: the worker's record file
/// ([`super::record_dir`]).
pub fn run(record: &Path, params: Params) -> Result<AccountsResult, String> {
    let t_all = Instant::now();
    let env = TestEnv::with_emulator("abench", None);
    super::record_dir(record, &env)?;
    let (key, public) = keypair_of(env.dir(), "shared", "ed25519");
    let (new_key, new_public) = keypair_of(env.dir(), "changed", "ed25519");
    env.emulator()
        .set_attribute("instance", "ssh-keys", &ssh_keys(&public, None));
    let sshd = crate::vm::start_sshd(env.vm(), &[]);
    let mut vm = KeysVm {
        sshd: Some(sshd),
        env,
    };
    let result = measure(&mut vm, (&key, &new_key, &public, &new_public), params);
    let mut r = match result {
        Ok(v) => v,
        Err(e) => return Err(format!("{e}\n{}", vm.dump())),
    };
    drop(vm);
    r.took = t_all.elapsed();
    Ok(r)
}

/// Waits for the agent's next `metadata accounts reconciled` line at or after `since` that
/// contains `also`; (when it was seen, the line).
fn reconciled(
    vm: &KeysVm,
    since: Instant,
    also: &str,
    timeout: Duration,
) -> Result<(Instant, String), String> {
    let agent = vm.env.agent();
    let at = agent
        .wait_for_line(since, &[RECONCILED, also], timeout)
        .ok_or_else(|| format!("no {RECONCILED:?} line with {also:?} within {timeout:?}"))?;
    let line = agent
        .lines_since(since, &[RECONCILED, also])
        .into_iter()
        .next()
        .unwrap_or_default();
    Ok((at, line))
}

fn measure(
    vm: &mut KeysVm,
    (key, new_key, public, new_public): (&Path, &Path, &str, &str),
    params: Params,
) -> Result<AccountsResult, String> {
    let mut r = AccountsResult::default();
    let first = user_name(1);
    let last = user_name(USERS);
    let changed = user_name(CHANGED);

    // 1. 1,000 users from nothing.
    eprintln!("  accounts 1/3: {USERS} users from nothing ...");
    let t0 = Instant::now();
    vm.env.start_agent(AgentOptions {
        config: format!("{TEST_CONFIG}check_interval_secs = {CHECK_SECS}\n"),
        ..Default::default()
    });
    // READY=1 is timed when the notify socket is read: read it while waiting for the line.
    let created_line = [RECONCILED, &format!("created={USERS} ")];
    let deadline = t0 + Duration::from_secs(120);
    let mut ready = None;
    let mut t_rec = None;
    while (ready.is_none() || t_rec.is_none()) && Instant::now() < deadline {
        if ready.is_none() {
            let notify = vm.env.notify.as_mut().ok_or("no notify socket")?;
            ready = notify.wait_for("READY=1", Duration::from_millis(10));
        }
        if t_rec.is_none() {
            t_rec = vm
                .env
                .agent()
                .wait_for_line(t0, &created_line, Duration::from_millis(10));
        }
    }
    let (Some(ready), Some(t_rec)) = (ready, t_rec) else {
        return Err(format!(
            "within 120 s: READY=1 {}, a {RECONCILED:?} line with created={USERS} {}",
            if ready.is_some() { "seen" } else { "not seen" },
            if t_rec.is_some() { "seen" } else { "not seen" },
        ));
    };
    r.ready = ready.saturating_duration_since(t0);
    let agent = vm.env.agent();
    r.reconcile_line = agent
        .lines_since(t0, &created_line)
        .into_iter()
        .next()
        .unwrap_or_default();
    // Where the time went, from when the agent's lines were read.
    let seen = |needle: &str| agent.wait_for_line(t0, &[needle], Duration::ZERO);
    r.phases = match (seen("metadata received"), seen("metadata users created")) {
        (Some(received), Some(created)) => format!(
            "metadata in {}, then accounts and homes {}, then keys, groups, \
             sudoers {}",
            fmt_d(received.saturating_duration_since(t0)),
            fmt_d(created.saturating_duration_since(received)),
            fmt_d(t_rec.saturating_duration_since(created)),
        ),
        _ => "(no 'metadata received' / 'metadata users created' line)".into(),
    };
    let pid = agent_pid(&vm.env)?;
    r.rss_after = memory(pid)?;
    let login = |k: &Path, user: &str| -> Result<(), String> {
        let out = vm.ssh(k, user, "id -un; sudo -n true && echo sudo");
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && text.starts_with(&format!("{user}\n")) {
            Ok(())
        } else {
            Err(format!(
                "ssh {user}: {} {text:?}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    login(key, &first)?;
    r.first_login = t0.elapsed();
    login(key, &last)?;
    r.last_login = t0.elapsed();
    r.accounts = vm
        .vm("grep -c '^user[0-9]*:' /etc/passwd")
        .trim()
        .to_owned();
    r.sudoers = vm
        .vm("getent group guest-agent-sudoers | cut -d: -f4 | tr ',' '\\n' | grep -c .")
        .trim()
        .to_owned();
    r.reconcile = t_rec.saturating_duration_since(t0);

    // 2. One key change among 1,000 users.
    eprintln!("  accounts 2/3: one key change among {USERS} users ...");
    // Let the first passes settle: nothing in flight when the change is made.
    std::thread::sleep(Duration::from_millis(500));
    let t_change = Instant::now();
    vm.set_keys(&ssh_keys(public, Some((CHANGED, new_public))));
    let (t_rec2, line2) = reconciled(vm, t_change, "", Duration::from_secs(60))?;
    r.change_reconcile = t_rec2.saturating_duration_since(t_change);
    r.change_line = line2;
    r.new_key_in = vm
        .wait_login(new_key, &changed, true, Duration::from_secs(30))
        .map(|_| t_change.elapsed())
        .ok_or_else(|| format!("the new key of {changed} does not log in"))?;
    r.old_key_out = vm
        .wait_login(key, &changed, false, Duration::from_secs(30))
        .map(|_| t_change.elapsed())
        .ok_or_else(|| format!("the old key of {changed} still logs in"))?;
    if !vm.can_login(key, &last) {
        return Err(format!("{last} no longer logs in after the change"));
    }

    // 3. Idle.
    eprintln!(
        "  accounts 3/3: idle with {USERS} users ({} s of passes every {CHECK_SECS} s) ...",
        params.idle_window.as_secs()
    );
    std::thread::sleep(Duration::from_secs(CHECK_SECS + 1));
    let t_idle = Instant::now();
    let cpu0 = cpu_time(pid)?;
    std::thread::sleep(params.idle_window);
    r.idle_cpu = cpu_time(pid)?.saturating_sub(cpu0);
    r.idle_window = params.idle_window;
    r.rss_idle = memory(pid)?;
    let busy = vm.env.agent().lines_since(t_idle, &[RECONCILED]);
    if !busy.is_empty() {
        r.notes.push(format!(
            "The accounts idle window was not idle: {} reconcile line(s), first: {}",
            busy.len(),
            busy[0]
        ));
    }
    r.idle_passes = (params.idle_window.as_secs() / CHECK_SECS).max(1);
    let t_rm = Instant::now();
    vm.vm(&format!("rm /home/{changed}/.ssh/authorized_keys"));
    let (t_heal, line3) = reconciled(
        vm,
        t_rm,
        "keys_written=1",
        Duration::from_secs(CHECK_SECS * 3 + 5),
    )?;
    r.heal_line = line3;
    r.heal = t_heal.saturating_duration_since(t_rm);
    if !vm.can_login(new_key, &changed) {
        return Err(format!(
            "{changed} does not log in after the self-healing pass"
        ));
    }
    r.notes.push(format!(
        "Accounts: times are wall time from this process (agent start = the spawn of \
         `nsenter ... guest-agent run`; log lines timed when read from the agent's stderr). \
         took_ms and processes are the agent's own figures for that pass (processes: tools it \
         spawned). sshd was started before the agent. Idle passes log nothing, so their cost \
         is the agent's whole CPU time (utime+stime, {} ms ticks) over the window divided by \
         the passes in it.",
        1000 / clock_ticks()
    ));
    Ok(r)
}

/// The 1,000-user goal: within 10 s.
const USERS_GOAL: Duration = Duration::from_secs(10);

/// The headline rows: 1,000 users from nothing (reconciled, last login).
pub fn rows(r: &AccountsResult) -> Vec<Row> {
    vec![
        row(
            format!("{USERS} metadata users from nothing: agent start -> reconciled"),
            format!(
                "{} ({}; {})",
                fmt_d(r.reconcile),
                describe_pass(&r.reconcile_line),
                field(&r.reconcile_line, "created").map_or("?".into(), |c| format!("created {c}"))
            ),
            "minutes",
            "≤ 10 s",
        )
        .judged(r.reconcile <= USERS_GOAL),
        row(
            format!("  agent start -> ssh login as {} done", user_name(USERS)),
            format!(
                "{} (first user's: {}; both with sudo -n; READY=1 at {})",
                fmt_d(r.last_login),
                fmt_d(r.first_login),
                fmt_d(r.ready)
            ),
            "minutes",
            "≤ 10 s",
        )
        .judged(r.last_login <= USERS_GOAL),
    ]
}

/// Every row `accounts-bench` prints.
pub fn all_rows(r: &AccountsResult) -> Vec<Row> {
    let mut rows = rows(r);
    rows.extend([
        row("  where the time went", r.phases.clone(), "", ""),
        row(
            "  accounts in /etc/passwd, members of the sudo group",
            format!("{}, {}", r.accounts, r.sudoers),
            "",
            "",
        ),
        row(
            format!("  agent RSS after the {USERS}-user reconcile (peak VmHWM)"),
            format!(
                "{} (peak {})",
                fmt_kib(r.rss_after.0),
                fmt_kib(r.rss_after.1)
            ),
            "",
            "",
        ),
    ]);
    rows.extend(detail_rows(r));
    rows.push(rss_idle_row(r));
    rows
}

/// Key change and idle-pass rows.
pub fn detail_rows(r: &AccountsResult) -> Vec<Row> {
    let changed = user_name(CHANGED);
    vec![
        row(
            format!("key change among {USERS} users ({changed}): emulator -> reconciled"),
            format!(
                "{} ({})",
                fmt_d(r.change_reconcile),
                describe_pass(&r.change_line)
            ),
            "",
            "",
        ),
        row(
            "  emulator change -> new key logs in / old key refused",
            format!(
                "{} / {} (each measured after the previous)",
                fmt_d(r.new_key_in),
                fmt_d(r.old_key_out)
            ),
            "",
            "≤ 2 s (removal)",
        )
        .judged(r.old_key_out <= Duration::from_secs(2)),
        row(
            format!("idle self-healing pass ({USERS} users, no change): agent CPU per pass"),
            format!(
                "{} ({} CPU over {} s, {} passes; watcher included)",
                fmt_d(r.idle_cpu / r.idle_passes.max(1) as u32),
                fmt_d(r.idle_cpu),
                r.idle_window.as_secs(),
                r.idle_passes
            ),
            "",
            "",
        ),
        row(
            format!("  self-healing pass (1 deleted file among {USERS})"),
            format!(
                "{}; restored {} after the deletion",
                describe_pass(&r.heal_line),
                fmt_d(r.heal)
            ),
            "",
            format!("within one cycle ({CHECK_SECS} s here)"),
        ),
    ]
}

/// Idle RSS with 1,000 managed users.
pub fn rss_idle_row(r: &AccountsResult) -> Row {
    row(
        format!("daemon RSS idle, {USERS} managed metadata users (peak VmHWM)"),
        format!("{} (peak {})", fmt_kib(r.rss_idle.0), fmt_kib(r.rss_idle.1)),
        "",
        "≤ 8 MiB",
    )
    .judged(r.rss_idle.0 <= 8 * 1024)
}
