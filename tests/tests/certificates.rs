//! OS Login certificates end to end: the emulator's CA signs short-lived user certificates;
//! sshd trusts the CA through the agent's file and maps certificates to users through the
//! AuthorizedPrincipalsCommand. Needs root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent_e2e::oslogin::{OsLoginVm, keypair, user};
use guest_agent_e2e::require_root;
use serde_json::json;

/// alice (login role) with a registered key; a second key of hers is only ever used with a
/// certificate, so a login with it proves the certificate path.
fn start(tag: &str) -> (OsLoginVm, PathBuf, String) {
    let mut cert_key = None;
    let vm = OsLoginVm::start(tag, "ca_refresh_secs = 1\n", |env| {
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
        t.contains("authorizedprincipalscommand /srv/guest-agent authorized-principals %u %k"),
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
    // Refreshed every second here: about a second; the bound is 60x that (the production
    // refresh period), so only a rotation that never arrives fails it.
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

/// With the production refresh period (60 s), the CA file is filled as soon as OS Login is
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
    // refresh period later would be 60 s; the bound sits between, over 100x the former.
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
        "CA fetched {took:?} after OS Login came on (refresh period 60 s)"
    );
}
