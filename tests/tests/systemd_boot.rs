//! The hardened unit under a real systemd: Debian's own `/lib/systemd/systemd` boots as PID 1
//! of a private PID, mount, UTS and cgroup namespace inside the test's network namespace, on an
//! overlay of the host's root whose upper layer is a tmpfs (nothing reaches the host). A
//! minimal target pulls in journald, the agent's unit exactly as shipped, and sshd. Checked:
//! the unit reaches `active (running)` (READY=1), the sandboxed agent creates the metadata user
//! with its authorized_keys and sudo (a real ssh login), writes its state and socket, edits
//! nsswitch.conf and reloads sshd through systemctl (OS Login), is restarted after `kill -9`,
//! pings the watchdog and is restarted when it stalls; then poweroff, and nothing is left.
//!
//! systemd needs a writable cgroup2 hierarchy: the test makes one cgroup of its own under the
//! host's cgroup2 mount (`/sys/fs/cgroup/unified` on hybrid hosts), moves the namespace's
//! holder into it before unsharing the cgroup namespace, mounts cgroup2 inside (rooted there),
//! and removes it at the end. Generators, and everything sysinit.target would pull in but
//! journald (sysctl, modules, binfmt, mounts...), are masked in the overlay; /proc/sys and /sys
//! are read-only. Needs root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use guest_agent_e2e::emulator::Emulator;
use guest_agent_e2e::netns::Netns;
use guest_agent_e2e::process::Proc;
use guest_agent_e2e::require_root;
use serde_json::json;

const USER: &str = "gaboot";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The host's cgroup2 mount (hybrid: `/sys/fs/cgroup/unified`; unified: `/sys/fs/cgroup`).
fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .min_by_key(|p| p.as_os_str().len())
        .expect("no cgroup2 hierarchy mounted on the host: systemd cannot run")
}

/// Runs as PID 1 of the new PID namespace: builds the root, installs the unit, execs systemd.
/// `console`: the device bound over the container's /dev/ttyS0 (a pty the test reads).
fn init_script(dir: &Path, console: &str) -> String {
    let agent = guest_agent_e2e::bins::agent();
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/guest-agent.service");
    format!(
        r#"set -eu
D={dir}
mount -t tmpfs -o mode=755 tmpfs "$D/t"
mkdir "$D/t/upper" "$D/t/work" "$D/t/root"
R="$D/t/root"
mount -t overlay overlay -o lowerdir=/,upperdir="$D/t/upper",workdir="$D/t/work" "$R"
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys" && mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro sysfs "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  IFS=: read name ma mi <<E
$n
E
  mknod -m 666 "$R/dev/$name" c "$ma" "$mi"
done
# The serial console: a pseudo-terminal of the test's, where the unit's BindPaths= finds it.
touch "$R/dev/ttyS0"
mount --bind {console} "$R/dev/ttyS0"
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
# The package's layout.
install -m 755 {agent} "$R/usr/bin/guest-agent"
install -m 644 {unit} "$R/etc/systemd/system/guest-agent.service"
mkdir -p "$R/etc/guest-agent"
install -m 644 "$D/config.toml" "$R/etc/guest-agent/config.toml"
cat > "$R/etc/systemd/system/ga-boot.target" <<T
[Unit]
Description=guest-agent boot test
Wants=systemd-journald.service guest-agent.service ssh.service
T
# Google's guest agent as a VM that ran it has it (a stand-in that only waits), enabled and
# running, with its users list: the agent takes over from it (issue 16).
cat > "$R/etc/systemd/system/google-guest-agent.service" <<T
[Unit]
Description=stand-in for Google's guest agent
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=ga-boot.target
T
mkdir -p "$R/etc/systemd/system/ga-boot.target.wants" "$R/var/lib/google"
ln -s /etc/systemd/system/google-guest-agent.service "$R/etc/systemd/system/ga-boot.target.wants/"
echo nosuchgoogleuser > "$R/var/lib/google/google_users"
# Nothing that would touch the host or slow the boot: no generators (fstab, getty...), and
# of sysinit.target's wants only journald.
mkdir -p "$R/etc/systemd/system-generators"
for g in /lib/systemd/system-generators/*; do
  ln -sf /dev/null "$R/etc/systemd/system-generators/${{g##*/}}"
done
for u in /lib/systemd/system/sysinit.target.wants/* /etc/systemd/system/sysinit.target.wants/* \
         systemd-journald-audit.socket systemd-journal-flush.service; do
  b=${{u##*/}}
  [ "$b" = systemd-journald.service ] && continue
  rm -f "$R/etc/systemd/system/$b"
  ln -s /dev/null "$R/etc/systemd/system/$b"
done
cd "$R"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
ssh-keygen -A >/dev/null
exec env -i container=guest-agent-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --unit=ga-boot.target
"#,
        dir = dir.display(),
        agent = agent.display(),
        unit = unit.display(),
        console = console,
    )
}

/// systemd as PID 1 of its own namespaces. Dropping it kills that PID 1 (the kernel then
/// kills everything in the namespace), the holder, and removes the cgroup.
struct Boot {
    holder: Option<Proc>,
    cgroup: PathBuf,
}

impl Boot {
    fn start(ns: &Netns, dir: &Path, console: &str) -> Boot {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let cgroup = cgroup2_mount().join(format!("ga-boot-{}-{n}", std::process::id()));
        std::fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("mkdir {}: {e}", cgroup.display()));
        let init = dir.join("init.sh");
        std::fs::write(&init, init_script(dir, console)).expect("write init.sh");
        std::fs::create_dir(dir.join("t")).expect("mkdir t");
        // Into our cgroup first, so that the cgroup namespace (and systemd's hierarchy) is
        // rooted there. --kill-child: PID 1 dies with the holder.
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "echo $$ > {procs} && exec ip netns exec {ns} unshare --pid --fork --mount --uts \
             --cgroup --propagation private --kill-child sh {init}",
            procs = cgroup.join("cgroup.procs").display(),
            ns = ns.name(),
            init = init.display(),
        ));
        Boot {
            holder: Some(Proc::spawn("systemd-boot", cmd)),
            cgroup,
        }
    }

    /// PID 1 of the namespace, as the host sees it.
    fn init_pid(&self) -> Option<i32> {
        let h = self.holder.as_ref()?.pid();
        std::fs::read_to_string(format!("/proc/{h}/task/{h}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Whether PID 1 is systemd already (the init script has pivoted and exec'd it).
    fn systemd_running(&self) -> bool {
        self.init_pid()
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
            .is_some_and(|c| c.trim() == "systemd")
    }

    /// `sh -c script` in every namespace of the booted system (never before systemd runs:
    /// until then the mount namespace's root is the host's).
    fn sh(&self, script: &str) -> Output {
        assert!(
            self.systemd_running(),
            "systemd is not running\n{}",
            self.diag()
        );
        let pid = self.init_pid().expect("init pid");
        Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-a", "--", "sh", "-c", script])
            .output()
            .expect("nsenter")
    }

    /// Like [`Boot::sh`], panicking with the diagnostics unless it succeeds; stdout.
    fn run(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.diag()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl show` of some properties, or None while systemctl cannot answer.
    fn show(&self, unit: &str, props: &str) -> Option<HashMap<String, String>> {
        if !self.systemd_running() {
            return None;
        }
        let out = self.sh(&format!("systemctl show -p {props} {unit}"));
        if !out.status.success() {
            return None;
        }
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// Polls `show` until `pred` holds; panics with the diagnostics after `timeout`.
    fn wait_show(
        &self,
        what: &str,
        unit: &str,
        props: &str,
        timeout: Duration,
        pred: impl Fn(&HashMap<String, String>) -> bool,
    ) -> HashMap<String, String> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(p) = self.show(unit, props) {
                if pred(&p) {
                    return p;
                }
                last = Some(p);
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; last {last:?}\n{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `journalctl ARGS -o cat` has a line containing `needle`.
    fn wait_journal(&self, args: &str, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.sh(&format!("journalctl --no-pager -o cat {args}"));
            if String::from_utf8_lossy(&out.stdout).contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in journalctl {args} within {timeout:?}\n{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// systemctl status, the whole journal, and what the init script printed.
    fn diag(&self) -> String {
        let mut s = String::new();
        if self.systemd_running()
            && let Some(pid) = self.init_pid()
        {
            let out = Command::new("nsenter")
                .args(["-t", &pid.to_string(), "-a", "--", "sh", "-c"])
                .arg(
                    "systemctl status --no-pager guest-agent ssh 2>&1; \
                     systemctl list-units --no-pager --failed 2>&1; \
                     journalctl --no-pager -b -o short-monotonic 2>&1 | tail -150",
                )
                .output();
            if let Ok(out) = out {
                s += &String::from_utf8_lossy(&out.stdout);
            }
        } else {
            s += "(systemd not running)\n";
        }
        if let Some(h) = &self.holder {
            s += &h.dump();
        }
        s
    }

    /// Every process still in our cgroup tree.
    fn procs(&self) -> Vec<String> {
        fn walk(dir: &Path, out: &mut Vec<String>) {
            if let Ok(p) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(p.split_whitespace().map(str::to_owned));
            }
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.cgroup, &mut out);
        out
    }

    /// Removes the (empty) cgroup tree, deepest first.
    fn remove_cgroup(&self) -> std::io::Result<()> {
        fn rm(dir: &Path) -> std::io::Result<()> {
            for e in std::fs::read_dir(dir)?.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rm(&e.path())?;
                }
            }
            std::fs::remove_dir(dir)
        }
        if self.cgroup.exists() {
            rm(&self.cgroup)
        } else {
            Ok(())
        }
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        if let Some(pid) = self.init_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        drop(self.holder.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.procs().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = self.remove_cgroup() {
            eprintln!(
                "warning: cannot remove {}: {e} (processes {:?})",
                self.cgroup.display(),
                self.procs()
            );
        }
    }
}

#[test]
fn under_a_real_systemd_the_hardened_unit_runs_restarts_and_keeps_the_watchdog() {
    if !require_root("under_a_real_systemd_the_hardened_unit_runs_restarts_and_keeps_the_watchdog")
    {
        return;
    }
    let t_test = Instant::now();
    assert!(
        Path::new("/lib/systemd/systemd").is_file() && Path::new("/usr/sbin/sshd").is_file(),
        "systemd and openssh-server must be installed"
    );
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(!host_passwd.contains(&format!("\n{USER}:")));

    let dir = tempfile::Builder::new()
        .prefix("ga-boot-")
        .tempdir()
        .expect("tempdir");
    let key = dir.path().join("key");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", USER, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let public = public.trim();
    let ns = Netns::new("boot");
    let state = json!({"tree": {"instance": {"attributes": {
        "ssh-keys": format!("{USER}:{public}")
    }}}});
    let emulator = Emulator::start(&ns, dir.path(), Some(&state));
    std::fs::write(
        dir.path().join("config.toml"),
        "[metadata]\nwatch_timeout_secs = 5\n",
    )
    .unwrap();

    // Boot: the unit, exactly as shipped, reaches active (running), i.e. READY=1.
    let t0 = Instant::now();
    let console = guest_agent_e2e::console::PtyConsole::open();
    let boot = Boot::start(&ns, dir.path(), console.path());
    let props = "ActiveState,SubState,Result,MainPID,NRestarts,ExecMainStartTimestampMonotonic,\
                 ActiveEnterTimestampMonotonic,WatchdogUSec,WatchdogTimestampMonotonic";
    let st = boot.wait_show(
        "guest-agent active (running)",
        "guest-agent",
        props,
        Duration::from_secs(120),
        |p| p["ActiveState"] == "active" && p["SubState"] == "running",
    );
    let booted = t0.elapsed();
    let us = |k: &str| st[k].parse::<u64>().unwrap_or(0);
    let ready =
        us("ActiveEnterTimestampMonotonic").saturating_sub(us("ExecMainStartTimestampMonotonic"));
    eprintln!(
        "systemd booted, guest-agent active (running) after {booted:?}; exec to READY=1: {} ms",
        ready / 1000
    );
    assert_eq!(st["WatchdogUSec"], "1min", "{st:?}");
    // The hardened unit lets the serial console in (BindPaths=, DeviceAllow=): the event
    // lines reach it under systemd too.
    let line = console.expect("guest-agent: READY", Duration::from_secs(60));
    eprintln!("console under systemd: {line}");
    let status = boot.run("systemctl status --no-pager guest-agent");
    assert!(status.contains("Active: active (running)"), "{status}");
    assert!(status.contains("Status: \"running"), "{status}");
    // READY=1 came from the first reconcile, not from the startup deadline (the daemon logs
    // this line only then; its STATUS says so too). The time it took is for the CI log.
    let journal = boot.run("journalctl --no-pager -o cat -u guest-agent");
    assert!(
        journal.contains("first reconcile done; ready"),
        "{journal}\n{}",
        boot.diag()
    );
    assert!(
        status.contains("Status: \"running: metadata received and applied"),
        "{status}"
    );

    // What the sandboxed agent must be able to write: /etc (user, group, sudoers), the home,
    // its state directory and its socket.
    let files = boot.run(&format!(
        "set -e; getent passwd {USER}; test -S /run/guest-agent/agent.sock; \
         test -s /var/lib/guest-agent/state.json; \
         stat -c '%U %a %n' /home/{USER}/.ssh/authorized_keys; \
         cat /home/{USER}/.ssh/authorized_keys; getent group guest-agent-sudoers"
    ));
    assert!(files.contains(&format!("{USER} 600 /home/{USER}/.ssh/authorized_keys")));
    assert!(files.contains(public), "{files}");
    // A real login through the sshd that systemd runs, and the sudo the agent granted.
    boot.wait_show(
        "ssh.service active",
        "ssh",
        "ActiveState",
        Duration::from_secs(60),
        |p| p["ActiveState"] == "active",
    );
    let out = guest_agent_e2e::vm::ssh(&ns, &key, USER, "id -un; sudo -n id -u");
    assert!(
        out.status.success(),
        "ssh {USER}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        boot.diag()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{USER}\n0\n"));
    // Its socket serves root outside the sandbox.
    let token = boot.run("guest-agent token");
    assert!(!token.trim().is_empty());

    // The takeover from the sandbox: Google's unit stopped and disabled through systemctl, its
    // users list removed (ReadWritePaths), the report written.
    boot.wait_journal(
        "-u guest-agent",
        "took over from Google's guest agent",
        Duration::from_secs(60),
    );
    let google = boot.run(
        "systemctl is-active google-guest-agent; systemctl is-enabled google-guest-agent; \
         test -e /var/lib/google/google_users && echo list-present; \
         grep -c '\"status\": \"done\"' /var/lib/guest-agent/takeover.json; true",
    );
    assert_eq!(
        google.split_whitespace().collect::<Vec<_>>(),
        ["inactive", "disabled", "1"],
        "{google}\n{}",
        boot.run("cat /var/lib/guest-agent/takeover.json; journalctl --no-pager -o cat -u guest-agent | tail -20")
    );

    // OS Login: nsswitch.conf and the sshd drop-in edited, sshd reloaded through systemctl
    // from inside the sandbox.
    emulator.set_attribute("instance", "enable-oslogin", "true");
    boot.wait_journal(
        "-u guest-agent",
        "OS Login enabled",
        Duration::from_secs(60),
    );
    boot.wait_journal("-u ssh", "Reloaded ssh.service", Duration::from_secs(60));
    let nss = boot.run("grep -E '^(passwd|group):' /etc/nsswitch.conf; ls /etc/ssh/sshd_config.d");
    // After files (and after systemd, when the image lists it: its accounts win too).
    assert!(
        nss.lines().filter(|l| l.contains(" guestagent")).count() == 2
            && nss.lines().filter(|l| l.contains(':')).all(|l| {
                let items: Vec<&str> = l.split_whitespace().collect();
                let at = |m: &str| items.iter().position(|i| *i == m);
                at("guestagent").is_some_and(|g| {
                    at("files").is_some_and(|f| f < g) && at("systemd").is_none_or(|s| s < g)
                })
            }),
        "{nss}"
    );
    let errors = boot.run("journalctl --no-pager -o cat -p warning -u guest-agent; true");
    assert!(
        !errors.contains("cannot reload") && !errors.contains("ermission denied"),
        "{errors}"
    );
    assert!(!host_passwd.contains(&format!("\n{USER}:")));

    // Restart=always: kill -9 the main process.
    let pid = st["MainPID"].clone();
    boot.run(&format!("kill -9 {pid}"));
    let st = boot.wait_show(
        "restart after kill -9",
        "guest-agent",
        props,
        Duration::from_secs(60),
        |p| {
            p["NRestarts"].parse::<u32>().unwrap_or(0) >= 1
                && p["ActiveState"] == "active"
                && p["SubState"] == "running"
                && p["MainPID"] != pid
        },
    );
    let journal = boot.run("journalctl --no-pager -o cat -u guest-agent");
    assert!(journal.contains("status=9/KILL"), "{journal}");

    // The watchdog, shortened by a runtime drop-in: the agent keeps pinging it...
    boot.run(
        "mkdir -p /run/systemd/system/guest-agent.service.d && \
         printf '[Service]\\nWatchdogSec=1s\\nTimeoutAbortSec=1s\\n' \
           > /run/systemd/system/guest-agent.service.d/50-test-watchdog.conf && \
         systemctl daemon-reload && systemctl restart guest-agent",
    );
    let before = boot.wait_show(
        "restart with WatchdogSec=1s",
        "guest-agent",
        props,
        Duration::from_secs(60),
        |p| p["ActiveState"] == "active" && p["WatchdogUSec"] == "1s",
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = boot.show("guest-agent", props).expect("systemctl show");
    assert_eq!(
        after["MainPID"],
        before["MainPID"],
        "{after:?}\n{}",
        boot.diag()
    );
    assert_eq!(after["NRestarts"], before["NRestarts"], "{after:?}");
    assert_eq!(after["ActiveState"], "active");
    let pinged = after["WatchdogTimestampMonotonic"]
        .parse::<u64>()
        .unwrap_or(0);
    let started = before["ActiveEnterTimestampMonotonic"]
        .parse::<u64>()
        .unwrap_or(0);
    assert!(
        pinged > started + 1_500_000,
        "no recent WATCHDOG=1: {after:?}"
    );
    // ...and when it stalls, systemd aborts and restarts it.
    let pid = after["MainPID"].clone();
    let restarts: u32 = after["NRestarts"].parse().unwrap();
    boot.run(&format!("kill -STOP {pid}"));
    boot.wait_show(
        "restart after a stall",
        "guest-agent",
        props,
        Duration::from_secs(60),
        |p| {
            p["NRestarts"].parse::<u32>().unwrap_or(0) > restarts
                && p["ActiveState"] == "active"
                && p["SubState"] == "running"
                && p["MainPID"] != pid
        },
    );
    let journal = boot.run("journalctl --no-pager -o cat -u guest-agent");
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    assert!(
        journal.contains("Failed with result 'watchdog'"),
        "{journal}"
    );
    eprintln!("restarts seen: {}", st["NRestarts"]);

    // Poweroff: PID 1 exits, every process and mount goes with the namespaces.
    let init = boot.init_pid().expect("init pid");
    let _ = boot.sh("systemctl --no-block poweroff");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{init}")).exists() {
        assert!(
            Instant::now() < deadline,
            "systemd did not power off\n{}",
            boot.diag()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut boot = boot;
    let mut holder = boot.holder.take().expect("holder");
    assert!(
        holder.wait_exit(Duration::from_secs(30)).is_some(),
        "holder still running\n{}",
        holder.dump()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !boot.procs().is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes left: {:?}",
            boot.procs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    boot.remove_cgroup().expect("remove the cgroup");
    assert!(!boot.cgroup.exists());
    let dirs = dir.path().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dirs), "mounts left: {mounts}");
    assert!(
        !std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains(&format!("\n{USER}:"))
    );
    drop(boot);
    drop(emulator);
    drop(ns);
    eprintln!("systemd boot test took {:?}", t_test.elapsed());
}
