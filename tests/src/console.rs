//! A pseudo-terminal standing in for the VM's serial console (`daemon.console`): the agent
//! opens the slave (its path under /dev/pts, which the VM shares), the test holds the master.
//! [`PtyConsole`] reads everything the agent writes into lines; [`StuckConsole`] is a console
//! nobody reads, filled up before the agent starts, so every write the agent tries finds it
//! full. [`AliceAndBob`], [`console_config`] and [`status_json`]: the VM, configuration and
//! `guest-agent status` the console tests and the stuck-console benchmark share.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::TestEnv;
use crate::oslogin::{OsLoginVm, keypair, user};

fn openpty() -> (OwnedFd, OwnedFd, String) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
        .expect("the slave's path")
        .to_string_lossy()
        .into_owned();
    (pty.master, pty.slave, path)
}

/// A console whose output the test reads.
pub struct PtyConsole {
    path: String,
    text: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    _slave: OwnedFd,
}

impl PtyConsole {
    pub fn open() -> PtyConsole {
        let (master, slave, path) = openpty();
        let text = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (text.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut fds, PollTimeout::from(100u16)), Ok(n) if n > 0) {
                    continue;
                }
                match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    Ok(n) => t
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        PtyConsole {
            path,
            text,
            stop,
            reader: Some(reader),
            _slave: slave,
        }
    }

    /// The slave's path, for `daemon.console`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Every complete line read so far (carriage returns taken out).
    pub fn lines(&self) -> Vec<String> {
        let text = self.text.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The lines containing `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Waits until a line contains `needle` (panics after `timeout`, a give-up bound).
    pub fn expect(&self, needle: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.matching(needle).into_iter().next() {
                return l;
            }
            assert!(
                t0.elapsed() < timeout,
                "no console line with {needle:?} within {timeout:?}; the console had:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PtyConsole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A console nobody reads, full before the agent opens it.
pub struct StuckConsole {
    path: String,
    _master: OwnedFd,
    _slave: OwnedFd,
    /// Bytes the test wrote to fill it.
    pub filled: usize,
}

impl StuckConsole {
    pub fn open() -> StuckConsole {
        let (master, slave, path) = openpty();
        // Writes to the slave go to the master's input, which nobody reads: write until the
        // terminal takes no more.
        let flags =
            nix::fcntl::fcntl(slave.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).expect("F_GETFL");
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(slave.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
            .expect("F_SETFL");
        let mut filled = 0;
        // The kernel moves what was written on to the master's side in the background, which
        // makes room again: full means refused many times in a row, single bytes included.
        let mut refused = 0;
        while refused < 50 {
            let size = if refused == 0 { 1024 } else { 1 };
            match nix::unistd::write(slave.as_fd(), &vec![b'x'; size]) {
                Ok(n) => {
                    filled += n;
                    refused = 0;
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("filling the pty: {e}"),
            }
            assert!(filled < 64 << 20, "the pty never filled");
        }
        StuckConsole {
            path,
            _master: master,
            _slave: slave,
            filled,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// An OS Login VM (real sshd) with alice (login role) and bob (no login role: every login of
/// his is refused, each refusal a console event).
pub struct AliceAndBob {
    pub vm: OsLoginVm,
    pub alice_key: PathBuf,
    pub bob_key: PathBuf,
}

impl AliceAndBob {
    /// Starts it; `config` is appended to the agent's configuration.
    pub fn start(tag: &str, config: &str) -> AliceAndBob {
        let mut keys = None;
        let vm = OsLoginVm::start(tag, config, |env| {
            let (alice_key, alice_pub) = keypair(env.dir(), "alice");
            let (bob_key, bob_pub) = keypair(env.dir(), "bob");
            let emu = env.emulator();
            for u in [
                user("alice", 200001, &alice_pub, true, false),
                user("bob", 200002, &bob_pub, false, false),
            ] {
                emu.ok("POST", "/oslogin/users", Some(&u.to_string()));
            }
            keys = Some((alice_key, bob_key));
        });
        let (alice_key, bob_key) = keys.expect("setup ran");
        AliceAndBob {
            vm,
            alice_key,
            bob_key,
        }
    }
}

/// `[daemon] console = PATH` (and the rest of `extra`, which must not open another section
/// before it).
pub fn console_config(path: &str, extra: &str) -> String {
    format!("{extra}\n[daemon]\nconsole = \"{path}\"\n")
}

/// `guest-agent status ARGS` in the VM, as root or (with `as_nobody`) as nobody: (exit code,
/// stdout, stderr).
pub fn status(env: &TestEnv, as_nobody: bool, args: &[&str]) -> (i32, String, String) {
    let mut cmd = if as_nobody {
        let mut c = env.vm().command("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            crate::vm::AGENT,
        ]);
        c
    } else {
        env.vm().command(crate::vm::AGENT)
    };
    let out = cmd.arg("status").args(args).output().expect("status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `guest-agent status --json`, parsed (panics if it fails).
pub fn status_json(env: &TestEnv, as_nobody: bool) -> Value {
    let (code, out, err) = status(env, as_nobody, &["--json"]);
    assert_eq!(code, 0, "status --json: {out}{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}
