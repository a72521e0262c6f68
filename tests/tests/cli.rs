//! The command line without a namespace (no root needed).

use std::process::Command;

use guest_agent_e2e::bins;

#[test]
fn version_prints_the_package_version() {
    let out = Command::new(bins::agent())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("guest-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_config_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        (
            "[metadata]\nwatch_timeout_secs = 0\n",
            "metadata.watch_timeout_secs",
        ),
        ("[metadata]\nwatch_timout_secs = 5\n", "watch_timout_secs"),
        ("[daemon\n", "config"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        // `run` must refuse before it contacts anything: it exits at once with EX_CONFIG.
        let out = Command::new(bins::agent())
            .arg("--config")
            .arg(&path)
            .arg("run")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text}: {stderr}");
        assert!(stderr.contains(needle), "{text}: {stderr}");
        assert!(
            stderr.contains(&*path.to_string_lossy()),
            "the file is named: {stderr}"
        );
    }
    let missing = dir.path().join("missing.toml");
    let out = Command::new(bins::agent())
        .arg("--config")
        .arg(&missing)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(&path, "[metadata]\nwatch_timeout_secs = 30\n").unwrap();
    let out = Command::new(bins::agent())
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("watch_timeout_secs: 30"));
}
