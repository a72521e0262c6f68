//! The built `.so` exports the three hooks libpam looks up, and needs no libpam symbol at link
//! time (they are found with dlsym: src/ffi.rs).

use std::path::PathBuf;
use std::process::Command;

/// The cdylib Cargo built beside this test (target/<profile>/deps or target/<profile>).
fn module() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    [deps.to_path_buf(), deps.parent()?.to_path_buf()]
        .into_iter()
        .map(|d| d.join("libpam_guestagent.so"))
        .find(|p| p.exists())
}

fn nm(args: &[&str], so: &PathBuf) -> Option<String> {
    let out = Command::new("nm").args(args).arg(so).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_module_exports_the_hooks_and_links_no_libpam() {
    let Some(so) = module() else {
        eprintln!("SKIPPED: libpam_guestagent.so not found beside the test binary");
        return;
    };
    let Some(defined) = nm(&["-D", "--defined-only"], &so) else {
        eprintln!("SKIPPED: nm is not available (binutils)");
        return;
    };
    let exported: Vec<&str> = defined
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    for hook in ["pam_sm_authenticate", "pam_sm_acct_mgmt", "pam_sm_setcred"] {
        assert!(
            exported.contains(&hook),
            "{hook} not exported by {}",
            so.display()
        );
    }
    let undefined = nm(&["-D", "--undefined-only"], &so).unwrap_or_default();
    assert!(
        !undefined.lines().any(|l| l.contains(" pam_")),
        "libpam symbols linked: {undefined}"
    );
}
