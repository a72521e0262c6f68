//! The two commands sshd runs for every key and certificate a client offers
//! (`authorized-keys`, `authorized-principals`): their argument shapes, what a run prints,
//! and who is handed on to another AuthorizedKeysCommand. Shared by the `guest-agent` binary
//! and the small `guest-agent-sshd` helper (`helper/`), which must print exactly the same.

use std::time::Duration;

use crate::proto::Answer;

/// Everything a helper run does fits in this (sshd waits far longer, a person does not).
pub const HELPER_DEADLINE: Duration = Duration::from_millis(4500);

/// One line on stderr, which sshd logs: why an answer is empty, or what was handed on.
pub fn say(user: &str, why: &str) {
    eprintln!("guest-agent: {user}: {why}");
}

/// Prints `answer` as sshd wants it: the lines on stdout (keys, or the principal), the reason
/// for anything else on stderr. An empty answer is a refusal, not an error: exit 0 either way.
pub fn report(user: &str, answer: &Answer) {
    match answer {
        Answer::Ok(lines) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
            let _ = out.flush();
        }
        Answer::NotFound => say(user, "not an OS Login user (or OS Login is off)"),
        Answer::Denied(why) => say(user, &format!("refused: {why}")),
        Answer::Unavailable(why) => say(
            user,
            &format!("refused, metadata service unavailable: {why}"),
        ),
        Answer::Error(why) => say(user, &format!("error: {why}")),
    }
}

/// Whether a user the daemon (or the helper alone) answered `answer` for is handed on to the
/// other command: only those that are not OS Login users (local users, users the directory
/// does not know, everyone while OS Login is off). An OS Login user follows the OS Login
/// decision (refused, or the service unavailable: fail closed) and never gets its keys.
pub fn hand_on(answer: &Answer) -> bool {
    matches!(answer, Answer::NotFound)
}

/// sshd's `%f` as the daemon may use it: empty (no key, e.g. a certificate's principals run)
/// or anything but printable ASCII is no fingerprint.
pub fn clean_fingerprint(fingerprint: Option<&str>) -> Option<&str> {
    fingerprint.filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_graphic()))
}

/// The two commands sshd runs for every connection, parsed by hand when their arguments have
/// the shapes the agent writes into sshd_config (`[--config PATH] authorized-keys USER [FP
/// [TYPE KEY]] [--chain-user USER -- COMMAND...]`, `[--config PATH] authorized-principals USER
/// CERT`): building clap's whole command tree costs a fresh process about 0.1 ms, a tenth of
/// what a keys-command run costs here. Any other shape (a flag, `--help`, a missing argument)
/// goes to clap in the `guest-agent` binary (the `guest-agent-sshd` helper hands it on there).
#[derive(Debug, PartialEq, Eq)]
pub enum SshdCall<'a> {
    Keys {
        config: Option<&'a str>,
        user: &'a str,
        fingerprint: Option<&'a str>,
        /// sshd's `%t %k`.
        key: Option<(&'a str, &'a str)>,
        chain: Option<(&'a str, &'a [String])>,
    },
    Principals {
        config: Option<&'a str>,
        user: &'a str,
        cert: &'a str,
    },
}

pub fn sshd_call(args: &[String]) -> Option<SshdCall<'_>> {
    let (config, rest) = match args {
        [flag, path, rest @ ..] if flag == "--config" => (Some(path.as_str()), rest),
        rest => (None, rest),
    };
    let plain = |a: &String| !a.starts_with('-');
    match rest {
        [cmd, user, rest @ ..] if cmd == "authorized-keys" && plain(user) => {
            // The chain (`--chain-user USER -- COMMAND...`) comes last.
            let (own, chain) = match rest
                .iter()
                .position(|a| a == "--chain-user")
                .map(|i| rest.split_at(i))
            {
                None => (rest, None),
                Some((own, [_, chain_user, sep, argv @ ..]))
                    if plain(chain_user) && sep == "--" && !argv.is_empty() =>
                {
                    (own, Some((chain_user.as_str(), argv)))
                }
                Some(_) => return None,
            };
            let (fingerprint, key) = match own {
                [] if chain.is_none() => (None, None),
                [fp] if plain(fp) => (Some(fp.as_str()), None),
                [fp, t, k] if plain(fp) && plain(t) && plain(k) => {
                    (Some(fp.as_str()), Some((t.as_str(), k.as_str())))
                }
                _ => return None,
            };
            Some(SshdCall::Keys {
                config,
                user,
                fingerprint,
                key,
                chain,
            })
        }
        [cmd, user, cert] if cmd == "authorized-principals" && plain(user) && plain(cert) => {
            Some(SshdCall::Principals { config, user, cert })
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn only_users_that_are_not_os_login_users_are_handed_on() {
        assert!(hand_on(&Answer::NotFound));
        for a in [
            Answer::Ok(vec!["ssh-ed25519 AAAA".into()]),
            Answer::Denied("no login role".into()),
            Answer::Unavailable("timeout".into()),
            Answer::Error("x".into()),
        ] {
            assert!(!hand_on(&a), "{a:?}");
        }
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_shapes_the_agent_writes_into_sshd_config_take_the_fast_path() {
        let a = args(&["authorized-keys", "alice", "SHA256:abc"]);
        assert_eq!(
            sshd_call(&a),
            Some(SshdCall::Keys {
                config: None,
                user: "alice",
                fingerprint: Some("SHA256:abc"),
                key: None,
                chain: None
            })
        );
        // The directive written since certificates are handed over too (`%u %f %t %k`).
        let a = args(&[
            "authorized-keys",
            "alice",
            "SHA256:abc",
            "ssh-ed25519-cert-v01@openssh.com",
            "AAAAcert",
        ]);
        assert_eq!(
            sshd_call(&a),
            Some(SshdCall::Keys {
                config: None,
                user: "alice",
                fingerprint: Some("SHA256:abc"),
                key: Some(("ssh-ed25519-cert-v01@openssh.com", "AAAAcert")),
                chain: None
            })
        );
        let a = args(&[
            "authorized-keys",
            "bob",
            "SHA256:x",
            "ssh-ed25519",
            "AAAAkey",
            "--chain-user",
            "root",
            "--",
            "/usr/bin/userdbctl",
            "ssh-authorized-keys",
            "bob",
        ]);
        let Some(SshdCall::Keys {
            key: Some(("ssh-ed25519", "AAAAkey")),
            chain: Some(("root", argv)),
            ..
        }) = sshd_call(&a)
        else {
            panic!("{:?}", sshd_call(&a));
        };
        assert_eq!(argv.len(), 3);
        let a = args(&["--config", "/etc/x.toml", "authorized-keys", "bob"]);
        assert_eq!(
            sshd_call(&a),
            Some(SshdCall::Keys {
                config: Some("/etc/x.toml"),
                user: "bob",
                fingerprint: None,
                key: None,
                chain: None
            })
        );
        let a = args(&[
            "authorized-keys",
            "bob",
            "SHA256:x",
            "--chain-user",
            "root",
            "--",
            "/usr/bin/userdbctl",
            "ssh-authorized-keys",
            "bob",
        ]);
        let Some(SshdCall::Keys {
            chain: Some((user, argv)),
            ..
        }) = sshd_call(&a)
        else {
            panic!("{:?}", sshd_call(&a));
        };
        assert_eq!((user, argv.len()), ("root", 3));
        let a = args(&["authorized-principals", "carol", "AAAAcert"]);
        assert_eq!(
            sshd_call(&a),
            Some(SshdCall::Principals {
                config: None,
                user: "carol",
                cert: "AAAAcert"
            })
        );
    }

    #[test]
    fn anything_else_goes_to_clap() {
        for a in [
            &["authorized-keys"][..],
            &["authorized-keys", "--help"],
            &["authorized-keys", "alice", "fp", "--chain-user", "root"],
            &[
                "authorized-keys",
                "alice",
                "fp",
                "--chain-user",
                "root",
                "--",
            ],
            &["authorized-keys", "alice", "fp", "extra"],
            &["authorized-keys", "alice", "fp", "type", "key", "extra"],
            &[
                "authorized-keys",
                "alice",
                "--chain-user",
                "root",
                "--",
                "x",
            ],
            &["authorized-principals", "carol"],
            &["--config"],
            &["doctor", "alice"],
            &["run"],
        ] {
            assert_eq!(sshd_call(&args(a)), None, "{a:?}");
        }
    }
}
