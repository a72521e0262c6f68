//! Taking over from Google's guest agent (and Yandex's fork) on a VM that ran it: its users
//! become ours, its sudo members move to our group, and its sshd blocks, nsswitch entries, PAM
//! lines, sudoers files, caches and units go, each only once ours is in effect (see [`plan`]
//! for the order and the conditions).
//!
//! - `guest-agent takeover [--dry-run] [--json]` and, once, the daemon by itself when it finds
//!   Google's traces and `accounts.takeover = "auto"` (the default): [`TakeoverReconciler`]
//!   runs after the other reconcilers of a pass, so our sshd lines, nsswitch entry, sudo rule
//!   and key blocks were written in the same pass before anything of Google's goes. The
//!   package's maintainer scripts never run it (the daemon does, after its first good
//!   metadata).
//! - The report, `/var/lib/guest-agent/takeover.json` ([`Report`]), lists every change, the
//!   users adopted (and the ones not counted as ours, with the reason), what was kept and
//!   why; each file changed is saved first under `/var/lib/guest-agent/takeover/`.
//! - `guest-agent takeover --undo` puts every saved file back byte for byte (mode and owner
//!   too), takes the members it added out of our sudo group, enables and starts the units it
//!   stopped, and marks the report `undone`: the daemon never takes over again by itself after
//!   that (stop and disable guest-agent to go back to Google's agent for good).
//! - Key lines: once a report says `done`, the accounts reconciler merges the adopted users
//!   into its state (managed; the accepted ones also created) and drops every
//!   `# Added by Google` pair outside our block of the users it manages
//!   ([`crate::accounts::authorized_keys::GoogleLines::DropAll`]): the keys metadata lists are
//!   in our block, written in the same file write, and a key metadata no longer lists stops
//!   working, as it would have under Google's agent.

pub mod apply;
pub mod command;
pub mod google;
pub mod plan;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Config;
use crate::host::files::{self, FileError};
use crate::mds::Snapshot;
use crate::reconcile::Reconciler;
use plan::{Adoption, Change, Step, UnitState};

pub const REPORT_PATH: &str = "/var/lib/guest-agent/takeover.json";
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("not taking over: {0}")]
    Refused(String),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Command(#[from] crate::host::command::CommandError),
    #[error("{0}")]
    Tool(String),
    #[error("cannot undo: {0}")]
    Undo(String),
    #[error(
        "{path} is not a takeover report this agent reads ({why}); move it away to take over again"
    )]
    BadReport { path: PathBuf, why: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Interrupted (a crash): the changes listed were made; `--undo` puts them back.
    InProgress,
    Done,
    Undone,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackupKind {
    /// The file's bytes, saved as `saved` in the backup directory.
    File { saved: String },
    /// A directory (its files are saved on their own).
    Dir,
    /// A FIFO (Google's `TrustedUserCAKeys`): made again, never read.
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub path: PathBuf,
    #[serde(flatten)]
    pub kind: BackupKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `takeover.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    /// `google` (Yandex's fork leaves the same names).
    pub from: String,
    pub status: Status,
    /// Unix seconds.
    pub at: i64,
    pub undone_at: Option<i64>,
    pub changes: Vec<(Step, Change)>,
    /// Units stopped and disabled (as they were before).
    pub units: Vec<UnitState>,
    /// Members of `google-sudoers` put in our sudo group (not members before).
    pub sudo_added: BTreeSet<String>,
    pub adoption: Adoption,
    /// Traces left in place, and why.
    pub kept: Vec<(String, String)>,
    /// Steps that failed (their files are back as they were).
    pub failed: Vec<String>,
    pub backups: Vec<Backup>,
}

impl Report {
    pub fn load(path: &Path) -> Result<Option<Report>, TakeoverError> {
        let Some(bytes) = files::read_optional(path)? else {
            return Ok(None);
        };
        let r: Report = serde_json::from_slice(&bytes).map_err(|e| TakeoverError::BadReport {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        if r.version != REPORT_VERSION {
            return Err(TakeoverError::BadReport {
                path: path.to_path_buf(),
                why: format!("version {}, this agent reads {REPORT_VERSION}", r.version),
            });
        }
        Ok(Some(r))
    }

    pub fn save(&self, path: &Path) -> Result<(), TakeoverError> {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        files::write_atomic(path, text.as_bytes(), 0o600, None)?;
        Ok(())
    }
}

/// What the accounts reconciler takes from a finished takeover: the users to adopt, and that
/// Google's key lines are ours to drop now. `None`: no takeover done (or undone).
pub fn adopted(path: &Path) -> Option<(i64, Adoption)> {
    match Report::load(path) {
        Ok(Some(r)) if r.status == Status::Done => Some((r.at, r.adoption)),
        _ => None,
    }
}

/// The executor's context from the configuration and a snapshot.
pub fn context(config: &Config, snapshot: &Snapshot) -> apply::Context {
    apply::Context {
        oslogin_on: snapshot.flag("enable-oslogin").is_some_and(|(v, _)| v),
        two_factor: snapshot.flag("enable-oslogin-2fa").is_some_and(|(v, _)| v),
        sudo_group: config.accounts.sudo_group.clone(),
        helper: config.oslogin.sshd_program(),
    }
}

/// Gathers, plans and (unless `dry_run`, or nothing of Google's was found) executes.
pub fn take_over(
    paths: &apply::Paths,
    ctx: &apply::Context,
    dry_run: bool,
) -> Result<(plan::Plan, Option<Report>), TakeoverError> {
    let found = apply::gather(paths, ctx);
    let p = plan::plan(&found, &paths.traces);
    if dry_run || !found.any() {
        return Ok((p, None));
    }
    let report = apply::execute(&p, paths, ctx)?;
    Ok((p, Some(report)))
}

/// Logs what a takeover did, one line per change and one summary line.
pub fn log_report(r: &Report) {
    for (step, c) in &r.changes {
        tracing::info!(step = ?step, path = %c.path().display(), change = ?change_word(c), "takeover: changed");
    }
    for (what, why) in &r.kept {
        tracing::warn!(%what, reason = %why, "takeover: kept");
    }
    for f in &r.failed {
        tracing::warn!(error = %f, "takeover: a step failed");
    }
    tracing::info!(
        changes = r.changes.len(),
        units = r.units.len(),
        adopted = r.adoption.managed.len(),
        adopted_as_created = r.adoption.created.len(),
        sudo_moved = r.sudo_added.len(),
        kept = r.kept.len(),
        report = REPORT_PATH,
        "took over from Google's guest agent"
    );
    crate::events::emit(crate::events::Event::TookOver {
        changes: r.changes.len(),
        adopted: r.adoption.managed.len(),
        kept: r.kept.len(),
    });
}

fn change_word(c: &Change) -> &'static str {
    match c {
        Change::Rewrite { .. } => "rewritten without Google's lines",
        Change::Remove { .. } => "removed",
        Change::RemoveDir { .. } => "directory removed",
    }
}

/// The daemon's automatic takeover: after the other reconcilers of a pass, once, when Google's
/// traces are found, `accounts.takeover = "auto"` and no report exists yet.
pub struct TakeoverReconciler {
    config: watch::Receiver<Arc<Config>>,
    paths: apply::Paths,
    /// A report exists (or a refusal was logged): nothing more to do until the next start.
    settled: bool,
    refused_logged: Option<String>,
    /// Right after a takeover: one more pass at once, so the accounts reconciler drops Google's
    /// key lines and the OS Login reconciler re-plans sshd without Google's block now, not at
    /// the next check interval.
    again: Option<std::time::Instant>,
}

impl TakeoverReconciler {
    pub fn new(config: watch::Receiver<Arc<Config>>, paths: apply::Paths) -> Self {
        TakeoverReconciler {
            config,
            paths,
            settled: false,
            refused_logged: None,
            again: None,
        }
    }
}

impl Reconciler for TakeoverReconciler {
    fn name(&self) -> &'static str {
        "takeover"
    }

    fn next_wakeup(&self) -> Option<std::time::Instant> {
        self.again
    }

    fn reconcile(&mut self, snapshot: &Snapshot) -> anyhow::Result<()> {
        self.again = None;
        let cfg = self.config.borrow().clone();
        if self.settled || cfg.accounts.takeover != "auto" {
            return Ok(());
        }
        if self.paths.report.exists() {
            self.settled = true;
            return Ok(());
        }
        let ctx = context(&cfg, snapshot);
        let found = apply::gather(&self.paths, &ctx);
        if !found.any() {
            return Ok(());
        }
        let p = plan::plan(&found, &self.paths.traces);
        if let Some(why) = &p.refused {
            if self.refused_logged.as_deref() != Some(why) {
                tracing::warn!(reason = %why, "Google's guest agent's traces found; not taking over");
                self.refused_logged = Some(why.clone());
            }
            return Ok(());
        }
        tracing::info!(
            "Google's guest agent's traces found; taking over (accounts.takeover = \"auto\")"
        );
        self.settled = true;
        let report = apply::execute(&p, &self.paths, &ctx)?;
        log_report(&report);
        self.again = Some(std::time::Instant::now());
        Ok(())
    }
}
