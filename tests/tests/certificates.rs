//! OS Login certificates end to end: the emulator's CA signs short-lived user certificates;
//! sshd trusts the CA through the agent's file and maps certificates to users through the
//! AuthorizedPrincipalsCommand. Needs root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent_e2e::oslogin::{OsLoginVm, keypair, user};
use guest_agent_e2e::require_root;
use serde_json::json;

/// alice (login role) with a registered key; a second key of hers is only ever used with a
/// certificate, so a login with it proves the certificate path. The CA file is refreshed every
/// second.
fn start(tag: &str) -> (OsLoginVm, PathBuf, String) {
    start_with(tag, "ca_refresh_secs = 1\n")
}

/// [`start`] with this `[oslogin]` configuration.
fn start_with(tag: &str, config: &str) -> (OsLoginVm, PathBuf, String) {
    let mut cert_key = None;
    let vm = OsLoginVm::start(tag, config, |env| {
        let (_, registered) = keypair(env.dir(), "alice");
        let (k, p) = keypair(env.dir(), "alice-cert-only");
        env.emulator().ok(
            "POST",
            "/oslogin/users",
            Some(&user("alice", 200001, &registered, true, false).to_string()),
        );
        cert_key = Some((k, p));
    });
    let (k, p) = cert_key.unwrap();
    wait_for_ca(&vm);
    (vm, k, p)
}

fn ca_keys(vm: &OsLoginVm) -> Vec<String> {
    let a = vm.env.emulator().ok("GET", "/ca", None).json();
    a["public_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the agent's CA file holds the emulator's current CA key.
fn wait_for_ca(vm: &OsLoginVm) -> Duration {
    let want = ca_keys(vm);
    let blob = want[0].split_whitespace().nth(1).unwrap().to_owned();
    let t0 = Instant::now();
    loop {
        let file = vm
            .env
            .vm()
            .read("/etc/ssh/guest-agent/trusted-ca.pub")
            .unwrap_or_default();
        if file.contains(&blob) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(70),
            "CA file never got the key: {file:?}\n{}",
            vm.env.agent().dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `oslogin/certificates` requests the emulator saw since it last forgot its requests.
fn certificates_requests(vm: &OsLoginVm) -> usize {
    vm.env
        .emulator()
        .requests()
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/oslogin/certificates"))
        })
        .count()
}

/// Has the emulator sign `public` for alice, written where ssh finds it for `key`.
fn sign(vm: &OsLoginVm, key: &Path, public: &str, valid_after_offset: i64) {
    vm.env
        .emulator()
        .sign_into("alice", public, valid_after_offset, key);
}

#[test]
fn certificate_logins_follow_the_ca_the_validity_and_the_role() {
    if !require_root("certificate_logins_follow_the_ca_the_validity_and_the_role") {
        return;
    }
    let (vm, key, public) = start("cert");
    // sshd's effective config: the principals command is in effect (listed before the keys
    // command, OpenSSH < 9.4 drops it otherwise), and the CA file is trusted.
    let t = vm
        .env
        .vm()
        .run("/usr/sbin/sshd -T -f /etc/ssh/sshd_config -C user=alice,host=h,addr=127.0.0.1");
    assert!(
        t.contains("authorizedprincipalscommand /srv/guest-agent-sshd authorized-principals %u %k"),
        "{t}"
    );
    assert!(
        t.contains("trustedusercakeys /etc/ssh/guest-agent/trusted-ca.pub"),
        "{t}"
    );

    // Without a certificate the unregistered key is refused.
    assert!(!vm.ssh(&key, "alice", "true").status.success());
    sign(&vm, &key, &public, 0);
    let out = vm.ssh(&key, "alice", "id -un");
    assert!(
        out.status.success(),
        "{}\n{}",
        vm.env.agent().dump(),
        vm.sshd().dump()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice");

    // Expired (valid two hours ago for one hour): refused.
    sign(&vm, &key, &public, -7200);
    assert!(
        !vm.ssh(&key, "alice", "true").status.success(),
        "expired certificate accepted"
    );

    // Signed by another CA, with a plausible extension: refused.
    let dir = vm.env.dir().to_owned();
    let other = dir.join("other-ca");
    let keygen = |args: &[&str]| {
        let out = std::process::Command::new("ssh-keygen")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        other.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(format!("{}-cert.pub", key.display()));
    keygen(&[
        "-q",
        "-s",
        other.to_str().unwrap(),
        "-I",
        "alice@example.com",
        "-n",
        "alice",
        "-V",
        "-5m:+1h",
        "-O",
        "extension:fingerprint@google.com=forged",
        &format!("{}.pub", key.display()),
    ]);
    assert!(
        !vm.ssh(&key, "alice", "true").status.success(),
        "a foreign CA was trusted"
    );

    // A valid certificate again, then the role revoked: refused at the next login.
    sign(&vm, &key, &public, 0);
    assert!(vm.ssh(&key, "alice", "true").status.success());
    vm.env.emulator().ok(
        "PUT",
        "/oslogin/users/alice/roles",
        Some(r#"{"login": false, "admin": false}"#),
    );
    assert!(
        !vm.ssh(&key, "alice", "true").status.success(),
        "revoked role"
    );
}

#[test]
fn a_ca_rotation_reaches_the_file_and_old_certificates_stop_working() {
    if !require_root("a_ca_rotation_reaches_the_file_and_old_certificates_stop_working") {
        return;
    }
    let (vm, key, public) = start("rotate");
    sign(&vm, &key, &public, 0);
    assert!(vm.ssh(&key, "alice", "true").status.success());
    let old_cert = std::fs::read_to_string(format!("{}-cert.pub", key.display())).unwrap();
    vm.env.emulator().ok("POST", "/ca/rotate", None);
    // Refreshed every second here (no login asks for it): about a second; the bound is 60x
    // that, so only a rotation that never arrives fails it.
    let took = wait_for_ca(&vm);
    eprintln!("rotation reached the file after {took:?}");
    assert!(
        took < Duration::from_secs(60),
        "rotation reached the file after {took:?}"
    );
    // The new CA's certificate works; the old one no longer does.
    sign(&vm, &key, &public, 0);
    assert!(
        vm.ssh(&key, "alice", "true").status.success(),
        "{}",
        vm.sshd().dump()
    );
    std::fs::write(format!("{}-cert.pub", key.display()), old_cert).unwrap();
    assert!(
        !vm.ssh(&key, "alice", "true").status.success(),
        "the old CA is still trusted"
    );
}

#[test]
fn with_the_service_down_the_ca_file_keeps_its_keys_until_they_are_too_old() {
    if !require_root("with_the_service_down_the_ca_file_keeps_its_keys_until_they_are_too_old") {
        return;
    }
    let (vm, key, public) = start("castale");
    sign(&vm, &key, &public, 0);
    let read = || {
        vm.env
            .vm()
            .read("/etc/ssh/guest-agent/trusted-ca.pub")
            .unwrap_or_default()
    };
    let before = read();
    assert!(!before.is_empty());
    let emu = vm.env.emulator();
    emu.clear_requests();
    emu.add_fault(json!({"path_prefix": "/computeMetadata/v1/oslogin/", "kind": {"kind": "status", "code": 503}, "count": null}));
    // Three failed refreshes (counted at the emulator, not slept for).
    let failed = || {
        emu.requests()
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/oslogin/certificates"))
                    && r["status"] == json!(503)
            })
            .count()
    };
    let t0 = Instant::now();
    while failed() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the refreshes did not meet the fault ({})",
            failed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(read(), before, "the last good keys stay");
    // The login itself fails closed: no live decision.
    assert!(!vm.ssh(&key, "alice", "true").status.success());
    // Keys older than the limit (1 h by default) are removed at the next failed refresh.
    vm.env
        .vm()
        .run("touch -d '2 hours ago' /etc/ssh/guest-agent/trusted-ca.pub");
    let t0 = Instant::now();
    while !read().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "stale CA keys still trusted:\n{}",
            vm.env.agent().dump()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The service is back: the keys return.
    vm.env.emulator().clear_faults();
    wait_for_ca(&vm);
}

/// With the production refresh period (600 s), the CA file is filled as soon as OS Login is
/// turned on, not a period later (found by the demo: certificate logins failed for the first
/// minute after OS Login came on).
#[test]
fn the_ca_file_is_filled_as_soon_as_os_login_comes_on() {
    if !require_root("the_ca_file_is_filled_as_soon_as_os_login_comes_on") {
        return;
    }
    let vm = OsLoginVm::start("ca-at-once", "", |env| {
        let (_, registered) = keypair(env.dir(), "alice");
        env.emulator().ok(
            "POST",
            "/oslogin/users",
            Some(&user("alice", 200001, &registered, true, false).to_string()),
        );
    });
    wait_for_ca(&vm);
    // Judged on the emulator's clock: from the answer that turned OS Login on (the agent's
    // first tree request) to the first certificates request. At once is milliseconds; a
    // refresh period later would be 600 s; the bound sits between, over 100x the former.
    let reqs = vm.env.emulator().requests();
    let at = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        reqs.iter()
            .find(|r| pred(r))
            .and_then(|r| r["at_ms"].as_u64())
            .expect("request seen")
    };
    let tree = at(&|r| r["path"] == json!("/computeMetadata/v1/"));
    let certs = at(&|r| {
        r["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/oslogin/certificates"))
    });
    let took = Duration::from_millis(certs.saturating_sub(tree));
    eprintln!("CA fetched {took:?} after the metadata that turned OS Login on");
    assert!(
        took < Duration::from_secs(30),
        "CA fetched {took:?} after OS Login came on (refresh period 600 s)"
    );
}

/// Production refresh period (600 s): right after `POST /ca/rotate`, a certificate of the new
/// CA logs in at its first attempt, without waiting for the file: sshd's CA check fails, the
/// keys command gets the certificate (`%t %k`), the daemon fetches the CA keys once, rewrites
/// the file and answers that attempt with a `cert-authority` line.
#[test]
fn a_certificate_of_a_rotated_ca_logs_in_at_the_first_attempt() {
    if !require_root("a_certificate_of_a_rotated_ca_logs_in_at_the_first_attempt") {
        return;
    }
    let (vm, key, public) = start_with("rotfirst", "");
    sign(&vm, &key, &public, 0);
    assert!(
        vm.ssh(&key, "alice", "true").status.success(),
        "{}",
        vm.sshd().dump()
    );
    let old_cert = std::fs::read_to_string(format!("{}-cert.pub", key.display())).unwrap();
    let emu = vm.env.emulator();
    emu.clear_requests();
    let rotated = emu.ok("POST", "/ca/rotate", None).json();
    let new_ca = rotated["public_key"].as_str().unwrap().to_owned();
    let new_blob = new_ca.split_whitespace().nth(1).unwrap().to_owned();
    sign(&vm, &key, &public, 0);
    let t0 = Instant::now();
    let out = vm.ssh(&key, "alice", "id -un");
    assert!(
        out.status.success(),
        "the first attempt after the rotation failed\n{}\n{}",
        vm.env.agent().dump(),
        vm.sshd().dump()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice");
    eprintln!("first login after the rotation took {:?}", t0.elapsed());
    assert_eq!(
        certificates_requests(&vm),
        1,
        "one CA fetch, made by that login: {:#?}",
        emu.requests()
    );
    let file = vm
        .env
        .vm()
        .read("/etc/ssh/guest-agent/trusted-ca.pub")
        .unwrap_or_default();
    assert!(
        file.contains(&new_blob),
        "the file holds the new CA: {file:?}"
    );
    vm.env
        .agent()
        .expect_line(t0, &["fetching the CA keys now"], Duration::from_secs(10));
    // The old CA's certificate is refused now, and within the 10 s window asks nothing more.
    std::fs::write(format!("{}-cert.pub", key.display()), old_cert).unwrap();
    assert!(
        !vm.ssh(&key, "alice", "true").status.success(),
        "the old CA is still trusted"
    );
    let took = t0.elapsed();
    let n = certificates_requests(&vm);
    assert!(
        n <= 1 + (took.as_secs() / 10) as usize,
        "{n} CA fetches in {took:?}"
    );
}

/// A certificate of a CA the service does not list (made here, with a plausible OS Login
/// extension) is refused, offered again and again, and costs at most one CA fetch per 10 s.
#[test]
fn a_certificate_of_an_unknown_ca_is_refused_and_fetches_the_ca_keys_once_per_window() {
    if !require_root(
        "a_certificate_of_an_unknown_ca_is_refused_and_fetches_the_ca_keys_once_per_window",
    ) {
        return;
    }
    let (vm, key, _public) = start_with("unknownca", "");
    let other = vm.env.dir().join("foreign-ca");
    let keygen = |args: &[&str]| {
        let out = std::process::Command::new("ssh-keygen")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        other.to_str().unwrap(),
    ]);
    keygen(&[
        "-q",
        "-s",
        other.to_str().unwrap(),
        "-I",
        "alice@example.com",
        "-n",
        "alice",
        "-V",
        "-5m:+1h",
        "-O",
        "extension:fingerprint@google.com=forged",
        &format!("{}.pub", key.display()),
    ]);
    vm.env.emulator().clear_requests();
    let t0 = Instant::now();
    for attempt in 0..4 {
        assert!(
            !vm.ssh(&key, "alice", "true").status.success(),
            "attempt {attempt}: a foreign CA was trusted"
        );
    }
    let took = t0.elapsed();
    let n = certificates_requests(&vm);
    eprintln!("{n} CA fetches for 4 attempts in {took:?}");
    assert!(n >= 1, "the first attempt fetched the CA keys");
    assert!(
        n <= 1 + (took.as_secs() / 10) as usize,
        "{n} CA fetches in {took:?}: more than one per 10 s"
    );
    vm.env.agent().expect_line(
        t0,
        &["certificate refused", "not a trusted OS Login CA"],
        Duration::from_secs(10),
    );
    let file = vm
        .env
        .vm()
        .read("/etc/ssh/guest-agent/trusted-ca.pub")
        .unwrap_or_default();
    assert_eq!(file.lines().count(), 1, "only the emulator's CA: {file:?}");
}

/// An sshd_config written by an older version runs `guest-agent authorized-keys %u %f` (no
/// `%t %k`, and the agent binary itself, not `guest-agent-sshd`): the binary and the daemon
/// still answer it, and the agent writes the new form.
#[test]
fn the_old_two_argument_keys_command_still_works() {
    if !require_root("the_old_two_argument_keys_command_still_works") {
        return;
    }
    let (mut vm, _key, _public) = start_with("oldkeys", "");
    let (agent, helper) = (guest_agent_e2e::vm::AGENT, guest_agent_e2e::vm::SSHD_HELPER);
    let old = format!("AuthorizedKeysCommand={agent} authorized-keys %u %f");
    vm.start_sshd_with(&["-o", &old]);
    let t = vm
        .env
        .vm()
        .run("/usr/sbin/sshd -T -f /etc/ssh/sshd_config -C user=alice,host=h,addr=127.0.0.1");
    let t = format!(
        "{t}{}",
        vm.env.vm().run(&format!(
            "/usr/sbin/sshd -T -f /etc/ssh/sshd_config -o '{old}' -C user=alice,host=h,addr=127.0.0.1"
        ))
    );
    assert!(
        t.contains(&format!(
            "authorizedkeyscommand {helper} authorized-keys %u %f %t %k"
        )),
        "the agent writes the new form: {t}"
    );
    assert!(
        t.contains(&format!(
            "authorizedkeyscommand {agent} authorized-keys %u %f\n"
        )),
        "sshd runs the old form here: {t}"
    );
    let registered = vm.env.dir().join("alice");
    let out = vm.ssh(&registered, "alice", "id -un");
    assert!(
        out.status.success(),
        "{}\n{}",
        vm.env.agent().dump(),
        vm.sshd().dump()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alice");
}
