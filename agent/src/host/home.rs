//! Creating a user's home directory at first login, from /etc/skel.
//!
//! An existing home (or anything else at that path, a symbolic link included) is left alone.
//! Otherwise the home is built in a temporary sibling (`.NAME.guest-agent-RANDOM`, root-only
//! until the end) and renamed into place with `RENAME_NOREPLACE`, so a half-copied home is
//! never visible and a home that appears meanwhile is never replaced. The parent (`/home`)
//! must be owned by root and not writable by group or others, or a user could race us there.
//!
//! The copy never follows a symbolic link, in the skeleton or in the new home: every entry is
//! created relative to a directory descriptor with `O_NOFOLLOW`, symbolic links are copied as
//! links, and ownership is set by descriptor (`lchown`-style for links). Set-id and sticky
//! bits are dropped; FIFOs, sockets and devices in the skeleton are skipped.
//!
//! The home's mode is what `useradd` (shadow 4.13) gives, so OS Login users get the same homes
//! as local ones: `HOME_MODE` from login.defs when set, otherwise `0777 & !UMASK` (UMASK
//! defaulting to 022). Debian 12 sets `UMASK 022` and leaves `HOME_MODE` commented out: 0755.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, RenameFlags, readlinkat, renameat2};
use nix::sys::stat::{Mode, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, symlinkat, unlinkat};

use super::files::{DirFd, FileError};

/// Deepest directory nesting copied from the skeleton.
const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("home directory {path} must be an absolute path ending in a name")]
    BadPath { path: PathBuf },
    #[error(
        "refusing to create a home in {path}: it is owned by uid {uid} with mode {mode:o}; \
         it must be owned by root and not writable by group or others"
    )]
    UnsafeParent { path: PathBuf, uid: u32, mode: u32 },
    #[error("skeleton {path} nests deeper than {MAX_DEPTH} directories; flatten it")]
    TooDeep { path: PathBuf },
}

/// Where the skeleton and login.defs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomePaths {
    pub skel: PathBuf,
    pub login_defs: PathBuf,
}

impl Default for HomePaths {
    fn default() -> Self {
        HomePaths {
            skel: "/etc/skel".into(),
            login_defs: "/etc/login.defs".into(),
        }
    }
}

/// What [`create_home`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeOutcome {
    Created,
    AlreadyExists,
}

/// login.defs' value for `key`, as `useradd` reads numbers (strtol base 0: `0700` octal,
/// `0x1c0` hex, otherwise decimal).
fn login_defs_number(text: &str, key: &str) -> Option<u32> {
    let value = text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == key).then(|| words.next())?
    })?;
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        u32::from_str_radix(hex, 16).ok()
    } else if value.len() > 1 && value.starts_with('0') {
        u32::from_str_radix(&value[1..], 8).ok()
    } else {
        value.parse().ok()
    }
}

/// The mode of a new home, from login.defs' text (`None`: no login.defs).
pub fn home_mode(login_defs: Option<&str>) -> u32 {
    let text = login_defs.unwrap_or("");
    login_defs_number(text, "HOME_MODE")
        .unwrap_or_else(|| 0o777 & !login_defs_number(text, "UMASK").unwrap_or(0o022))
        & 0o777
}

/// Creates `home` for `uid:gid` from the skeleton unless something already exists there.
pub fn create_home(
    paths: &HomePaths,
    home: &Path,
    uid: u32,
    gid: u32,
) -> Result<HomeOutcome, HomeError> {
    let (Some(parent), Some(Component::Normal(name))) =
        (home.parent(), home.components().next_back())
    else {
        return Err(HomeError::BadPath { path: home.into() });
    };
    if !home.is_absolute() {
        return Err(HomeError::BadPath { path: home.into() });
    }
    let parent = DirFd::open(parent)?;
    let st = fstat(parent.raw()).map_err(io("stat", parent.path()))?;
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        return Err(HomeError::UnsafeParent {
            path: parent.path().into(),
            uid: st.st_uid,
            mode: st.st_mode & 0o7777,
        });
    }
    match fstatat(Some(parent.raw()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(_) => return Ok(HomeOutcome::AlreadyExists),
        Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(io("stat", home)(e)),
    }
    let login_defs = std::fs::read_to_string(&paths.login_defs).ok();
    let mode = home_mode(login_defs.as_deref());
    sweep_half_built(&parent, name);

    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(".guest-agent-{:016x}", fastrand::u64(..)));
    let temp_path = parent.path().join(&temp);
    mkdirat(Some(parent.raw()), &*temp, Mode::from_bits_truncate(0o700))
        .map_err(io("create directory", &temp_path))?;
    let result = (|| {
        let dir = parent.open_child(&temp)?;
        match DirFd::open(&paths.skel) {
            Ok(skel) => copy_tree(&skel, &dir, (uid, gid), 0)?,
            Err(_) if !paths.skel.exists() => {}
            Err(e) => return Err(e.into()),
        }
        fchown(
            dir.raw(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(io("chown", &temp_path))?;
        fchmod(dir.raw(), Mode::from_bits_truncate(mode)).map_err(io("chmod", &temp_path))?;
        dir.sync()?;
        renameat2(
            Some(parent.raw()),
            &*temp,
            Some(parent.raw()),
            name,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(io("rename a new home into place at", home))
    })();
    match result {
        Ok(()) => {
            parent.sync()?;
            Ok(HomeOutcome::Created)
        }
        Err(e) => {
            if let Err(cleanup) = remove_tree(&parent, &temp) {
                tracing::error!(path = %temp_path.display(), error = %cleanup, "cannot remove a half-built home");
            }
            match e {
                HomeError::Io {
                    source: nix::Error::EEXIST,
                    ..
                } => Ok(HomeOutcome::AlreadyExists),
                e => Err(e),
            }
        }
    }
}

/// Removes half-built homes for `name` that a killed agent left (`.NAME.guest-agent-` and 16
/// hex digits, older than a minute). The parent was checked root-owned and not group/world
/// writable, so only root can have made such an entry; best effort, never fails a creation.
fn sweep_half_built(parent: &DirFd, name: &OsStr) {
    let Ok(entries) = names(parent) else {
        return;
    };
    let prefix = [b".", name.as_bytes(), b".guest-agent-"].concat();
    for entry in entries {
        let bytes = entry.as_bytes();
        let Some(suffix) = bytes.strip_prefix(prefix.as_slice()) else {
            continue;
        };
        if suffix.len() != 16 || !suffix.iter().all(u8::is_ascii_hexdigit) {
            continue;
        }
        let old = fstatat(Some(parent.raw()), &*entry, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .and_then(|st| {
                let mtime = std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(st.st_mtime.max(0) as u64);
                std::time::SystemTime::now().duration_since(mtime).ok()
            })
            .is_some_and(|age| age > std::time::Duration::from_secs(60));
        if old && let Err(e) = remove_tree(parent, &entry) {
            tracing::warn!(path = %parent.path().join(&entry).display(), error = %e, "cannot remove a half-built home left by an earlier run");
        }
    }
}

/// Fills an existing, empty home made by a batch tool (`newusers` creates the directory but
/// copies no skeleton): the skeleton is copied in, relative to descriptors, never following a
/// link, and the mode set as for [`create_home`]. Anything else there (not a directory, not
/// owned by `uid`, not empty) is left alone: returns whether it was filled.
pub fn populate_home(
    paths: &HomePaths,
    home: &Path,
    uid: u32,
    gid: u32,
) -> Result<bool, HomeError> {
    let dir = DirFd::open_last_nofollow(home)?; // a symlinked home is refused
    let st = fstat(dir.raw()).map_err(io("stat", home))?;
    if st.st_uid != uid || !names(&dir)?.is_empty() {
        return Ok(false);
    }
    match DirFd::open(&paths.skel) {
        Ok(skel) => copy_tree(&skel, &dir, (uid, gid), 0)?,
        Err(_) if !paths.skel.exists() => {}
        Err(e) => return Err(e.into()),
    }
    let login_defs = std::fs::read_to_string(&paths.login_defs).ok();
    fchmod(
        dir.raw(),
        Mode::from_bits_truncate(home_mode(login_defs.as_deref())),
    )
    .map_err(io("chmod", home))?;
    dir.sync()?;
    Ok(true)
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> HomeError {
    let path = path.to_path_buf();
    move |source| HomeError::Io {
        action,
        path,
        source,
    }
}

/// The entries of `dir`, without `.` and `..`.
fn names(dir: &DirFd) -> Result<Vec<OsString>, HomeError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut listing = nix::dir::Dir::openat(Some(dir.raw()), ".", flags, Mode::empty())
        .map_err(io("list", dir.path()))?;
    let mut out = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(io("list", dir.path()))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(out)
}

/// Copies the contents of `src` into the (empty) `dst`, owned by `owner`.
fn copy_tree(src: &DirFd, dst: &DirFd, owner: (u32, u32), depth: usize) -> Result<(), HomeError> {
    let (uid, gid) = (Some(Uid::from_raw(owner.0)), Some(Gid::from_raw(owner.1)));
    for name in names(src)? {
        let src_path = src.path().join(&name);
        let dst_path = dst.path().join(&name);
        let st = fstatat(Some(src.raw()), &*name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(io("stat", &src_path))?;
        let perm = Mode::from_bits_truncate(st.st_mode & 0o777);
        match st.st_mode & nix::libc::S_IFMT {
            nix::libc::S_IFDIR => {
                if depth >= MAX_DEPTH {
                    return Err(HomeError::TooDeep { path: src_path });
                }
                mkdirat(Some(dst.raw()), &*name, Mode::from_bits_truncate(0o700))
                    .map_err(io("create directory", &dst_path))?;
                let (s, d) = (src.open_child(&name)?, dst.open_child(&name)?);
                copy_tree(&s, &d, owner, depth + 1)?;
                fchown(d.raw(), uid, gid).map_err(io("chown", &dst_path))?;
                fchmod(d.raw(), perm).map_err(io("chmod", &dst_path))?;
                d.sync()?;
            }
            nix::libc::S_IFREG => {
                let mut from = src.open_file(&name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)?;
                let create = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
                let mut to = dst.open_file(&name, create, 0o600)?;
                let copy_err = |source: std::io::Error| {
                    let errno = source
                        .raw_os_error()
                        .map_or(nix::Error::EIO, nix::Error::from_raw);
                    HomeError::Io {
                        action: "copy to",
                        path: dst_path.clone(),
                        source: errno,
                    }
                };
                std::io::copy(&mut from, &mut to).map_err(copy_err)?;
                fchown(to.as_raw_fd(), uid, gid).map_err(io("chown", &dst_path))?;
                fchmod(to.as_raw_fd(), perm).map_err(io("chmod", &dst_path))?;
                to.sync_all().map_err(copy_err)?;
            }
            nix::libc::S_IFLNK => {
                let target =
                    readlinkat(Some(src.raw()), &*name).map_err(io("read link", &src_path))?;
                symlinkat(&*target, Some(dst.raw()), &*name)
                    .map_err(io("create link", &dst_path))?;
                fchownat(
                    Some(dst.raw()),
                    &*name,
                    uid,
                    gid,
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(io("chown link", &dst_path))?;
            }
            _ => {
                tracing::warn!(path = %src_path.display(), "skipping a special file in the skeleton")
            }
        }
    }
    Ok(())
}

/// Removes `name` in `dir` and everything below it, never following a link.
fn remove_tree(dir: &DirFd, name: &OsStr) -> Result<(), HomeError> {
    let path = dir.path().join(name);
    let st =
        fstatat(Some(dir.raw()), name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io("stat", &path))?;
    if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR {
        let child = dir.open_child(name)?;
        for entry in names(&child)? {
            remove_tree(&child, &entry)?;
        }
        unlinkat(Some(dir.raw()), name, UnlinkatFlags::RemoveDir).map_err(io("remove", &path))
    } else {
        unlinkat(Some(dir.raw()), name, UnlinkatFlags::NoRemoveDir).map_err(io("remove", &path))
    }
}

#[cfg(test)]
#[path = "home_tests.rs"]
mod tests;
