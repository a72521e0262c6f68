//! What open sessions cost an idle VM when revoked users' sessions are ended
//! (`oslogin.end_revoked_sessions = true`, `session_check_secs` at its default 30 s), for
//! `bench-report`: one OS Login VM of its own (real sshd, ten OS Login users), running beside
//! the other parts. Two windows: one user with an open `ssh -tt USER 'sleep 600'`, then ten
//! users with one each. In each window the `oslogin/authorize` requests are counted at the
//! emulator and scaled to an hour; the row adds them to the idle agent's own figure (the
//! 0-session row of [`super::service`]). With the option off (the default) an open session
//! costs nothing.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Row, row};
use crate::oslogin::{OsLoginVm, keypair, user};
use crate::process::Proc;

#[derive(Debug, Clone, Default)]
pub struct SessionsResult {
    pub window: Duration,
    /// Authorize requests in the window with one and with ten open sessions.
    pub one: usize,
    pub ten: usize,
}

pub struct IdleSessions {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<Result<SessionsResult, String>>,
}

impl IdleSessions {
    /// Starts the VM and the sessions in a thread of its own; each window lasts `window`
    /// (the second starts after the first), or until [`IdleSessions::finish`] if that is later.
    pub fn start(record: &Path, window: Duration) -> Result<IdleSessions, String> {
        let mut keys: Vec<PathBuf> = Vec::new();
        let vm = OsLoginVm::start("sbench", "end_revoked_sessions = true\n", |env| {
            for i in 0..10u32 {
                let name = format!("s{i}");
                let (k, p) = keypair(env.dir(), &name);
                env.emulator().ok(
                    "POST",
                    "/oslogin/users",
                    Some(&user(&name, 470_000 + i, &p, true, false).to_string()),
                );
                keys.push(k);
            }
        });
        super::record_dir(record, &vm.env)?;
        let (stop, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || measure(&vm, &keys, window, rx));
        Ok(IdleSessions { stop, handle })
    }

    pub fn finish(self) -> Result<SessionsResult, String> {
        let _ = self.stop.send(());
        self.handle
            .join()
            .map_err(|_| "the sessions measurement panicked".to_owned())?
    }
}

fn ssh_session(vm: &OsLoginVm, key: &Path, name: &str) -> Proc {
    let c = crate::vm::ssh_command(
        &vm.env.ns,
        &[key],
        name,
        "echo session-open; sleep 600",
        true,
    );
    Proc::spawn(&format!("ssh {name}"), c)
}

fn authorizes(vm: &OsLoginVm) -> usize {
    vm.env
        .emulator()
        .requests()
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/oslogin/authorize"))
        })
        .count()
}

/// Opens sessions for `keys[..n]` (the ones not open yet) and waits until each printed its
/// line.
fn open(vm: &OsLoginVm, keys: &[PathBuf], open: &mut Vec<Proc>, n: usize) -> Result<(), String> {
    for (i, key) in keys.iter().enumerate().take(n).skip(open.len()) {
        let t = Instant::now();
        let p = ssh_session(vm, key, &format!("s{i}"));
        p.wait_for_line(t, &["session-open"], Duration::from_secs(60))
            .ok_or_else(|| format!("s{i}'s session did not open:\n{}", p.dump()))?;
        open.push(p);
    }
    Ok(())
}

fn window_count(
    vm: &OsLoginVm,
    window: Duration,
    until: &mpsc::Receiver<()>,
    wait_stop: bool,
) -> usize {
    // The logins' own authorizes land first; then the window.
    std::thread::sleep(Duration::from_secs(2));
    vm.env.emulator().clear_requests();
    let start = Instant::now();
    if wait_stop {
        let _ = until.recv();
    }
    if let Some(rest) = window.checked_sub(start.elapsed()) {
        std::thread::sleep(rest);
    }
    authorizes(vm)
}

fn measure(
    vm: &OsLoginVm,
    keys: &[PathBuf],
    window: Duration,
    stop: mpsc::Receiver<()>,
) -> Result<SessionsResult, String> {
    let mut sessions = Vec::new();
    open(vm, keys, &mut sessions, 1)?;
    let one = window_count(vm, window, &stop, false);
    open(vm, keys, &mut sessions, 10)?;
    let ten = window_count(vm, window, &stop, true);
    drop(sessions); // killed by PID
    Ok(SessionsResult { window, one, ten })
}

/// The row, beside the idle agent's own requests per hour (`base`).
pub fn rows(r: &SessionsResult, base: f64) -> Vec<Row> {
    let hour = |n: usize| n as f64 * 3600.0 / r.window.as_secs_f64().max(1.0);
    vec![row(
        "  with end_revoked_sessions on (checks every 30 s): 1 / 10 open sessions",
        format!(
            "{:.0} / {:.0} per hour (the idle agent's {base:.0} + authorize {:.0} / {:.0}: {} / {} counted in {:.0} s windows)",
            base + hour(r.one),
            base + hour(r.ten),
            hour(r.one),
            hour(r.ten),
            r.one,
            r.ten,
            r.window.as_secs_f64()
        ),
        "",
        "one authorize per user per check",
    )]
}
