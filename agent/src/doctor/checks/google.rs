//! Google's guest agent beside us: still running, or its files still on the VM.

use serde_json::json;

use super::{Check, Context, utc};
use crate::takeover::Status;

pub fn google_agent(cx: &Context) -> Check {
    let g = &cx.facts.google;
    let running: Vec<String> = g
        .running
        .iter()
        .map(|(pid, name)| format!("{name} (pid {pid})"))
        .collect();
    if !running.is_empty() {
        return Check::fail(
            "google-agent",
            format!(
                "Google's guest agent is running beside guest-agent: {}; both manage users, keys, \
                 sudo and sshd, and undo each other's changes",
                running.join(", ")
            ),
            "run `guest-agent takeover --dry-run` to see what would change, then `guest-agent \
             takeover` (it stops and disables Google's units once ours are in effect)",
        )
        .detail("running", running);
    }
    match (&g.plan, g.report) {
        (Some(plan), _) if !plan.is_empty() || plan.refused.is_some() => {
            let what: Vec<String> = plan
                .changes
                .iter()
                .map(|(_, c)| c.path().display().to_string())
                .collect();
            let (summary, fix) = match &plan.refused {
                Some(why) => (
                    format!(
                        "Google's guest agent's files are on this VM and taking over is refused: {why}"
                    ),
                    "see the reason; until then Google's lines stay in effect".to_owned(),
                ),
                None => (
                    format!(
                        "Google's guest agent's files are on this VM ({}{}): its sshd blocks, \
                         NSS modules, PAM lines or sudoers files stay in effect beside ours",
                        what.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                        if what.len() > 3 {
                            format!(" and {} more", what.len() - 3)
                        } else {
                            String::new()
                        }
                    ),
                    "run `guest-agent takeover --dry-run` to see the plan, then `guest-agent \
                     takeover` (the daemon does it by itself with accounts.takeover = \"auto\")"
                        .to_owned(),
                ),
            };
            Check::warn("google-agent", summary, fix).detail("paths", json!(what))
        }
        (_, Some((Status::Done, at))) => Check::ok(
            "google-agent",
            format!(
                "took over from Google's guest agent at {} (report {})",
                utc(at),
                crate::takeover::REPORT_PATH
            ),
        ),
        (_, Some((Status::Undone, at))) => Check::ok(
            "google-agent",
            format!(
                "a takeover from Google's guest agent ({}) was undone; none of its files are in \
                 the way",
                utc(at)
            ),
        ),
        (_, Some((Status::InProgress, at))) => Check::warn(
            "google-agent",
            format!(
                "a takeover from Google's guest agent started at {} did not finish",
                utc(at)
            ),
            "run `guest-agent takeover` again (or `--undo` to put Google's files back)",
        ),
        _ => Check::ok("google-agent", "no trace of Google's guest agent"),
    }
}
