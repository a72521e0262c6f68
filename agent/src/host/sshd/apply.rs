//! Applying a [`Plan`](super::Plan): write atomically, validate with the real `sshd -t`, check
//! with `sshd -T` that our directives are in effect, undo everything on failure, and reload
//! sshd only when its effective configuration changed.
//!
//! `sshd -t` and `-T` need the host keys readable and the privilege-separation directory
//! (`/run/sshd` on Debian) present. At boot the agent runs before ssh.service has created
//! that directory, so it is created (root, 0755, as ssh.service's `RuntimeDirectory` would)
//! when missing. Without host keys the validation fails and the change is undone.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::rival::{self, Places, Rival};
use super::scan::RealFs;
use super::{Layout, Plan, SshdError, SshdSettings, directives, plan_disable};
use crate::host::command;
use crate::host::files;
use crate::host::service::{self, ReloadTarget, Reloaded};

/// Everything [`enable`] and [`disable`] touch or run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshdPaths {
    /// The main config, passed to sshd with `-f`.
    pub main_config: PathBuf,
    /// Our drop-in, used when the main config includes it.
    pub dropin: PathBuf,
    /// Our drop-in when another AuthorizedKeysCommand's drop-in sorts before the usual one
    /// (systemd-userdbd's `20-systemd-userdb.conf`).
    pub early_dropin: PathBuf,
    /// The base of relative `Include` patterns (sshd's compiled-in SSHDIR).
    pub ssh_dir: PathBuf,
    pub sshd: PathBuf,
    /// Created when missing before running sshd; `None` to leave it alone.
    pub privsep_dir: Option<PathBuf>,
    pub reload: ReloadTarget,
    pub timeout: Duration,
}

impl Default for SshdPaths {
    fn default() -> Self {
        SshdPaths {
            main_config: "/etc/ssh/sshd_config".into(),
            dropin: "/etc/ssh/sshd_config.d/60-guest-agent.conf".into(),
            early_dropin: "/etc/ssh/sshd_config.d/00-guest-agent.conf".into(),
            ssh_dir: "/etc/ssh".into(),
            sshd: "/usr/sbin/sshd".into(),
            privsep_dir: Some("/run/sshd".into()),
            reload: ReloadTarget::sshd(),
            timeout: command::DEFAULT_TIMEOUT,
        }
    }
}

/// What [`enable`] or [`disable`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshdReport {
    /// Where our directives are (`None` after [`disable`]).
    pub layout: Option<Layout>,
    /// Files written or removed.
    pub changed: Vec<PathBuf>,
    /// `None`: sshd's effective configuration did not change, so it was not reloaded.
    pub reloaded: Option<Reloaded>,
    /// Another AuthorizedKeysCommand our helper hands other users on to ([`enable`]).
    pub chained: Option<Rival>,
    /// Another provider's AuthorizedPrincipalsCommand our lines come before (`FILE:LINE`).
    pub shadowed_principals: Option<String>,
    /// The AuthorizedKeysCommand `sshd -T` shows after the change (`None`: nothing changed,
    /// or sshd was not asked).
    pub keys_command_after: Option<String>,
}

/// Makes sshd use `settings` (see the module documentation of [`super`] for where they go).
/// Another AuthorizedKeysCommand in the configuration is chained (see [`rival`]).
pub fn enable(paths: &SshdPaths, settings: &SshdSettings) -> Result<SshdReport, SshdError> {
    let main = read_main(&paths.main_config)?;
    let places = Places {
        main: &paths.main_config,
        ssh_dir: &paths.ssh_dir,
        dropin: &paths.dropin,
        early: &paths.early_dropin,
        dropin_dir_exists: paths.dropin.parent().is_some_and(Path::is_dir),
    };
    let placed = rival::plan(&main, &RealFs, &places, settings)?;
    let expected = directives(&placed.settings)?;
    let mut report = converge(paths, &main, &placed.plan, &expected)?;
    report.layout = Some(placed.layout);
    report.chained = placed.rival;
    report.shadowed_principals = placed.shadowed_principals;
    Ok(report)
}

/// Removes our drop-in or block, leaving the main config as it was before [`enable`]. Without
/// a main config (an image without openssh-server) nothing of ours can be in effect: only a
/// drop-in left behind (either name) is removed, and nothing is run or reloaded.
pub fn disable(paths: &SshdPaths) -> Result<SshdReport, SshdError> {
    if files::read_optional(&paths.main_config)?.is_none() {
        let mut changed = Vec::new();
        for dropin in [&paths.dropin, &paths.early_dropin] {
            if files::remove_if_exists(dropin)? {
                changed.push(dropin.clone());
            }
        }
        return Ok(SshdReport {
            layout: None,
            changed,
            reloaded: None,
            chained: None,
            shadowed_principals: None,
            keys_command_after: None,
        });
    }
    let main = read_main(&paths.main_config)?;
    let plan = plan_disable(&main, &paths.main_config)?;
    converge(paths, &main, &plan, &[])
}

fn read_main(path: &Path) -> Result<String, SshdError> {
    let bytes = files::read_optional(path)?.ok_or_else(|| SshdError::MissingConfig {
        path: path.to_path_buf(),
    })?;
    // sshd_config is ASCII in practice; a stray byte must survive the round trip, so refuse
    // to edit rather than lossily convert.
    String::from_utf8(bytes).map_err(|_| SshdError::Setting {
        setting: "main_config",
        value: path.display().to_string(),
        rule: "must be UTF-8 text to be edited; fix the file by hand",
    })
}

/// A file as it was, to put back.
struct Saved {
    path: PathBuf,
    content: Option<Vec<u8>>,
    mode: u32,
    owner: (u32, u32),
}

impl Saved {
    fn take(path: &Path) -> Result<Saved, SshdError> {
        let content = files::read_optional(path)?;
        let meta = std::fs::metadata(path).ok();
        Ok(Saved {
            path: path.to_path_buf(),
            content,
            mode: meta.as_ref().map_or(0o644, |m| m.mode() & 0o7777),
            owner: meta.as_ref().map_or((0, 0), |m| (m.uid(), m.gid())),
        })
    }

    /// Writes `new` (or removes the file for `None`), keeping the old mode and owner.
    fn write(&self, new: Option<&[u8]>) -> Result<bool, SshdError> {
        Ok(match new {
            Some(bytes) => files::write_atomic(&self.path, bytes, self.mode, Some(self.owner))?,
            None => files::remove_if_exists(&self.path)?,
        })
    }

    fn restore(&self) {
        if let Err(e) = self.write(self.content.as_deref()) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot undo a change to sshd's configuration");
        }
    }
}

fn converge(
    paths: &SshdPaths,
    main: &str,
    plan: &Plan,
    expected: &[(&'static str, String)],
) -> Result<SshdReport, SshdError> {
    // A symlinked main config is edited where it points (the link stays).
    let saved_main = Saved::take(&files::config_target(&paths.main_config))?;
    let dropins = [
        (Saved::take(&paths.dropin)?, plan.dropin.as_deref()),
        (Saved::take(&paths.early_dropin)?, plan.early.as_deref()),
    ];
    let main_changes = plan.main != main;
    let changes =
        |(saved, new): &(Saved, Option<&str>)| new.map(str::as_bytes) != saved.content.as_deref();
    let mut report = SshdReport {
        layout: None,
        changed: Vec::new(),
        reloaded: None,
        chained: None,
        shadowed_principals: None,
        keys_command_after: None,
    };
    if !main_changes && !dropins.iter().any(changes) {
        return Ok(report);
    }
    ensure_privsep_dir(paths);
    let before = effective(paths).ok();

    // Drop-ins written first, then the main config, then drop-ins removed, so that in
    // between sshd never sees our directives not at all (twice is harmless).
    let mut undo: Vec<&Saved> = Vec::new();
    let result = (|| {
        for pass in [true, false] {
            if !pass && main_changes && saved_main.write(Some(plan.main.as_bytes()))? {
                undo.push(&saved_main);
                report.changed.push(paths.main_config.clone());
            }
            for entry in &dropins {
                let (saved, new) = entry;
                if new.is_some() == pass && changes(entry) && saved.write(new.map(str::as_bytes))? {
                    undo.push(saved);
                    report.changed.push(saved.path.clone());
                }
            }
        }
        let written = report.changed.first().cloned().unwrap_or_default();
        let out = sshd(paths, &["-t"])?;
        if !out.status.success() {
            return Err(SshdError::Invalid {
                path: written,
                message: out.message(),
            });
        }
        let after = effective(paths)?;
        check_in_effect(&after, expected, &written)?;
        Ok(after)
    })();
    let after = match result {
        Ok(after) => after,
        Err(e) => {
            undo.iter().rev().for_each(|saved| saved.restore());
            if !undo.is_empty() {
                crate::events::emit(crate::events::Event::SshdRolledBack {
                    reason: short_reason(&e),
                });
            }
            return Err(e);
        }
    };
    // sshd -T without -C does not show Match blocks; a change there needs a reload too.
    let match_changed = |old: Option<&str>, new: Option<&str>| {
        let tail =
            |t: Option<&str>| t.and_then(|t| t.find("\nMatch Group ").map(|i| t[i..].to_string()));
        tail(old) != tail(new)
    };
    let needs_reload = before.as_deref() != Some(after.as_str())
        || match_changed(Some(main), Some(&plan.main))
        || dropins.iter().any(|(saved, new)| {
            let old = saved.content.as_deref().map(String::from_utf8_lossy);
            match_changed(old.as_deref(), *new)
        });
    report.keys_command_after = after
        .lines()
        .find_map(|l| l.strip_prefix("authorizedkeyscommand "))
        .map(str::to_owned);
    if needs_reload {
        report.reloaded = Some(service::reload(&paths.reload)?);
    }
    Ok(report)
}

/// A console line's worth of why sshd refused a change.
fn short_reason(e: &SshdError) -> String {
    match e {
        SshdError::Invalid { message, .. } => {
            format!("sshd -t: {}", message.lines().next().unwrap_or("failed"))
        }
        SshdError::NotInEffect { keyword, found, .. } => {
            format!("sshd -T shows `{keyword} {found}` instead of ours")
        }
        other => other.to_string(),
    }
}

fn sshd(paths: &SshdPaths, args: &[&str]) -> Result<command::Output, SshdError> {
    let config = paths.main_config.to_string_lossy();
    let mut all = args.to_vec();
    all.extend(["-f", &config]);
    Ok(command::run(&paths.sshd, &all, paths.timeout)?)
}

/// The value `sshd -T` shows for `keyword` (lowercase), `None` when it shows none.
pub fn effective_value(paths: &SshdPaths, keyword: &str) -> Result<Option<String>, SshdError> {
    ensure_privsep_dir(paths);
    let out = effective(paths)?;
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix(keyword)?.strip_prefix(' '))
        .map(str::to_owned))
}

/// `sshd -T`: the effective global configuration, one `keyword value` per line.
fn effective(paths: &SshdPaths) -> Result<String, SshdError> {
    let out = sshd(paths, &["-T"])?;
    if !out.status.success() {
        return Err(SshdError::Invalid {
            path: paths.main_config.clone(),
            message: out.message(),
        });
    }
    Ok(out.stdout)
}

/// Each expected directive shows in `sshd -T` output with our value.
fn check_in_effect(
    effective: &str,
    expected: &[(&'static str, String)],
    path: &Path,
) -> Result<(), SshdError> {
    for (keyword, value) in expected {
        let key = keyword.to_ascii_lowercase();
        let found = effective
            .lines()
            .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' '))
            .unwrap_or("(absent)");
        if found != value {
            return Err(SshdError::NotInEffect {
                path: path.to_path_buf(),
                keyword,
                expected: value.clone(),
                found: found.to_string(),
            });
        }
    }
    Ok(())
}

fn ensure_privsep_dir(paths: &SshdPaths) {
    let Some(dir) = &paths.privsep_dir else {
        return;
    };
    if !dir.parent().is_some_and(Path::is_dir) || dir.exists() {
        return;
    }
    if let Err(e) = std::fs::DirBuilder::new().mode(0o755).create(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create sshd's privilege separation directory");
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
