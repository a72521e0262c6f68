//! Serial console event lines and `guest-agent status`, end to end: a pseudo-terminal stands in
//! for /dev/ttyS0 (`daemon.console` points at its slave), real ssh logins through a real sshd,
//! outages from the emulator's fault injection. Needs root.

use std::time::{Duration, Instant};

use guest_agent_e2e::console::{
    AliceAndBob, PtyConsole, StuckConsole, console_config, status, status_json,
};
use guest_agent_e2e::{AgentOptions, TestEnv, require_root};
use serde_json::json;

/// A give-up bound, far above the usual (milliseconds to a few seconds).
const WAIT: Duration = Duration::from_secs(60);

const REFUSED_BOB: &str = "guest-agent: bob: refused: login role not granted";

/// Start, READY, OS Login on, one refused login (one line however many runs sshd made for
/// it), the metadata service lost and back, each a line read from the console; `status`
/// during the outage says so.
#[test]
fn events_appear_on_the_console_one_line_each() {
    if !require_root("events_appear_on_the_console_one_line_each") {
        return;
    }
    let console = PtyConsole::open();
    let v = AliceAndBob::start(
        "console",
        &console_config(console.path(), "[metadata]\nbackoff_max_ms = 1000"),
    );
    console.expect("guest-agent: starting (version ", WAIT);
    console.expect("guest-agent: READY (metadata applied)", WAIT);
    console.expect("guest-agent: OS Login on", WAIT);

    let out = v.vm.ssh(&v.bob_key, "bob", "true");
    assert!(!out.status.success(), "bob has no login role");
    console.expect(REFUSED_BOB, WAIT);
    let ok = v.vm.ssh(&v.alice_key, "alice", "true");
    assert!(
        ok.status.success(),
        "alice: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        console.matching("alice").is_empty(),
        "allowed logins are not console events: {:?}",
        console.lines()
    );

    // An outage: the poll in flight is answered with a change, the next one meets the fault.
    let emu = v.vm.env.emulator();
    emu.add_fault(json!({"path_prefix": "/computeMetadata/v1/", "kind": {"kind": "status", "code": 503}, "count": null}));
    emu.set_attribute("instance", "wake-up", "1");
    let lost = console.expect("guest-agent: metadata service lost", WAIT);
    assert!(lost.contains("keeping the last good metadata"), "{lost}");
    let during = status_json(&v.vm.env, false);
    assert_eq!(during["metadata"]["state"], "outage", "{during}");
    assert!(during["metadata"]["outage_secs"].is_u64(), "{during}");
    let (_, text, _) = status(&v.vm.env, false, &[]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("metadata    OUTAGE for ")),
        "{text}"
    );
    emu.clear_faults();
    // The next poll is a long poll: a change answers it at once.
    emu.set_attribute("instance", "wake-up", "2");
    console.expect("guest-agent: metadata service back after ", WAIT);
    let after = status_json(&v.vm.env, false);
    assert_eq!(after["metadata"]["state"], "ok", "{after}");

    // Everything before "back" went through the same queue: each event printed once.
    for needle in [
        REFUSED_BOB,
        "guest-agent: metadata service lost",
        "guest-agent: OS Login on",
        "guest-agent: READY",
    ] {
        assert_eq!(
            console.matching(needle).len(),
            1,
            "{needle}: {:#?}",
            console.lines()
        );
    }
    for line in console.lines() {
        assert!(
            line.starts_with("guest-agent: ") && line.len() <= 200,
            "{line:?}"
        );
        assert!(
            !line.contains("ssh-ed25519") && !line.contains("AAAA"),
            "no key material on the console: {line}"
        );
    }
}

/// sshd rejects the agent's change (its own config has a line it does not know): the change
/// is undone, and the console says so once; once fixed, OS Login comes on.
#[test]
fn an_sshd_config_rollback_appears_on_the_console() {
    if !require_root("an_sshd_config_rollback_appears_on_the_console") {
        return;
    }
    let console = PtyConsole::open();
    let mut env = TestEnv::with_emulator("console-sshd", None);
    env.emulator()
        .set_attribute("project", "enable-oslogin", "TRUE");
    env.vm()
        .run("echo 'NoSuchOptionHere yes' >> /etc/ssh/sshd_config");
    let before = env.vm().read("/etc/ssh/sshd_config").expect("sshd_config");
    env.start_agent(AgentOptions {
        // No retry by the clock during the test: only the metadata change below retries.
        config: format!(
            "[oslogin]\nhelper_path = \"{}\"\n[accounts]\ncheck_interval_secs = 3600\n{}",
            guest_agent_e2e::vm::AGENT,
            console_config(console.path(), "")
        ),
        env: Vec::new(),
    });
    let line = console.expect("guest-agent: sshd config rejected and rolled back", WAIT);
    assert!(
        line.contains("sshd -t") && line.contains("NoSuchOptionHere"),
        "{line}"
    );
    assert_eq!(
        env.vm().read("/etc/ssh/sshd_config").as_deref(),
        Some(before.as_str()),
        "rolled back"
    );
    assert!(
        env.vm()
            .read("/etc/ssh/sshd_config.d/60-guest-agent.conf")
            .is_none(),
        "the drop-in is gone again"
    );
    assert!(console.matching("OS Login on").is_empty());

    env.vm()
        .run("sed -i '/^NoSuchOptionHere/d' /etc/ssh/sshd_config");
    env.emulator().set_attribute("instance", "retry", "1");
    console.expect("guest-agent: OS Login on", WAIT);
    assert_eq!(
        console.matching("rolled back").len(),
        1,
        "{:#?}",
        console.lines()
    );
}

/// A console nobody reads (full before the agent starts): logins are decided and `status`
/// answers all the same; the lines that could not be written are counted.
#[test]
fn a_console_nobody_reads_stops_neither_logins_nor_status() {
    if !require_root("a_console_nobody_reads_stops_neither_logins_nor_status") {
        return;
    }
    let stuck = StuckConsole::open();
    assert!(stuck.filled > 0);
    let v = AliceAndBob::start("console-stuck", &console_config(stuck.path(), ""));
    for _ in 0..5 {
        assert!(!v.vm.ssh(&v.bob_key, "bob", "true").status.success());
    }
    let ok = v.vm.ssh(&v.alice_key, "alice", "id -un");
    assert!(
        ok.status.success(),
        "alice's login with a stuck console: {}\n{}",
        String::from_utf8_lossy(&ok.stderr),
        v.vm.env.agent().dump()
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "alice\n");
    let t0 = Instant::now();
    loop {
        let s = status_json(&v.vm.env, false);
        assert_eq!(s["console"]["open"], true, "{s}");
        assert_eq!(s["console"]["path"], stuck.path(), "{s}");
        if s["console"]["dropped"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(t0.elapsed() < WAIT, "no line counted as dropped: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = v.vm.ssh(&v.alice_key, "alice", "true");
    assert!(again.status.success(), "a later login too");
}

/// `status` for root: everything, with users' names and login decisions; for another user:
/// only what is not about other users. Text and JSON.
#[test]
fn status_shows_root_everything_and_others_only_their_own() {
    if !require_root("status_shows_root_everything_and_others_only_their_own") {
        return;
    }
    let console = PtyConsole::open();
    let v = AliceAndBob::start("status", &console_config(console.path(), ""));
    assert!(!v.vm.ssh(&v.bob_key, "bob", "true").status.success());
    assert!(v.vm.ssh(&v.alice_key, "alice", "true").status.success());
    console.expect(REFUSED_BOB, WAIT);

    let root = status_json(&v.vm.env, false);
    assert_eq!(root["view"], "full", "{root}");
    assert_eq!(root["daemon"]["ready"], true, "{root}");
    assert_eq!(root["metadata"]["state"], "ok", "{root}");
    assert_eq!(root["oslogin"]["enabled"], true, "{root}");
    assert_eq!(
        root["oslogin"]["why"], "project attribute enable-oslogin = true",
        "{root}"
    );
    assert_eq!(root["oslogin"]["two_factor"], "off");
    assert_eq!(root["oslogin"]["directory_users"], 2, "{root}");
    assert!(root["oslogin"]["last_sync_at"].is_u64(), "{root}");
    assert!(root["trusted_ca"]["age_secs"].is_u64(), "{root}");
    assert_eq!(root["tokens"][0]["account"], "default", "{root}");
    assert_eq!(root["console"]["open"], true, "{root}");
    let logins = root["logins"].as_array().expect("logins");
    // Newest first: alice's allowed login (both runs of her connection: one record), then
    // bob's refusal.
    assert_eq!(logins.len(), 2, "{root}");
    assert_eq!(logins[0]["user"], "alice");
    assert_eq!(logins[0]["decision"], "allow");
    assert_eq!(logins[1]["user"], "bob");
    assert_eq!(logins[1]["decision"], "deny");
    assert_eq!(logins[1]["reason"], "login role not granted");
    assert!(logins[1]["at"].is_u64());

    let (code, text, err) = status(&v.vm.env, false, &[]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "metadata    answering (last answer ",
        "OS Login    on (project attribute enable-oslogin = true); 2-step verification: off",
        "directory   2 users, last sync ",
        "logins      2 (newest first)",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(want)),
            "{want:?} in\n{text}"
        );
    }
    assert!(
        text.lines().any(|l| l.contains("deny")
            && l.contains("bob")
            && l.contains("login role not granted")),
        "{text}"
    );

    let nobody = status_json(&v.vm.env, true);
    assert_eq!(nobody["view"], "limited", "{nobody}");
    assert_eq!(nobody["logins"], json!([]), "{nobody}");
    assert_eq!(nobody["oslogin"]["directory_users"], 2);
    let (code, text, err) = status(&v.vm.env, true, &[]);
    assert_eq!(code, 0, "{err}");
    for out in [nobody.to_string(), text.clone()] {
        assert!(
            !out.contains("alice") && !out.contains("bob"),
            "no user names for nobody: {out}"
        );
    }
    assert!(text.contains("none of yours"), "{text}");
}
