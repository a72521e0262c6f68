//! A metadata-keys "VM": emulator, agent (OS Login off) and a real sshd in the VM.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::process::Proc;
use crate::{AgentOptions, TestEnv};

/// Quick polls for tests (production: a 60 s long poll). `extra_config` lines given to
/// [`KeysVm::start`] land in `[accounts]`; the check interval is 2 s unless they set it.
pub const TEST_CONFIG: &str = "[metadata]\nwatch_timeout_secs = 5\n[accounts]\n";

pub struct KeysVm {
    pub sshd: Option<Proc>,
    pub env: TestEnv,
}

impl KeysVm {
    /// Emulator (`setup` sets attributes first), agent READY, sshd (with `sshd_args`).
    pub fn start(
        tag: &str,
        extra_config: &str,
        sshd_args: &[&str],
        setup: impl FnOnce(&TestEnv),
    ) -> KeysVm {
        let mut env = TestEnv::with_emulator(tag, None);
        setup(&env);
        let t0 = Instant::now();
        let check = if extra_config.contains("check_interval_secs") {
            ""
        } else {
            "check_interval_secs = 2\n"
        };
        env.start_agent(AgentOptions {
            config: format!("{TEST_CONFIG}{check}{extra_config}"),
            ..Default::default()
        });
        env.wait_ready(t0, Duration::from_secs(30));
        let sshd = crate::vm::start_sshd(env.vm(), sshd_args);
        KeysVm {
            sshd: Some(sshd),
            env,
        }
    }

    pub fn ssh(&self, key: &Path, user: &str, command: &str) -> Output {
        crate::vm::ssh(&self.env.ns, key, user, command)
    }

    /// Whether `key` opens `user`'s account now.
    pub fn can_login(&self, key: &Path, user: &str) -> bool {
        self.ssh(key, user, "true").status.success()
    }

    /// Polls until `can_login` equals `want`; returns how long it took, or None.
    pub fn wait_login(
        &self,
        key: &Path,
        user: &str,
        want: bool,
        timeout: Duration,
    ) -> Option<Duration> {
        let t0 = Instant::now();
        loop {
            if self.can_login(key, user) == want {
                return Some(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn set_keys(&self, text: &str) {
        self.env
            .emulator()
            .set_attribute("instance", "ssh-keys", text);
    }

    /// A shell command inside the VM; its stdout.
    pub fn vm(&self, script: &str) -> String {
        self.env.vm().run(script)
    }

    pub fn dump(&self) -> String {
        format!(
            "{}\n{}",
            self.env.agent().dump(),
            self.sshd.as_ref().map(|s| s.dump()).unwrap_or_default()
        )
    }
}

/// A key pair of `kind` (`ed25519`, `rsa`) in `dir`: (private key path, public key line).
pub fn keypair_of(dir: &Path, name: &str, kind: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    let mut cmd = std::process::Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", name, "-f"])
        .arg(&path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    let out = cmd.output().expect("ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (path, public.trim().to_owned())
}
