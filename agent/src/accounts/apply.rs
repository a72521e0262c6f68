//! The side effects of a plan: accounts created in one pass over the account files,
//! managed keys blocks written safely inside users' homes, group memberships set in one call
//! per group, accounts deleted. Blocking: run from the reconciler's thread.
//!
//! Inside a home the agent never writes outside it: the home, `~/.ssh` and `authorized_keys`
//! are opened relative to directory descriptors with `O_NOFOLLOW`, each must be owned by the
//! user, and the new file is written to a temporary name created with `O_EXCL` in the
//! directory's descriptor, chowned and chmodded by descriptor, fsynced, and renamed over the
//! old one within that descriptor. A symbolic `~/.ssh` or `authorized_keys` is followed only
//! when the kernel resolves it beneath the home's descriptor (`openat2` with
//! `RESOLVE_BENEATH`) under the user's own filesystem credentials, to a directory and file of
//! the user's; any other link is replaced, never followed as root (see [`write_keys`]).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use super::authorized_keys::{GoogleLines, render, render_with};
use super::key_link;
use crate::host::accountdb::{self, AccountDbError, AccountFiles};
use crate::host::as_user::AsUser;
use crate::host::command::{self, CommandError};
use crate::host::files::{self, DirFd, FileError};
use crate::host::home::{self, HomePaths};
use crate::host::passwd::{GroupEntry, PasswdEntry};

/// The shadow tools the agent runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub chpasswd: PathBuf,
    pub groupadd: PathBuf,
    pub gpasswd: PathBuf,
    /// Per-user creation template (`accounts.useradd_cmd`); empty: the batch.
    pub useradd_cmd: String,
    /// Deletion template (`accounts.userdel_cmd`).
    pub userdel_cmd: String,
    pub timeout: Duration,
}

/// A command template with `{user}` replaced, split on blanks: (program, arguments).
pub fn expand(template: &str, user: &str) -> Option<(PathBuf, Vec<String>)> {
    let mut words = template
        .split_whitespace()
        .map(|w| w.replace("{user}", user));
    let program = PathBuf::from(words.next()?);
    Some((program, words.collect()))
}

fn run_template(tools: &Tools, template: &str, user: &str) -> Result<(), ApplyError> {
    let Some((program, args)) = expand(template, user) else {
        return Ok(());
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    check(&program, command::run(&program, &args, tools.timeout)?)
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            chpasswd: "/usr/sbin/chpasswd".into(),
            groupadd: "/usr/sbin/groupadd".into(),
            gpasswd: "/usr/bin/gpasswd".into(),
            useradd_cmd: String::new(),
            userdel_cmd: "/usr/sbin/userdel {user}".into(),
            timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{tool} failed ({status}): {message}")]
    Tool {
        tool: String,
        status: String,
        message: String,
    },
    #[error(
        "{path} is owned by uid {owner}, not by {user} (uid {uid}); refusing to write keys there"
    )]
    NotOwned {
        path: PathBuf,
        owner: u32,
        user: String,
        uid: u32,
    },
    #[error(
        "{path} is a symbolic link or not a regular file/directory; refusing to follow it for {user}"
    )]
    Link { path: PathBuf, user: String },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    AccountDb(#[from] AccountDbError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn check(tool: &Path, out: command::Output) -> Result<(), ApplyError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(ApplyError::Tool {
            tool: tool.display().to_string(),
            status: out.status.to_string(),
            message: out.message(),
        })
    }
}

/// Creates `names`: by default all at once by writing the account files directly
/// ([`accountdb::add_users`]: user private group, `/home/NAME`, bash, password field `*` so key
/// logins work with and without PAM and no password works), then each home from the skeleton;
/// with `accounts.useradd_cmd`, one command per user, then `chpasswd -e` sets `*` for all in one
/// run, and homes the command left empty are filled from the skeleton. The batch never gives a
/// `reserved` uid (a kept home's); with a template the uid is the command's choice.
pub fn create_users(
    tools: &Tools,
    names: &[String],
    files: &AccountFiles,
    homes: &HomePaths,
    reserved: &BTreeSet<u32>,
) -> Result<(), ApplyError> {
    if names.is_empty() {
        return Ok(());
    }
    if tools.useradd_cmd.is_empty() {
        for a in accountdb::add_users(files, names, reserved)? {
            if let Err(err) = home::create_home(homes, Path::new(&a.home), a.uid, a.uid) {
                tracing::warn!(user = %a.name, error = %err, "cannot create the home");
            }
        }
        return Ok(());
    }
    for n in names {
        run_template(tools, &tools.useradd_cmd, n)?;
    }
    let lock: String = names.iter().map(|n| format!("{n}:*\n")).collect();
    let out = command::run_with_input(
        &tools.chpasswd,
        &["-e"],
        Some(lock.as_bytes()),
        tools.timeout,
    )?;
    check(&tools.chpasswd, out)?;
    let entries = crate::host::passwd::parse_passwd(&crate::host::passwd::read(&files.passwd));
    for n in names {
        if let Some(e) = entries.iter().find(|e| &e.name == n)
            && let Err(err) = home::populate_home(homes, Path::new(&e.home), e.uid, e.gid)
        {
            tracing::warn!(user = %n, error = %err, "cannot fill the new home from the skeleton");
        }
    }
    Ok(())
}

/// Deletes accounts (the home stays), each on its own: one that fails (`userdel` refuses while
/// the user's last session is still ending) does not stop the others. Returns the failures.
pub fn delete_users(tools: &Tools, names: &[String]) -> Vec<(String, ApplyError)> {
    names
        .iter()
        .filter_map(|n| {
            run_template(tools, &tools.userdel_cmd, n)
                .err()
                .map(|e| (n.clone(), e))
        })
        .collect()
}

/// Makes `managed` ∩ members of `group` equal `members` (members the agent does not manage
/// are kept), creating the group when missing; one `gpasswd -M` when anything changes.
pub fn set_group_members(
    tools: &Tools,
    groups: &[GroupEntry],
    group: &str,
    members: &BTreeSet<String>,
    managed: &BTreeSet<String>,
) -> Result<bool, ApplyError> {
    let current: BTreeSet<String> = match groups.iter().find(|g| g.name == group) {
        Some(g) => g.members.iter().cloned().collect(),
        None if members.is_empty() => return Ok(false),
        None => {
            check(
                &tools.groupadd,
                command::run(&tools.groupadd, &["-f", group], tools.timeout)?,
            )?;
            BTreeSet::new()
        }
    };
    let wanted: BTreeSet<String> = current
        .iter()
        .filter(|m| !managed.contains(*m))
        .cloned()
        .chain(members.iter().cloned())
        .collect();
    write_members(tools, group, &current, &wanted)
}

/// Adds `add` to and removes `remove` from the members of the existing `group` (other members
/// kept); one `gpasswd -M` when anything changes. Returns whether it changed.
pub fn change_group_members(
    tools: &Tools,
    groups: &[GroupEntry],
    group: &str,
    add: &BTreeSet<String>,
    remove: &BTreeSet<String>,
) -> Result<bool, ApplyError> {
    let Some(g) = groups.iter().find(|g| g.name == group) else {
        return Ok(false);
    };
    let current: BTreeSet<String> = g.members.iter().cloned().collect();
    let wanted: BTreeSet<String> = current
        .iter()
        .filter(|m| !remove.contains(*m))
        .chain(add.iter())
        .cloned()
        .collect();
    write_members(tools, group, &current, &wanted)
}

/// `gpasswd -M` with `wanted` as the members of `group`, unless they are `current` already.
fn write_members(
    tools: &Tools,
    group: &str,
    current: &BTreeSet<String>,
    wanted: &BTreeSet<String>,
) -> Result<bool, ApplyError> {
    if wanted == current {
        return Ok(false);
    }
    let list = wanted.iter().cloned().collect::<Vec<_>>().join(",");
    check(
        &tools.gpasswd,
        command::run(&tools.gpasswd, &["-M", &list, group], tools.timeout)?,
    )?;
    Ok(true)
}

fn is_link_error(e: &FileError) -> bool {
    matches!(e, FileError::Io { source, .. } if matches!(source.raw_os_error(), Some(nix::libc::ELOOP) | Some(nix::libc::ENOTDIR)))
}

fn is_missing(e: &FileError) -> bool {
    matches!(e, FileError::Io { source, .. } if source.raw_os_error() == Some(nix::libc::ENOENT))
}

/// Why a link in the home is not followed, from the error resolving it.
fn why_not_followed(e: &FileError) -> String {
    let FileError::Io { source, .. } = e else {
        return e.to_string();
    };
    match source.raw_os_error() {
        Some(nix::libc::EXDEV) => "it leads out of the home".into(),
        Some(nix::libc::ENOENT) => "it leads nowhere (dangling)".into(),
        Some(nix::libc::ELOOP) => "too many links, or a /proc link, on the way".into(),
        Some(nix::libc::EACCES) => "the user cannot reach its target".into(),
        Some(nix::libc::ENOTDIR) => "a part of its target is not a directory".into(),
        _ => source.to_string(),
    }
}

/// Opens the directory `rel` beneath `home`, resolved by the kernel with `user`'s credentials.
fn open_beneath_as(home: &DirFd, rel: &Path, user: &PasswdEntry) -> Result<DirFd, String> {
    let _as = AsUser::enter(user.uid, user.gid)
        .map_err(|e| format!("cannot take the user's credentials to resolve it: {e}"))?;
    home.open_dir_beneath(rel).map_err(|e| why_not_followed(&e))
}

/// The uid owning an open directory or file.
fn owner_of(fd: std::os::fd::RawFd, path: &Path) -> Result<u32, ApplyError> {
    Ok(fstat(fd)
        .map_err(|e| ApplyError::Io {
            path: path.into(),
            source: e.into(),
        })?
        .st_uid)
}

/// Follows the link `~/.ssh` (its text `target`) as `user`, beneath the home: the directory it
/// leads to when that is the user's, else why not.
fn follow_ssh_dir(
    home: &DirFd,
    home_path: &Path,
    target: &Path,
    user: &PasswdEntry,
) -> Result<DirFd, String> {
    let rel = key_link::beneath(home_path, Path::new(""), target)
        .ok_or_else(|| "it points outside the home".to_string())?;
    let dir = open_beneath_as(home, &rel, user)?;
    match owner_of(dir.raw(), dir.path()) {
        Ok(uid) if uid == user.uid => Ok(dir),
        Ok(uid) => Err(format!("its target belongs to uid {uid}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Follows the link `~/.ssh/authorized_keys` (its text `target`) as `user`, beneath the home,
/// link after link: the user's directory holding the final file, the file's name there, and
/// the file when it exists (opened without following, a regular file of the user's); else why
/// not.
fn follow_keys_file(
    home: &DirFd,
    home_path: &Path,
    target: PathBuf,
    user: &PasswdEntry,
) -> Result<(DirFd, OsString, Option<std::fs::File>), String> {
    let mut dir_rel = PathBuf::from(".ssh");
    let mut target = target;
    for _ in 0..key_link::MAX_HOPS {
        let rel = key_link::beneath(home_path, &dir_rel, &target)
            .ok_or_else(|| "it points outside the home".to_string())?;
        let (rel_dir, name) =
            key_link::split(&rel).ok_or_else(|| "it does not point at a file".to_string())?;
        let dir = open_beneath_as(home, &rel_dir, user)?;
        match owner_of(dir.raw(), dir.path()) {
            Ok(uid) if uid == user.uid => {}
            Ok(uid) => return Err(format!("the directory it leads to belongs to uid {uid}")),
            Err(e) => return Err(e.to_string()),
        }
        match dir.open_file(&name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0) {
            Ok(file) => {
                let meta = file.metadata().map_err(|e| e.to_string())?;
                if !meta.is_file() {
                    return Err("its target is not a regular file".into());
                }
                let uid = std::os::unix::fs::MetadataExt::uid(&meta);
                if uid != user.uid {
                    return Err(format!("its target belongs to uid {uid}"));
                }
                return Ok((dir, name, Some(file)));
            }
            Err(e) if is_missing(&e) => return Ok((dir, name, None)),
            Err(e) if is_link_error(&e) => {
                target = dir
                    .read_link(&name)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "its target is not a regular file".to_string())?;
                dir_rel = rel_dir;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("more than {} links in a row", key_link::MAX_HOPS))
}

/// What `user` can read at `path` (a link out of the home), read by a process that is the
/// user: their own lines, or nothing when they could not read it or it is not text.
fn read_as_user(user: &PasswdEntry, path: &Path) -> String {
    const MAX: usize = 1 << 20;
    let path = path.to_string_lossy();
    let out = command::run_as(
        Path::new("/usr/bin/head"),
        &["-c", &MAX.to_string(), "--", &path],
        (user.uid, user.gid),
        MAX,
        Duration::from_secs(5),
    );
    match out {
        Ok(o) if o.status.success() => key_link::own_lines(&o.stdout).unwrap_or("").to_owned(),
        _ => String::new(),
    }
}

/// Makes `~/.ssh` (0700, the user's) in the open home.
fn make_ssh_dir(home: &DirFd, ssh_path: &Path, user: &PasswdEntry) -> Result<DirFd, ApplyError> {
    let io = |e: nix::Error| ApplyError::Io {
        path: ssh_path.to_path_buf(),
        source: e.into(),
    };
    mkdirat(Some(home.raw()), ".ssh", Mode::from_bits_truncate(0o700)).map_err(io)?;
    let d = home.open_child(OsStr::new(".ssh"))?;
    fchown(
        d.raw(),
        Some(Uid::from_raw(user.uid)),
        Some(Gid::from_raw(user.gid)),
    )
    .map_err(io)?;
    Ok(d)
}

/// Writes `user`'s managed keys block (empty `lines`: removes it). Returns whether the file
/// changed. Refuses (error) a home that is a link or belongs to someone else, and a `~/.ssh`
/// or keys file that is neither a link nor what it should be (a directory, a regular file)
/// or belongs to someone else.
///
/// A symbolic link `~/.ssh` or `~/.ssh/authorized_keys` is followed when it resolves, as the
/// user, beneath the home to a directory and file of the user's: the block is written into
/// the target and the link stays (dotfile managers). Any other link is replaced, the link
/// itself and never its target, by a regular directory or file holding what the user could
/// read at its target (their own lines, read by a process running as the user) and the
/// block; that is logged once, with where the link pointed. With no keys to write, a link is
/// left alone.
pub fn write_keys(user: &PasswdEntry, lines: &[String]) -> Result<bool, ApplyError> {
    write_keys_with(user, lines, GoogleLines::KeepUnlisted)
}

/// [`write_keys`], with Google's `# Added by Google` lines treated as `google` says.
pub fn write_keys_with(
    user: &PasswdEntry,
    lines: &[String],
    google: GoogleLines,
) -> Result<bool, ApplyError> {
    let render = |existing: &str, lines: &[String]| render_with(existing, lines, google);
    let refuse_link = |path: PathBuf| ApplyError::Link {
        path,
        user: user.name.clone(),
    };
    let owned_by_user = |dir: &DirFd, path: &Path| -> Result<(), ApplyError> {
        let owner = owner_of(dir.raw(), path)?;
        if owner != user.uid {
            return Err(ApplyError::NotOwned {
                path: path.into(),
                owner,
                user: user.name.clone(),
                uid: user.uid,
            });
        }
        Ok(())
    };
    let home_path = PathBuf::from(&user.home);
    let home = match DirFd::open_last_nofollow(&home_path) {
        Ok(d) => d,
        Err(e) if is_missing(&e) && lines.is_empty() => return Ok(false),
        Err(e) if is_link_error(&e) => return Err(refuse_link(home_path)),
        Err(e) => return Err(e.into()),
    };
    owned_by_user(&home, &home_path)?;
    let ssh_path = home_path.join(".ssh");
    let keys_path = ssh_path.join("authorized_keys");
    // The user's own lines, when a link that pointed at them is being replaced.
    let mut kept_from_link: Option<String> = None;
    let ssh = match home.open_child(OsStr::new(".ssh")) {
        Ok(d) => d,
        Err(e) if is_missing(&e) => {
            if lines.is_empty() {
                return Ok(false);
            }
            make_ssh_dir(&home, &ssh_path, user)?
        }
        Err(e) if is_link_error(&e) => {
            let Some(target) = home.read_link(OsStr::new(".ssh"))? else {
                return Err(refuse_link(ssh_path));
            };
            match follow_ssh_dir(&home, &home_path, &target, user) {
                Ok(d) => d,
                Err(_) if lines.is_empty() => return Ok(false),
                Err(reason) => {
                    let own = read_as_user(user, &keys_path);
                    // The link itself goes (never its target): unlinkat removes the entry,
                    // and refuses a directory put there meanwhile.
                    unlinkat(Some(home.raw()), ".ssh", UnlinkatFlags::NoRemoveDir).map_err(
                        |e| ApplyError::Io {
                            path: ssh_path.clone(),
                            source: e.into(),
                        },
                    )?;
                    tracing::warn!(
                        path = %ssh_path.display(),
                        points_to = %target.display(),
                        user = %user.name,
                        reason = %reason,
                        kept_lines = own.lines().count(),
                        "~/.ssh was a symbolic link the agent does not follow ({reason}); \
                         replaced by a directory of the user's whose authorized_keys holds the \
                         user's own lines and the managed keys"
                    );
                    kept_from_link = Some(own);
                    make_ssh_dir(&home, &ssh_path, user)?
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    owned_by_user(&ssh, &ssh_path)?;
    let keys_name = OsStr::new("authorized_keys");
    let (followed, opened) = match ssh.open_file(keys_name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)
    {
        Ok(f) => (None, Some(f)),
        Err(e) if is_missing(&e) => (None, None),
        Err(e) if is_link_error(&e) => {
            let Some(target) = ssh.read_link(keys_name)? else {
                return Err(refuse_link(keys_path));
            };
            match follow_keys_file(&home, &home_path, target.clone(), user) {
                Ok((dir, name, file)) => (Some((dir, name)), file),
                Err(_) if lines.is_empty() => return Ok(false),
                Err(reason) => {
                    let own = read_as_user(user, &keys_path);
                    tracing::warn!(
                        path = %keys_path.display(),
                        points_to = %target.display(),
                        user = %user.name,
                        reason = %reason,
                        kept_lines = own.lines().count(),
                        "authorized_keys was a symbolic link the agent does not follow \
                         ({reason}); replaced by a regular file of the user's holding the \
                         user's own lines and the managed keys (the link's target is untouched)"
                    );
                    // The atomic rename replaces the link itself.
                    return Ok(files::write_atomic_at(
                        &ssh,
                        keys_name,
                        render(&own, lines).as_bytes(),
                        0o600,
                        Some((user.uid, user.gid)),
                    )?);
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    let (dir, name) = match &followed {
        Some((dir, name)) => (dir, name.as_os_str()),
        None => (&ssh, keys_name),
    };
    let file_path = dir.path().join(name);
    let existing = match opened {
        Some(mut f) => {
            let meta = f.metadata().map_err(|e| ApplyError::Io {
                path: file_path.clone(),
                source: e,
            })?;
            if !meta.is_file() {
                return Err(refuse_link(file_path));
            }
            // A hard link to another file (another user's, /etc/shadow where the kernel allows
            // it): its lines are not the user's and must never be copied into the new file.
            // The atomic rename below replaces the link and leaves the other file alone.
            if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
                tracing::warn!(
                    path = %file_path.display(),
                    user = %user.name,
                    "authorized_keys is a hard link to another file; its lines are not kept"
                );
                return write_fresh(dir, name, user, lines);
            }
            let mut text = String::new();
            (&mut f)
                .take(1 << 20)
                .read_to_string(&mut text)
                .map_err(|e| ApplyError::Io {
                    path: file_path.clone(),
                    source: e,
                })?;
            Some(text)
        }
        None => kept_from_link,
    };
    let old = existing.as_deref().unwrap_or("");
    let new = render(old, lines);
    if existing.is_some() && new == old || existing.is_none() && new.is_empty() {
        return Ok(false);
    }

    Ok(files::write_atomic_at(
        dir,
        name,
        new.as_bytes(),
        0o600,
        Some((user.uid, user.gid)),
    )?)
}

/// Replaces the keys file `name` in `dir` with the managed block alone (nothing of the old
/// file kept).
fn write_fresh(
    dir: &DirFd,
    name: &OsStr,
    user: &PasswdEntry,
    lines: &[String],
) -> Result<bool, ApplyError> {
    Ok(files::write_atomic_at(
        dir,
        name,
        render("", lines).as_bytes(),
        0o600,
        Some((user.uid, user.gid)),
    )?)
}

#[cfg(test)]
mod tests {
    use super::expand;
    use crate::host::files::tests::{TempDir, is_root};
    use crate::host::passwd::PasswdEntry;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_hard_linked_authorized_keys_is_replaced_without_copying_the_other_file() {
        if !is_root() {
            eprintln!("SKIPPED a_hard_linked_authorized_keys_...: needs root (file owners)");
            return;
        }
        let tmp = TempDir::new("hardlink");
        let home = tmp.join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        let secret = tmp.join("secret");
        std::fs::write(&secret, "root:SECRET-HASH:19000::::::\n").unwrap();
        std::fs::hard_link(&secret, home.join(".ssh/authorized_keys")).unwrap();
        let user = PasswdEntry {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: home.to_string_lossy().into_owned(),
            shell: "/bin/bash".into(),
        };
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl k";
        assert!(super::write_keys(&user, &[key.to_owned()]).unwrap());
        let written = std::fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap();
        assert!(
            written.contains(key) && !written.contains("SECRET"),
            "{written}"
        );
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "root:SECRET-HASH:19000::::::\n"
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
    }

    /// A home owned by a user that exists only by number, in a temp dir.
    struct Home {
        tmp: TempDir,
        user: PasswdEntry,
    }

    const UID: u32 = 54321;
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl k";

    fn home(tag: &str) -> Option<Home> {
        if !is_root() {
            eprintln!("SKIPPED {tag}: needs root (file owners, the user's credentials)");
            return None;
        }
        let tmp = TempDir::new(tag);
        let home = tmp.join("home");
        std::fs::create_dir_all(home.join("dotfiles/ssh")).unwrap();
        std::fs::write(home.join("dotfiles/ssh/authorized_keys"), "own-key-line\n").unwrap();
        chown_r(&home);
        let user = PasswdEntry {
            name: "dot".into(),
            uid: UID,
            gid: UID,
            home: home.to_string_lossy().into_owned(),
            shell: "/bin/bash".into(),
        };
        Some(Home { tmp, user })
    }

    fn chown_r(path: &std::path::Path) {
        let out = std::process::Command::new("chown")
            .args(["-hR", &format!("{UID}:{UID}")])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success());
    }

    fn sh(script: &str) {
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn is_link(path: std::path::PathBuf) -> bool {
        std::fs::symlink_metadata(path)
            .unwrap()
            .file_type()
            .is_symlink()
    }

    #[test]
    fn a_keys_link_inside_the_home_is_followed_and_written_through() {
        let Some(h) = home("stow") else { return };
        let home = h.tmp.join("home");
        sh(&format!(
            "cd {} && mkdir .ssh && ln -s ../dotfiles/ssh/authorized_keys .ssh/authorized_keys",
            home.display()
        ));
        chown_r(&home);
        assert!(super::write_keys(&h.user, &[KEY.to_owned()]).unwrap());
        assert!(is_link(home.join(".ssh/authorized_keys")), "the link stays");
        let target = std::fs::read_to_string(home.join("dotfiles/ssh/authorized_keys")).unwrap();
        assert!(
            target.starts_with("own-key-line\n") && target.contains(KEY),
            "{target}"
        );
        assert!(
            !super::write_keys(&h.user, &[KEY.to_owned()]).unwrap(),
            "settled"
        );
        // A second hop and an absolute link inside the home are followed too.
        sh(&format!(
            "cd {h} && ln -s {h}/dotfiles/ssh/authorized_keys dotfiles/ak && \
             ln -sfn ../dotfiles/ak .ssh/authorized_keys",
            h = home.display()
        ));
        chown_r(&home);
        assert!(super::write_keys(&h.user, &[]).unwrap());
        let target = std::fs::read_to_string(home.join("dotfiles/ssh/authorized_keys")).unwrap();
        assert_eq!(target, "own-key-line\n", "block removed through two links");
        // A symlinked ~/.ssh inside the home is followed the same way.
        sh(&format!(
            "cd {} && rm -r .ssh && ln -s dotfiles/ssh .ssh",
            home.display()
        ));
        chown_r(&home);
        assert!(super::write_keys(&h.user, &[KEY.to_owned()]).unwrap());
        assert!(is_link(home.join(".ssh")));
        let target = std::fs::read_to_string(home.join("dotfiles/ssh/authorized_keys")).unwrap();
        assert!(target.contains(KEY), "{target}");
    }

    #[test]
    fn a_keys_link_out_of_the_home_is_replaced_and_its_target_untouched() {
        let Some(h) = home("escape") else { return };
        let home = h.tmp.join("home");
        let secret = h.tmp.join("secret");
        std::fs::write(&secret, "root:SECRET-HASH:19000::::::\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let shared = h.tmp.join("shared");
        std::fs::write(&shared, "shared-key-line\n").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A root-only directory inside the home: the user cannot reach it, so neither may a
        // link of theirs.
        std::fs::create_dir(home.join("locked")).unwrap();
        std::fs::write(home.join("locked/ak"), "locked-line\n").unwrap();
        chown_r(&home.join("locked/ak"));
        std::fs::set_permissions(home.join("locked"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        for (target, kept) in [
            (secret.to_string_lossy().into_owned(), None),
            ("../../secret".to_string(), None),
            ("../../shared".to_string(), Some("shared-key-line")),
            ("../locked/ak".to_string(), None),
            ("../../nowhere".to_string(), None),
        ] {
            sh(&format!(
                "cd {} && rm -rf .ssh && mkdir .ssh && ln -s {target} .ssh/authorized_keys && \
                 chown -h {UID}:{UID} .ssh .ssh/authorized_keys",
                home.display()
            ));
            assert!(
                super::write_keys(&h.user, &[KEY.to_owned()]).unwrap(),
                "{target}"
            );
            let ak = home.join(".ssh/authorized_keys");
            assert!(!is_link(ak.clone()), "{target}: replaced");
            let text = std::fs::read_to_string(&ak).unwrap();
            assert!(text.contains(KEY), "{target}: {text}");
            assert!(
                !text.contains("SECRET") && !text.contains("locked-line"),
                "{target}: {text}"
            );
            if let Some(line) = kept {
                assert!(text.starts_with(line), "{target}: own lines kept: {text}");
            }
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(&ak).unwrap();
            assert_eq!((meta.uid(), meta.mode() & 0o777), (UID, 0o600));
        }
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "root:SECRET-HASH:19000::::::\n"
        );
        assert_eq!(
            std::fs::read_to_string(&shared).unwrap(),
            "shared-key-line\n"
        );
        assert_eq!(
            std::fs::read_to_string(home.join("locked/ak")).unwrap(),
            "locked-line\n"
        );
        // A ~/.ssh pointing out of the home: the link is replaced by a real directory.
        let outside = h.tmp.join("outside-ssh");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("authorized_keys"), "root-only\n").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
        sh(&format!(
            "cd {} && rm -rf .ssh && ln -s {} .ssh && chown -h {UID}:{UID} .ssh",
            home.display(),
            outside.display()
        ));
        // No keys to write: the link is left alone.
        assert!(!super::write_keys(&h.user, &[]).unwrap());
        assert!(is_link(home.join(".ssh")));
        assert!(super::write_keys(&h.user, &[KEY.to_owned()]).unwrap());
        assert!(!is_link(home.join(".ssh")) && home.join(".ssh").is_dir());
        let text = std::fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap();
        assert!(text.contains(KEY) && !text.contains("root-only"), "{text}");
        assert_eq!(
            std::fs::read_to_string(outside.join("authorized_keys")).unwrap(),
            "root-only\n"
        );
    }

    #[test]
    fn templates_expand_the_user_in_every_word() {
        let (p, a) = expand("/usr/sbin/useradd -m -c {user}-acct {user}", "alice").unwrap();
        assert_eq!(p.to_str(), Some("/usr/sbin/useradd"));
        assert_eq!(a, ["-m", "-c", "alice-acct", "alice"]);
        assert!(expand("", "alice").is_none());
    }
}
