//! End-to-end test harness: the metadata emulator and the agent run as real processes inside
//! a network namespace of their own, where 169.254.169.254 is on the loopback device, so
//! nothing ever reaches the host's metadata address. Everything a test starts is killed by PID
//! and every namespace deleted when the test ends, passes, fails or panics (Drop).
//!
//! Tests that need root call [`require_root`] first; without root they print a loud SKIPPED
//! line and return.

pub mod accounts;
pub mod bench;
pub mod bins;
pub mod console;
pub mod emulator;
pub mod env;
pub mod kbdint;
pub mod netns;
pub mod notify;
pub mod oslogin;
pub mod packages;
pub mod process;
pub mod releases;
pub mod vm;

pub use env::{AgentOptions, TestEnv};

/// True when running as root. Otherwise prints a loud skip message naming the test.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("\n*** SKIPPED {test}: needs root (network namespaces); CI runs as root ***\n");
    false
}
