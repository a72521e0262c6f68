//! ssh logins with a serial console nobody reads beside no console at all (`console-bench`
//! prints it alone, `bench-report` in its table). [`run`] starts two OS Login "VMs" of the
//! end-to-end harness side by side, each with a real sshd and the same users (alice with the
//! login role, bob without: every refusal of bob's is a console event the daemon queues for
//! the console), one with `daemon.console = ""` and one pointing at the slave of a
//! [`StuckConsole`] (a pty filled before the agent starts, never read). It times ssh logins
//! interleaved between the two VMs (alice allowed, bob refused), so a change in the machine's
//! load falls on both alike, and reads the stuck console's counters from
//! `guest-agent status --json` (root) to show it really was stuck (lines dropped).

use std::time::{Duration, Instant};

use super::login::ssh_bounded;
use super::{Row, Stats, fmt_d, row};
use crate::console::{AliceAndBob, StuckConsole, console_config, status_json};

/// Bound on one ssh login attempt (a stalled daemon would show as this).
const SSH_LIMIT_SECS: u32 = 30;
/// The goal: logins with the stuck console within 10% of those with none (medians).
const GOAL_RATIO: f64 = 1.10;

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Logins per user and per console setup.
    pub logins: usize,
}

impl Params {
    pub const FULL: Params = Params { logins: 40 };
    pub const QUICK: Params = Params { logins: 20 };
}

/// One console setup's logins.
#[derive(Debug, Clone, Default)]
pub struct Logins {
    /// alice's (login role) ssh logins, each `ssh ... true` from start to exit.
    pub allowed: Stats,
    /// bob's (no login role) refused ssh attempts.
    pub refused: Stats,
}

/// What [`run`] measured.
#[derive(Debug, Clone, Default)]
pub struct ConsoleResult {
    pub none: Logins,
    pub stuck: Logins,
    /// Bytes written into the pty to fill it before the agent started.
    pub filled: usize,
    /// The stuck console's `written` and `dropped` from `guest-agent status --json`.
    pub written: u64,
    pub dropped: u64,
    /// Wall time of the whole part.
    pub took: Duration,
}

impl ConsoleResult {
    /// Median with the stuck console over median with none: (allowed, refused).
    pub fn ratios(&self) -> (f64, f64) {
        let ratio = |stuck: &Stats, none: &Stats| {
            stuck.median().as_secs_f64() / none.median().as_secs_f64().max(1e-9)
        };
        (
            ratio(&self.stuck.allowed, &self.none.allowed),
            ratio(&self.stuck.refused, &self.none.refused),
        )
    }
}

/// One ssh attempt of `user` in `v`, timed; `Err` unless it ended as `allowed` says.
fn attempt(v: &AliceAndBob, allowed: bool) -> Result<Duration, String> {
    let (key, user) = if allowed {
        (&v.alice_key, "alice")
    } else {
        (&v.bob_key, "bob")
    };
    let (code, took) = ssh_bounded(&v.vm, key, user, SSH_LIMIT_SECS);
    match (allowed, code) {
        (true, 0) | (false, 255) => Ok(took),
        _ => Err(format!(
            "ssh {user}: exit {code} after {} (expected {})\n{}\n{}",
            fmt_d(took),
            if allowed { "0" } else { "255, refused" },
            v.vm.sshd().dump(),
            v.vm.env.agent().dump()
        )),
    }
}

/// Starts both VMs, measures, stops them. `record`: the worker's record file
/// ([`super::record_dir`]).
pub fn run(record: &std::path::Path, p: Params) -> Result<ConsoleResult, String> {
    let t_all = Instant::now();
    // The console outlives the VM whose agent writes to it (dropped after it).
    let console = StuckConsole::open();
    let none = AliceAndBob::start("cbnone", &console_config("", ""));
    super::record_dir(record, &none.vm.env)?;
    let stuck = AliceAndBob::start("cbstuck", &console_config(console.path(), ""));
    super::record_dir(record, &stuck.vm.env)?;

    // Warm-up: alice's first login makes her home; the first runs fill caches.
    for v in [&none, &stuck] {
        for allowed in [true, false, true, false] {
            attempt(v, allowed)?;
        }
    }
    let mut times: [[Vec<Duration>; 2]; 2] = Default::default();
    for _ in 0..p.logins {
        for allowed in [true, false] {
            for (i, v) in [&none, &stuck].into_iter().enumerate() {
                times[i][usize::from(!allowed)].push(attempt(v, allowed)?);
            }
        }
    }
    let [t_none, t_stuck] = times;
    let logins = |[a, r]: [Vec<Duration>; 2]| Logins {
        allowed: Stats::new(a),
        refused: Stats::new(r),
    };

    // The writer gives up on a line after waiting 100 ms for room: by now lines were dropped
    // (a give-up bound of 10 s for the counter to show it).
    let t0 = Instant::now();
    let (written, dropped) = loop {
        let s = status_json(&stuck.vm.env, false);
        let c = &s["console"];
        if c["open"] != true || c["path"] != console.path() {
            return Err(format!("the stuck console is not open in the agent: {s}"));
        }
        let (w, d) = (
            c["written"].as_u64().unwrap_or(0),
            c["dropped"].as_u64().unwrap_or(0),
        );
        if d > 0 || t0.elapsed() > Duration::from_secs(10) {
            break (w, d);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(stuck);
    drop(none);
    Ok(ConsoleResult {
        none: logins(t_none),
        stuck: logins(t_stuck),
        filled: console.filled,
        written,
        dropped,
        took: t_all.elapsed(),
    })
}

/// The rows: logins with the stuck console beside none (judged on the medians), and the
/// stuck console's counters (judged: lines were dropped, so it really was stuck).
pub fn rows(r: &ConsoleResult) -> Vec<Row> {
    let (ra, rr) = r.ratios();
    let pair = |s: &Stats, n: &Stats, p: f64| {
        if p == 50.0 {
            format!("{} / {}", fmt_d(s.median()), fmt_d(n.median()))
        } else {
            format!("{} / {}", fmt_d(s.pct(p)), fmt_d(n.pct(p)))
        }
    };
    let (s, n) = (&r.stuck, &r.none);
    vec![
        row(
            "ssh login with a stuck serial console / none (median; p90)",
            format!(
                "allowed {}, refused {} ({ra:.2}x / {rr:.2}x); p90 {}, {}; {} each",
                pair(&s.allowed, &n.allowed, 50.0),
                pair(&s.refused, &n.refused, 50.0),
                pair(&s.allowed, &n.allowed, 90.0),
                pair(&s.refused, &n.refused, 90.0),
                s.allowed.0.len(),
            ),
            "",
            "within 10% of none",
        )
        .judged(ra <= GOAL_RATIO && rr <= GOAL_RATIO),
        row(
            "  the stuck console (guest-agent status --json)",
            format!(
                "{} line(s) dropped, {} written (the pty filled with {} bytes first)",
                r.dropped, r.written, r.filled
            ),
            "",
            "lines dropped",
        )
        .judged(r.dropped > 0),
    ]
}
