//! bench-report: every benchmark in one table, each figure beside its goal, the incumbent's
//! figure where known, and pass/FAIL against the goal; ratios computed within this one run.
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/bench-report           # full
//! sudo target/release/bench-report --quick     # fewer runs, 10,000 users: 1-2 minutes
//! ```
//!
//! Needs root (network and mount namespaces, real sshd). The parts (`guest_agent_e2e::bench`
//! modules, each documented there): NSS lookups beside glibc `files` (`nss`), the
//! AuthorizedKeysCommand, ssh logins and requests per login, lookups and logins with the
//! service hanging (`login`), ssh logins with a serial console nobody reads beside none
//! (`console`), 1,000 metadata users from nothing (`accounts`), a 100,000-user
//! OS Login directory and 200 concurrent AuthorizedKeysCommand runs (`scale`), 1,000 agents'
//! metadata watchers recovering from an outage of 120 s (20 s with `--quick`) against one
//! emulator (`fleet`, run by the `fleet-bench` binary, which must be built beside this one),
//! and, in VMs of their own running beside the others, READY with the service down and
//! requests per idle hour (`service`).
//!
//! A missed goal prints FAIL in its row and a line under the table; only a broken run (a part
//! that could not measure) exits non-zero. Everything it starts is stopped and deleted before
//! it exits (see `guest_agent_e2e::bench::Bench`).

use std::path::Path;
use std::time::{Duration, Instant};

use guest_agent_e2e::bench::{
    Bench, accounts, ca_rotation, console, failed, fleet, idle_sessions, login, nss, print_table,
    procfs, scale, service, timer, two_factor,
};

/// The supervisor of the measuring child.
const BENCH: Bench = Bench {
    name: "bench-report",
    worker_env: "BENCH_REPORT_WORKER",
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = timer::dispatch(&args).or_else(|| nss::dispatch(&args)) {
        std::process::exit(code);
    }
    let quick = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => false,
        ["--quick"] => true,
        _ => {
            eprintln!("usage: bench-report [--quick]");
            std::process::exit(2);
        }
    };
    BENCH.main(|record| worker(record, quick));
}

/// The commit the binaries were built from (`git describe`), if the source tree is here.
fn commit() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::process::Command::new("git")
        .args(["-C", dir, "describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn worker(record: &Path, quick: bool) -> Result<(), String> {
    let t0 = Instant::now();
    let load_before = procfs::load();
    let version = if quick { "quick" } else { "full" };
    eprintln!("bench-report ({version}): {load_before}");
    let library = guest_agent_e2e::bins::path("libnss_guestagent.so");

    eprintln!("bench-report: NSS lookups (module, glibc, files) ...");
    let (sizes, min_run): (&[usize], _) = if quick {
        (&[1_000, 10_000], Duration::from_millis(100))
    } else {
        (&[1_000, 10_000, 100_000], Duration::from_millis(300))
    };
    let nss = nss::run_in_subprocess(&library, sizes, min_run)?;

    eprintln!(
        "bench-report: READY with the service down, and an idle agent, in the background ..."
    );
    let ready = service::ready_when_down(record)?;
    let min_idle = Duration::from_secs(if quick { 65 } else { 180 });
    let idle = service::Idle::start(record, min_idle)?;
    let sessions = idle_sessions::IdleSessions::start(record, min_idle)?;

    eprintln!("bench-report: logins (OS Login VM, real sshd) ...");
    let login = login::run(
        record,
        if quick {
            login::Params::QUICK
        } else {
            login::Params::FULL
        },
    )?;
    eprintln!("bench-report: two-step verification logins ...");
    let two_factor = two_factor::run(
        record,
        if quick {
            two_factor::Params::QUICK
        } else {
            two_factor::Params::FULL
        },
    )?;
    eprintln!("bench-report: ssh logins with a stuck serial console and with none ...");
    let console = console::run(
        record,
        if quick {
            console::Params::QUICK
        } else {
            console::Params::FULL
        },
    )?;
    eprintln!("bench-report: CA rotation and the first certificate login ...");
    let rotation = ca_rotation::run(record)?;
    eprintln!("bench-report: 1,000 metadata users ...");
    let accounts = accounts::run(
        record,
        if quick {
            accounts::Params::QUICK
        } else {
            accounts::Params::FULL
        },
    )?;
    let sp = if quick {
        scale::Params::QUICK
    } else {
        scale::Params::FULL
    };
    eprintln!(
        "bench-report: {} OS Login users and {} concurrent logins ...",
        nss::thousands(sp.users),
        sp.load
    );
    let scale = scale::run(record, sp)?;
    eprintln!("bench-report: the same at 1,000 OS Login users ...");
    let scale_small = scale::run(record, scale::Params { users: 1_000, ..sp })?;
    let fp = if quick {
        fleet::Params::QUICK
    } else {
        fleet::Params::FULL
    };
    eprintln!(
        "bench-report: a fleet of {} agents recovering from a {} s metadata outage ...",
        nss::thousands(fp.agents),
        fp.outage.as_secs()
    );
    let fleet = fleet::run(record, fp)?;
    eprintln!("bench-report: ending the idle window ...");
    let ready = ready.join().map_err(|_| "the READY measurement panicked")?;
    let idle = idle.finish()?;
    let sessions = sessions.finish()?;

    let mut rows = nss::rows(&nss);
    rows.extend(login::rows_down(&login));
    rows.extend(login::rows(&login));
    rows.extend(two_factor::rows(&two_factor));
    rows.extend(console::rows(&console));
    rows.extend(ca_rotation::rows(&rotation));
    rows.extend(accounts::rows(&accounts));
    let service_rows = service::rows(&idle, &ready);
    let mut service_rows = service_rows.into_iter();
    rows.extend(service_rows.next()); // READY
    rows.extend(service_rows.next()); // requests per idle hour
    rows.extend(idle_sessions::rows(&sessions, idle.per_hour().0));
    rows.extend(service_rows); // idle RSS
    rows.push(accounts::rss_idle_row(&accounts));
    rows.extend(scale::compare_rows(&scale_small, &scale));
    rows.extend(scale::rows(&scale));
    rows.extend(accounts::detail_rows(&accounts));
    rows.extend(fleet::rows(&fleet));

    let took = t0.elapsed();
    print_table(
        &format!(
            "bench-report ({version}) of guest-agent {} ({}); {} at the start, {} at the end; \
             measured in {:.0} s",
            commit(),
            guest_agent_e2e::bins::agent().display(),
            load_before,
            procfs::load(),
            took.as_secs_f64()
        ),
        &rows,
    );
    println!();
    println!(
        "The machine may be shared: absolute figures move with its load (above); ratios are \
         within this run. Lookup and keys-command figures: see `nss-bench`, `login-bench`; \
         the parts are documented in tests/src/bench/."
    );
    for n in login::notes(&login)
        .iter()
        .chain(&accounts.notes)
        .chain(&fleet.notes())
    {
        println!("{n}");
    }
    println!(
        "READY: from the spawn of the agent's process to READY=1 on its NOTIFY_SOCKET, judged \
         on the figure rounded to 0.1 s. Idle requests: every metadata request counted over \
         the window; a periodic kind the window covers twice is scaled to an hour from its \
         count, a longer one is figured from its period (long poll 120 s, CA refresh 600 s, \
         directory sync 3600 s with as many requests as the sync at start, token at 2/3 of \
         3599 s)."
    );
    let judged = rows.iter().filter(|r| r.pass.is_some()).count();
    let missed = failed(&rows);
    println!();
    if missed.is_empty() {
        println!("goals: all {judged} met");
    } else {
        println!(
            "*** goals: {} of {judged} MISSED (a benchmark, not a test: the run still succeeds): {} ***",
            missed.len(),
            missed
                .iter()
                .map(|r| r.what.trim().to_owned())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}
