//! `guest-agent doctor` end to end, run inside the VM (its mount and network namespaces) against
//! the emulator, a real sshd configuration and glibc: a healthy baseline, then one fault planted
//! at a time (and reverted), each reported by the right check with status fail and exit 1.
//! Needs root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent_e2e::TestEnv;
use guest_agent_e2e::accounts::{KeysVm, keypair_of};
use guest_agent_e2e::oslogin::{OsLoginVm, keypair, user};
use guest_agent_e2e::require_root;
use serde_json::{Value, json};

const CA_FILE: &str = "/etc/ssh/guest-agent/trusted-ca.pub";

/// What one doctor run said.
struct Report {
    code: i32,
    json: Value,
    raw: String,
}

impl Report {
    fn check(&self, id: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == json!(id)))
            .unwrap_or_else(|| panic!("no check {id}:\n{}", self.raw))
    }

    fn status(&self, id: &str) -> &str {
        self.check(id)["status"].as_str().unwrap_or("")
    }

    fn summary(&self, id: &str) -> &str {
        self.check(id)["summary"].as_str().unwrap_or("")
    }

    /// Asserts the statuses of the given checks.
    fn expect(&self, want: &[(&str, &str)]) {
        for (id, status) in want {
            assert_eq!(self.status(id), *status, "check {id}:\n{}", self.raw);
        }
    }

    /// Asserts that `id` failed with a summary containing `needle`, a fix, and exit status 1.
    fn expect_fail(&self, id: &str, needle: &str) {
        assert_eq!(self.status(id), "fail", "check {id}:\n{}", self.raw);
        assert!(
            self.summary(id).contains(needle),
            "{id} summary lacks {needle:?}:\n{}",
            self.raw
        );
        assert!(
            self.check(id)["fix"]
                .as_str()
                .is_some_and(|f| !f.is_empty()),
            "{id} has no fix:\n{}",
            self.raw
        );
        assert_eq!(self.code, 1, "exit status:\n{}", self.raw);
        assert_eq!(self.json["ok"], json!(false));
    }
}

/// `guest-agent --config CONFIG doctor ARGS... --json` inside the VM.
fn doctor(env: &TestEnv, args: &[&str]) -> Report {
    let t0 = Instant::now();
    let out = env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .arg("--config")
        .arg(env.config_path())
        .arg("doctor")
        .args(args)
        .arg("--json")
        .output()
        .expect("run doctor");
    // How long it took is for the CI log: every step has its own deadline (3 s per metadata
    // request, 5 s per sshd run, 2 s for the daemon), checked where one is cut (below).
    let took = t0.elapsed();
    eprintln!("doctor {args:?}: {took:?}");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: Value = serde_json::from_str(&raw).unwrap_or_else(|e| {
        panic!(
            "doctor output is not JSON ({e}):\n{raw}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Report {
        code: out.status.code().unwrap_or(-1),
        json,
        raw,
    }
}

/// The same, as text.
fn doctor_text(env: &TestEnv, args: &[&str]) -> (i32, String) {
    let out = env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .arg("--config")
        .arg(env.config_path())
        .arg("doctor")
        .args(args)
        .output()
        .expect("run doctor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// alice (login role), bob (no login role), carol (login role, her only key expired in 2001);
/// CA refreshed every second, waited for.
fn oslogin_vm(tag: &str) -> (OsLoginVm, PathBuf, String) {
    let mut alice_key = None;
    let vm = OsLoginVm::start(tag, "ca_refresh_secs = 1\n", |env| {
        let (k, alice_pub) = keypair(env.dir(), "alice");
        let (_, bob_pub) = keypair(env.dir(), "bob");
        let (_, carol_pub) = keypair(env.dir(), "carol");
        let emu = env.emulator();
        for u in [
            user("alice", 200001, &alice_pub, true, false),
            user("bob", 200002, &bob_pub, false, false),
            json!({"email": "carol@example.com", "username": "carol", "uid": 200003, "gid": 200003,
                   "keys": [{"key": carol_pub, "expiration_usec": 1_000_000_000_000_000u64}],
                   "login": true, "admin": false}),
        ] {
            emu.ok("POST", "/oslogin/users", Some(&u.to_string()));
        }
        alice_key = Some((k, alice_pub));
    });
    let (k, p) = alice_key.expect("setup ran");
    wait_for_ca(&vm);
    (vm, k, p)
}

fn wait_for_ca(vm: &OsLoginVm) {
    let a = vm.env.emulator().ok("GET", "/ca", None).json();
    let blob = a["public_keys"][0]
        .as_str()
        .and_then(|k| k.split_whitespace().nth(1))
        .expect("emulator CA key")
        .to_owned();
    let t0 = Instant::now();
    while !vm.env.vm().read(CA_FILE).is_some_and(|f| f.contains(&blob)) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "CA file never filled"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Has the emulator sign alice's key, valid from `offset` seconds from now for an hour.
fn sign(vm: &OsLoginVm, key: &Path, public: &str, offset: i64) -> PathBuf {
    vm.env.emulator().sign_into("alice", public, offset, key)
}

/// Everything a healthy OS Login user needs is ok.
fn expect_healthy_oslogin(r: &Report) {
    r.expect(&[
        ("metadata", "ok"),
        ("oslogin", "ok"),
        ("sshd-config", "ok"),
        ("helper-path", "ok"),
        ("nsswitch", "ok"),
        ("user", "ok"),
        ("authorization", "ok"),
        ("keys", "ok"),
        ("ssh-dir", "skip"),
        ("ca-file", "ok"),
        ("daemon", "ok"),
    ]);
    assert_eq!((r.code, &r.json["ok"]), (0, &json!(true)), "{}", r.raw);
}

#[test]
fn doctor_finds_host_faults_one_at_a_time() {
    if !require_root("doctor_finds_host_faults_one_at_a_time") {
        return;
    }
    let (vm, key, public) = oslogin_vm("doc-host");
    let env = &vm.env;
    let v = env.vm();

    // Baseline, with a valid certificate too.
    let cert = sign(&vm, &key, &public, 0);
    let r = doctor(env, &["alice", "--cert", cert.to_str().unwrap()]);
    expect_healthy_oslogin(&r);
    r.expect(&[("certificate", "ok")]);
    assert!(r.summary("user").contains("guestagent"), "{}", r.raw);
    assert_eq!(r.check("authorization")["details"]["admin"], json!("no"));
    let (code, text) = doctor_text(env, &["alice"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("\nok    sshd-config"), "{text}");

    // (b) sshd line order: an AuthorizedKeysCommand above the Include.
    v.run("cp -a /etc/ssh/sshd_config /etc/ssh/sshd_config.doctor && sed -i '1i AuthorizedKeysCommand /bin/false' /etc/ssh/sshd_config");
    let r = doctor(env, &["alice"]);
    r.expect_fail(
        "sshd-config",
        "line order wrong: /etc/ssh/sshd_config:1 sets `AuthorizedKeysCommand /bin/false`",
    );
    assert!(
        r.check("sshd-config")["fix"]
            .as_str()
            .unwrap()
            .contains("line 1 of /etc/ssh/sshd_config"),
        "{}",
        r.raw
    );
    // The text form: the finding on its check's line, then what to do.
    let (code, text) = doctor_text(env, &["alice"]);
    eprintln!("{text}");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL  sshd-config    line order wrong: /etc/ssh/sshd_config:1"),
        "{text}"
    );
    assert!(
        text.contains("What to do:\n")
            && text.contains(
                "sshd-config (fail): remove or comment out line 1 of /etc/ssh/sshd_config"
            ),
        "{text}"
    );
    v.run("mv /etc/ssh/sshd_config.doctor /etc/ssh/sshd_config");

    // (b') the same from a drop-in that sorts before the agent's.
    v.run("printf 'AuthorizedKeysCommand /bin/false\\n' > /etc/ssh/sshd_config.d/10-doctor.conf");
    let r = doctor(env, &["alice"]);
    r.expect_fail(
        "sshd-config",
        "/etc/ssh/sshd_config.d/10-doctor.conf:1 sets `AuthorizedKeysCommand /bin/false`",
    );
    v.run("rm /etc/ssh/sshd_config.d/10-doctor.conf");
    expect_healthy_oslogin(&doctor(env, &["alice"]));

    // (c) the helper's directory group-writable (/srv is the VM's private tmpfs).
    v.run("chmod 0775 /srv");
    let r = doctor(env, &["alice"]);
    r.expect_fail("helper-path", "directory /srv is group/world-writable");
    assert_eq!(
        r.check("helper-path")["details"]["offending"],
        json!("/srv")
    );
    v.run("chmod 0755 /srv");

    // (d) nsswitch.conf without the module.
    v.run("cp -a /etc/nsswitch.conf /etc/nsswitch.doctor && sed -i 's/ guestagent//' /etc/nsswitch.conf");
    let r = doctor(env, &["alice"]);
    r.expect_fail(
        "nsswitch",
        "`guestagent` is missing from the passwd and group lines",
    );
    r.expect(&[("user", "fail")]);
    v.run("mv /etc/nsswitch.doctor /etc/nsswitch.conf");
    expect_healthy_oslogin(&doctor(env, &["alice"]));
}

#[test]
fn doctor_finds_account_faults_one_at_a_time() {
    if !require_root("doctor_finds_account_faults_one_at_a_time") {
        return;
    }
    let (mut vm, key, public) = oslogin_vm("doc-acct");
    expect_healthy_oslogin(&doctor(&vm.env, &["alice"]));

    // (e) bob has no login role.
    let r = doctor(&vm.env, &["bob"]);
    r.expect_fail("authorization", "bob@example.com lacks the login role");
    r.expect(&[("oslogin", "ok"), ("user", "ok"), ("keys", "ok")]);

    // (f) carol's only key expired.
    let r = doctor(&vm.env, &["carol"]);
    r.expect_fail(
        "keys",
        "all 1 keys of carol in the OS Login profile expired",
    );
    assert!(r.summary("keys").contains("2001-09-09"), "{}", r.raw);
    r.expect(&[("authorization", "ok")]);

    // (i) a certificate valid two hours ago for one hour.
    let cert = sign(&vm, &key, &public, -7200);
    let r = doctor(&vm.env, &["alice", "--cert", cert.to_str().unwrap()]);
    r.expect_fail("certificate", "expired at");
    r.expect(&[("authorization", "ok"), ("ca-file", "ok")]);

    // (h) a stale CA file: the agent stopped (so nothing rewrites it), mtime two hours back.
    vm.sshd = None;
    vm.env.agent = None; // killed by PID
    vm.env
        .vm()
        .run(&format!("touch -d '2 hours ago' {CA_FILE}"));
    let r = doctor(&vm.env, &["alice"]);
    r.expect_fail("ca-file", "longer than oslogin.ca_max_stale_secs");
    r.expect(&[("daemon", "warn"), ("authorization", "ok")]);
    vm.env.vm().run(&format!("touch {CA_FILE}"));
    let r = doctor(&vm.env, &["alice"]);
    r.expect(&[("ca-file", "ok"), ("daemon", "warn")]);
    assert_eq!(r.code, 0, "a warning is not a failure:\n{}", r.raw);

    // (a) OS Login off on the instance (the project still says TRUE), asking about alice.
    vm.env
        .emulator()
        .set_attribute("instance", "enable-oslogin", "false");
    let r = doctor(&vm.env, &["alice"]);
    r.expect_fail(
        "oslogin",
        "OS Login off: instance attribute enable-oslogin = \"false\" (overrides the project's \"TRUE\")",
    );
    assert!(
        r.summary("oslogin").contains("alice is an OS Login user"),
        "{}",
        r.raw
    );
    r.expect(&[("authorization", "skip")]);

    // A hanging metadata service costs one request deadline, not a hang: the tree request
    // is cut by its deadline and nothing more is asked (the daemon is stopped: every request
    // the emulator sees is the doctor's). The bound is 10x that 3 s deadline.
    vm.env.emulator().clear_requests();
    vm.env
        .emulator()
        .add_fault(json!({"path_prefix": "/", "kind": {"kind": "hang"}, "count": null}));
    let t0 = Instant::now();
    let r = doctor(&vm.env, &["alice"]);
    let took = t0.elapsed();
    r.expect_fail("metadata", "within 3s");
    let asked = vm.env.emulator().requests();
    assert_eq!(
        asked.len(),
        1,
        "a hanging service costs one request, not one per check: {asked:#?}"
    );
    assert!(took < Duration::from_secs(30), "doctor took {took:?}");
}

#[test]
fn doctor_finds_metadata_key_faults() {
    if !require_root("doctor_finds_metadata_key_faults") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, dave_pub) = keypair_of(dir.path(), "dave", "ed25519");
    let (_, erin_pub) = keypair_of(dir.path(), "erin", "ed25519");
    let keys = format!(
        "dave:{dave_pub}\nerin:{} google-ssh {{\"userName\":\"erin@example.com\",\"expireOn\":\"2020-01-01T00:00:00+0000\"}}\n",
        erin_pub
            .rsplit_once(' ')
            .map(|(k, _)| k)
            .unwrap_or(&erin_pub)
    );
    // A long check interval: the agent does not repair what the test plants.
    let vm = KeysVm::start("doc-keys", "check_interval_secs = 3600\n", &[], |env| {
        env.emulator().set_attribute("instance", "ssh-keys", &keys);
    });
    let t0 = Instant::now();
    while vm
        .env
        .vm()
        .sh("test -s /home/dave/.ssh/authorized_keys")
        .status
        .code()
        != Some(0)
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", vm.dump());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Baseline: dave, a metadata-keys user.
    let r = doctor(&vm.env, &["dave"]);
    r.expect(&[
        ("metadata", "ok"),
        ("oslogin", "ok"),
        ("sshd-config", "ok"),
        ("helper-path", "skip"),
        ("nsswitch", "skip"),
        ("user", "ok"),
        ("authorization", "skip"),
        ("keys", "ok"),
        ("ssh-dir", "ok"),
        ("ca-file", "skip"),
        ("daemon", "ok"),
    ]);
    assert!(
        r.summary("oslogin")
            .contains("dave is a metadata-keys user"),
        "{}",
        r.raw
    );
    assert_eq!(r.code, 0, "{}", r.raw);

    // (f) erin's only key expired (so the agent made no account for her either).
    let r = doctor(&vm.env, &["erin"]);
    r.expect_fail(
        "keys",
        "all 1 keys of erin in the ssh-keys metadata expired (latest expired at 2020-01-01 00:00:00 UTC",
    );

    // (g) ~/.ssh mode 0777.
    vm.vm("chmod 0777 /home/dave/.ssh");
    let r = doctor(&vm.env, &["dave"]);
    r.expect_fail("ssh-dir", "/home/dave/.ssh is world-writable (mode 0777");
    assert_eq!(
        r.check("ssh-dir")["fix"],
        json!("chmod 700 /home/dave/.ssh")
    );
    vm.vm("chmod 0700 /home/dave/.ssh");
    let r = doctor(&vm.env, &["dave"]);
    r.expect(&[("ssh-dir", "ok")]);
    assert_eq!(r.code, 0, "{}", r.raw);
}
