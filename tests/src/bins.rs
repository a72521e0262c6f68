//! Finds the workspace's binaries (built by `cargo build --workspace` before the tests run).

use std::path::PathBuf;

/// `target/<profile>/NAME`, next to the directory holding this test executable.
pub fn path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/test-HASH -> target/debug
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} not found: build the workspace first (cargo build --workspace)",
        bin.display()
    );
    bin
}

pub fn agent() -> PathBuf {
    path("guest-agent")
}

pub fn emulator() -> PathBuf {
    path("mds-emulator")
}
