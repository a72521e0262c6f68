//! console-bench: ssh logins (an OS Login user allowed, one refused) with a serial console
//! nobody reads beside no console (`guest_agent_e2e::bench::console` says what is measured and
//! how).
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/console-bench [--quick]
//! ```
//!
//! Needs root (network and mount namespaces, a real sshd). It finds `guest-agent`,
//! `mds-emulator` and `libnss_guestagent.so` next to itself (`target/<profile>/`). It takes
//! under a minute (40 logins per user and console; `--quick`: 20, as `bench-report --quick`).
//! Everything it starts is stopped and deleted before it exits (see
//! `guest_agent_e2e::bench::Bench`).

use std::path::Path;

use guest_agent_e2e::bench::{Bench, console, print_table, timer};

/// The supervisor of the measuring child.
const BENCH: Bench = Bench {
    name: "console-bench",
    worker_env: "CONSOLE_BENCH_WORKER",
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = timer::dispatch(&args) {
        std::process::exit(code);
    }
    let params = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => console::Params::FULL,
        ["--quick"] => console::Params::QUICK,
        _ => {
            eprintln!("usage: console-bench [--quick]");
            std::process::exit(2);
        }
    };
    BENCH.main(|record| worker(record, params));
}

fn worker(record: &Path, params: console::Params) -> Result<(), String> {
    eprintln!("console-bench: starting two VMs (no console, a stuck one) ...");
    let r = console::run(record, params)?;
    print_table(
        &format!(
            "console-bench: guest-agent ({}) in two OS Login VMs with a real sshd; measured in \
             {:.0} s",
            guest_agent_e2e::bins::agent().display(),
            r.took.as_secs_f64()
        ),
        &console::rows(&r),
    );
    Ok(())
}
