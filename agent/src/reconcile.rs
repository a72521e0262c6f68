//! Reconcilers: each turns a metadata snapshot into the state of one part of the machine.
//!
//! Like the incumbent's `manager` interface, each concern is one implementation of
//! [`Reconciler`]; unlike it, they never block the watcher: they run on their own task, see
//! only the newest snapshot, and a failure in one neither stops the others nor the next poll.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::mds::Snapshot;
use crate::mds::snapshot::Change;
use crate::mds::watcher::SnapshotReceiver;

/// One concern of the agent, driven by metadata snapshots. `reconcile` runs on a blocking
/// thread: it may do file I/O and run tools.
pub trait Reconciler: Send {
    fn name(&self) -> &'static str;
    fn reconcile(&mut self, snapshot: &Snapshot) -> anyhow::Result<()>;
    /// When to run again on the same snapshot (expiring keys, self-healing checks).
    fn next_wakeup(&self) -> Option<std::time::Instant> {
        None
    }
}

/// Boolean attributes the agent reads; a value that is not a boolean is warned about.
pub const KNOWN_FLAGS: &[&str] = &[
    "enable-oslogin",
    "enable-oslogin-2fa",
    "enable-oslogin-sk",
    "block-project-ssh-keys",
    "serial-port-enable",
];

/// Logs what changed in the metadata, by key name (values can be secrets), and warns about
/// boolean attributes that are not booleans.
#[derive(Default)]
pub struct ChangeLog {
    last: Option<Snapshot>,
}

impl Reconciler for ChangeLog {
    fn name(&self) -> &'static str {
        "change-log"
    }

    fn reconcile(&mut self, snapshot: &Snapshot) -> anyhow::Result<()> {
        match &self.last {
            None => tracing::info!(
                instance_id = snapshot.instance.id.as_deref().unwrap_or("?"),
                instance_attributes = snapshot.instance.attributes.len(),
                project_attributes = snapshot.project.attributes.len(),
                "metadata received"
            ),
            Some(old) => {
                for change in snapshot.changes_since(old) {
                    match change {
                        Change::Added(key) => tracing::info!(%key, "metadata key added"),
                        Change::Removed(key) => tracing::info!(%key, "metadata key removed"),
                        Change::Changed(key) => tracing::info!(%key, "metadata key changed"),
                    }
                }
            }
        }
        for (scope, key, value) in snapshot.invalid_flags(KNOWN_FLAGS) {
            let unchanged = self.last.as_ref().is_some_and(|old| {
                old.invalid_flags(&[key])
                    .iter()
                    .any(|(s, _, v)| *s == scope && *v == value)
            });
            if !unchanged {
                tracing::warn!(
                    %scope, %key, value,
                    "not a boolean (use true/false, 1/0 or yes/no); treated as unset"
                );
            }
        }
        self.last = Some(snapshot.clone());
        Ok(())
    }
}

/// Runs every reconciler on each new snapshot until the channel closes. `first_pass` fires
/// once all reconcilers have succeeded on one snapshot (what READY=1 waits for).
pub async fn run(
    mut rx: SnapshotReceiver,
    mut reconcilers: Vec<Box<dyn Reconciler>>,
    first_pass: oneshot::Sender<()>,
) {
    let mut first_pass = Some(first_pass);
    loop {
        let snapshot: Option<Arc<Snapshot>> = rx.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            let joined = tokio::task::spawn_blocking(move || {
                let mut all_ok = true;
                for r in reconcilers.iter_mut() {
                    let span = tracing::info_span!("reconcile", reconciler = r.name());
                    let _enter = span.enter();
                    if let Err(e) = r.reconcile(&snapshot) {
                        all_ok = false;
                        // The cause is in the message too: `journalctl` shows only MESSAGE.
                        tracing::error!(
                            error = format!("{e:#}"),
                            "reconcile failed: {e:#}; will retry on the next change"
                        );
                    }
                }
                // A pass over many users allocates and frees a lot at once; give the freed
                // memory back so the idle daemon stays small.
                // SAFETY: malloc_trim only releases free heap memory to the kernel.
                unsafe { nix::libc::malloc_trim(0) };
                (reconcilers, all_ok)
            })
            .await;
            let all_ok;
            (reconcilers, all_ok) = match joined {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "reconcilers panicked; stopping them");
                    return;
                }
            };
            if all_ok && let Some(tx) = first_pass.take() {
                let _ = tx.send(());
            }
        }
        let wakeup = reconcilers.iter().filter_map(|r| r.next_wakeup()).min();
        match wakeup {
            Some(at) => {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}
