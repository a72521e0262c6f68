//! The deb and rpm packages: built from the workspace, lintian and rpmlint clean, and a full
//! deb round trip (install, run the real daemon, remove, purge) on an isolated copy of this
//! machine that must end exactly as it started. Needs root; CI installs the tools (scripts/test).
//!
//! Building: the test runs `cargo build --release -p guest-agent -p guest-agent-nss` (a no-op
//! when scripts/test built them before the tests, so it does not compete with the other tests
//! for the CPU), then `cargo deb --no-build` and `cargo generate-rpm` into target/packages/.
//! The packages are therefore always those of the sources under test, never stale files.
//!
//! The isolated copy: in a private mount and PID namespace (inside a network namespace where
//! the metadata emulator answers on 169.254.169.254), an overlay with `/` as its lower layer
//! and its upper layer on a tmpfs, /proc, /dev and /sys, a fresh tmpfs on /run and /tmp, and
//! `chroot` into it. Nothing reaches the host; everything vanishes with the namespace holder,
//! whose death kills every process in the PID namespace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use guest_agent_e2e::emulator::Emulator;
use guest_agent_e2e::netns::Netns;
use guest_agent_e2e::process::Proc;
use guest_agent_e2e::{oslogin, require_root};

const MULTIARCH_LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/guest-agent.service";
const SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/60-guest-agent.conf";
const SUDOERS_OSLOGIN: &str = "/etc/sudoers.d/guest-agent-oslogin";
const SUDOERS_ACCOUNTS: &str = "/etc/sudoers.d/guest-agent-sudoers";
const CA_FILE: &str = "/etc/ssh/guest-agent/trusted-ca.pub";
const CACHE: &str = "/var/lib/guest-agent/directory.cache";
const STATE: &str = "/var/lib/guest-agent/oslogin-state.json";
const SOCKET: &str = "/run/guest-agent/agent.sock";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace dir")
}

/// The target directory holding this test executable (target/debug/deps/packages-HASH).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent()?.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace().join("target"))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `cmd`, prints what it said, panics unless it succeeded.
fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let said = text(&out);
    println!("--- {what}: {}\n{said}", out.status);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{said}",
        out.status
    );
    said
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Root, and every tool present. Without root: a loud skip. As root (CI), a missing tool is a
/// failure: scripts/test installs them.
fn ready(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    let cargo = cargo();
    let checks: [(&str, bool); 7] = [
        (
            "cargo-deb (cargo install --locked cargo-deb)",
            works(&cargo, &["deb", "--version"]),
        ),
        (
            "cargo-generate-rpm (cargo install --locked cargo-generate-rpm)",
            works(&cargo, &["generate-rpm", "--version"]),
        ),
        (
            "lintian (apt-get install lintian)",
            works("lintian", &["--version"]),
        ),
        (
            "rpmlint (apt-get install rpmlint)",
            works("rpmlint", &["--version"]),
        ),
        ("rpm (apt-get install rpm)", works("rpm", &["--version"])),
        ("dpkg", works("dpkg", &["--version"])),
        ("unshare (util-linux)", works("unshare", &["--version"])),
    ];
    let missing: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
    assert!(
        missing.is_empty(),
        "{test}: missing tools {missing:?}; scripts/test installs them"
    );
    true
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
    target: PathBuf,
}

/// Builds the release binaries and both packages once per test run.
fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        let ws = workspace();
        let target = target_dir();
        // Fresh each time, with the tools' own file names (rpmlint checks the rpm's).
        let out = target.join("packages");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).expect("packages dir");
        let dir_arg = format!("{}/", out.display());
        let cargo = |args: &[&str]| {
            let mut c = Command::new(cargo());
            c.current_dir(&ws)
                .env("CARGO_TARGET_DIR", &target)
                .args(args);
            c
        };
        let t0 = Instant::now();
        run(
            "cargo build --release",
            &mut cargo(&[
                "build",
                "--release",
                "--locked",
                "-p",
                "guest-agent",
                "-p",
                "guest-agent-nss",
            ]),
        );
        let t1 = Instant::now();
        run(
            "cargo deb",
            &mut cargo(&["deb", "-p", "guest-agent", "--no-build", "-o", &dir_arg]),
        );
        run(
            "cargo generate-rpm",
            &mut cargo(&["generate-rpm", "-p", "agent", "-o", &dir_arg]),
        );
        let find = |ext: &str| -> PathBuf {
            let found: Vec<PathBuf> = std::fs::read_dir(&out)
                .expect("packages dir")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect();
            assert_eq!(found.len(), 1, "one .{ext} in {}: {found:?}", out.display());
            found.into_iter().next().unwrap()
        };
        let (deb, rpm) = (find("deb"), find("rpm"));
        println!(
            "release build {:.1?}, packages {:.1?}: {} {}",
            t1 - t0,
            t1.elapsed(),
            deb.display(),
            rpm.display()
        );
        Packages { deb, rpm, target }
    })
}

#[test]
fn lintian_and_rpmlint_pass() {
    if !ready("lintian_and_rpmlint_pass") {
        return;
    }
    let p = packages();
    run(
        "dpkg-deb -I",
        Command::new("dpkg-deb").arg("-I").arg(&p.deb),
    );
    run(
        "dpkg-deb -c",
        Command::new("dpkg-deb").arg("-c").arg(&p.deb),
    );
    let t0 = Instant::now();
    run(
        "lintian --fail-on error,warning",
        Command::new("lintian")
            .args(["--fail-on", "error,warning", "--display-info"])
            .arg(&p.deb),
    );
    let filter = workspace().join("packaging/rpmlint.toml");
    let said = run(
        "rpmlint",
        Command::new("rpmlint").arg("-c").arg(&filter).arg(&p.rpm),
    );
    // rpmlint exits 0 on warnings: none is accepted either.
    assert!(said.contains(" 0 errors, 0 warnings"), "rpmlint:\n{said}");
    println!("lint {:.1?}", t0.elapsed());
}

#[test]
fn the_rpm_installs_the_right_files() {
    if !ready("the_rpm_installs_the_right_files") {
        return;
    }
    let p = packages();
    let dir = tempfile::Builder::new()
        .prefix("ga-rpm-")
        .tempdir()
        .expect("tempdir");
    let root = dir.path();
    run("rpm -qpl", Command::new("rpm").arg("-qpl").arg(&p.rpm));
    run(
        "rpm -qp --scripts",
        Command::new("rpm").args(["-qp", "--scripts"]).arg(&p.rpm),
    );
    run(
        "rpm --initdb",
        Command::new("rpm").arg("--root").arg(root).arg("--initdb"),
    );
    run(
        "rpm -i",
        Command::new("rpm")
            .args(["-i", "--nodeps", "--noscripts", "--root"])
            .arg(root)
            .arg(&p.rpm),
    );
    let listed = run(
        "rpm -ql",
        Command::new("rpm")
            .arg("--root")
            .arg(root)
            .args(["-ql", "guest-agent"]),
    );
    let listed: BTreeSet<&str> = listed.lines().collect();
    for want in [
        "/usr/bin/guest-agent",
        "/usr/lib64/libnss_guestagent.so.2",
        "/usr/lib/systemd/system/guest-agent.service",
        "/etc/guest-agent/config.toml",
        "/usr/share/doc/guest-agent/README.md",
        "/usr/share/licenses/guest-agent/LICENSE",
    ] {
        assert!(listed.contains(want), "rpm -ql lacks {want}: {listed:?}");
    }
    let config = run(
        "rpm -qc",
        Command::new("rpm")
            .arg("--root")
            .arg(root)
            .args(["-qc", "guest-agent"]),
    );
    assert_eq!(config.trim(), "/etc/guest-agent/config.toml");
    // The files are the ones built from this workspace.
    for (installed, built) in [
        ("usr/bin/guest-agent", "release/guest-agent"),
        (
            "usr/lib64/libnss_guestagent.so.2",
            "release/libnss_guestagent.so",
        ),
    ] {
        let a = std::fs::read(root.join(installed)).expect("installed file");
        let b = std::fs::read(p.target.join(built)).expect("built file");
        assert!(a == b, "{installed} differs from target/{built}");
    }
}

/// A private mount and PID namespace (in `ns`) holding an overlay copy of `/` to chroot into.
struct Isolated {
    root: String,
    /// PID (in the host's namespace) of the holder's `sleep`, PID 1 of the new PID namespace.
    pid: i32,
    _holder: Proc,
}

impl Isolated {
    fn new(ns: &Netns, dir: &Path) -> Isolated {
        let mut cmd = ns.command(Path::new("unshare"));
        cmd.args([
            "-m",
            "-p",
            "-f",
            "--kill-child",
            "--propagation",
            "private",
            "sleep",
            "3600",
        ]);
        let holder = Proc::spawn("namespace holder", cmd);
        let parent = holder.pid();
        let mut pid = None;
        for _ in 0..400 {
            let children =
                std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                    .unwrap_or_default();
            if let Some(child) = children.split_whitespace().next() {
                let exe = std::fs::read_link(format!("/proc/{child}/exe")).ok();
                if exe.is_some_and(|e| e.ends_with("sleep")) {
                    pid = child.parse().ok();
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = dir.join("iso");
        std::fs::create_dir_all(&t).expect("iso dir");
        let iso = Isolated {
            root: format!("{}/merged", t.display()),
            pid: pid.expect("the holder's sleep"),
            _holder: holder,
        };
        // /run and /tmp are fresh (the host's are on the root filesystem); /run/sshd is there
        // as on a machine where sshd runs (the daemon creates it for `sshd -t` otherwise).
        let out = iso.outside(&format!(
            "set -e; T={t}; mount -t tmpfs -o mode=755 tmpfs $T; mkdir $T/upper $T/work $T/merged
             mount -t overlay overlay -o lowerdir=/,upperdir=$T/upper,workdir=$T/work $T/merged
             M=$T/merged
             mount -t proc proc $M/proc; mount --bind /dev $M/dev; mount --bind /sys $M/sys
             mount -t tmpfs -o mode=755 tmpfs $M/run; mount -t tmpfs -o mode=1777 tmpfs $M/tmp
             mkdir -m 755 $M/run/sshd",
            t = t.display()
        ));
        assert!(out.status.success(), "isolation setup: {}", text(&out));
        iso
    }

    fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-m", "-n", "-p", "--"]);
        c.env_remove("RUST_LOG").env_remove("JOURNAL_STREAM");
        c.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        c.env("LC_ALL", "C");
        c
    }

    /// A script in the namespaces, outside the chroot.
    fn outside(&self, script: &str) -> Output {
        self.enter()
            .args(["sh", "-c", script])
            .output()
            .expect("nsenter")
    }

    /// A command in the chroot.
    fn command(&self, script: &str) -> Command {
        let mut c = self.enter();
        c.args(["chroot", &self.root, "sh", "-c", script]);
        c
    }

    fn sh(&self, script: &str) -> Output {
        self.command(script).output().expect("nsenter chroot")
    }

    /// `script` in the chroot; printed; panics unless it succeeds.
    fn run(&self, what: &str, script: &str) -> String {
        run(what, &mut self.command(script))
    }

    fn exists(&self, path: &str) -> bool {
        self.sh(&format!("test -e {path} || test -L {path}"))
            .status
            .success()
    }

    /// Every path under the trees a package or the daemon may touch, with type, mode and
    /// owner; contents by SHA-256 under /etc, /var, /run, /home and /srv; size and mtime under
    /// /usr and /opt (5 GB: hashing them would take minutes, and dpkg writes no file there
    /// but its own).
    fn snapshot(&self) -> BTreeSet<String> {
        let out = self.sh("set -e; export LC_ALL=C
             H='/etc /var /run /home /srv'
             find /usr /opt $H -xdev -type d -printf 'd %m %u:%g %p\\n'
             find /usr /opt -xdev ! -type d -printf '%y %m %u:%g %s %T@ %p %l\\n'
             find $H -xdev ! -type d -printf '%y %m %u:%g %p %l\\n'
             find $H -xdev -type f -print0 | xargs -0 -r sha256sum | sed 's/^/sha256 /'");
        assert!(
            out.status.success(),
            "snapshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// What differs between two snapshots: (only before, only after), each by path.
fn diff(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = before
        .difference(after)
        .map(|l| format!("- {l}"))
        .chain(after.difference(before).map(|l| format!("+ {l}")))
        .collect();
    out.sort_by(|a, b| path_of(a).cmp(path_of(b)).then(a.cmp(b)));
    out
}

fn path_of(line: &str) -> &str {
    line.split_whitespace()
        .find(|w| w.starts_with('/'))
        .unwrap_or("")
}

/// What any dpkg run changes, whatever the package: the log dpkg appends to, the backup of its
/// database from before the last run (the database itself, status, must come back), and
/// man-db's index, a cache its trigger rewrites (with timestamps) for every package with a
/// man page.
const DPKG_VOLATILE: [&str; 3] = [
    "/var/log/dpkg.log",
    "/var/lib/dpkg/status-old",
    "/var/cache/man/index.db",
];

#[test]
fn deb_install_run_remove_purge_leaves_nothing_behind() {
    if !ready("deb_install_run_remove_purge_leaves_nothing_behind") {
        return;
    }
    let p = packages();
    let t0 = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("ga-pkg-")
        .tempdir()
        .expect("tempdir");
    let ns = Netns::new("pkg");
    let emulator = Emulator::start(&ns, dir.path(), None);
    emulator.set_attribute("project", "enable-oslogin", "TRUE");
    let (_key, public) = oslogin::keypair(dir.path(), "carol");
    emulator.ok(
        "POST",
        "/oslogin/users",
        Some(&oslogin::user("carol", 200001, &public, true, true).to_string()),
    );
    let iso = Isolated::new(&ns, dir.path());
    let out = iso.outside(&format!(
        "cp {} {}/tmp/guest-agent.deb",
        p.deb.display(),
        iso.root
    ));
    assert!(out.status.success(), "copy the deb: {}", text(&out));

    // The machine as it was: a local user with a home (which remove and purge must leave
    // alone) and an up-to-date ld.so cache (the ldconfig trigger rewrites it).
    iso.run(
        "machine",
        "set -e; useradd -m -p '*' -s /bin/sh dave; mkdir -p /home/dave/.ssh
         echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl dave' > /home/dave/.ssh/authorized_keys
         chown -R dave: /home/dave/.ssh; ldconfig",
    );
    let before = iso.snapshot();
    let nsswitch_before = iso.run("nsswitch.conf before", "cat /etc/nsswitch.conf");
    let sshd_before = iso.run("sshd_config before", "cat /etc/ssh/sshd_config");

    // Install.
    iso.run("dpkg -i", "dpkg -i /tmp/guest-agent.deb");
    iso.run("dpkg -L", "dpkg -L guest-agent");
    let wants = iso.run("wants symlink", &format!("readlink {WANTS}"));
    // deb-systemd-helper on Debian 12 links to /lib/systemd/system (the same directory as
    // /usr/lib/systemd/system on a merged-/usr system, where the package puts the unit).
    assert!(
        [
            "/lib/systemd/system/guest-agent.service",
            "/usr/lib/systemd/system/guest-agent.service"
        ]
        .contains(&wants.trim()),
        "{wants}"
    );
    iso.run(
        "the unit the link names",
        &format!("test -f {}", wants.trim()),
    );
    iso.run("version", "guest-agent --version");
    let ldcache = iso.run("ldconfig -p", "ldconfig -p | grep libnss_guestagent.so.2");
    // ld.so.conf lists /lib/x86_64-linux-gnu first; with merged /usr it is the same directory.
    assert!(
        ldcache
            .trim_end()
            .ends_with("x86_64-linux-gnu/libnss_guestagent.so.2"),
        "{ldcache}"
    );
    iso.run(
        "libc is in the multiarch dir",
        &format!("test -e {MULTIARCH_LIBDIR}/libc.so.6"),
    );
    iso.run("getent passwd root", "getent passwd root");
    // The shipped configuration is accepted and means exactly the defaults.
    let shipped = iso.run(
        "check-config",
        "guest-agent --config /etc/guest-agent/config.toml check-config",
    );
    let defaults = iso.run("defaults", "guest-agent --config /dev/null check-config");
    assert_eq!(shipped, defaults, "the shipped config is not all defaults");
    let conffiles = iso.run("conffiles", "cat /var/lib/dpkg/info/guest-agent.conffiles");
    assert_eq!(conffiles.trim(), "/etc/guest-agent/config.toml");
    for edited in ["/etc/nsswitch.conf", "/etc/ssh/sshd_config"] {
        let now = iso.run("unchanged by the install", &format!("cat {edited}"));
        let was = if edited.contains("nsswitch") {
            &nsswitch_before
        } else {
            &sshd_before
        };
        assert_eq!(&now, was, "dpkg -i edited {edited}");
    }

    // The real daemon, as the unit would start it, with OS Login on: it edits nsswitch.conf
    // and sshd's drop-in, writes the sudo rules, the CA file, its state, cache and socket.
    let start = Instant::now();
    let mut agent = Proc::spawn(
        "guest-agent",
        iso.command("echo $$ > /tmp/agent.pid; exec /usr/bin/guest-agent run"),
    );
    agent.expect_line(start, &["OS Login enabled"], Duration::from_secs(20));
    // A login as sshd would ask for it: carol is an admin, so the daemon writes her sudo rule,
    // and it creates her home (which, being a user's, stays after remove and purge).
    let keys = iso.run("authorized-keys carol", "guest-agent authorized-keys carol");
    assert!(
        keys.contains(public.split_whitespace().nth(1).unwrap()),
        "{keys}"
    );
    let want = [SSHD_DROPIN, SUDOERS_OSLOGIN, CA_FILE, CACHE, STATE, SOCKET];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !want.iter().all(|f| iso.exists(f)) {
        assert!(
            Instant::now() < deadline,
            "the daemon did not write {:?}:\n{}",
            want.iter().filter(|f| !iso.exists(f)).collect::<Vec<_>>(),
            agent.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let nss = iso.run(
        "nsswitch.conf (daemon)",
        "grep -E '^(passwd|group):' /etc/nsswitch.conf",
    );
    assert!(nss.contains(" guestagent"), "{nss}");
    let carol = iso.run("getent passwd carol", "getent passwd carol");
    assert!(carol.starts_with("carol:"), "{carol}");
    iso.run(
        "sudo rules",
        &format!("cat {SUDOERS_OSLOGIN} {SSHD_DROPIN}"),
    );
    iso.run(
        "stop the daemon",
        "kill -TERM $(cat /tmp/agent.pid); rm /tmp/agent.pid",
    );
    assert!(
        agent.wait_exit(Duration::from_secs(10)).is_some(),
        "the daemon did not stop:\n{}",
        agent.dump()
    );
    // What the daemon writes in the cases this run does not reach: the metadata accounts'
    // sudo rules, and the marked block in sshd_config (when it has no Include for the drop-in).
    iso.run(
        "plant",
        &format!(
            "set -e; umask 0337
             printf '%s\\n' '# Managed by guest-agent: passwordless sudo for the users and groups the metadata service names.' \
                '# Do not edit: the agent rewrites or removes this file.' \
                '%guest-agent-sudoers ALL=(ALL:ALL) NOPASSWD: ALL' > {SUDOERS_ACCOUNTS}
             umask 022
             printf '%s\\n' '# BEGIN guest-agent (managed; do not edit)' \
                'AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f' \
                'AuthorizedKeysCommandUser nobody' '# END guest-agent' >> /etc/ssh/sshd_config
             visudo -c -f {SUDOERS_ACCOUNTS}"
        ),
    );

    // Remove: the sshd and nsswitch edits go (they point at files that are gone), the
    // runtime directory too; accounts, homes, sudo rules, CA, state and config stay.
    iso.run("dpkg -r", "dpkg -r guest-agent");
    for gone in ["/usr/bin/guest-agent", SSHD_DROPIN, "/run/guest-agent"] {
        assert!(!iso.exists(gone), "{gone} is still there after dpkg -r");
    }
    assert!(!iso.exists(&format!("{MULTIARCH_LIBDIR}/libnss_guestagent.so.2")));
    for kept in [
        SUDOERS_OSLOGIN,
        SUDOERS_ACCOUNTS,
        CA_FILE,
        CACHE,
        "/etc/guest-agent/config.toml",
        "/home/dave/.ssh/authorized_keys",
    ] {
        assert!(iso.exists(kept), "{kept} is gone after dpkg -r");
    }
    assert_eq!(
        iso.run("nsswitch.conf after remove", "cat /etc/nsswitch.conf"),
        nsswitch_before,
        "nsswitch.conf not restored byte for byte"
    );
    assert_eq!(
        iso.run("sshd_config after remove", "cat /etc/ssh/sshd_config"),
        sshd_before,
        "sshd_config not restored byte for byte"
    );
    iso.run("getent passwd root, dave", "getent passwd root dave");
    iso.run("carol's home stays", "test -d /home/carol");
    assert!(
        !iso.sh("getent passwd carol").status.success(),
        "carol still resolves"
    );

    // Purge: everything else the agent wrote; then the machine is as it was.
    iso.run("dpkg -P", "dpkg -P guest-agent");
    let after = iso.snapshot();
    let changes = diff(&before, &after);
    println!("changes after purge, all:\n{}", changes.join("\n"));
    let (homes, left): (Vec<&String>, Vec<&String>) = changes
        .iter()
        .filter(|l| !DPKG_VOLATILE.contains(&path_of(l)))
        .partition(|l| path_of(l) == "/home/carol" || path_of(l).starts_with("/home/carol/"));
    assert!(
        homes.iter().all(|l| l.starts_with('+')) && !homes.is_empty(),
        "carol's home, created at her login, must stay: {homes:?}"
    );
    assert!(
        left.is_empty(),
        "left behind or changed after purge:\n{}",
        left.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "deb round trip {:.1?} ({} paths compared)",
        t0.elapsed(),
        before.len()
    );
    drop(iso);
    drop(emulator);
}
