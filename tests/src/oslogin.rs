//! An OS Login "VM": emulator with users, agent in the private mount namespace, real sshd.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::process::Proc;
use crate::{AgentOptions, TestEnv};

pub struct OsLoginVm {
    pub sshd: Option<Proc>,
    pub env: TestEnv,
}

/// Generates an ed25519 key pair in `dir`; returns (private key path, public key line).
pub fn keypair(dir: &std::path::Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (path, public.trim().to_owned())
}

impl OsLoginVm {
    /// Emulator (OS Login on at project level), VM, agent (READY, OS Login applied), sshd.
    /// `setup` adds users and groups to the emulator before the agent starts.
    pub fn start(tag: &str, agent_config: &str, setup: impl FnOnce(&TestEnv)) -> OsLoginVm {
        OsLoginVm::start_with(tag, agent_config, None, &[], setup)
    }

    /// [`OsLoginVm::start`] with the emulator's initial `state` (e.g. thousands of users at
    /// once) and extra environment variables for the agent (e.g. `RUST_LOG`).
    pub fn start_with(
        tag: &str,
        agent_config: &str,
        state: Option<&serde_json::Value>,
        agent_env: &[(&str, &str)],
        setup: impl FnOnce(&TestEnv),
    ) -> OsLoginVm {
        let env = TestEnv::with_emulator(tag, state);
        env.emulator()
            .set_attribute("project", "enable-oslogin", "TRUE");
        setup(&env);
        let mut vm = OsLoginVm { sshd: None, env };
        let config = format!(
            "[oslogin]\nhelper_path = \"{}\"\n{agent_config}",
            crate::vm::AGENT
        );
        let start = Instant::now();
        vm.env.start_agent(AgentOptions {
            config,
            env: agent_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        vm.env.wait_ready(start, Duration::from_secs(30));
        // A give-up bound (a 100,000-user directory in a debug build on a loaded machine).
        vm.env.agent().expect_line(
            start,
            &["OS Login directory synced"],
            Duration::from_secs(600),
        );
        vm.env
            .agent()
            .expect_line(start, &["OS Login enabled"], Duration::from_secs(30));
        vm.start_sshd();
        vm
    }

    pub fn start_sshd(&mut self) {
        self.start_sshd_with(&[]);
    }

    /// (Re)starts sshd with extra arguments (e.g. `-o UsePAM=no`).
    pub fn start_sshd_with(&mut self, extra: &[&str]) {
        self.sshd = None; // the old one is killed first
        self.sshd = Some(crate::vm::start_sshd(self.env.vm(), extra));
    }

    pub fn sshd(&self) -> &Proc {
        self.sshd.as_ref().expect("sshd started")
    }

    /// `ssh -i KEY USER@127.0.0.1 COMMAND` from inside the VM's network namespace.
    pub fn ssh(&self, key: &std::path::Path, user: &str, command: &str) -> Output {
        crate::vm::ssh(&self.env.ns, key, user, command)
    }

    /// A command run inside the VM (getent, id, ...): (exit code, stdout).
    pub fn vm_run(&self, program: &str, args: &[&str]) -> (i32, String) {
        let out = self
            .env
            .vm()
            .command(program)
            .args(args)
            .output()
            .expect("run in vm");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// A user for the emulator's control interface.
pub fn user(name: &str, uid: u32, key: &str, login: bool, admin: bool) -> serde_json::Value {
    json!({"email": format!("{name}@example.com"), "username": name, "uid": uid, "gid": uid,
           "keys": [{"key": key, "expiration_usec": null}], "login": login, "admin": admin})
}
