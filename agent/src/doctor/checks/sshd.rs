//! sshd's effective configuration and the program it runs for keys.

use serde_json::json;

use super::{Check, Context};
use crate::doctor::decide::UserKind;
use crate::doctor::perms::helper_problems;
use crate::doctor::sshd_scan::{effective_value, mismatches};
use crate::host::sshd::directives;
use crate::host::sshd::rival::{self, Found};

pub fn sshd_config(cx: &Context) -> Check {
    let Some(s) = &cx.facts.sshd else {
        return Check::skip(
            "sshd-config",
            "not checked: `sshd -T` needs root (it reads the host keys)",
        );
    };
    let main = s.paths.main_config.display().to_string();
    if let Err(why) = &s.test {
        let first = why.lines().next().unwrap_or("").to_owned();
        return Check::fail(
            "sshd-config",
            format!("`sshd -t -f {main}` rejects the configuration: {first}"),
            "fix what sshd names (run `sshd -t` to see it); sshd cannot start or reload until then",
        )
        .detail("sshd_t", why.clone());
    }
    let effective = match &s.effective {
        Some(Ok(e)) => e,
        Some(Err(why)) => {
            return Check::fail(
                "sshd-config",
                format!("`sshd -T` failed: {why}"),
                "run `sshd -T` by hand to see why",
            );
        }
        None => return Check::skip("sshd-config", "`sshd -T` not run"),
    };
    let with_user = cx
        .facts
        .user
        .as_ref()
        .map(|u| format!(" for user={u},host=localhost,addr=127.0.0.1"))
        .unwrap_or_default();
    let ours = crate::oslogin::reconciler::sshd_settings(cx.config);
    let helper = ours.keys_command.split_whitespace().next().unwrap_or("");
    let found = rival::find(&s.lines, helper);
    let rival_json = match &found {
        Found::Rival(r) => {
            json!({"command": r.chain.command, "user": r.chain.user, "place": r.place,
                   "provider": rival::provider(&r.chain.command)})
        }
        Found::Inert { place, command } => {
            json!({"command": command, "place": place, "inert": true})
        }
        Found::Unusable {
            place,
            command,
            why,
        } => json!({"command": command, "place": place, "unusable": why}),
        Found::Nothing => serde_json::Value::Null,
    };
    if cx.oslogin.on {
        let settings = match rival::chained_settings(&ours, &found) {
            Ok(s) => s,
            Err(e) => {
                return Check::fail(
                    "sshd-config",
                    e.to_string(),
                    "make that AuthorizedKeysCommand a plain absolute command line (or remove it), \
                     then restart the agent",
                )
                .detail("rival", rival_json);
            }
        };
        let chained = match &found {
            Found::Rival(r) => format!(
                "; another AuthorizedKeysCommand, `{}`{} (as {}, {}), is chained: the agent's \
                 command comes first and hands users that are not OS Login users on to it",
                r.chain.command,
                by(&r.chain.command),
                r.chain.user,
                r.place
            ),
            _ => String::new(),
        };
        let expected = match directives(&settings) {
            Ok(d) => d,
            Err(e) => {
                return Check::fail(
                    "sshd-config",
                    format!("the [oslogin] settings cannot be written for sshd: {e}"),
                    "fix oslogin.helper_path, command_user or ca_file in the agent's config",
                );
            }
        };
        let found = mismatches(effective, &expected, &s.lines);
        let details: Vec<_> = found
            .iter()
            .map(|m| {
                json!({"keyword": m.keyword, "expected": m.expected, "found": m.found,
                       "winner": m.winner.as_ref().map(|w| w.place()),
                       "ours": m.ours.as_ref().map(|o| o.place())})
            })
            .collect();
        let Some(first) = found.first() else {
            let place = s
                .lines
                .iter()
                .find(|l| l.managed)
                .map(|l| l.file.display().to_string())
                .unwrap_or_default();
            return Check::ok(
                "sshd-config",
                format!(
                    "`sshd -T`{with_user} uses the agent's AuthorizedKeysCommand, \
                     AuthorizedPrincipalsCommand, their user and TrustedUserCAKeys ({place}){chained}"
                ),
            )
            .detail("rival", rival_json);
        };
        // The headline: a foreign line that wins ("line order wrong") before its side effects.
        let headline = found
            .iter()
            .find(|m| m.winner.as_ref().is_some_and(|w| !w.managed))
            .unwrap_or(first);
        let mut summary = headline.finding();
        if found.len() > 1 {
            summary.push_str(&format!(" (and {} more, see details)", found.len() - 1));
        }
        summary.push_str(&chained);
        // One fix per offending line.
        let mut blamed: Vec<String> = Vec::new();
        let mut fixes: Vec<String> = Vec::new();
        for m in std::iter::once(headline).chain(found.iter()) {
            let key = m.culprit().map(|l| l.place()).unwrap_or(m.keyword.clone());
            if !blamed.contains(&key) {
                blamed.push(key);
                fixes.push(m.fix(&s.paths.dropin));
            }
        }
        return Check::fail("sshd-config", summary, fixes.join("; "))
            .detail("mismatches", details)
            .detail("rival", rival_json);
    }
    // OS Login off: sshd must read the users' own authorized_keys.
    let akf = effective_value(effective, "authorizedkeysfile").unwrap_or("");
    let reads_home = akf
        .split_whitespace()
        .any(|f| f.ends_with(".ssh/authorized_keys"));
    if matches!(cx.kind, Some(UserKind::Metadata | UserKind::Local)) && !reads_home {
        let winner = s
            .lines
            .iter()
            .find(|l| l.keyword == "authorizedkeysfile")
            .map(|l| format!(" (set at {})", l.place()))
            .unwrap_or_default();
        return Check::fail(
            "sshd-config",
            format!(
                "AuthorizedKeysFile is `{akf}`{with_user}{winner}: sshd does not read \
                 ~/.ssh/authorized_keys, where the agent writes metadata keys"
            ),
            "make AuthorizedKeysFile include .ssh/authorized_keys, then reload sshd",
        );
    }
    let other = match &found {
        Found::Rival(r) => format!(
            "; another AuthorizedKeysCommand is in effect, `{}`{} (as {}, {}): the agent chains it \
             while OS Login is on and leaves it as it is",
            r.chain.command,
            by(&r.chain.command),
            r.chain.user,
            r.place
        ),
        _ => String::new(),
    };
    Check::ok(
        "sshd-config",
        format!("`sshd -t` passes; OS Login off, AuthorizedKeysFile{with_user} is `{akf}`{other}"),
    )
    .detail("rival", rival_json)
}

/// ` (PROVIDER)` for a known provider of `command`.
fn by(command: &str) -> String {
    rival::provider(command)
        .map(|p| format!(" ({p})"))
        .unwrap_or_default()
}

pub fn helper_path(cx: &Context) -> Check {
    // What sshd runs: `guest-agent-sshd` beside `oslogin.helper_path`, or that binary itself.
    let path = &cx.config.oslogin.sshd_program();
    if !cx.oslogin.on {
        return Check::skip(
            "helper-path",
            format!("OS Login is off: sshd does not run {path}"),
        );
    }
    let problems = helper_problems(&cx.facts.helper);
    let resolved = cx
        .facts
        .helper
        .first()
        .map(|e| e.path.display().to_string())
        .unwrap_or_default();
    let check = match problems.first() {
        None => Check::ok(
            "helper-path",
            format!(
                "{path} and every directory above it are root-owned and not group/world-writable"
            ),
        ),
        Some(p) => {
            let fixes: Vec<String> = problems.iter().map(|p| p.fix.clone()).collect();
            Check::fail(
                "helper-path",
                format!("{}: sshd refuses to run {path}", p.what),
                fixes.join("; "),
            )
            .detail("offending", p.path.display().to_string())
        }
    };
    check
        .detail("path", path.clone())
        .detail("resolved", resolved)
        .detail(
            "problems",
            problems.iter().map(|p| p.what.clone()).collect::<Vec<_>>(),
        )
}
