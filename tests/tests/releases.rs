//! The release matrix: our .deb on Debian 11, 12 and 13 userlands, with real logins. Root.
//!
//! Each release is a `debootstrap --variant=minbase` root (OpenSSH server and client, sudo,
//! procps; Debian 13 also systemd-userdbd), made once and cached under
//! /var/cache/guest-agent-tests (`guest_agent_e2e::releases`), used as the lower layer of an
//! isolated copy (overlay, private mount and PID namespaces, chroot) inside a network namespace
//! where the metadata emulator answers on 169.254.169.254. So that release's glibc (2.31, 2.36,
//! 2.41), OpenSSH (8.4: the principals-after-keys order fixed in 9.4; 9.2; 10.0: sshd split into
//! sshd-session and sshd-auth), PAM, sudo, shadow tools and dpkg run the package built by
//! `packaging/build` (glibc floor 2.28) on this kernel. In each, with the real daemon and sshd:
//!
//! - `dpkg -i` our .deb (its dependencies satisfied by that release);
//! - OS Login on: an OS Login key login, a 1-hour certificate login, `sudo` for the admin,
//!   `getent` and `id` through the NSS module, and after the login role is revoked the next
//!   login refused;
//! - OS Login off: a metadata `ssh-keys` user logs in with its key and has sudo;
//! - Debian 13 only: a systemd-userdbd user (a JSON record in /etc/userdb whose key sshd gets
//!   from `userdbctl ssh-authorized-keys`, the command of userdbd's own sshd drop-in, which
//!   sorts before ours) still logs in with that key while OS Login is on;
//! - `guest-agent doctor` reports no failure;
//! - `dpkg -P` leaves nothing but what the README says stays (the accounts the agent made and
//!   their homes).
//!
//! The releases run side by side; the result is a table in the test's output (the CI log), one
//! row per release with each check, and the test fails when any check failed.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use guest_agent_e2e::emulator::Emulator;
use guest_agent_e2e::netns::Netns;
use guest_agent_e2e::oslogin;
use guest_agent_e2e::packages::{Build, Isolated, Packages, build, ready, text};
use guest_agent_e2e::process::Proc;
use guest_agent_e2e::releases::{ALL, Release};
use serde_json::json;

/// The checks, in the order of the table's columns.
const CHECKS: [&str; 12] = [
    "dpkg -i",
    "key login",
    "cert login",
    "sudo (admin)",
    "getent/id",
    "userdb keys",
    "2FA login",
    "2FA off",
    "revoked",
    "metadata keys+sudo",
    "doctor",
    "dpkg -P clean",
];

/// What one release showed.
struct Row {
    release: Release,
    versions: String,
    results: Vec<(&'static str, Result<(), String>)>,
}

impl Row {
    fn record(&mut self, check: &'static str, r: Result<(), String>) -> bool {
        // A check missing from the table would be dropped from it silently.
        assert!(CHECKS.contains(&check), "{check:?} is not in CHECKS");
        let ok = r.is_ok();
        self.results.push((check, r));
        ok
    }
}

/// `ssh USER@127.0.0.1 COMMAND` from the namespace with `key`: stdout when it succeeded.
fn ssh(ns: &Netns, key: &Path, user: &str, command: &str) -> Result<String, String> {
    let out = guest_agent_e2e::vm::ssh(ns, key, user, command);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "ssh {user}@ {command:?}: {}: {}",
            out.status,
            text(&out).trim()
        ))
    }
}

fn expect(what: &str, got: Result<String, String>, want: &str) -> Result<(), String> {
    match got {
        Ok(s) if s == want => Ok(()),
        Ok(s) => Err(format!("{what}: printed {s:?}, expected {want:?}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Polls `done` every 200 ms for up to `secs` seconds (a loaded machine gets a wide margin;
/// the check is the outcome, not the time).
fn eventually(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The daemon reloads sshd (SIGHUP: sshd re-executes itself and listens again) when it turns
/// OS Login on or off; a connection in between is refused. Waits for the reload after `since`
/// and for sshd to listen again.
fn sshd_restarted(sshd: &Proc, since: Instant) -> bool {
    let Some(hup) = sshd.wait_for_line(since, &["Received SIGHUP"], Duration::from_secs(60)) else {
        return false;
    };
    sshd.wait_for_line(hup, &["Server listening"], Duration::from_secs(60))
        .is_some()
}

/// The account lines of the four account files.
fn accounts(iso: &Isolated) -> BTreeSet<String> {
    iso.sh("cat /etc/passwd /etc/group /etc/shadow /etc/gshadow")
        .stdout
        .split(|&b| b == b'\n')
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn run_release(release: Release, p: &Packages) -> Row {
    let mut row = Row {
        release,
        versions: String::new(),
        results: Vec::new(),
    };
    let root = release.root();
    let dir = tempfile::Builder::new()
        .prefix(&format!("ga-rel-{}-", release.codename))
        .tempdir()
        .expect("tempdir");
    let ns = Netns::new(&format!("rel{}", release.codename));
    let emulator = Emulator::start(&ns, dir.path(), None);
    emulator.set_attribute("project", "enable-oslogin", "TRUE");
    let (key, public) = oslogin::keypair(dir.path(), "carol");
    let (cert_key, cert_public) = oslogin::keypair(dir.path(), "carolcert");
    let (dave_key, dave_public) = oslogin::keypair(dir.path(), "dave");
    emulator.ok(
        "POST",
        "/oslogin/users",
        Some(&oslogin::user("carol", 200001, &public, true, true).to_string()),
    );
    let iso = Isolated::on(&ns, dir.path(), &root);
    let out = iso.outside(&format!(
        "cp {} {}/tmp/guest-agent.deb",
        p.deb.display(),
        iso.root
    ));
    assert!(out.status.success(), "copy the deb: {}", text(&out));
    row.versions = iso
        .sh(
            "ssh -V 2>&1 | cut -d, -f1; ldd --version | head -1 | awk '{print \"glibc \" $NF}'; \
             dpkg-query -W -f '${Version}' systemd 2>/dev/null | sed 's/^/systemd /' || true",
        )
        .stdout
        .split(|&b| b == b'\n')
        .map(|l| String::from_utf8_lossy(l).trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    iso.run(
        "host key, ld.so cache",
        "set -e; ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/matrix_host_key; ldconfig",
    );
    // systemd-userdbd's own users: a JSON user record whose SSH key sshd gets from
    // `userdbctl ssh-authorized-keys` (its drop-in 20-systemd-userdb.conf), not from a file.
    let userdb = release.include.contains("systemd-userdbd");
    let (rival_key, rival_public) = oslogin::keypair(dir.path(), "rival");
    if userdb {
        // userdb's drop-in layout: the public part world-readable, the privileged part (where
        // SSH keys live) beside it, readable by root only.
        let record = json!({"userName": "rival", "uid": 60100, "gid": 60100,
            "homeDirectory": "/home/rival", "shell": "/bin/sh"});
        let privileged = json!({"privileged": {"sshAuthorizedKeys": [rival_public.trim()]}});
        iso.run(
            "a userdb user",
            &format!(
                "set -e; mkdir -p /etc/userdb /home/rival; chown 60100:60100 /home/rival
                 cat > /etc/userdb/rival.user <<'E'\n{record}\nE
                 cat > /etc/userdb/rival.user-privileged <<'E'\n{privileged}\nE
                 chmod 0644 /etc/userdb/rival.user; chmod 0600 /etc/userdb/rival.user-privileged
                 ln -s rival.user /etc/userdb/60100.user
                 getent passwd rival; userdbctl ssh-authorized-keys rival | grep -q ssh-"
            ),
        );
    }
    let before = iso.snapshot();
    let accounts_before = accounts(&iso);

    let installed = iso.sh("dpkg -i /tmp/guest-agent.deb");
    if !row.record(
        "dpkg -i",
        if installed.status.success() {
            Ok(())
        } else {
            Err(text(&installed))
        },
    ) {
        return row;
    }

    let t0 = Instant::now();
    let sshd = Proc::spawn(
        "sshd",
        iso.command("exec /usr/sbin/sshd -D -e -h /etc/ssh/matrix_host_key"),
    );
    sshd.expect_line(t0, &["Server listening"], Duration::from_secs(60));
    let t0 = Instant::now();
    let mut agent = Proc::spawn(
        "guest-agent",
        iso.command("echo $$ > /tmp/agent.pid; exec /usr/bin/guest-agent run"),
    );
    let enabled = agent
        .wait_for_line(t0, &["OS Login enabled"], Duration::from_secs(60))
        .is_some()
        && sshd_restarted(&sshd, t0);

    // OS Login.
    let key_login = if enabled {
        expect("id -un", ssh(&ns, &key, "carol", "id -un"), "carol")
    } else {
        Err(format!(
            "OS Login never came on, or sshd never listened again after its reload:\n{}\n{}",
            agent.dump(),
            sshd.dump()
        ))
    };
    row.record("key login", key_login);
    emulator.sign_into("carol", &cert_public, -60, &cert_key);
    row.record(
        "cert login",
        expect("id -un", ssh(&ns, &cert_key, "carol", "id -un"), "carol"),
    );
    row.record(
        "sudo (admin)",
        expect(
            "sudo -n id -u",
            ssh(&ns, &key, "carol", "sudo -n id -u"),
            "0",
        ),
    );
    let lookups = (|| {
        let pw = iso.sh("getent passwd carol");
        let pw = String::from_utf8_lossy(&pw.stdout);
        if !pw.starts_with("carol:x:200001:") && !pw.starts_with("carol:*:200001:") {
            return Err(format!("getent passwd carol: {pw:?}"));
        }
        let id = iso.sh("id -Gn carol");
        let id = String::from_utf8_lossy(&id.stdout);
        if !id.split_whitespace().any(|g| g == "guest-agent-oslogin") {
            return Err(format!("id -Gn carol: {id:?} (no guest-agent-oslogin)"));
        }
        Ok(())
    })();
    row.record("getent/id", lookups);
    if userdb {
        let r = expect("id -un", ssh(&ns, &rival_key, "rival", "id -un"), "rival");
        row.record(
            "userdb keys",
            r.map_err(|e| {
                let seen = sshd.lines().into_iter().filter(|l| {
                    l.contains("rival") || l.contains("KeysCommand") || l.contains("userdbctl")
                });
                let nss = text(&iso.sh(
                    "grep -E '^(passwd|group)' /etc/nsswitch.conf; getent passwd rival; \
                     ls -l /etc/userdb /run/systemd 2>&1",
                ));
                format!(
                    "{e}\nsshd:\n{}\nNSS:\n{nss}\nagent:\n{}",
                    seen.collect::<Vec<_>>().join("\n"),
                    agent.dump()
                )
            }),
        );
    }
    // 2-step verification: sshd's Match block and the PAM lines of the release's own sshd and
    // PAM; a key alone refused, key + code in; off again.
    emulator.set_two_factor(
        "carol",
        json!([{"type": "SECURITY_KEY_OTP", "code": "135790"}]),
    );
    let t2 = Instant::now();
    emulator.set_attribute("project", "enable-oslogin-2fa", "TRUE");
    let client = guest_agent_e2e::kbdint::Client::new(dir.path());
    let two_factor = if agent
        .wait_for_line(
            t2,
            &["OS Login two-step verification on"],
            Duration::from_secs(60),
        )
        .is_none()
        || agent
            .wait_for_line(t2, &["OS Login enabled"], Duration::from_secs(60))
            .is_none()
        || !sshd_restarted(&sshd, t2)
    {
        Err(format!(
            "2-step verification never came on:\n{}",
            agent.dump()
        ))
    } else {
        let (alone, _) = client.login_in(&ns, &key, "carol", &[], "id -un");
        let (with, prompts) = client.login_in(&ns, &key, "carol", &["135790"], "id -un");
        if alone.status.success() {
            Err(format!("the key alone logged in: {}", text(&alone)))
        } else if !with.status.success() || String::from_utf8_lossy(&with.stdout).trim() != "carol"
        {
            Err(format!(
                "key + code: {}\nprompts: {prompts}\nsshd:\n{}\nagent:\n{}",
                text(&with),
                sshd.dump(),
                agent.dump()
            ))
        } else {
            Ok(())
        }
    };
    row.record("2FA login", two_factor);
    let t3 = Instant::now();
    emulator.control("DELETE", "/attributes/project/enable-oslogin-2fa", None);
    let off = agent
        .wait_for_line(
            t3,
            &["PAM: two-step verification lines removed"],
            Duration::from_secs(60),
        )
        .is_some()
        && sshd_restarted(&sshd, t3);
    row.record(
        "2FA off",
        if off {
            expect("id -un", ssh(&ns, &key, "carol", "id -un"), "carol")
        } else {
            Err(format!(
                "2-step verification did not go off:\n{}",
                agent.dump()
            ))
        },
    );
    emulator.ok(
        "PUT",
        "/oslogin/users/carol/roles",
        Some(&json!({"login": false, "admin": false}).to_string()),
    );
    row.record(
        "revoked",
        match ssh(&ns, &key, "carol", "id -un") {
            Ok(s) => Err(format!("the revoked user logged in ({s})")),
            Err(_) if sshd.lines().iter().any(|l| l.contains("carol")) => Ok(()),
            Err(e) => Err(format!("refused, but sshd never saw carol: {e}")),
        },
    );

    // Metadata keys.
    let t1 = Instant::now();
    emulator.set_attribute("project", "enable-oslogin", "FALSE");
    emulator.set_attribute("instance", "ssh-keys", &format!("dave:{dave_public}"));
    let metadata = if agent
        .wait_for_line(t1, &["OS Login disabled"], Duration::from_secs(60))
        .is_none()
        || !sshd_restarted(&sshd, t1)
    {
        Err(format!("OS Login did not go off:\n{}", agent.dump()))
    } else if !eventually(60, || iso.exists("/home/dave/.ssh/authorized_keys")) {
        Err(format!("dave's keys never written:\n{}", agent.dump()))
    } else {
        expect(
            "dave: sudo -n id -u",
            ssh(&ns, &dave_key, "dave", "id -un && sudo -n id -u").map(|s| s.replace('\n', " ")),
            "dave 0",
        )
    };
    row.record("metadata keys+sudo", metadata);
    let doctor = iso.sh("guest-agent doctor");
    row.record(
        "doctor",
        if doctor.status.success() {
            Ok(())
        } else {
            Err(text(&doctor))
        },
    );

    // Purge: nothing left but the accounts the agent made (and their homes, README).
    iso.sh("kill -TERM $(cat /tmp/agent.pid); rm -f /tmp/agent.pid");
    let stopped = agent.wait_exit(Duration::from_secs(30)).is_some();
    drop(sshd);
    let purge = iso.sh("dpkg -P guest-agent");
    let clean = (|| {
        if !stopped {
            return Err("the daemon did not stop on SIGTERM".to_string());
        }
        if !purge.status.success() {
            return Err(format!("dpkg -P: {}", text(&purge)));
        }
        let after = iso.snapshot();
        let account_files = [
            "/etc/passwd",
            "/etc/group",
            "/etc/shadow",
            "/etc/gshadow",
            "/etc/passwd-",
            "/etc/group-",
            "/etc/shadow-",
            "/etc/gshadow-",
            "/etc/subuid",
            "/etc/subgid",
            "/etc/subuid-",
            "/etc/subgid-",
        ];
        let path_of = |l: &str| -> String {
            // Snapshot lines: "TYPE MODE OWNER PATH [LINK]" or "sha256 HASH  PATH".
            if let Some(rest) = l.strip_prefix("sha256 ") {
                rest.split_once("  ").map_or("", |x| x.1).to_owned()
            } else {
                l.split(' ')
                    .find(|w| w.starts_with('/'))
                    .unwrap_or("")
                    .to_owned()
            }
        };
        let allowed = |path: &str| {
            account_files.contains(&path)
                || ["/home/carol", "/home/dave"]
                    .iter()
                    .any(|h| path == *h || path.starts_with(&format!("{h}/")))
                || path.starts_with("/var/log/")
                // sshd's and PAM's runtime files (sshd was started for the test, pam_motd
                // writes the motd at a login) and ld.so's cache of the ldconfig trigger.
                || ["/run/sshd.pid", "/run/motd.dynamic", "/var/cache/ldconfig/aux-cache"]
                    .contains(&path)
                || path.starts_with("/var/lib/sudo/")
                || path == "/var/lib/sudo"
                || path == "/var/lib/dpkg/status-old"
                || path == "/var/cache/debconf/config.dat-old"
                || path == "/var/cache/debconf/templates.dat-old"
        };
        let left: Vec<String> = before
            .symmetric_difference(&after)
            .filter(|l| !allowed(&path_of(l)))
            .cloned()
            .collect();
        if !left.is_empty() {
            return Err(format!("left or changed after purge:\n{}", left.join("\n")));
        }
        // The account files changed only by the accounts the agent made (dave, his groups).
        let now = accounts(&iso);
        let unexpected: Vec<&String> = accounts_before
            .symmetric_difference(&now)
            .filter(|l| !l.starts_with("dave:") && !l.starts_with("guest-agent-sudoers:"))
            .collect();
        if unexpected.is_empty() {
            Ok(())
        } else {
            Err(format!("account lines changed: {unexpected:?}"))
        }
    })();
    row.record("dpkg -P clean", clean);
    drop(iso);
    drop(emulator);
    row
}

#[test]
fn debian_11_12_13_log_in_through_the_package() {
    if !ready("debian_11_12_13_log_in_through_the_package") {
        return;
    }
    let p = build(Build::This);
    let t0 = Instant::now();
    // The roots first, side by side (each a few minutes of download and unpacking when not
    // cached yet).
    std::thread::scope(|s| {
        for r in ALL {
            s.spawn(move || r.root());
        }
    });
    let p = &p;
    let rows: Vec<Row> = std::thread::scope(|s| {
        let handles: Vec<_> = ALL
            .iter()
            .map(|&r| s.spawn(move || run_release(r, p)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a release's run panicked"))
            .collect()
    });
    let mut table = format!(
        "\nrelease matrix ({:.0?})\n| release | versions |",
        t0.elapsed()
    );
    for c in CHECKS {
        table.push_str(&format!(" {c} |"));
    }
    table.push_str(&format!("\n|---|---|{}\n", "---|".repeat(CHECKS.len())));
    let mut failures = Vec::new();
    for row in &rows {
        table.push_str(&format!("| {} | {} |", row.release.name, row.versions));
        for c in CHECKS {
            let cell = match row.results.iter().find(|(n, _)| *n == c) {
                Some((_, Ok(()))) => "ok",
                Some((_, Err(e))) => {
                    failures.push(format!("{} {c}: {e}", row.release.name));
                    "FAIL"
                }
                None if c == "userdb keys" && !row.release.include.contains("userdbd") => "n/a",
                None => {
                    failures.push(format!("{} {c}: not reached", row.release.name));
                    "-"
                }
            };
            table.push_str(&format!(" {cell} |"));
        }
        table.push('\n');
    }
    // Written to the process's stderr itself, not through `eprintln!`, which the test harness
    // captures and shows only for a failing test: the table is in the CI log either way.
    {
        use std::io::Write;
        let _ = std::io::stderr().write_all(table.as_bytes());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
