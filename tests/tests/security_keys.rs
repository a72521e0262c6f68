//! OS Login security-key mode (`enable-oslogin-sk`, issue 17 item 3): the keys command serves
//! the profile's `securityKeys` (asked with `view=securityKey`) and nothing else; certificates
//! are refused in that mode. A real login with a security key needs the hardware, so the keys
//! command's output is checked, and that an ordinary key no longer opens the account through a
//! real sshd. Needs root.

use std::time::{Duration, Instant};

use guest_agent_e2e::oslogin::{OsLoginVm, keypair, user};
use guest_agent_e2e::require_root;

/// A syntactically real `sk-ssh-ed25519@openssh.com` public key (type, 32-byte key,
/// application `ssh:`), made without a security key.
fn sk_key_line(comment: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "{ printf '\\000\\000\\000\\032sk-ssh-ed25519@openssh.com\\000\\000\\000\\040'; \
             head -c 32 /dev/urandom; printf '\\000\\000\\000\\004ssh:'; } | base64 -w0",
        )
        .output()
        .expect("base64");
    assert!(out.status.success());
    format!(
        "sk-ssh-ed25519@openssh.com {} {comment}",
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

fn keys_command(vm: &OsLoginVm, name: &str) -> (String, String) {
    let out = vm
        .env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .args(["authorized-keys", name])
        .output()
        .expect("keys command");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn in_security_key_mode_only_security_keys_are_served() {
    if !require_root("in_security_key_mode_only_security_keys_are_served") {
        return;
    }
    let mut keys = None;
    let sk = sk_key_line("alice-yubikey");
    let vm = OsLoginVm::start("seckeys", "", |env| {
        let (k, p) = keypair(env.dir(), "alice");
        let (_, bob) = keypair(env.dir(), "bob");
        let mut alice = user("alice", 200001, &p, true, false);
        alice["security_keys"] = serde_json::json!([sk.clone()]);
        for u in [alice, user("bob", 200002, &bob, true, false)] {
            env.emulator()
                .ok("POST", "/oslogin/users", Some(&u.to_string()));
        }
        keys = Some((k, p));
    });
    let (key, public) = keys.unwrap();
    let blob = public.split_whitespace().nth(1).unwrap().to_owned();
    let (out, _) = keys_command(&vm, "alice");
    assert!(
        out.contains(&blob) && !out.contains("sk-ssh"),
        "sk mode off: {out}"
    );
    assert!(
        vm.ssh(&key, "alice", "true").status.success(),
        "{}",
        vm.sshd().dump()
    );

    let t0 = Instant::now();
    vm.env
        .emulator()
        .set_attribute("instance", "enable-oslogin-sk", "TRUE");
    vm.env.agent().expect_line(
        t0,
        &["OS Login security-key mode on"],
        Duration::from_secs(30),
    );
    let doctor = vm
        .env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .arg("--config")
        .arg(vm.env.config_path())
        .args(["doctor", "alice"])
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("security-key mode on (enable-oslogin-sk)"),
        "{text}"
    );
    vm.env.emulator().clear_requests();
    let (out, _) = keys_command(&vm, "alice");
    assert_eq!(out.trim(), sk, "only the security key");
    let asked: Vec<String> = vm
        .env
        .emulator()
        .requests()
        .iter()
        .filter_map(|r| r["query"].as_str().map(str::to_owned))
        .collect();
    assert!(
        asked.iter().any(|q| q.contains("view=securityKey")),
        "the securityKey view was asked: {asked:?}"
    );
    let (out, _) = keys_command(&vm, "bob");
    assert_eq!(out, "", "a profile without security keys gets no key");
    assert!(
        !vm.ssh(&key, "alice", "true").status.success(),
        "an ordinary key no longer opens the account"
    );
    let out = vm
        .env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .args([
            "authorized-principals",
            "alice",
            "AAAAB3NzaC1yc2EAAAADAQABAAAAgQC",
        ])
        .output()
        .expect("principals command");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificates are not accepted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Off again: the ordinary key works again.
    let t1 = Instant::now();
    vm.env
        .emulator()
        .set_attribute("instance", "enable-oslogin-sk", "FALSE");
    vm.env.agent().expect_line(
        t1,
        &["OS Login security-key mode off"],
        Duration::from_secs(30),
    );
    let (out, _) = keys_command(&vm, "alice");
    assert!(out.contains(&blob), "{out}");
    assert!(vm.ssh(&key, "alice", "true").status.success());
}
