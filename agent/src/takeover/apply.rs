//! The takeover's effects: [`gather`] reads what Google's agent left, [`execute`] carries out a
//! [`Plan`] step by step, saving every file it changes first, and [`undo`] puts those files
//! back from what it saved. The report (`takeover.json`) says what was done; the saved files
//! sit beside it in `takeover/` (root only, 0700).

use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::google;
use super::plan::{Change, Found, Plan, Step, TracePaths, UNITS, UnitState};
use super::{Backup, BackupKind, Report, Status, TakeoverError};
use crate::host::accountdb::{self, AccountFiles};
use crate::host::command;
use crate::host::files;
use crate::host::passwd;
use crate::host::service::{self, ReloadTarget};
use crate::host::sudoers;

/// Everything the takeover reads, writes and runs.
#[derive(Debug, Clone)]
pub struct Paths {
    pub traces: TracePaths,
    pub report: PathBuf,
    pub backups: PathBuf,
    pub accounts: AccountFiles,
    /// Our sudo rule (see [`crate::accounts::reconciler::Paths`]).
    pub our_sudoers: PathBuf,
    pub sshd: PathBuf,
    pub sshd_reload: ReloadTarget,
    pub systemd_marker: PathBuf,
    pub systemctl: PathBuf,
    /// Where unit files live (a unit none of them holds is not asked about).
    pub unit_dirs: Vec<PathBuf>,
    pub gpasswd: PathBuf,
    pub groupadd: PathBuf,
    pub timeout: Duration,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            traces: TracePaths::default(),
            report: super::REPORT_PATH.into(),
            backups: "/var/lib/guest-agent/takeover".into(),
            accounts: AccountFiles::default(),
            our_sudoers: "/etc/sudoers.d/guest-agent-sudoers".into(),
            sshd: "/usr/sbin/sshd".into(),
            sshd_reload: ReloadTarget::sshd(),
            systemd_marker: "/run/systemd/system".into(),
            systemctl: "/usr/bin/systemctl".into(),
            unit_dirs: vec![
                "/etc/systemd/system".into(),
                "/run/systemd/system".into(),
                "/usr/lib/systemd/system".into(),
                "/lib/systemd/system".into(),
            ],
            gpasswd: "/usr/bin/gpasswd".into(),
            groupadd: "/usr/sbin/groupadd".into(),
            timeout: command::DEFAULT_TIMEOUT,
        }
    }
}

/// What the executor needs to know besides the files.
#[derive(Debug, Clone)]
pub struct Context {
    pub oslogin_on: bool,
    pub two_factor: bool,
    pub sudo_group: String,
    /// Our AuthorizedKeysCommand program (`OsLoginConfig::sshd_program`): with OS Login on, sshd must
    /// show it in effect once Google's block is gone.
    pub helper: String,
}

fn read_text(path: &Path) -> Option<String> {
    let target = files::config_target(path);
    std::fs::read(target)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Reads what Google's agent left (see [`Found`]).
pub fn gather(paths: &Paths, ctx: &Context) -> Found {
    let t = &paths.traces;
    let mut whole_files: Vec<PathBuf> = [&t.trusted_ca, &t.sudoers_users, &t.sudoers_oslogin]
        .into_iter()
        .chain(t.caches.iter())
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .cloned()
        .collect();
    let mut dirs = Vec::new();
    for dir in [&t.sudoers_dir, &t.users_dir] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut inside: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
            .collect();
        inside.sort();
        whole_files.extend(inside);
        dirs.push(dir.clone());
    }
    let groups = passwd::parse_group(&passwd::read(&paths.accounts.group));
    let sudoers_members = groups
        .iter()
        .find(|g| g.name == google::SUDO_GROUP)
        .map(|g| g.members.clone());
    // systemctl is asked only about units whose file exists: the daemon gathers on every pass
    // until a takeover happened, and a VM that never ran Google's agent must not spawn
    // systemctl each time.
    let systemd = paths.systemd_marker.is_dir();
    let units = if systemd {
        UNITS
            .iter()
            .filter(|u| paths.unit_dirs.iter().any(|d| d.join(u).exists()))
            .filter_map(|u| unit_state(paths, u))
            .collect()
    } else {
        Vec::new()
    };
    let our_sudo_rule = sudoers::read(&paths.our_sudoers)
        .is_ok_and(|g| g.contains(&sudoers::Grantee::Group(ctx.sudo_group.clone())));
    Found {
        sshd_config: read_text(&t.sshd_config),
        pam_sshd: read_text(&t.pam_sshd),
        group_conf: read_text(&t.group_conf),
        nsswitch: read_text(&t.nsswitch),
        google_users: std::fs::read_to_string(&t.google_users).ok(),
        whole_files,
        dirs,
        sudoers_members,
        local: passwd::parse_passwd(&passwd::read(&paths.accounts.passwd)),
        shadow: std::fs::read_to_string(&paths.accounts.shadow).unwrap_or_default(),
        uid_range: accountdb::uid_range(&paths.accounts),
        units,
        oslogin_on: ctx.oslogin_on,
        two_factor: ctx.two_factor,
        our_module: crate::host::nsswitch::DEFAULT_MODULE.into(),
        our_sudo_group: ctx.sudo_group.clone(),
        our_sudo_rule,
    }
}

fn unit_state(paths: &Paths, unit: &str) -> Option<UnitState> {
    let run = |args: &[&str]| command::run(&paths.systemctl, args, paths.timeout).ok();
    let enabled = run(&["is-enabled", unit])?;
    let word = enabled.stdout.trim();
    if word.is_empty() || word == "not-found" || enabled.stderr.contains("No such file") {
        return None;
    }
    let active = run(&["is-active", unit]).is_some_and(|o| o.status.success());
    Some(UnitState {
        unit: unit.into(),
        active,
        enabled: matches!(
            word,
            "enabled" | "enabled-runtime" | "alias" | "static" | "indirect"
        ) && word != "static",
    })
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Saves `path` (a file, or an empty directory's mode and owner) into the backup directory
/// before it changes.
fn save(paths: &Paths, report: &mut Report, path: &Path) -> Result<(), TakeoverError> {
    let err = |e: std::io::Error| TakeoverError::Io {
        action: "save",
        path: path.to_path_buf(),
        source: e,
    };
    if report.backups.iter().any(|b| b.path == path) {
        return Ok(());
    }
    let target = files::config_target(path);
    let meta = std::fs::symlink_metadata(&target).map_err(err)?;
    let kind = if meta.is_dir() {
        BackupKind::Dir
    } else if std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()) {
        // Never read: a FIFO without a writer would hang us.
        BackupKind::Fifo
    } else {
        let bytes = std::fs::read(&target).map_err(err)?;
        let name = format!("{:04}", report.backups.len() + 1);
        files::write_atomic(&paths.backups.join(&name), &bytes, 0o600, None)?;
        BackupKind::File { saved: name }
    };
    report.backups.push(Backup {
        path: path.to_path_buf(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    });
    Ok(())
}

/// The backup directory (0700), its parent made 0755 when missing: the state directory
/// holds the NSS module's cache, which every process reads (a `guest-agent takeover` run before
/// the daemon ever started must not make it root-only).
fn ensure_backup_dir(paths: &Paths) -> Result<(), TakeoverError> {
    let create = |dir: &Path, mode: u32| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|e| TakeoverError::Io {
                action: "create",
                path: dir.to_path_buf(),
                source: e,
            })
    };
    if let Some(parent) = paths.backups.parent() {
        create(parent, 0o755)?;
    }
    create(&paths.backups, 0o700)
}

/// Writes `new` over the config file `path`, keeping its mode and owner.
fn rewrite(path: &Path, new: &str) -> Result<(), TakeoverError> {
    let target = files::config_target(path);
    let meta = std::fs::metadata(&target).map_err(|e| TakeoverError::Io {
        action: "stat",
        path: target.clone(),
        source: e,
    })?;
    files::write_atomic(
        &target,
        new.as_bytes(),
        meta.mode() & 0o7777,
        Some((meta.uid(), meta.gid())),
    )?;
    Ok(())
}

fn remove(change: &Change) -> Result<(), TakeoverError> {
    match change {
        Change::Remove { path } => {
            files::remove_if_exists(path)?;
        }
        Change::RemoveDir { path } => match std::fs::remove_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(TakeoverError::Io {
                    action: "remove the directory",
                    path: path.clone(),
                    source: e,
                });
            }
        },
        Change::Rewrite { path, new, .. } => rewrite(path, new)?,
    }
    Ok(())
}

/// sshd with the new config: `sshd -t` passes, and with OS Login on `sshd -T` shows our helper
/// as the AuthorizedKeysCommand. `Err`: why not.
fn sshd_accepts(paths: &Paths, ctx: &Context) -> Result<(), String> {
    let config = paths.traces.sshd_config.to_string_lossy().into_owned();
    let run = |flag: &str| {
        command::run(&paths.sshd, &[flag, "-f", &config], paths.timeout).map_err(|e| format!("{e}"))
    };
    let t = run("-t")?;
    if !t.status.success() {
        return Err(format!("sshd -t refused it: {}", t.message()));
    }
    if ctx.oslogin_on {
        let big_t = run("-T")?;
        let keys = big_t
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("authorizedkeyscommand "))
            .unwrap_or("(none)");
        let program = keys.split_whitespace().next().unwrap_or("");
        if !crate::host::sshd::rival::is_ours(program, &ctx.helper) {
            return Err(format!(
                "without Google's block sshd's AuthorizedKeysCommand would be {keys:?}, not \
                 guest-agent's {}",
                ctx.helper
            ));
        }
    }
    Ok(())
}

/// Carries out `plan` (see [`super::plan`] for the order), saving each file first; the report
/// is written before the first change (status `in_progress`) and after the last.
pub fn execute(plan: &Plan, paths: &Paths, ctx: &Context) -> Result<Report, TakeoverError> {
    if let Some(why) = &plan.refused {
        return Err(TakeoverError::Refused(why.clone()));
    }
    ensure_backup_dir(paths)?;
    let mut report = Report {
        version: super::REPORT_VERSION,
        from: "google".into(),
        status: Status::InProgress,
        at: now_unix(),
        undone_at: None,
        changes: Vec::new(),
        units: Vec::new(),
        sudo_added: BTreeSet::new(),
        adoption: plan.adoption.clone(),
        kept: plan.kept.clone(),
        failed: Vec::new(),
        backups: Vec::new(),
    };
    report.save(&paths.report)?;
    for step in [
        Step::Sshd,
        Step::Units,
        Step::Nsswitch,
        Step::Pam,
        Step::Sudo,
        Step::Users,
    ] {
        if step == Step::Units {
            stop_units(plan, paths, &mut report);
        }
        if step == Step::Sudo && !plan.sudo_add.is_empty() {
            add_to_sudo_group(plan, paths, ctx, &mut report)?;
        }
        let mut failed = false;
        for (_, change) in plan.changes.iter().filter(|(s, _)| *s == step) {
            if failed {
                report.kept.push((
                    change.path().display().to_string(),
                    format!("kept: the {step:?} step failed before it"),
                ));
                continue;
            }
            save(paths, &mut report, change.path())?;
            remove(change)?;
            if step == Step::Sshd && matches!(change, Change::Rewrite { .. }) {
                if let Err(why) = sshd_accepts(paths, ctx) {
                    // Put back at once: sshd reads its file only when reloaded.
                    restore_one(paths, &report, change.path())?;
                    report
                        .kept
                        .push((change.path().display().to_string(), why.clone()));
                    report.failed.push(why);
                    failed = true;
                    continue;
                }
                if let Err(e) = service::reload(&paths.sshd_reload) {
                    report.failed.push(format!("reloading sshd: {e}"));
                }
            }
            report.changes.push((step, change.clone()));
            report.save(&paths.report)?;
        }
    }
    report.status = Status::Done;
    report.save(&paths.report)?;
    Ok(report)
}

fn stop_units(plan: &Plan, paths: &Paths, report: &mut Report) {
    for u in &plan.units {
        let out = command::run(
            &paths.systemctl,
            &["disable", "--now", &u.unit],
            paths.timeout,
        );
        match out {
            Ok(o) if o.status.success() => report.units.push(u.clone()),
            Ok(o) => report.failed.push(format!(
                "systemctl disable --now {}: {}",
                u.unit,
                o.message()
            )),
            Err(e) => report
                .failed
                .push(format!("systemctl disable --now {}: {e}", u.unit)),
        }
    }
}

fn add_to_sudo_group(
    plan: &Plan,
    paths: &Paths,
    ctx: &Context,
    report: &mut Report,
) -> Result<(), TakeoverError> {
    let groups = passwd::parse_group(&passwd::read(&paths.accounts.group));
    let current: BTreeSet<String> = groups
        .iter()
        .find(|g| g.name == ctx.sudo_group)
        .map(|g| g.members.iter().cloned().collect())
        .unwrap_or_default();
    if !groups.iter().any(|g| g.name == ctx.sudo_group) {
        let out = command::run(&paths.groupadd, &["-f", &ctx.sudo_group], paths.timeout)?;
        if !out.status.success() {
            return Err(TakeoverError::Tool(format!(
                "groupadd -f {}: {}",
                ctx.sudo_group,
                out.message()
            )));
        }
    }
    for m in plan.sudo_add.difference(&current) {
        let out = command::run(&paths.gpasswd, &["-a", m, &ctx.sudo_group], paths.timeout)?;
        if !out.status.success() {
            return Err(TakeoverError::Tool(format!(
                "gpasswd -a {m} {}: {}",
                ctx.sudo_group,
                out.message()
            )));
        }
        report.sudo_added.insert(m.clone());
    }
    Ok(())
}

/// Puts one saved path back.
fn restore_one(paths: &Paths, report: &Report, path: &Path) -> Result<(), TakeoverError> {
    let Some(b) = report.backups.iter().find(|b| b.path == path) else {
        return Ok(());
    };
    restore(paths, b)
}

fn restore(paths: &Paths, b: &Backup) -> Result<(), TakeoverError> {
    let io = |action: &'static str| {
        move |e: std::io::Error| TakeoverError::Io {
            action,
            path: b.path.clone(),
            source: e,
        }
    };
    let made = match &b.kind {
        BackupKind::Dir => {
            if !b.path.is_dir() {
                std::fs::DirBuilder::new()
                    .mode(b.mode)
                    .create(&b.path)
                    .map_err(io("create"))?;
            }
            true
        }
        BackupKind::Fifo => {
            if std::fs::symlink_metadata(&b.path).is_err() {
                nix::unistd::mkfifo(&b.path, nix::sys::stat::Mode::from_bits_truncate(b.mode))
                    .map_err(|e| io("create the FIFO")(e.into()))?;
            }
            true
        }
        BackupKind::File { saved } => {
            let bytes =
                std::fs::read(paths.backups.join(saved)).map_err(io("read the saved copy of"))?;
            let target = files::config_target(&b.path);
            files::write_atomic(&target, &bytes, b.mode, Some((b.uid, b.gid)))?;
            false
        }
    };
    // A directory or FIFO made again (or still there) gets its owner and mode back; a file's
    // were set by the atomic write.
    if made {
        nix::unistd::chown(
            &b.path,
            Some(nix::unistd::Uid::from_raw(b.uid)),
            Some(nix::unistd::Gid::from_raw(b.gid)),
        )
        .map_err(|e| io("chown")(e.into()))?;
        std::fs::set_permissions(
            &b.path,
            std::os::unix::fs::PermissionsExt::from_mode(b.mode),
        )
        .map_err(io("chmod"))?;
    }
    Ok(())
}

/// Puts back every file and directory the takeover changed, byte for byte with its mode and
/// owner, takes out of our sudo group the members it put there, enables and starts the units
/// it stopped, reloads sshd, and marks the report `undone` (the daemon does not take over
/// again by itself after that).
pub fn undo(paths: &Paths, ctx: &Context) -> Result<Report, TakeoverError> {
    let mut report = Report::load(&paths.report)?.ok_or_else(|| {
        TakeoverError::Undo(format!(
            "{} does not exist: there is no takeover to undo",
            paths.report.display()
        ))
    })?;
    if report.status == Status::Undone {
        return Err(TakeoverError::Undo(format!(
            "the takeover of {} was undone already",
            report.at
        )));
    }
    // Directories first (files go back into them), in the order they were saved.
    let (dirs, plain): (Vec<&Backup>, Vec<&Backup>) = report
        .backups
        .iter()
        .partition(|b| matches!(b.kind, BackupKind::Dir));
    for b in dirs.into_iter().chain(plain) {
        restore(paths, b)?;
    }
    for m in &report.sudo_added {
        let out = command::run(&paths.gpasswd, &["-d", m, &ctx.sudo_group], paths.timeout)?;
        if !out.status.success() {
            report.failed.push(format!(
                "gpasswd -d {m} {}: {}",
                ctx.sudo_group,
                out.message()
            ));
        }
    }
    for u in &report.units {
        let mut args = vec!["enable"];
        if u.active {
            args.push("--now");
        }
        args.push(&u.unit);
        if let Ok(o) = command::run(&paths.systemctl, &args, paths.timeout)
            && !o.status.success()
        {
            report
                .failed
                .push(format!("systemctl {}: {}", args.join(" "), o.message()));
        }
    }
    if let Err(e) = service::reload(&paths.sshd_reload) {
        report.failed.push(format!("reloading sshd: {e}"));
    }
    report.status = Status::Undone;
    report.undone_at = Some(now_unix());
    report.save(&paths.report)?;
    Ok(report)
}
