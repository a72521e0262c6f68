//! Nothing partial, ever: every file the agent writes goes through here.
//!
//! A write creates a temporary file in the target's own directory (`O_CREAT|O_EXCL|O_NOFOLLOW`,
//! a random name starting with `.` so that sudo's `#includedir` and sshd's `Include *.conf`
//! never pick it up), writes it, sets mode and owner by descriptor, fsyncs it, renames it over
//! the target and fsyncs the directory. Readers see the old file or the new one, never a mix,
//! and a crash leaves at most a dot-file behind. Everything is done relative to an open
//! directory descriptor, so a file in a user's home can be written without ever following a
//! symbolic link the user planted (see [`DirFd::open_child`]).
//!
//! All of this is blocking I/O: async callers run it under `spawn_blocking`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

/// A file's owner as numeric ids: `(uid, gid)`.
pub type Owner = (u32, u32);

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(
        "cannot {action} {path}: {source}; check that the directory exists, is a real directory \
         (not a symbolic link) and that the agent runs as root"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{dir}: {name:?} is not a single file name; this is a bug in the caller")]
    BadName { dir: PathBuf, name: OsString },
}

fn io_err(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(nix::Error) -> FileError {
    let path = path.into();
    move |e| FileError::Io {
        action,
        path,
        source: io::Error::from(e),
    }
}

/// Takes ownership of a descriptor nix has just opened for us.
fn owned(raw: RawFd) -> OwnedFd {
    // SAFETY: `raw` was returned by a successful open/openat a moment ago and is owned by no
    // other object, so handing it to an `OwnedFd` (which closes it once) is sound.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// An open directory, remembered with its path for error messages.
#[derive(Debug)]
pub struct DirFd {
    fd: OwnedFd,
    path: PathBuf,
}

impl DirFd {
    /// Opens a system directory (`/etc/ssh`, `/home`); symbolic links in `path` are followed,
    /// as they are by every other tool that edits these directories.
    pub fn open(path: &Path) -> Result<DirFd, FileError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let raw =
            nix::fcntl::open(path, flags, Mode::empty()).map_err(io_err("open directory", path))?;
        Ok(DirFd {
            fd: owned(raw),
            path: path.to_path_buf(),
        })
    }

    /// Opens the directory at `path` whose last component must not be a symbolic link (its
    /// parents are trusted, root-owned paths such as /home): the way into a user's home.
    pub fn open_last_nofollow(path: &Path) -> Result<DirFd, FileError> {
        let (parent, name) = open_parent(path)?;
        parent.open_child(&name)
    }

    /// Opens `name` inside this directory, refusing a symbolic link (`O_NOFOLLOW`): the way to
    /// walk into a directory a user controls, such as `~/.ssh`.
    pub fn open_child(&self, name: &OsStr) -> Result<DirFd, FileError> {
        let path = self.child_path(name)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let raw = openat(Some(self.fd.as_raw_fd()), name, flags, Mode::empty())
            .map_err(io_err("open directory (without following links)", &path))?;
        Ok(DirFd {
            fd: owned(raw),
            path,
        })
    }

    /// Opens the directory `rel` (a relative path, symbolic links and `..` allowed) resolved
    /// by the kernel strictly beneath this directory (`openat2` with `RESOLVE_BENEATH` and
    /// `RESOLVE_NO_MAGICLINKS`): an absolute link, a `..` above this directory or a `/proc`
    /// magic link anywhere on the way fails (`EXDEV`, `ELOOP`). Run it under
    /// [`crate::host::as_user::AsUser`] to resolve with a user's permissions.
    pub fn open_dir_beneath(&self, rel: &Path) -> Result<DirFd, FileError> {
        use nix::fcntl::{OpenHow, ResolveFlag, openat2};
        let path = self.path.join(rel);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let raw = openat2(self.raw(), rel, how)
            .map_err(io_err("open directory (beneath its parent)", &path))?;
        Ok(DirFd {
            fd: owned(raw),
            path,
        })
    }

    /// The target of the symbolic link `name` here, or `None` when `name` is not a link.
    pub fn read_link(&self, name: &OsStr) -> Result<Option<PathBuf>, FileError> {
        let path = self.child_path(name)?;
        match nix::fcntl::readlinkat(Some(self.raw()), name) {
            Ok(target) => Ok(Some(PathBuf::from(target))),
            Err(nix::Error::EINVAL) => Ok(None),
            Err(e) => Err(io_err("read the link", &path)(e)),
        }
    }

    /// The path this directory was opened by (for messages only: never re-resolved).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes the directory itself (new, renamed and removed entries) to disk.
    pub fn sync(&self) -> Result<(), FileError> {
        nix::unistd::fsync(self.fd.as_raw_fd()).map_err(io_err("fsync directory", &self.path))
    }

    /// `self.path/name`, after checking that `name` is one plain path component.
    pub(crate) fn child_path(&self, name: &OsStr) -> Result<PathBuf, FileError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
            return Err(FileError::BadName {
                dir: self.path.clone(),
                name: name.to_os_string(),
            });
        }
        Ok(self.path.join(name))
    }

    /// Opens the file `name` here with `flags` (plus `O_NOFOLLOW|O_CLOEXEC`), creating it with
    /// `mode` when `flags` say so.
    pub fn open_file(&self, name: &OsStr, flags: OFlag, mode: u32) -> Result<File, FileError> {
        let path = self.child_path(name)?;
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let raw = openat(
            Some(self.raw()),
            name,
            flags,
            Mode::from_bits_truncate(mode),
        )
        .map_err(io_err("open (without following links)", &path))?;
        Ok(File::from(owned(raw)))
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for DirFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Splits `path` into its directory (opened) and its file name.
fn open_parent(path: &Path) -> Result<(DirFd, OsString), FileError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(FileError::BadName {
            dir: path.to_path_buf(),
            name: OsString::new(),
        });
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    Ok((DirFd::open(parent)?, name.to_os_string()))
}

/// Writes `contents` to `path` atomically with `mode` and, when given, `owner` (otherwise the
/// file belongs to the agent, root). Returns whether anything changed: when the file already
/// holds these bytes with this mode (and owner, when given), nothing is written at all.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<bool, FileError> {
    let (dir, name) = open_parent(path)?;
    write_atomic_at(&dir, &name, contents, mode, owner)
}

/// [`write_atomic`] for the file `name` inside the open directory `dir`. A symbolic link at
/// `name` is never followed: it is replaced by the new file.
pub fn write_atomic_at(
    dir: &DirFd,
    name: &OsStr,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<bool, FileError> {
    dir.child_path(name)?;
    if is_current(dir, name, contents, mode, owner) {
        return Ok(false);
    }
    stage_at(dir, name, contents, mode, owner)?.commit()?;
    Ok(true)
}

/// Whether `dir/name` is a regular file holding exactly `contents` with `mode` and `owner`.
/// Anything unreadable or odd counts as "not current", and the write then says what is wrong.
fn is_current(dir: &DirFd, name: &OsStr, contents: &[u8], mode: u32, owner: Option<Owner>) -> bool {
    // O_NONBLOCK: a FIFO planted at `name` must not hang us.
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let Ok(raw) = openat(Some(dir.raw()), name, flags, Mode::empty()) else {
        return false;
    };
    let file = File::from(owned(raw));
    let Ok(st) = fstat(file.as_raw_fd()) else {
        return false;
    };
    let right_kind = st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG;
    let right_mode = st.st_mode & 0o7777 == mode;
    let right_owner = owner.is_none_or(|(uid, gid)| st.st_uid == uid && st.st_gid == gid);
    let right_size = u64::try_from(st.st_size).ok() == u64::try_from(contents.len()).ok();
    if !(right_kind && right_mode && right_owner && right_size) {
        return false;
    }
    let mut old = Vec::with_capacity(contents.len());
    file.take(contents.len() as u64 + 1)
        .read_to_end(&mut old)
        .is_ok()
        && old == contents
}

/// A complete temporary file next to its target, not yet renamed into place. Dropping it
/// removes it; [`Staged::commit`] renames it over the target. Lets a caller check the file
/// (with `visudo -c`, say) before it becomes live.
#[derive(Debug)]
pub struct Staged<'a> {
    dir: &'a DirFd,
    temp: OsString,
    target: OsString,
    done: bool,
}

impl Staged<'_> {
    /// The temporary file's path, for a checker program to read.
    pub fn temp_path(&self) -> PathBuf {
        self.dir.path.join(&self.temp)
    }

    /// Renames the temporary file over the target and fsyncs the directory.
    pub fn commit(mut self) -> Result<(), FileError> {
        let target = self.dir.path.join(&self.target);
        renameat(
            Some(self.dir.raw()),
            &*self.temp,
            Some(self.dir.raw()),
            &*self.target,
        )
        .map_err(io_err("rename a temporary file over", &target))?;
        self.done = true;
        self.dir.sync()
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = unlinkat(
                Some(self.dir.raw()),
                &*self.temp,
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Writes `contents` to a new temporary file in `dir` (named `.NAME.tmp-RANDOM`), with `mode`
/// and `owner` set by descriptor and the data fsynced, ready to be committed over `name`.
pub fn stage_at<'a>(
    dir: &'a DirFd,
    name: &OsStr,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<Staged<'a>, FileError> {
    let target = dir.child_path(name)?;
    sweep_stale_temps(dir, name);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut attempt = 0;
    let (raw, temp) = loop {
        let mut temp = OsString::from(".");
        temp.push(name);
        temp.push(format!(".tmp-{:016x}", fastrand::u64(..)));
        match openat(
            Some(dir.raw()),
            &*temp,
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(raw) => break (raw, temp),
            Err(nix::Error::EEXIST) if attempt < 8 => attempt += 1,
            Err(e) => return Err(io_err("create a temporary file next to", &target)(e)),
        }
    };
    let staged = Staged {
        dir,
        temp,
        target: name.to_os_string(),
        done: false,
    };
    let mut file = File::from(owned(raw));
    let temp_path = staged.temp_path();
    let write_err = |action| {
        let path = temp_path.clone();
        move |source| FileError::Io {
            action,
            path,
            source,
        }
    };
    file.write_all(contents).map_err(write_err("write"))?;
    if let Some((uid, gid)) = owner {
        // Owner first: chown clears set-id bits, so the mode must come after it.
        fchown(
            file.as_raw_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(io_err("chown", &temp_path))?;
    }
    fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode))
        .map_err(io_err("chmod", &temp_path))?;
    file.sync_all().map_err(write_err("fsync"))?;
    Ok(staged)
}

/// A temporary file of ours older than this is a leftover of a killed agent (a live write
/// stages and commits within milliseconds).
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `entry` is one of our temporary names for `name` (`.NAME.tmp-` and 16 hex digits).
fn is_temp_of(entry: &[u8], name: &[u8]) -> bool {
    let Some(rest) = entry
        .strip_prefix(b".")
        .and_then(|r| r.strip_prefix(name))
        .and_then(|r| r.strip_prefix(b".tmp-"))
    else {
        return false;
    };
    rest.len() == 16 && rest.iter().all(u8::is_ascii_hexdigit)
}

/// Removes leftovers of earlier writes of `name` that a killed agent could not clean up (the
/// kill came between creating the temporary file and renaming it). Best effort: never fails
/// a write, never follows a link (`unlinkat` removes the entry itself), spares fresh files.
fn sweep_stale_temps(dir: &DirFd, name: &OsStr) {
    let Ok(mut listing) = nix::dir::Dir::openat(
        Some(dir.raw()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let now = std::time::SystemTime::now();
    let stale: Vec<std::ffi::CString> = listing
        .iter()
        .filter_map(Result::ok)
        .filter(|e| is_temp_of(e.file_name().to_bytes(), name.as_bytes()))
        .map(|e| e.file_name().to_owned())
        .collect();
    for entry in stale {
        let Ok(st) = nix::sys::stat::fstatat(
            Some(dir.raw()),
            entry.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            continue;
        };
        let modified =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(st.st_mtime.max(0) as u64);
        if now
            .duration_since(modified)
            .is_ok_and(|age| age > STALE_TEMP)
        {
            let _ = unlinkat(
                Some(dir.raw()),
                entry.as_c_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Removes `path` if it exists (fsyncing its directory); returns whether it existed. A file
/// whose directory does not exist does not exist either (`/etc/sudoers.d` on an image without
/// sudo, `/etc/ssh/sshd_config.d` without openssh-server): nothing to remove, not an error.
pub fn remove_if_exists(path: &Path) -> Result<bool, FileError> {
    let (dir, name) = match open_parent(path) {
        Err(FileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(false);
        }
        other => other?,
    };
    match unlinkat(Some(dir.raw()), &*name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => dir.sync().map(|()| true),
        Err(nix::Error::ENOENT) => Ok(false),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Reads `path`, or `None` when it does not exist.
/// Where an edit of a system configuration file the operator may have made a symbolic link
/// (`/etc/nsswitch.conf`, `/etc/ssh/sshd_config`: image builders and config managers do)
/// must land: the file the link resolves to, so the link stays a link (an atomic replace of
/// the link itself would turn it into a regular file). Anything that is not a link, or a
/// dangling one, is `path` itself. Only for root-owned configuration paths, never for paths
/// a user controls (those are written with [`write_atomic`], which never follows a link).
pub fn config_target(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
#[path = "files_tests.rs"]
pub(crate) mod tests;
