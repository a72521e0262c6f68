//! The built shared object exports only the NSS entry points and carries the soname glibc
//! loads (`libnss_guestagent.so.2`).

mod common;

use std::process::Command;

const EXPORTS: [&str; 11] = [
    "_nss_guestagent_getpwnam_r",
    "_nss_guestagent_getpwuid_r",
    "_nss_guestagent_setpwent",
    "_nss_guestagent_getpwent_r",
    "_nss_guestagent_endpwent",
    "_nss_guestagent_getgrnam_r",
    "_nss_guestagent_getgrgid_r",
    "_nss_guestagent_setgrent",
    "_nss_guestagent_getgrent_r",
    "_nss_guestagent_endgrent",
    "_nss_guestagent_initgroups_dyn",
];

fn run(cmd: &str, args: &[&std::ffi::OsStr]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    assert!(out.status.success(), "{cmd} failed: {out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn exports_only_nss_functions_and_has_the_soname() {
    let Some(lib) = common::library() else {
        return common::skip(
            "exports_only_nss_functions",
            "libnss_guestagent.so not built",
        );
    };
    let Some(nm) = run(
        "nm",
        &["-D".as_ref(), "--defined-only".as_ref(), lib.as_ref()],
    ) else {
        return common::skip("exports_only_nss_functions", "nm not installed (binutils)");
    };
    let symbols: Vec<&str> = nm
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let foreign: Vec<&&str> = symbols
        .iter()
        .filter(|s| !s.starts_with("_nss_guestagent_"))
        .collect();
    assert!(foreign.is_empty(), "unexpected exports: {foreign:?}");
    for e in EXPORTS {
        assert!(symbols.contains(&e), "{e} missing from {symbols:?}");
    }
    assert_eq!(symbols.len(), EXPORTS.len(), "{symbols:?}");

    let Some(dynamic) = run("readelf", &["-d".as_ref(), lib.as_ref()]) else {
        return common::skip("exports_only_nss_functions", "readelf not installed");
    };
    assert!(
        dynamic.contains("Library soname: [libnss_guestagent.so.2]"),
        "{dynamic}"
    );
}
