//! Gives the shared object the soname glibc looks for (`libnss_<service>.so.2`), and links the
//! unwinder into it (libgcc's static `libgcc_eh.a`) instead of depending on `libgcc_s.so.1`.
//!
//! Why the unwinder is linked in: the module catches every panic at its C boundary (a panic
//! must never unwind into glibc's caller), which needs an unwinder, and Rust's std asks for
//! `libgcc_s.so.1`. Loading that library is most of what loading the module costs a process
//! that has not loaded it already (`getent`, `id`, sshd's children; about 125 µs of 180 µs on
//! the machines we measured, issue 15), on every process's first lookup. Linked statically,
//! with `--as-needed` (rustc's default), the `-lgcc_s` std adds later is not recorded as
//! needed; the unwinder's symbols are not exported (the cdylib's version script exports only
//! the NSS entry points), so it never takes the place of the process's own.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnss_guestagent.so.2");
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        println!("cargo:rustc-link-lib=static=gcc_eh");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
