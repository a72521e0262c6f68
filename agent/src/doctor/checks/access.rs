//! The metadata service, OS Login on/off, the user's roles and keys, the daemon.

use serde_json::json;

use super::{Check, Context, human, utc};
use crate::doctor::decide::{KeyVerdict, UserKind, key_verdict, on_off};
use crate::doctor::facts::ProfileFacts;
use crate::oslogin::authorize::Decision;

/// Slower than this and logins feel it.
const SLOW_MS: u128 = 1000;

pub fn metadata(cx: &Context) -> Check {
    let m = &cx.facts.metadata;
    let ms = m.latency.as_millis();
    match &m.snapshot {
        Ok(_) if ms > SLOW_MS => Check::warn(
            "metadata",
            format!(
                "metadata service at {} answered, but slowly ({ms} ms)",
                m.url
            ),
            "logins that ask the service wait as long; check the VM's network and load",
        ),
        Ok(_) => Check::ok(
            "metadata",
            format!(
                "metadata service at {} answered in {ms} ms (Metadata-Flavor: Google echoed)",
                m.url
            ),
        ),
        Err(why) => {
            let fix = if why.contains("Metadata-Flavor") {
                format!(
                    "something other than the metadata service answers at {} (a proxy or a \
                     network filter): check the routes and firewall rules for it",
                    m.url
                )
            } else {
                format!(
                    "make {} reachable from the VM (route to 169.254.169.254, firewall, \
                     metadata.base_url in the config); OS Login logins fail closed meanwhile",
                    m.url
                )
            };
            Check::fail("metadata", format!("metadata service: {why}"), fix)
        }
    }
    .detail("url", m.url.clone())
    .detail("latency_ms", ms as u64)
}

/// Two-step verification (`enable-oslogin-2fa`): whether sshd asks the user for a key and
/// then keyboard-interactive, whether sshd's PAM stack carries the module's lines, and whether
/// the module is usable. Leftover lines while it is off are a warning.
pub fn two_factor(cx: &Context) -> Check {
    let o = &cx.config.oslogin;
    let on = cx.oslogin.on
        && cx
            .facts
            .metadata
            .snapshot
            .as_ref()
            .ok()
            .and_then(|s| s.flag("enable-oslogin-2fa"))
            .is_some_and(|(v, _)| v);
    let carried = cx
        .facts
        .pam_stack
        .as_ref()
        .ok()
        .filter(|t| t.contains(crate::host::sshd::BEGIN_MARK) && t.contains("pam_guestagent"))
        .is_some();
    if !on {
        return if carried {
            Check::warn(
                "two-factor",
                format!(
                    "2-step verification off, but {} still carries guest-agent's lines",
                    o.pam_file
                ),
                "the daemon removes them at its next pass; restart guest-agent if they stay",
            )
        } else {
            Check::ok(
                "two-factor",
                "2-step verification off (enable-oslogin-2fa not set)",
            )
        };
    }
    let user = cx.user();
    let module = match &cx.facts.pam_module {
        Ok(p) => p.display().to_string(),
        Err(why) => {
            return Check::fail(
                "two-factor",
                format!("2-step verification on, but {why}"),
                "until the module is usable the daemon refuses OS Login logins (the second factor is never skipped)",
            );
        }
    };
    if !carried {
        return Check::fail(
            "two-factor",
            format!(
                "2-step verification on, but {} does not carry the module's lines",
                o.pam_file
            ),
            "check the daemon's log (journalctl -u guest-agent) for why it could not add them; UsePAM must be yes",
        );
    }
    let service_account = crate::oslogin::two_factor::is_service_account(user);
    match cx.facts.sshd.as_ref().and_then(|s| s.effective.as_ref()) {
        Some(Ok(effective)) if !user.is_empty() => {
            let get = |k: &str| {
                effective
                    .lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix(' '))
                    .unwrap_or("(absent)")
            };
            let methods = get("authenticationmethods");
            let asked = methods == "publickey,keyboard-interactive";
            let kind = cx.kind;
            let want = matches!(kind, Some(UserKind::OsLogin)) && !service_account;
            if get("usepam") != "yes" {
                Check::fail(
                    "two-factor",
                    "2-step verification on, but sshd has UsePAM no: the challenge runs in PAM",
                    "set UsePAM yes in sshd_config",
                )
            } else if want && !asked {
                Check::fail(
                    "two-factor",
                    format!(
                        "2-step verification on, but sshd asks {user} for `{methods}`, not a key and then the challenge"
                    ),
                    "an earlier Match block or drop-in sets AuthenticationMethods for this user; guest-agent's block must be the first to match",
                )
            } else if want {
                Check::ok(
                    "two-factor",
                    format!(
                        "2-step verification on: sshd asks {user} for a key, then the challenge (AuthenticationMethods {methods}); {} carries the module {module}",
                        o.pam_file
                    ),
                )
            } else {
                Check::ok(
                    "two-factor",
                    format!(
                        "2-step verification on; {user} {} (AuthenticationMethods {methods}); {} carries the module {module}",
                        if service_account {
                            "is a service account: the key alone"
                        } else {
                            "is not an OS Login user: not asked"
                        },
                        o.pam_file
                    ),
                )
            }
        }
        _ => Check::ok(
            "two-factor",
            format!(
                "2-step verification on; {} carries the module {module} (sshd's per-user settings not checked: give a user, as root)",
                o.pam_file
            ),
        ),
    }
}

pub fn oslogin(cx: &Context) -> Check {
    let st = &cx.oslogin;
    let user = cx.user();
    let flag = |key: &str| {
        cx.facts
            .metadata
            .snapshot
            .as_ref()
            .ok()
            .and_then(|s| s.flag(key))
            .is_some_and(|(v, _)| v)
    };
    let modes = match (
        st.on && flag("enable-oslogin-sk"),
        st.on && flag("enable-oslogin-2fa"),
    ) {
        (false, false) => String::new(),
        (sk, fa) => {
            let mut m = Vec::new();
            if sk {
                m.push(
                    "security-key mode on (enable-oslogin-sk): only the profile's security keys \
                     are served, certificates are refused",
                );
            }
            if fa {
                m.push("2-step verification on (enable-oslogin-2fa): a key, then the challenge");
            }
            format!("; {}", m.join("; "))
        }
    };
    let base = format!("OS Login {}: {}{modes}", on_off(st.on), st.why);
    let mut check = match (cx.kind, &cx.facts.profile) {
        _ if !st.from_metadata => Check::warn(
            "oslogin",
            base.clone(),
            "fix the metadata check first; the attribute could not be read",
        ),
        (None, _) => Check::ok("oslogin", base.clone()),
        (Some(UserKind::OsLogin), ProfileFacts::Found(p)) => {
            // The agent's own admission rules (local accounts, ids, reserved names, homes).
            let rules = crate::oslogin::decision::Rules::from_config(cx.config);
            let admitted = cx
                .facts
                .local_accounts
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|l| {
                    crate::oslogin::decision::admit_user(
                        &std::sync::Arc::new(p.clone()),
                        l,
                        &rules,
                        false,
                        false,
                    )
                    .map_err(|r| r.to_string())
                });
            match admitted {
                Ok((served, None)) if served.home == p.home => Check::ok(
                    "oslogin",
                    format!("{base}; {user} is an OS Login user ({})", p.email),
                ),
                Ok((served, _)) => Check::warn(
                    "oslogin",
                    format!(
                        "{base}; {user} is an OS Login user ({}), served the home {} instead of the profile's {} (below oslogin.home_bases only)",
                        p.email, served.home, p.home
                    ),
                    "set the profile's home directory below oslogin.home_bases, or add its base to oslogin.home_bases",
                ),
                Err(why) => Check::fail(
                    "oslogin",
                    format!(
                        "{base}; {user}'s OS Login profile ({}) is not served on this VM: {why}",
                        p.email
                    ),
                    "change the profile's username/uid/gid in the directory, or the local account that holds it",
                ),
            }
        }
        (Some(UserKind::Metadata), _) => Check::ok(
            "oslogin",
            format!("{base}; {user} is a metadata-keys user (listed in ssh-keys)"),
        ),
        (Some(UserKind::Local), _) => Check::ok(
            "oslogin",
            format!(
                "{base}; {user} is a local account (/etc/passwd): its own authorized_keys apply"
            ),
        ),
        (_, ProfileFacts::Error(e)) => Check::warn(
            "oslogin",
            format!("{base}; cannot tell whether {user} is an OS Login user: {e}"),
            "fix the metadata check first",
        ),
        (Some(_), ProfileFacts::Found(p)) if !st.on => Check::fail(
            "oslogin",
            format!(
                "{base}; but {user} is an OS Login user ({}) with no ssh-keys entry, so the \
                 login fails",
                p.email
            ),
            format!(
                "turn OS Login on: set the instance attribute enable-oslogin=TRUE (an instance \
                 value overrides the project's), or add {user}'s key to the ssh-keys metadata"
            ),
        ),
        (Some(_), _) if st.on => Check::fail(
            "oslogin",
            format!("{base}; but {user} is neither an OS Login user nor a local account"),
            format!(
                "check the name (OS Login names look like alice_example_com); grant the user \
                 OS Login access or create a local account for {user}"
            ),
        ),
        (Some(_), _) => Check::fail(
            "oslogin",
            format!(
                "{base}; and {user} is neither in the ssh-keys metadata nor a local account \
                 (nor an OS Login user)"
            ),
            format!(
                "add `{user}:ssh-ed25519 AAAA... {user}` to the instance or project ssh-keys, \
                 or turn OS Login on for an OS Login user"
            ),
        ),
    };
    if check.status == super::Status::Ok && st.on && flag("enable-oslogin-2fa") {
        check = Check::warn(
            "oslogin",
            check.summary.clone(),
            "guest-agent does not ask for the second factor yet (issue 17): turn \
             enable-oslogin-2fa off for this VM, or keep Google's agent on VMs that need it",
        );
    }
    if check.status == super::Status::Ok {
        if let Some(bad) = st.invalid.first() {
            check = Check::warn(
                "oslogin",
                format!("{base}; {bad}"),
                "use TRUE or FALSE (also accepted: 1/0, yes/no)",
            );
        } else if st.from_metadata
            && let Some(applied) = cx.facts.agent_applied_oslogin
            && applied != st.on
        {
            check = Check::warn(
                "oslogin",
                format!(
                    "{base}; but the agent last applied OS Login {}",
                    on_off(applied)
                ),
                "check the daemon check and the agent's log: it applies the attribute within \
                 seconds when running",
            );
        }
    }
    check
        .detail("enabled", st.on)
        .detail("reason", st.why.clone())
        .detail("agent_applied", json!(cx.facts.agent_applied_oslogin))
        .detail(
            "user_kind",
            json!(cx.kind.map(|k| format!("{k:?}").to_lowercase())),
        )
}

fn decision(d: &Decision) -> &'static str {
    match d {
        Decision::Allowed => "yes",
        Decision::Denied => "no",
        Decision::Unavailable(_) => "unknown",
    }
}

pub fn authorization(cx: &Context) -> Check {
    let user = cx.user();
    if cx.facts.user.is_none() {
        return Check::skip("authorization", "no USER given");
    }
    if cx.kind != Some(UserKind::OsLogin) {
        return Check::skip(
            "authorization",
            format!("{user} is not an OS Login user here: no roles to check"),
        );
    }
    let (ProfileFacts::Found(p), Some((login, admin))) = (&cx.facts.profile, &cx.facts.roles)
    else {
        return Check::skip("authorization", "roles not asked");
    };
    let check = match login {
        Decision::Allowed => Check::ok(
            "authorization",
            format!(
                "{} has the login role now; admin (sudo): {}",
                p.email,
                decision(admin)
            ),
        ),
        Decision::Denied => Check::fail(
            "authorization",
            format!(
                "{} lacks the login role (oslogin/authorize policy=login refused): every login \
                 of {user} is refused",
                p.email
            ),
            "grant the OS Login user role (GCE roles/compute.osLogin, Yandex compute.osLogin; \
             the admin role for sudo) to the user on this VM's project or folder",
        ),
        Decision::Unavailable(why) => Check::fail(
            "authorization",
            format!("cannot ask whether {} may log in: {why}", p.email),
            "logins fail closed while the service does not answer (see oslogin.grace_period_secs); \
             fix the metadata check",
        ),
    };
    check
        .detail("email", p.email.clone())
        .detail("login", decision(login))
        .detail("admin", decision(admin))
}

pub fn keys(cx: &Context) -> Check {
    let user = cx.user();
    let now = cx.facts.now_unix;
    let (expiries, source): (Vec<Option<i64>>, &str) = match (cx.kind, &cx.facts.profile) {
        _ if cx.facts.user.is_none() => return Check::skip("keys", "no USER given"),
        (Some(UserKind::OsLogin), ProfileFacts::Found(p)) => (
            p.keys
                .iter()
                .map(|k| k.expires_usec.map(|t| t.div_euclid(1_000_000)))
                .collect(),
            "OS Login profile",
        ),
        (Some(UserKind::Metadata), _) => (
            cx.metadata_keys.iter().map(|k| k.expires_unix).collect(),
            "ssh-keys metadata",
        ),
        (Some(UserKind::Local), _) => {
            return Check::skip(
                "keys",
                format!("{user} is a local account: its keys are its own (see ssh-dir)"),
            );
        }
        _ => {
            return Check::skip(
                "keys",
                format!("{user} is neither an OS Login nor a metadata-keys user here"),
            );
        }
    };
    let cert_given = cx.facts.cert.is_some();
    let where_to = if source == "ssh-keys metadata" {
        format!(
            "add a fresh key for {user} to ssh-keys (an expiring key carries google-ssh \
             {{\"expireOn\":...}}; `gcloud compute ssh` adds one)"
        )
    } else {
        format!("add a key to {user}'s OS Login profile (`gcloud compute os-login ssh-keys add`)")
    };
    let mut check = match key_verdict(&expiries, now) {
        KeyVerdict::NoKeys if cert_given => Check::warn(
            "keys",
            format!("{user} has no keys in the {source}: only certificate logins can work"),
            where_to,
        ),
        KeyVerdict::NoKeys => Check::fail(
            "keys",
            format!("{user} has no keys in the {source}"),
            where_to,
        ),
        KeyVerdict::AllExpired { count, latest } => Check::fail(
            "keys",
            format!(
                "all {count} keys of {user} in the {source} expired (latest expired at {}, {} ago)",
                utc(latest),
                human(now.saturating_sub(latest).max(0) as u64)
            ),
            where_to,
        ),
        KeyVerdict::Valid { valid, expired } => Check::ok(
            "keys",
            format!("{user} has {valid} unexpired key(s) in the {source} ({expired} expired)"),
        ),
    };
    if !cx.rejected.is_empty() && check.status == super::Status::Ok {
        check = Check::warn(
            "keys",
            format!("{}; but {}", check.summary, cx.rejected[0]),
            "fix or remove that ssh-keys line (the agent skips it)",
        );
    }
    let rejected: Vec<String> = cx.rejected.iter().map(ToString::to_string).collect();
    check
        .detail("source", source)
        .detail("total", expiries.len() as u64)
        .detail(
            "expires",
            expiries
                .iter()
                .map(|e| json!(e.map(utc)))
                .collect::<Vec<_>>(),
        )
        .detail("rejected_lines", rejected)
}

pub fn daemon(cx: &Context) -> Check {
    let socket = guest_agent_wire::proto::SOCKET_PATH;
    match &cx.facts.daemon {
        Ok(d) => Check::ok(
            "daemon",
            format!("the daemon answers on {socket} ({} ms)", d.as_millis()),
        ),
        Err(why) => Check::warn(
            "daemon",
            format!("the daemon does not answer on {socket}: {why}"),
            "start it (`systemctl start guest-agent`; why it stopped: `journalctl -u \
             guest-agent`): without it the helper decides logins alone, and users, keys and the \
             CA file are not kept up to date",
        ),
    }
    .detail("socket", socket)
}
