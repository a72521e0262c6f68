//! The helpers sshd runs. They print what sshd needs on stdout, the reason for an empty
//! answer on stderr (sshd logs it), and exit 0: an empty answer is a refusal, not an error.
//! They ask the daemon; when it is not running they ask the metadata service themselves
//! (profile and live authorization, same deadline, fail closed, no side effects), and decide
//! with the daemon's own rules (`oslogin::decision`: local accounts win, id floors, reserved
//! names, homes): a directory profile named `root` or `debian` logs in as nobody, daemon or not.

use crate::exit::ExitCode;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guest_agent_wire::proto::{Answer, OfferedCert, Request, SOCKET_PATH};

use crate::config::Config;
use crate::daemon::ConfigSource;
use crate::mds::{ClientSettings, GceClient, query_escape};
use crate::oslogin::authorize::ask;
use crate::oslogin::authorize::{Decision, Policy};
use crate::oslogin::decision::{self, Rules, Verdict};
use crate::oslogin::directory::LocalAccounts;
use crate::oslogin::profile::{OsUser, parse_single_user};
use guest_agent_wire::client::{self, ClientError};
pub use guest_agent_wire::sshd::HELPER_DEADLINE;
use guest_agent_wire::sshd::{hand_on, report, say};

/// Another AuthorizedKeysCommand the keys helper hands other users on to (sshd config:
/// `... authorized-keys %u %f %t %k --chain-user USER -- COMMAND ARGS`, see `host::sshd::rival`).
pub struct Chained<'a> {
    /// Its AuthorizedKeysCommandUser.
    pub user: &'a str,
    /// Program and arguments, tokens expanded by sshd.
    pub argv: &'a [String],
}

/// What a helper asks for.
enum Question<'a> {
    Keys {
        fingerprint: Option<&'a str>,
        certificate: Option<OfferedCert>,
    },
    Principals {
        cert: &'a str,
    },
}

/// `guest-agent authorized-keys USER [FINGERPRINT [TYPE KEY]]`
/// (sshd: `AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f %t %k %t %k`; a
/// configuration written before `%t %k` were added passes `%u %f` only). `key` (type, base64)
/// matters only for a certificate: sshd runs this command with one whose CA its
/// TrustedUserCAKeys does not hold, and the daemon then fetches the CA keys at once.
pub fn authorized_keys(
    config: &ConfigSource,
    user: &str,
    fingerprint: Option<&str>,
    key: Option<(&str, &str)>,
    chain: Option<Chained>,
) -> ExitCode {
    let fingerprint = guest_agent_wire::sshd::clean_fingerprint(fingerprint);
    let certificate = key.and_then(|(t, k)| OfferedCert::from_tokens(t, k));
    let answer = run(
        config,
        user,
        Question::Keys {
            fingerprint,
            certificate,
        },
    );
    if let Some(chain) = chain
        && answer.as_ref().is_none_or(hand_on)
    {
        pass_on(user, &chain);
    }
    ExitCode::SUCCESS
}

/// Runs the other command and prints what it printed (nothing when it fails).
fn pass_on(user: &str, chain: &Chained) {
    let mut argv = chain.argv.to_vec();
    // sshd's rule: a command without arguments gets the user name.
    if argv.len() == 1 {
        argv.push(user.to_owned());
    }
    let program = argv.first().cloned().unwrap_or_default();
    match crate::host::chained::run_as(&argv, chain.user, crate::host::chained::DEADLINE) {
        Ok(out) => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&out);
            let _ = stdout.flush();
            say(
                user,
                &format!(
                    "handed on to {program} (as {}): {} line(s)",
                    chain.user,
                    out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count()
                ),
            );
        }
        Err(e) => say(user, &format!("handed on, no keys: {e}")),
    }
}

/// `guest-agent authorized-principals USER CERT`
/// (sshd: `AuthorizedPrincipalsCommand /usr/bin/guest-agent authorized-principals %u %k`).
pub fn authorized_principals(config: &ConfigSource, user: &str, cert: &str) -> ExitCode {
    run(config, user, Question::Principals { cert });
    ExitCode::SUCCESS
}

/// Asks and prints the answer; the answer (`None`: the name is no OS Login name at all).
fn run(config: &ConfigSource, user: &str, question: Question) -> Option<Answer> {
    let start = Instant::now();
    if !guest_agent_wire::names::is_valid_name(user) {
        say(user, "not a valid user name");
        return None;
    }
    let request = match &question {
        Question::Keys {
            fingerprint,
            certificate,
        } => Request::AuthorizedKeys {
            user: user.to_owned(),
            fingerprint: fingerprint.map(str::to_owned),
            certificate: certificate.clone(),
        },
        Question::Principals { cert } => Request::AuthorizedPrincipals {
            user: user.to_owned(),
            cert: cert.to_string(),
        },
    };
    // Without a decision from the daemon (down, dropped the question, or of another protocol
    // version: a package upgrade between its unpack and the daemon's restart), decide alone.
    let alone = |why: String| {
        say(
            user,
            &format!("{why}; asking the metadata service directly"),
        );
        match config.load() {
            Ok(config) => direct(
                &config,
                user,
                &question,
                HELPER_DEADLINE.saturating_sub(start.elapsed()),
            ),
            Err(e) => Answer::Error(format!("cannot decide without the daemon: {e}")),
        }
    };
    let answer = match client::ask(Path::new(SOCKET_PATH), &request, HELPER_DEADLINE) {
        Ok(Answer::Error(why)) if guest_agent_wire::proto::daemon_speaks(&why).is_some() => {
            alone(format!("the daemon answered: {why}"))
        }
        Ok(a) => a,
        Err(e @ (ClientError::NoDaemon(_) | ClientError::Dropped(_))) => alone(e.to_string()),
        Err(e) => Answer::Unavailable(e.to_string()),
    };
    report(user, &answer);
    Some(answer)
}

/// The decision without the daemon, within `budget`. The local accounts come from the files
/// (unreadable: nothing is admitted, as in the daemon with no good view).
fn direct(config: &Config, user: &str, question: &Question, budget: Duration) -> Answer {
    let local = LocalAccounts::read(Path::new("/etc/passwd"), Path::new("/etc/group"))
        .unwrap_or_else(|e| {
            say(user, &format!("cannot read the local accounts: {e}"));
            LocalAccounts {
                stale: true,
                ..Default::default()
            }
        });
    let rules = Rules::from_config(config);
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Answer::Error("cannot start a runtime".into());
    };
    let Ok(settings) = ClientSettings::from_config(&config.metadata) else {
        return Answer::Error("bad metadata.base_url".into());
    };
    let client = GceClient::new(settings).with_timeout(budget / 2);
    let floor = config.oslogin.min_id;
    runtime.block_on(async {
        let work = async {
            // For a certificate, what it must carry is checked before asking anything.
            let cert_id = match question {
                Question::Keys { .. } => None,
                Question::Principals { cert } => match crate::oslogin::certificate::parse(cert) {
                    Ok(info) => {
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0);
                        match decision::certificate_id(&info, user, now) {
                            Ok(id) => Some(id.to_owned()),
                            Err(why) => return Answer::Denied(why.into()),
                        }
                    }
                    Err(why) => return Answer::Denied(format!("certificate unreadable: {why}")),
                },
            };
            let path = format!("oslogin/users?username={}", query_escape(user));
            let v = match client.get_json::<serde_json::Value>(&path).await {
                Ok(v) => v,
                Err(e) if e.is_not_found() => return Answer::NotFound,
                Err(e) => return Answer::Unavailable(e.to_string()),
            };
            let now = crate::oslogin::service::now_usec();
            let profile: OsUser = match parse_single_user(&v, floor, now) {
                Ok(p) if p.username == user => p,
                _ => return Answer::NotFound,
            };
            let profile = std::sync::Arc::new(profile);
            if let Err(why) = decision::admit_user(&profile, &local, &rules, false, false) {
                say(user, &format!("not served: {why}"));
                return Answer::NotFound;
            }
            let login: Decision =
                ask(&client, &profile.email, Policy::Login, cert_id.as_deref()).await;
            // No grace here: the helper keeps no record of earlier decisions.
            match decision::login_verdict(&login, false) {
                Verdict::Allow { .. } if cert_id.is_some() => {
                    Answer::Ok(vec![profile.username.clone()])
                }
                Verdict::Allow { .. } => Answer::Ok(crate::oslogin::login::keys_of(&profile)),
                Verdict::Deny(why) => Answer::Denied(why),
                Verdict::Unavailable(why) => Answer::Unavailable(why),
            }
        };
        tokio::time::timeout(budget, work)
            .await
            .unwrap_or_else(|_| Answer::Unavailable("deadline".into()))
    })
}

/// `guest-agent token [--account NAME] [--format raw|json|header]`: a valid token for local
/// tools, from the daemon (root and members of `tokens.group`), or fetched directly by root
/// when the daemon is not running. Exit 1 with the reason otherwise.
pub fn token(config: &Config, account: &str, format: &str) -> ExitCode {
    let fail = |why: &str| {
        eprintln!("guest-agent token: {why}");
        ExitCode::FAILURE
    };
    if !matches!(format, "raw" | "json" | "header") {
        return fail("--format must be raw, json or header");
    }
    let request = Request::Token {
        account: account.to_owned(),
        format: format.to_owned(),
    };
    match client::ask(Path::new(SOCKET_PATH), &request, HELPER_DEADLINE) {
        Ok(Answer::Ok(lines)) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Ok(Answer::NotFound) => fail(&format!(
            "no token is kept for account {account:?} (see tokens.accounts)"
        )),
        Ok(Answer::Denied(why)) => fail(&format!("refused: {why}")),
        Ok(Answer::Unavailable(why)) => fail(&format!("unavailable: {why}")),
        Ok(Answer::Error(why)) => fail(&why),
        Err(e @ (ClientError::NoDaemon(_) | ClientError::Dropped(_))) => {
            if !nix::unistd::geteuid().is_root() {
                return fail(&format!("{e}, and only root may fetch a token directly"));
            }
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return fail("cannot start a runtime");
            };
            match runtime.block_on(crate::tokens::fetch(config, account)) {
                Ok(t) => match t.format(format) {
                    Some(line) => {
                        println!("{line}");
                        ExitCode::SUCCESS
                    }
                    None => fail("bad format"),
                },
                Err(e) => fail(&format!("cannot fetch a token: {e}")),
            }
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// `guest-agent identity [--json]`: the service account's email and scopes, and the
/// instance's id, name and zone, straight from the metadata service.
pub fn identity(config: &Config, json: bool) -> ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::FAILURE;
    };
    let Ok(settings) = ClientSettings::from_config(&config.metadata) else {
        eprintln!("guest-agent identity: bad metadata.base_url");
        return ExitCode::FAILURE;
    };
    let client = GceClient::new(settings);
    let fields = [
        ("email", "instance/service-accounts/default/email"),
        ("scopes", "instance/service-accounts/default/scopes"),
        ("instance_id", "instance/id"),
        ("name", "instance/name"),
        ("zone", "instance/zone"),
    ];
    let values: Vec<(&str, Result<String, String>)> = runtime.block_on(async {
        let mut out = Vec::new();
        for (key, path) in fields {
            let v = match client.get_text(path).await {
                Ok(v) => Ok(v.trim().to_owned()),
                Err(e) if e.is_not_found() => Ok(String::new()),
                Err(e) => Err(e.to_string()),
            };
            out.push((key, v));
        }
        out
    });
    if let Some((key, Err(e))) = values.iter().find(|(_, v)| v.is_err()) {
        eprintln!("guest-agent identity: cannot read {key}: {e}");
        return ExitCode::FAILURE;
    }
    let get = |k: &str| {
        values
            .iter()
            .find(|(key, _)| *key == k)
            .and_then(|(_, v)| v.clone().ok())
            .unwrap_or_default()
    };
    let scopes: Vec<String> = get("scopes")
        .lines()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if json {
        let v = serde_json::json!({"email": get("email"), "scopes": scopes, "instance_id": get("instance_id"), "name": get("name"), "zone": get("zone")});
        println!("{v}");
    } else {
        println!("service account: {}", get("email"));
        println!("scopes:          {}", scopes.join(" "));
        println!("instance id:     {}", get("instance_id"));
        println!("name:            {}", get("name"));
        println!("zone:            {}", get("zone"));
    }
    ExitCode::SUCCESS
}

/// How long `guest-agent status` waits for the daemon.
const STATUS_DEADLINE: Duration = Duration::from_secs(5);

/// `guest-agent status [--json]`: what the daemon knows now, asked over its socket (the
/// limited view for users other than root). Exit 1 when the daemon does not answer.
pub fn status(json: bool) -> ExitCode {
    let fail = |why: &str| {
        eprintln!("guest-agent status: {why}");
        ExitCode::FAILURE
    };
    let line = match client::ask(Path::new(SOCKET_PATH), &Request::Status, STATUS_DEADLINE) {
        Ok(Answer::Ok(lines)) if lines.len() == 1 => lines.into_iter().next().unwrap_or_default(),
        Ok(Answer::Error(why)) if why == "unknown request" => {
            return fail("the daemon does not answer `status` (an older version still running?)");
        }
        Ok(other) => return fail(&format!("unexpected answer from the daemon: {other:?}")),
        Err(ClientError::NoDaemon(e)) => {
            return fail(&format!("the daemon is not running ({SOCKET_PATH}: {e})"));
        }
        Err(e) => return fail(&e.to_string()),
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
        return fail("the daemon's answer is not JSON");
    };
    if json {
        println!("{value}");
    } else {
        print!("{}", crate::status::text(&value));
    }
    ExitCode::SUCCESS
}
