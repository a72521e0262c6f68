//! fleet-bench: the fleet part of `bench-report` alone (`guest_agent_e2e::bench::fleet` says
//! what is measured and how): 1,000 agents, each the daemon's own metadata watcher, recovering
//! from a metadata outage against one emulator.
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/fleet-bench [--quick]  # 120 s; 20 s
//! ```
//!
//! Needs root (a network namespace). Everything it starts is stopped and deleted before it
//! exits (see `guest_agent_e2e::bench::Bench`). `--agents N OUTAGE_MS OBSERVE_MS SOCKET` is the
//! agents' process itself, which `fleet::run` starts inside the namespace: it prints one
//! `FLEET {json}` line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use guest_agent::config::Config;
use guest_agent::mds::watcher;
use guest_agent_e2e::bench::{Bench, fleet, print_table};
use tokio::sync::{Notify, watch};

/// The supervisor of the measuring child.
const BENCH: Bench = Bench {
    name: "fleet-bench",
    worker_env: "FLEET_BENCH_WORKER",
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--agents") {
        std::process::exit(agents(&args[1..]));
    }
    let quick = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => false,
        ["--quick"] => true,
        _ => {
            eprintln!("usage: fleet-bench [--quick]");
            std::process::exit(2);
        }
    };
    BENCH.main(|record| {
        let p = if quick {
            fleet::Params::QUICK
        } else {
            fleet::Params::FULL
        };
        let r = fleet::run(record, p)?;
        print_table(
            &format!(
                "fleet-bench ({}): measured in {:.0} s",
                if quick { "quick" } else { "full" },
                r.took.as_secs_f64()
            ),
            &fleet::rows(&r),
        );
        println!();
        for n in r.notes() {
            println!("{n}");
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// The agents' process, in the namespace.

fn agents(args: &[String]) -> i32 {
    let parsed = (|| {
        let n: usize = args.first()?.parse().ok()?;
        let outage = Duration::from_millis(args.get(1)?.parse().ok()?);
        let observe = Duration::from_millis(args.get(2)?.parse().ok()?);
        let socket = PathBuf::from(args.get(3)?);
        Some((n, outage, observe, socket))
    })();
    let Some((n, outage, observe, socket)) = parsed else {
        eprintln!("usage: fleet-bench --agents N OUTAGE_MS OBSERVE_MS CONTROL_SOCKET");
        return 2;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet: tokio runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(simulate(n, outage, observe, socket)) {
        Ok(report) => {
            println!("FLEET {report}");
            0
        }
        Err(e) => {
            eprintln!("fleet: {e}");
            1
        }
    }
}

/// One simulated agent: what its watcher task was given (kept, so that the task runs on) and
/// its answer counter.
struct Agent {
    answers: Arc<AtomicU64>,
    _config: watch::Sender<Arc<Config>>,
    _snapshots: watcher::SnapshotReceiver,
    task: tokio::task::JoinHandle<()>,
}

/// A blocking control request, off the runtime's workers.
async fn control(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(), String> {
    let (socket, method, path) = (socket.to_owned(), method.to_owned(), path.to_owned());
    let body = body.map(str::to_owned);
    tokio::task::spawn_blocking(move || fleet::control(&socket, &method, &path, body.as_deref()))
        .await
        .map_err(|e| format!("control: {e}"))?
}

async fn simulate(
    n: usize,
    outage: Duration,
    observe: Duration,
    socket: PathBuf,
) -> Result<String, String> {
    let mut config = Config::default();
    config.metadata.base_url = "http://169.254.169.254".into();
    let config = Arc::new(config);
    let t0 = Instant::now();
    let agents: Vec<Agent> = (0..n)
        .map(|_| {
            let (config_tx, config_rx) = watch::channel(config.clone());
            let (tx, rx) = watch::channel(None);
            let answers = Arc::new(AtomicU64::new(0));
            let task = tokio::spawn(watcher::run(
                config_rx,
                tx,
                answers.clone(),
                Arc::new(Notify::new()),
            ));
            Agent {
                answers,
                _config: config_tx,
                _snapshots: rx,
                task,
            }
        })
        .collect();
    let count = |agents: &[Agent]| -> Vec<u64> {
        agents
            .iter()
            .map(|a| a.answers.load(Ordering::SeqCst))
            .collect()
    };
    // 1. Every agent has its first answer.
    loop {
        if count(&agents).iter().all(|&c| c >= 1) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let missing = count(&agents).iter().filter(|&&c| c == 0).count();
            return Err(format!(
                "{missing} agent(s) without a first answer after 120 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await; // all in their long polls
    // 2. The outage: every tree request fails; the change ends the long polls in flight.
    control(
        &socket,
        "POST",
        "/faults",
        Some(r#"{"path_prefix":"/computeMetadata/v1/","kind":"status","code":503}"#),
    )
    .await?;
    let outage_start = Instant::now();
    control(
        &socket,
        "PUT",
        "/attributes/instance/fleet-phase",
        Some("outage"),
    )
    .await?;
    // 3. The tree changes during the outage; then the faults are cleared.
    tokio::time::sleep_until((outage_start + outage - Duration::from_secs(1)).into()).await;
    control(
        &socket,
        "PUT",
        "/attributes/instance/fleet-phase",
        Some("recovered"),
    )
    .await?;
    tokio::time::sleep_until((outage_start + outage).into()).await;
    let before = count(&agents);
    let recovered = {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || {
            fleet::control(&socket, "DELETE", "/faults", None)?;
            let at = Instant::now();
            // 4. The marker, for the emulator's clock.
            fleet::send_marker()?;
            Ok::<_, String>(at)
        })
        .await
        .map_err(|e| format!("clear: {e}"))??
    };
    // 5. Who answers, and when.
    let mut first: Vec<Option<u64>> = vec![None; n];
    while recovered.elapsed() < observe {
        let now = count(&agents);
        let ms = recovered.elapsed().as_millis() as u64;
        for (i, f) in first.iter_mut().enumerate() {
            if f.is_none() && now[i] > before[i] {
                *f = Some(ms);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let alive = agents.iter().filter(|a| !a.task.is_finished()).count();
    let m = &config.metadata;
    Ok(serde_json::json!({
        "ready_ms": ready.as_millis() as u64,
        "first_ms": first.iter().flatten().collect::<Vec<_>>(),
        "alive": alive,
        "watch_timeout_secs": m.watch_timeout_secs,
        "backoff_min_ms": m.backoff_min_ms,
        "backoff_max_ms": m.backoff_max_ms,
    })
    .to_string())
}
