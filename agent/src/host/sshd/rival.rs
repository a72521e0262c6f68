//! Another AuthorizedKeysCommand: systemd-userdbd's drop-in (`20-systemd-userdb.conf`:
//! `userdbctl ssh-authorized-keys %u`, run as root; Debian 13, Fedora), AWS EC2 Instance
//! Connect (`eic_run_authorized_keys %u %f`, run as `ec2-instance-connect`), leftovers of
//! another agent, or an operator's own. sshd runs one AuthorizedKeysCommand, the first one
//! it reads, so the agent chains instead of fighting: its lines are placed so that they come
//! first ([`plan`]: our drop-in, else one under an earlier name, else a block at the top of
//! sshd_config), and its keys command carries the other one,
//!
//! ```text
//! AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f %t %k --chain-user root -- /usr/bin/userdbctl ssh-authorized-keys %u
//! AuthorizedKeysCommandUser root
//! ```
//!
//! so that sshd expands the other command's tokens (`%u %U %f %t %k %h %%`...) itself, and
//! the helper hands every user who is not an OS Login user on to it, run as its own
//! AuthorizedKeysCommandUser (`--chain-user`). Our AuthorizedKeysCommandUser is then root
//! only when the other command's user differs from ours (the helper needs root to become
//! that user; it never runs the other command as root unless it ran as root). Nothing of the
//! other provider's files is touched: when OS Login goes off, removing our lines puts its
//! command back in effect as it was. Pure: the file system is a [`ConfigFs`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::scan::{ConfigFs, ConfigLine, flatten};
use super::{Layout, Plan, SshdError, SshdSettings, command, lay_out, plain};
use guest_agent_wire::names::is_valid_name;

/// The keywords where our line must be the first sshd reads.
const OURS_FIRST: [&str; 4] = [
    "authorizedprincipalscommand",
    "authorizedprincipalscommanduser",
    "authorizedkeyscommand",
    "authorizedkeyscommanduser",
];

/// The option and separator our helper takes the other command with.
pub const CHAIN_USER_OPTION: &str = "--chain-user";

/// The other AuthorizedKeysCommand, as sshd ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The command with its arguments, tokens unexpanded, blanks normalised.
    pub command: String,
    /// Its AuthorizedKeysCommandUser.
    pub user: String,
}

/// Where the other command was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rival {
    pub chain: Chain,
    /// `FILE:LINE` of its AuthorizedKeysCommand.
    pub place: String,
    pub file: PathBuf,
}

/// What the configuration holds besides ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No other AuthorizedKeysCommand (or `none`, or our own helper written by hand).
    Nothing,
    /// One sshd would run: chain it.
    Rival(Rival),
    /// One sshd never runs (no AuthorizedKeysCommandUser): nothing to chain.
    Inert { place: String, command: String },
    /// One that cannot be passed on faithfully.
    Unusable {
        place: String,
        command: String,
        why: &'static str,
    },
}

/// Who provides another AuthorizedKeysCommand, by its program's name (for `doctor`).
pub fn provider(command: &str) -> Option<&'static str> {
    let program = command.split_whitespace().next()?;
    let name = program.rsplit('/').next().unwrap_or(program);
    Some(match name {
        "google_authorized_keys" | "google_authorized_keys_sk" => {
            "Google's guest-oslogin (left by Google's guest agent: `guest-agent takeover` removes it)"
        }
        "eic_run_authorized_keys" | "eic_curl_authorized_keys" => "AWS EC2 Instance Connect",
        "userdbctl" => "systemd-userdbd",
        "sss_ssh_authorizedkeys" => "SSSD",
        _ => return None,
    })
}

/// Whether `program` is the agent's own: `helper`, or `guest-agent` / `guest-agent-sshd` in
/// its directory (sshd_config written by hand, or by a version that named the other one, as
/// every version before `guest-agent-sshd` named `guest-agent`).
pub fn is_ours(program: &str, helper: &str) -> bool {
    let (program, helper) = (Path::new(program), Path::new(helper));
    program == helper
        || (program.parent() == helper.parent()
            && program
                .file_name()
                .is_some_and(|n| n == "guest-agent" || n == crate::config::SSHD_PROGRAM))
}

/// The first AuthorizedKeysCommand outside `Match` and outside our own files and blocks,
/// with the first AuthorizedKeysCommandUser likewise: what sshd would run without us.
/// `helper` is our program (a line running it is not another provider's, nor one running
/// the agent's other program in the same directory: [`is_ours`]).
pub fn find(lines: &[ConfigLine], helper: &str) -> Found {
    let first = |keyword: &str| {
        lines
            .iter()
            .find(|l| l.keyword == keyword && !l.in_match && !l.managed)
    };
    let Some(line) = first("authorizedkeyscommand") else {
        return Found::Nothing;
    };
    let value = line.value.trim();
    let program = value.split_whitespace().next().unwrap_or("");
    if value.eq_ignore_ascii_case("none") || is_ours(program, helper) {
        return Found::Nothing;
    }
    let place = line.place();
    let unusable = |why| Found::Unusable {
        place: place.clone(),
        command: value.to_owned(),
        why,
    };
    if !plain(value) {
        return unusable("it has quotes, backslashes or '#', which the agent does not pass on");
    }
    if !program.starts_with('/') {
        return unusable("its program is not an absolute path");
    }
    if value.split_whitespace().any(|w| w == "--") {
        return unusable("it has a `--` argument, which the agent's helper reserves");
    }
    let Some(user) = first("authorizedkeyscommanduser") else {
        return Found::Inert {
            place,
            command: value.to_owned(),
        };
    };
    let user = user.value.trim();
    if !is_valid_name(user) {
        return unusable("its AuthorizedKeysCommandUser is not a valid user name");
    }
    Found::Rival(Rival {
        chain: Chain {
            command: value.split_whitespace().collect::<Vec<_>>().join(" "),
            user: user.to_owned(),
        },
        place,
        file: line.file.clone(),
    })
}

/// Our keys command `keys` carrying `chain`, and the AuthorizedKeysCommandUser it runs as:
/// ours (`user`) when the other command ran as that user too, else root (to become it).
pub fn chained_keys_command(
    keys: &str,
    chain: &Chain,
    user: &str,
) -> Result<(String, String), SshdError> {
    let other = command("chained AuthorizedKeysCommand", &chain.command)?;
    if !is_valid_name(&chain.user) {
        return Err(SshdError::Setting {
            setting: "chained AuthorizedKeysCommandUser",
            value: chain.user.clone(),
            rule: "must be a valid user name",
        });
    }
    let runs_as = if chain.user == user { user } else { "root" };
    Ok((
        format!("{keys} {CHAIN_USER_OPTION} {} -- {other}", chain.user),
        runs_as.to_owned(),
    ))
}

/// The files our directives may live in.
#[derive(Debug, Clone)]
pub struct Places<'a> {
    pub main: &'a Path,
    pub ssh_dir: &'a Path,
    /// The usual drop-in (`60-guest-agent.conf`).
    pub dropin: &'a Path,
    /// The early one (`00-guest-agent.conf`).
    pub early: &'a Path,
    pub dropin_dir_exists: bool,
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub layout: Layout,
    pub plan: Plan,
    /// The settings written (with the chain).
    pub settings: SshdSettings,
    pub rival: Option<Rival>,
    /// Another provider's AuthorizedPrincipalsCommand our lines now come before (not
    /// chained: certificates are OS Login's), `FILE:LINE`.
    pub shadowed_principals: Option<String>,
}

/// The settings to write given what else the configuration holds: `s` with the chain.
pub fn chained_settings(s: &SshdSettings, found: &Found) -> Result<SshdSettings, SshdError> {
    let mut s = s.clone();
    s.chain = match found {
        Found::Rival(r) => Some(r.chain.clone()),
        Found::Nothing | Found::Inert { .. } => None,
        Found::Unusable {
            place,
            command,
            why,
        } => {
            return Err(SshdError::RivalNotChainable {
                place: place.clone(),
                command: command.clone(),
                why,
            });
        }
    };
    Ok(s)
}

/// Where and what to write so that sshd uses `s`, chaining another AuthorizedKeysCommand if
/// the configuration has one. `main` is the main config's text (with or without our
/// blocks), `fs` the rest. The first layout whose lines sshd reads first wins: the usual
/// drop-in, the early drop-in, then (no `Include` of the drop-in directory) a block at the
/// end of the main config, then a block at its top.
pub fn plan(
    main: &str,
    fs: &dyn ConfigFs,
    places: &Places,
    s: &SshdSettings,
) -> Result<Placed, SshdError> {
    let base = super::strip_block(main, places.main)?;
    let ours = [places.dropin, places.early];
    let current = Overlay {
        base: fs,
        main_path: places.main,
        plan: None,
        main,
        ours: &ours,
    };
    let current_lines = flatten(places.main, places.ssh_dir, &ours, &current);
    let helper = s.keys_command.split_whitespace().next().unwrap_or("");
    let found = find(&current_lines, helper);
    let settings = chained_settings(s, &found)?;
    let covered =
        |p: &Path| places.dropin_dir_exists && super::include_covers(&base, places.ssh_dir, p);
    let mut candidates = Vec::new();
    if covered(places.dropin) {
        candidates.push(Layout::DropIn);
    }
    if covered(places.early) {
        candidates.push(Layout::EarlyDropIn);
    }
    if !covered(places.dropin) {
        candidates.push(Layout::MainBlock);
    }
    candidates.push(Layout::TopBlock);
    for layout in candidates {
        let plan = lay_out(layout, base.clone(), &settings)?;
        let view = Overlay {
            base: fs,
            main_path: places.main,
            plan: Some(&plan),
            main,
            ours: &ours,
        };
        let lines = flatten(places.main, places.ssh_dir, &ours, &view);
        if !ours_first(&lines) {
            continue;
        }
        let shadowed_principals = current_lines
            .iter()
            .find(|l| {
                l.keyword == "authorizedprincipalscommand"
                    && !l.managed
                    && !l.in_match
                    && !l.value.trim().eq_ignore_ascii_case("none")
            })
            .map(ConfigLine::place);
        let rival = match &found {
            Found::Rival(r) => Some(r.clone()),
            _ => None,
        };
        return Ok(Placed {
            layout,
            plan,
            settings,
            rival,
            shadowed_principals,
        });
    }
    // A block at the top of the main config is the first line sshd reads: unreachable.
    Err(SshdError::Setting {
        setting: "main_config",
        value: places.main.display().to_string(),
        rule: "no place in it comes before every other AuthorizedKeysCommand",
    })
}

/// Whether each of [`OURS_FIRST`] is first set (outside `Match`) by a line of ours.
fn ours_first(lines: &[ConfigLine]) -> bool {
    OURS_FIRST.iter().all(|k| {
        lines
            .iter()
            .find(|l| l.keyword == *k && !l.in_match)
            .is_some_and(|l| l.managed)
    })
}

/// The configuration as it would be with `plan` written (or as it is, without one).
struct Overlay<'a> {
    base: &'a dyn ConfigFs,
    main_path: &'a Path,
    main: &'a str,
    plan: Option<&'a Plan>,
    ours: &'a [&'a Path; 2],
}

impl Overlay<'_> {
    fn planned(&self, path: &Path) -> Option<Option<&str>> {
        let plan = self.plan?;
        if path == self.ours[0] {
            Some(plan.dropin.as_deref())
        } else if path == self.ours[1] {
            Some(plan.early.as_deref())
        } else {
            None
        }
    }
}

impl ConfigFs for Overlay<'_> {
    fn read(&self, path: &Path) -> Option<String> {
        if path == self.main_path {
            return Some(self.plan.map_or(self.main, |p| p.main.as_str()).to_owned());
        }
        match self.planned(path) {
            Some(text) => text.map(str::to_owned),
            None => self.base.read(path),
        }
    }

    fn list(&self, dir: &Path) -> Vec<PathBuf> {
        let mut entries: Vec<PathBuf> = self
            .base
            .list(dir)
            .into_iter()
            .filter(|p| self.planned(p).is_none_or(|t| t.is_some()))
            .collect();
        for ours in self.ours {
            if ours.parent() == Some(dir)
                && self.planned(ours).is_some_and(|t| t.is_some())
                && !entries.iter().any(|e| e == ours)
            {
                entries.push(ours.to_path_buf());
            }
        }
        entries
    }
}

#[cfg(test)]
#[path = "rival_tests.rs"]
mod tests;
