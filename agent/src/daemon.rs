//! `guest-agent run`: the daemon's lifecycle.
//!
//! Start: read the configuration (refuse a bad one), start the watcher and the reconcilers,
//! tell systemd READY=1 after the first successful reconcile, or after
//! `daemon.startup_deadline_secs` when the metadata service does not answer, so sshd (ordered
//! after us) never waits long. Run: SIGHUP reloads the configuration (a bad one is logged and
//! the old one kept), SIGUSR1 syncs the OS Login directory now, the watchdog is fed when
//! systemd asks for it. Stop: SIGTERM or SIGINT
//! stops at once (nothing the daemon writes is ever half-written, so there is nothing to finish).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{oneshot, watch};

use crate::config::Config;
use guest_agent_wire::proto::SOCKET_PATH;

use crate::events::{self, Event};
use crate::mds::watcher;
use crate::oslogin::{self, service::OsLogin};
use crate::task::AbortOnDrop;
use crate::{notify, reconcile, socket};

/// Where the configuration comes from, for reloads.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// Given with `--config`: then it must exist.
    pub explicit: bool,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, crate::config::ConfigError> {
        Config::load(&self.path, self.explicit)
    }
}

/// Runs the daemon until SIGTERM/SIGINT. `config` was loaded (and validated) by the caller.
pub fn run(source: ConfigSource, config: Config) -> anyhow::Result<()> {
    // One malloc arena: the blocking-pool threads (file writes, shadow tools) would each get
    // an arena of their own, and the memory they touch once stays resident. The daemon is
    // not allocation-bound, so the contention costs nothing measurable.
    // SAFETY: mallopt only changes glibc's allocator settings; called before other threads.
    unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1) };
    // Its writer thread never blocks the runtime (see `host::console`).
    crate::events::start_console(&config.daemon.console);
    // One thread is plenty for a process that mostly waits, and keeps the footprint small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run_async(source, config));
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

async fn run_async(source: ConfigSource, config: Config) -> anyhow::Result<()> {
    let mut sighup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;

    let startup_deadline = Duration::from_secs(config.daemon.startup_deadline_secs);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %source.path.display(),
        metadata = %config.metadata.base_url,
        "guest-agent starting"
    );
    events::emit(Event::Starting {
        version: env!("CARGO_PKG_VERSION"),
    });
    let (config_tx, config_rx) = watch::channel(Arc::new(config));
    let (snapshot_tx, snapshot_rx) = watch::channel(None);
    let received = snapshot_rx.clone();
    let (first_pass_tx, mut first_pass_rx) = oneshot::channel();

    let oslogin = OsLogin::new(config_rx.clone(), oslogin::service::Paths::default());
    let tokens = Arc::new(crate::tokens::TokenKeeper::default());
    let _token_tasks: Vec<AbortOnDrop<()>> = if config_rx.borrow().tokens.enabled {
        let accounts = config_rx.borrow().tokens.accounts.clone();
        accounts
            .into_iter()
            .map(|a| AbortOnDrop(tokio::spawn(tokens.clone().keep(config_rx.clone(), a))))
            .collect()
    } else {
        Vec::new()
    };
    let listener = socket::bind(Path::new(SOCKET_PATH))
        .with_context(|| format!("cannot listen on {SOCKET_PATH}"))?;
    let _socket = AbortOnDrop(tokio::spawn(socket::serve(
        listener,
        Arc::new(socket::Handler {
            oslogin: oslogin.clone(),
            tokens: tokens.clone(),
        }),
    )));
    let _oslogin_task = AbortOnDrop(tokio::spawn(oslogin.clone().run()));
    let answers = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reread = Arc::new(tokio::sync::Notify::new());
    let watcher = AbortOnDrop(tokio::spawn(watcher::run(
        config_rx.clone(),
        snapshot_tx,
        answers.clone(),
        reread.clone(),
    )));
    let reconcilers: Vec<Box<dyn reconcile::Reconciler>> = vec![
        Box::new(reconcile::ChangeLog::default()),
        Box::new(oslogin::reconciler::OsLoginReconciler::new(
            oslogin.clone(),
            config_rx.clone(),
            Default::default(),
        )),
        Box::new(crate::accounts::reconciler::AccountsReconciler::new(
            config_rx.clone(),
            Default::default(),
            answers,
            reread,
        )),
        // Last: ours is in effect (written earlier in the same pass) before Google's goes.
        Box::new(crate::takeover::TakeoverReconciler::new(
            config_rx,
            Default::default(),
        )),
    ];
    let reconciler = AbortOnDrop(tokio::spawn(reconcile::run(
        snapshot_rx,
        reconcilers,
        first_pass_tx,
    )));
    let _watchdog = notify::watchdog_interval().map(|every| {
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notify::watchdog();
            }
        }))
    });
    notify::status("waiting for the metadata service");

    let deadline = tokio::time::sleep(startup_deadline);
    tokio::pin!(deadline);
    let mut ready = false;
    loop {
        tokio::select! {
            first = &mut first_pass_rx, if !ready => {
                ready = true;
                if first.is_ok() {
                    tracing::info!("first reconcile done; ready");
                    notify::ready("running: metadata received and applied");
                    events::emit(Event::Ready { how: "metadata applied" });
                }
            }
            () = &mut deadline, if !ready => {
                ready = true;
                if received.borrow().is_some() {
                    tracing::warn!(
                        after_secs = startup_deadline.as_secs(),
                        "metadata received but the first reconcile has not succeeded by the \
                         startup deadline; telling systemd we are ready and carrying on"
                    );
                    notify::ready("running: applying the first metadata");
                    events::emit(Event::Ready {
                        how: "startup deadline; metadata still being applied",
                    });
                } else {
                    tracing::warn!(
                        after_secs = startup_deadline.as_secs(),
                        "metadata not received within the startup deadline; telling systemd we \
                         are ready anyway and carrying on in the background"
                    );
                    notify::ready("running: metadata service not answering yet, retrying");
                    events::emit(Event::Ready {
                        how: "startup deadline; metadata service not answering yet",
                    });
                }
            }
            _ = sighup.recv() => match source.load() {
                Ok(new) => {
                    tracing::info!(config = %source.path.display(), "configuration reloaded");
                    config_tx.send_replace(Arc::new(new));
                }
                Err(e) => tracing::error!(error = %e, "configuration reload failed; keeping the previous configuration"),
            },
            _ = sigusr1.recv() => {
                tracing::info!("SIGUSR1: OS Login directory sync requested");
                oslogin.request_sync();
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    tracing::info!("stopping");
    notify::stopping();
    drop((watcher, reconciler));
    Ok(())
}
