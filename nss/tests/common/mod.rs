//! Shared by the integration tests: where cargo put the built module.

use std::path::PathBuf;

/// `target/<profile>/libnss_guestagent.so`, next to the directory of this test executable
/// (cargo builds the library before the package's integration tests).
pub fn library() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let dir = if deps.ends_with("deps") {
        deps.parent()?
    } else {
        deps
    };
    let lib = dir.join("libnss_guestagent.so");
    lib.is_file().then_some(lib)
}

pub fn skip(test: &str, why: &str) {
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
}
