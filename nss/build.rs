//! Gives the shared object the soname glibc looks for (`libnss_<service>.so.2`).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnss_guestagent.so.2");
    println!("cargo:rerun-if-changed=build.rs");
}
