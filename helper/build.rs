//! Links the unwinder statically (libgcc's `libgcc_eh.a`) instead of loading
//! `libgcc_s.so.1`, as `agent/build.rs` does for the `guest-agent` binary and for the same
//! reason: sshd runs this program for every key a client offers, and each shared library
//! loaded is a large part of what an exec costs. With `--as-needed` (rustc's default) the
//! `-lgcc_s` that std adds after this is then not recorded as needed.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        println!("cargo:rustc-link-lib=static=gcc_eh");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
