// The integration test tests/module.rs plays libpam: it defines pam_get_user & co. and dlopens
// the module, which finds them with dlsym(RTLD_DEFAULT), so the test binary must export them.
fn main() {
    println!("cargo:rustc-link-arg-tests=-Wl,--export-dynamic");
}
