//! The side effects of a plan: accounts created in one pass over the account files,
//! managed keys blocks written safely inside users' homes, group memberships set in one call
//! per group, accounts deleted. Blocking: run from the reconciler's thread.
//!
//! Inside a home the agent never follows a symbolic link and never writes outside it: the home,
//! `~/.ssh` and `authorized_keys` are opened relative to directory descriptors with
//! `O_NOFOLLOW`, each must be owned by the user, and the new file is written to a temporary
//! name created with `O_EXCL` in the `.ssh` descriptor, chowned and chmodded by descriptor,
//! fsynced, and renamed over the old one within that descriptor.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, fstat, mkdirat};
use nix::unistd::{Gid, Uid, fchown};

use super::authorized_keys::render;
use crate::host::accountdb::{self, AccountDbError, AccountFiles};
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

/// Writes `user`'s managed keys block (empty `lines`: removes it). Returns whether the file
/// changed. Refuses (error) a home, `.ssh` or `authorized_keys` that is a link or belongs to
/// someone else.
pub fn write_keys(user: &PasswdEntry, lines: &[String]) -> Result<bool, ApplyError> {
    let refuse_link = |path: PathBuf| ApplyError::Link {
        path,
        user: user.name.clone(),
    };
    let owned_by_user = |dir: &DirFd, path: &Path| -> Result<(), ApplyError> {
        let st = fstat(dir.raw()).map_err(|e| ApplyError::Io {
            path: path.into(),
            source: e.into(),
        })?;
        if st.st_uid != user.uid {
            return Err(ApplyError::NotOwned {
                path: path.into(),
                owner: st.st_uid,
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
    let ssh = match home.open_child(OsStr::new(".ssh")) {
        Ok(d) => d,
        Err(e) if is_missing(&e) => {
            if lines.is_empty() {
                return Ok(false);
            }
            mkdirat(Some(home.raw()), ".ssh", Mode::from_bits_truncate(0o700)).map_err(|e| {
                ApplyError::Io {
                    path: ssh_path.clone(),
                    source: e.into(),
                }
            })?;
            let d = home.open_child(OsStr::new(".ssh"))?;
            fchown(
                d.raw(),
                Some(Uid::from_raw(user.uid)),
                Some(Gid::from_raw(user.gid)),
            )
            .map_err(|e| ApplyError::Io {
                path: ssh_path.clone(),
                source: e.into(),
            })?;
            d
        }
        Err(e) if is_link_error(&e) => return Err(refuse_link(ssh_path)),
        Err(e) => return Err(e.into()),
    };
    owned_by_user(&ssh, &ssh_path)?;
    let file_path = ssh_path.join("authorized_keys");
    let existing = match ssh.open_file(
        OsStr::new("authorized_keys"),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        0,
    ) {
        Ok(mut f) => {
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
                return write_fresh(&ssh, user, lines);
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
        Err(e) if is_missing(&e) => None,
        Err(e) if is_link_error(&e) => return Err(refuse_link(file_path)),
        Err(e) => return Err(e.into()),
    };
    let old = existing.as_deref().unwrap_or("");
    let new = render(old, lines);
    if existing.is_some() && new == old || existing.is_none() && new.is_empty() {
        return Ok(false);
    }
    Ok(files::write_atomic_at(
        &ssh,
        OsStr::new("authorized_keys"),
        new.as_bytes(),
        0o600,
        Some((user.uid, user.gid)),
    )?)
}

/// Replaces `authorized_keys` with the managed block alone (nothing of the old file kept).
fn write_fresh(ssh: &DirFd, user: &PasswdEntry, lines: &[String]) -> Result<bool, ApplyError> {
    Ok(files::write_atomic_at(
        ssh,
        OsStr::new("authorized_keys"),
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

    #[test]
    fn templates_expand_the_user_in_every_word() {
        let (p, a) = expand("/usr/sbin/useradd -m -c {user}-acct {user}", "alice").unwrap();
        assert_eq!(p.to_str(), Some("/usr/sbin/useradd"));
        assert_eq!(a, ["-m", "-c", "alice-acct", "alice"]);
        assert!(expand("", "alice").is_none());
    }
}
