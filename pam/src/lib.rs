//! PAM module for OS Login two-step verification: `pam_guestagent.so` (the decisions first;
//! the C shell follows).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)]

pub mod args;
pub mod flow;

pub mod client;
