//! accounts-bench: what metadata `ssh-keys` users cost with guest-agent at scale (1,000
//! users), end to end, beside the incumbent's figures and our goals
//! (`guest_agent_e2e::bench::accounts` says what is measured and how).
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/accounts-bench
//! ```
//!
//! Needs root (network and mount namespaces, a real sshd). It finds `guest-agent`,
//! `mds-emulator` and `libnss_guestagent.so` next to itself (`target/<profile>/`). It takes
//! well under a minute. Everything it starts is stopped and deleted before it exits: the
//! harness's Drop impls do that, and because release builds abort on panic (no Drop), the
//! measuring runs in a child process while this one, a child subreaper, kills by PID whatever
//! that child left behind and deletes its network namespaces and temporary directory.

use std::path::Path;

use guest_agent_e2e::bench::{Bench, accounts, print_table};

/// The supervisor of the measuring child.
const BENCH: Bench = Bench {
    name: "accounts-bench",
    worker_env: "ACCOUNTS_BENCH_WORKER",
};

fn main() {
    BENCH.main(worker);
}

fn worker(record: &Path) -> Result<(), String> {
    let agent_bin = guest_agent_e2e::bins::agent();
    eprintln!(
        "accounts-bench: starting the VM (emulator, sshd) with {} users in ssh-keys ...",
        accounts::USERS
    );
    let r = accounts::run(record, accounts::Params::FULL)?;
    print_table(
        &format!(
            "accounts-bench: guest-agent ({}) with {} metadata ssh-keys users and a real sshd; \
             measured in {:.0} s",
            agent_bin.display(),
            accounts::USERS,
            r.took.as_secs_f64()
        ),
        &accounts::all_rows(&r),
    );
    println!();
    for n in &r.notes {
        println!("{n}");
    }
    Ok(())
}
