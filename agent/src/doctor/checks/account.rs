//! The user as glibc resolves it, and the files sshd's StrictModes looks at.

use super::{Check, Context};
use crate::doctor::decide::UserKind;
use crate::doctor::perms::{Kind, Owner, strict_modes};

pub fn user(cx: &Context) -> Check {
    let Some(name) = cx.facts.user.as_deref() else {
        return Check::skip("user", "no USER given");
    };
    let p = match &cx.facts.passwd {
        Some(Ok(p)) => p,
        Some(Err(why)) => {
            let fix = match cx.kind {
                Some(UserKind::OsLogin) => {
                    "OS Login users resolve through libnss_guestagent (the directory cache, then \
                     the daemon): see the nsswitch and daemon checks"
                }
                Some(UserKind::Metadata) => {
                    "the agent creates metadata-keys users: see the daemon check and the agent's \
                     log (`journalctl -u guest-agent`)"
                }
                _ => {
                    "check the user name; no OS Login profile, ssh-keys entry or local account has it"
                }
            };
            return Check::fail(
                "user",
                format!("{name} does not resolve (getent passwd {name}): {why}"),
                fix,
            );
        }
        None => return Check::skip("user", "not looked up"),
    };
    let source = if p.local {
        "/etc/passwd"
    } else {
        "the NSS module guestagent (OS Login directory)"
    };
    let summary = format!(
        "{name} resolves from {source}: uid {}, gid {}, home {}, shell {}",
        p.uid,
        p.gid,
        p.home.display(),
        p.shell.display()
    );
    let shell = p.shell.display();
    let check = match &p.shell_stat {
        Err(why) => Check::fail(
            "user",
            format!("{summary}; but the shell {shell} is unusable ({why}): sshd refuses the login"),
            format!("install {shell} or give {name} another shell (usermod -s /bin/bash {name})"),
        ),
        Ok(s) if s.kind != Kind::File || s.mode & 0o111 == 0 => Check::fail(
            "user",
            format!(
                "{summary}; but the shell {shell} is not an executable file: sshd refuses the login"
            ),
            format!("chmod 755 {shell}, or give {name} another shell"),
        ),
        Ok(_) if !p.home.is_dir() => {
            if cx.kind == Some(UserKind::OsLogin) && cx.config.oslogin.create_home {
                Check::ok("user", format!("{summary} (created at the first login)"))
            } else {
                Check::warn(
                    "user",
                    format!(
                        "{summary}; but the home {} does not exist",
                        p.home.display()
                    ),
                    format!(
                        "create it: mkdir -m 755 {0} && chown {name}: {0}",
                        p.home.display()
                    ),
                )
            }
        }
        Ok(_) => Check::ok("user", summary),
    };
    check
        .detail("uid", p.uid)
        .detail("gid", p.gid)
        .detail("home", p.home.display().to_string())
        .detail("shell", p.shell.display().to_string())
        .detail("source", if p.local { "files" } else { "guestagent" })
}

pub fn ssh_dir(cx: &Context) -> Check {
    let Some(name) = cx.facts.user.as_deref() else {
        return Check::skip("ssh-dir", "no USER given");
    };
    if cx.kind == Some(UserKind::OsLogin) && cx.config.oslogin.ignore_user_keys {
        return Check::skip(
            "ssh-dir",
            format!(
                "{name} is an OS Login user: sshd asks the agent for keys and reads no file in the home"
            ),
        );
    }
    let Some(Ok(p)) = &cx.facts.passwd else {
        return Check::skip("ssh-dir", format!("{name} does not resolve (see user)"));
    };
    let chain = &cx.facts.ssh_chain;
    let owner = Owner {
        uid: p.uid,
        gid: p.gid,
        private_group: p.private_group,
    };
    let (fail, warn) = strict_modes(chain, name, owner);
    let missing = chain.iter().find(|e| e.stat.is_err());
    let check = if let Some(f) = fail.first() {
        let fixes: Vec<String> = fail.iter().map(|f| f.fix.clone()).collect();
        Check::fail(
            "ssh-dir",
            format!("{}: sshd ignores {name}'s authorized_keys", f.what),
            fixes.join("; "),
        )
        .detail("offending", f.path.display().to_string())
    } else if let Some(m) = missing {
        let why = m.stat.as_ref().err().cloned().unwrap_or_default();
        let fix = if cx.kind == Some(UserKind::Metadata) {
            "the agent writes the metadata keys there: see the daemon check and the agent's log"
                .to_owned()
        } else {
            format!(
                "put {name}'s public key in {}/.ssh/authorized_keys (owned by {name}, mode 600)",
                p.home.display()
            )
        };
        Check::fail(
            "ssh-dir",
            format!("{}: {why}: sshd finds no keys for {name}", m.path.display()),
            fix,
        )
    } else if let Some(w) = warn.first() {
        Check::warn("ssh-dir", w.what.clone(), w.fix.clone())
    } else {
        Check::ok(
            "ssh-dir",
            format!(
                "{0}, {0}/.ssh and {0}/.ssh/authorized_keys pass StrictModes (owned by {name} \
                 or root, not group/world-writable)",
                p.home.display()
            ),
        )
    };
    check.detail(
        "paths",
        chain
            .iter()
            .map(|e| {
                serde_json::json!({"path": e.path.display().to_string(),
                    "mode": e.stat.as_ref().ok().map(|s| format!("{:04o}", s.mode)),
                    "uid": e.stat.as_ref().ok().map(|s| s.uid)})
            })
            .collect::<Vec<_>>(),
    )
}
