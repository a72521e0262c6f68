//! The helpers sshd runs. They print what sshd needs on stdout, the reason for an empty
//! answer on stderr (sshd logs it), and exit 0: an empty answer is a refusal, not an error.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use guest_agent_wire::proto::{Answer, Request, SOCKET_PATH};

use crate::client::{self, ClientError};
use crate::config::Config;
use crate::mds::{ClientSettings, GceClient, query_escape};
use crate::oslogin::authorize::{Decision, Policy, ask};
use crate::oslogin::profile::parse_single_user;

/// Everything a helper run does fits in this (sshd waits far longer, a person does not).
pub const HELPER_DEADLINE: Duration = Duration::from_millis(4500);

fn say(user: &str, why: &str) {
    eprintln!("guest-agent: {user}: {why}");
}

/// `guest-agent authorized-keys USER [FINGERPRINT]`
/// (sshd: `AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f`).
pub fn authorized_keys(config: &Config, user: &str, fingerprint: Option<&str>) -> ExitCode {
    let start = Instant::now();
    if !guest_agent_wire::names::is_valid_name(user) {
        say(user, "not a valid user name");
        return ExitCode::SUCCESS;
    }
    let fingerprint =
        fingerprint.filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_graphic()));
    let request = Request::AuthorizedKeys {
        user: user.to_owned(),
        fingerprint: fingerprint.map(str::to_owned),
    };
    let answer = match client::ask(Path::new(SOCKET_PATH), &request, HELPER_DEADLINE) {
        Ok(a) => a,
        Err(ClientError::NoDaemon(e)) => {
            say(
                user,
                &format!("daemon not running ({e}); asking the metadata service directly"),
            );
            direct(
                config,
                user,
                HELPER_DEADLINE.saturating_sub(start.elapsed()),
            )
        }
        Err(e) => Answer::Unavailable(e.to_string()),
    };
    match answer {
        Answer::Ok(keys) => {
            for k in keys {
                println!("{k}");
            }
        }
        Answer::NotFound => say(user, "not an OS Login user (or OS Login is off)"),
        Answer::Denied(why) => say(user, &format!("refused: {why}")),
        Answer::Unavailable(why) => say(
            user,
            &format!("refused, metadata service unavailable: {why}"),
        ),
        Answer::Error(why) => say(user, &format!("error: {why}")),
    }
    ExitCode::SUCCESS
}

/// The decision without the daemon: the profile and a live login authorization, straight
/// from the metadata service, within `budget`. Fails closed; no side effects (no home, no
/// sudo rule: those are the daemon's).
fn direct(config: &Config, user: &str, budget: Duration) -> Answer {
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
            let v = match client
                .get_json::<serde_json::Value>(&format!(
                    "oslogin/users?username={}",
                    query_escape(user)
                ))
                .await
            {
                Ok(v) => v,
                Err(e) if e.is_not_found() => return Answer::NotFound,
                Err(e) => return Answer::Unavailable(e.to_string()),
            };
            let now = crate::oslogin::service::now_usec();
            let Ok(profile) = parse_single_user(&v, floor, now) else {
                return Answer::NotFound;
            };
            if profile.username != user {
                return Answer::NotFound;
            }
            match ask(&client, &profile.email, Policy::Login, None).await {
                Decision::Allowed => Answer::Ok(
                    profile
                        .keys
                        .iter()
                        .filter(|k| k.is_valid_at(now))
                        .map(|k| k.line.clone())
                        .collect(),
                ),
                Decision::Denied => Answer::Denied("login role not granted".into()),
                Decision::Unavailable(why) => Answer::Unavailable(why),
            }
        };
        tokio::time::timeout(budget, work)
            .await
            .unwrap_or_else(|_| Answer::Unavailable("deadline".into()))
    })
}
