//! Coexistence with another AuthorizedKeysCommand (issue 14): a stand-in for systemd-userdbd's
//! `20-systemd-userdb.conf` (a link into /usr/lib-like storage, `AuthorizedKeysCommand ...
//! ssh-authorized-keys %u`, `AuthorizedKeysCommandUser root`) sorts before the agent's drop-in.
//! With OS Login on the agent chains it: OS Login key and certificate logins work, the local
//! user `rival` logs in with the key the other command serves, an OS Login user never gets
//! that command's keys; doctor names it; a restart changes nothing; OS Login off leaves its
//! file as it was and `sshd -T` shows its command again. Real sshd in the namespace VM. Root.

use std::time::{Duration, Instant};

use guest_agent_e2e::oslogin::{keypair, user};
use guest_agent_e2e::{AgentOptions, TestEnv, require_root};

const RIVAL_CONF: &str = "/etc/ssh/sshd_config.d/20-systemd-userdb.conf";
const RIVAL_STORE: &str = "/srv/lib/sshd_config.d/20-systemd-userdb.conf";
const RIVAL_LOG: &str = "/run/rival.log";

fn ssh(env: &TestEnv, key: &std::path::Path, who: &str) -> std::process::Output {
    guest_agent_e2e::vm::ssh(&env.ns, key, who, "id -un")
}

fn logged_in_as(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn another_keys_command_is_chained_while_os_login_is_on_and_back_when_off() {
    if !require_root("another_keys_command_is_chained_while_os_login_is_on_and_back_when_off") {
        return;
    }
    let mut env = TestEnv::with_emulator("coexist", None);
    let (alice_key, alice_pub) = keypair(env.dir(), "alice");
    let (cert_key, cert_pub) = keypair(env.dir(), "alice-cert-only");
    let (rival_key, rival_pub) = keypair(env.dir(), "rival");
    env.emulator().ok(
        "POST",
        "/oslogin/users",
        Some(&user("alice", 200001, &alice_pub, true, false).to_string()),
    );
    // The stand-in serves its key to EVERY name it is asked about: OS Login users must still
    // never get it. It logs who ran it and for whom.
    let vm = env.vm();
    vm.run(&format!(
        "useradd -m -p '*' -s /bin/sh rival
mkdir -p /srv/rival /srv/lib/sshd_config.d && chmod 755 /srv/rival /srv/lib /srv/lib/sshd_config.d
cat > /srv/rival/userdbctl <<'EOS'
#!/bin/sh
echo \"uid=$(id -u) args=$*\" >> {RIVAL_LOG}
[ \"$1\" = ssh-authorized-keys ] && echo '{rival_pub}'
exit 0
EOS
chmod 755 /srv/rival/userdbctl
printf '# sshd configuration snippet (stand-in for systemd-userdbd)\\nAuthorizedKeysCommand /srv/rival/userdbctl ssh-authorized-keys %%u\\nAuthorizedKeysCommandUser root\\n' > {RIVAL_STORE}
ln -s {RIVAL_STORE} {RIVAL_CONF}
: > {RIVAL_LOG}; chmod 666 {RIVAL_LOG}"
    ));
    let snapshot = |env: &TestEnv| {
        env.vm().run(&format!(
            "cat /etc/ssh/sshd_config {RIVAL_STORE}; ls -lA /etc/ssh/sshd_config.d | sed 's/^.* [0-9][0-9]:[0-9][0-9] //'; readlink {RIVAL_CONF}; stat -c '%n %a %u %g' /etc/ssh/sshd_config {RIVAL_STORE}"
        ))
    };
    let keys_command = |env: &TestEnv| {
        env.vm().run(
            "/usr/sbin/sshd -T -f /etc/ssh/sshd_config | grep -E '^authorizedkeyscommand(user)? '",
        )
    };
    let before = snapshot(&env);
    assert!(keys_command(&env).contains(
        "authorizedkeyscommand /srv/rival/userdbctl ssh-authorized-keys %u\nauthorizedkeyscommanduser root"
    ));

    env.emulator()
        .set_attribute("instance", "enable-oslogin", "true");
    let config = format!(
        "[oslogin]\nhelper_path = \"{}\"\nca_refresh_secs = 1\n",
        guest_agent_e2e::vm::AGENT
    );
    let start = Instant::now();
    env.start_agent(AgentOptions {
        config: config.clone(),
        ..Default::default()
    });
    env.wait_ready(start, Duration::from_secs(30));
    env.agent().expect_line(
        start,
        &[
            "chained to another AuthorizedKeysCommand",
            "/srv/rival/userdbctl",
        ],
        Duration::from_secs(30),
    );
    env.agent()
        .expect_line(start, &["OS Login enabled"], Duration::from_secs(30));
    let on = env
        .vm()
        .read("/etc/ssh/sshd_config.d/00-guest-agent.conf")
        .expect("the early drop-in");
    assert!(
        env.vm()
            .read("/etc/ssh/sshd_config.d/60-guest-agent.conf")
            .is_none()
    );
    let effective = keys_command(&env);
    assert!(
        effective.contains(&format!(
            "authorizedkeyscommand {} authorized-keys %u %f %t %k --chain-user root -- /srv/rival/userdbctl ssh-authorized-keys %u\nauthorizedkeyscommanduser root",
            guest_agent_e2e::vm::SSHD_HELPER
        )),
        "{effective}"
    );
    let sshd = guest_agent_e2e::vm::start_sshd(env.vm(), &[]);

    // OS Login: a key login, and a certificate login once the CA file holds the CA.
    assert_eq!(logged_in_as(&ssh(&env, &alice_key, "alice")), "alice");
    let t0 = Instant::now();
    while !env
        .vm()
        .read("/etc/ssh/guest-agent/trusted-ca.pub")
        .is_some_and(|f| f.contains("ssh-"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no CA key in the file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    env.emulator().sign_into("alice", &cert_pub, 0, &cert_key);
    assert_eq!(logged_in_as(&ssh(&env, &cert_key, "alice")), "alice");
    // The other provider's user, with the key its command serves, as root as it ran before.
    assert_eq!(logged_in_as(&ssh(&env, &rival_key, "rival")), "rival");
    let log = env.vm().read(RIVAL_LOG).unwrap_or_default();
    assert!(
        log.contains("uid=0 args=ssh-authorized-keys rival"),
        "{log}\n{}",
        sshd.dump()
    );
    // An OS Login user never gets the other command's keys, nor is it asked about one.
    let out = ssh(&env, &rival_key, "alice");
    assert!(
        !out.status.success(),
        "alice logged in with the rival's key"
    );
    let log = env.vm().read(RIVAL_LOG).unwrap_or_default();
    assert!(
        !log.contains("alice"),
        "the rival was asked about alice: {log}"
    );

    // doctor names the other command and what the agent did.
    let out = env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .arg("--config")
        .arg(env.config_path())
        .args(["doctor", "alice"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        text.contains("ok    sshd-config")
            && text.contains(
                "another AuthorizedKeysCommand, `/srv/rival/userdbctl ssh-authorized-keys %u` (systemd-userdbd) (as root, /etc/ssh/sshd_config.d/20-systemd-userdb.conf:2), is chained"
            ),
        "{text}"
    );

    // A restart finds the same rival behind its own lines: nothing rewritten, still chained.
    let config_text = std::fs::read_to_string(env.config_path()).unwrap();
    env.agent = None; // SIGKILL
    let t0 = Instant::now();
    env.start_agent(AgentOptions {
        config: config_text,
        ..Default::default()
    });
    env.wait_ready(t0, Duration::from_secs(30));
    env.agent().expect_line(
        t0,
        &["OS Login enabled", "changed=[]"],
        Duration::from_secs(30),
    );
    assert_eq!(
        env.vm().read("/etc/ssh/sshd_config.d/00-guest-agent.conf"),
        Some(on)
    );
    let state = env
        .vm()
        .read("/var/lib/guest-agent/oslogin-state.json")
        .unwrap();
    assert!(
        state.contains("/srv/rival/userdbctl ssh-authorized-keys %u"),
        "{state}"
    );
    assert_eq!(logged_in_as(&ssh(&env, &rival_key, "rival")), "rival");

    // OS Login off: the rival's files as they were, its command in effect again.
    let t0 = Instant::now();
    env.emulator()
        .set_attribute("instance", "enable-oslogin", "false");
    env.agent().expect_line(
        t0,
        &["the other AuthorizedKeysCommand is in effect again"],
        Duration::from_secs(30),
    );
    env.agent()
        .expect_line(t0, &["OS Login disabled"], Duration::from_secs(30));
    assert_eq!(snapshot(&env), before, "not restored byte for byte");
    assert!(keys_command(&env).contains(
        "authorizedkeyscommand /srv/rival/userdbctl ssh-authorized-keys %u\nauthorizedkeyscommanduser root"
    ));
    drop(sshd);
    let sshd = guest_agent_e2e::vm::start_sshd(env.vm(), &[]);
    env.vm().run(&format!(": > {RIVAL_LOG}"));
    assert_eq!(logged_in_as(&ssh(&env, &rival_key, "rival")), "rival");
    let log = env.vm().read(RIVAL_LOG).unwrap_or_default();
    assert!(
        log.contains("uid=0 args=ssh-authorized-keys rival"),
        "{log}"
    );
    drop(sshd);
}
