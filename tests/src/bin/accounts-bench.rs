//! accounts-bench: what metadata `ssh-keys` users cost with guest-agent at scale (1,000
//! users), end to end, beside the incumbent's figures and our goals.
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/accounts-bench
//! ```
//!
//! Needs root (network and mount namespaces, a real sshd). It finds `guest-agent`,
//! `mds-emulator` and `libnss_guestagent.so` next to itself (`target/<profile>/`), starts one
//! metadata-keys "VM" of the end-to-end harness (emulator, a real sshd, the agent with OS Login
//! off in a private mount namespace) and prints one table, measured in this one run:
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
//!
//! It takes well under a minute. Everything it starts is stopped and deleted before it exits:
//! the harness's Drop impls do that, and because release builds abort on panic (no Drop), the
//! measuring runs in a child process while this one, a child subreaper, kills by PID whatever
//! that child left behind and deletes its network namespaces and temporary directory.

use std::path::Path;
use std::time::{Duration, Instant};

use guest_agent_e2e::AgentOptions;
use guest_agent_e2e::TestEnv;
use guest_agent_e2e::accounts::{KeysVm, TEST_CONFIG, keypair_of};
use guest_agent_e2e::bench::{Bench, Row, print_table, row};

/// Set (to a file to record the temporary directory in) in the measuring child.
const WORKER_ENV: &str = "ACCOUNTS_BENCH_WORKER";
/// Namespace tag: the harness names namespaces `ga-<tag>-<pid>-<n>`.
const TAG: &str = "abench";
/// The supervisor of the measuring child.
const BENCH: Bench = Bench {
    name: "accounts-bench",
    worker_env: WORKER_ENV,
    tag: TAG,
};
/// Metadata users.
const USERS: usize = 1000;
/// The user whose key changes in step 2 (and whose file is deleted in step 3).
const CHANGED: usize = 500;
/// The agent's self-healing interval in this run.
const CHECK_SECS: u64 = 2;
/// The idle window over which the agent's CPU time is read.
const IDLE_WINDOW: Duration = Duration::from_secs(12);
const RECONCILED: &str = "metadata accounts reconciled";

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "accounts-bench: needs root (network and mount namespaces, a private sshd); \
             run it with sudo"
        );
        std::process::exit(1);
    }
    let code = match std::env::var_os(WORKER_ENV) {
        Some(record) => match worker(Path::new(&record)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("accounts-bench: {e}");
                1
            }
        },
        None => BENCH.supervise(),
    };
    // Every TestEnv/KeysVm lived inside worker() and is dropped by now.
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------
// Measuring.

/// A duration, coarser than [`guest_agent_e2e::bench::fmt_d`]: `1.23 s`, `123 ms`, `12 ms`,
/// `1.2 ms`.
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

fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
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
fn field(line: &str, name: &str) -> Option<String> {
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

/// The agent's process id: the harness starts it through `nsenter`, which execs it (no pid
/// namespace); otherwise its child.
fn agent_pid(env: &TestEnv) -> Result<i32, String> {
    let pid = env.agent().pid();
    let is_agent = |p: i32| {
        std::fs::read_link(format!("/proc/{p}/exe"))
            .is_ok_and(|e| e.to_string_lossy().ends_with("guest-agent"))
    };
    if is_agent(pid) {
        return Ok(pid);
    }
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map_err(|e| format!("/proc/{pid}: {e}"))?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|&c| is_agent(c))
        .ok_or_else(|| format!("no guest-agent process under pid {pid}"))
}

/// (VmRSS, VmHWM) in KiB.
fn memory(pid: i32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((get("VmRSS:")?, get("VmHWM:")?))
}

/// The process's CPU time so far (user + system, all threads, exited ones included).
fn cpu_time(pid: i32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let rest = &stat[stat.rfind(')').ok_or("bad stat")? + 1..];
    // After the ')': state is field 3 of stat(5); utime and stime are fields 14 and 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let (Some(u), Some(s)) = (ticks(14), ticks(15)) else {
        return Err(format!("/proc/{pid}/stat: no utime/stime"));
    };
    // SAFETY: sysconf with a constant argument.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos((u + s) * 1_000_000_000 / hz))
}

fn worker(record: &Path) -> Result<(), String> {
    let agent_bin = guest_agent_e2e::bins::agent();
    let profile = agent_bin
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let t_all = Instant::now();
    eprintln!(
        "accounts-bench: starting the VM (emulator, sshd) with {USERS} users in ssh-keys ..."
    );
    let env = TestEnv::with_emulator(TAG, None);
    std::fs::write(record, env.dir().to_string_lossy().as_bytes())
        .map_err(|e| format!("{}: {e}", record.display()))?;
    let (key, public) = keypair_of(env.dir(), "shared", "ed25519");
    let (new_key, new_public) = keypair_of(env.dir(), "changed", "ed25519");
    env.emulator()
        .set_attribute("instance", "ssh-keys", &ssh_keys(&public, None));
    let sshd = guest_agent_e2e::vm::start_sshd(env.vm(), &[]);
    let mut vm = KeysVm {
        sshd: Some(sshd),
        env,
    };
    let result = measure(&mut vm, (&key, &new_key, &public, &new_public));
    let (rows, notes) = match result {
        Ok(v) => v,
        Err(e) => return Err(format!("{e}\n{}", vm.dump())),
    };
    drop(vm);
    print_table(
        &format!(
            "accounts-bench: guest-agent ({profile} build, {}) with {USERS} metadata ssh-keys \
             users and a real sshd; measured in {:.0} s",
            agent_bin.display(),
            t_all.elapsed().as_secs_f64()
        ),
        &rows,
    );
    println!();
    for n in notes {
        println!("{n}");
    }
    Ok(())
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

type Measured = (Vec<Row>, Vec<String>);

fn measure(
    vm: &mut KeysVm,
    (key, new_key, public, new_public): (&Path, &Path, &str, &str),
) -> Result<Measured, String> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let first = user_name(1);
    let last = user_name(USERS);
    let changed = user_name(CHANGED);

    // 1. 1,000 users from nothing.
    eprintln!("accounts-bench: 1/3 {USERS} users from nothing ...");
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
    let ready = ready.saturating_duration_since(t0);
    let agent = vm.env.agent();
    let line = agent
        .lines_since(t0, &created_line)
        .into_iter()
        .next()
        .unwrap_or_default();
    // Where the time went, from when the agent's lines were read.
    let seen = |needle: &str| agent.wait_for_line(t0, &[needle], Duration::ZERO);
    let phases = match (seen("metadata received"), seen("metadata users created")) {
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
    let (rss_after, hwm_after) = memory(pid)?;
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
    let t_first = t0.elapsed();
    login(key, &last)?;
    let t_last = t0.elapsed();
    let accounts = vm
        .vm("grep -c '^user[0-9]*:' /etc/passwd")
        .trim()
        .to_owned();
    let sudoers = vm
        .vm("getent group guest-agent-sudoers | cut -d: -f4 | tr ',' '\\n' | grep -c .")
        .trim()
        .to_owned();
    let spent = t_rec.saturating_duration_since(t0);
    rows.push(row(
        format!("1. {USERS} users, agent start -> '{RECONCILED}'"),
        format!(
            "{} ({}; {})",
            fmt_d(spent),
            describe_pass(&line),
            field(&line, "created").map_or("?".into(), |c| format!("created {c}"))
        ),
        "minutes",
        "≤ 10 s",
    ));
    rows.push(row("   where the time went", phases, "", ""));
    rows.push(row(
        "   agent start -> READY=1",
        format!("{} (startup_deadline_secs: 10)", fmt_d(ready)),
        "",
        "",
    ));
    rows.push(row(
        format!("   agent start -> ssh login as {last} done (first: {first})"),
        format!(
            "{} ({first}: {}; both with sudo -n)",
            fmt_d(t_last),
            fmt_d(t_first)
        ),
        "minutes",
        "≤ 10 s",
    ));
    rows.push(row(
        "   accounts in /etc/passwd, members of the sudo group",
        format!("{accounts}, {sudoers}"),
        "",
        "",
    ));
    rows.push(row(
        "   agent RSS after the reconcile (VmRSS; peak VmHWM)",
        format!("{} (peak {})", fmt_kib(rss_after), fmt_kib(hwm_after)),
        "",
        "",
    ));

    // 2. One key change among 1,000 users.
    eprintln!("accounts-bench: 2/3 one key change among {USERS} users ...");
    // Let the first passes settle: nothing in flight when the change is made.
    std::thread::sleep(Duration::from_millis(500));
    let t_change = Instant::now();
    vm.set_keys(&ssh_keys(public, Some((CHANGED, new_public))));
    let (t_rec2, line2) = reconciled(vm, t_change, "", Duration::from_secs(60))?;
    let new_in = vm
        .wait_login(new_key, &changed, true, Duration::from_secs(30))
        .map(|_| t_change.elapsed())
        .ok_or_else(|| format!("the new key of {changed} does not log in"))?;
    let old_out = vm
        .wait_login(key, &changed, false, Duration::from_secs(30))
        .map(|_| t_change.elapsed())
        .ok_or_else(|| format!("the old key of {changed} still logs in"))?;
    if !vm.can_login(key, &last) {
        return Err(format!("{last} no longer logs in after the change"));
    }
    rows.push(row(
        format!("2. key change ({changed}), emulator -> '{RECONCILED}'"),
        format!(
            "{} ({})",
            fmt_d(t_rec2.saturating_duration_since(t_change)),
            describe_pass(&line2)
        ),
        "",
        "",
    ));
    rows.push(row(
        "   emulator change -> new key logs in / old key refused",
        format!(
            "{} / {} (each measured after the previous)",
            fmt_d(new_in),
            fmt_d(old_out)
        ),
        "",
        "≤ 2 s (removal)",
    ));

    // 3. Idle.
    eprintln!(
        "accounts-bench: 3/3 idle with {USERS} users ({} s of passes every {CHECK_SECS} s) ...",
        IDLE_WINDOW.as_secs()
    );
    std::thread::sleep(Duration::from_secs(CHECK_SECS + 1));
    let t_idle = Instant::now();
    let cpu0 = cpu_time(pid)?;
    std::thread::sleep(IDLE_WINDOW);
    let cpu = cpu_time(pid)?.saturating_sub(cpu0);
    let (rss_idle, hwm_idle) = memory(pid)?;
    let busy = vm.env.agent().lines_since(t_idle, &[RECONCILED]);
    if !busy.is_empty() {
        notes.push(format!(
            "3. the idle window was not idle: {} reconcile line(s), first: {}",
            busy.len(),
            busy[0]
        ));
    }
    let passes = (IDLE_WINDOW.as_secs() / CHECK_SECS).max(1);
    rows.push(row(
        format!("3. idle pass ({USERS} users, no change): agent CPU per pass"),
        format!(
            "{} ({} CPU over {} s, {passes} passes; watcher included)",
            fmt_d(cpu / passes as u32),
            fmt_d(cpu),
            IDLE_WINDOW.as_secs()
        ),
        "",
        "",
    ));
    let t_rm = Instant::now();
    vm.vm(&format!("rm /home/{changed}/.ssh/authorized_keys"));
    let (t_heal, line3) = reconciled(
        vm,
        t_rm,
        "keys_written=1",
        Duration::from_secs(CHECK_SECS * 3 + 5),
    )?;
    rows.push(row(
        format!("   self-healing pass (1 deleted file among {USERS})"),
        format!(
            "{}; restored {} after the deletion",
            describe_pass(&line3),
            fmt_d(t_heal.saturating_duration_since(t_rm))
        ),
        "",
        format!("within one cycle ({CHECK_SECS} s here)"),
    ));
    if !vm.can_login(new_key, &changed) {
        return Err(format!(
            "{changed} does not log in after the self-healing pass"
        ));
    }
    rows.push(row(
        "   agent RSS idle (VmRSS; peak VmHWM)",
        format!("{} (peak {})", fmt_kib(rss_idle), fmt_kib(hwm_idle)),
        "",
        "≤ 8 MiB RSS",
    ));
    notes.push(format!(
        "Times are wall time from this process (agent start = the spawn of `nsenter ... \
         guest-agent run`; log lines timed when read from the agent's stderr). took_ms and \
         processes are the agent's own figures for that pass (processes: tools it spawned). \
         sshd was started before the agent. Idle passes log nothing, so their cost is the \
         agent's whole CPU time (utime+stime, {} ms ticks) over the window divided by the \
         passes in it.",
        // SAFETY: sysconf with a constant argument.
        1000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1)
    ));
    Ok((rows, notes))
}
