//! cloud-init and the agent on one VM: metadata accounts wait (bounded) until cloud-init has
//! finished provisioning, and cloud-init's default user is adopted (keys managed), never
//! deleted. cloud-init itself is played by its run files (`/run/cloud-init/status.json`,
//! `result.json`), its configuration (`/etc/cloud/cloud.cfg`) and a real `useradd`, all inside
//! the VM. Needs root.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_agent_e2e::accounts::{KeysVm, keypair_of};
use guest_agent_e2e::require_root;

/// cloud-init started this boot (status.json, no result.json), default user `yc-user`.
const CLOUD_INIT_RUNNING: &str = "mkdir -p /run/cloud-init /etc/cloud && echo '{}' > /run/cloud-init/status.json && printf 'users:\\n  - default\\nsystem_info:\\n  default_user:\\n    name: yc-user\\n' > /etc/cloud/cloud.cfg";

struct Keys {
    yc: (PathBuf, String),
    alice: (PathBuf, String),
    carol: (PathBuf, String),
}

fn start(tag: &str, config: &str) -> (KeysVm, Keys, Instant) {
    let mut keys = None;
    let t0 = Instant::now();
    let vm = KeysVm::start(tag, config, &[], |env| {
        let k = Keys {
            yc: keypair_of(env.dir(), "yc-user", "ed25519"),
            alice: keypair_of(env.dir(), "alice", "ed25519"),
            carol: keypair_of(env.dir(), "carol", "ed25519"),
        };
        env.emulator().set_attribute(
            "instance",
            "ssh-keys",
            &format!(
                "yc-user:{}\nalice:{}\ncarol:{}\n",
                k.yc.1, k.alice.1, k.carol.1
            ),
        );
        env.vm().run(CLOUD_INIT_RUNNING);
        keys = Some(k);
    });
    (vm, keys.expect("setup ran"), t0)
}

fn exists(vm: &KeysVm, user: &str) -> bool {
    vm.env
        .vm()
        .sh(&format!("getent passwd {user}"))
        .status
        .success()
}

/// The accounts the agent remembers creating (its state file).
fn created(vm: &KeysVm) -> Vec<String> {
    let text = vm.vm("cat /var/lib/guest-agent/state.json");
    let state: serde_json::Value = serde_json::from_str(&text).expect("state.json");
    serde_json::from_value(state["created"].clone()).expect("created list")
}

#[test]
fn accounts_wait_for_cloud_init_and_its_default_user_is_adopted_never_deleted() {
    if !require_root("accounts_wait_for_cloud_init_and_its_default_user_is_adopted_never_deleted") {
        return;
    }
    let (mut vm, k, t0) = start(
        "cloudinit",
        "cloud_init_wait_secs = 60\ndeprovision = \"delete\"\n",
    );
    // READY does not wait for cloud-init: it came from the first reconcile (its STATUS), not
    // from the startup deadline, while cloud-init still runs (it is finished only below).
    eprintln!("READY {:?} after the start", t0.elapsed());
    vm.env
        .assert_ready_from_metadata("READY must not wait for cloud-init");
    vm.env
        .agent()
        .expect_line(t0, &["cloud-init is provisioning"], Duration::from_secs(30));
    // Several check intervals (2 s) later: still no account touched.
    std::thread::sleep(Duration::from_secs(3));
    for user in ["alice", "carol", "yc-user"] {
        assert!(
            !exists(&vm, user),
            "{user} created while cloud-init runs:\n{}",
            vm.dump()
        );
    }
    // cloud-init creates its default user, then finishes.
    vm.vm("useradd -m -s /bin/sh yc-user && echo '{}' > /run/cloud-init/result.json");
    let done = Instant::now();
    assert!(
        vm.wait_login(&k.alice.0, "alice", true, Duration::from_secs(30))
            .is_some(),
        "alice not created after cloud-init finished:\n{}",
        vm.dump()
    );
    vm.env.agent().expect_line(
        done,
        &["cloud-init finished; managing metadata accounts"],
        Duration::from_secs(10),
    );
    assert!(
        vm.can_login(&k.yc.0, "yc-user"),
        "default user's keys managed"
    );
    let created = created(&vm);
    assert!(created.contains(&"alice".to_string()), "{created:?}");
    assert!(
        !created.contains(&"yc-user".to_string()),
        "yc-user was created by cloud-init, not by the agent: {created:?}"
    );
    // The default user leaves ssh-keys: keys released, account kept (deprovision = delete).
    vm.set_keys(&format!("alice:{}\ncarol:{}\n", k.alice.1, k.carol.1));
    assert!(
        vm.wait_login(&k.yc.0, "yc-user", false, Duration::from_secs(30))
            .is_some(),
        "yc-user's key still accepted:\n{}",
        vm.dump()
    );
    assert!(exists(&vm, "yc-user"), "cloud-init's default user deleted");
    // An account the agent created is deleted as configured (so the rule above can fail).
    vm.set_keys(&format!("alice:{}\n", k.alice.1));
    let t = Instant::now();
    while exists(&vm, "carol") && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!exists(&vm, "carol"), "carol not deleted:\n{}", vm.dump());
}

#[test]
fn a_cloud_init_that_never_finishes_delays_accounts_only_for_the_allowance() {
    if !require_root("a_cloud_init_that_never_finishes_delays_accounts_only_for_the_allowance") {
        return;
    }
    let (vm, k, t0) = start(
        "cloudinit-late",
        "cloud_init_wait_secs = 4\ndeprovision = \"delete\"\n",
    );
    assert!(!exists(&vm, "alice"), "alice created before the allowance");
    let took = vm
        .wait_login(&k.alice.0, "alice", true, Duration::from_secs(60))
        .map(|_| t0.elapsed())
        .unwrap_or_else(|| panic!("alice never created:\n{}", vm.dump()));
    // Never before the allowance (a slow machine only makes it later).
    assert!(
        took >= Duration::from_secs(4),
        "accounts touched before the allowance ended: {took:?}"
    );
    vm.env.agent().expect_line(
        t0,
        &["cloud-init has not finished within accounts.cloud_init_wait_secs"],
        Duration::from_secs(10),
    );
    // The agent created yc-user itself (cloud-init was late) but it is cloud-init's default
    // user: released when it leaves metadata, never deleted.
    assert!(vm.can_login(&k.yc.0, "yc-user"));
    assert!(created(&vm).contains(&"yc-user".to_string()));
    vm.set_keys(&format!("alice:{}\ncarol:{}\n", k.alice.1, k.carol.1));
    assert!(
        vm.wait_login(&k.yc.0, "yc-user", false, Duration::from_secs(30))
            .is_some(),
        "yc-user's key still accepted:\n{}",
        vm.dump()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(exists(&vm, "yc-user"), "cloud-init's default user deleted");
    assert!(vm.can_login(&k.carol.0, "carol"));
}

/// The documented `#cloud-config` passes cloud-init's own schema check (cloud-init's code from
/// its Debian package, unpacked under target/ by the test command), and the agent
/// configuration it writes is accepted by `guest-agent check-config`.
#[test]
fn the_documented_cloud_config_is_valid_for_cloud_init_and_the_agent() {
    if !require_root("the_documented_cloud_config_is_valid_for_cloud_init_and_the_agent") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = root.join("cloud-init/guest-agent.yaml");
    let lib = root.join("target/cloud-init/usr/lib/python3/dist-packages");
    assert!(
        lib.join("cloudinit").is_dir(),
        "cloud-init is not unpacked at {}: run scripts/test (it unpacks it)",
        lib.display()
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys; from cloudinit.cmd.main import main; sys.exit(main())",
            "schema",
            "--config-file",
        ])
        .arg(&file)
        .env("PYTHONPATH", &lib)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("cloud-init schema: {text}");
    assert!(
        out.status.success() && text.contains("Valid cloud-config"),
        "{text}"
    );
    assert!(!text.contains("deprecat"), "{text}");
    // The check can fail: a wrong type is refused.
    let bad = std::env::temp_dir().join(format!("bad-cloud-config-{}", std::process::id()));
    std::fs::write(&bad, "#cloud-config\nruncmd: 5\n").unwrap();
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys; from cloudinit.cmd.main import main; sys.exit(main())",
            "schema",
            "--config-file",
        ])
        .arg(&bad)
        .env("PYTHONPATH", &lib)
        .output()
        .expect("python3");
    let _ = std::fs::remove_file(&bad);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not of type"),
        "the schema check did not refuse a bad file: {:?}",
        out
    );
    // The agent configuration the file writes.
    let config = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); \
             print(next(f['content'] for f in d['write_files'] \
             if f['path'] == '/etc/guest-agent/config.toml'), end='')",
        ])
        .arg(&file)
        .output()
        .expect("python3 yaml");
    assert!(config.status.success(), "{config:?}");
    let path = std::env::temp_dir().join(format!("cloud-config-agent-{}.toml", std::process::id()));
    std::fs::write(&path, &config.stdout).unwrap();
    let check = std::process::Command::new(guest_agent_e2e::bins::agent())
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .expect("guest-agent check-config");
    let _ = std::fs::remove_file(&path);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("cloud_init_wait_secs: 120"));
}
