//! Taking over from Google's guest agent on a running VM (issue 16), end to end: a VM prepared
//! as Google's agent leaves it (the files written here from the protocol reference, section
//! 7), a real sshd with PAM serving logins from it, then our daemon started with
//! `accounts.takeover = "auto"` while a login loop runs throughout. Needs root.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use guest_agent_e2e::accounts::{TEST_CONFIG, keypair_of};
use guest_agent_e2e::process::Proc;
use guest_agent_e2e::vm::{AGENT, SSHD_HELPER, ssh, start_sshd};
use guest_agent_e2e::{TestEnv, require_root};
use serde_json::Value;

/// Every file of Google's the takeover may touch (hashed before, after a dry run, after undo).
const GOOGLE_FILES: [&str; 10] = [
    "/etc/ssh/sshd_config",
    "/etc/nsswitch.conf",
    "/etc/pam.d/sshd",
    "/etc/security/group.conf",
    "/etc/sudoers.d/google_sudoers",
    "/etc/sudoers.d/google-oslogin",
    "/var/lib/google/google_users",
    "/etc/oslogin_passwd.cache",
    "/etc/oslogin_group.cache",
    "/var/google-users.d/ignored",
];

/// sha256, mode and owner of each path (or `missing`), and the directories' and the FIFO's
/// mode and owner.
fn hashes(env: &TestEnv, paths: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in paths.iter().chain(&[
        "/var/google-users.d",
        "/var/google-sudoers.d",
        "/etc/ssh/oslogin_trustedca.pub",
    ]) {
        let line = env.vm().run(&format!(
            "if [ -p {p} ] || [ -d {p} ]; then stat -c '%F %a %u:%g' {p}; elif [ -e {p} ]; then echo $(sha256sum < {p}) $(stat -c '%a %u:%g' {p}); else echo missing; fi"
        ));
        out.insert(p.to_string(), line.trim().to_owned());
    }
    out
}

/// Google's agent's leftovers, as its code writes them.
fn prepare(env: &TestEnv, keys: &BTreeMap<&str, String>) {
    let k = |n: &str| keys[n].clone();
    let script = format!(
        r#"set -e
# Its users: made with its useradd_cmd (`-p *`), listed in google_users; `admin` is listed too
# but an administrator made it (a baked image), `carol` existed before and is only in
# google-sudoers, `gone` was made by it and is no longer in metadata.
for u in alice bob gone; do useradd -m -s /bin/bash -p '*' $u; done
useradd -m -s /bin/bash admin
useradd -m -s /bin/bash carol
mkdir -p /var/lib/google
printf '%s\n' alice bob admin gone > /var/lib/google/google_users
groupadd google-sudoers
for u in alice bob carol; do gpasswd -a $u google-sudoers >/dev/null; done
printf '%%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL\n' > /etc/sudoers.d/google_sudoers
chmod 0440 /etc/sudoers.d/google_sudoers
printf '#includedir /var/google-sudoers.d\n' > /etc/sudoers.d/google-oslogin
chmod 0440 /etc/sudoers.d/google-oslogin
mkdir -m 0750 /var/google-sudoers.d /var/google-users.d
printf '# per-user sshd settings\n' > /var/google-users.d/ignored
key() {{ u=$1; shift; mkdir -p /home/$u/.ssh; printf '%s\n' "$@" > /home/$u/.ssh/authorized_keys; chown -R $u: /home/$u/.ssh; chmod 700 /home/$u/.ssh; chmod 600 /home/$u/.ssh/authorized_keys; }}
key alice '# Added by Google' '{alice}' '{alice_own}' '# Added by Google' '{alice_old}'
key bob '# Added by Google' '{bob}'
key carol '# Added by Google' '{carol}'
# sshd: its two blocks (OS Login was on once) and its CA FIFO.
mkfifo -m 0644 /etc/ssh/oslogin_trustedca.pub
{{ printf '%s\n' '#### Google OS Login control. Do not edit this section. ####' \
    'TrustedUserCAKeys /etc/ssh/oslogin_trustedca.pub' \
    'AuthorizedPrincipalsCommand /usr/bin/google_authorized_principals %u %k' \
    'AuthorizedPrincipalsCommandUser root' \
    'AuthorizedKeysCommand /usr/bin/google_authorized_keys' \
    'AuthorizedKeysCommandUser root' \
    '#### End Google OS Login control section. ####'
  cat /etc/ssh/sshd_config
  printf '%s\n' '#### Google OS Login control. Do not edit this section. ####' \
    'Include /var/google-users.d/*' \
    '#### End Google OS Login control section. ####'; }} > /etc/ssh/sshd_config.new
mv /etc/ssh/sshd_config.new /etc/ssh/sshd_config
sed -i -e '/^passwd:/s/$/ cache_oslogin oslogin/' -e '/^group:/s/$/ cache_oslogin oslogin/' /etc/nsswitch.conf
printf 'alice:*:1001:1001::/home/alice:/bin/bash\n' > /etc/oslogin_passwd.cache
printf 'alice:*:1001:\n' > /etc/oslogin_group.cache
{{ printf '%s\n' '#### Google OS Login control. Do not edit this section. ####' \
    'auth       [default=ignore] pam_group.so' \
    '#### End Google OS Login control section. ####'
  cat /etc/pam.d/sshd
  printf '%s\n' '#### Google OS Login control. Do not edit this section. ####' \
    'session    [success=ok default=ignore] pam_mkhomedir.so' \
    '#### End Google OS Login control section. ####'; }} > /etc/pam.d/sshd.new
mv /etc/pam.d/sshd.new /etc/pam.d/sshd
touch /etc/security/group.conf
printf '%s\n' '# Added by Google Compute Engine OS Login.' 'sshd;*;*;Al0000-2400;video' >> /etc/security/group.conf
"#,
        alice = k("alice"),
        alice_own = k("alice_own"),
        alice_old = k("alice_old"),
        bob = k("bob"),
        carol = k("carol"),
    );
    // /var/google-*.d are outside the VM's tmpfs mounts: the VM gets a /var of its own.
    env.vm().private_var();
    let out = env.vm().sh(&script);
    assert!(
        out.status.success(),
        "preparing Google's leftovers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `guest-agent --config CONFIG takeover ARGS...` in the VM: (exit code, stdout).
fn takeover(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let out = env
        .vm()
        .command(AGENT)
        .arg("--config")
        .arg(env.config_path())
        .arg("takeover")
        .args(args)
        .output()
        .expect("run takeover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// doctor's `google-agent` check, run in the VM.
fn google_check(env: &TestEnv) -> Value {
    let out = env
        .vm()
        .command(AGENT)
        .arg("--config")
        .arg(env.config_path())
        .args(["doctor", "--json"])
        .output()
        .expect("doctor");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == "google-agent").cloned())
        .unwrap_or_else(|| panic!("no google-agent check: {report:#}"))
}

fn run(env: &TestEnv, script: &str) -> String {
    env.vm().run(script)
}

/// What the login loop counted.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    /// Connections sshd refused or dropped before authentication (its re-exec on SIGHUP),
    /// tried again at once: not a refused login.
    reconnects: usize,
    failed: Vec<String>,
    /// Logins that succeeded after the takeover was logged.
    after: usize,
}

#[test]
fn googles_agent_is_taken_over_with_no_failed_login_and_undo_restores_its_files() {
    if !require_root("googles_agent_is_taken_over_with_no_failed_login_and_undo_restores_its_files")
    {
        return;
    }
    let env = TestEnv::with_emulator("takeover", None);
    let mut keys: BTreeMap<&str, String> = BTreeMap::new();
    let mut private: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for name in ["alice", "alice_own", "alice_old", "bob", "carol"] {
        let (k, p) = keypair_of(env.dir(), name, "ed25519");
        keys.insert(name, p);
        private.insert(name, k);
    }
    // Metadata now: alice (not her old key), bob, carol. admin and gone are not listed.
    env.emulator().set_attribute(
        "instance",
        "ssh-keys",
        &format!(
            "alice:{}\nbob:{}\ncarol:{}\n",
            keys["alice"], keys["bob"], keys["carol"]
        ),
    );
    prepare(&env, &keys);
    let before = hashes(&env, &GOOGLE_FILES);
    let homes = [
        "/home/alice/.ssh/authorized_keys",
        "/home/bob/.ssh/authorized_keys",
    ];
    let homes_before = hashes(&env, &homes);
    let sshd = start_sshd(env.vm(), &[]);
    let ns = &env.ns;
    let login = |user: &str, key: &str, cmd: &str| ssh(ns, &private[key], user, cmd);
    assert!(
        login("alice", "alice_old", "true").status.success(),
        "Google's state: her old key works: {}",
        sshd.dump()
    );
    assert!(
        login("alice", "alice", "sudo -n true").status.success(),
        "Google's sudo"
    );

    // doctor names Google's files (before our daemon ever ran).
    let config = format!("{TEST_CONFIG}check_interval_secs = 2\ndeprovision = \"delete\"\n");
    env.write_config(&config);
    let check = google_check(&env);
    assert_eq!(check["status"], "warn", "{check:#}");
    assert!(
        check["summary"]
            .as_str()
            .unwrap_or("")
            .contains("/etc/ssh/sshd_config"),
        "{check:#}"
    );
    assert!(
        check["fix"]
            .as_str()
            .unwrap_or("")
            .contains("guest-agent takeover"),
        "{check:#}"
    );

    // --dry-run prints the plan and changes no file.
    let (code, out, err) = takeover(&env, &["--dry-run", "--json"]);
    assert_eq!(code, 0, "dry run: {out}{err}");
    let plan: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(plan["found"], true, "{plan}");
    assert_eq!(plan["report"], Value::Null);
    let changes = plan["plan"]["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(changes.len() >= 8, "{plan:#}");
    assert_eq!(
        plan["plan"]["adoption"]["created"],
        serde_json::json!(["alice", "bob", "gone"]),
        "{plan:#}"
    );
    assert!(
        plan["plan"]["adoption"]["not_created"]["admin"]
            .as_str()
            .is_some_and(|w| w.contains("lock")),
        "{plan:#}"
    );
    let (_, text, _) = takeover(&env, &["--dry-run"]);
    assert!(
        text.contains("would rewrite /etc/ssh/sshd_config")
            && text.contains("would adopt admin (managed, never deleted"),
        "{text}"
    );
    assert_eq!(
        hashes(&env, &GOOGLE_FILES),
        before,
        "--dry-run changed a file"
    );
    assert_eq!(
        hashes(&env, &homes),
        homes_before,
        "--dry-run changed a key file"
    );
    assert!(
        !env.vm()
            .run("ls /var/lib/guest-agent 2>/dev/null; true")
            .contains("takeover"),
        "no report from a dry run"
    );

    // The daemon, with a login loop running throughout.
    let stop = AtomicBool::new(false);
    let took_over = AtomicBool::new(false);
    let tally = Mutex::new(Tally::default());
    let cases: [(&str, &str, &str); 4] = [
        ("alice", "alice", "sudo -n true"),
        ("alice", "alice_own", "true"),
        ("bob", "bob", "true"),
        ("carol", "carol", "sudo -n true"),
    ];
    let t0 = Instant::now();
    let mut agent_slot: Option<Proc> = None;
    std::thread::scope(|scope| {
        let looping = scope.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let (user, key, cmd) = cases[i % cases.len()];
                i += 1;
                let after = took_over.load(Ordering::SeqCst);
                let out = login(user, key, cmd);
                let said = String::from_utf8_lossy(&out.stderr).into_owned();
                let mut t = tally.lock().unwrap();
                if out.status.success() {
                    t.ok += 1;
                    t.after += usize::from(after);
                } else if said.contains("Connection refused")
                    || said.contains("Connection reset")
                    || said.contains("Connection closed by") && !said.contains("Permission denied")
                {
                    t.reconnects += 1;
                } else {
                    t.failed
                        .push(format!("{user} with {key} ({cmd}): {}", said.trim()));
                }
            }
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::thread::sleep(Duration::from_millis(500));
            // The agent as `TestEnv::start_agent` starts it (no notify socket: nothing here
            // waits for READY), kept outside `env`, which the loop borrows.
            let mut cmd = env.vm().command(AGENT);
            cmd.arg("--config").arg(env.config_path()).arg("run");
            cmd.env_remove("RUST_LOG").env_remove("JOURNAL_STREAM");
            let agent = agent_slot.insert(Proc::spawn("guest-agent", cmd));
            agent.expect_line(
                t0,
                &["took over from Google's guest agent"],
                Duration::from_secs(60),
            );
            took_over.store(true, Ordering::SeqCst);
            // The accounts pass after it drops Google's key lines and deletes `gone`.
            agent.expect_line(
                t0,
                &["users of Google's guest agent adopted"],
                Duration::from_secs(60),
            );
            let deadline = Instant::now() + Duration::from_secs(60);
            while env
                .vm()
                .run("cat /home/alice/.ssh/authorized_keys")
                .contains("Added by Google")
            {
                assert!(
                    Instant::now() < deadline,
                    "Google's key lines never dropped:\n{}",
                    agent.dump()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            // A few more rounds of logins with everything of ours alone in effect.
            let until = tally.lock().unwrap().after + 2 * cases.len();
            let deadline = Instant::now() + Duration::from_secs(120);
            while tally.lock().unwrap().after < until && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        stop.store(true, Ordering::SeqCst);
        looping.join().expect("login loop");
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
    let mut agent = agent_slot.expect("agent started");
    let t = tally.into_inner().unwrap();
    eprintln!(
        "takeover with a login loop: {} logins ok ({} after the takeover), {} failed, {} connections refused during sshd's re-exec and tried again",
        t.ok,
        t.after,
        t.failed.len(),
        t.reconnects
    );
    assert!(
        t.failed.is_empty(),
        "logins failed during the takeover: {:?}\n{}",
        t.failed,
        agent.dump()
    );
    assert!(
        t.after >= 2 * cases.len(),
        "the loop ran after the takeover: {t:?}"
    );

    // Google's traces are gone, ours are in effect.
    let vm = |s: &str| run(&env, s);
    assert!(
        !vm("cat /etc/ssh/sshd_config").contains("Google"),
        "{}",
        vm("cat /etc/ssh/sshd_config")
    );
    assert!(env.vm().sh("/usr/sbin/sshd -t").status.success(), "sshd -t");
    assert!(!vm("grep -E '^(passwd|group):' /etc/nsswitch.conf").contains("oslogin"));
    assert!(!vm("cat /etc/pam.d/sshd /etc/security/group.conf").contains("Google"));
    for gone in [
        "/etc/sudoers.d/google_sudoers",
        "/etc/sudoers.d/google-oslogin",
        "/var/google-sudoers.d",
        "/var/google-users.d",
        "/var/lib/google/google_users",
        "/etc/oslogin_passwd.cache",
        "/etc/oslogin_group.cache",
        "/etc/ssh/oslogin_trustedca.pub",
    ] {
        assert_eq!(
            vm(&format!("test -e {gone} && echo present; true")),
            "",
            "{gone} is still there"
        );
    }
    let group = vm("getent group guest-agent-sudoers");
    for m in ["alice", "bob", "carol"] {
        assert!(group.contains(m), "{m} in our sudo group: {group}");
    }
    let alice = vm("cat /home/alice/.ssh/authorized_keys");
    assert!(
        alice.contains(&keys["alice_own"]) && !alice.contains(&keys["alice_old"]),
        "{alice}"
    );
    assert!(
        !login("alice", "alice_old", "true").status.success(),
        "a key metadata no longer lists stops working"
    );
    assert!(
        login("alice", "alice_own", "true").status.success(),
        "her own key still works"
    );
    for u in ["alice", "carol"] {
        assert!(
            login(u, u, "sudo -n true").status.success(),
            "{u}: sudo through our group"
        );
    }
    // admin (listed, made by an administrator) stays; gone (made by Google's agent, no longer
    // in metadata) is deleted under deprovision = "delete", as ours would be.
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.vm().sh("getent passwd gone").status.success() {
        assert!(
            Instant::now() < deadline,
            "gone was not deleted:\n{}",
            agent.dump()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        vm("getent passwd admin").starts_with("admin:"),
        "an administrator's account is never deleted"
    );
    let report: Value =
        serde_json::from_str(&vm("cat /var/lib/guest-agent/takeover.json")).expect("report");
    assert_eq!(report["status"], "done", "{report:#}");
    assert_eq!(
        vm(
            "stat -c '%a' /var/lib/guest-agent /var/lib/guest-agent/takeover /var/lib/guest-agent/takeover.json"
        ),
        "755\n700\n600\n",
        "the saved files are root's; the state directory stays readable (the NSS cache)"
    );
    assert_eq!(report["failed"], serde_json::json!([]), "{report:#}");
    let (code, again, _) = takeover(&env, &["--dry-run", "--json"]);
    assert_eq!(code, 2, "nothing left to take over: {again}");
    let check = google_check(&env);
    assert_eq!(check["status"], "ok", "{check:#}");
    assert!(
        check["summary"]
            .as_str()
            .unwrap_or("")
            .contains("took over"),
        "{check:#}"
    );

    // --undo (with our daemon stopped) puts Google's files back byte for byte.
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        agent.wait_exit(Duration::from_secs(20)).is_some(),
        "daemon stopped"
    );
    let (code, out, err) = takeover(&env, &["--undo"]);
    assert_eq!(code, 0, "undo: {out}{err}");
    let after_undo = hashes(&env, &GOOGLE_FILES);
    assert_eq!(
        after_undo, before,
        "undo did not restore Google's files byte for byte"
    );
    let report: Value =
        serde_json::from_str(&vm("cat /var/lib/guest-agent/takeover.json")).expect("report");
    assert_eq!(report["status"], "undone");
    let (code, _, _) = takeover(&env, &["--undo"]);
    assert_eq!(code, 2, "a second undo has nothing to do");

    // A Google agent process running beside us is named by doctor.
    let fake = env.dir().join("google_guest_agent");
    std::fs::copy("/bin/sleep", &fake).expect("copy sleep");
    let mut cmd = env.vm().command(fake.to_str().unwrap());
    cmd.arg("60");
    let google = Proc::spawn("google_guest_agent", cmd);
    let check = google_check(&env);
    assert_eq!(check["status"], "fail", "{check:#}");
    assert!(
        check["summary"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("pid {}", google.pid())),
        "{check:#}"
    );
    drop(google);
    drop(sshd);
}

#[test]
fn with_os_login_on_googles_block_goes_and_our_keys_command_alone_stays_in_effect() {
    if !require_root(
        "with_os_login_on_googles_block_goes_and_our_keys_command_alone_stays_in_effect",
    ) {
        return;
    }
    let env = TestEnv::with_emulator("takeover-osl", None);
    let (key, public) = keypair_of(env.dir(), "alice", "ed25519");
    env.emulator()
        .set_attribute("project", "enable-oslogin", "TRUE");
    env.emulator().ok(
        "POST",
        "/oslogin/users",
        Some(&guest_agent_e2e::oslogin::user("alice", 200001, &public, true, true).to_string()),
    );
    env.vm().private_var();
    env.vm().run(
        r#"set -e
mkfifo -m 0644 /etc/ssh/oslogin_trustedca.pub
{ printf '%s\n' '#### Google OS Login control. Do not edit this section. ####' \
    'TrustedUserCAKeys /etc/ssh/oslogin_trustedca.pub' \
    'AuthorizedPrincipalsCommand /usr/bin/google_authorized_principals %u %k' \
    'AuthorizedPrincipalsCommandUser root' \
    'AuthorizedKeysCommand /usr/bin/google_authorized_keys' \
    'AuthorizedKeysCommandUser root' \
    '#### End Google OS Login control section. ####'
  cat /etc/ssh/sshd_config
  printf '%s\n' '#### Google OS Login control. Do not edit this section. ####' \
    'Include /var/google-users.d/*' \
    '#### End Google OS Login control section. ####'; } > /etc/ssh/sshd_config.new
mv /etc/ssh/sshd_config.new /etc/ssh/sshd_config
sed -i -e '/^passwd:/s/$/ cache_oslogin oslogin/' -e '/^group:/s/$/ cache_oslogin oslogin/' /etc/nsswitch.conf
mkdir -m 0750 /var/google-sudoers.d /var/google-users.d
printf 'alice ALL=(ALL:ALL) NOPASSWD: ALL\n' > /var/google-sudoers.d/alice
printf '#includedir /var/google-sudoers.d\n' > /etc/sudoers.d/google-oslogin
chmod 0440 /etc/sudoers.d/google-oslogin /var/google-sudoers.d/alice
"#,
    );
    let mut env = env;
    let t0 = Instant::now();
    env.start_agent(guest_agent_e2e::AgentOptions {
        config: format!("[oslogin]\nhelper_path = \"{AGENT}\"\n"),
        ..Default::default()
    });
    env.wait_ready(t0, Duration::from_secs(30));
    env.agent().expect_line(
        t0,
        &["took over from Google's guest agent"],
        Duration::from_secs(60),
    );
    // The OS Login reconciler plans sshd again once Google's block is gone: our command alone,
    // nothing chained to Google's. Its line comes after the edit and sshd's reload (the drop-in
    // is written before `sshd_config`, so `sshd -T` shows the new command before the edit is
    // done; an sshd started in that window gets the reload's SIGHUP and refuses connections
    // while it re-executes).
    env.agent().expect_line(
        t0,
        &["no other AuthorizedKeysCommand to chain any more"],
        Duration::from_secs(60),
    );
    let keys_command = || {
        run(
            &env,
            "/usr/sbin/sshd -T -f /etc/ssh/sshd_config | grep '^authorizedkeyscommand '",
        )
    };
    assert!(
        keys_command().starts_with(&format!(
            "authorizedkeyscommand {SSHD_HELPER} authorized-keys"
        )) && !keys_command().contains("google"),
        "still chained to Google's: {}\n{}",
        keys_command(),
        env.agent().dump()
    );
    let sshd = start_sshd(env.vm(), &[]);
    let out = ssh(
        &env.ns,
        &key,
        "alice",
        "id -un && sudo -n true && echo sudo-ok",
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("alice") && said.contains("sudo-ok"),
        "{said}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.dump()
    );
    let nss = run(&env, "grep -E '^(passwd|group):' /etc/nsswitch.conf");
    assert!(
        nss.contains("guestagent") && !nss.contains("oslogin"),
        "{nss}"
    );
    assert!(!run(&env, "cat /etc/ssh/sshd_config").contains("Google"));
    for gone in [
        "/etc/sudoers.d/google-oslogin",
        "/var/google-sudoers.d",
        "/var/google-users.d",
        "/etc/ssh/oslogin_trustedca.pub",
    ] {
        assert_eq!(
            run(&env, &format!("test -e {gone} && echo present; true")),
            "",
            "{gone}"
        );
    }
    let report: Value =
        serde_json::from_str(&run(&env, "cat /var/lib/guest-agent/takeover.json")).expect("report");
    assert_eq!(report["status"], "done", "{report:#}");
    assert_eq!(report["failed"], serde_json::json!([]), "{report:#}");
    drop(sshd);
}
