//! Adding many local accounts at once by writing the account files directly, the way
//! `useradd` and `newusers` do it, without their per-user cost: Debian's `newusers` runs PAM's
//! password change (a yescrypt hash, then a rewrite of /etc/shadow) for every user, which puts
//! 1,000 users at over 20 s. Here the four files are read once, the new entries appended, and
//! each file replaced atomically, under the shadow suite's lock (`lckpwdf`), so `useradd`,
//! `passwd` and friends never interleave with us.
//!
//! Every new user gets a user private group with the same number as its uid (the lowest number
//! in `UID_MIN..=UID_MAX` of login.defs that is free both as a uid and as a gid), `/bin/bash`,
//! `/home/NAME`, and `*` as its password (key logins work with and without PAM; no password
//! login). The files are written group, gshadow, shadow, then passwd: a crash in between leaves
//! at most unused group or shadow lines, never a user without its shadow entry. The names of a
//! pass are recorded (`pending`) before the first file is written and forgotten once passwd
//! is, so the next pass can tell such leftovers from an operator's groups and completes them:
//! the orphan group of a recorded name (no members, a number in the uid range that no user
//! holds) becomes its private group, and lines already in shadow or gshadow are not written
//! twice.
//!
//! A uid is free only when no account or group holds it and it is not `reserved`: the caller
//! reserves the owners of kept homes ([`reserved_uids`]), so an account deleted with its home
//! kept never hands that home and its files to the next new user.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::files::{self, FileError};
use super::passwd::{parse_group, parse_passwd};

#[derive(Debug, Clone)]
pub struct AccountFiles {
    pub passwd: PathBuf,
    pub shadow: PathBuf,
    pub group: PathBuf,
    pub gshadow: PathBuf,
    pub login_defs: PathBuf,
    /// The names of the pass in progress, kept until passwd is written.
    pub pending: PathBuf,
    /// Take the shadow suite's lock (`lckpwdf`, on /etc/.pwd.lock). Off only in unit tests,
    /// whose files are not the system's.
    pub lock: bool,
}

impl Default for AccountFiles {
    fn default() -> Self {
        AccountFiles {
            passwd: "/etc/passwd".into(),
            shadow: "/etc/shadow".into(),
            group: "/etc/group".into(),
            gshadow: "/etc/gshadow".into(),
            login_defs: "/etc/login.defs".into(),
            pending: "/var/lib/guest-agent/accounts-pending".into(),
            lock: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountDbError {
    #[error(
        "cannot take the account files' lock (/etc/.pwd.lock): {0}; is useradd or passwd running?"
    )]
    Lock(std::io::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free uid/gid left between {min} and {max} (login.defs UID_MIN/UID_MAX)")]
    NoFreeId { min: u32, max: u32 },
    #[error("{name} already exists in {path}")]
    Exists { name: String, path: PathBuf },
    #[error(transparent)]
    File(#[from] FileError),
}

unsafe extern "C" {
    fn lckpwdf() -> std::os::raw::c_int;
    fn ulckpwdf() -> std::os::raw::c_int;
}

/// Holds `lckpwdf` until dropped.
struct PwLock;

impl PwLock {
    fn take() -> Result<PwLock, AccountDbError> {
        // SAFETY: lckpwdf takes no arguments and only locks /etc/.pwd.lock (waiting up to 15 s).
        if unsafe { lckpwdf() } != 0 {
            return Err(AccountDbError::Lock(std::io::Error::last_os_error()));
        }
        Ok(PwLock)
    }
}

impl Drop for PwLock {
    fn drop(&mut self) {
        // SAFETY: releases the lock taken in `take`.
        unsafe { ulckpwdf() };
    }
}

/// A `login.defs` number.
fn login_def(text: &str, key: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(key))
            .then(|| w.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

/// A created account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    pub name: String,
    pub uid: u32,
    pub home: String,
}

/// login.defs `UID_MIN..=UID_MAX` (1000..=60000 when unset): the uids of regular accounts.
pub fn uid_range(f: &AccountFiles) -> (u32, u32) {
    let defs = std::fs::read_to_string(&f.login_defs).unwrap_or_default();
    (
        login_def(&defs, "UID_MIN").unwrap_or(1000),
        login_def(&defs, "UID_MAX").unwrap_or(60000),
    )
}

/// The names of a creation that was interrupted (their leftover groups are theirs).
pub fn pending_names(f: &AccountFiles) -> BTreeSet<String> {
    read_pending(&f.pending)
}

/// uids no new account may get: the owner of every entry directly in `home_base` (a kept home,
/// whoever deleted its account; a symbolic link is not followed) and each `retired` uid whose
/// home path still exists (its files may carry the uid after the home itself was chowned).
pub fn reserved_uids(home_base: &Path, retired: &BTreeMap<u32, String>) -> BTreeSet<u32> {
    let mut out: BTreeSet<u32> = std::fs::read_dir(home_base)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.path().symlink_metadata().ok())
        .map(|m| m.uid())
        .filter(|&uid| uid != 0)
        .collect();
    out.extend(
        retired
            .iter()
            .filter(|(_, home)| Path::new(home).symlink_metadata().is_ok())
            .map(|(uid, _)| *uid),
    );
    out
}

/// The new entries (pure): for each name, an id free as uid and gid and not `reserved`, or the
/// number of the group an interrupted pass left for a `resumable` name. Returns the accounts
/// and the four texts to append (passwd, shadow, group, gshadow).
#[allow(clippy::too_many_arguments)]
pub fn plan_entries(
    names: &[String],
    resumable: &BTreeSet<String>,
    passwd: &str,
    group: &str,
    reserved: &BTreeSet<u32>,
    min: u32,
    max: u32,
    days_since_epoch: u64,
) -> Result<(Vec<NewAccount>, [String; 4]), AccountDbError> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let mut taken: BTreeSet<u32> = users
        .iter()
        .map(|u| u.uid)
        .chain(groups.iter().map(|g| g.gid))
        .chain(reserved.iter().copied())
        .collect();
    let mut out = Vec::new();
    let mut text: [String; 4] = Default::default();
    let mut next = min;
    for name in names {
        let exists = || AccountDbError::Exists {
            name: name.clone(),
            path: "/etc/passwd or /etc/group".into(),
        };
        if users.iter().any(|u| &u.name == name) {
            return Err(exists());
        }
        let id = match groups.iter().find(|g| &g.name == name) {
            // Left by a pass that was interrupted before passwd was written: completed.
            Some(g)
                if resumable.contains(name)
                    && g.members.is_empty()
                    && (min..=max).contains(&g.gid)
                    && !users.iter().any(|u| u.uid == g.gid) =>
            {
                g.gid
            }
            Some(_) => return Err(exists()),
            None => {
                while taken.contains(&next) {
                    next += 1;
                }
                if next > max {
                    return Err(AccountDbError::NoFreeId { min, max });
                }
                text[2].push_str(&format!("{name}:x:{next}:\n"));
                next
            }
        };
        taken.insert(id);
        let home = format!("/home/{name}");
        text[0].push_str(&format!("{name}:x:{id}:{id}::{home}:/bin/bash\n"));
        text[1].push_str(&format!("{name}:*:{days_since_epoch}:0:99999:7:::\n"));
        text[3].push_str(&format!("{name}:!::\n"));
        out.push(NewAccount {
            name: name.clone(),
            uid: id,
            home,
        });
    }
    Ok((out, text))
}

fn read(path: &Path) -> Result<(String, u32, (u32, u32)), AccountDbError> {
    let err = |source| AccountDbError::Read {
        path: path.into(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let text = std::fs::read_to_string(path).map_err(err)?;
    Ok((text, meta.mode() & 0o7777, (meta.uid(), meta.gid())))
}

/// Appends the lines of `extra` whose name the file does not hold yet (an interrupted pass may
/// have written them), keeping its mode and owner; a missing final newline is added.
fn append(
    path: &Path,
    (text, mode, owner): &(String, u32, (u32, u32)),
    extra: &str,
) -> Result<(), AccountDbError> {
    let present: BTreeSet<&str> = text.lines().filter_map(|l| l.split(':').next()).collect();
    let extra: String = extra
        .split_inclusive('\n')
        .filter(|l| l.split(':').next().is_none_or(|n| !present.contains(n)))
        .collect();
    if extra.is_empty() {
        return Ok(());
    }
    let mut new = text.clone();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&extra);
    files::write_atomic(path, new.as_bytes(), *mode, Some(*owner))?;
    Ok(())
}

/// The first line of the pending file: a version, as in every state file. Version 1 (0.1.0)
/// had no header; the names are read the same way in every version (a line starting with `#`
/// is never a name), so an older or newer agent reads the file of another.
const PENDING_HEADER: &str = "# guest-agent accounts-pending, version 2";

/// The names of an interrupted pass.
fn read_pending(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Records the names of a pass in progress (an empty set removes the file).
fn write_pending(path: &Path, names: &BTreeSet<String>) -> Result<(), AccountDbError> {
    if names.is_empty() {
        files::remove_if_exists(path)?;
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| AccountDbError::Read {
            path: dir.into(),
            source,
        })?;
    }
    let mut text = format!("{PENDING_HEADER}\n");
    text.extend(names.iter().map(|n| format!("{n}\n")));
    files::write_atomic(path, text.as_bytes(), 0o600, None)?;
    Ok(())
}

/// Adds `names` (which must not exist) in one pass over the four files, never with a uid in
/// `reserved`.
pub fn add_users(
    f: &AccountFiles,
    names: &[String],
    reserved: &BTreeSet<u32>,
) -> Result<Vec<NewAccount>, AccountDbError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let _lock = if f.lock { Some(PwLock::take()?) } else { None };
    let defs = std::fs::read_to_string(&f.login_defs).unwrap_or_default();
    let min = login_def(&defs, "UID_MIN")
        .unwrap_or(1000)
        .max(login_def(&defs, "GID_MIN").unwrap_or(1000));
    let max = login_def(&defs, "UID_MAX")
        .unwrap_or(60000)
        .min(login_def(&defs, "GID_MAX").unwrap_or(60000));
    let (passwd, shadow, group, gshadow) = (
        read(&f.passwd)?,
        read(&f.shadow)?,
        read(&f.group)?,
        read(&f.gshadow)?,
    );
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let earlier = read_pending(&f.pending);
    let (accounts, [p, s, g, gs]) = plan_entries(
        names, &earlier, &passwd.0, &group.0, reserved, min, max, days,
    )?;
    let mut pending = earlier.clone();
    pending.extend(names.iter().cloned());
    write_pending(&f.pending, &pending)?;
    append(&f.group, &group, &g)?;
    append(&f.gshadow, &gshadow, &gs)?;
    append(&f.shadow, &shadow, &s)?;
    append(&f.passwd, &passwd, &p)?;
    let rest: BTreeSet<String> = earlier.into_iter().filter(|n| !names.contains(n)).collect();
    write_pending(&f.pending, &rest)?;
    Ok(accounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::files::tests::TempDir;

    #[test]
    fn ids_are_free_as_both_uid_and_gid_and_entries_are_complete() {
        let passwd = "root:x:0:0::/root:/bin/bash\nbob:x:1000:1000::/home/bob:/bin/sh\n";
        let group = "root:x:0:\nbob:x:1000:\nstaff:x:1001:\n";
        let names = vec!["alice".to_string(), "carol".to_string()];
        let none = BTreeSet::new();
        let none_ids = BTreeSet::new();
        let (acc, [p, s, g, gs]) =
            plan_entries(&names, &none, passwd, group, &none_ids, 1000, 60000, 20000).unwrap();
        assert_eq!(
            acc.iter().map(|a| a.uid).collect::<Vec<_>>(),
            vec![1002, 1003]
        );
        assert_eq!(
            p,
            "alice:x:1002:1002::/home/alice:/bin/bash\ncarol:x:1003:1003::/home/carol:/bin/bash\n"
        );
        assert_eq!(s.lines().next(), Some("alice:*:20000:0:99999:7:::"));
        assert_eq!(g.lines().next(), Some("alice:x:1002:"));
        assert_eq!(gs.lines().next(), Some("alice:!::"));
        assert!(
            plan_entries(
                &["bob".into()],
                &none,
                passwd,
                group,
                &none_ids,
                1000,
                60000,
                1
            )
            .is_err(),
            "exists"
        );
        assert!(
            plan_entries(
                &["staff".into()],
                &none,
                passwd,
                group,
                &none_ids,
                1000,
                60000,
                1
            )
            .is_err(),
            "a group of that name exists"
        );
        assert!(matches!(
            plan_entries(&names, &none, passwd, group, &none_ids, 1000, 1002, 1),
            Err(AccountDbError::NoFreeId { .. })
        ));
    }

    #[test]
    fn a_pass_interrupted_before_passwd_is_completed_without_duplicates() {
        let dir = TempDir::new("accountdb-orphan");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        // Killed after group, gshadow and shadow were written for alice, and after group only
        // for carol: passwd has neither.
        let f = AccountFiles {
            passwd: write("passwd", "root:x:0:0::/root:/bin/bash\n"),
            shadow: write("shadow", "root:*:1:0:99999:7:::\nalice:*:1:0:99999:7:::\n"),
            group: write(
                "group",
                "root:x:0:\nalice:x:1000:\ncarol:x:1001:\nstaff:x:1002:bob\nsys:x:3:\n",
            ),
            gshadow: write("gshadow", "root:*::\nalice:!::\n"),
            login_defs: write("login.defs", "UID_MIN 1000\nUID_MAX 3000\n"),
            pending: write("pending", "alice\ncarol\nstaff\nsys\n"),
            lock: false,
        };
        let names = ["alice".to_string(), "bob".into(), "carol".into()];
        let acc = add_users(&f, &names, &BTreeSet::new()).unwrap();
        let ids: Vec<u32> = acc.iter().map(|a| a.uid).collect();
        assert_eq!(
            ids,
            [1000, 1003, 1001],
            "orphan groups reused, bob gets a free id"
        );
        let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap();
        let count = |text: &str, name: &str| {
            text.lines()
                .filter(|l| l.split(':').next() == Some(name))
                .count()
        };
        for (file, text) in [
            ("passwd", read(&f.passwd)),
            ("shadow", read(&f.shadow)),
            ("group", read(&f.group)),
            ("gshadow", read(&f.gshadow)),
        ] {
            for n in &names {
                assert_eq!(count(&text, n), 1, "{n} once in {file}:\n{text}");
            }
        }
        assert!(read(&f.passwd).contains("carol:x:1001:1001::/home/carol:/bin/bash\n"));
        // A group that is someone's real group (members, or a system number) is not taken.
        assert!(add_users(&f, &["staff".into()], &BTreeSet::new()).is_err());
        assert!(add_users(&f, &["sys".into()], &BTreeSet::new()).is_err());
        assert_eq!(
            read(&f.pending),
            format!("{PENDING_HEADER}\nstaff\nsys\n"),
            "completed names forgotten; the file of version 1 (no header) read, version 2 written"
        );
        // Without the record, an empty group named like a new user is an operator's: refused.
        std::fs::write(&f.group, "root:x:0:\ndave:x:1500:\n").unwrap();
        assert!(add_users(&f, &["dave".into()], &BTreeSet::new()).is_err());
    }

    #[test]
    fn files_are_appended_keeping_mode_owner_and_content() {
        let dir = TempDir::new("accountdb");
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
            p
        };
        let f = AccountFiles {
            passwd: write("passwd", "root:x:0:0::/root:/bin/bash", 0o644),
            shadow: write("shadow", "root:*:1:0:99999:7:::\n", 0o640),
            group: write("group", "root:x:0:\n", 0o644),
            gshadow: write("gshadow", "root:*::\n", 0o640),
            login_defs: write("login.defs", "UID_MIN 2000\nUID_MAX 3000\n", 0o644),
            pending: dir.join("pending"),
            lock: false,
        };
        let acc = add_users(&f, &["alice".into()], &BTreeSet::new()).unwrap();
        assert_eq!(acc[0].uid, 2000);
        let passwd = std::fs::read_to_string(&f.passwd).unwrap();
        assert_eq!(
            passwd,
            "root:x:0:0::/root:/bin/bash\nalice:x:2000:2000::/home/alice:/bin/bash\n"
        );
        assert!(
            std::fs::read_to_string(&f.shadow)
                .unwrap()
                .contains("\nalice:*:")
        );
        assert_eq!(std::fs::metadata(&f.shadow).unwrap().mode() & 0o777, 0o640);
        assert!(
            std::fs::read_to_string(&f.gshadow)
                .unwrap()
                .contains("alice:!::")
        );
    }

    /// Item 9: a uid whose home is kept is not handed out again, even when it is the lowest
    /// free one.
    #[test]
    fn reserved_uids_are_never_given_out() {
        let passwd = "root:x:0:0::/root:/bin/bash\n";
        let group = "root:x:0:\n";
        let none = BTreeSet::new();
        let reserved = BTreeSet::from([1000, 1001, 1003]);
        let (acc, _) = plan_entries(
            &["bob".into(), "carol".into()],
            &none,
            passwd,
            group,
            &reserved,
            1000,
            60000,
            1,
        )
        .unwrap();
        assert_eq!(
            acc.iter().map(|a| a.uid).collect::<Vec<_>>(),
            vec![1002, 1004]
        );
    }

    #[test]
    fn kept_homes_and_retired_uids_are_reserved() {
        if !crate::host::files::tests::is_root() {
            eprintln!("SKIPPED kept_homes_and_retired_uids_are_reserved: needs root (chown)");
            return;
        }
        use std::os::unix::fs::{chown, symlink};
        let dir = TempDir::new("accountdb-reserved");
        let base = dir.join("home");
        std::fs::create_dir_all(base.join("alice")).unwrap();
        chown(base.join("alice"), Some(1000), Some(1000)).unwrap();
        // carol's home was chowned to root after her account was deleted; a file inside still
        // carries her uid 1005: only the record knows.
        std::fs::create_dir_all(base.join("carol")).unwrap();
        std::fs::write(base.join("carol/secret"), "x").unwrap();
        chown(base.join("carol/secret"), Some(1005), None).unwrap();
        // A link is not followed: its own owner (root) counts, not its target's.
        let target = dir.join("elsewhere");
        std::fs::create_dir_all(&target).unwrap();
        chown(&target, Some(1007), None).unwrap();
        symlink(&target, base.join("link")).unwrap();
        let home = |n: &str| base.join(n).to_string_lossy().into_owned();
        let retired = BTreeMap::from([(1005, home("carol")), (1006, home("gone"))]);
        assert_eq!(
            reserved_uids(&base, &retired),
            BTreeSet::from([1000, 1005]),
            "alice's kept home, carol's record; gone's home no longer exists"
        );
        assert!(reserved_uids(&dir.join("missing"), &BTreeMap::new()).is_empty());
    }
}
