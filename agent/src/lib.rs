//! guest-agent: the daemon and command-line helpers that decide who may log in to a Linux VM
//! from what the cloud's metadata service says. See the README for the architecture.

pub mod accounts;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod events;
pub mod exit;
pub mod host;
pub mod logging;
pub mod mds;
pub mod notify;
pub mod oslogin;
pub mod reconcile;
pub mod socket;
pub mod status;
pub mod takeover;
pub mod task;
pub mod tokens;

/// Set in the daemon's environment: the NSS module then answers from its cache only and never
/// asks the daemon's socket (no recursion when the daemon itself looks a user up).
pub const NSS_NO_SOCKET_ENV: &str = "GUEST_AGENT_NSS_NO_SOCKET";
