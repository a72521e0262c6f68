//! guest-agent: the daemon and command-line helpers that decide who may log in to a Linux VM
//! from what the cloud's metadata service says. See the README for the architecture.

pub mod config;
pub mod daemon;
pub mod host;
pub mod logging;
pub mod mds;
pub mod notify;
pub mod reconcile;
