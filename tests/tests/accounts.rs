//! Metadata SSH keys end to end: users and keys from `ssh-keys`, real sshd logins (PAM on and
//! off), sudo, removal, expiry, self-healing, hostile homes, bad lines. Needs root.

use std::time::{Duration, Instant, SystemTime};

use guest_agent_e2e::accounts::{KeysVm, keypair_of};
use guest_agent_e2e::require_root;

/// `expireOn` in the `%Y-%m-%dT%H:%M:%S%z` form, `secs` from now.
fn expire_on(secs: i64) -> String {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + secs;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%S+0000"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn metadata_users_log_in_with_ed25519_and_rsa_keys_and_get_sudo() {
    if !require_root("metadata_users_log_in_with_ed25519_and_rsa_keys_and_get_sudo") {
        return;
    }
    let mut ed = None;
    let mut rsa = None;
    let mut vm = KeysVm::start("keys", "", &[], |env| {
        let (k1, p1) = keypair_of(env.dir(), "alice", "ed25519");
        let (k2, p2) = keypair_of(env.dir(), "alice-rsa", "rsa");
        env.emulator().set_attribute(
            "instance",
            "ssh-keys",
            &format!("alice:{p1}\nalice:from=\"127.0.0.1\" {p2}\n"),
        );
        ed = Some(k1);
        rsa = Some(k2);
    });
    let (ed, rsa) = (ed.unwrap(), rsa.unwrap());
    let out = vm.ssh(&ed, "alice", "id -un; sudo -n id -u");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.dump()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice\n0\n");
    assert!(vm.can_login(&rsa, "alice"), "RSA key with from= option");
    let file = vm.vm("cat /home/alice/.ssh/authorized_keys; stat -c '%a %u' /home/alice/.ssh/authorized_keys /home/alice/.ssh");
    assert!(file.contains("from=\"127.0.0.1\" ssh-rsa "), "{file}");
    assert!(file.contains("# BEGIN guest-agent"), "{file}");
    let shadow = vm.vm("getent shadow alice");
    assert!(
        shadow.starts_with("alice:*:"),
        "password field is * (not locked !): {shadow}"
    );
    // The same without PAM.
    vm.sshd = None;
    vm.sshd = Some(guest_agent_e2e::vm::start_sshd(
        vm.env.vm(),
        &["-o", "UsePAM=no"],
    ));
    let out = vm.ssh(&ed, "alice", "sudo -n true && id -un");
    assert!(
        out.status.success(),
        "UsePAM no: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.dump()
    );
}

#[test]
fn a_removed_key_stops_working_and_a_deleted_file_comes_back() {
    if !require_root("a_removed_key_stops_working_and_a_deleted_file_comes_back") {
        return;
    }
    let mut keys = None;
    let vm = KeysVm::start("remove", "", &[], |env| {
        let (k1, p1) = keypair_of(env.dir(), "bob", "ed25519");
        let (k2, p2) = keypair_of(env.dir(), "bob2", "ed25519");
        env.emulator()
            .set_attribute("instance", "ssh-keys", &format!("bob:{p1}\nbob:{p2}\n"));
        keys = Some((k1, k2, p2));
    });
    let (k1, k2, p2) = keys.unwrap();
    assert!(vm.can_login(&k1, "bob") && vm.can_login(&k2, "bob"));
    let agent = vm.env.agent();
    // Deleting the file on the VM: restored by the next check (every 2 s here), with no
    // metadata change.
    let t0 = Instant::now();
    vm.vm("rm /home/bob/.ssh/authorized_keys");
    let back = vm.wait_login(&k1, "bob", true, Duration::from_secs(30));
    assert!(back.is_some(), "not restored:\n{}", vm.dump());
    eprintln!("deleted file restored after {back:?}");
    agent.expect_line(
        t0,
        &["authorized_keys updated", "bob"],
        Duration::from_secs(30),
    );
    // Editing the managed block away: restored too; the user's own line outside it stays.
    let t0 = Instant::now();
    vm.vm("echo '# my own line' > /home/bob/.ssh/authorized_keys");
    assert!(
        vm.wait_login(&k1, "bob", true, Duration::from_secs(30))
            .is_some()
    );
    agent.expect_line(
        t0,
        &["authorized_keys updated", "bob"],
        Duration::from_secs(30),
    );
    assert!(
        vm.vm("cat /home/bob/.ssh/authorized_keys")
            .contains("# my own line")
    );
    // Removing the first key from metadata: the change rewrites the file (one key left) and
    // the key is refused; the other still works. How soon is for the CI log (bench-report's
    // "one key change among 1,000 users" row has the figure: about 0.5 s).
    let t0 = Instant::now();
    vm.set_keys(&format!("bob:{p2}\n"));
    let gone = vm.wait_login(&k1, "bob", false, Duration::from_secs(30));
    let took = gone.unwrap_or_else(|| panic!("key still accepted:\n{}", vm.dump()));
    eprintln!("removed key refused after {took:?}");
    agent.expect_line(
        t0,
        &["authorized_keys updated", "bob", "keys=1"],
        Duration::from_secs(30),
    );
    assert!(vm.can_login(&k2, "bob"));
}

#[test]
fn an_expiring_key_stops_working_at_its_expiry_without_a_metadata_change() {
    if !require_root("an_expiring_key_stops_working_at_its_expiry_without_a_metadata_change") {
        return;
    }
    let mut key = None;
    let mut expiry = None;
    let vm = KeysVm::start("expiry", "check_interval_secs = 60\n", &[], |env| {
        let (k, p) = keypair_of(env.dir(), "carol", "ed25519");
        // expireOn is in whole seconds: the key expires within the 8th second from now.
        expiry = Some(Instant::now() + Duration::from_secs(8));
        let body = format!(
            "{} google-ssh {{\"userName\":\"carol@example.com\",\"expireOn\":\"{}\"}}",
            p.rsplit_once(' ').map(|x| x.0).unwrap_or(&p),
            expire_on(8)
        );
        env.emulator()
            .set_attribute("instance", "ssh-keys", &format!("carol:{body}\n"));
        key = Some(k);
    });
    let (key, expiry) = (key.unwrap(), expiry.unwrap());
    let t0 = Instant::now();
    assert!(vm.can_login(&key, "carol"), "{}", vm.dump());
    let etag = vm.env.emulator().ok("GET", "/etag", None).body;
    // The key expires 8 s after setup; the check interval is 60 s, so only the wake-up at the
    // expiry itself (the agent wakes a second after it) makes it stop in time. When the agent
    // rewrote the file (its line, read as it came) is judged, not how long ssh logins took.
    let rewritten = vm.env.agent().expect_line(
        t0,
        &["authorized_keys updated", "carol"],
        Duration::from_secs(90),
    );
    let stopped = vm.wait_login(&key, "carol", false, Duration::from_secs(30));
    stopped.unwrap_or_else(|| panic!("the expired key still works:\n{}", vm.dump()));
    let late = rewritten.saturating_duration_since(expiry);
    eprintln!("the expired key's file rewritten {late:?} after the expiry");
    // Never before the expiry (within its second); at most 10 s after it, 10x the second the
    // wake-up adds: the 60 s check it must not wait for would come over 50 s after it.
    assert!(
        rewritten + Duration::from_secs(1) >= expiry,
        "rewritten {:?} before the expiry",
        expiry.saturating_duration_since(rewritten)
    );
    assert!(
        late < Duration::from_secs(10),
        "rewritten {late:?} after the expiry: not by the wake-up at the expiry"
    );
    let now = vm.env.emulator().ok("GET", "/etag", None).body;
    assert_eq!(now, etag, "no metadata change involved");
}

#[test]
fn bad_lines_are_skipped_with_a_reason_and_good_lines_still_apply() {
    if !require_root("bad_lines_are_skipped_with_a_reason_and_good_lines_still_apply") {
        return;
    }
    let mut key = None;
    let vm = KeysVm::start("badlines", "", &[], |env| {
        let (k, p) = keypair_of(env.dir(), "dave", "ed25519");
        let body = p.split_once(' ').map(|x| x.1).unwrap_or("");
        let bad = [
            format!("../x:{p}"),
            format!("root:{p}"),
            format!("eve:{p}\ncommand=\"/bin/sh\" {p}"),
            format!("frank:ssh-ed25519 {}", "A".repeat(100 * 1024)),
            "gina:ssh-ed25519 !!!notbase64!!!".to_string(),
            format!("hank:ssh-foo {body}"),
        ];
        env.emulator().set_attribute(
            "instance",
            "ssh-keys",
            &format!("{}\ndave:{p}\n", bad.join("\n")),
        );
        key = Some(k);
    });
    assert!(vm.can_login(key.as_ref().unwrap(), "dave"), "{}", vm.dump());
    let skipped = vm.env.agent().lines_since(
        std::time::Instant::now() - Duration::from_secs(60),
        &["ssh-keys line skipped"],
    );
    assert!(
        skipped.len() >= 6,
        "each bad line logged with its reason: {skipped:#?}"
    );
    let passwd = vm.vm("cut -d: -f1 /etc/passwd");
    for name in ["frank", "gina", "hank", "x"] {
        assert!(
            !passwd.lines().any(|l| l == name),
            "{name} must not be created: {passwd}"
        );
    }
    // eve's own line is valid; the smuggled next line must not become anyone's option.
    let files = vm.vm("cat /home/*/.ssh/authorized_keys");
    assert!(!files.contains("command="), "{files}");
    assert!(
        !vm.vm("cat /root/.ssh/authorized_keys 2>/dev/null || true")
            .contains("dave"),
        "root refused"
    );
}

/// sha256 of files (absent ones as "-") inside the VM.
fn hashes(vm: &KeysVm, paths: &str) -> String {
    vm.vm(&format!("for f in {paths}; do if [ -e \"$f\" ]; then sha256sum \"$f\"; else echo \"- $f\"; fi; done; ls -la /root/.ssh 2>/dev/null || true"))
}

#[test]
fn hostile_homes_are_refused_and_nothing_outside_them_is_touched() {
    if !require_root("hostile_homes_are_refused_and_nothing_outside_them_is_touched") {
        return;
    }
    let mut keys = None;
    // Four users exist before the agent starts, each home booby-trapped differently.
    let vm = KeysVm::start("hostile", "", &[], |env| {
        env.vm().run(
            "mkdir -p /root/.ssh && echo 'root-key' > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
             for u in mallory1 mallory2 mallory3 honest; do useradd -m -p '*' $u; done
             ln -s /root/.ssh /home/mallory1/.ssh
             mkdir -p /home/mallory2/.ssh && ln -s /etc/shadow /home/mallory2/.ssh/authorized_keys && chown -hR mallory2: /home/mallory2/.ssh
             chown root:root /home/mallory3",
        );
        let (k, p) = keypair_of(env.dir(), "honest", "ed25519");
        let lines: Vec<String> = ["mallory1", "mallory2", "mallory3", "honest"]
            .iter()
            .map(|u| format!("{u}:{p}"))
            .collect();
        keys = Some((k, lines.join("\n")));
        // The attribute is set after the traps (and before the agent starts).
        let _ = &env;
    });
    let (key, lines) = keys.unwrap();
    let before = hashes(&vm, "/etc/shadow /root/.ssh/authorized_keys /etc/passwd");
    let t0 = std::time::Instant::now();
    vm.set_keys(&lines);
    assert!(
        vm.wait_login(&key, "honest", true, Duration::from_secs(30))
            .is_some(),
        "the honest user is served:\n{}",
        vm.dump()
    );
    // A home owned by someone else is refused; links out of the home (~/.ssh to /root/.ssh,
    // authorized_keys to /etc/shadow) are replaced by the user's own, never followed.
    vm.env.agent().expect_line(
        t0,
        &["managed keys not written", "mallory3"],
        Duration::from_secs(30),
    );
    for (user, target) in [("mallory1", "/root/.ssh"), ("mallory2", "/etc/shadow")] {
        vm.env.agent().expect_line(
            t0,
            &["symbolic link the agent does not follow", user, target],
            Duration::from_secs(30),
        );
        assert!(
            vm.wait_login(&key, user, true, Duration::from_secs(30))
                .is_some(),
            "{user}: the key works in the replaced file\n{}",
            vm.dump()
        );
    }
    // Give the agent a few more passes (2 s checks) to try again, then compare.
    std::thread::sleep(Duration::from_secs(5));
    let after = hashes(&vm, "/etc/shadow /root/.ssh/authorized_keys /etc/passwd");
    assert_eq!(before, after, "something outside the users' homes changed");
    assert!(!vm.can_login(&key, "root"));
    assert!(!vm.vm("cat /etc/shadow").contains("ssh-ed25519"));
}

#[test]
fn existing_users_get_keys_but_are_never_deleted_and_removed_users_lose_sudo() {
    if !require_root("existing_users_get_keys_but_are_never_deleted_and_removed_users_lose_sudo") {
        return;
    }
    let mut keys = None;
    let vm = KeysVm::start("existing", "deprovision = \"delete\"\n", &[], |env| {
        env.vm().run("useradd -m -p '*' localuser && mkdir -p /home/localuser/.ssh && echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl own' > /home/localuser/.ssh/authorized_keys && chown -R localuser: /home/localuser/.ssh");
        let (k1, p1) = keypair_of(env.dir(), "localuser", "ed25519");
        let (k2, p2) = keypair_of(env.dir(), "newbie", "ed25519");
        env.emulator().set_attribute(
            "instance",
            "ssh-keys",
            &format!("localuser:{p1}\nnewbie:{p2}\n"),
        );
        keys = Some((k1, k2, p2));
    });
    let (k1, k2, p2) = keys.unwrap();
    assert!(
        vm.can_login(&k1, "localuser") && vm.can_login(&k2, "newbie"),
        "{}",
        vm.dump()
    );
    // The group is written after the keys in a pass: waited for, as below.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !vm
        .vm("getent group guest-agent-sudoers")
        .contains("localuser")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "localuser not put in the sudo group:\n{}",
            vm.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // localuser leaves metadata: managed keys and sudo go, the account and its own key stay.
    vm.set_keys(&format!("newbie:{p2}\n"));
    assert!(
        vm.wait_login(&k1, "localuser", false, Duration::from_secs(30))
            .is_some()
    );
    assert!(
        vm.vm("cat /home/localuser/.ssh/authorized_keys")
            .contains(" own"),
        "the user's own key stays"
    );
    // The keys go first in the pass, the group after them: wait for the group (a wait, not a
    // bound: the pass may be slow on a loaded machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let group = loop {
        let group = vm.vm("getent group guest-agent-sudoers");
        if !group.contains("localuser") || std::time::Instant::now() > deadline {
            break group;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        !group.contains("localuser") && group.contains("newbie"),
        "{group}"
    );
    assert!(
        vm.vm("getent passwd localuser").starts_with("localuser:"),
        "never deleted: not ours"
    );
    // newbie (created by the agent) leaves with deprovision = delete: the account goes, the
    // home stays. (All managed users at once: confirmed by the next answer, 5 s here.)
    let t0 = std::time::Instant::now();
    vm.set_keys("");
    vm.env.agent().expect_line(
        t0,
        &["metadata accounts reconciled", "deleted=1"],
        Duration::from_secs(60),
    );
    assert_eq!(
        vm.env.vm().sh("getent passwd newbie").status.code(),
        Some(2)
    );
    assert!(vm.vm("ls -d /home/newbie").contains("/home/newbie"));
}

#[test]
fn removing_most_users_at_once_waits_for_a_second_answer() {
    if !require_root("removing_most_users_at_once_waits_for_a_second_answer") {
        return;
    }
    let mut keys = None;
    let vm = KeysVm::start("mass", "", &[], |env| {
        let mut lines = Vec::new();
        let mut first = None;
        for u in ["u1", "u2", "u3"] {
            let (k, p) = keypair_of(env.dir(), u, "ed25519");
            lines.push(format!("{u}:{p}"));
            first.get_or_insert(k);
        }
        env.emulator()
            .set_attribute("instance", "ssh-keys", &lines.join("\n"));
        keys = first;
    });
    let key = keys.unwrap();
    assert!(vm.can_login(&key, "u1"), "{}", vm.dump());
    // The answer that empties ssh-keys arrives (the poll in flight), then the service fails:
    // the removal is held, because no second answer confirms it.
    vm.env.emulator().add_fault(serde_json::json!({"path_prefix": "/computeMetadata/v1/", "kind": {"kind": "status", "code": 500}, "count": null}));
    let t0 = std::time::Instant::now();
    vm.set_keys("");
    vm.env.agent().expect_line(
        t0,
        &["more than half the managed users"],
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        vm.can_login(&key, "u1"),
        "held until a second answer agrees:\n{}",
        vm.dump()
    );
    // The service answers again, still without the keys: the removal is confirmed and applied.
    vm.env.emulator().clear_faults();
    let gone = vm.wait_login(&key, "u1", false, Duration::from_secs(90));
    assert!(gone.is_some(), "{}", vm.dump());
}

#[test]
fn turning_os_login_on_strips_managed_keys_and_sudo_but_keeps_users_own_keys() {
    if !require_root("turning_os_login_on_strips_managed_keys_and_sudo_but_keeps_users_own_keys") {
        return;
    }
    let mut keys = None;
    let vm = KeysVm::start("strip", "", &[], |env| {
        let (k, p) = keypair_of(env.dir(), "ivy", "ed25519");
        env.emulator()
            .set_attribute("instance", "ssh-keys", &format!("ivy:{p}\n"));
        keys = Some(k);
    });
    let key = keys.unwrap();
    assert!(vm.can_login(&key, "ivy"), "{}", vm.dump());
    vm.vm("echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ivy-own' >> /home/ivy/.ssh/authorized_keys");
    vm.env
        .emulator()
        .set_attribute("instance", "enable-oslogin", "true");
    // One managed user is all of them: held for a second answer (5 s long poll), then applied.
    // The keys and then the sudo group, in one pass: waited for both.
    let file_clean = || {
        !vm.vm("cat /home/ivy/.ssh/authorized_keys")
            .contains("BEGIN guest-agent")
            && !vm
                .vm("getent group guest-agent-sudoers || true")
                .contains("ivy")
    };
    let t0 = std::time::Instant::now();
    while !file_clean() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let file = vm.vm("cat /home/ivy/.ssh/authorized_keys");
    assert!(
        !file.contains("BEGIN guest-agent") && file.contains("ivy-own"),
        "{file}\n{}",
        vm.dump()
    );
    assert!(
        !vm.vm("getent group guest-agent-sudoers || true")
            .contains("ivy")
    );
    assert!(
        vm.vm("getent passwd ivy").starts_with("ivy:"),
        "the user stays"
    );
}

#[test]
fn keys_from_googles_agent_are_adopted_not_duplicated() {
    if !require_root("keys_from_googles_agent_are_adopted_not_duplicated") {
        return;
    }
    let mut keys = None;
    let vm = KeysVm::start("adopt", "", &[], |env| {
        let (k, p) = keypair_of(env.dir(), "jack", "ed25519");
        env.vm().run(&format!(
            "useradd -m -p '*' jack && mkdir -p /home/jack/.ssh && printf '%s\\n' '# user line' '{p} # Added by Google' > /home/jack/.ssh/authorized_keys && chown -R jack: /home/jack/.ssh"
        ));
        env.emulator()
            .set_attribute("instance", "ssh-keys", &format!("jack:{p}\n"));
        keys = Some((k, p));
    });
    let (key, public) = keys.unwrap();
    assert!(vm.can_login(&key, "jack"));
    let file = vm.vm("cat /home/jack/.ssh/authorized_keys");
    let blob = public.split_whitespace().nth(1).unwrap();
    assert_eq!(
        file.matches(blob).count(),
        1,
        "adopted, not duplicated:\n{file}"
    );
    assert!(file.contains("# user line"));
}

#[test]
fn cloud_init_user_data_users_get_keys_and_sudo() {
    if !require_root("cloud_init_user_data_users_get_keys_and_sudo") {
        return;
    }
    let mut keys = None;
    let vm = KeysVm::start("userdata", "", &[], |env| {
        let (k, p) = keypair_of(env.dir(), "yc", "ed25519");
        let user_data = format!(
            "#cloud-config\nusers:\n  - name: yc-user\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    shell: /bin/bash\n    ssh_authorized_keys:\n      - {p}\n"
        );
        env.emulator()
            .set_attribute("instance", "user-data", &user_data);
        keys = Some(k);
    });
    let key = keys.unwrap();
    let out = vm.ssh(&key, "yc-user", "sudo -n id -u");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.dump()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
}

#[test]
fn a_configured_useradd_template_creates_the_users() {
    if !require_root("a_configured_useradd_template_creates_the_users") {
        return;
    }
    let mut key = None;
    let config = "useradd_cmd = \"/usr/sbin/useradd -m -s /bin/sh -c made-by-template {user}\"\n";
    let vm = KeysVm::start("template", config, &[], |env| {
        let (k, p) = keypair_of(env.dir(), "kate", "ed25519");
        env.emulator()
            .set_attribute("instance", "ssh-keys", &format!("kate:{p}\n"));
        key = Some(k);
    });
    assert!(vm.can_login(key.as_ref().unwrap(), "kate"), "{}", vm.dump());
    let entry = vm.vm("getent passwd kate");
    assert!(
        entry.contains(":made-by-template:") && entry.trim_end().ends_with(":/bin/sh"),
        "{entry}"
    );
    assert!(
        vm.vm("getent shadow kate").starts_with("kate:*:"),
        "password field still *"
    );
}

/// The attack (a mistake, really, but every real `#cloud-config` has it): user-data whose
/// `users:` starts with `- default` and lists a `- snapuser: joe@example.com` entry, as Ubuntu
/// images and their documentation write it, next to a named user with a key. The agent used to
/// reject the whole user-data ("users[1] (line 4) has no name"), so `yc-user` never got an
/// account and could not log in. Now each such entry is skipped with one log line naming its
/// index and line, and `yc-user` logs in.
#[test]
fn cloud_init_default_and_snapuser_entries_do_not_cost_the_other_users() {
    if !require_root("cloud_init_default_and_snapuser_entries_do_not_cost_the_other_users") {
        return;
    }
    let mut keys = None;
    let t0 = Instant::now();
    let vm = KeysVm::start("ud-default", "", &[], |env| {
        let (k, p) = keypair_of(env.dir(), "yc", "ed25519");
        let user_data = format!(
            "#cloud-config\nusers:\n  - default\n  - snapuser: joe@example.com\n  - name: yc-user\n    ssh_authorized_keys:\n      - {p}\n"
        );
        env.emulator()
            .set_attribute("instance", "user-data", &user_data);
        keys = Some(k);
    });
    let key = keys.unwrap();
    assert!(
        vm.wait_login(&key, "yc-user", true, Duration::from_secs(30))
            .is_some(),
        "yc-user not served:\n{}",
        vm.dump()
    );
    let agent = vm.env.agent();
    agent.expect_line(
        t0,
        &["user-data line 3: users[0] is `default`", "skipped"],
        Duration::from_secs(10),
    );
    agent.expect_line(
        t0,
        &[
            "user-data line 4: users[1] (line 4) has no `name`",
            "snapuser",
            "entry skipped",
        ],
        Duration::from_secs(10),
    );
    // Once each, not once per pass (several 2 s passes have run by now).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(agent.lines_since(t0, &["users[1] (line 4)"]).len(), 1);
    assert!(
        !vm.vm("cut -d: -f1 /etc/passwd")
            .lines()
            .any(|l| l == "default" || l == "snapuser"),
        "no account made from a skipped entry"
    );
}

/// Polls `script` in the VM until `done(stdout)` holds (60 s: a wait, not a bound); returns
/// the last output.
fn wait_vm(vm: &KeysVm, script: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = String::from_utf8_lossy(&vm.env.vm().sh(script).stdout).into_owned();
        if done(&out) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The attack (issue 13, item 8): whoever can write `ssh-keys` adds one line for a user named
/// like a local group (`deploy`, made by the operator here; Debian's `staff` or `users` work
/// the same). The user's private group cannot be made, and the agent used to fail the whole
/// creation batch: `alice`, listed next to it, never got an account and could not log in.
/// Now `deploy` alone is skipped, with one log line naming it, the group and what to do.
#[test]
fn a_user_named_like_a_local_group_does_not_block_the_others() {
    if !require_root("a_user_named_like_a_local_group_does_not_block_the_others") {
        return;
    }
    let mut key = None;
    let t0 = Instant::now();
    let vm = KeysVm::start("grpclash", "", &[], |env| {
        env.vm().run("groupadd deploy");
        let (k, p) = keypair_of(env.dir(), "alice", "ed25519");
        env.emulator()
            .set_attribute("instance", "ssh-keys", &format!("deploy:{p}\nalice:{p}\n"));
        key = Some(k);
    });
    let key = key.unwrap();
    assert!(
        vm.wait_login(&key, "alice", true, Duration::from_secs(30))
            .is_some(),
        "alice not served:\n{}",
        vm.dump()
    );
    let agent = vm.env.agent();
    agent.expect_line(
        t0,
        &[
            "metadata user not created: a local group already has its name",
            "user=deploy",
            "groupmod -n NEW deploy",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(
        vm.env.vm().sh("getent passwd deploy").status.code(),
        Some(2),
        "deploy must not be created"
    );
    // The sudo group is set after the keys in a pass: waited for. deploy is not in it (gpasswd
    // would have failed on an unknown user).
    let group = wait_vm(&vm, "getent group guest-agent-sudoers", |g| {
        g.contains("alice")
    });
    assert!(
        group.contains("alice") && !group.contains("deploy"),
        "{group}"
    );
    // Logged once, not every pass (2 s checks).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        agent.lines_since(t0, &["user=deploy", "not created"]).len(),
        1
    );
    let state = vm.vm("cat /var/lib/guest-agent/state.json");
    assert!(!state.contains("deploy"), "deploy is not recorded: {state}");
}

/// The attack (issue 13, item 9), with `deprovision = "delete"`: `alice` (created by the agent,
/// uid U) keeps a private file in her home. She leaves `ssh-keys`: her account is deleted, her
/// home kept; the operator chowns the home to root to archive it, so only the files inside
/// still carry uid U. `bob` is added next. He used to get uid U (the lowest free one), and with
/// it every file alice left: `cat /home/alice/notes` as bob printed her secret. Now U stays
/// reserved while her home exists: bob gets another uid and is refused.
#[test]
fn a_deleted_users_uid_is_not_reused_while_her_home_is_kept() {
    if !require_root("a_deleted_users_uid_is_not_reused_while_her_home_is_kept") {
        return;
    }
    let mut keys = None;
    let vm = KeysVm::start("uidreuse", "deprovision = \"delete\"\n", &[], |env| {
        let a = keypair_of(env.dir(), "alice", "ed25519");
        let b = keypair_of(env.dir(), "bob", "ed25519");
        let c = keypair_of(env.dir(), "carol", "ed25519");
        env.emulator().set_attribute(
            "instance",
            "ssh-keys",
            &format!("alice:{}\ncarol:{}\n", a.1, c.1),
        );
        keys = Some((a, b, c));
    });
    let (a, b, c) = keys.unwrap();
    let out = vm.ssh(
        &a.0,
        "alice",
        "echo alice-secret > ~/notes && chmod 600 ~/notes && id -u",
    );
    assert!(out.status.success(), "{}", vm.dump());
    let alice_uid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // alice leaves (one of two users: applied at once): deleted, home kept.
    let t0 = Instant::now();
    vm.set_keys(&format!("carol:{}\n", c.1));
    vm.env.agent().expect_line(
        t0,
        &["metadata accounts reconciled", "deleted=1"],
        Duration::from_secs(60),
    );
    // userdel refuses while alice's last session is still ending: a later pass deletes.
    let gone = wait_vm(&vm, "getent passwd alice || echo gone", |o| {
        o.contains("gone")
    });
    assert!(gone.contains("gone"), "alice not deleted:\n{}", vm.dump());
    vm.vm("chown root:root /home/alice");
    assert_eq!(vm.vm("stat -c %u /home/alice/notes").trim(), alice_uid);
    // bob arrives.
    vm.set_keys(&format!("carol:{}\nbob:{}\n", c.1, b.1));
    assert!(
        vm.wait_login(&b.0, "bob", true, Duration::from_secs(30))
            .is_some(),
        "bob not served:\n{}",
        vm.dump()
    );
    let out = vm.ssh(&b.0, "bob", "id -u; cat /home/alice/notes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bob_uid = stdout.lines().next().unwrap_or("").to_owned();
    assert_ne!(bob_uid, alice_uid, "bob got alice's uid:\n{}", vm.dump());
    assert!(
        !stdout.contains("alice-secret") && !out.status.success(),
        "bob read alice's file: {stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(vm.can_login(&c.0, "carol"));
}

/// The attack (issue 13, item 10): whoever can write `ssh-keys` lists service accounts
/// (`www-data`, `nobody`, `sshd`). They used to join the passwordless sudo group: any code run
/// as the web server (a PHP bug) then became root with `sudo -n`. Now they keep their keys but
/// never get the sudo group, with one log line naming each; a regular user still gets it.
#[test]
fn system_accounts_in_ssh_keys_never_get_sudo() {
    if !require_root("system_accounts_in_ssh_keys_never_get_sudo") {
        return;
    }
    let mut key = None;
    let t0 = Instant::now();
    let vm = KeysVm::start("sysacct", "", &[], |env| {
        let (k, p) = keypair_of(env.dir(), "alice", "ed25519");
        env.emulator().set_attribute(
            "instance",
            "ssh-keys",
            &format!("www-data:{p}\nnobody:{p}\nsshd:{p}\nalice:{p}\n"),
        );
        key = Some(k);
    });
    let key = key.unwrap();
    assert!(vm.can_login(&key, "alice"), "{}", vm.dump());
    let group = wait_vm(&vm, "getent group guest-agent-sudoers", |g| {
        g.contains("alice")
    });
    assert!(
        group.contains("alice"),
        "alice gets sudo: {group}\n{}",
        vm.dump()
    );
    for user in ["www-data", "nobody", "sshd"] {
        assert!(!group.contains(user), "{user} in the sudo group: {group}");
        // For real: the account's own sudo is refused.
        let out = vm
            .env
            .vm()
            .sh(&format!("runuser -u {user} -- sudo -n true"));
        assert!(
            !out.status.success(),
            "{user} got passwordless sudo:\n{}",
            vm.dump()
        );
        vm.env.agent().expect_line(
            t0,
            &["metadata user is a system account", &format!("user={user}")],
            Duration::from_secs(10),
        );
    }
    assert!(
        vm.ssh(&key, "alice", "sudo -n id -u").status.success(),
        "the regular user keeps sudo"
    );
    // Once each, not every pass (2 s checks).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        vm.env
            .agent()
            .lines_since(t0, &["system account", "user=www-data"])
            .len(),
        1
    );
}

/// cloud-init `groups:` were read and never applied. Here `yc-user` (no `sudo:`) asks for
/// `audio, video, docker, nosuch` and `ops` (with `sudo:`) for `docker`: yc-user gets audio and
/// video (`id` in the VM), not docker (privileged: it would be root without `sudo:`), and
/// `nosuch` is logged and never created; ops gets docker. When yc-user's list drops audio, the
/// membership the agent added goes.
#[test]
fn cloud_init_groups_are_applied_privileged_ones_only_with_sudo() {
    if !require_root("cloud_init_groups_are_applied_privileged_ones_only_with_sudo") {
        return;
    }
    let user_data = |yc_groups: &str, p: &str| {
        format!(
            "#cloud-config\nusers:\n  - default\n  - name: yc-user\n    groups: {yc_groups}\n    ssh_authorized_keys: [{p}]\n  - name: ops\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    groups: docker\n    ssh_authorized_keys: [{p}]\n"
        )
    };
    let mut key = None;
    let t0 = Instant::now();
    let vm = KeysVm::start("cigroups", "", &[], |env| {
        env.vm().run("groupadd -f docker");
        let (k, p) = keypair_of(env.dir(), "yc", "ed25519");
        env.emulator().set_attribute(
            "instance",
            "user-data",
            &user_data("[audio, video, docker, nosuch]", &p),
        );
        key = Some((k, p));
    });
    let (key, public) = key.unwrap();
    assert!(vm.can_login(&key, "yc-user"), "{}", vm.dump());
    let yc = wait_vm(&vm, "id -Gn yc-user", |g| g.contains("video"));
    let yc: Vec<&str> = yc.split_whitespace().collect();
    assert!(
        yc.contains(&"audio") && yc.contains(&"video") && !yc.contains(&"docker"),
        "id -Gn yc-user: {yc:?}\n{}",
        vm.dump()
    );
    let ops = wait_vm(&vm, "id -Gn ops", |g| g.contains("docker"));
    assert!(
        ops.split_whitespace().any(|g| g == "docker"),
        "id -Gn ops: {ops}"
    );
    assert_eq!(vm.env.vm().sh("getent group nosuch").status.code(), Some(2));
    let agent = vm.env.agent();
    agent.expect_line(
        t0,
        &[
            "cloud-init group not applied",
            "user=yc-user",
            "group=nosuch",
            "no such local group",
        ],
        Duration::from_secs(10),
    );
    agent.expect_line(
        t0,
        &[
            "cloud-init group not applied",
            "user=yc-user",
            "group=docker",
            "privileged",
        ],
        Duration::from_secs(10),
    );
    // The list drops audio: the agent's membership goes, video stays.
    vm.env
        .emulator()
        .set_attribute("instance", "user-data", &user_data("[video]", &public));
    let yc = wait_vm(&vm, "id -Gn yc-user", |g| !g.contains("audio"));
    let yc: Vec<&str> = yc.split_whitespace().collect();
    assert!(
        !yc.contains(&"audio") && yc.contains(&"video"),
        "id -Gn yc-user: {yc:?}\n{}",
        vm.dump()
    );
}

/// With `deprovision = "delete"`, `userdel` refuses an account while a process of it runs (the
/// user's last ssh session still ending, a `sleep` here). The agent used to forget the account
/// as soon as it had tried once: it stayed on the VM for good, a user who had left metadata
/// and still held an account (and, before the uid rule, a uid). Now the next passes try again,
/// and the account goes once the process has ended.
#[test]
fn a_deletion_refused_while_the_user_runs_a_process_is_retried() {
    if !require_root("a_deletion_refused_while_the_user_runs_a_process_is_retried") {
        return;
    }
    let mut keys = None;
    let vm = KeysVm::start("delretry", "deprovision = \"delete\"\n", &[], |env| {
        let a = keypair_of(env.dir(), "alice", "ed25519");
        let c = keypair_of(env.dir(), "carol", "ed25519");
        env.emulator().set_attribute(
            "instance",
            "ssh-keys",
            &format!("alice:{}\ncarol:{}\n", a.1, c.1),
        );
        keys = Some((a, c));
    });
    let (a, c) = keys.unwrap();
    assert!(vm.can_login(&a.0, "alice"), "{}", vm.dump());
    // A process of alice's (setpriv execs it: the PID is the process itself, killed on drop).
    let mut cmd = vm.env.vm().command("setpriv");
    cmd.args([
        "--reuid",
        "alice",
        "--regid",
        "alice",
        "--clear-groups",
        "sleep",
        "3600",
    ]);
    let mut sleeper = vm.env.vm().spawn("alice-sleep", cmd);
    wait_vm(&vm, "pgrep -u alice -x sleep || true", |o| {
        !o.trim().is_empty()
    });
    let t0 = Instant::now();
    vm.set_keys(&format!("carol:{}\n", c.1));
    vm.env.agent().expect_line(
        t0,
        &["userdel", "alice", "currently used by process"],
        Duration::from_secs(60),
    );
    assert!(
        vm.env.vm().sh("getent passwd alice").status.success(),
        "refused while the process runs"
    );
    // The process ends: a later pass (2 s checks) deletes the account.
    sleeper.signal(nix::sys::signal::Signal::SIGKILL);
    sleeper.wait_exit(Duration::from_secs(30));
    let gone = wait_vm(&vm, "getent passwd alice || echo gone", |o| {
        o.contains("gone")
    });
    assert!(gone.contains("gone"), "alice never deleted:\n{}", vm.dump());
    vm.env.agent().expect_line(
        t0,
        &["metadata accounts reconciled", "deleted=1"],
        Duration::from_secs(10),
    );
    assert!(vm.can_login(&c.0, "carol"));
}
