//! The deb and rpm packages: built from the workspace, lintian and rpmlint clean, and a full
//! deb round trip (install, run the real daemon, remove, purge) on an isolated copy of this
//! machine that must end exactly as it started. Needs root; CI installs the tools (scripts/test).
//!
//! Building the packages and the isolated copy of the machine: `guest_agent_e2e::packages`.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use guest_agent_e2e::emulator::Emulator;
use guest_agent_e2e::netns::Netns;
use guest_agent_e2e::oslogin;
use guest_agent_e2e::packages::{Build, Isolated, Packages, build, ready, run, text, workspace};
use guest_agent_e2e::process::Proc;

const MULTIARCH_LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/guest-agent.service";
const SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/60-guest-agent.conf";
const SUDOERS_OSLOGIN: &str = "/etc/sudoers.d/guest-agent-oslogin";
const SUDOERS_ACCOUNTS: &str = "/etc/sudoers.d/guest-agent-sudoers";
const CA_FILE: &str = "/etc/ssh/guest-agent/trusted-ca.pub";
const CACHE: &str = "/var/lib/guest-agent/directory.cache";
const STATE: &str = "/var/lib/guest-agent/oslogin-state.json";
const SOCKET: &str = "/run/guest-agent/agent.sock";

/// Builds the release binaries and both packages once per test run.
fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| build(Build::This))
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
        "/usr/bin/guest-agent-sshd",
        "/usr/lib64/libnss_guestagent.so.2",
        "/usr/lib64/security/pam_guestagent.so",
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
        ("usr/bin/guest-agent", "guest-agent"),
        ("usr/bin/guest-agent-sshd", "guest-agent-sshd"),
        ("usr/lib64/libnss_guestagent.so.2", "libnss_guestagent.so"),
        (
            "usr/lib64/security/pam_guestagent.so",
            "libpam_guestagent.so",
        ),
    ] {
        let a = std::fs::read(root.join(installed)).expect("installed file");
        let b = std::fs::read(p.release.join(built)).expect("built file");
        assert!(a == b, "{installed} differs from target/{built}");
    }
    // The packaged module is not the test build with a planted panic (tests/tests/nss_panic.rs;
    // that build holds the panic's message, nss/src/module.rs).
    let module = std::fs::read(root.join("usr/lib64/libnss_guestagent.so.2")).expect("module");
    let planted: &[u8] = b"planted panic (a test build of the module)";
    assert!(
        !module.windows(planted.len()).any(|w| w == planted),
        "the packaged NSS module holds the planted-panic test hook"
    );
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
    iso.run(
        "the PAM module where the agent looks first",
        &format!("test -f {MULTIARCH_LIBDIR}/security/pam_guestagent.so"),
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
    // and it creates her home (which, being a user's, stays after remove and purge). Twice
    // from one parent, as sshd's connection process runs it (the key query, then the
    // signature): the daemon writes grants only at the second run.
    let keys = iso.run(
        "authorized-keys carol",
        "guest-agent authorized-keys carol; guest-agent authorized-keys carol; true",
    );
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
                'AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f %t %k' \
                'AuthorizedKeysCommandUser nobody' '# END guest-agent' >> /etc/ssh/sshd_config
             visudo -c -f {SUDOERS_ACCOUNTS}
             cp /etc/pam.d/sshd /tmp/pam-sshd.before
             {{ printf '%s\\n' '# BEGIN guest-agent (managed; do not edit)' \
                'auth [success=done ignore=ignore default=die] {MULTIARCH_LIBDIR}/security/pam_guestagent.so' \
                'account [success=ok ignore=ignore default=die] {MULTIARCH_LIBDIR}/security/pam_guestagent.so' \
                '# END guest-agent'; cat /tmp/pam-sshd.before; }} > /etc/pam.d/sshd"
        ),
    );

    // Remove: the sshd and nsswitch edits go (they point at files that are gone), the OS
    // Login admins' sudo rules and the runtime directory too; accounts, homes, the metadata
    // users' sudo rule, CA, state and config stay.
    iso.run("dpkg -r", "dpkg -r guest-agent");
    for gone in [
        "/usr/bin/guest-agent",
        "/usr/bin/guest-agent-sshd",
        SSHD_DROPIN,
        "/run/guest-agent",
        // Granted by name: with the agent gone nobody would revoke it.
        SUDOERS_OSLOGIN,
    ] {
        assert!(!iso.exists(gone), "{gone} is still there after dpkg -r");
    }
    assert!(!iso.exists(&format!("{MULTIARCH_LIBDIR}/libnss_guestagent.so.2")));
    // The two-step verification lines named the PAM module, which is gone: they go too, and
    // sshd's PAM stack is byte for byte what it was.
    assert!(!iso.exists(&format!("{MULTIARCH_LIBDIR}/security/pam_guestagent.so")));
    iso.run(
        "PAM stack as before",
        "cmp /etc/pam.d/sshd /tmp/pam-sshd.before",
    );
    for kept in [
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
