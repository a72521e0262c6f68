//! Service-account tokens: both formats, rotation, refusal, never logged or written. Root.

use std::time::{Duration, Instant};

use guest_agent_e2e::{AgentOptions, TestEnv, require_root};
use serde_json::json;

fn env_with_agent(tag: &str, config: &str, setup: impl FnOnce(&TestEnv)) -> TestEnv {
    let mut env = TestEnv::with_emulator(tag, None);
    setup(&env);
    let t0 = Instant::now();
    env.start_agent(AgentOptions {
        config: config.into(),
        ..Default::default()
    });
    env.wait_ready(t0, Duration::from_secs(30));
    env
}

fn emulator_token(env: &TestEnv) -> String {
    let a = env.emulator().ok("GET", "/tokens/default", None).json();
    a["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{a}"))
        .to_owned()
}

/// `guest-agent token ARGS` inside the VM: (exit code, stdout, stderr).
fn token(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let out = env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .arg("token")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_token(env: &TestEnv, want: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (code, out, err) = token(env, &[]);
        if code == 0 && out.trim() == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "token never became the emulator's: {code} {out} {err}\n{}",
            env.agent().dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The token appears in no log line and in no file the agent wrote.
fn assert_never_leaked(env: &TestEnv, secret: &str) {
    assert!(
        !env.agent().lines().iter().any(|l| l.contains(secret)),
        "token in the agent's log"
    );
    let found = env.vm().sh(&format!(
        "grep -rl -- '{secret}' /var/lib/guest-agent /run/guest-agent /etc 2>/dev/null"
    ));
    assert!(
        found.stdout.is_empty(),
        "token written to {}",
        String::from_utf8_lossy(&found.stdout)
    );
}

#[test]
fn tokens_in_the_gce_format_with_rotation_before_expiry() {
    if !require_root("tokens_in_the_gce_format_with_rotation_before_expiry") {
        return;
    }
    let env = env_with_agent("tokgce", "[tokens]\nflavor = \"gce\"\n", |env| {
        // A short lifetime, so the refresh (at two thirds of it) happens during the test.
        env.emulator().ok(
            "POST",
            "/tokens/default/rotate",
            Some(r#"{"expires_in": 9}"#),
        );
    });
    let first = emulator_token(&env);
    wait_token(&env, &first, Duration::from_secs(30));
    let (code, json_out, _) = token(&env, &["--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(json_out.trim()).unwrap();
    assert_eq!(v["access_token"], json!(first));
    assert!(v["expires_in"].as_u64().unwrap() <= 9);
    assert_eq!(
        token(&env, &["--format", "header"]).1.trim(),
        format!("Authorization: Bearer {first}")
    );
    // The emulator rotates; the agent picks the new token up before the old one expires:
    // asked again and again until the new one comes, it always has a token to give (the old
    // one until its refresh, at two thirds of its 9 s), never a refusal in between.
    let rotated_at = Instant::now();
    env.emulator().ok(
        "POST",
        "/tokens/default/rotate",
        Some(r#"{"expires_in": 3599}"#),
    );
    let second = emulator_token(&env);
    assert_ne!(first, second);
    loop {
        let (code, out, err) = token(&env, &[]);
        if code == 0 && out.trim() == second {
            break;
        }
        assert!(
            code == 0 && out.trim() == first,
            "no valid token served before the new one came: {code} {out} {err}\n{}",
            env.agent().dump()
        );
        assert!(
            rotated_at.elapsed() < Duration::from_secs(60),
            "the new token never came\n{}",
            env.agent().dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "new token served {:?} after the rotation",
        rotated_at.elapsed()
    );
    assert_never_leaked(&env, &first);
    assert_never_leaked(&env, &second);
}

#[test]
fn tokens_in_the_ec2_format_with_imdsv2() {
    if !require_root("tokens_in_the_ec2_format_with_imdsv2") {
        return;
    }
    let env = env_with_agent("tokec2", "[tokens]\nflavor = \"ec2\"\n", |env| {
        env.emulator().ok(
            "PUT",
            "/ec2",
            Some(r#"{"enabled": true, "require_v2": true}"#),
        );
    });
    let want = emulator_token(&env);
    wait_token(&env, &want, Duration::from_secs(30));
    let puts = env
        .emulator()
        .requests()
        .into_iter()
        .filter(|r| r["method"] == json!("PUT") && r["path"] == json!("/latest/api/token"))
        .count();
    assert!(puts >= 1, "an IMDSv2 session was used");
    assert_never_leaked(&env, &want);
}

#[test]
fn tokens_are_refused_to_others_with_a_clear_error() {
    if !require_root("tokens_are_refused_to_others_with_a_clear_error") {
        return;
    }
    let env = env_with_agent("tokdeny", "", |_| {});
    let want = emulator_token(&env);
    wait_token(&env, &want, Duration::from_secs(30));
    let out = env
        .vm()
        .command("setpriv")
        .args([
            "--reuid=54321",
            "--regid=54321",
            "--clear-groups",
            guest_agent_e2e::vm::AGENT,
            "token",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guest-agent-token"), "names the group: {err}");
    // A member of the group may.
    env.vm().run("groupadd -g 4321 guest-agent-token");
    let out = env
        .vm()
        .command("setpriv")
        .args([
            "--reuid=54321",
            "--regid=54321",
            "--groups=4321",
            guest_agent_e2e::vm::AGENT,
            "token",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        want,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn identity_names_the_service_account_and_the_instance() {
    if !require_root("identity_names_the_service_account_and_the_instance") {
        return;
    }
    let env = env_with_agent("ident", "", |_| {});
    let out = env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .args(["identity", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tree = env.emulator().ok("GET", "/tree", None).json();
    assert_eq!(
        v["email"],
        tree["instance"]["serviceAccounts"]["default"]["email"]
    );
    assert_eq!(v["name"], tree["instance"]["name"]);
    assert_eq!(v["zone"], tree["instance"]["zone"]);
    assert_eq!(
        v["instance_id"].as_str().unwrap(),
        tree["instance"]["id"].to_string().trim_matches('"')
    );
    assert!(!v["scopes"].as_array().unwrap().is_empty());
}
