//! Issue 13's attacks, each performed for real in a namespace VM (real sshd and ssh, glibc
//! through the NSS module, real sudo and shadow tools), against the agent and the emulator.
//! Each test's comment says the attack, who makes it (D: whoever controls OS Login directory
//! fields; M: whoever edits `ssh-keys` metadata; L: a local unprivileged user) and what the
//! agent did before the fix. Needs root.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_agent_e2e::TestEnv;
use guest_agent_e2e::oslogin::{OsLoginVm, keypair, user};
use guest_agent_e2e::require_root;
use serde_json::{Value, json};

/// A directory user with every field given.
fn profile(name: &str, uid: u32, gid: u32, home: &str, key: &str) -> Value {
    json!({"email": format!("{name}@example.com"), "username": name, "uid": uid, "gid": gid,
           "home": home, "keys": [{"key": key, "expiration_usec": null}], "login": true, "admin": false})
}

fn add_user(env: &TestEnv, u: &Value) {
    env.emulator()
        .ok("POST", "/oslogin/users", Some(&u.to_string()));
}

/// A local account written straight into the VM's private /etc (useradd would see directory
/// names through NSS), with a home of its own and a shadow entry (PAM's account check needs
/// one: without it no login as the account works, attack or not).
fn local_account(env: &TestEnv, name: &str, id: u32, gecos: &str) {
    env.vm().run(&format!(
        "printf '{name}:x:{id}:{id}:{gecos}:/home/{name}:/bin/bash\\n' >> /etc/passwd; \
         echo '{name}:x:{id}:' >> /etc/group; \
         echo '{name}:*:19000:0:99999:7:::' >> /etc/shadow; \
         mkdir -p /home/{name} && chown {id}:{id} /home/{name} && chmod 700 /home/{name}"
    ));
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// alice: a directory user with the login role (proves logins work in each VM).
fn alice_key(env: &TestEnv) -> PathBuf {
    let (key, public) = keypair(env.dir(), "alice");
    add_user(env, &user("alice", 200001, &public, true, false));
    key
}

/// Item 2 (D). The directory names a profile `localadmin`, like a local account of the VM,
/// with the attacker's key and the login role. sshd resolves `localadmin` from /etc/passwd
/// (files first) and asks the keys command: when the daemon was down, the helper decided
/// alone without the "local accounts win" rule and printed the attacker's key, so the
/// attacker was logged in as the local account. Now both paths decide in one module.
#[test]
fn a_directory_profile_named_like_a_local_account_never_logs_in_as_it() {
    if !require_root("a_directory_profile_named_like_a_local_account_never_logs_in_as_it") {
        return;
    }
    let mut keys = None;
    let mut vm = OsLoginVm::start("sec-localname", "", |env| {
        local_account(env, "localadmin", 1500, "");
        let (attacker, public) = keypair(env.dir(), "attacker");
        add_user(
            env,
            &profile("localadmin", 200050, 200050, "/home/localadmin", &public),
        );
        keys = Some((attacker, alice_key(env)));
    });
    let (attacker, alice) = keys.unwrap();
    let out = vm.ssh(&attacker, "localadmin", "id -un");
    assert!(
        !out.status.success(),
        "daemon: logged in as the local account"
    );
    assert!(vm.ssh(&alice, "alice", "true").status.success());
    // The daemon down: the helper's own path.
    vm.env.agent_mut().signal(nix::sys::signal::Signal::SIGKILL);
    vm.env
        .agent_mut()
        .wait_exit(Duration::from_secs(10))
        .expect("agent killed");
    let t0 = Instant::now();
    let out = vm.ssh(&attacker, "localadmin", "id -un");
    assert!(
        !out.status.success(),
        "helper alone: logged in as the local account: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        vm.sshd()
            .wait_for_line(
                t0,
                &["not served: a local account holds the name"],
                Duration::from_secs(30)
            )
            .is_some(),
        "{}",
        vm.sshd().dump()
    );
    let out = vm.ssh(&alice, "alice", "id -un");
    assert!(
        out.status.success(),
        "the helper alone still logs alice in: {}",
        vm.sshd().dump()
    );
}

/// Item 3 (D). A profile's homeDirectory is a directory of the system: the agent created it
/// owned by the user at the first login (`/etc/systemd/system/ssh.service.d`: the user then
/// owns a drop-in directory of a root service), `..` included. And a home that exists and
/// belongs to a local user was served as the directory user's home. Now homes lie below
/// `oslogin.home_bases`, else the user gets /home/NAME, and someone else's directory is never
/// adopted.
#[test]
fn homes_outside_the_bases_or_owned_by_someone_else_are_never_used() {
    if !require_root("homes_outside_the_bases_or_owned_by_someone_else_are_never_used") {
        return;
    }
    let mut keys = None;
    let started = Instant::now();
    let vm = OsLoginVm::start("sec-home", "", |env| {
        local_account(env, "victim", 1501, "");
        let (k, public) = keypair(env.dir(), "mallory");
        add_user(
            env,
            &profile(
                "mallory",
                200060,
                200060,
                "/etc/systemd/system/ssh.service.d",
                &public,
            ),
        );
        add_user(
            env,
            &profile("trudy", 200061, 200061, "/home/../etc/trudy-home", &public),
        );
        add_user(
            env,
            &profile("eve", 200062, 200062, "/home/victim", &public),
        );
        keys = Some(k);
    });
    let key = keys.unwrap();
    let v = vm.env.vm();
    assert!(
        v.sh("test -e /etc/systemd/system/ssh.service.d")
            .status
            .code()
            == Some(1)
    );
    for (name, home) in [("mallory", "/home/mallory"), ("trudy", "/home/trudy")] {
        let (code, line) = vm.vm_run("getent", &["passwd", name]);
        assert_eq!(code, 0, "{name}");
        assert!(line.trim_end().contains(&format!(":{home}:")), "{line}");
        let out = vm.ssh(&key, name, "pwd; stat -c %u .");
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!(
                "{home}\n{}\n",
                if name == "mallory" { 200060 } else { 200061 }
            )
        );
    }
    assert_eq!(
        v.sh("test -e /etc/systemd/system/ssh.service.d")
            .status
            .code(),
        Some(1),
        "created"
    );
    assert_eq!(
        v.sh("test -e /etc/trudy-home").status.code(),
        Some(1),
        "created"
    );
    vm.env.agent().expect_line(
        started,
        &["OS Login home not used"],
        Duration::from_secs(10),
    );
    // eve's home is victim's: served at first (it is below /home), never adopted; after the
    // login sees it belongs to uid 1501, eve is served /home/eve.
    let _ = vm.ssh(&key, "eve", "true");
    assert_eq!(v.run("stat -c %u:%a /home/victim").trim(), "1501:700");
    let mut line = String::new();
    for _ in 0..150 {
        line = vm.vm_run("getent", &["passwd", "eve"]).1;
        if line.contains(":/home/eve:") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        line.contains(":/home/eve:"),
        "{line}\n{}",
        vm.env.agent().dump()
    );
    let out = vm.ssh(&key, "eve", "pwd");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "/home/eve");
    assert_eq!(v.run("stat -c %u:%a /home/victim").trim(), "1501:700");
}

/// Item 4 (D). A profile's primary gid is a local group's, here `wheelish` (gid 1600), which
/// sudoers grants passwordless sudo (as `sudo`, `google-sudoers` or an admin's private group
/// would): the user logged in with that group's rights and `sudo -n` worked. Now a gid a
/// local group holds is refused like a uid clash.
#[test]
fn a_primary_gid_of_a_local_group_gives_none_of_its_rights() {
    if !require_root("a_primary_gid_of_a_local_group_gives_none_of_its_rights") {
        return;
    }
    let mut keys = None;
    let started = Instant::now();
    let vm = OsLoginVm::start("sec-gid", "", |env| {
        env.vm().run(
            "echo 'wheelish:x:1600:' >> /etc/group; \
             echo '%wheelish ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/wheelish; \
             chmod 440 /etc/sudoers.d/wheelish",
        );
        let (k, public) = keypair(env.dir(), "eve");
        add_user(env, &profile("eve", 200070, 1600, "/home/eve", &public));
        keys = Some((k, alice_key(env)));
    });
    let (key, alice) = keys.unwrap();
    let out = vm.ssh(&key, "eve", "sudo -n id -u");
    assert!(
        !out.status.success(),
        "eve got the local group's sudo: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (code, _) = vm.vm_run("getent", &["passwd", "eve"]);
    assert_eq!(code, 2, "eve is not served");
    vm.env.agent().expect_line(
        started,
        &["a local group holds gid 1600"],
        Duration::from_secs(10),
    );
    assert!(vm.ssh(&alice, "alice", "true").status.success());
    // doctor explains it with the same rule.
    let out = vm
        .env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .arg("--config")
        .arg(vm.env.config_path())
        .args(["doctor", "eve"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("is not served on this VM: a local group holds gid 1600"),
        "{text}"
    );
}

/// Item 5 (D, with an ordinary image). /etc/passwd holds a Latin-1 gecos (old images do):
/// reading it as UTF-8 failed, the daemon saw no local accounts at all, and a directory
/// profile named like a local account (`localbob`) was served its keys: sshd resolves the
/// local localbob and the attacker's key logged in as it. Now the files are read as bytes.
#[test]
fn a_passwd_file_that_is_not_utf8_still_protects_local_accounts() {
    if !require_root("a_passwd_file_that_is_not_utf8_still_protects_local_accounts") {
        return;
    }
    let mut keys = None;
    let vm = OsLoginVm::start("sec-latin1", "", |env| {
        local_account(env, "jose", 1502, "Jos\\351");
        local_account(env, "localbob", 1503, "");
        let (k, public) = keypair(env.dir(), "attacker");
        add_user(
            env,
            &profile("localbob", 200080, 200080, "/home/localbob", &public),
        );
        keys = Some((k, alice_key(env)));
    });
    let (key, alice) = keys.unwrap();
    let passwd = vm.env.vm().sh("cat /etc/passwd").stdout;
    assert!(
        passwd.windows(5).any(|w| w == b"Jos\xe9:") && std::str::from_utf8(&passwd).is_err(),
        "the VM's passwd holds a Latin-1 gecos"
    );
    let out = vm.ssh(&key, "localbob", "id -un");
    assert!(!out.status.success(), "logged in as the local localbob");
    let (_, line) = vm.vm_run("getent", &["passwd", "localbob"]);
    assert!(line.starts_with("localbob:x:1503:"), "{line}");
    assert!(vm.ssh(&alice, "alice", "true").status.success());
}

/// Item 6 (D). A directory group `docker` (and one named like systemd's accounts) took the
/// name before `apt install docker.io`: its `groupadd docker` saw the name through NSS and
/// was skipped, so the directory's members were the docker group. And the module sat before
/// `systemd` in nsswitch.conf, shadowing the accounts systemd serves. Now reserved names are
/// refused and the module goes after `systemd` and `sss`.
#[test]
fn directory_groups_cannot_squat_system_names() {
    if !require_root("directory_groups_cannot_squat_system_names") {
        return;
    }
    let mut keys = None;
    let vm = OsLoginVm::start("sec-squat", "", |env| {
        env.vm().run(
            "printf 'passwd: files systemd\\ngroup: files systemd\\nshadow: files\\nhosts: files\\n' > /etc/nsswitch.conf",
        );
        for (name, gid) in [
            ("docker", 300100),
            ("systemd-userdb-test", 300101),
            ("devs", 300102),
        ] {
            env.emulator().ok(
                "POST",
                "/oslogin/groups",
                Some(&json!({"name": name, "gid": gid, "members": ["alice"]}).to_string()),
            );
        }
        keys = Some(alice_key(env));
    });
    let alice = keys.unwrap();
    let nss = vm.env.vm().read("/etc/nsswitch.conf").unwrap();
    assert!(
        nss.contains("passwd: files systemd guestagent\n")
            && nss.contains("group: files systemd guestagent\n"),
        "{nss}"
    );
    assert_eq!(vm.vm_run("getent", &["group", "devs"]).0, 0);
    for name in ["docker", "systemd-userdb-test"] {
        assert_eq!(vm.vm_run("getent", &["group", name]).0, 2, "{name} served");
        assert_eq!(
            vm.vm_run(
                "getent",
                &["group", if name == "docker" { "300100" } else { "300101" }]
            )
            .0,
            2
        );
    }
    // The package's own groupadd now works, and alice is not in the local group.
    let out = vm.env.vm().sh("groupadd docker");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = vm.ssh(&alice, "alice", "id -Gn");
    assert!(out.status.success(), "{}", stderr(&out));
    let groups = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        groups.contains("devs") && !groups.contains("docker"),
        "{groups}"
    );
}

/// Item 11 (anyone who knows a user's public key, which is not secret). sshd runs the keys
/// command when a client merely offers a key (the query) and again for the signature. The
/// first run created the home and wrote the admin's sudo rule, before the client proved it
/// holds the key; and each offered key the profile does not list fetched the profile again,
/// with no budget. Here a real ssh client offers dave's key without being able to sign
/// (passphrase-protected copy, batch mode), then offers five unregistered keys as alice.
#[test]
fn effects_wait_for_the_signature_and_unknown_keys_cost_one_refresh() {
    if !require_root("effects_wait_for_the_signature_and_unknown_keys_cost_one_refresh") {
        return;
    }
    let mut keys = None;
    let vm = OsLoginVm::start("sec-query", "", |env| {
        let (k, public) = keypair(env.dir(), "dave");
        env.emulator().ok(
            "POST",
            "/oslogin/users",
            Some(&user("dave", 200090, &public, true, true).to_string()),
        );
        let locked = env.dir().join("dave-locked");
        std::fs::copy(&k, &locked).unwrap();
        std::fs::copy(k.with_extension("pub"), locked.with_extension("pub")).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-p", "-N", "secret", "-P", "", "-f"])
            .arg(&locked)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        keys = Some((k, locked, alice_key(env)));
    });
    let (dave, locked, alice) = keys.unwrap();
    let t0 = Instant::now();
    let out = vm.ssh(&locked, "dave", "true");
    assert!(!out.status.success(), "logged in without the passphrase");
    // The daemon did authorize the offered key (the query run)...
    vm.env
        .agent()
        .expect_line(t0, &["login authorized"], Duration::from_secs(30));
    // ...and did nothing for it.
    let v = vm.env.vm();
    assert_eq!(
        v.sh("test -e /home/dave").status.code(),
        Some(1),
        "home created on a query"
    );
    let sudoers = v
        .read("/etc/sudoers.d/guest-agent-oslogin")
        .unwrap_or_default();
    assert!(
        !sudoers.contains("dave"),
        "sudo rule written on a query: {sudoers}"
    );
    // The real login (query + signature): home and sudo.
    let out = vm.ssh(&dave, "dave", "pwd; sudo -n id -u");
    assert!(
        out.status.success(),
        "{}\n{}",
        stderr(&out),
        vm.env.agent().dump()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/home/dave\n0\n");

    // Five keys the profile does not list, then alice's own: one refresh of her profile.
    let strays: Vec<PathBuf> = (0..5)
        .map(|i| keypair(vm.env.dir(), &format!("stray{i}")).0)
        .collect();
    let mut offered: Vec<&std::path::Path> = strays.iter().map(PathBuf::as_path).collect();
    offered.push(&alice);
    vm.env.emulator().clear_requests();
    let out = guest_agent_e2e::vm::ssh_offering(&vm.env.ns, &offered, "alice", "true");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        vm.env.emulator().requests_with_param("username=alice"),
        1,
        "profile fetches for five unknown keys"
    );
}

/// Item 17 (L or D, with a local group in the way). sshd ignores OS Login users' own
/// `~/.ssh/authorized_keys` through `Match Group guest-agent-oslogin`. A local group holding
/// that name (a leftover, or made by an admin) has no directory members, so the rule matched
/// nobody: alice's own key file (here holding a key the directory never registered, the way
/// a revoked user keeps a door open) logged her in, roles or not. Now no OS Login user is
/// served while the users group cannot work, and the error says what to change.
#[test]
fn a_users_group_taken_locally_fails_closed() {
    if !require_root("a_users_group_taken_locally_fails_closed") {
        return;
    }
    let mut keys = None;
    let started = Instant::now();
    let vm = OsLoginVm::start("sec-usersgroup", "", |env| {
        env.vm()
            .run("echo 'guest-agent-oslogin:x:5002:' >> /etc/group");
        let (own, own_pub) = keypair(env.dir(), "alice-own");
        env.vm().run(&format!(
            "mkdir -p /home/alice/.ssh && echo '{own_pub}' > /home/alice/.ssh/authorized_keys && \
             chown -R 200001:200001 /home/alice && chmod 700 /home/alice /home/alice/.ssh && \
             chmod 600 /home/alice/.ssh/authorized_keys"
        ));
        keys = Some((own, alice_key(env)));
    });
    let (own, registered) = keys.unwrap();
    let out = vm.ssh(&own, "alice", "id -un");
    assert!(
        !out.status.success(),
        "alice's own key file let her in: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!vm.ssh(&registered, "alice", "true").status.success());
    vm.env.agent().expect_line(
        started,
        &["a local group holds the OS Login users group's name or gid"],
        Duration::from_secs(10),
    );
}
