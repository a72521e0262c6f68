//! The agent with the service idle or down (`bench-report`), each in a VM of its own that runs
//! beside the other parts (they only wait on timers):
//!
//! - [`Idle`]: the agent with production settings (120 s long poll, OS Login on with a few
//!   users, 3600 s directory sync, 600 s CA refresh, tokens) left alone; every metadata
//!   request it makes over a window is counted by kind. A kind whose period the window covers
//!   twice is scaled to an hour from its count; a periodic kind whose period is longer is
//!   figured from its period instead (the count is shown beside it): the long poll (one
//!   request per `watch_timeout_secs`), the CA refresh (one per `ca_refresh_secs`), the
//!   directory sync (as many requests as the sync at start made, every
//!   `sync_interval_secs`) and the token refresh (at two thirds of the token's 3599 s
//!   lifetime). Any other request is scaled from its count. Judged against 70 per hour. Its
//!   RSS at the end of the window.
//! - [`ready_when_down`]: the time from the agent's start to READY=1 with nothing listening on
//!   the metadata address, or with the service hanging on every request.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use super::accounts::field;
use super::procfs::{agent_pid, memory};
use super::{Row, fmt_kib, row};
use crate::oslogin::{keypair, user};
use crate::vm::AGENT;
use crate::{AgentOptions, TestEnv};

/// The production periods the extrapolation uses (the agent's defaults).
const WATCH_TIMEOUT_SECS: f64 = 120.0;
const CA_REFRESH_SECS: f64 = 600.0;
const SYNC_INTERVAL_SECS: f64 = 3600.0;
const TOKEN_REFRESH_SECS: f64 = 3599.0 * 2.0 / 3.0;
/// The idle budget (issue 18): at most this many requests per hour with no open session.
pub const IDLE_BUDGET: f64 = 70.0;

/// What the idle agent did.
#[derive(Debug, Clone, Default)]
pub struct IdleResult {
    pub window: Duration,
    /// Requests in the window by kind.
    pub by_kind: BTreeMap<String, usize>,
    /// Requests one directory sync makes (from the sync at start).
    pub per_sync: f64,
    /// (VmRSS, VmHWM) KiB at the end of the window.
    pub rss: (u64, u64),
}

impl IdleResult {
    /// Requests per hour and its breakdown by kind (see the module's comment).
    pub fn per_hour(&self) -> (f64, String) {
        let window = self.window.as_secs_f64().max(1.0);
        let scale = 3600.0 / window;
        // Kind, period, requests per period.
        let periodic = [
            ("long poll", WATCH_TIMEOUT_SECS, 1.0),
            ("CA", CA_REFRESH_SECS, 1.0),
            ("sync", SYNC_INTERVAL_SECS, self.per_sync),
            ("token", TOKEN_REFRESH_SECS, 1.0),
        ];
        let mut total = 0.0;
        let mut parts = Vec::new();
        for (kind, period, each) in periodic {
            let n = self.by_kind.get(kind).copied().unwrap_or(0);
            if window >= 2.0 * period {
                total += n as f64 * scale;
                parts.push(format!("{kind} {:.1} ({n} counted)", n as f64 * scale));
            } else {
                let h = each * 3600.0 / period;
                total += h;
                parts.push(format!(
                    "{kind} {h:.1} ({each:.0} every {period:.0} s; {n} in the window)"
                ));
            }
        }
        for (kind, &n) in &self.by_kind {
            if periodic.iter().any(|(k, _, _)| k == kind) {
                continue;
            }
            total += n as f64 * scale;
            parts.push(format!("{kind} {:.1} ({n} counted)", n as f64 * scale));
        }
        (total, parts.join(", "))
    }
}

/// The idle agent, running in a thread of its own until [`Idle::finish`].
pub struct Idle {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<Result<IdleResult, String>>,
}

impl Idle {
    /// Starts the VM and the agent; the window starts once the agent is READY, its first sync
    /// done and the startup requests settled, and lasts at least `min_window`.
    pub fn start(record: &std::path::Path, min_window: Duration) -> Result<Idle, String> {
        let mut env = TestEnv::with_emulator("ibench", None);
        super::record_dir(record, &env)?;
        let (stop, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || idle(&mut env, rx, min_window));
        Ok(Idle { stop, handle })
    }

    /// Ends the window (waiting for its minimum) and returns what was counted.
    pub fn finish(self) -> Result<IdleResult, String> {
        let _ = self.stop.send(());
        self.handle
            .join()
            .map_err(|_| "the idle measurement panicked".to_owned())?
    }
}

/// The kind of a metadata request, for the idle count.
fn kind(path: &str, query: &str) -> &'static str {
    if path == "/computeMetadata/v1/" && query.contains("wait_for_change") {
        "long poll"
    } else if path.ends_with("/oslogin/certificates") {
        "CA"
    } else if path.contains("/oslogin/users") || path.contains("/oslogin/groups") {
        "sync"
    } else if path.ends_with("/token") {
        "token"
    } else {
        "other"
    }
}

fn idle(
    env: &mut TestEnv,
    stop: mpsc::Receiver<()>,
    min_window: Duration,
) -> Result<IdleResult, String> {
    let emu = env.emulator();
    emu.set_attribute("project", "enable-oslogin", "TRUE");
    for (i, name) in ["ann", "ben", "cid"].iter().enumerate() {
        let (_, public) = keypair(env.dir(), name);
        emu.ok(
            "POST",
            "/oslogin/users",
            Some(&user(name, 210_000 + i as u32, &public, true, false).to_string()),
        );
    }
    let t0 = Instant::now();
    env.start_agent(AgentOptions {
        config: format!("[oslogin]\nhelper_path = \"{AGENT}\"\n"),
        ..Default::default()
    });
    let notify = env.notify.as_mut().ok_or("no notify socket")?;
    notify
        .wait_for("READY=1", Duration::from_secs(30))
        .ok_or("idle agent: no READY=1 within 30 s")?;
    let agent = env.agent();
    agent
        .wait_for_line(t0, &["OS Login directory synced"], Duration::from_secs(30))
        .ok_or("idle agent: no sync")?;
    let line = agent
        .lines_since(t0, &["OS Login directory synced"])
        .into_iter()
        .next()
        .unwrap_or_default();
    let per_sync = field(&line, "requests")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    std::thread::sleep(Duration::from_secs(3));
    let emu = env.emulator();
    emu.clear_requests();
    let start = Instant::now();
    let _ = stop.recv();
    if let Some(rest) = min_window.checked_sub(start.elapsed()) {
        std::thread::sleep(rest);
    }
    let window = start.elapsed();
    let mut by_kind = BTreeMap::new();
    for r in emu.requests() {
        let k = kind(
            r["path"].as_str().unwrap_or_default(),
            r["query"].as_str().unwrap_or_default(),
        );
        *by_kind.entry(k.to_owned()).or_insert(0) += 1;
    }
    let rss = memory(agent_pid(env)?)?;
    Ok(IdleResult {
        window,
        by_kind,
        per_sync,
        rss,
    })
}

/// READY=1 with the service down.
#[derive(Debug, Clone, Default)]
pub struct ReadyResult {
    /// From the agent's start; None: not within 30 s.
    pub nothing_listening: Option<Duration>,
    pub hanging: Option<Duration>,
}

/// Starts both measurements in threads of their own; join for the result.
pub fn ready_when_down(record: &std::path::Path) -> Result<JoinHandle<ReadyResult>, String> {
    // Made here (not in the threads) so their directories are recorded before any waiting.
    let quiet = TestEnv::new("rbench");
    super::record_dir(record, &quiet)?;
    let hung = TestEnv::with_emulator("hbench", None);
    super::record_dir(record, &hung)?;
    hung.emulator()
        .add_fault(json!({"path_prefix": "", "kind": {"kind": "hang"}, "count": null}));
    let one = |mut env: TestEnv| {
        std::thread::spawn(move || {
            let t0 = Instant::now();
            env.start_agent(AgentOptions::default());
            let ready = env
                .notify
                .as_mut()
                .and_then(|n| n.wait_for("READY=1", Duration::from_secs(30)))
                .map(|t| t.saturating_duration_since(t0));
            if let Some(e) = env.emulator.as_ref() {
                let _ = e.control("DELETE", "/faults", None);
            }
            ready
        })
    };
    let (a, b) = (one(quiet), one(hung));
    Ok(std::thread::spawn(move || ReadyResult {
        nothing_listening: a.join().ok().flatten(),
        hanging: b.join().ok().flatten(),
    }))
}

/// The READY goal: within 10 s (`daemon.startup_deadline_secs`), judged on the figure rounded
/// to 0.1 s (it includes starting the process).
fn ready_ok(d: Option<Duration>) -> bool {
    d.is_some_and(|d| (d.as_secs_f64() * 10.0).round() <= 100.0)
}

pub fn rows(idle: &IdleResult, ready: &ReadyResult) -> Vec<Row> {
    let (per_hour, parts) = idle.per_hour();
    let r = |d: Option<Duration>| {
        d.map_or("no READY within 30 s".to_owned(), |d| {
            format!("{:.2} s", d.as_secs_f64())
        })
    };
    vec![
        row(
            "READY=1 with the service down: nothing listening / hanging",
            format!(
                "{} / {} (startup_deadline_secs 10)",
                r(ready.nothing_listening),
                r(ready.hanging)
            ),
            "never (sshd waits 90 s)",
            "≤ 10 s",
        )
        .judged(ready_ok(ready.nothing_listening) && ready_ok(ready.hanging)),
        row(
            "metadata requests per idle hour (OS Login on, 3 users, no session, production settings)",
            format!(
                "{per_hour:.0} per hour ({:.0} s window; by path per hour: {parts})",
                idle.window.as_secs_f64()
            ),
            "",
            "≤ 70",
        )
        .judged(per_hour <= IDLE_BUDGET),
        row(
            "daemon RSS idle, OS Login on, 3 users (peak VmHWM)",
            format!("{} (peak {})", fmt_kib(idle.rss.0), fmt_kib(idle.rss.1)),
            "",
            "≤ 8 MiB",
        )
        .judged(idle.rss.0 <= 8 * 1024),
    ]
}
