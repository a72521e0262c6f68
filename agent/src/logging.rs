//! Logging with `tracing`: to the journal when systemd connected our stderr to it, else
//! human-readable lines on stderr. `RUST_LOG` wins over the configured level.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;

use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, fmt};

/// True when stderr is the journal stream systemd announced in `JOURNAL_STREAM` (`dev:inode`);
/// a leftover variable inherited by a child whose stderr goes elsewhere does not count.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        let journald = journald.with_syslog_identifier("guest-agent".into());
        tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .init();
        return;
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .init();
}
