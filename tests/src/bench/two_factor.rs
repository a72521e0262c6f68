//! What OS Login two-step verification adds to a login (`bench-report`'s rows): one OS Login
//! "VM" with `enable-oslogin-2fa` on, a real sshd and PAM with the module, and two users:
//! `alice` with a one-time-code factor (the emulator's `SECURITY_KEY_OTP` with a fixed code,
//! so that back-to-back logins are not TOTP replays; the PAM module's path is the same for
//! every code factor) and `sa_bench`, a service account that logs in with the key alone
//! through the same sshd. Both log in through the keyboard-interactive client
//! ([`crate::kbdint::Client`]; its askpass answers at once: the figures are the time without
//! the human), interleaved. Per login, the metadata requests under the OS Login prefix are
//! counted at the emulator.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use super::login::{describe, oslogin_requests};
use super::{Row, Stats, fmt_d, row};
use crate::kbdint::Client;
use crate::oslogin::{OsLoginVm, keypair, user};

const CODE: &str = "424242";

#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub logins: usize,
}

impl Params {
    pub const FULL: Params = Params { logins: 20 };
    pub const QUICK: Params = Params { logins: 5 };
}

#[derive(Debug)]
pub struct TwoFactorResult {
    pub with_2fa: Stats,
    pub key_alone: Stats,
    pub requests_2fa: BTreeMap<String, usize>,
    pub requests_key_alone: BTreeMap<String, usize>,
}

pub fn run(record: &std::path::Path, params: Params) -> Result<TwoFactorResult, String> {
    let mut keys: Vec<PathBuf> = Vec::new();
    let t0 = Instant::now();
    let vm = OsLoginVm::start("2fabench", "", |env| {
        let emu = env.emulator();
        for (name, uid) in [("alice", 200001), ("sa_bench", 200002)] {
            let (k, p) = keypair(env.dir(), name);
            emu.ok(
                "POST",
                "/oslogin/users",
                Some(&user(name, uid, &p, true, false).to_string()),
            );
            keys.push(k);
        }
        emu.set_two_factor("alice", json!([{"type": "SECURITY_KEY_OTP", "code": CODE}]));
        emu.set_attribute("project", "enable-oslogin-2fa", "TRUE");
    });
    super::record_dir(record, &vm.env)?;
    vm.env.agent().expect_line(
        t0,
        &["OS Login two-step verification on"],
        Duration::from_secs(30),
    );
    let client = Client::new(vm.env.dir());
    let login = |key: &PathBuf, name: &str, answers: &[&str]| -> Result<Duration, String> {
        let t = Instant::now();
        let (out, prompts) = client.login(&vm, key, name, answers, "true");
        let took = t.elapsed();
        if !out.status.success() {
            return Err(format!(
                "ssh {name}: {}\nprompts: {prompts}\n{}",
                String::from_utf8_lossy(&out.stderr),
                vm.sshd().dump()
            ));
        }
        Ok(took)
    };
    let counted = |key: &PathBuf, name: &str, answers: &[&str]| {
        let emu = vm.env.emulator();
        std::thread::sleep(Duration::from_millis(300));
        emu.clear_requests();
        login(key, name, answers)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok::<_, String>(oslogin_requests(emu))
    };
    // Warm-up (the first login of each creates the home).
    login(&keys[0], "alice", &[CODE])?;
    login(&keys[1], "sa_bench", &[])?;
    let requests_2fa = counted(&keys[0], "alice", &[CODE])?;
    let requests_key_alone = counted(&keys[1], "sa_bench", &[])?;
    let (mut with, mut alone) = (Vec::new(), Vec::new());
    for _ in 0..params.logins {
        with.push(login(&keys[0], "alice", &[CODE])?);
        alone.push(login(&keys[1], "sa_bench", &[])?);
    }
    Ok(TwoFactorResult {
        with_2fa: Stats::new(with),
        key_alone: Stats::new(alone),
        requests_2fa,
        requests_key_alone,
    })
}

pub fn rows(r: &TwoFactorResult) -> Vec<Row> {
    let added = r.with_2fa.median().saturating_sub(r.key_alone.median());
    let total = |b: &BTreeMap<String, usize>| b.values().sum::<usize>();
    let extra = total(&r.requests_2fa).saturating_sub(total(&r.requests_key_alone));
    vec![
        row(
            "2FA login (key + one-time code, no human wait) / key alone, ssh wall time",
            format!(
                "median {} / {} (+{}); p90 {} / {}",
                fmt_d(r.with_2fa.median()),
                fmt_d(r.key_alone.median()),
                fmt_d(added),
                fmt_d(r.with_2fa.pct(90.0)),
                fmt_d(r.key_alone.pct(90.0)),
            ),
            "",
            "",
        ),
        row(
            "  metadata requests per 2FA login / key alone",
            format!(
                "{} / {}: +{extra}",
                describe(&r.requests_2fa),
                describe(&r.requests_key_alone)
            ),
            "",
            "the login's + start + continue",
        )
        .judged(
            r.requests_2fa.get("start") == Some(&1)
                && r.requests_2fa.get("continue") == Some(&1)
                && extra == 2,
        ),
    ]
}
