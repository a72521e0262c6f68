//! login-bench: what an OS Login SSH login costs with guest-agent, end to end, beside the
//! incumbent's figures (Google's guest-agent / guest-oslogin) and our goals, and what two-step
//! verification adds (`guest_agent_e2e::bench::login` and `::two_factor` say what is measured
//! and how).
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/login-bench
//! ```
//!
//! Needs root (network and mount namespaces, a real sshd). It finds `guest-agent`,
//! `mds-emulator` and `libnss_guestagent.so` next to itself (`target/<profile>/`). It takes
//! about a minute. Everything it starts is stopped and deleted before it exits: the harness's
//! Drop impls do that, and because release builds abort on panic (no Drop), the measuring runs
//! in a child process while this one, a child subreaper, kills by PID whatever that child left
//! behind and deletes its network namespaces and temporary directory.

use std::path::Path;

use guest_agent_e2e::bench::{Bench, login, print_table, timer, two_factor};

/// The supervisor of the measuring child.
const BENCH: Bench = Bench {
    name: "login-bench",
    worker_env: "LOGIN_BENCH_WORKER",
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = timer::dispatch(&args) {
        std::process::exit(code);
    }
    BENCH.main(worker);
}

fn worker(record: &Path) -> Result<(), String> {
    let agent_bin = guest_agent_e2e::bins::agent();
    eprintln!("login-bench: starting the VM (emulator, agent, sshd) ...");
    let r = login::run(record, login::Params::FULL)?;
    eprintln!("login-bench: two-step verification logins ...");
    let tf = two_factor::run(record, two_factor::Params::FULL)?;
    let mut rows = login::rows(&r);
    rows.extend(two_factor::rows(&tf));
    rows.extend(login::rows_down(&r));
    print_table(
        &format!(
            "login-bench: guest-agent ({}) in an OS Login VM with a real sshd; measured in {:.0} s",
            agent_bin.display(),
            r.took.as_secs_f64()
        ),
        &rows,
    );
    println!();
    for n in login::notes(&r) {
        println!("{n}");
    }
    Ok(())
}
