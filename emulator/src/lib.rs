//! A metadata-service emulator for guest-agent tests and for image builders who want to try an
//! image without a cloud.
//!
//! It serves what a VM sees at `169.254.169.254`:
//! - the GCE flavour under `/computeMetadata/v1/` (the metadata tree with etags and
//!   `wait_for_change` long polls, service-account tokens, OS Login users, groups, `authorize`,
//!   trusted CA keys and two-step verification sessions),
//! - the EC2 flavour under `/latest/` (IMDSv2 session tokens, IAM credentials, user-data),
//!
//! plus fault injection (errors, delays, hangs, dropped and truncated answers, ...) and a
//! record of every request. Tests drive it in-process through [`Emulator`]; a running
//! `mds-emulator` binary is driven over the JSON control interface (TCP or Unix socket).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use guest_agent_emulator::{EmulatorOptions, Scope, start};
//! let running = start(EmulatorOptions {
//!     metadata_listen: vec!["127.0.0.1:0".parse()?],
//!     control: None,
//!     initial: Default::default(),
//! })
//! .await?;
//! let addr = running.metadata_addrs()[0];
//! running.state().set_attribute(Scope::Instance, "enable-oslogin", "true");
//! // ... point the code under test at http://{addr} ...
//! running.shutdown().await;
//! # Ok(()) }
//! ```

mod api;
mod ca;
mod control;
mod ec2;
mod faults;
mod gce;
mod http;
mod oslogin;
mod server;
mod state;
mod tokens;
mod tree;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use api::{
    AuthzenDecision, CertRequest, Ec2Settings, FactorError, Fault, FaultKind, GroupSpec,
    InitialState, KeySpec, RequestRecord, Scope, TwoFactor, UserSpec,
};
pub use oslogin::key_fingerprint;
pub use oslogin::totp::{Base32Error, totp_code};
pub use state::Emulator;
pub use tree::default_tree;

/// Where to listen, and what to start with.
#[derive(Debug, Clone, Default)]
pub struct EmulatorOptions {
    /// Metadata listeners (`169.254.169.254:80` in a namespace, `127.0.0.1:0` in tests).
    pub metadata_listen: Vec<SocketAddr>,
    /// The control interface, if any.
    pub control: Option<ControlListen>,
    pub initial: InitialState,
}

/// Where the control interface listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ControlListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlListen::Tcp(a) => write!(f, "{a}"),
            ControlListen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for ControlListen {
    type Err = String;
    /// `unix:/run/mds-emulator.sock` or `127.0.0.1:8080`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some("") => Err("unix: needs a path".into()),
            Some(path) => Ok(ControlListen::Unix(PathBuf::from(path))),
            None => s
                .parse()
                .map(ControlListen::Tcp)
                .map_err(|e| format!("{s:?} is neither unix:PATH nor ADDR:PORT: {e}")),
        }
    }
}

/// A running emulator. Dropping it stops the listeners too; [`Running::shutdown`] also waits
/// for them.
#[derive(Debug)]
pub struct Running {
    metadata_addrs: Vec<SocketAddr>,
    control: Option<ControlListen>,
    emulator: Emulator,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    unix_socket: Option<PathBuf>,
}

/// Binds every listener and starts serving.
pub async fn start(opts: EmulatorOptions) -> anyhow::Result<Running> {
    let emulator = Emulator::new(opts.initial);
    // If a later bind fails, `stop` is dropped and the tasks already started end.
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut metadata_addrs = Vec::new();
    for addr in &opts.metadata_listen {
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen for metadata on {addr} (for 169.254.169.254, run in a network \
                 namespace that has it on loopback)"
            )
        })?;
        metadata_addrs.push(listener.local_addr()?);
        tasks.push(tokio::spawn(server::serve(
            listener,
            emulator.clone(),
            stopped.clone(),
        )));
    }
    let mut unix_socket = None;
    let control = match opts.control {
        None => None,
        Some(ControlListen::Tcp(addr)) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for control on {addr}"))?;
            let bound = l.local_addr()?;
            tasks.push(tokio::spawn(control::serve(
                control::Listener::Tcp(l),
                emulator.clone(),
                stopped.clone(),
            )));
            Some(ControlListen::Tcp(bound))
        }
        Some(ControlListen::Unix(path)) => {
            let l = bind_unix(&path)?;
            unix_socket = Some(path.clone());
            tasks.push(tokio::spawn(control::serve(
                control::Listener::Unix(l),
                emulator.clone(),
                stopped.clone(),
            )));
            Some(ControlListen::Unix(path))
        }
    };
    Ok(Running {
        metadata_addrs,
        control,
        emulator,
        stop,
        tasks,
        unix_socket,
    })
}

/// Binds a Unix socket, replacing a stale socket file but nothing else.
fn bind_unix(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?,
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))
}

impl Running {
    /// The metadata listeners' actual addresses (port 0 resolved).
    pub fn metadata_addrs(&self) -> Vec<SocketAddr> {
        self.metadata_addrs.clone()
    }

    /// Where the control interface listens (TCP port 0 resolved).
    pub fn control_addr(&self) -> Option<ControlListen> {
        self.control.clone()
    }

    /// A handle on the state.
    pub fn state(&self) -> Emulator {
        self.emulator.clone()
    }

    /// Stops every listener and connection, and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        self.remove_socket();
    }

    fn remove_socket(&mut self) {
        if let Some(path) = self.unix_socket.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.remove_socket();
    }
}
