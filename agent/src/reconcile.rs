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

/// One reconciler's run of failures: logged as an error when it starts and whenever the error
/// changes, not at every retry (a machine without sshd would otherwise log the same line every
/// check interval); its end is logged once.
#[derive(Debug, Default)]
pub struct FailureEpisode {
    last: Option<String>,
    repeats: u64,
}

/// What to log for one pass's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum FailureLog {
    /// Nothing to say (succeeded, as before).
    Quiet,
    /// A new error, or a different one: an ERROR line.
    Error,
    /// The same error as the pass before: a DEBUG line with the count.
    Again(u64),
    /// Succeeded after `repeats` failed passes: an INFO line.
    Recovered(u64),
}

impl FailureEpisode {
    pub fn record(&mut self, outcome: Result<(), &str>) -> FailureLog {
        match (outcome, self.last.as_deref()) {
            (Ok(()), None) => FailureLog::Quiet,
            (Ok(()), Some(_)) => {
                self.last = None;
                FailureLog::Recovered(std::mem::take(&mut self.repeats) + 1)
            }
            (Err(e), Some(last)) if e == last => {
                self.repeats += 1;
                FailureLog::Again(self.repeats)
            }
            (Err(e), _) => {
                self.last = Some(e.to_owned());
                self.repeats = 0;
                FailureLog::Error
            }
        }
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
    let mut episodes: Vec<FailureEpisode> =
        reconcilers.iter().map(|_| Default::default()).collect();
    loop {
        let snapshot: Option<Arc<Snapshot>> = rx.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            let joined = tokio::task::spawn_blocking(move || {
                let mut all_ok = true;
                for (r, episode) in reconcilers.iter_mut().zip(episodes.iter_mut()) {
                    let span = tracing::info_span!("reconcile", reconciler = r.name());
                    let _enter = span.enter();
                    let result = r.reconcile(&snapshot).map_err(|e| format!("{e:#}"));
                    all_ok &= result.is_ok();
                    // The cause is in the message too: `journalctl` shows only MESSAGE.
                    match (
                        episode.record(result.as_ref().map(|_| ()).map_err(String::as_str)),
                        &result,
                    ) {
                        (FailureLog::Error, Err(e)) => tracing::error!(
                            error = %e,
                            "reconcile failed: {e}; retrying at each change and check \
                             (logged again when the error changes)"
                        ),
                        (FailureLog::Again(n), Err(e)) => {
                            tracing::debug!(error = %e, repeats = n, "reconcile failed again")
                        }
                        (FailureLog::Recovered(n), _) => {
                            tracing::info!(failed_passes = n, "reconcile succeeded again")
                        }
                        _ => {}
                    }
                }
                // A pass over many users allocates and frees a lot at once; give the freed
                // memory back so the idle daemon stays small.
                // SAFETY: malloc_trim only releases free heap memory to the kernel.
                unsafe { nix::libc::malloc_trim(0) };
                (reconcilers, episodes, all_ok)
            })
            .await;
            let all_ok;
            (reconcilers, episodes, all_ok) = match joined {
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

#[cfg(test)]
mod tests {
    use super::{FailureEpisode, FailureLog};

    #[test]
    fn a_failure_episode_logs_its_start_each_new_error_and_its_end_once() {
        let mut e = FailureEpisode::default();
        assert_eq!(e.record(Ok(())), FailureLog::Quiet);
        assert_eq!(e.record(Err("no sshd_config")), FailureLog::Error);
        assert_eq!(e.record(Err("no sshd_config")), FailureLog::Again(1));
        assert_eq!(e.record(Err("no sshd_config")), FailureLog::Again(2));
        assert_eq!(
            e.record(Err("sshd -t failed")),
            FailureLog::Error,
            "a new error"
        );
        assert_eq!(e.record(Err("sshd -t failed")), FailureLog::Again(1));
        assert_eq!(e.record(Ok(())), FailureLog::Recovered(2));
        assert_eq!(e.record(Ok(())), FailureLog::Quiet);
        assert_eq!(
            e.record(Err("sshd -t failed")),
            FailureLog::Error,
            "a new episode"
        );
    }
}
