//! `guest-agent doctor [USER] [--cert FILE] [--json]`: why a login fails and what to do.
//!
//! Three steps, each its own module: [`facts`] gathers everything once, with a deadline on
//! every request and subprocess (3 s per metadata request and nothing more asked once the tree
//! failed, 5 s per `sshd` run, 2 s for the daemon); [`checks`] decides, purely, one
//! [`Check`](checks::Check) per concern (with the analyses in [`sshd_scan`], [`perms`] and
//! [`decide`]); [`report`] renders text or JSON. Nothing is written and nothing counts as a
//! login: roles are asked straight from the metadata service, the daemon is asked a lookup
//! that never leaves it.

pub mod checks;
pub mod decide;
pub mod facts;
pub mod perms;
pub mod report;
pub mod sshd_scan;

use crate::exit::ExitCode;
use std::path::PathBuf;

use crate::config::Config;

/// What to diagnose.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub user: Option<String>,
    pub cert: Option<PathBuf>,
    pub json: bool,
}

/// Runs every check and prints the report: exit 0 when nothing failed, 1 otherwise.
pub fn run(config: &Config, options: &Options) -> ExitCode {
    let facts = facts::gather(config, options.user.as_deref(), options.cert.as_deref());
    let checks = checks::all(&facts, config);
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&checks)).unwrap_or_default()
        );
    } else {
        print!("{}", report::text(&checks, options.user.as_deref()));
    }
    if report::passed(&checks) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
