//! What the guest-agent daemon, its command-line helpers and the NSS module share.
//!
//! It allocates little and never panics, because parts of it run inside every process that
//! looks a user up (the NSS module: names, records, the cache file, the protocol). The socket
//! client (`client`), the sshd commands' shapes and output (`sshd`) and the start-up of the
//! `no_main` programs (`process`) are for the agent's own programs, `guest-agent` and
//! `guest-agent-sshd`; the NSS module has its own bounded client.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]

pub mod cache;
pub mod client;
pub mod names;
pub mod process;
pub mod proto;
pub mod records;
pub mod sshd;
