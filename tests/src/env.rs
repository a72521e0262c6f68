//! A whole test environment: a network namespace, the emulator in it, and the agent in it with
//! a private configuration and a real NOTIFY_SOCKET. Dropped in reverse order of creation:
//! processes first (killed by PID), then the namespace, then the temporary directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::emulator::Emulator;
use crate::netns::Netns;
use crate::notify::NotifySocket;
use crate::process::Proc;
use crate::vm::Vm;

/// How to start the agent.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Extra TOML appended to the configuration file.
    pub config: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

pub struct TestEnv {
    pub agent: Option<Proc>,
    pub notify: Option<NotifySocket>,
    pub emulator: Option<Emulator>,
    /// The private mount namespace ("VM") the agent runs in: it writes /run, /var/lib and,
    /// with OS Login, /etc.
    pub vm: Option<Vm>,
    pub ns: Netns,
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    /// A namespace, a temporary directory and the VM (private mount namespace) the agent
    /// will run in; nothing running yet.
    pub fn new(tag: &str) -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("ga-e2e-")
            .tempdir()
            .expect("tempdir");
        let mut env = TestEnv {
            agent: None,
            notify: None,
            emulator: None,
            vm: None,
            ns: Netns::new(tag),
            dir,
        };
        env.vm = Some(Vm::new(&env));
        env
    }

    /// A namespace with the emulator running in it.
    pub fn with_emulator(tag: &str, state: Option<&Value>) -> TestEnv {
        let mut env = TestEnv::new(tag);
        env.emulator = Some(Emulator::start(&env.ns, env.dir.path(), state));
        env
    }

    pub fn vm(&self) -> &Vm {
        self.vm.as_ref().expect("vm made")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn emulator(&self) -> &Emulator {
        self.emulator.as_ref().expect("emulator started")
    }

    pub fn agent(&self) -> &Proc {
        self.agent.as_ref().expect("agent started")
    }

    pub fn agent_mut(&mut self) -> &mut Proc {
        self.agent.as_mut().expect("agent started")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("config.toml")
    }

    /// Writes the agent's configuration file (defaults for everything `extra` does not set).
    pub fn write_config(&self, extra: &str) {
        std::fs::write(self.config_path(), format!("{extra}\n")).expect("write config");
    }

    /// Starts `guest-agent run` in the namespace with a NOTIFY_SOCKET.
    pub fn start_agent(&mut self, opts: AgentOptions) {
        self.write_config(&opts.config);
        let notify = NotifySocket::bind(self.dir.path());
        let mut cmd = self.vm().command(crate::vm::AGENT);
        cmd.arg("--config").arg(self.config_path()).arg("run");
        cmd.env("NOTIFY_SOCKET", notify.path());
        cmd.env_remove("RUST_LOG").env_remove("JOURNAL_STREAM");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        self.notify = Some(notify);
        self.agent = Some(Proc::spawn("guest-agent", cmd));
    }

    /// Every message the agent has sent to its notify socket so far (READY=1, STATUS=...,
    /// WATCHDOG=1, STOPPING=1); none before it was started.
    pub fn notify_messages(&mut self) -> Vec<String> {
        self.notify
            .as_mut()
            .map(|n| n.messages())
            .unwrap_or_default()
    }

    /// READY came from the first reconcile of the metadata, not from the startup deadline (the
    /// daemon's STATUS says which; with the service up, the deadline's READY is the regression).
    pub fn assert_ready_from_metadata(&mut self, what: &str) {
        let msgs = self.notify_messages();
        assert!(
            msgs.iter()
                .any(|m| m == "STATUS=running: metadata received and applied"),
            "{what}: READY not from the metadata: {msgs:?}\n{}",
            self.agent.as_ref().map(|a| a.dump()).unwrap_or_default()
        );
    }

    /// Waits for READY=1 on the notify socket; returns how long it took from `since`.
    pub fn wait_ready(&mut self, since: Instant, timeout: Duration) -> Duration {
        let notify = self.notify.as_mut().expect("agent started");
        match notify.wait_for("READY=1", timeout) {
            Some(t) => t.saturating_duration_since(since),
            None => panic!(
                "no READY=1 within {timeout:?}; got {:?}\n{}",
                notify.messages(),
                self.agent.as_ref().map(|a| a.dump()).unwrap_or_default()
            ),
        }
    }
}
