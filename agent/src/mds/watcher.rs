//! The daemon's heartbeat: long-polls the whole metadata tree and publishes typed snapshots.
//!
//! - One request at a time: `wait_for_change=true&last_etag=E&timeout_sec=T`, so an idle agent
//!   makes about one request per `T` seconds.
//! - Snapshots are published on a `tokio::sync::watch` channel: a slow reconciler only ever
//!   sees the newest snapshot and never delays the next poll.
//! - Last good wins: a failed, garbled or wrongly shaped answer publishes nothing.
//! - Failures back off (exponential, full jitter) and are logged once per episode and kind;
//!   the recovery is logged with how long the outage lasted.
//! - A service that answers long polls at once without a change (an ETag that changes every
//!   time, `wait_for_change` ignored) is slowed down by the same backoff.
//! - A new configuration (SIGHUP) ends the poll in flight and starts one with the new settings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Backoff, ClientSettings, GceClient, MdsError, Snapshot};
use crate::config::Config;

/// Answers to a long poll that come back faster than this without a change are suspicious.
const MIN_QUIET_ANSWER: Duration = Duration::from_secs(1);

pub type SnapshotSender = watch::Sender<Option<Arc<Snapshot>>>;
pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

/// Tracks one episode of failures so that it is logged once, not once per retry.
#[derive(Debug, Default)]
pub struct Episode {
    started: Option<Instant>,
    attempts: u32,
    kinds_logged: Vec<&'static str>,
}

impl Episode {
    /// Counts a failure of `kind`; true when it should be logged (first of its kind in this
    /// episode).
    pub fn failure(&mut self, kind: &'static str) -> bool {
        self.started.get_or_insert_with(Instant::now);
        self.attempts += 1;
        if self.kinds_logged.contains(&kind) {
            false
        } else {
            self.kinds_logged.push(kind);
            true
        }
    }

    /// Ends the episode; returns (failed attempts, duration) when there was one.
    pub fn success(&mut self) -> Option<(u32, Duration)> {
        let started = self.started.take()?;
        let attempts = std::mem::take(&mut self.attempts);
        self.kinds_logged.clear();
        Some((attempts, started.elapsed()))
    }

    pub fn is_failing(&self) -> bool {
        self.started.is_some()
    }
}

/// Runs until the task is dropped. `answers` counts the good answers (changed or not), so a
/// reconciler can tell a later answer from a re-run on the same one; `reread` asks for one
/// at once (the long poll in flight is dropped and the tree read without waiting), which is
/// how a reconciler gets a second opinion before a large removal.
pub async fn run(
    mut config: watch::Receiver<Arc<Config>>,
    tx: SnapshotSender,
    answers: Arc<std::sync::atomic::AtomicU64>,
    reread: Arc<tokio::sync::Notify>,
) {
    let mut etag: Option<String> = None;
    let mut read_now = false;
    let mut episode = Episode::default();
    let mut churn = Episode::default();
    loop {
        let cfg = config.borrow_and_update().clone();
        let m = &cfg.metadata;
        let mut backoff = Backoff::new(
            Duration::from_millis(m.backoff_min_ms),
            Duration::from_millis(m.backoff_max_ms),
        );
        let client = match ClientSettings::from_config(m) {
            Ok(s) => GceClient::new(s),
            Err(why) => {
                // Validated at load time; only reachable through a bug.
                tracing::error!(%why, "metadata.base_url unusable; waiting for a new configuration");
                let _ = config.changed().await;
                continue;
            }
        };
        // Polls with these settings until the configuration changes.
        loop {
            let wait = etag
                .as_deref()
                .filter(|_| !read_now)
                .map(|e| (e, m.watch_timeout_secs));
            read_now = false;
            let started = Instant::now();
            let result = tokio::select! {
                r = client.tree(wait) => r,
                () = reread.notified(), if wait.is_some() => {
                    tracing::debug!("a fresh read of the metadata was asked for");
                    read_now = true;
                    continue;
                }
                changed = config.changed() => {
                    if changed.is_err() {
                        return; // the daemon is shutting down
                    }
                    tracing::debug!("configuration changed; restarting the long poll");
                    break;
                }
            };
            let result = result.and_then(|tree| {
                Snapshot::from_tree(&tree.json)
                    .map(|s| (s, tree.etag))
                    .map_err(|e| MdsError::Parse {
                        url: client
                            .settings()
                            .endpoint
                            .url("/computeMetadata/v1/?recursive=true"),
                        reason: e.to_string(),
                        body_start: String::new(),
                    })
            });
            match result {
                Ok((snapshot, new_etag)) => {
                    if let Some((attempts, lasted)) = episode.success() {
                        tracing::info!(
                            failed_attempts = attempts,
                            outage = %format_args!("{:.1}s", lasted.as_secs_f32()),
                            "metadata service answering again"
                        );
                        crate::events::emit(crate::events::Event::MetadataBack { outage: lasted });
                    }
                    crate::events::metadata_answered();
                    answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let changed = tx.send_if_modified(|current| {
                        if current.as_deref() == Some(&snapshot) {
                            false
                        } else {
                            *current = Some(Arc::new(snapshot));
                            true
                        }
                    });
                    tracing::debug!(etag = %new_etag, changed, "metadata tree answered");
                    let quick = started.elapsed() < MIN_QUIET_ANSWER;
                    if !changed && wait.is_some() && quick {
                        if churn.failure("churn") {
                            tracing::warn!(
                                "metadata service answers long polls at once without a change; \
                                 slowing down"
                            );
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                    } else {
                        churn.success();
                        backoff.reset();
                    }
                    etag = Some(new_etag);
                }
                Err(e) => {
                    crate::events::metadata_failed(e.kind(), &e.to_string());
                    if episode.failure(e.kind()) {
                        tracing::warn!(
                            error = %e,
                            "metadata service failing ({e}); keeping the last good metadata and \
                             retrying with backoff"
                        );
                    } else {
                        tracing::debug!(error = %e, "metadata request failed again");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_logs_each_kind_once_and_reports_its_end() {
        let mut e = Episode::default();
        assert!(e.success().is_none());
        assert!(e.failure("timeout"));
        assert!(!e.failure("timeout"));
        assert!(!e.failure("timeout"));
        assert!(e.failure("status-5xx"));
        assert!(e.is_failing());
        let (attempts, _) = e.success().unwrap();
        assert_eq!(attempts, 4);
        assert!(!e.is_failing());
        assert!(e.failure("timeout"), "a new episode logs again");
    }
}
