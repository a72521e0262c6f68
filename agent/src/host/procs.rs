//! The processes on the host: who runs what (a scan of /proc), and ending a user's processes
//! (`oslogin::sessions`).
//!
//! What a user "runs" is decided from the process table alone, never from a program's name:
//! - the processes whose real or effective uid is the user's, and
//! - the root processes started from them through a privilege tool (`sudo -i`, `sudo CMD`,
//!   `su`): setuid programs the user started (real uid hers, effective root), root
//!   processes with an ancestor of the user's (whatever the audit loginuid says: inside
//!   containers and namespaces pam_loginuid may not set it), and orphaned root processes
//!   (parent 1) whose audit loginuid is the user's (a `sudo` job that daemonized). The
//!   loginuid alone is not enough: pam_loginuid gives it to sshd's privileged session
//!   process too, which goes with the session, not as a root process of the user.
//!
//! Ending is SIGTERM (and SIGCONT, so a stopped process sees it), a wait, then SIGKILL for
//! what is left, each signal sent only after the pid was read again and still is the same
//! process (same start time, same uids): a pid the kernel reused is never signalled. Pid 1,
//! the daemon itself and root processes outside the rule above are never signalled.
//!
//! logind, when it runs (`/run/systemd/seats` exists), is told first (`loginctl
//! terminate-user`); its users are read from `/run/systemd/users/UID` (the files sd-login
//! reads: no D-Bus).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `/proc/PID/loginuid` when no login set it.
pub const UNSET_LOGINUID: u32 = u32::MAX;

/// One process as the scan saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub ruid: u32,
    pub euid: u32,
    /// The audit loginuid ([`UNSET_LOGINUID`] when unset or unreadable).
    pub loginuid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): with the pid, it
    /// names one process.
    pub start: u64,
}

/// Where the effects read and which tool they run.
#[derive(Debug, Clone)]
pub struct ProcPaths {
    pub proc: PathBuf,
    /// Exists when logind runs.
    pub logind_seats: PathBuf,
    /// One file per user with a logind session, named by uid.
    pub logind_users: PathBuf,
    pub loginctl: PathBuf,
}

impl Default for ProcPaths {
    fn default() -> Self {
        ProcPaths {
            proc: "/proc".into(),
            logind_seats: "/run/systemd/seats".into(),
            logind_users: "/run/systemd/users".into(),
            loginctl: "/usr/bin/loginctl".into(),
        }
    }
}

/// Which of a user's processes to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Everything the user runs, root processes through sudo included (login role revoked).
    Everything,
    /// Only the root processes started through sudo (admin role revoked).
    Privileged,
}

/// Parses `/proc/PID/status` (PPid and the real and effective uids).
pub fn parse_status(text: &str) -> Option<(i32, u32, u32)> {
    let mut ppid = None;
    let mut uids = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("PPid:") {
            ppid = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Uid:") {
            let mut it = v.split_whitespace().map(|n| n.parse::<u32>());
            if let (Some(Ok(r)), Some(Ok(e))) = (it.next(), it.next()) {
                uids = Some((r, e));
            }
        }
    }
    let (r, e) = uids?;
    Some((ppid?, r, e))
}

/// The start time (field 22) from `/proc/PID/stat`; the command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_start(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow: field 22 is the 20th of them.
    after.split_whitespace().nth(19)?.parse().ok()
}

fn read_one(proc_dir: &Path, pid: i32) -> Option<ProcInfo> {
    let dir = proc_dir.join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let (ppid, ruid, euid) = parse_status(&status)?;
    let start = parse_start(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
    let loginuid = std::fs::read_to_string(dir.join("loginuid"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(UNSET_LOGINUID);
    Some(ProcInfo {
        pid,
        ppid,
        ruid,
        euid,
        loginuid,
        start,
    })
}

/// Every process now (those that vanish while being read are left out).
pub fn scan(proc_dir: &Path) -> Vec<ProcInfo> {
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| read_one(proc_dir, pid))
        .collect()
}

/// The uids with a logind session now (empty when logind does not run).
pub fn logind_uids(paths: &ProcPaths) -> BTreeSet<u32> {
    if !paths.logind_seats.exists() {
        return BTreeSet::new();
    }
    std::fs::read_dir(&paths.logind_users)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The uids that run something: real, effective and login uids (root left out).
pub fn active_uids(table: &[ProcInfo]) -> BTreeSet<u32> {
    table
        .iter()
        .flat_map(|p| [p.ruid, p.euid, p.loginuid])
        .filter(|&u| u != 0 && u != UNSET_LOGINUID)
        .collect()
}

fn owned_by(p: &ProcInfo, uid: u32) -> bool {
    p.ruid == uid || p.euid == uid
}

fn is_root(p: &ProcInfo) -> bool {
    p.ruid == 0 || p.euid == 0
}

/// Whether root process `p` was started by `uid` through a privilege tool (see the module).
fn privileged_of(by_pid: &HashMap<i32, &ProcInfo>, p: &ProcInfo, uid: u32) -> bool {
    if !is_root(p) {
        return false;
    }
    // A setuid program the user started (sudo itself: real uid hers, effective root).
    if owned_by(p, uid) {
        return true;
    }
    if p.ppid == 1 && p.loginuid == uid {
        return true;
    }
    let mut at = p.ppid;
    // Bounded: a table read while processes come and go may hold a cycle of reused pids.
    for _ in 0..256 {
        let Some(parent) = by_pid.get(&at) else {
            return false;
        };
        if owned_by(parent, uid) {
            return true;
        }
        if parent.pid <= 1 {
            return false;
        }
        at = parent.ppid;
    }
    false
}

/// The processes of `table` to end for `uid` (never pid 1, `protect`, or uid 0 itself).
pub fn select(table: &[ProcInfo], uid: u32, reach: Reach, protect: i32) -> Vec<ProcInfo> {
    if uid == 0 {
        return Vec::new();
    }
    let by_pid: HashMap<i32, &ProcInfo> = table.iter().map(|p| (p.pid, p)).collect();
    table
        .iter()
        .filter(|p| p.pid > 1 && p.pid != protect)
        .filter(|p| {
            let own = reach == Reach::Everything && owned_by(p, uid) && !is_root(p);
            own || privileged_of(&by_pid, p, uid)
        })
        .cloned()
        .collect()
}

/// Sends `sig` to `p` if its pid still names the same process.
fn signal_same(proc_dir: &Path, p: &ProcInfo, sig: Signal) -> bool {
    let now = read_one(proc_dir, p.pid);
    let same = now.is_some_and(|n| n.start == p.start && n.ruid == p.ruid && n.euid == p.euid);
    same && kill(Pid::from_raw(p.pid), sig).is_ok()
}

/// What [`end`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ended {
    /// Distinct processes signalled.
    pub processes: usize,
    /// Of those, how many needed SIGKILL.
    pub killed: usize,
    /// Left after the last SIGKILL round (unkillable: in the kernel, or forking faster).
    pub left: usize,
}

/// Ends `uid`'s processes (`reach`): logind first when `logind` (everything only), then
/// SIGTERM, up to `grace` for them to go, SIGKILL for what is left (new ones included).
pub fn end(paths: &ProcPaths, uid: u32, reach: Reach, grace: Duration, logind: bool) -> Ended {
    let me = std::process::id() as i32;
    if logind && reach == Reach::Everything && paths.logind_seats.exists() {
        let uid_text = uid.to_string();
        match super::command::run(
            &paths.loginctl,
            &["terminate-user", &uid_text],
            super::command::DEFAULT_TIMEOUT,
        ) {
            Ok(out) if out.status.success() => {}
            Ok(out) => tracing::debug!(uid, error = %out.message(), "loginctl terminate-user"),
            Err(e) => tracing::debug!(uid, error = %e, "loginctl terminate-user"),
        }
    }
    let mut seen: HashMap<(i32, u64), bool> = HashMap::new();
    let mut note = |p: &ProcInfo, killed: bool| {
        let e = seen.entry((p.pid, p.start)).or_insert(false);
        *e |= killed;
    };
    let deadline = Instant::now() + grace;
    loop {
        let targets = select(&scan(&paths.proc), uid, reach, me);
        if targets.is_empty() {
            break;
        }
        for p in &targets {
            if signal_same(&paths.proc, p, Signal::SIGTERM) {
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGCONT);
                note(p, false);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut left = 0;
    for _ in 0..20 {
        let targets = select(&scan(&paths.proc), uid, reach, me);
        left = targets.len();
        if targets.is_empty() {
            break;
        }
        for p in &targets {
            if signal_same(&paths.proc, p, Signal::SIGKILL) {
                note(p, true);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ended {
        processes: seen.len(),
        killed: seen.values().filter(|k| **k).count(),
        left,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, uid: u32, loginuid: u32) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            ruid: uid,
            euid: uid,
            loginuid,
            start: pid as u64,
        }
    }

    const U: u32 = 5000;
    const UNSET: u32 = UNSET_LOGINUID;

    /// init, the sshd listener, alice's session (privileged monitor, her sshd, her shell,
    /// a sudo'd root shell and what it runs, a daemonized sudo job), bob's shell, the daemon.
    fn table() -> Vec<ProcInfo> {
        let mut sudo = p(40, 30, 0, U);
        sudo.ruid = U; // a setuid program: real uid the user's, effective root
        vec![
            p(1, 0, 0, UNSET),
            p(10, 1, 0, UNSET), // sshd listener
            p(20, 10, 0, U),    // sshd: alice [priv] (pam_loginuid set it)
            p(21, 20, U, U),    // sshd: alice@pts/0
            p(30, 21, U, U),    // bash
            sudo,               // sudo -i
            p(41, 40, 0, U),    // root bash under sudo
            p(42, 41, 0, U),    // sleep as root
            p(50, 1, U, U),     // nohup job of alice's
            p(60, 1, 0, U),     // a root job of alice's that daemonized
            p(70, 10, 0, 6000), // bob's [priv]
            p(71, 70, 6000, 6000),
            p(80, 1, 0, UNSET),  // the daemon
            p(90, 2, 0, UNSET),  // a kernel thread
            p(91, 10, U, UNSET), // alice's process with no loginuid (not from a PAM login)
        ]
    }

    fn pids(v: Vec<ProcInfo>) -> Vec<i32> {
        let mut v: Vec<i32> = v.into_iter().map(|p| p.pid).collect();
        v.sort();
        v
    }

    #[test]
    fn everything_a_revoked_user_runs() {
        assert_eq!(
            pids(select(&table(), U, Reach::Everything, 80)),
            vec![21, 30, 40, 41, 42, 50, 60, 91],
            "her processes (session or not) and her root processes through sudo; not sshd's privileged monitor, init, the daemon, bob"
        );
    }

    #[test]
    fn only_the_root_processes_of_a_demoted_admin() {
        assert_eq!(
            pids(select(&table(), U, Reach::Privileged, 80)),
            vec![40, 41, 42, 60],
            "sudo and what it runs, and the daemonized root job: her own session goes on"
        );
    }

    #[test]
    fn root_and_protected_processes_are_never_selected() {
        assert!(select(&table(), 0, Reach::Everything, 80).is_empty());
        let mut t = table();
        t.push(p(1, 0, U, U)); // even an init that ran as the user
        let got = pids(select(&t, U, Reach::Everything, 30));
        assert!(!got.contains(&1) && !got.contains(&30), "{got:?}");
    }

    #[test]
    fn a_cycle_in_the_table_ends() {
        let t = vec![p(5, 6, 0, UNSET), p(6, 5, 0, 7)];
        assert!(select(&t, 7, Reach::Everything, 0).is_empty());
    }

    #[test]
    fn active_uids_are_real_effective_and_login_uids() {
        let got: Vec<u32> = active_uids(&table()).into_iter().collect();
        assert_eq!(got, vec![U, 6000]);
    }

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tsleep\nState:\tS\nPPid:\t42\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n";
        assert_eq!(parse_status(status), Some((42, 1000, 0)));
        assert_eq!(parse_status("Name:\tx\n"), None);
        let stat =
            "123 (a b) c)) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start(stat), Some(98765));
    }

    #[test]
    fn scans_this_process() {
        let me = std::process::id() as i32;
        let t = scan(Path::new("/proc"));
        let mine = t.iter().find(|p| p.pid == me).expect("own pid");
        assert_eq!(mine.ruid, nix::unistd::getuid().as_raw());
        assert!(mine.start > 0);
    }
}
