//! The `guest-agent` command: the daemon (`run`) and its helpers.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use guest_agent::config;
use guest_agent::daemon::{self, ConfigSource};

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
    /// now. sshd_config: `AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f`.
    AuthorizedKeys {
        user: String,
        /// sshd's %f (the offered key's fingerprint).
        fingerprint: Option<String>,
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

fn main() -> ExitCode {
    abort_on_panic();
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
                chain,
            );
        }
        Command::AuthorizedPrincipals { user, certificate } => {
            return guest_agent::commands::authorized_principals(&source, user, certificate);
        }
        // Asks the daemon only: a broken config file must not hide what the daemon knows.
        Command::Status { json } => return guest_agent::commands::status(*json),
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
