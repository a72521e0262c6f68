//! Logging to a real journald (run standalone inside the VM): structured entries under
//! `guest-agent`, and no token ever in them. Needs root.

use std::time::{Duration, Instant};

use guest_agent_e2e::process::Proc;
use guest_agent_e2e::{TestEnv, require_root};

fn journal(env: &TestEnv, args: &str) -> String {
    String::from_utf8_lossy(&env.vm().sh(&format!("journalctl --no-pager {args}")).stdout)
        .into_owned()
}

#[test]
fn under_a_journal_stream_the_agent_logs_to_journald_and_never_a_token() {
    if !require_root("under_a_journal_stream_the_agent_logs_to_journald_and_never_a_token") {
        return;
    }
    let env = TestEnv::with_emulator("journal", None);
    // journald needs the cgroup hierarchy, which the network namespace's own /sys lacks, and
    // writes to /run/log (the VM's tmpfs); /var/log is made private too.
    env.vm().run(
        "mount -t tmpfs -o mode=755 tmpfs /var/log && mkdir -p /run/systemd/journal /run/log && \
         mount -t cgroup2 none /sys/fs/cgroup",
    );
    let journald = Proc::spawn(
        "journald",
        env.vm().command("/lib/systemd/systemd-journald"),
    );
    let t0 = Instant::now();
    while env.vm().sh("systemd-cat -t probe echo ready").status.code() != Some(0) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "journald did not start: {}",
            journald.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(env.config_path(), "").unwrap();
    // As systemd starts a service: stderr is a journal stream and JOURNAL_STREAM names it.
    let script = format!(
        "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec {} --config {} run",
        guest_agent_e2e::vm::AGENT,
        env.config_path().display()
    );
    let mut cmd = env.vm().command("systemd-cat");
    cmd.args(["-t", "agent-stderr", "sh", "-c", &script]);
    let agent = Proc::spawn("guest-agent", cmd);
    let t0 = Instant::now();
    loop {
        let j = journal(&env, "-t guest-agent -o cat");
        if j.contains("metadata received") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "nothing in the journal: {j}\n{}",
            agent.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Structured fields, not just text.
    let entry = journal(&env, "-t guest-agent -o verbose");
    assert!(entry.contains("SYSLOG_IDENTIFIER=guest-agent"), "{entry}");
    assert!(entry.contains("PRIORITY="), "{entry}");
    // Nothing went to the plain stderr stream (no duplicate, unstructured lines).
    assert!(journal(&env, "-t agent-stderr -o cat").trim().is_empty());
    // A token handed out is in no journal entry.
    let t0 = Instant::now();
    let token = loop {
        let out = env
            .vm()
            .command(guest_agent_e2e::vm::AGENT)
            .args(["token"])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no token");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!token.is_empty());
    assert!(
        !journal(&env, "-o export").contains(&token),
        "the token is in the journal"
    );
    drop(agent);
    drop(journald);
}
