//! Host integration: files, sshd, nsswitch, sudoers, homes.
//!
//! Each module separates a pure decision (render, plan, edit text) from a small apply step
//! that writes through [`files`] (atomic, never partial) and checks the result with the real
//! tool (`sshd -t`, `visudo -c`). Every function takes its paths as arguments; the `Default`
//! of each paths struct gives the real system paths, so tests never touch the host's /etc.
//! All of it is blocking: async callers use `spawn_blocking`.

pub mod accountdb;
pub mod as_user;
pub mod chained;
pub mod cloud_init;
pub mod command;
pub mod console;
pub mod files;
pub mod home;
pub mod nsswitch;
pub mod pam;
pub mod passwd;
pub mod procs;
pub mod service;
pub mod sshd;
pub mod state_file;
pub mod sudoers;

pub use command::CommandError;
pub use files::{
    DirFd, FileError, Owner, Staged, read_optional, remove_if_exists, stage_at, write_atomic,
    write_atomic_at,
};
pub use home::{HomeError, HomeOutcome, HomePaths};
pub use nsswitch::{NsswitchError, NsswitchPaths};
pub use service::{ReloadTarget, Reloaded, ServiceError};
pub use sshd::apply::{SshdPaths, SshdReport};
pub use sshd::{Layout, SshdError, SshdSettings};
pub use sudoers::{Grantee, SudoersError, SudoersPaths};
