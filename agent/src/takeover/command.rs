//! `guest-agent takeover [--from google] [--dry-run] [--json] [--undo]`.
//!
//! Text output: one line per change (`rewrite PATH (N lines of Google's)`, `remove PATH`,
//! `stop UNIT`, `sudo: NAME -> GROUP`, `adopt NAME (created by Google's agent)` or
//! `adopt NAME (managed, never deleted: WHY)`, `kept PATH: WHY`), then a summary. `--json`:
//! `{"dry_run", "found", "plan": {"refused", "changes": [[STEP, {"action", "path", ...}]],
//! "units", "sudo_add", "adoption": {"managed", "created", "not_created", "missing"}, "kept"},
//! "report": REPORT or null}` (REPORT is `takeover.json`). Exit 0 when it did (or would do)
//! what it planned, 1 when it refused or failed, 2 when there is nothing to take over
//! (with `--undo`: nothing to undo).

use crate::exit::ExitCode;
use std::time::Instant;

use serde_json::json;

use super::apply::{self, Paths};
use super::plan::{Change, Plan};
use super::{Report, log_report, take_over};
use crate::config::Config;
use crate::mds::{ClientSettings, GceClient, Snapshot};

/// The metadata tree, for the OS Login and 2FA flags (within the doctor's deadline).
fn snapshot(config: &Config) -> Result<Snapshot, String> {
    let deadline = crate::doctor::facts::METADATA_DEADLINE;
    let mut settings = ClientSettings::from_config(&config.metadata)
        .map_err(|e| format!("metadata.base_url: {e}"))?;
    settings.limits.connect_timeout = settings.limits.connect_timeout.min(deadline);
    let client = GceClient::new(settings).with_timeout(deadline);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start an async runtime: {e}"))?;
    let started = Instant::now();
    runtime.block_on(async {
        let tree = client
            .tree(None)
            .await
            .map_err(|e| format!("{e} (after {} ms)", started.elapsed().as_millis()))?;
        Snapshot::from_tree(&tree.json).map_err(|e| e.to_string())
    })
}

fn print_plan(p: &Plan, dry_run: bool) {
    let verb = if dry_run { "would" } else { "did" };
    if let Some(why) = &p.refused {
        println!("refused: {why}");
        return;
    }
    for (step, c) in &p.changes {
        match c {
            Change::Rewrite { path, removed, .. } => println!(
                "{verb} rewrite {} ({removed} lines of Google's) [{step:?}]",
                path.display()
            ),
            Change::Remove { path } => println!("{verb} remove {} [{step:?}]", path.display()),
            Change::RemoveDir { path } => {
                println!("{verb} remove the directory {} [{step:?}]", path.display())
            }
        }
    }
    for u in &p.units {
        println!("{verb} stop and disable {}", u.unit);
    }
    for m in &p.sudo_add {
        println!("{verb} put {m} in our sudo group (from google-sudoers)");
    }
    for n in &p.adoption.managed {
        match p.adoption.not_created.get(n) {
            None => println!("{verb} adopt {n} (created by Google's agent: deprovision applies)"),
            Some(why) => println!("{verb} adopt {n} (managed, never deleted by us: {why})"),
        }
    }
    for n in &p.adoption.missing {
        println!("skip {n}: listed in google_users but no local account");
    }
    for (what, why) in &p.kept {
        println!("keep {what}: {why}");
    }
}

fn print_report(r: &Report) {
    for (what, why) in &r.kept {
        println!("kept {what}: {why}");
    }
    for f in &r.failed {
        println!("failed: {f}");
    }
    println!(
        "status {:?}: {} changes, {} units stopped, {} users adopted ({} as created), report {}",
        r.status,
        r.changes.len(),
        r.units.len(),
        r.adoption.managed.len(),
        r.adoption.created.len(),
        super::REPORT_PATH
    );
}

pub fn run(config: &Config, from: &str, dry_run: bool, json: bool, undo: bool) -> ExitCode {
    if from != "google" {
        eprintln!(
            "guest-agent takeover: --from {from:?}: only \"google\" is known (Google's guest agent; Yandex's fork leaves the same files)"
        );
        return ExitCode::from(2);
    }
    let paths = Paths::default();
    let snap = match snapshot(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "guest-agent takeover: cannot read the metadata service ({e}): OS Login and \
                 2-step verification decide what may go, so nothing was changed; try again \
                 when it answers"
            );
            return ExitCode::FAILURE;
        }
    };
    let ctx = super::context(config, &snap);
    if undo {
        return match apply::undo(&paths, &ctx) {
            Ok(r) => {
                if json {
                    println!("{}", json!({"undone": true, "report": r}));
                } else {
                    println!("restored {} files and directories", r.backups.len());
                    print_report(&r);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("guest-agent takeover --undo: {e}");
                ExitCode::from(2)
            }
        };
    }
    let found = apply::gather(&paths, &ctx).any();
    match take_over(&paths, &ctx, dry_run) {
        Ok((plan, report)) => {
            if json {
                println!(
                    "{}",
                    json!({"dry_run": dry_run, "found": found, "plan": plan, "report": report})
                );
            } else if !found {
                println!("nothing of Google's guest agent found: nothing to take over");
            } else {
                print_plan(&plan, dry_run);
                if let Some(r) = &report {
                    print_report(r);
                }
            }
            if let Some(r) = &report {
                log_report(r);
            }
            if !found {
                ExitCode::from(2)
            } else if plan.refused.is_some()
                || report.as_ref().is_some_and(|r| !r.failed.is_empty())
            {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("guest-agent takeover: {e}");
            ExitCode::FAILURE
        }
    }
}
