//! What the guest-agent daemon, its command-line helpers and the NSS module share.
//!
//! This crate does no I/O beyond reading a file, allocates little, and never panics, because
//! parts of it run inside every process that looks a user up (the NSS module).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]

pub mod cache;
pub mod client;
pub mod names;
pub mod proto;
pub mod records;
pub mod sshd;
