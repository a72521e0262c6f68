//! Foundation: the agent against the emulator in a network namespace. Needs root.

use std::time::{Duration, Instant};

use guest_agent_e2e::{AgentOptions, TestEnv, require_root};
use nix::sys::signal::Signal;
use serde_json::json;

const FAST_POLL: &str = "[metadata]\nwatch_timeout_secs = 5\nrequest_timeout_ms = 2000\n";

/// Emulator up, agent started and READY.
fn ready_env(tag: &str, config: &str) -> TestEnv {
    let mut env = TestEnv::with_emulator(tag, None);
    env.emulator().set_attribute("instance", "demo", "v0");
    let start = Instant::now();
    env.start_agent(AgentOptions {
        config: config.into(),
        ..Default::default()
    });
    let took = env.wait_ready(start, Duration::from_secs(5));
    assert!(
        took < Duration::from_secs(3),
        "READY took {took:?} with the service up"
    );
    env.agent()
        .expect_line(start, &["metadata received"], Duration::from_secs(5));
    env
}

#[test]
fn a_metadata_change_is_seen_within_one_second() {
    if !require_root("a_metadata_change_is_seen_within_one_second") {
        return;
    }
    let env = ready_env("change", "");
    for round in 0..3 {
        // Let the agent's long poll settle in the emulator before changing the tree.
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        env.emulator()
            .set_attribute("instance", "demo", &format!("v{}", round + 1));
        let seen = env.agent().expect_line(
            t0,
            &["metadata key changed", "instance.attributes.demo"],
            Duration::from_secs(2),
        );
        let took = seen - t0;
        assert!(
            took < Duration::from_secs(1),
            "round {round}: change seen after {took:?}"
        );
        let t0 = Instant::now();
        env.emulator()
            .set_attribute("project", &format!("new-{round}"), "x");
        let seen = env.agent().expect_line(
            t0,
            &[
                "metadata key added",
                &format!("project.attributes.new-{round}"),
            ],
            Duration::from_secs(2),
        );
        assert!(seen - t0 < Duration::from_secs(1));
    }
}

#[test]
fn an_idle_agent_makes_at_most_two_requests_a_minute() {
    if !require_root("an_idle_agent_makes_at_most_two_requests_a_minute") {
        return;
    }
    // The production default: watch_timeout_secs = 60.
    let env = ready_env("idle", "");
    std::thread::sleep(Duration::from_millis(500));
    env.emulator().clear_requests();
    std::thread::sleep(Duration::from_secs(61));
    let requests = env.emulator().requests();
    assert!(
        requests.len() <= 2,
        "{} requests in 61 s: {requests:#?}",
        requests.len()
    );
    assert!(
        !requests.is_empty(),
        "the long poll should have been renewed once in 61 s"
    );
    let q = requests[0]["query"].as_str().unwrap_or_default();
    for part in [
        "recursive=true",
        "wait_for_change=true",
        "last_etag=",
        "timeout_sec=60",
    ] {
        assert!(q.contains(part), "long poll query {q:?} lacks {part}");
    }
    assert!(
        !q.contains("last_etag=NONE"),
        "the agent must send back the etag it got: {q}"
    );
}

/// Injects `fault` on the tree path, checks the agent rides it out, then lifts it.
fn rides_out(tag: &str, fault: serde_json::Value, fault_secs: u64) {
    let env = ready_env(tag, FAST_POLL);
    let emu = env.emulator();
    std::thread::sleep(Duration::from_millis(300));
    emu.add_fault(json!({"path_prefix": "/computeMetadata/v1/", "kind": fault, "count": null}));
    // Wake the poll in flight: the agent gets this change, and its next poll meets the fault.
    let t0 = Instant::now();
    emu.set_attribute("instance", "before-fault", "1");
    env.agent().expect_line(
        t0,
        &["metadata key added", "instance.attributes.before-fault"],
        Duration::from_secs(2),
    );
    // The agent's next poll meets the fault at once: the episode starts at t0.
    let fault_start = t0;
    emu.clear_requests();
    emu.set_attribute("instance", "during-fault", "1");
    std::thread::sleep(Duration::from_secs(fault_secs));
    let during = emu.requests().len();
    let agent = env.agent();
    let warnings = agent.lines_since(fault_start, &["metadata service failing"]);
    assert_eq!(
        warnings.len(),
        1,
        "one warning per episode, got {warnings:#?}\n{}",
        agent.dump()
    );
    assert!(
        agent
            .lines_since(fault_start, &["metadata key removed"])
            .is_empty(),
        "a fault must not empty the snapshot:\n{}",
        agent.dump()
    );
    assert!(
        agent.lines_since(fault_start, &["during-fault"]).is_empty(),
        "nothing is taken from a faulty answer"
    );
    // Backoff: without it a tight loop would make hundreds of requests.
    assert!(
        (1..=15).contains(&during),
        "{during} requests in {fault_secs} s of fault"
    );

    let lifted = Instant::now();
    emu.clear_faults();
    // Recovery by itself: the next attempt (backoff is capped at 30 s) picks the change up.
    agent.expect_line(
        lifted,
        &["metadata service answering again"],
        Duration::from_secs(40),
    );
    agent.expect_line(
        lifted,
        &["metadata key added", "instance.attributes.during-fault"],
        Duration::from_secs(40),
    );
    assert!(
        agent
            .lines_since(fault_start, &["metadata key removed"])
            .is_empty(),
        "{}",
        agent.dump()
    );
    let mut env = env;
    assert!(env.agent_mut().is_running(), "the agent must stay up");
}

#[test]
fn fault_status_500() {
    if require_root("fault_status_500") {
        rides_out("f500", json!({"kind": "status", "code": 500}), 8);
    }
}

#[test]
fn fault_status_429() {
    if require_root("fault_status_429") {
        rides_out("f429", json!({"kind": "status", "code": 429}), 8);
    }
}

#[test]
fn fault_hang() {
    if require_root("fault_hang") {
        // Each hanging poll costs watch_timeout (5 s) + request_timeout (2 s).
        rides_out("fhang", json!({"kind": "hang"}), 10);
    }
}

#[test]
fn fault_drop() {
    if require_root("fault_drop") {
        rides_out("fdrop", json!({"kind": "drop"}), 8);
    }
}

#[test]
fn fault_truncated() {
    if require_root("fault_truncated") {
        rides_out("ftrunc", json!({"kind": "truncate"}), 8);
    }
}

#[test]
fn fault_oversize() {
    if require_root("fault_oversize") {
        rides_out("fbig", json!({"kind": "oversize", "bytes": 5 << 20}), 8);
    }
}

#[test]
fn fault_non_json() {
    if require_root("fault_non_json") {
        rides_out("fhtml", json!({"kind": "non_json"}), 8);
    }
}

#[test]
fn fault_no_flavor_echo() {
    if require_root("fault_no_flavor_echo") {
        rides_out("fflavor", json!({"kind": "no_flavor"}), 8);
    }
}

#[test]
fn fault_wrong_shape() {
    if require_root("fault_wrong_shape") {
        rides_out("fshape", json!({"kind": "wrong_shape"}), 8);
    }
}

#[test]
fn ready_within_the_startup_deadline_when_the_service_is_unreachable() {
    if !require_root("ready_within_the_startup_deadline_when_the_service_is_unreachable") {
        return;
    }
    // Nothing listens on 169.254.169.254:80 in this namespace. Default deadline: 10 s.
    let mut env = TestEnv::new("noready");
    let start = Instant::now();
    env.start_agent(AgentOptions::default());
    let took = env.wait_ready(start, Duration::from_secs(12));
    assert!(
        took <= Duration::from_millis(10_500),
        "READY after {took:?}"
    );
    assert!(
        took >= Duration::from_secs(9),
        "READY after {took:?}, before any metadata and before the deadline"
    );
    let msgs = env
        .notify
        .as_mut()
        .map(|n| n.messages())
        .unwrap_or_default();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("STATUS=") && m.contains("not answering")),
        "{msgs:?}"
    );
    assert!(env.agent_mut().is_running());
}

#[test]
fn ready_within_the_startup_deadline_when_the_service_hangs() {
    if !require_root("ready_within_the_startup_deadline_when_the_service_hangs") {
        return;
    }
    let mut env = TestEnv::with_emulator("hangready", None);
    env.emulator()
        .add_fault(json!({"path_prefix": "/", "kind": {"kind": "hang"}, "count": null}));
    let start = Instant::now();
    env.start_agent(AgentOptions {
        config: "[daemon]\nstartup_deadline_secs = 3\n".into(),
        ..Default::default()
    });
    let took = env.wait_ready(start, Duration::from_secs(6));
    assert!(
        took <= Duration::from_millis(3_500),
        "READY after {took:?} with a 3 s deadline"
    );
    assert!(
        took >= Duration::from_millis(2_900),
        "READY after {took:?}, before any metadata arrived"
    );
    assert!(env.agent_mut().is_running());
}

#[test]
fn proxy_variables_change_nothing() {
    if !require_root("proxy_variables_change_nothing") {
        return;
    }
    let mut env = TestEnv::with_emulator("proxy", None);
    let dead = "http://127.0.0.1:9".to_string();
    let vars = [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ];
    let start = Instant::now();
    env.start_agent(AgentOptions {
        config: String::new(),
        env: vars.iter().map(|v| (v.to_string(), dead.clone())).collect(),
    });
    let took = env.wait_ready(start, Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "READY after {took:?}");
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    env.emulator()
        .set_attribute("instance", "via-no-proxy", "1");
    env.agent().expect_line(
        t0,
        &["instance.attributes.via-no-proxy"],
        Duration::from_secs(2),
    );
    assert!(!env.emulator().tree_requests().is_empty());
}

#[test]
fn sighup_keeps_the_old_config_when_the_new_one_is_broken() {
    if !require_root("sighup_keeps_the_old_config_when_the_new_one_is_broken") {
        return;
    }
    let mut env = ready_env("hup", "[metadata]\nwatch_timeout_secs = 7\n");
    let emu_timeout = |env: &TestEnv| -> String {
        let last = env
            .emulator()
            .tree_requests()
            .last()
            .cloned()
            .expect("a tree request");
        let q = last["query"].as_str().unwrap_or_default().to_owned();
        q.split('&')
            .find(|p| p.starts_with("timeout_sec="))
            .unwrap_or_default()
            .to_owned()
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(emu_timeout(&env), "timeout_sec=7");

    // A broken file: the reload is refused, the key named, and the old settings stay.
    std::fs::write(env.config_path(), "[metadata]\nwatch_timeout_secs = 0\n").unwrap();
    let t0 = Instant::now();
    env.agent().signal(Signal::SIGHUP);
    let line =
        env.agent()
            .expect_line(t0, &["configuration reload failed"], Duration::from_secs(2));
    let _ = line;
    assert!(
        !env.agent()
            .lines_since(t0, &["metadata.watch_timeout_secs"])
            .is_empty(),
        "{}",
        env.agent().dump()
    );
    env.emulator()
        .set_attribute("instance", "after-bad-hup", "1");
    env.agent().expect_line(
        t0,
        &["instance.attributes.after-bad-hup"],
        Duration::from_secs(2),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(emu_timeout(&env), "timeout_sec=7");
    assert!(env.agent_mut().is_running());

    // A good file: applied at once (the poll in flight is restarted with the new settings).
    std::fs::write(env.config_path(), "[metadata]\nwatch_timeout_secs = 9\n").unwrap();
    let t0 = Instant::now();
    env.agent().signal(Signal::SIGHUP);
    env.agent()
        .expect_line(t0, &["configuration reloaded"], Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(emu_timeout(&env), "timeout_sec=9");
}

#[test]
fn sigterm_exits_zero_within_two_seconds() {
    if !require_root("sigterm_exits_zero_within_two_seconds") {
        return;
    }
    let mut env = ready_env("term", "");
    std::thread::sleep(Duration::from_millis(300)); // a long poll is in flight
    let t0 = Instant::now();
    env.agent().signal(Signal::SIGTERM);
    let status = env.agent_mut().wait_exit(Duration::from_secs(2));
    let status = status.unwrap_or_else(|| panic!("still running 2 s after SIGTERM"));
    assert!(status.success(), "exit status {status:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    let msgs = env
        .notify
        .as_mut()
        .map(|n| n.messages())
        .unwrap_or_default();
    assert!(msgs.iter().any(|m| m == "STOPPING=1"), "{msgs:?}");
}

#[test]
fn the_watchdog_is_fed_when_systemd_asks() {
    if !require_root("the_watchdog_is_fed_when_systemd_asks") {
        return;
    }
    let mut env = TestEnv::with_emulator("wdog", None);
    let start = Instant::now();
    env.start_agent(AgentOptions {
        config: String::new(),
        env: vec![("WATCHDOG_USEC".into(), "400000".into())],
    });
    env.wait_ready(start, Duration::from_secs(5));
    // Half the interval (200 ms): several pings within a second.
    std::thread::sleep(Duration::from_millis(1200));
    let pings = env
        .notify
        .as_mut()
        .map(|n| n.messages())
        .unwrap_or_default()
        .iter()
        .filter(|m| *m == "WATCHDOG=1")
        .count();
    assert!(pings >= 3, "{pings} WATCHDOG=1 in 1.2 s");
}
