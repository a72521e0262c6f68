//! Fleet simulation (issue 18, item 4): 1,000 agents recovering from a metadata outage, against
//! one emulator in one network namespace.
//!
//! **The agents.** The `fleet-bench` binary, started inside the namespace with `--agents`, runs
//! [`Params::agents`] tokio tasks (one runtime, two worker threads), each running the daemon's
//! own metadata watcher, `guest_agent::mds::watcher::run`, with its real `GceClient` (its own
//! connection) and its real `Backoff` (exponential, full jitter), each with a configuration of
//! its own: `Config::default()` (the shipped `watch_timeout_secs` = 120, `backoff_min_ms` = 500,
//! `backoff_max_ms` = 30,000) pointing at the emulator (`http://169.254.169.254`). Each task has
//! its own config and snapshot channels and its own `answers` counter (the watcher counts every
//! good answer there): that counter is how a task is seen to have an answer. Only this child
//! links the agent's crate (the other benchmark binaries do not).
//!
//! **The timeline** (the child drives the emulator through its control socket):
//! 1. every agent gets its first answer (the time until all 1,000 have one is printed), then
//!    sits in its long poll;
//! 2. the outage: a fault makes every request under `/computeMetadata/v1/` answer 503, and an
//!    attribute is changed at once, so every long poll in flight answers and all 1,000 agents
//!    enter the outage in the same instant (the worst case, a synchronized start: the jitter
//!    has to spread them);
//! 3. [`Params::outage`] later (120 s; 20 s with `--quick`) the faults are cleared. An attribute
//!    changed one second before (the tree changed during the outage), so every agent's first
//!    request after the recovery is answered at once instead of being held as a long poll;
//! 4. right after the clear, the child sends one marker request (`GET /?fleet=recovered`, not a
//!    tree request) so the emulator's request log has the instant of recovery on its own clock;
//! 5. it watches the counters every 5 ms for [`Params::observe`] (60 s): the first good answer
//!    of each agent after the clear, and at the end whether every watcher task still runs
//!    (the watcher never gives up by design; a task that ended would be an agent that did).
//!
//! **At the emulator** (its request log, `GET /requests`, `at_ms` on its clock): the watcher's
//! tree requests (`/computeMetadata/v1/`) from the marker on (and any 200 in the second before
//! it), counted in 1 s buckets over the first minute: the peak per second, in which second, and
//! how many seconds hold half, 90 % and all of the requests; beside it what 1,000 synchronized
//! clients (no jitter, same retry schedule) would make: 1,000 in the same second. The peak is of
//! the answered requests (each agent's retry); each answered agent sends its next long poll at
//! once, which the emulator holds (status 0 in the log, the window ends before its 120 s): those
//! are counted apart, and all requests together are printed too (synchronized clients would
//! make 2,000 then). The outage
//! itself is counted too (requests, the 503s, its peak second). The emulator's stderr is
//! searched for `accept failed` (out of file descriptors and the like): a throttled emulator
//! is reported, not hidden.
//!
//! **Descriptors.** 1,000 concurrent connections need more than the usual soft limit of 1,024:
//! the worker raises `RLIMIT_NOFILE` (up to the hard limit, the hard limit too as root) before
//! it starts the emulator and the agents, which inherit it; the limit is printed in a note.
//!
//! A benchmark row, not a timed test: the only judged row is that every agent answered.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Row, Stats, fmt_d, row};
use crate::emulator::Emulator;
use crate::netns::Netns;
use crate::process::Proc;

/// What the simulation runs.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub agents: usize,
    /// How long every metadata request fails.
    pub outage: Duration,
    /// How long after the recovery requests and answers are counted.
    pub observe: Duration,
}

impl Params {
    pub const FULL: Params = Params {
        agents: 1_000,
        outage: Duration::from_secs(120),
        observe: Duration::from_secs(60),
    };
    pub const QUICK: Params = Params {
        agents: 1_000,
        outage: Duration::from_secs(20),
        observe: Duration::from_secs(60),
    };
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct FleetResult {
    pub params: Params,
    /// From the agents' start until every one had its first answer (before the outage).
    pub ready: Duration,
    /// Agents that had a good answer within [`Params::observe`] of the recovery.
    pub answered: usize,
    /// Watcher tasks still running at the end.
    pub alive: usize,
    /// Per agent that answered: from the recovery to its first good answer.
    pub first_answers: Stats,
    /// Tree requests at the emulator in each second after the recovery: all of them, and those
    /// answered (not still held as a long poll when the run ended).
    pub buckets: Vec<u32>,
    pub answered_buckets: Vec<u32>,
    /// Tree requests during the outage, how many of them got the fault's 503, and the busiest
    /// second of the outage.
    pub outage_requests: usize,
    pub outage_failed: usize,
    pub outage_peak: u32,
    /// `accept failed` lines in the emulator's stderr.
    pub emulator_accept_failures: usize,
    /// RLIMIT_NOFILE (soft, hard) the emulator and the agents ran with.
    pub nofile: (u64, u64),
    /// The watcher settings the agents ran with (from `Config::default()`).
    pub watch_timeout_secs: u64,
    pub backoff_ms: (u64, u64),
    pub took: Duration,
}

/// The path of every request the metadata watcher makes.
const TREE: &str = "/computeMetadata/v1/";

/// Raises RLIMIT_NOFILE of this process (and so of what it starts from now on) to at least
/// `need` if it is lower; returns the (soft, hard) limit then in force.
pub fn raise_nofile(need: u64) -> Result<(u64, u64), String> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if r.rlim_cur < need {
        let want = libc::rlimit {
            rlim_cur: need.max(r.rlim_cur),
            rlim_max: r.rlim_max.max(need),
        };
        // SAFETY: a valid rlimit; raising the hard limit needs root (the benchmarks run so).
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(format!(
                "RLIMIT_NOFILE {} (hard {}) is below the {need} descriptors the fleet needs and \
                 cannot be raised: {}",
                r.rlim_cur,
                r.rlim_max,
                std::io::Error::last_os_error()
            ));
        }
        r = want;
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// Runs the simulation: a namespace, the emulator, and the `fleet-bench --agents` child in it.
pub fn run(record: &Path, p: Params) -> Result<FleetResult, String> {
    let t0 = Instant::now();
    // Each agent holds one connection, the emulator the other end; the runtimes want a few more.
    let nofile = raise_nofile(p.agents as u64 * 2 + 1_024)?;
    let dir = tempfile::Builder::new()
        .prefix("ga-e2e-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    super::record_path(record, dir.path())?;
    let ns = Netns::new("fleet");
    let emu = Emulator::start(&ns, dir.path(), None);
    emu.set_attribute("instance", "fleet-phase", "start");
    emu.clear_requests();
    let mut cmd = ns.command(&crate::bins::path("fleet-bench"));
    cmd.arg("--agents")
        .arg(p.agents.to_string())
        .arg(p.outage.as_millis().to_string())
        .arg(p.observe.as_millis().to_string())
        .arg(emu.control_socket());
    let mut child = Proc::spawn("fleet-agents", cmd);
    let limit = p.outage + p.observe + Duration::from_secs(120);
    let status = child.wait_exit(limit);
    let out = child
        .lines()
        .into_iter()
        .find_map(|l| l.strip_prefix("FLEET ").map(str::to_owned));
    let (Some(status), Some(out)) = (status, out) else {
        return Err(format!(
            "fleet: the agents' process did not report within {limit:?}:\n{}",
            child.dump()
        ));
    };
    if !status.success() {
        return Err(format!(
            "fleet: the agents' process failed:\n{}",
            child.dump()
        ));
    }
    let out: Value =
        serde_json::from_str(&out).map_err(|e| format!("fleet: bad report ({e}): {out}"))?;
    let requests = emu.requests();
    let accept_failures = emu
        .proc
        .lines()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    let log = RequestLog::from_records(&requests)
        .ok_or("fleet: the recovery marker is not in the emulator's request log")?;
    let observe_s = p.observe.as_secs().max(1) as usize;
    let first: Vec<Duration> = out["first_ms"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(Duration::from_millis)
                .collect()
        })
        .unwrap_or_default();
    let outage_at = log.during(p.outage);
    Ok(FleetResult {
        params: p,
        ready: Duration::from_millis(out["ready_ms"].as_u64().unwrap_or(0)),
        answered: first.len(),
        alive: out["alive"].as_u64().unwrap_or(0) as usize,
        first_answers: Stats::new(first),
        buckets: log.after_recovery(observe_s, false),
        answered_buckets: log.after_recovery(observe_s, true),
        outage_requests: outage_at.len(),
        outage_failed: outage_at.iter().filter(|(_, s)| *s == 503).count(),
        outage_peak: buckets(
            outage_at.iter().map(|(at, _)| *at),
            log.recovered_at.saturating_sub(p.outage.as_millis() as u64),
            p.outage.as_secs().max(1) as usize,
        )
        .into_iter()
        .max()
        .unwrap_or(0),
        emulator_accept_failures: accept_failures,
        nofile,
        watch_timeout_secs: out["watch_timeout_secs"].as_u64().unwrap_or(0),
        backoff_ms: (
            out["backoff_min_ms"].as_u64().unwrap_or(0),
            out["backoff_max_ms"].as_u64().unwrap_or(0),
        ),
        took: t0.elapsed(),
    })
}

/// The emulator's request log, reduced to what the simulation reads.
struct RequestLog {
    /// `at_ms` of the marker request sent right after the faults were cleared.
    recovered_at: u64,
    /// (at_ms, status) of every tree request, in arrival order.
    tree: Vec<(u64, u16)>,
}

impl RequestLog {
    fn from_records(records: &[Value]) -> Option<RequestLog> {
        let recovered_at = records
            .iter()
            .find(|r| r["path"] == json!("/") && r["query"] == json!("fleet=recovered"))?["at_ms"]
            .as_u64()?;
        let tree = records
            .iter()
            .filter(|r| r["path"] == json!(TREE))
            .filter_map(|r| Some((r["at_ms"].as_u64()?, r["status"].as_u64()? as u16)))
            .collect();
        Some(RequestLog { recovered_at, tree })
    }

    /// Tree requests per second for `secs` seconds from the recovery (with `answered_only`, only
    /// those answered: not a long poll still held, status 0); a request answered (not with the
    /// fault's 503) in the second before the marker came after the clear too, and counts in
    /// the first second.
    fn after_recovery(&self, secs: usize, answered_only: bool) -> Vec<u32> {
        let from = self.recovered_at;
        let ats = self.tree.iter().filter_map(|&(at, status)| {
            if answered_only && status == 0 {
                None
            } else if at >= from {
                Some(at)
            } else if status != 503 && at + 1_000 >= from {
                Some(from)
            } else {
                None
            }
        });
        buckets(ats, from, secs)
    }

    /// (at_ms, status) of the tree requests in the `outage` before the recovery.
    fn during(&self, outage: Duration) -> Vec<(u64, u16)> {
        let start = self.recovered_at.saturating_sub(outage.as_millis() as u64);
        self.tree
            .iter()
            .copied()
            .filter(|&(at, _)| at >= start && at < self.recovered_at)
            .collect()
    }
}

/// Counts of `ats` (ms) in 1 s buckets from `from`, `secs` buckets (later ones are left out).
fn buckets(ats: impl Iterator<Item = u64>, from: u64, secs: usize) -> Vec<u32> {
    let mut b = vec![0u32; secs];
    for at in ats.filter(|&at| at >= from) {
        if let Some(n) = b.get_mut(((at - from) / 1_000) as usize) {
            *n += 1;
        }
    }
    b
}

/// How many of the first seconds hold `fraction` of all the requests in `b`.
fn seconds_holding(b: &[u32], fraction: f64) -> usize {
    let total: u64 = b.iter().map(|&n| u64::from(n)).sum();
    let want = (total as f64 * fraction).ceil() as u64;
    let mut sum = 0u64;
    for (i, &n) in b.iter().enumerate() {
        sum += u64::from(n);
        if sum >= want {
            return i + 1;
        }
    }
    b.len()
}

/// `1,000`.
fn thousands(n: usize) -> String {
    super::nss::thousands(n)
}

impl FleetResult {
    /// The busiest second of `b`: (count, index).
    fn peak(b: &[u32]) -> (u32, usize) {
        b.iter()
            .enumerate()
            .map(|(i, &n)| (n, i))
            .max_by_key(|&(n, i)| (n, std::cmp::Reverse(i)))
            .unwrap_or((0, 0))
    }

    fn outage_label(&self) -> String {
        let s = self.params.outage.as_secs();
        if self.params.outage < Params::FULL.outage {
            format!(
                "{s} s outage (--quick; full run: {} s)",
                Params::FULL.outage.as_secs()
            )
        } else {
            format!("{s} s outage")
        }
    }

    /// One line on how the first minute's requests spread: answered ones (total, the seconds
    /// holding 50 %, 90 % and all of them, the counts per 5 s) and all of them.
    pub fn spread(&self) -> String {
        let b = &self.answered_buckets;
        let total: u32 = b.iter().sum();
        let per5: Vec<String> = b
            .chunks(5)
            .map(|c| c.iter().sum::<u32>().to_string())
            .collect();
        format!(
            "{total} tree requests answered in the first {} s; half of them within {} s, 90 % \
             within {} s, all within {} s; per 5 s: {}; with the long polls each agent sends \
             next (held, not answered in the window) {} requests, peak {}/s",
            b.len(),
            seconds_holding(b, 0.5),
            seconds_holding(b, 0.9),
            seconds_holding(b, 1.0),
            per5.join(" "),
            self.buckets.iter().sum::<u32>(),
            Self::peak(&self.buckets).0,
        )
    }

    /// Notes printed under the table.
    pub fn notes(&self) -> Vec<String> {
        let mut v = vec![format!(
            "Fleet: {} agents (the daemon's metadata watcher as tokio tasks, real GceClient and \
             full-jitter Backoff, watch_timeout_secs {}, backoff {}-{} ms) against one \
             emulator; all had their first answer {} after start; the outage made every tree \
             request answer 503 ({} requests, {} of them 503, busiest second {}: all agents \
             entered it in the same instant); after the recovery: {}. RLIMIT_NOFILE {} (hard \
             {}); emulator accept failures: {}.",
            thousands(self.params.agents),
            self.watch_timeout_secs,
            self.backoff_ms.0,
            self.backoff_ms.1,
            fmt_d(self.ready),
            self.outage_requests,
            self.outage_failed,
            self.outage_peak,
            self.spread(),
            self.nofile.0,
            self.nofile.1,
            self.emulator_accept_failures,
        )];
        if self.emulator_accept_failures > 0 {
            v.push(format!(
                "Fleet: the emulator could not accept {} connection(s) (its own limits \
                 throttled the fleet; the peak is a lower bound)",
                self.emulator_accept_failures
            ));
        }
        v
    }
}

/// The table rows: the peak beside 1,000 synchronized clients, agents answered (judged), the
/// time until all had an answer.
pub fn rows(r: &FleetResult) -> Vec<Row> {
    let n = thousands(r.params.agents);
    let (peak, at) = FleetResult::peak(&r.answered_buckets);
    let (peak_all, _) = FleetResult::peak(&r.buckets);
    let observe = r.params.observe.as_secs();
    let first_minute = if observe == 60 {
        "the first minute".to_owned()
    } else {
        format!("the first {observe} s")
    };
    let all = r.answered == r.params.agents && r.alive == r.params.agents;
    vec![
        row(
            format!(
                "fleet of {n} agents after a {}: peak requests/s in {first_minute} after \
                 recovery",
                r.outage_label()
            ),
            format!(
                "{peak}/s (second {}; {}/s on average over the first {} s); {peak_all}/s with \
                 the long polls that follow",
                at + 1,
                r.answered_buckets.iter().sum::<u32>() as usize
                    / seconds_holding(&r.answered_buckets, 1.0).max(1),
                seconds_holding(&r.answered_buckets, 1.0)
            ),
            format!("{n} (synchronized)"),
            "spread (full jitter)",
        ),
        row(
            format!("fleet: agents answered after recovery (within {observe} s, none gave up)"),
            format!(
                "{}/{} ({} watcher(s) running)",
                r.answered, r.params.agents, r.alive
            ),
            "",
            format!("{n}/{n}"),
        )
        .judged(all),
        row(
            format!("fleet: time from recovery until all {n} agents had an answer"),
            if r.answered == r.params.agents {
                format!(
                    "{} (median {})",
                    fmt_d(r.first_answers.max()),
                    fmt_d(r.first_answers.median())
                )
            } else {
                format!("not all within {observe} s")
            },
            "",
            format!("≤ backoff cap ({} s)", r.backoff_ms.1 / 1_000),
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Helpers for the agents' process (`fleet-bench --agents`), which runs in the namespace.

/// One control request from the agents' process; an error unless the status is 2xx.
pub fn control(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Result<(), String> {
    let a = crate::emulator::control_at(socket, method, path, body);
    if (200..300).contains(&a.status) {
        Ok(())
    } else {
        Err(format!("{method} {path}: {} {}", a.status, a.body))
    }
}

/// The recovery marker: one plain request to the metadata server (from inside the namespace),
/// outside the tree, so the emulator's log holds the instant of recovery on its own clock.
pub fn send_marker() -> Result<(), String> {
    let mut s = std::net::TcpStream::connect(("169.254.169.254", 80))
        .map_err(|e| format!("marker: connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("marker: {e}"))?;
    s.write_all(
        b"GET /?fleet=recovered HTTP/1.1\r\nHost: metadata.google.internal\r\n\
          Metadata-Flavor: Google\r\nConnection: close\r\n\r\n",
    )
    .map_err(|e| format!("marker: write: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("marker: read: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_from_the_recovery_and_spread_is_measured() {
        let records: Vec<Value> = [
            (900, TREE, "", 503),
            (1_500, TREE, "", 200), // after the clear, before the marker: the first second
            (1_600, "/", "fleet=recovered", 200),
            (1_700, TREE, "", 200),
            (2_599, TREE, "", 200),
            (2_600, TREE, "", 0), // a long poll held until the end
            (9_999_999, TREE, "", 200),
        ]
        .iter()
        .map(|&(at, path, query, status)| {
            json!({"at_ms": at, "path": path, "query": query, "status": status})
        })
        .collect();
        let log = RequestLog::from_records(&records).unwrap();
        assert_eq!(log.recovered_at, 1_600);
        assert_eq!(log.after_recovery(3, false), vec![3, 1, 0]);
        assert_eq!(log.after_recovery(3, true), vec![3, 0, 0]);
        assert_eq!(
            log.during(Duration::from_secs(1)),
            vec![(900, 503), (1_500, 200)]
        );
        assert_eq!(seconds_holding(&[3, 1, 0], 0.5), 1);
        assert_eq!(seconds_holding(&[3, 1, 0], 1.0), 2);
        assert_eq!(seconds_holding(&[0, 0], 1.0), 1);
    }
}
