//! The cache file, mapped read-only; opening it checks the header and section bounds only
//! (O(1): [`Cache::parse`]), each lookup checks what it reads. The file is looked at again (one
//! `stat`) at most once per recheck interval, read on the coarse monotonic clock.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use guest_agent_wire::cache::Cache;

/// What identifies one version of the file: the daemon replaces it by rename, so a new
/// version is a new inode, and an edit in place changes size or times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(st: &libc::stat) -> Stamp {
        Stamp {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// A read-only private mapping, unmapped on drop.
struct Mmap {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned; nothing in it is tied to a thread.
unsafe impl Send for Mmap {}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and are unmapped only here.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A mapping and the view over it (header and sections checked).
struct Loaded {
    // Declared before `map`: dropped first, so the view never outlives the bytes.
    cache: Cache<'static>,
    _map: Mmap,
}

/// Milliseconds on CLOCK_MONOTONIC_COARSE (a vDSO read, a few ns).
pub fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(ts.tv_nsec as u64 / 1_000_000)
}

/// One file, as last looked at.
struct Slot {
    loaded: Option<Loaded>,
    /// The version of the file last looked at (also when it was invalid, so an invalid file is
    /// not parsed again until it changes).
    stamp: Option<Stamp>,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            loaded: None,
            stamp: None,
        }
    }

    /// Remaps the file at `path` if it changed since it was last looked at.
    fn refresh(&mut self, path: &CStr, require_root_owner: bool) {
        let current = stat(path);
        if current.is_some() && current == self.stamp {
            return;
        }
        self.loaded = None;
        self.stamp = None;
        if current.is_some() {
            let (stamp, loaded) = load(path, require_root_owner);
            self.stamp = stamp;
            self.loaded = loaded;
        }
    }

    /// Forgets the file (so it is looked at again when next needed).
    fn clear(&mut self) {
        self.loaded = None;
        self.stamp = None;
    }
}

/// How a process sees the cache file: the daemon's file, or, when that one does not open
/// (another release's format, during an upgrade or a downgrade), the file of this module's own
/// format version beside it (`cache::compat_path`), which a daemon of the next release keeps
/// fresh for the modules of the previous one.
pub struct Mapping {
    main: Slot,
    compat: Slot,
    checked_at_ms: Option<u64>,
}

/// Where and how to read the file.
pub struct Source<'a> {
    pub path: &'a CStr,
    /// The file of this module's format version, read when `path` does not open (None: no
    /// such file, as for the delta).
    pub compat_path: Option<&'a CStr>,
    pub recheck_ms: u64,
    /// Refuse a file not owned by root or writable by group or others.
    pub require_root_owner: bool,
}

impl Mapping {
    pub const fn new() -> Mapping {
        Mapping {
            main: Slot::new(),
            compat: Slot::new(),
            checked_at_ms: None,
        }
    }

    /// The cache, if a file is there and opens. The borrow ends with the lock
    /// that guards `self`, so nothing read from the mapping outlives a remapping.
    pub fn cache<'s>(&'s self) -> Option<&'s Cache<'s>> {
        self.main
            .loaded
            .as_ref()
            .or(self.compat.loaded.as_ref())
            .map(|l| &l.cache)
    }

    /// Looks at the file again if the recheck interval has passed, and remaps it if it changed;
    /// the compat file only while the main one does not open.
    pub fn refresh(&mut self, src: &Source<'_>) {
        let now = coarse_ms();
        if self
            .checked_at_ms
            .is_some_and(|t| now.saturating_sub(t) < src.recheck_ms)
        {
            return;
        }
        self.checked_at_ms = Some(now);
        self.main.refresh(src.path, src.require_root_owner);
        match src.compat_path {
            Some(compat) if self.main.loaded.is_none() => {
                self.compat.refresh(compat, src.require_root_owner);
            }
            _ => self.compat.clear(),
        }
    }
}

fn stat(path: &CStr) -> Option<Stamp> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: path is NUL-terminated; st is a valid out-pointer.
    if unsafe { libc::stat(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: stat succeeded and filled it.
    let st = unsafe { st.assume_init() };
    Some(Stamp::of(&st))
}

/// Opens and maps the file and checks its header and sections (not its records: lookups
/// check what they read); the stamp is that of the file actually opened.
fn load(path: &CStr, require_root_owner: bool) -> (Option<Stamp>, Option<Loaded>) {
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NOCTTY;
    // SAFETY: path is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return (None, None);
    }
    // SAFETY: fd was just opened and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fd is open; st is a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return (None, None);
    }
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    let stamp = Some(Stamp::of(&st));
    let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    let owner_ok = !require_root_owner || (st.st_uid == 0 && st.st_mode & 0o022 == 0);
    let Ok(len) = usize::try_from(st.st_size) else {
        return (stamp, None);
    };
    if !regular || !owner_ok || len == 0 || len > u32::MAX as usize {
        return (stamp, None);
    }
    // SAFETY: a fresh read-only private mapping of an open regular file.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            // No MAP_POPULATE: a lookup touches a few pages of the file, not all of them.
            libc::MAP_PRIVATE,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return (stamp, None);
    }
    let map = Mmap { ptr, len };
    // SAFETY: the bytes stay mapped as long as `map`, which `Loaded` owns next to the view
    // and drops after it; `Mapping::cache` never lends the view beyond a borrow of `self`.
    // The daemon replaces the file by rename, never truncating it in place (and a file
    // writable by anyone else than root is refused above), so the pages stay readable.
    let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    match Cache::parse(bytes) {
        Ok(cache) => (stamp, Some(Loaded { cache, _map: map })),
        Err(_) => (stamp, None),
    }
}
