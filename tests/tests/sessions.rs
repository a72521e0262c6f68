//! Ending the sessions of a revoked user (`oslogin.end_revoked_sessions`): real sshd, real
//! sessions (`ssh -tt USER 'sleep 600'` kept running by the test, a `nohup` job started over
//! ssh, a root `sleep` through `sudo -i`), roles revoked at the emulator. Needs root.
//!
//! The VM has no pid namespace: the daemon sees the host's process table. The users' uids
//! (4610xx) are used by no other test, and each test here has its own, so only the test's
//! own processes can match.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guest_agent_e2e::oslogin::{OsLoginVm, keypair, user};
use guest_agent_e2e::process::Proc;
use guest_agent_e2e::require_root;
use serde_json::json;

const ALICE: u32 = 461001;
const BOB: u32 = 461002;
const LOCAL: u32 = 461003;
/// The option-off test's alice.
const ALICE_OFF: u32 = 461011;
/// The test's period (`session_check_secs`).
const EVERY: u64 = 2;
/// Give-up bound for what must happen within `session_check_secs` + 10 s: ten times that.
const BOUND: Duration = Duration::from_secs((EVERY + 10) * 10);

/// (pid, ppid, ruid, comm) of every process on the host.
fn table() -> Vec<(i32, i32, u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        };
        let (Some(ppid), Some(uid), Some(name)) = (field("PPid:"), field("Uid:"), field("Name:"))
        else {
            continue;
        };
        if let (Ok(ppid), Ok(uid)) = (ppid.parse(), uid.parse()) {
            out.push((pid, ppid, uid, name));
        }
    }
    out
}

fn pids_of(uid: u32) -> Vec<i32> {
    table()
        .into_iter()
        .filter(|p| p.2 == uid)
        .map(|p| p.0)
        .collect()
}

/// `sleep` processes running as `uid`.
fn sleeps(uid: u32) -> usize {
    table()
        .iter()
        .filter(|p| p.2 == uid && p.3 == "sleep")
        .count()
}

/// Root processes with an ancestor running as `uid` (what `sudo` started for that user).
fn root_under(uid: u32) -> Vec<(i32, String)> {
    let t = table();
    let by: std::collections::HashMap<i32, &(i32, i32, u32, String)> =
        t.iter().map(|p| (p.0, p)).collect();
    t.iter()
        .filter(|p| p.2 == 0)
        .filter(|p| {
            let mut at = p.1;
            for _ in 0..64 {
                match by.get(&at) {
                    Some(q) if q.2 == uid => return true,
                    Some(q) if q.0 > 1 => at = q.1,
                    _ => return false,
                }
            }
            false
        })
        .map(|p| (p.0, p.3.clone()))
        .collect()
}

/// Kills (by PID) whatever runs as the test's users or as root under them when the test
/// ends, however it ends (a `nohup` job outlives sshd).
struct Reap(&'static [u32]);

impl Drop for Reap {
    fn drop(&mut self) {
        for &uid in self.0 {
            for (pid, _) in root_under(uid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            for pid in pids_of(uid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn wait_until(what: &str, bound: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

/// `ssh [-tt] -i KEY USER@127.0.0.1 COMMAND` from inside the VM's network namespace.
fn ssh_command(vm: &OsLoginVm, key: &Path, user: &str, command: &str, tty: bool) -> Command {
    guest_agent_e2e::vm::ssh_command(&vm.env.ns, &[key], user, command, tty)
}

/// A session kept open by the test (`ssh -tt`), killed by PID when dropped.
fn session(vm: &OsLoginVm, key: &Path, user: &str, command: &str) -> Proc {
    Proc::spawn(
        &format!("ssh {user}"),
        ssh_command(vm, key, user, command, true),
    )
}

/// Authorize requests the emulator saw for `name` with `policy`.
fn authorizes(vm: &OsLoginVm, name: &str, policy: &str) -> usize {
    let email = format!("email={name}%40example.com");
    let policy = format!("policy={policy}");
    vm.env
        .emulator()
        .requests()
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/oslogin/authorize"))
                && r["query"].as_str().is_some_and(|q| {
                    let ps: Vec<&str> = q.split('&').collect();
                    ps.contains(&email.as_str()) && ps.contains(&policy.as_str())
                })
        })
        .count()
}

fn all_authorizes(vm: &OsLoginVm) -> usize {
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

fn roles(vm: &OsLoginVm, name: &str, login: bool, admin: bool) {
    vm.env.emulator().ok(
        "PUT",
        &format!("/oslogin/users/{name}/roles"),
        Some(&json!({"login": login, "admin": admin}).to_string()),
    );
}

struct Keys {
    alice: PathBuf,
    bob: PathBuf,
    local: PathBuf,
}

/// alice (login role), bob (login and admin roles), and a local account `localuser` with its
/// own key (uid above `min_id`, as a metadata-keys user's would be).
/// `uids`: alice's, bob's, the local user's.
fn start(tag: &str, config: &str, uids: [u32; 3]) -> (OsLoginVm, Keys) {
    let mut keys = None;
    let vm = OsLoginVm::start(tag, config, |env| {
        let (alice, alice_pub) = keypair(env.dir(), "alice");
        let (bob, bob_pub) = keypair(env.dir(), "bob");
        let (local, local_pub) = keypair(env.dir(), "local");
        let emu = env.emulator();
        for u in [
            user("alice", uids[0], &alice_pub, true, false),
            user("bob", uids[1], &bob_pub, true, true),
        ] {
            emu.ok("POST", "/oslogin/users", Some(&u.to_string()));
        }
        env.vm().run(&format!(
            "useradd -u {} -m -p '*' localuser && mkdir -p /home/localuser/.ssh && \
             echo '{local_pub}' > /home/localuser/.ssh/authorized_keys && \
             chown -R localuser: /home/localuser/.ssh && chmod 600 /home/localuser/.ssh/authorized_keys",
            uids[2]
        ));
        keys = Some(Keys { alice, bob, local });
    });
    (vm, keys.expect("setup ran"))
}

fn agent_lines(vm: &OsLoginVm, since: Instant, needles: &[&str]) -> Vec<String> {
    vm.env.agent().lines_since(since, needles)
}

#[test]
fn a_revoked_user_loses_every_process_and_a_demoted_admin_its_root_ones() {
    if !require_root("a_revoked_user_loses_every_process_and_a_demoted_admin_its_root_ones") {
        return;
    }
    let _reap = Reap(&[ALICE, BOB, LOCAL]);
    let agent_started = Instant::now();
    let (vm, keys) = start(
        "sessions",
        &format!("end_revoked_sessions = true\nsession_check_secs = {EVERY}\n"),
        [ALICE, BOB, LOCAL],
    );

    // No OS Login user runs anything: no authorize at all over three periods.
    vm.env.emulator().clear_requests();
    std::thread::sleep(Duration::from_secs(3 * EVERY));
    assert_eq!(all_authorizes(&vm), 0, "nobody active: nothing asked");

    // The sessions: alice's terminal and a nohup job; bob's terminal and a root sleep
    // through `sudo -i`; the local user's terminal.
    let mut alice_tty = session(&vm, &keys.alice, "alice", "sleep 600");
    let out = ssh_command(
        &vm,
        &keys.alice,
        "alice",
        "nohup sleep 600 >/dev/null 2>&1 </dev/null &",
        false,
    )
    .output()
    .expect("ssh");
    assert!(
        out.status.success(),
        "alice's nohup job: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.sshd().dump()
    );
    let mut bob_tty = session(&vm, &keys.bob, "bob", "sleep 600");
    let mut bob_root = session(&vm, &keys.bob, "bob", "sudo -i sleep 600");
    let mut local_tty = session(&vm, &keys.local, "localuser", "sleep 600");
    wait_until("the sessions started", Duration::from_secs(60), || {
        sleeps(ALICE) == 2
            && sleeps(BOB) == 1
            && sleeps(LOCAL) == 1
            && root_under(BOB).iter().any(|p| p.1 == "sleep")
    });
    let sleep_pid = table()
        .into_iter()
        .find(|p| p.2 == ALICE && p.3 == "sleep")
        .map(|p| p.0)
        .expect("alice's sleep");
    let loginuid =
        std::fs::read_to_string(format!("/proc/{sleep_pid}/loginuid")).unwrap_or_default();
    eprintln!(
        "loginuid of a session process in the VM: {} (root under bob: {:?})",
        loginuid.trim(),
        root_under(BOB)
    );

    // The budget: one login authorize per active user per period (adminLogin too for bob,
    // who has a sudo rule; not for alice).
    vm.env.emulator().clear_requests();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(4 * EVERY));
    let (a, b, b_admin, a_admin, l) = (
        authorizes(&vm, "alice", "login"),
        authorizes(&vm, "bob", "login"),
        authorizes(&vm, "bob", "adminLogin"),
        authorizes(&vm, "alice", "adminLogin"),
        authorizes(&vm, "localuser", "login"),
    );
    let periods = t0.elapsed().as_secs() / EVERY;
    eprintln!(
        "requests over {periods} periods: alice login {a}, bob login {b}, bob adminLogin {b_admin}, alice adminLogin {a_admin}"
    );
    for (who, n) in [
        ("alice login", a),
        ("bob login", b),
        ("bob adminLogin", b_admin),
    ] {
        assert!(
            (1..=periods as usize + 1).contains(&n),
            "{who}: {n} requests over {periods} periods (one per period)"
        );
    }
    assert_eq!(a_admin, 0, "no sudo rule: the admin role is not asked");
    assert_eq!(l, 0, "a local user is never asked about");

    // An outage during the checks ends nobody.
    let t_outage = Instant::now();
    vm.env.emulator().add_fault(
        json!({"path_prefix": "/computeMetadata/v1/oslogin/authorize",
        "kind": {"kind": "status", "code": 503}, "count": null}),
    );
    vm.env.agent().expect_line(
        t_outage,
        &["session check: metadata service unavailable", "alice"],
        BOUND,
    );
    std::thread::sleep(Duration::from_secs(2 * EVERY));
    assert_eq!(sleeps(ALICE), 2, "an outage kills nobody");
    assert!(alice_tty.is_running() && bob_root.is_running());
    assert!(agent_lines(&vm, agent_started, &["ended the"]).is_empty());
    vm.env.emulator().clear_faults();

    // alice's login role revoked: everything she runs ends, her terminal sees it close.
    let t_revoke = Instant::now();
    roles(&vm, "alice", false, false);
    let took = wait_until("alice's processes ended", BOUND, || {
        pids_of(ALICE).is_empty()
    });
    eprintln!("alice's processes gone {took:?} after the revocation");
    assert!(
        alice_tty.wait_exit(BOUND).is_some(),
        "alice's ssh client sees its session close"
    );
    vm.env.agent().expect_line(
        t_revoke,
        &["ended the processes of a revoked OS Login user", "alice"],
        BOUND,
    );
    let line = agent_lines(&vm, t_revoke, &["ended the processes of a revoked"]).join("\n");
    eprintln!("{line}");
    assert!(
        line.contains("processes=") && !line.contains("processes=0"),
        "{line}"
    );
    // bob and the local user go on.
    assert_eq!((sleeps(BOB), sleeps(LOCAL)), (1, 1));
    assert!(bob_tty.is_running() && bob_root.is_running() && local_tty.is_running());

    // bob's admin role revoked: the sudo rule goes, and his root sleep, not his terminal.
    let t_demote = Instant::now();
    roles(&vm, "bob", true, false);
    wait_until("bob's sudo rule removed", BOUND, || {
        !vm.env
            .vm()
            .read("/etc/sudoers.d/guest-agent-oslogin")
            .is_some_and(|s| s.contains("bob"))
    });
    let (code, _) = vm.vm_run("runuser", &["-u", "bob", "--", "sudo", "-n", "true"]);
    assert_ne!(
        code, 0,
        "sudo -n true as bob fails once the admin role is gone"
    );
    wait_until("bob's root processes ended", BOUND, || {
        root_under(BOB).is_empty()
    });
    assert!(
        bob_root.wait_exit(BOUND).is_some(),
        "bob's sudo session closes"
    );
    vm.env.agent().expect_line(
        t_demote,
        &[
            "ended the root processes a demoted OS Login admin started through sudo",
            "bob",
        ],
        BOUND,
    );
    eprintln!(
        "{}",
        agent_lines(&vm, t_demote, &["ended the root processes"]).join("\n")
    );
    assert_eq!(
        (sleeps(BOB), sleeps(LOCAL)),
        (1, 1),
        "bob's own session goes on"
    );
    assert!(bob_tty.is_running() && local_tty.is_running());
    assert!(
        agent_lines(
            &vm,
            agent_started,
            &["ended the processes of a revoked", "bob"]
        )
        .is_empty()
    );
}

#[test]
fn with_the_option_off_nothing_is_ended() {
    if !require_root("with_the_option_off_nothing_is_ended") {
        return;
    }
    let _reap = Reap(&[ALICE_OFF, ALICE_OFF + 1, ALICE_OFF + 2]);
    let (vm, keys) = start(
        "sessoff",
        &format!("session_check_secs = {EVERY}\n"),
        [ALICE_OFF, ALICE_OFF + 1, ALICE_OFF + 2],
    );
    let mut alice_tty = session(&vm, &keys.alice, "alice", "sleep 600");
    wait_until("alice's session started", Duration::from_secs(60), || {
        sleeps(ALICE_OFF) == 1
    });
    vm.env.emulator().clear_requests();
    let t0 = Instant::now();
    roles(&vm, "alice", false, false);
    std::thread::sleep(Duration::from_secs(4 * EVERY));
    assert_eq!(
        sleeps(ALICE_OFF),
        1,
        "option off: a revoked user's session goes on"
    );
    assert!(alice_tty.is_running());
    assert_eq!(
        all_authorizes(&vm),
        0,
        "option off: no session check asks anything"
    );
    assert!(agent_lines(&vm, t0, &["ended the"]).is_empty());
}
