//! sshd integration: the directives that hand key and principal lookups to the agent, and
//! where they go. This file is the pure part (render, decide where, edit text); [`apply`]
//! writes, validates with the real sshd and reloads.
//!
//! Order matters: `AuthorizedPrincipalsCommand` is written before `AuthorizedKeysCommand`,
//! because OpenSSH before 9.4 silently drops the principals command when it comes second
//! (upstream bug 3574: `sshd -T` then shows `authorizedprincipalscommand none`).
//!
//! Where: when the main config has an `Include` outside any `Match` block whose pattern covers
//! our drop-in, we write the drop-in (Debian and Ubuntu: `Include /etc/ssh/sshd_config.d/*.conf`
//! near the top); otherwise a marked block at the end of the main config.
//!
//! `Match` in an included file, established with OpenSSH 9.2p1 (`sshd -T -C user=..`): a
//! `Match` block inside an included file ends at the end of that file. Directives after the
//! `Include` line in the main config, and later drop-ins, still apply to every connection, while
//! the same `Match` written in the main config captures every line after it. So our drop-in
//! may end with its `Match Group` block without affecting anything else. In the main config,
//! by contrast, our block must be last, and when an operator's `Match` comes before it, it
//! starts with `Match all` to get back to directives that apply to everyone.

pub mod apply;
pub mod rival;
pub mod scan;

use std::path::{Path, PathBuf};

use guest_agent_wire::names::is_valid_name;

use super::command::CommandError;
use super::files::FileError;
use super::service::ServiceError;

/// First line of the block we own in the main config.
pub const BEGIN_MARK: &str = "# BEGIN guest-agent (managed; do not edit)";
/// Last line of that block.
pub const END_MARK: &str = "# END guest-agent";
const DROPIN_HEADER: &str =
    "# Managed by guest-agent; do not edit: the agent rewrites or removes this file.\n";

#[derive(Debug, thiserror::Error)]
pub enum SshdError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Reload(#[from] ServiceError),
    #[error("sshd setting {setting} = {value:?} is not usable: {rule}")]
    Setting {
        setting: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error(
        "{path}: a `{BEGIN_MARK}` line without its `{END_MARK}` (or the reverse); \
         delete the leftover marker line and the agent will rewrite its block"
    )]
    BrokenBlock { path: PathBuf },
    #[error("{path} does not exist; reinstall openssh-server or point the agent at the config")]
    MissingConfig { path: PathBuf },
    #[error("sshd rejected the configuration after writing {path} (change undone): {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{place} sets another AuthorizedKeysCommand, `{command}`, which the agent cannot chain: \
         {why}; OS Login stays off so that its users keep their keys (fix or remove that line)"
    )]
    RivalNotChainable {
        place: String,
        command: String,
        why: &'static str,
    },
    #[error(
        "after writing {path}, sshd -T shows `{keyword} {found}` instead of our `{expected}` \
         (change undone); an earlier line or drop-in sets it (on OpenSSH before 9.4 an earlier \
         AuthorizedKeysCommand also hides a later AuthorizedPrincipalsCommand): remove that \
         setting"
    )]
    NotInEffect {
        path: PathBuf,
        keyword: &'static str,
        expected: String,
        found: String,
    },
}

/// What we ask sshd to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshdSettings {
    /// `AuthorizedPrincipalsCommand`: absolute program path and arguments.
    pub principals_command: String,
    /// `AuthorizedKeysCommand`: absolute program path and arguments.
    pub keys_command: String,
    /// `AuthorizedKeysCommandUser` and `AuthorizedPrincipalsCommandUser`. The helpers only ask
    /// the daemon's socket, so they need no privilege: `nobody` unless a dedicated user exists.
    pub command_user: String,
    /// `TrustedUserCAKeys`, when certificates are accepted.
    pub trusted_ca_file: Option<PathBuf>,
    /// Members of this group (OS Login users) get `AuthorizedKeysFile none`, so their own
    /// `~/.ssh/authorized_keys` is ignored.
    pub ignore_user_keys_group: Option<String>,
    /// OS Login two-step verification: members of this group (OS Login users), except the
    /// `sa_*` service accounts, must pass `publickey` and then `keyboard-interactive` (the
    /// PAM module's challenge). The group's membership comes from the NSS module, which
    /// gives the users group even when the daemon does not answer, so the requirement cannot
    /// fall away for a user sshd can resolve.
    pub two_factor_group: Option<String>,
    /// sshd before OpenSSH 8.7 (Debian 11's 8.4): keyboard-interactive through PAM also needs
    /// the global `ChallengeResponseAuthentication yes`, which may not be set in a `Match`
    /// (see [`LegacyKbdInt`]). `None` on a current sshd.
    pub two_factor_legacy: Option<LegacyKbdInt>,
    /// Another AuthorizedKeysCommand our helper hands the users who are not OS Login users
    /// on to (see [`rival`]).
    pub chain: Option<rival::Chain>,
}

impl Default for SshdSettings {
    fn default() -> Self {
        SshdSettings {
            principals_command: "/usr/bin/guest-agent authorized-principals %u %k".into(),
            keys_command: "/usr/bin/guest-agent authorized-keys %u %f %t %k".into(),
            command_user: "nobody".into(),
            trusted_ca_file: None,
            ignore_user_keys_group: None,
            two_factor_group: None,
            two_factor_legacy: None,
            chain: None,
        }
    }
}

/// What two-step verification writes on an sshd before 8.7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyKbdInt {
    /// The operator's configuration had keyboard-interactive off for everyone
    /// (`ChallengeResponseAuthentication no`) and passwords off (`PasswordAuthentication
    /// no`): the global `yes` that OS Login users' challenge needs would open a PAM password
    /// prompt to every other user, so everyone outside the two-step `Match` is held to the
    /// methods that need no PAM conversation (`AuthenticationMethods publickey
    /// gssapi-with-mic hostbased`, in a `Match all` after ours: the first value sshd meets
    /// for a connection wins).
    pub keep_others_off: bool,
}

/// `ChallengeResponseAuthentication`'s value for everyone in the operator's own lines (not
/// ours): the first outside a `Match`; `yes` (OpenSSH's default) when none sets it.
pub fn operator_challenge_response(lines: &[scan::ConfigLine]) -> bool {
    lines
        .iter()
        .filter(|l| !l.managed && !l.in_match && l.keyword == "challengeresponseauthentication")
        .map(|l| l.value.eq_ignore_ascii_case("yes"))
        .next()
        .unwrap_or(true)
}

/// Where our directives live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A file of our own in the drop-in directory.
    DropIn,
    /// Our drop-in under a name that sorts before the usual one (and before another
    /// AuthorizedKeysCommand's drop-in, such as systemd-userdbd's `20-systemd-userdb.conf`).
    EarlyDropIn,
    /// A marked block at the end of the main config.
    MainBlock,
    /// The global directives in a marked block at the top of the main config (before another
    /// AuthorizedKeysCommand written there, or in a drop-in no name of ours sorts before),
    /// the `Match Group` block at its end.
    TopBlock,
}

/// The desired content of the files (`None`: that drop-in should not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub main: String,
    pub dropin: Option<String>,
    /// The early drop-in ([`Layout::EarlyDropIn`]).
    pub early: Option<String>,
}

/// Characters sshd's argument splitter would interpret (quotes, escapes, comments).
pub(crate) fn plain(value: &str) -> bool {
    !value.is_empty()
        && !value
            .chars()
            .any(|c| (c.is_control() && c != '\t') || matches!(c, '"' | '\'' | '\\' | '#'))
}

pub(crate) fn command(setting: &'static str, value: &str) -> Result<String, SshdError> {
    let bad = |rule| SshdError::Setting {
        setting,
        value: value.to_string(),
        rule,
    };
    if !plain(value) {
        return Err(bad("no quotes, backslashes, '#' or control characters"));
    }
    let words: Vec<&str> = value.split_whitespace().collect();
    if !words.first().is_some_and(|w| w.starts_with('/')) {
        return Err(bad("the program must be an absolute path"));
    }
    // sshd prints the command back with single spaces; so do we, for the -T comparison.
    Ok(words.join(" "))
}

/// The global directives, in the order they must appear, as (keyword, value); `sshd -T` prints
/// each as `lowercased-keyword value`.
pub fn directives(s: &SshdSettings) -> Result<Vec<(&'static str, String)>, SshdError> {
    let principals = command("principals_command", &s.principals_command)?;
    let keys = command("keys_command", &s.keys_command)?;
    if !is_valid_name(&s.command_user) {
        return Err(SshdError::Setting {
            setting: "command_user",
            value: s.command_user.clone(),
            rule: "must be a valid user name",
        });
    }
    let user = s.command_user.clone();
    let (keys, keys_user) = match &s.chain {
        None => (keys, user.clone()),
        Some(chain) => rival::chained_keys_command(&keys, chain, &user)?,
    };
    let mut out = vec![
        ("AuthorizedPrincipalsCommand", principals),
        ("AuthorizedPrincipalsCommandUser", user),
        ("AuthorizedKeysCommand", keys),
        ("AuthorizedKeysCommandUser", keys_user),
    ];
    if s.two_factor_group.is_some() && s.two_factor_legacy.is_some() {
        out.push(("ChallengeResponseAuthentication", "yes".into()));
    }
    if let Some(ca) = &s.trusted_ca_file {
        let text = ca.to_string_lossy();
        if !ca.is_absolute() || !plain(&text) || text.contains(char::is_whitespace) {
            return Err(SshdError::Setting {
                setting: "trusted_ca_file",
                value: text.into_owned(),
                rule: "must be an absolute path without blanks, quotes or '#'",
            });
        }
        out.push(("TrustedUserCAKeys", text.into_owned()));
    }
    Ok(out)
}

/// Our lines: `Match all` first when `after_match` (we follow an operator's `Match`), the
/// global directives, then the `Match Group` block, which is always last.
pub fn render(s: &SshdSettings, after_match: bool) -> Result<String, SshdError> {
    Ok(format!(
        "{}{}",
        render_globals(s, after_match)?,
        render_match(s)?
    ))
}

/// [`render`] without the `Match Group` block.
pub fn render_globals(s: &SshdSettings, after_match: bool) -> Result<String, SshdError> {
    let mut text = String::new();
    if after_match {
        text.push_str("Match all\n");
    }
    for (keyword, value) in directives(s)? {
        text.push_str(&format!("{keyword} {value}\n"));
    }
    Ok(text)
}

/// The `Match Group` block alone (empty when OS Login users' own keys are read).
pub fn render_match(s: &SshdSettings) -> Result<String, SshdError> {
    let mut text = String::new();
    if let Some(group) = &s.ignore_user_keys_group {
        if !is_valid_name(group) {
            return Err(SshdError::Setting {
                setting: "ignore_user_keys_group",
                value: group.clone(),
                rule: "must be a valid group name",
            });
        }
        text.push_str(&format!(
            "Match Group {group}\n    AuthorizedKeysFile none\n"
        ));
    }
    if let Some(group) = &s.two_factor_group {
        if !is_valid_name(group) {
            return Err(SshdError::Setting {
                setting: "two_factor_group",
                value: group.clone(),
                rule: "must be a valid group name",
            });
        }
        text.push_str(&two_factor_match(group));
        if s.two_factor_legacy.is_some_and(|l| l.keep_others_off) {
            text.push_str(
                "Match all\n    AuthenticationMethods publickey gssapi-with-mic hostbased\n",
            );
        }
    }
    Ok(text)
}

/// The `Match` block of two-step verification: a key, then the PAM challenge, for OS Login
/// users other than service accounts (in a `Match` block the value overrides the global
/// `KbdInteractiveAuthentication no` Debian's sshd_config sets).
pub fn two_factor_match(group: &str) -> String {
    format!(
        "Match Group {group} User *,!sa_*\n    AuthenticationMethods publickey,keyboard-interactive\n    KbdInteractiveAuthentication yes\n"
    )
}

/// The keyword and the arguments of an active (not comment, not blank) config line.
pub fn keyword(line: &str) -> Option<(String, &str)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let rest = line[end..].trim_start_matches(|c: char| c.is_whitespace() || c == '=');
    Some((line[..end].to_ascii_lowercase(), rest))
}

/// Whether an active line of `text` is a `Match`.
pub fn has_match(text: &str) -> bool {
    text.lines()
        .any(|l| keyword(l).is_some_and(|(k, _)| k == "match"))
}

/// Whether an `Include` of `main` (outside any `Match`) covers `target`. Relative patterns
/// are relative to `ssh_dir` (`/etc/ssh`), as sshd resolves them.
pub fn include_covers(main: &str, ssh_dir: &Path, target: &Path) -> bool {
    for line in main.lines() {
        match keyword(line) {
            Some((k, _)) if k == "match" => return false,
            Some((k, args)) if k == "include" => {
                for arg in args.split_whitespace() {
                    let arg = arg.trim_matches('"');
                    let pattern = if arg.starts_with('/') {
                        PathBuf::from(arg)
                    } else {
                        ssh_dir.join(arg)
                    };
                    if glob_path(&pattern.to_string_lossy(), &target.to_string_lossy()) {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
    false
}

/// glob(3) on a whole path: component by component, a wildcard never matching '/' or a
/// leading '.'.
fn glob_path(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let path: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    pattern.len() == path.len()
        && pattern.iter().zip(&path).all(|(p, s)| {
            (!s.starts_with('.') || p.starts_with('.')) && glob(p.as_bytes(), s.as_bytes())
        })
}

/// fnmatch for one component: `*`, `?`, `[...]` (with `!` or `^` negation and ranges).
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((b'[', rest)) => {
            let Some(close) = rest.iter().skip(1).position(|&c| c == b']').map(|i| i + 1) else {
                return s.first() == Some(&b'[') && glob(rest, &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let (negate, set) = match rest[..close].split_first() {
                Some((b'!' | b'^', set)) => (true, set),
                _ => (false, &rest[..close]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= (set[i]..=set[i + 2]).contains(&c);
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob(&rest[close + 1..], &s[1..])
        }
        Some((&c, rest)) => s.first() == Some(&c) && glob(rest, &s[1..]),
    }
}

/// `text` without our marked block(s). A block that ends the file without a final newline
/// was appended after a newline we added: that newline goes too, so the result is the text
/// from before [`append_block`], byte for byte.
pub fn strip_block(text: &str, path: &Path) -> Result<String, SshdError> {
    let broken = || SshdError::BrokenBlock {
        path: path.to_path_buf(),
    };
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == BEGIN_MARK {
            if inside {
                return Err(broken());
            }
            inside = true;
        } else if bare == END_MARK {
            if !inside {
                return Err(broken());
            }
            inside = false;
            if !line.ends_with('\n') && out.ends_with('\n') {
                out.pop();
            }
        } else if !inside {
            out.push_str(line);
        }
    }
    if inside {
        return Err(broken());
    }
    Ok(out)
}

/// `text` (without a block) with our block holding `body` put before its first line.
pub fn prepend_block(text: &str, body: &str) -> String {
    format!("{BEGIN_MARK}\n{body}{END_MARK}\n{text}")
}

/// `text` (without a block) with our block holding `body` appended at the end.
pub fn append_block(text: &str, body: &str) -> String {
    let block = format!("{BEGIN_MARK}\n{body}{END_MARK}");
    if text.is_empty() || text.ends_with('\n') {
        format!("{text}{block}\n")
    } else {
        format!("{text}\n{block}")
    }
}

/// The drop-in's full text.
pub fn dropin_text(s: &SshdSettings) -> Result<String, SshdError> {
    Ok(format!("{DROPIN_HEADER}{}", render(s, false)?))
}

/// Where and what to write so sshd uses `s`: the drop-in when `main` includes it (and its
/// directory exists, `dropin_dir_exists`), otherwise our block at the end of `main`.
pub fn plan_enable(
    main: &str,
    main_path: &Path,
    s: &SshdSettings,
    ssh_dir: &Path,
    dropin: &Path,
    dropin_dir_exists: bool,
) -> Result<(Layout, Plan), SshdError> {
    let base = strip_block(main, main_path)?;
    if dropin_dir_exists && include_covers(&base, ssh_dir, dropin) {
        return Ok((Layout::DropIn, lay_out(Layout::DropIn, base, s)?));
    }
    Ok((Layout::MainBlock, lay_out(Layout::MainBlock, base, s)?))
}

/// The files for `layout`, from `base` (the main config without our blocks).
pub fn lay_out(layout: Layout, base: String, s: &SshdSettings) -> Result<Plan, SshdError> {
    let mut plan = Plan {
        main: base,
        dropin: None,
        early: None,
    };
    match layout {
        Layout::DropIn => plan.dropin = Some(dropin_text(s)?),
        Layout::EarlyDropIn => plan.early = Some(dropin_text(s)?),
        Layout::MainBlock => {
            let body = render(s, has_match(&plan.main))?;
            plan.main = append_block(&plan.main, &body);
        }
        Layout::TopBlock => {
            plan.main = prepend_block(&plan.main, &render_globals(s, false)?);
            let tail = render_match(s)?;
            if !tail.is_empty() {
                plan.main = append_block(&plan.main, &tail);
            }
        }
    }
    Ok(plan)
}

/// All files without anything of ours.
pub fn plan_disable(main: &str, main_path: &Path) -> Result<Plan, SshdError> {
    Ok(Plan {
        main: strip_block(main, main_path)?,
        dropin: None,
        early: None,
    })
}

#[cfg(test)]
mod tests;
