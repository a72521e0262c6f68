//! The `guest-agent` command: the daemon (`run`) and its helpers.
//!
//! No Rust `main`: the C `main` below is the entry point (`no_main`), so std's start-up code
//! does not run. sshd runs this binary for every key a client offers, each time a new process
//! (through `guest-agent-sshd`, which becomes this binary for what it does not answer itself,
//! or directly where sshd_config names it), and std's start-up (reading `/proc/self/maps` for the main thread's stack guard, the
//! stack-overflow signal handler and its alternate stack, checking the standard descriptors)
//! cost about 0.13 ms of each run here (issue 15: an empty Rust program 0.97 / 0.84 ms with /
//! without it, a C one 0.80 ms). What of it the agent needs is done in [`main`]
//! (`guest_agent_wire::process::start_up`): SIGPIPE ignored (std's default, which the daemon's
//! socket writes rely on) and descriptors 0-2 opened on /dev/null when closed. What is given up: a stack overflow ends the process with
//! SIGSEGV instead of a "stack overflow" message (it ends the process either way), and the
//! main thread has no name in panic messages. `std::env::args` still works (glibc hands argv
//! to std's initializer).
#![cfg_attr(not(test), no_main)]
// The test harness brings its own `main`; what only the entry point uses is unused there.
#![cfg_attr(test, allow(dead_code))]

use guest_agent::exit::ExitCode;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use guest_agent::config;
use guest_agent::daemon::{self, ConfigSource};
use guest_agent_wire::sshd::{SshdCall, sshd_call};

/// The C library's `pow`, defined here from the `libm` crate (rust-lang's port of musl's libm)
/// so that the binary needs no `libm.so.6`: tokio's scheduler statistics (an `f64::powf`) are
/// the only user of that library, and loading one more shared library is a large part of what
/// exec costs each AuthorizedKeysCommand run (issue 15; see `build.rs` for the other one).
/// With `--as-needed` (rustc's default) `-lm` is then not recorded as needed. Not exported
/// (an executable's symbols are not, unless a library it links needs them), so no library
/// loaded into the process binds to it.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// sysexits' EX_CONFIG: the unit file does not restart the daemon on it (a restart cannot fix
/// a broken configuration file).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "guest-agent",
    version,
    about = "Guest agent for Linux VMs: OS Login, metadata SSH keys and service-account tokens"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (what the systemd unit starts).
    Run,
    /// Check the configuration file and print the effective configuration.
    CheckConfig,
    /// sshd's AuthorizedKeysCommand: print USER's OS Login keys if the login role is granted
    /// now. sshd_config: `AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f %t %k`
    /// (the older `%u %f` works too).
    AuthorizedKeys {
        user: String,
        /// sshd's %f (the offered key's fingerprint).
        fingerprint: Option<String>,
        /// sshd's %t (the offered key's type): a certificate whose CA the trusted-CA file does
        /// not hold yet makes the daemon fetch the CA keys at once.
        #[arg(requires = "key")]
        key_type: Option<String>,
        /// sshd's %k (the offered key, base64).
        key: Option<String>,
        /// Another AuthorizedKeysCommand's AuthorizedKeysCommandUser: users that are not OS
        /// Login users are handed on to the command after `--`, run as this user.
        #[arg(long, value_name = "USER", requires = "chain")]
        chain_user: Option<String>,
        /// The other AuthorizedKeysCommand, its tokens expanded by sshd.
        #[arg(last = true, value_name = "COMMAND")]
        chain: Vec<String>,
    },
    /// sshd's AuthorizedPrincipalsCommand: print USER as the principal if the certificate
    /// carries an OS Login id and the login role is granted now. sshd_config (before the keys
    /// command): `AuthorizedPrincipalsCommand /usr/bin/guest-agent authorized-principals %u %k`.
    AuthorizedPrincipals {
        user: String,
        /// sshd's %k (the certificate, base64).
        certificate: String,
    },
    /// Print a valid service-account token (root and members of tokens.group).
    Token {
        /// The service account.
        #[arg(long, default_value = "default")]
        account: String,
        /// raw (the token), json ({"access_token","expires_in","token_type"}) or header
        /// ("Authorization: Bearer ...").
        #[arg(long, default_value = "raw")]
        format: String,
    },
    /// Print the service account's email and scopes and the instance's id, name and zone.
    Identity {
        #[arg(long)]
        json: bool,
    },
    /// Take over from Google's guest agent (or Yandex's fork): adopt its users, move its sudo
    /// members to our group, and remove its sshd blocks, nsswitch entries, PAM lines, sudoers
    /// files, caches and units once ours are in effect. Report: /var/lib/guest-agent/takeover.json.
    Takeover {
        /// The agent to take over from.
        #[arg(long, default_value = "google")]
        from: String,
        /// Print the plan; change nothing.
        #[arg(long, conflicts_with = "undo")]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Put back every file the takeover changed, from what its report saved.
        #[arg(long)]
        undo: bool,
    },
    /// Explain why a login fails and what to do: metadata, OS Login, sshd, NSS, the user's
    /// roles, keys and files, the CA file, a certificate, the daemon. Exit 0 when nothing
    /// failed, 1 when a check failed, 78 for a bad config file. Run it as root.
    Doctor {
        /// The user who cannot log in.
        user: Option<String>,
        /// An OpenSSH user certificate (the KEY-cert.pub file) to check.
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
        /// Machine-readable output: {"ok", "checks": [{"id", "status", "summary", "fix", "details"}]}.
        #[arg(long)]
        json: bool,
    },
    /// (Internal) One PAM account transaction of SERVICE for root, through the system's
    /// libpam: prints its result code. The daemon runs it before and after adding its PAM
    /// lines (two-step verification) and keeps them only when the result is the same.
    #[command(hide = true)]
    PamProbe { service: String },
    /// What the daemon knows now: the metadata service, OS Login, users, the last login
    /// decisions, the CA file, tokens, the console (users other than root: only their own
    /// login decisions). Exit 1 when the daemon does not answer.
    Status {
        /// Machine-readable output (one JSON object; shape in the README).
        #[arg(long)]
        json: bool,
    },
}

/// A panic anywhere ends the process, as `panic = "abort"` did before the release profile had
/// to unwind for the NSS module (Cargo.toml): the daemon restarts from its files
/// (`Restart=always`) rather than running on without the task that panicked, and a helper
/// that panics is a failed helper (sshd: no keys). The default hook prints the message first.
fn abort_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        std::process::abort();
    }));
}

fn sshd_fast_path(args: &[String]) -> Option<ExitCode> {
    let source = |config: Option<&str>| ConfigSource {
        path: config.map_or_else(|| config::DEFAULT_PATH.into(), PathBuf::from),
        explicit: config.is_some(),
    };
    Some(match sshd_call(args)? {
        SshdCall::Keys {
            config,
            user,
            fingerprint,
            key,
            chain,
        } => guest_agent::commands::authorized_keys(
            &source(config),
            user,
            fingerprint,
            key,
            chain.map(|(u, argv)| guest_agent::commands::Chained { user: u, argv }),
        ),
        SshdCall::Principals { config, user, cert } => {
            guest_agent::commands::authorized_principals(&source(config), user, cert)
        }
    })
}

/// The process's entry point (see the module doc): what std's start-up did that the agent
/// needs, then [`run_main`], then [`std::process::exit`] (which flushes stdout, as returning
/// from a Rust `main` does).
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    guest_agent_wire::process::start_up();
    std::process::exit(i32::from(run_main().code()))
}

fn run_main() -> ExitCode {
    abort_on_panic();
    // Arguments that are not UTF-8 go to clap (which refuses them with a message).
    if let Ok(args) = std::env::args_os()
        .skip(1)
        .map(std::ffi::OsString::into_string)
        .collect::<Result<Vec<String>, _>>()
        && let Some(code) = sshd_fast_path(&args)
    {
        return code;
    }
    let cli = Cli::parse();
    let source = ConfigSource {
        path: cli
            .config
            .clone()
            .unwrap_or_else(|| config::DEFAULT_PATH.into()),
        explicit: cli.config.is_some(),
    };
    // The helpers sshd runs ask the daemon and read the configuration only when they must
    // decide alone (daemon down): a broken file then never costs a login the daemon can serve.
    match &cli.command {
        Command::AuthorizedKeys {
            user,
            fingerprint,
            key_type,
            key,
            chain_user,
            chain,
        } => {
            let chain = chain_user
                .as_deref()
                .map(|u| guest_agent::commands::Chained {
                    user: u,
                    argv: chain,
                });
            return guest_agent::commands::authorized_keys(
                &source,
                user,
                fingerprint.as_deref(),
                key_type.as_deref().zip(key.as_deref()),
                chain,
            );
        }
        Command::AuthorizedPrincipals { user, certificate } => {
            return guest_agent::commands::authorized_principals(&source, user, certificate);
        }
        // Asks the daemon only: a broken config file must not hide what the daemon knows.
        Command::Status { json } => return guest_agent::commands::status(*json),
        Command::PamProbe { service } => return guest_agent::host::pam::probe_main(service),
        _ => {}
    }
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("guest-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            println!("{config:#?}");
            ExitCode::SUCCESS
        }
        Command::AuthorizedKeys { .. }
        | Command::AuthorizedPrincipals { .. }
        | Command::PamProbe { .. }
        | Command::Status { .. } => ExitCode::SUCCESS, // handled above
        Command::Token { account, format } => {
            guest_agent::commands::token(&config, &account, &format)
        }
        Command::Identity { json } => guest_agent::commands::identity(&config, json),
        Command::Doctor { user, cert, json } => {
            guest_agent::doctor::run(&config, &guest_agent::doctor::Options { user, cert, json })
        }
        Command::Takeover {
            from,
            dry_run,
            json,
            undo,
        } => {
            guest_agent::logging::init(&config.daemon.log_level);
            guest_agent::takeover::command::run(&config, &from, dry_run, json, undo)
        }
        Command::Run => {
            // The daemon must never ask itself through the NSS module (it answers the socket
            // the module would ask). Set before any thread exists.
            // SAFETY: single-threaded at this point; nothing reads the environment concurrently.
            unsafe { std::env::set_var(guest_agent::NSS_NO_SOCKET_ENV, "1") };
            guest_agent::logging::init(&config.daemon.log_level);
            match daemon::run(source, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "guest-agent failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pow;

    /// The `pow` that stands in for libm's (tokio's scheduler statistics raise a number in
    /// (0, 1) to a count of polls).
    #[test]
    fn pow_is_the_c_librarys() {
        assert_eq!(pow(2.0, 10.0), 1024.0);
        assert_eq!(pow(0.5, 0.0), 1.0);
        assert!((pow(0.9, 3.0) - 0.729).abs() < 1e-12);
        assert!((pow(0.8, 2.5) - 0.572_433_402_239_946_2).abs() < 1e-15);
        assert!(pow(-1.0, 0.5).is_nan());
    }
}
