//! Upgrades and downgrades in place, with users logging in throughout.
//!
//! Two releases built from this tree (`guest_agent_e2e::packages::Build`): N (the workspace as
//! it is) and N+1 (package version 0.1.1, built with the `next-version` flag: directory cache
//! format 5 instead of 4, socket protocol 2 instead of 1, state files 3 instead of 2). On an
//! isolated copy of this machine (private namespaces, overlay of `/`, see `packages.rs`), with
//! the metadata emulator in the network namespace:
//!
//! 1. `dpkg -i` N; the real daemon started from `/usr/bin/guest-agent`, a real sshd; OS Login
//!    on (carol: key and 1-hour certificate, admin) or metadata keys (dave, in `ssh-keys`).
//! 2. A long-running process (perl) that loaded N's NSS module looks users up every 50 ms for
//!    the whole test; a second thread logs in over ssh (each kind of login in turn) and runs
//!    `getent` in new processes; every result is counted.
//! 3. `dpkg -i` N+1. This test has no systemd (tests/tests/systemd_boot.rs boots the unit
//!    under one), so it plays the part of the postinst's `deb-systemd-invoke restart`: after
//!    dpkg returns it stops the old daemon (SIGTERM) and starts the new binary. Between the
//!    two, the new helper and the new module meet the old daemon: checked on purpose there (a
//!    login, which the new helper decides alone, and a lookup of a user the cache does not
//!    hold, which the new module asks again in the old protocol version).
//! 4. Then the new daemon with the old module still mapped in the perl process (its
//!    `/proc/PID/maps` shows the replaced file as deleted) and the new cache format it cannot
//!    read: it reads the file N+1 writes in N's format beside it (`directory.v4.cache`) and
//!    answers right, also while the daemon restarts. (Before that file existed, this test
//!    caught an old-module lookup failing in the restart window: the module could neither read
//!    the cache nor reach the daemon.)
//! 5. `dpkg -i` N over N+1 (the downgrade): before the restart, N's helper and N's module are
//!    answered by N+1's daemon in version 1 (checked on purpose: no helper deciding alone, a
//!    user the cache does not hold found); then the same restart; N reads the newer state
//!    files with the fields it knows and rewrites the cache in its format.
//!
//! After each step: users, keys and sudo rules are what they were, the state files carry the
//! version of the daemon that wrote them. At the end: every login and lookup of the whole run
//! succeeded (0 failures, counted). The rpm: `rpm -i` N, `rpm -U` N+1, `rpm -U --oldpackage`
//! N in the same kind of isolated root, scripts run for real: files are each release's,
//! `%post`/`%preun`/`%postun` of an upgrade keep the daemon's edits and the configuration.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use guest_agent_e2e::emulator::Emulator;
use guest_agent_e2e::netns::Netns;
use guest_agent_e2e::oslogin;
use guest_agent_e2e::packages::{Build, Isolated, NEXT_VERSION, Packages, build, ready, text};
use guest_agent_e2e::process::Proc;
use serde_json::json;

const CACHE: &str = "/var/lib/guest-agent/directory.cache";
/// N+1's copy of the directory in N's format (`cache::COMPAT_VERSIONS`).
const COMPAT_CACHE: &str = "/var/lib/guest-agent/directory.v4.cache";
const OSLOGIN_STATE: &str = "/var/lib/guest-agent/oslogin-state.json";
const ACCOUNTS_STATE: &str = "/var/lib/guest-agent/state.json";
const SUDOERS_OSLOGIN: &str = "/etc/sudoers.d/guest-agent-oslogin";
const SUDOERS_ACCOUNTS: &str = "/etc/sudoers.d/guest-agent-sudoers";

/// Both releases, built once per test run (the second build runs while the first test uses
/// the first).
fn releases() -> &'static (Packages, Packages) {
    static BUILT: OnceLock<(Packages, Packages)> = OnceLock::new();
    BUILT.get_or_init(|| (build(Build::This), build(Build::Next)))
}

/// The daemon as systemd would run it (the package's binary), in the isolated root.
struct Daemon<'a> {
    iso: &'a Isolated,
    proc: Option<Proc>,
}

impl<'a> Daemon<'a> {
    fn start(iso: &'a Isolated) -> Daemon<'a> {
        let mut d = Daemon { iso, proc: None };
        d.restart();
        d
    }

    /// Stops the running daemon (SIGTERM, as `systemctl restart`) and starts
    /// `/usr/bin/guest-agent` as it is on disk now; waits for its first reconcile.
    fn restart(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let out = self
                .iso
                .sh("kill -TERM $(cat /tmp/agent.pid) && rm /tmp/agent.pid");
            assert!(out.status.success(), "stop the daemon: {}", text(&out));
            assert!(
                p.wait_exit(Duration::from_secs(30)).is_some(),
                "the daemon did not stop:\n{}",
                p.dump()
            );
        }
        let t0 = Instant::now();
        let p = Proc::spawn(
            "guest-agent",
            self.iso
                .command("echo $$ > /tmp/agent.pid; RUST_LOG=info,guest_agent::socket=debug exec /usr/bin/guest-agent run"),
        );
        p.expect_line(t0, &["first reconcile done"], Duration::from_secs(60));
        self.proc = Some(p);
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().expect("daemon running")
    }
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What a login loop and the lookups counted.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    failed: Vec<String>,
}

/// One ssh login; Ok(()) when it ran `id -un` as `user`.
fn login(ns: &Netns, key: &Path, user: &str) -> Result<(), String> {
    let out = guest_agent_e2e::vm::ssh(ns, key, user, "id -un");
    let said = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && said.trim() == user {
        Ok(())
    } else {
        Err(format!("{}: {}", out.status, text(&out).trim()))
    }
}

/// The logins and new-process lookups a loop goes through, in turn.
struct Work {
    logins: Vec<(String, PathBuf, String)>,
    lookups: Vec<String>,
}

/// Runs the logins and lookups of `work` in turn until `stop`, counting.
fn login_loop(ns: &Netns, iso: &Isolated, work: &Work, stop: &AtomicBool, tally: &Mutex<Tally>) {
    {
        while !stop.load(Ordering::SeqCst) {
            for (what, key, user) in &work.logins {
                let r = login(ns, key, user);
                let mut t = tally.lock().unwrap();
                match r {
                    Ok(()) => t.ok += 1,
                    Err(e) => t.failed.push(format!("login {what}: {e}")),
                }
            }
            for name in &work.lookups {
                let out = iso.sh(&format!("getent passwd {name}"));
                let mut t = tally.lock().unwrap();
                if out.status.success() {
                    t.ok += 1;
                } else {
                    t.failed
                        .push(format!("getent passwd {name}: {}", text(&out)));
                }
            }
        }
    }
}

/// A perl process in the isolated root that looks `names` up every 50 ms until
/// /tmp/lookups-NAME.stop exists, writing "OK FAILED" counts and its failures to
/// /tmp/lookups-NAME. It loads the NSS module on disk when it starts, and keeps it.
fn spawn_resident(iso: &Isolated, tag: &str, names: &[&str]) -> Proc {
    let names = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",");
    let script = format!(
        r#"$|=1; my ($ok, $fail, @why) = (0, 0); my $out = "/tmp/lookups-{tag}";
        open(P, ">", "/tmp/lookups-{tag}.pid"); print P "$$\n"; close P;
        while (!-e "$out.stop") {{
          for my $n ({names}) {{
            my @p = getpwnam($n);
            if (@p && $p[0] eq $n) {{ $ok++ }} else {{ $fail++; push @why, $n }}
            my @u = @p ? getpwuid($p[2]) : ();
            if (@u && $u[0] eq $n) {{ $ok++ }} elsif (@p) {{ $fail++; push @why, "uid of $n" }}
          }}
          open(F, ">", "$out.tmp"); print F "$ok $fail @why[-5..-1]\n"; close F;
          rename("$out.tmp", $out);
          select(undef, undef, undef, 0.05);
        }}"#
    );
    let p = Proc::spawn(&format!("lookups {tag}"), {
        let mut c = iso.command("exec perl -e \"$GA_SCRIPT\"");
        c.env("GA_SCRIPT", script);
        c
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !iso.exists(&format!("/tmp/lookups-{tag}")) {
        assert!(Instant::now() < deadline, "perl lookups did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// The resident process's (ok, failed, last failures).
fn resident_counts(iso: &Isolated, tag: &str) -> (u64, u64, String) {
    let out = iso.sh(&format!("cat /tmp/lookups-{tag}"));
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let mut w = s.split_whitespace();
    let ok = w.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let failed = w.next().and_then(|x| x.parse().ok()).unwrap_or(u64::MAX);
    (ok, failed, s)
}

/// Waits until the resident process has done at least `more` further lookups (so a check
/// after a step really covers lookups made after it).
fn resident_progress(iso: &Isolated, tag: &str, more: u64) {
    let (start, _, _) = resident_counts(iso, tag);
    let deadline = Instant::now() + Duration::from_secs(60);
    while resident_counts(iso, tag).0 < start + more {
        assert!(
            Instant::now() < deadline,
            "resident lookups stalled: {:?}",
            resident_counts(iso, tag)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The module file a process has mapped, as /proc/PID/maps names it.
fn mapped_module(iso: &Isolated, tag: &str) -> String {
    let out = iso.sh(&format!(
        "grep libnss_guestagent /proc/$(cat /tmp/lookups-{tag}.pid)/maps | head -1"
    ));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The version field of the directory cache's header (bytes 8..12, little endian).
fn cache_version(iso: &Isolated) -> u32 {
    file_version(iso, CACHE)
}

/// The version field of a cache file's header.
fn file_version(iso: &Isolated, path: &str) -> u32 {
    let out = iso.sh(&format!("od -An -tu4 -j8 -N4 {path}"));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn state_version(iso: &Isolated, path: &str) -> serde_json::Value {
    let out = iso.sh(&format!("cat {path}"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{path}: {e}: {}", text(&out)));
    v["version"].clone()
}

/// Installs `deb` (copied into the root first) with dpkg, while everything runs.
fn dpkg_install(iso: &Isolated, deb: &Path, what: &str) -> String {
    let out = iso.outside(&format!(
        "cp {} {}/tmp/install.deb",
        deb.display(),
        iso.root
    ));
    assert!(out.status.success(), "copy the deb: {}", text(&out));
    iso.run(what, "dpkg -i /tmp/install.deb && guest-agent --version")
}

/// What must not change across an upgrade or a downgrade: accounts, keys, sudo rules.
fn observed(iso: &Isolated, users: &[&str], files: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = users
        .iter()
        .map(|u| iso.run("getent", &format!("getent passwd {u}; id {u}")))
        .collect();
    for f in files {
        v.push(iso.run("file", &format!("cat {f}")));
    }
    v
}

/// An sshd in the root (own host key, port 22 of the namespace), started once the daemon has
/// written its configuration.
fn start_sshd(iso: &Isolated) -> Proc {
    iso.run(
        "sshd host key",
        "ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/upgrade_host_key && /usr/sbin/sshd -t",
    );
    let t0 = Instant::now();
    let sshd = Proc::spawn(
        "sshd",
        iso.command("exec /usr/sbin/sshd -D -e -h /etc/ssh/upgrade_host_key"),
    );
    sshd.expect_line(t0, &["Server listening"], Duration::from_secs(30));
    sshd
}

/// The case under test.
enum Mode {
    OsLogin,
    MetadataKeys,
}

fn upgrade_and_downgrade(mode: Mode, test: &str) {
    if !ready(test) {
        return;
    }
    let (n, next) = releases();
    let t0 = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("ga-upgrade-")
        .tempdir()
        .expect("tempdir");
    let ns = Netns::new("upg");
    let emulator = Emulator::start(&ns, dir.path(), None);
    let (key, public) = oslogin::keypair(dir.path(), "login");
    let (cert_key, cert_public) = oslogin::keypair(dir.path(), "cert");
    let iso = Isolated::new(&ns, dir.path());
    iso.run("ld.so cache", "ldconfig");
    let (users, files, work, resident_names) = match mode {
        Mode::OsLogin => {
            emulator.set_attribute("project", "enable-oslogin", "TRUE");
            emulator.ok(
                "POST",
                "/oslogin/users",
                Some(&oslogin::user("carol", 200001, &public, true, true).to_string()),
            );
            (
                vec!["carol"],
                vec![SUDOERS_OSLOGIN],
                Work {
                    logins: vec![
                        ("OS Login key".into(), key.clone(), "carol".into()),
                        ("certificate".into(), cert_key.clone(), "carol".into()),
                    ],
                    lookups: vec!["carol".into()],
                },
                vec!["carol", "root"],
            )
        }
        Mode::MetadataKeys => {
            emulator.set_attribute("instance", "ssh-keys", &format!("dave:{public}"));
            (
                vec!["dave"],
                vec![SUDOERS_ACCOUNTS, "/home/dave/.ssh/authorized_keys"],
                Work {
                    logins: vec![("metadata key".into(), key.clone(), "dave".into())],
                    lookups: vec!["dave".into()],
                },
                vec!["dave", "root"],
            )
        }
    };

    // N installed and running.
    let said = dpkg_install(&iso, &n.deb, "dpkg -i N");
    assert!(said.contains("0.1.0"), "{said}");
    let mut daemon = Daemon::start(&iso);
    let state = match mode {
        Mode::OsLogin => OSLOGIN_STATE,
        Mode::MetadataKeys => ACCOUNTS_STATE,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !files.iter().chain([&state]).all(|f| iso.exists(f))
        || (matches!(mode, Mode::OsLogin) && !iso.exists(CACHE))
    {
        // The admin's sudo rule is written at her first login: the helper run twice from
        // one parent, as sshd's connection process does (query, then signature).
        if matches!(mode, Mode::OsLogin) {
            let _ = iso.sh("guest-agent authorized-keys carol >/dev/null; \
                 guest-agent authorized-keys carol >/dev/null; true");
        }
        assert!(
            Instant::now() < deadline,
            "N did not write {files:?}:\n{}",
            daemon.proc().dump()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let sshd = start_sshd(&iso);
    if matches!(mode, Mode::OsLogin) {
        emulator.sign_into("carol", &cert_public, -60, &cert_key);
        assert_eq!(cache_version(&iso), 4, "N writes cache format 4");
    }
    assert_eq!(
        state_version(&iso, state),
        json!(2),
        "N writes state version 2"
    );
    for (what, key, user) in &work.logins {
        login(&ns, key, user).unwrap_or_else(|e| panic!("{what} with N: {e}\n{}", sshd.dump()));
    }
    let before = observed(&iso, &users, &files);
    let _old_module = spawn_resident(&iso, "old", &resident_names);
    resident_progress(&iso, "old", 10);
    // With OS Login off nsswitch.conf does not name the module: nothing loads it.
    let module_in_use = matches!(mode, Mode::OsLogin);
    if module_in_use {
        let mapped = mapped_module(&iso, "old");
        assert!(mapped.ends_with("libnss_guestagent.so.2"), "{mapped}");
    }
    let stop = AtomicBool::new(false);
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|scope| {
        let looping = scope.spawn(|| login_loop(&ns, &iso, &work, &stop, &tally));
        // A failed check below ends the loop too (the scope waits for it before the panic
        // goes on, and everything is then dropped: processes killed, namespaces deleted).
        let _stop_on_panic = StopOnDrop(&stop);

        // N+1 unpacked over the running N.
        let said = dpkg_install(&iso, &next.deb, "dpkg -i N+1");
        assert!(said.contains(NEXT_VERSION), "{said}");
        // The old daemon still runs: the new helper decides alone, the new module asks again in
        // the old protocol version for a user the cache does not hold.
        if matches!(mode, Mode::OsLogin) {
            let since = Instant::now();
            login(&ns, &key, "carol").unwrap_or_else(|e| panic!("new helper, old daemon: {e}"));
            sshd.expect_line(
                since,
                &["the daemon answered: unsupported protocol version 2"],
                Duration::from_secs(10),
            );
            emulator.ok(
                "POST",
                "/oslogin/users",
                Some(&oslogin::user("erin", 200002, &public, true, false).to_string()),
            );
            // The module gives the daemon 90 ms, which must cover its question to the metadata
            // service: on a busy machine a first try may run out while the daemon goes on and
            // remembers erin, so the check is which requests the daemon answered (its debug
            // line per socket request names the version), with lookups until one succeeds.
            let since = Instant::now();
            let (erin, tries) = getent_found(&iso, "erin");
            assert!(
                erin.starts_with("erin:"),
                "new module, old daemon: {erin} ({tries} tries)"
            );
            let p = daemon.proc();
            p.expect_line(
                since,
                &[
                    "socket request",
                    "version=2",
                    "\"getpwnam\"",
                    "answer=\"error\"",
                ],
                Duration::from_secs(10),
            );
            p.expect_line(
                since,
                &[
                    "socket request",
                    "version=1",
                    "\"getpwnam\"",
                    "answer=\"ok\"",
                ],
                Duration::from_secs(10),
            );
            eprintln!("new module, old daemon: erin found in {tries} lookup(s)");
        }
        daemon.restart();
        daemon.proc().expect_line(
            t0,
            &["migrated from version 2 to 3"],
            Duration::from_secs(30),
        );
        if matches!(mode, Mode::OsLogin) {
            wait_for("N+1 writing cache format 5", || cache_version(&iso) == 5);
            // And format 4 beside it, for N's modules.
            assert_eq!(
                file_version(&iso, COMPAT_CACHE),
                4,
                "N+1 writes {COMPAT_CACHE}"
            );
        }
        // The old module, still mapped (its file replaced), with the new daemon.
        resident_progress(&iso, "old", 20);
        if module_in_use {
            let mapped = mapped_module(&iso, "old");
            assert!(mapped.ends_with("(deleted)"), "old module mapped: {mapped}");
        }
        let _new_module = spawn_resident(&iso, "new", &resident_names);
        resident_progress(&iso, "new", 10);
        wait_logins(&tally, 3);
        assert_eq!(
            observed(&iso, &users, &files),
            before,
            "users, keys or sudo changed by the upgrade"
        );
        wait_for("N+1 saving state version 3", || {
            if matches!(mode, Mode::OsLogin) {
                let _ = iso.sh("guest-agent authorized-keys carol >/dev/null; \
                     guest-agent authorized-keys carol >/dev/null; true");
            }
            state_version(&iso, state) == json!(3)
        });

        // The downgrade.
        let said = dpkg_install(&iso, &n.deb, "dpkg -i N (downgrade)");
        assert!(said.contains("0.1.0"), "{said}");
        // N+1's daemon still runs: N's helper and N's module speak version 1, which it
        // answers itself (no helper deciding alone, the lookup answered in version 1).
        if matches!(mode, Mode::OsLogin) {
            let since = Instant::now();
            login(&ns, &key, "carol").unwrap_or_else(|e| panic!("old helper, new daemon: {e}"));
            emulator.ok(
                "POST",
                "/oslogin/users",
                Some(&oslogin::user("frank", 200003, &public, true, false).to_string()),
            );
            let (frank, _) = getent_found(&iso, "frank");
            assert!(
                frank.starts_with("frank:"),
                "old module, new daemon: {frank}"
            );
            daemon.proc().expect_line(
                since,
                &[
                    "socket request",
                    "version=1",
                    "\"getpwnam\"",
                    "answer=\"ok\"",
                ],
                Duration::from_secs(10),
            );
            let alone = sshd.lines_since(since, &["asking the metadata service directly"]);
            assert!(
                alone.is_empty(),
                "the new daemon did not answer the old helper: {alone:?}"
            );
        }
        daemon.restart();
        daemon.proc().expect_line(
            t0,
            &["was written by a newer guest-agent (version 3; this one knows 2)"],
            Duration::from_secs(30),
        );
        if matches!(mode, Mode::OsLogin) {
            wait_for("N rewriting the cache in format 4", || {
                cache_version(&iso) == 4
            });
            // N keeps only its own compat files (formats 3 and 2): N+1's format-4 copy is removed
            // with its first write.
            assert!(!iso.exists(COMPAT_CACHE), "{COMPAT_CACHE} left by N+1");
        }
        resident_progress(&iso, "old", 20);
        resident_progress(&iso, "new", 20);
        wait_logins(&tally, 3);
        assert_eq!(
            observed(&iso, &users, &files),
            before,
            "users, keys or sudo changed by the downgrade"
        );

        stop.store(true, Ordering::SeqCst);
        looping.join().expect("login loop");
    });
    iso.sh("touch /tmp/lookups-old.stop /tmp/lookups-new.stop");
    let tally = tally.lock().unwrap();
    let (old_ok, old_failed, old_said) = resident_counts(&iso, "old");
    let (new_ok, new_failed, new_said) = resident_counts(&iso, "new");
    eprintln!(
        "upgrade and downgrade ({test}) in {:.1?}: logins and new-process lookups {} ok, {} failed; \
         resident lookups with N's module {old_ok} ok, {old_failed} failed; with N+1's {new_ok} ok, {new_failed} failed",
        t0.elapsed(),
        tally.ok,
        tally.failed.len()
    );
    assert!(
        tally.failed.is_empty(),
        "failed during the upgrade: {:?}\n{}",
        tally.failed,
        sshd.dump()
    );
    assert_eq!(old_failed, 0, "lookups with N's module failed: {old_said}");
    assert_eq!(
        new_failed, 0,
        "lookups with N+1's module failed: {new_said}"
    );
    drop(daemon);
    drop(sshd);
    drop(iso);
    drop(emulator);
}

/// Waits until `done` holds, checked every 100 ms; fails after 30 s (a wait, not a bound).
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "30 s without {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `getent passwd NAME` in the root until it finds the user (20 tries, 0.5 s apart): a name
/// the daemon has to fetch is answered within the module's 90 ms deadline on an idle machine,
/// and a busy one may miss it while the daemon goes on and remembers the answer. Returns the
/// last output and the number of tries.
fn getent_found(iso: &Isolated, name: &str) -> (String, u32) {
    let mut tries = 0;
    loop {
        tries += 1;
        let out = iso.sh(&format!("getent passwd {name}"));
        if out.status.success() || tries == 20 {
            return (text(&out), tries);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until the loop has done `n` more successful logins or lookups.
fn wait_logins(tally: &Mutex<Tally>, n: usize) {
    let start = tally.lock().unwrap().ok;
    let deadline = Instant::now() + Duration::from_secs(120);
    while tally.lock().unwrap().ok < start + n {
        assert!(
            Instant::now() < deadline,
            "the login loop stalled: {:?}",
            tally.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn os_login_upgrade_and_downgrade_in_place_fail_no_login() {
    upgrade_and_downgrade(
        Mode::OsLogin,
        "os_login_upgrade_and_downgrade_in_place_fail_no_login",
    );
}

#[test]
fn metadata_keys_upgrade_and_downgrade_in_place_fail_no_login() {
    upgrade_and_downgrade(
        Mode::MetadataKeys,
        "metadata_keys_upgrade_and_downgrade_in_place_fail_no_login",
    );
}

#[test]
fn rpm_upgrade_and_downgrade_keep_the_daemons_edits() {
    if !ready("rpm_upgrade_and_downgrade_keep_the_daemons_edits") {
        return;
    }
    let (n, next) = releases();
    let dir = tempfile::Builder::new()
        .prefix("ga-rpmup-")
        .tempdir()
        .expect("tempdir");
    let ns = Netns::new("rpmup");
    let iso = Isolated::new(&ns, dir.path());
    for (p, name) in [(n, "n.rpm"), (next, "next.rpm")] {
        let out = iso.outside(&format!("cp {} {}/tmp/{name}", p.rpm.display(), iso.root));
        assert!(out.status.success(), "copy: {}", text(&out));
    }
    let rpm = "rpm --dbpath /var/lib/rpm-upgrade-test";
    iso.run("rpm --initdb", &format!("{rpm} --initdb"));
    iso.run("rpm -i N", &format!("{rpm} -i --nodeps /tmp/n.rpm"));
    // What the daemon writes (it is not run here: Debian's glibc does not read /usr/lib64),
    // and an operator's change to the configuration.
    iso.run(
        "the daemon's edits",
        "set -e; mkdir -p /var/lib/guest-agent /etc/ssh/sshd_config.d
         printf '%s\\n' '# guest-agent' 'AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f %t %k' \
            > /etc/ssh/sshd_config.d/60-guest-agent.conf
         sed -i 's/^passwd:.*/& guestagent/' /etc/nsswitch.conf
         printf '{\"version\": 2, \"enabled\": true, \"nsswitch_added\": [\"passwd\"]}' \
            > /var/lib/guest-agent/oslogin-state.json
         echo '# operator' >> /etc/guest-agent/config.toml",
    );
    let edits = "cat /etc/ssh/sshd_config.d/60-guest-agent.conf /etc/nsswitch.conf \
                 /var/lib/guest-agent/oslogin-state.json /etc/guest-agent/config.toml";
    let before = iso.run("edits", edits);
    let check = |what: &str, p: &Packages, version: &str| {
        let q = iso.run(what, &format!("{rpm} -q guest-agent"));
        assert_eq!(q.trim(), format!("guest-agent-{version}-1.x86_64"), "{q}");
        for (installed, built) in [
            ("/usr/bin/guest-agent", "guest-agent"),
            ("/usr/lib64/libnss_guestagent.so.2", "libnss_guestagent.so"),
        ] {
            let out = iso.outside(&format!(
                "cmp {}{installed} {}",
                iso.root,
                p.release.join(built).display()
            ));
            assert!(
                out.status.success(),
                "{what}: {installed} is not this release's: {}",
                text(&out)
            );
        }
        assert_eq!(
            iso.run(what, edits),
            before,
            "{what}: the daemon's edits or the config changed"
        );
        iso.run(what, "test -f /var/lib/guest-agent/oslogin-state.json");
    };
    check("N installed", n, "0.1.0");
    iso.run("rpm -U N+1", &format!("{rpm} -U --nodeps /tmp/next.rpm"));
    check("N+1 over N", next, NEXT_VERSION);
    iso.run(
        "rpm -U --oldpackage N",
        &format!("{rpm} -U --oldpackage --nodeps /tmp/n.rpm"),
    );
    check("N over N+1", n, "0.1.0");
    drop(iso);
}
