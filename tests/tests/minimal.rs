//! A minimal image (issue 14 item 4): no openssh-server and no sudo. The test VM is made
//! minimal inside its own mount namespace only: an overlay on /usr/sbin whose upper layer
//! holds whiteouts for `sshd` and `visudo` (they are gone, not empty files), and the VM's
//! private /etc copy without `ssh/sshd_config`, `sudoers` and `sudoers.d` (moved under /srv).
//! "Installing" the packages later is the reverse: the files move back and the overlay goes.
//! Needs root.

use std::time::{Duration, Instant};

use guest_agent_e2e::accounts::{TEST_CONFIG, keypair_of};
use guest_agent_e2e::oslogin::{keypair, user};
use guest_agent_e2e::{AgentOptions, TestEnv, require_root};

/// Hides sshd and/or sudo in the VM (see the module documentation).
fn make_minimal(env: &TestEnv, sshd: bool, sudo: bool) {
    let mut hide = Vec::new();
    let mut moves = String::new();
    if sshd {
        hide.push("sshd");
        moves.push_str("mv /etc/ssh/sshd_config /srv/hidden/\n");
    }
    if sudo {
        hide.push("visudo");
        moves.push_str("mv /etc/sudoers /etc/sudoers.d /srv/hidden/\n");
    }
    let up = env.dir().join("sbin-upper");
    let work = env.dir().join("sbin-work");
    let whiteouts: String = hide
        .iter()
        .map(|f| format!("mknod {}/{f} c 0 0\n", up.display()))
        .collect();
    env.vm().run(&format!(
        "set -e
         mkdir -p {up} {work} /srv/hidden
         {whiteouts}
         mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir={up},workdir={work} /usr/sbin
         {moves}",
        up = up.display(),
        work = work.display(),
    ));
    for f in hide {
        let out = env.vm().sh(&format!("test -e /usr/sbin/{f}"));
        assert!(!out.status.success(), "/usr/sbin/{f} still visible");
    }
}

/// "Installs" what [`make_minimal`] hid: the files come back and the overlay goes.
fn install_back(env: &TestEnv) {
    env.vm().run(
        "set -e
         for f in /srv/hidden/*; do
             case $f in */sshd_config) mv $f /etc/ssh/ ;; *) mv $f /etc/ ;; esac
         done
         umount /usr/sbin
         test -x /usr/sbin/sshd && test -x /usr/sbin/visudo",
    );
}

/// The agent's lines since `since` logged at `level` (`ERROR`, `WARN`).
fn at_level(env: &TestEnv, since: Instant, level: &str) -> Vec<String> {
    env.agent()
        .lines_since(since, &[])
        .into_iter()
        .filter(|l| l.split_whitespace().nth(1) == Some(level))
        .collect()
}

/// Waits (a 60 s cut for a hang) until `script` succeeds in the VM.
fn wait_vm(env: &TestEnv, script: &str, what: &str) {
    let t0 = Instant::now();
    while !env.vm().sh(script).status.success() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what}: never happened\n{}",
            env.agent().dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_minimal_image_is_ready_after_the_first_reconcile_and_gets_the_sudo_rule_once_sudo_is_installed()
 {
    if !require_root("a_minimal_image_is_ready_after_the_first_reconcile_...") {
        return;
    }
    let mut env = TestEnv::with_emulator("minimal", None);
    make_minimal(&env, true, true);
    let (_, alice_pub) = keypair_of(env.dir(), "alice", "ed25519");
    env.emulator()
        .set_attribute("instance", "ssh-keys", &format!("alice:{alice_pub}\n"));
    let t0 = Instant::now();
    env.start_agent(AgentOptions {
        config: format!("{TEST_CONFIG}check_interval_secs = 1\n"),
        ..Default::default()
    });
    env.wait_ready(t0, Duration::from_secs(30));
    // READY came from the first reconcile (its STATUS, and the line that sends it), never
    // from the startup deadline.
    env.assert_ready_from_metadata("minimal image");
    let agent = env.agent();
    agent.expect_line(t0, &["first reconcile done; ready"], Duration::from_secs(1));
    assert!(
        agent.lines_since(t0, &["startup deadline"]).is_empty(),
        "{}",
        agent.dump()
    );
    // The user was created in that first reconcile, with the key and the sudo group.
    let ak = "/home/alice/.ssh/authorized_keys";
    assert!(
        env.vm().read(ak).is_some_and(|t| t.contains(&alice_pub)),
        "{}",
        agent.dump()
    );
    assert!(
        env.vm()
            .run("getent group guest-agent-sudoers")
            .contains("alice")
    );
    // Several more passes (each proven by a deleted file coming back), and still one WARN
    // about sudo, no ERROR at all, no sudoers file.
    for round in 0..3 {
        env.vm().run(&format!("rm {ak}"));
        wait_vm(&env, &format!("grep -q guest-agent {ak}"), "keys restored");
        eprintln!("pass {round}: restored");
    }
    let warns: Vec<String> = at_level(&env, t0, "WARN")
        .into_iter()
        .filter(|l| l.contains("sudo"))
        .collect();
    assert_eq!(warns.len(), 1, "one WARN about sudo: {warns:#?}");
    assert!(warns[0].contains("sudo is not installed"), "{warns:?}");
    let errors = at_level(&env, t0, "ERROR");
    assert!(
        errors.is_empty(),
        "no ERROR on a minimal image: {errors:#?}"
    );
    assert!(
        env.vm()
            .sh("test -e /etc/sudoers.d/guest-agent-sudoers")
            .status
            .code()
            != Some(0)
    );

    // sudo is installed: the rule appears at the next pass, checked by visudo, without a
    // restart, and works.
    let pid = env.agent().pid();
    let t1 = Instant::now();
    install_back(&env);
    let rule = "/etc/sudoers.d/guest-agent-sudoers";
    wait_vm(&env, &format!("test -f {rule}"), "sudo rule written");
    env.vm().run(&format!("visudo -c -f {rule}"));
    assert_eq!(
        env.vm().run("runuser -u alice -- sudo -n id -u").trim(),
        "0"
    );
    env.agent()
        .expect_line(t1, &["sudo is installed now"], Duration::from_secs(1));
    assert!(env.agent_mut().is_running() && env.agent().pid() == pid);
    let errors = at_level(&env, t0, "ERROR");
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn os_login_without_sshd_is_one_error_and_comes_on_once_openssh_server_is_installed() {
    if !require_root("os_login_without_sshd_is_one_error_and_comes_on_...") {
        return;
    }
    let mut env = TestEnv::with_emulator("minimal-oslogin", None);
    make_minimal(&env, true, false);
    let (alice_key, alice_pub) = keypair(env.dir(), "alice");
    env.emulator()
        .set_attribute("project", "enable-oslogin", "TRUE");
    env.emulator().ok(
        "POST",
        "/oslogin/users",
        Some(&user("alice", 200001, &alice_pub, true, false).to_string()),
    );
    let t0 = Instant::now();
    env.start_agent(AgentOptions {
        config: format!(
            "[metadata]\nwatch_timeout_secs = 5\n[accounts]\ncheck_interval_secs = 1\n\
             [oslogin]\nhelper_path = \"{}\"\n",
            guest_agent_e2e::vm::AGENT
        ),
        // The repeats are DEBUG lines: counted to prove the retries happened.
        env: vec![(
            "RUST_LOG".into(),
            "info,guest_agent::reconcile=debug".into(),
        )],
    });
    let agent = env.agent();
    let first = agent.expect_line(
        t0,
        &[
            "reconcile failed",
            "enabling OS Login",
            "sshd_config does not exist",
        ],
        Duration::from_secs(30),
    );
    // Retried, quietly: several more failed passes, still one ERROR line.
    let t = Instant::now();
    while agent
        .lines_since(first, &["reconcile failed again", "oslogin"])
        .len()
        < 3
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no retries:\n{}",
            agent.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let errors = at_level(&env, t0, "ERROR");
    assert_eq!(errors.len(), 1, "one error for the episode: {errors:#?}");
    assert!(errors[0].contains("install") || errors[0].contains("openssh-server"));

    // openssh-server "installed": OS Login comes on by itself, no restart, and a key login
    // works through the agent's AuthorizedKeysCommand.
    let pid = agent.pid();
    let t1 = Instant::now();
    install_back(&env);
    env.agent()
        .expect_line(t1, &["OS Login enabled"], Duration::from_secs(60));
    env.agent()
        .expect_line(t1, &["reconcile succeeded again"], Duration::from_secs(60));
    assert!(env.agent_mut().is_running() && env.agent().pid() == pid);
    let effective = env.vm().run("sshd -T -f /etc/ssh/sshd_config");
    assert!(
        effective.contains("authorizedkeyscommand /srv/guest-agent-sshd authorized-keys"),
        "{effective}"
    );
    let sshd = guest_agent_e2e::vm::start_sshd(env.vm(), &[]);
    let out = guest_agent_e2e::vm::ssh(&env.ns, &alice_key, "alice", "id -un");
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.agent().dump(),
        sshd.dump()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice\n");
    assert_eq!(at_level(&env, t0, "ERROR").len(), 1);
}
