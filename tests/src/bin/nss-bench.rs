//! nss-bench: what a user lookup costs with the guest-agent NSS module, beside glibc's own
//! `files` module holding the same users, for 100, 10,000 and 100,000 users
//! (`guest_agent_e2e::bench::nss` says what is measured and how).
//!
//! ```text
//! cargo build --release -p guest-agent-nss -p guest-agent-e2e && sudo target/release/nss-bench
//! sudo target/release/nss-bench path/to/libnss_guestagent.so     # another build of the module
//! ```
//!
//! Needs root. Everything happens in a private mount namespace of its own.

use std::time::Duration;

use guest_agent_e2e::bench::nss;

fn main() {
    let arg = std::env::args().nth(1);
    let result = nss::library(arg.as_deref())
        .and_then(|lib| nss::run(&lib, &[1_000, 10_000, 100_000], Duration::from_millis(300)));
    match result {
        Ok(r) => nss::print(&r),
        Err(e) => {
            eprintln!("nss-bench: {e}");
            std::process::exit(1);
        }
    }
}
