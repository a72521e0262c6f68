//! CA rotation (`bench-report`): an OS Login VM with production settings (the CA file
//! refreshed every 600 s), a certificate login to warm it, then `POST /ca/rotate` at the
//! emulator, a certificate signed by the new CA, and ssh with it at once: whether the first
//! attempt succeeded (sshd's CA check fails, the keys command gets the certificate, the daemon
//! fetches the CA keys and answers with a `cert-authority` line), the time from the rotation
//! to the first successful login (retried every 0.5 s for at most 20 s when the first attempt
//! fails), and how many `oslogin/certificates` requests that cost.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Row, row};
use crate::oslogin::{OsLoginVm, keypair, user};

#[derive(Debug, Clone, Default)]
pub struct RotationResult {
    /// From the rotation to the first successful login (`None`: none within 20 s).
    pub first_success: Option<Duration>,
    pub first_attempt_ok: bool,
    pub attempts: u32,
    /// `oslogin/certificates` requests from the rotation to that login.
    pub ca_requests: usize,
}

pub fn run(record: &Path) -> Result<RotationResult, String> {
    let mut keys = None;
    let vm = OsLoginVm::start("cabench", "", |env| {
        let (_, registered) = keypair(env.dir(), "alice");
        keys = Some(keypair(env.dir(), "alice-cert"));
        env.emulator().ok(
            "POST",
            "/oslogin/users",
            Some(&user("alice", 200001, &registered, true, false).to_string()),
        );
    });
    super::record_dir(record, &vm.env)?;
    let (key, public) = keys.ok_or("setup did not run")?;
    let emu = vm.env.emulator();
    let t0 = Instant::now();
    // The file holds the first CA (filled when OS Login comes on), and a login with it works.
    loop {
        let file = vm
            .env
            .vm()
            .read("/etc/ssh/guest-agent/trusted-ca.pub")
            .unwrap_or_default();
        if !file.is_empty() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("CA bench: the CA file stayed empty".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    emu.sign_into("alice", &public, 0, &key);
    if !vm.ssh(&key, "alice", "true").status.success() {
        return Err("CA bench: the login before the rotation failed".into());
    }
    emu.clear_requests();
    let rotated = Instant::now();
    emu.ok("POST", "/ca/rotate", None);
    emu.sign_into("alice", &public, 0, &key);
    let mut r = RotationResult::default();
    while rotated.elapsed() < Duration::from_secs(20) {
        r.attempts += 1;
        if vm.ssh(&key, "alice", "true").status.success() {
            r.first_success = Some(rotated.elapsed());
            r.first_attempt_ok = r.attempts == 1;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    r.ca_requests = emu
        .requests()
        .iter()
        .filter(|q| {
            q["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/oslogin/certificates"))
        })
        .count();
    Ok(r)
}

pub fn rows(r: &RotationResult) -> Vec<Row> {
    let ours = match r.first_success {
        Some(d) => format!(
            "{:.2} s, first attempt {} ({} attempt(s), {} certificates request(s); periodic refresh 600 s)",
            d.as_secs_f64(),
            if r.first_attempt_ok {
                "succeeded"
            } else {
                "FAILED"
            },
            r.attempts,
            r.ca_requests
        ),
        None => format!("no successful login within 20 s ({} attempts)", r.attempts),
    };
    vec![
        row(
            "CA rotation: time from rotation to the first successful certificate login",
            ours,
            "at once (its FIFO asks the service at every read: each login waits on it)",
            "first attempt succeeds",
        )
        .judged(r.first_attempt_ok),
    ]
}
