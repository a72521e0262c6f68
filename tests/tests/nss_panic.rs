//! A panic inside the NSS module does not kill the process it runs in (issue 13, item 14).
//! Root.
//!
//! The attack (a bug, really, that anyone on the machine can trigger by naming a user): some
//! lookup makes the module panic. The module wraps every export in `catch_unwind` and answers
//! UNAVAIL, but that only works when the module is built to unwind; with the release profile's
//! old `panic = "abort"` the panic aborted the caller: `getent` died of SIGABRT, `sudo -u NAME`
//! died before it could say "unknown user", and sshd's connection process died before it logged
//! "Invalid user" (a login of that name killed it).
//!
//! The module built here is the shipped one (`cargo build --release`, the profile the packages
//! are made with) plus the test-only feature `planted-panic`, which makes a lookup of the user
//! or group `planted-panic` panic inside the module with its state lock held. It has its own
//! target directory, so the module the other tests load and the packaged one are untouched.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use guest_agent_e2e::oslogin::{OsLoginVm, keypair, user};
use guest_agent_e2e::packages::{cargo, run, target_dir, workspace};
use guest_agent_e2e::require_root;
use guest_agent_e2e::vm::LIBDIR;

/// The release build of the module with the planted panic.
fn planted_module() -> PathBuf {
    let target = target_dir().join("planted-panic");
    run(
        "cargo build --release -p guest-agent-nss --features planted-panic",
        Command::new(cargo())
            .current_dir(workspace())
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--release", "--locked", "-p", "guest-agent-nss"])
            .args(["--features", "guest-agent-nss/planted-panic"]),
    );
    target.join("release/libnss_guestagent.so")
}

/// What a command said and how it ended: it must have exited (not been killed by a signal).
fn exited(what: &str, out: &Output) -> (i32, String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.signal(),
        None,
        "{what} was killed by signal {:?} (SIGABRT is 6: the module's panic aborted it)\nstdout: {stdout}\nstderr: {stderr}",
        out.status.signal()
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

#[test]
fn a_panic_in_the_nss_module_is_answered_unavail_and_the_caller_lives_on() {
    if !require_root("a_panic_in_the_nss_module_is_answered_unavail_and_the_caller_lives_on") {
        return;
    }
    let module = planted_module();
    let mut key = None;
    let vm = OsLoginVm::start("nsspanic", "", |env| {
        let (k, p) = keypair(env.dir(), "alice");
        env.emulator().ok(
            "POST",
            "/oslogin/users",
            Some(&user("alice", 200001, &p, true, false).to_string()),
        );
        key = Some(k);
    });
    let key = key.unwrap();
    let env = &vm.env;
    // The planted build replaces the module in the VM (a new file renamed into place: the
    // processes that mapped the old one keep it).
    env.vm().run(&format!(
        "cp {} {LIBDIR}/libnss_guestagent.so.2.new && mv {LIBDIR}/libnss_guestagent.so.2.new {LIBDIR}/libnss_guestagent.so.2",
        module.display()
    ));
    let vm_out = |program: &str, args: &[&str]| {
        env.vm()
            .command(program)
            .args(args)
            .output()
            .expect("run in vm")
    };

    // getent: the planted name is not found (exit 2), nothing printed, not even on stderr
    // (the module's panic hook is silent).
    let (code, out, err) = exited(
        "getent passwd planted-panic",
        &vm_out("getent", &["passwd", "planted-panic"]),
    );
    assert_eq!((code, out.as_str(), err.as_str()), (2, "", ""));
    let (code, out, err) = exited(
        "getent group planted-panic",
        &vm_out("getent", &["group", "planted-panic"]),
    );
    assert_eq!((code, out.as_str(), err.as_str()), (2, "", ""));
    // In one process, after the panic: the next lookup is served (from the cache, through the
    // state lock the panic poisoned).
    let (code, out, err) = exited(
        "getent passwd planted-panic alice",
        &vm_out("getent", &["passwd", "planted-panic", "alice"]),
    );
    assert_eq!(code, 2, "one of the two keys is not found: {out} {err}");
    assert!(
        out.starts_with("alice:*:200001:200001:") && out.lines().count() == 1,
        "alice is served after the panic: {out:?} {err:?}"
    );

    // sudo (setuid root) looks the target user up: it says so and exits 1.
    let (code, _, err) = exited(
        "sudo -u planted-panic true",
        &vm_out("sudo", &["-n", "-u", "planted-panic", "true"]),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown user"), "sudo's own refusal: {err}");

    // sshd: a login as the planted name is an invalid user, logged by the connection's process
    // after its lookup (a process killed in the lookup logs nothing); alice still logs in.
    let t = Instant::now();
    let refused = vm.ssh(&key, "planted-panic", "true");
    assert!(!refused.status.success());
    vm.sshd()
        .expect_line(t, &["Invalid user planted-panic"], Duration::from_secs(30));
    let out = vm.ssh(&key, "alice", "id -un");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "alice",
        "alice's login through the planted module: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.sshd().dump()
    );
}
