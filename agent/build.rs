//! Links the unwinder into the `guest-agent` binary (libgcc's static `libgcc_eh.a`) instead of
//! depending on `libgcc_s.so.1`, as the NSS module does (see `nss/build.rs`).
//!
//! Why: sshd runs this binary as its AuthorizedKeysCommand (and principals command) for every
//! key offered, from a fresh process each time, so what exec costs is paid on every login (or
//! `guest-agent-sshd`, which becomes this binary when the daemon is down or a user is handed on
//! to another command: `helper/`).
//! Loading one more shared library is a large part of that cost (issue 15: a C program that
//! also loads `libgcc_s.so.1` and `libm.so.6` took 1.14 ms to run here, against 0.86 ms
//! without them). With `--as-needed` (rustc's default), the `-lgcc_s` that std adds after this
//! is then not recorded as needed. `-bundle`: the archive is named at the final link of the
//! binaries that link this library (the `guest-agent` binary among them) instead of being
//! copied into its rlib.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
