//! Writing answers into what the caller of an NSS function provides: a `struct passwd` or
//! `struct group`, a buffer for the strings, and (initgroups) a growable gid array.

use std::mem::MaybeUninit;
use std::ptr;

use libc::{c_char, c_long, gid_t, group, passwd};

/// The caller's buffer is too small: glibc retries with a bigger one (ERANGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Erange;

/// The caller's buffer, handed out from the front.
pub struct Arena {
    base: *mut u8,
    len: usize,
    used: usize,
}

impl Arena {
    /// # Safety
    /// `base` must be valid for writes of `len` bytes for as long as the pointers this arena
    /// hands out are used (null with `len` 0 is allowed: every request then fails).
    pub unsafe fn new(base: *mut c_char, len: usize) -> Arena {
        let len = if base.is_null() { 0 } else { len };
        Arena {
            base: base.cast(),
            len,
            used: 0,
        }
    }

    fn take(&mut self, size: usize, align: usize) -> Result<*mut u8, Erange> {
        let addr = (self.base as usize).checked_add(self.used).ok_or(Erange)?;
        let pad = addr.wrapping_neg() & (align - 1);
        let start = self.used.checked_add(pad).ok_or(Erange)?;
        let end = start.checked_add(size).ok_or(Erange)?;
        if end > self.len {
            return Err(Erange);
        }
        self.used = end;
        // SAFETY: start <= end <= len, so the pointer stays inside the caller's buffer.
        Ok(unsafe { self.base.add(start) })
    }

    /// A NUL-terminated copy of `s` (which holds no NUL: the cache and the records refuse it).
    pub fn cstr(&mut self, s: &[u8]) -> Result<*mut c_char, Erange> {
        let p = self.take(s.len().checked_add(1).ok_or(Erange)?, 1)?;
        // SAFETY: `take` reserved s.len() + 1 bytes at p; s cannot overlap the caller's buffer
        // (it lives in the cache mapping or in our own answer).
        unsafe {
            ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
            p.add(s.len()).write(0);
        }
        Ok(p.cast())
    }

    /// An array of `n` string pointers, aligned for pointers.
    fn ptr_array(&mut self, n: usize) -> Result<*mut *mut c_char, Erange> {
        let size = n.checked_mul(size_of::<*mut c_char>()).ok_or(Erange)?;
        Ok(self.take(size, align_of::<*mut c_char>())?.cast())
    }
}

/// A passwd entry to hand out, from the cache or from a socket answer.
pub struct PwData<'a> {
    pub name: &'a [u8],
    pub uid: u32,
    pub gid: u32,
    pub gecos: &'a [u8],
    pub home: &'a [u8],
    pub shell: &'a [u8],
}

/// Fills `out`, with its strings in `arena`. On `Erange`, `out` is untouched.
pub fn passwd(
    d: &PwData<'_>,
    out: &mut MaybeUninit<passwd>,
    arena: &mut Arena,
) -> Result<(), Erange> {
    let pw_name = arena.cstr(d.name)?;
    // `*`: no shadow entry exists, and pam_unix refuses an `x` whose shadow entry is missing.
    let pw_passwd = arena.cstr(b"*")?;
    let pw_gecos = arena.cstr(d.gecos)?;
    let pw_dir = arena.cstr(d.home)?;
    let pw_shell = arena.cstr(d.shell)?;
    out.write(passwd {
        pw_name,
        pw_passwd,
        pw_uid: d.uid,
        pw_gid: d.gid,
        pw_gecos,
        pw_dir,
        pw_shell,
    });
    Ok(())
}

/// Fills `out` with a group of `members` (NULL-terminated member array in `arena`).
pub fn group<'m>(
    name: &[u8],
    gid: u32,
    members: impl Iterator<Item = &'m [u8]>,
    member_count: usize,
    out: &mut MaybeUninit<group>,
    arena: &mut Arena,
) -> Result<(), Erange> {
    let slots = member_count.checked_add(1).ok_or(Erange)?;
    let gr_mem = arena.ptr_array(slots)?;
    let gr_name = arena.cstr(name)?;
    let gr_passwd = arena.cstr(b"x")?;
    let mut n = 0;
    for m in members.take(member_count) {
        let p = arena.cstr(m)?;
        // SAFETY: n < member_count < slots, inside the array `ptr_array` reserved.
        unsafe { gr_mem.add(n).write(p) };
        n += 1;
    }
    // SAFETY: n <= member_count < slots.
    unsafe { gr_mem.add(n).write(ptr::null_mut()) };
    out.write(group {
        gr_name,
        gr_passwd,
        gr_gid: gid,
        gr_mem,
    });
    Ok(())
}

/// The gid array of `initgroups_dyn`, grown with realloc like glibc's own modules do.
pub struct GidList {
    start: *mut c_long,
    size: *mut c_long,
    groups: *mut *mut gid_t,
    limit: c_long,
}

/// What became of one gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Added, or already there.
    Done,
    /// The array is at `limit`: stop.
    Full,
    /// realloc failed.
    NoMem,
}

impl GidList {
    /// # Safety
    /// The pointers must be glibc's: `*groups` an array of `*size` gids allocated with malloc,
    /// of which the first `*start` are set; valid for the lifetime of the list.
    pub unsafe fn new(
        start: *mut c_long,
        size: *mut c_long,
        groups: *mut *mut gid_t,
        limit: c_long,
    ) -> Option<GidList> {
        if start.is_null() || size.is_null() || groups.is_null() {
            return None;
        }
        // SAFETY: non-null and valid per the contract.
        let (s, z) = unsafe { (*start, *size) };
        if s < 0 || z < s {
            return None;
        }
        Some(GidList {
            start,
            size,
            groups,
            limit,
        })
    }

    /// The gids already in the array.
    fn current(&self) -> &[gid_t] {
        // SAFETY: per the contract of `new`; the counts were checked non-negative there and
        // only `push` changes them, keeping start <= size.
        unsafe {
            let n = *self.start as usize;
            let p = *self.groups;
            if p.is_null() || n == 0 {
                return &[];
            }
            std::slice::from_raw_parts(p, n)
        }
    }

    /// Appends `gid` unless it is already there.
    pub fn push(&mut self, gid: gid_t) -> Push {
        if self.current().contains(&gid) {
            return Push::Done;
        }
        // SAFETY: per the contract of `new`.
        unsafe {
            let start = *self.start;
            let mut size = *self.size;
            if self.limit > 0 && start >= self.limit {
                return Push::Full;
            }
            if start >= size {
                let mut grown = size.max(1).saturating_mul(2);
                if self.limit > 0 {
                    grown = grown.min(self.limit);
                }
                let Some(bytes) = usize::try_from(grown)
                    .ok()
                    .and_then(|g| g.checked_mul(size_of::<gid_t>()))
                else {
                    return Push::NoMem;
                };
                let p = libc::realloc((*self.groups).cast(), bytes);
                if p.is_null() {
                    return Push::NoMem;
                }
                *self.groups = p.cast();
                size = grown;
                *self.size = size;
            }
            (*self.groups).add(start as usize).write(gid);
            *self.start = start + 1;
        }
        Push::Done
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn passwd_fits_exactly_or_not_at_all() {
        let d = PwData {
            name: b"alice",
            uid: 5001,
            gid: 5002,
            gecos: b"Alice",
            home: b"/home/alice",
            shell: b"/bin/sh",
        };
        let need = 6 + 2 + 6 + 12 + 8;
        let mut buf = vec![0u8; need];
        let mut out = MaybeUninit::<passwd>::uninit();
        let mut small = unsafe { Arena::new(buf.as_mut_ptr().cast(), need - 1) };
        assert_eq!(passwd(&d, &mut out, &mut small), Err(Erange));
        let mut arena = unsafe { Arena::new(buf.as_mut_ptr().cast(), need) };
        passwd(&d, &mut out, &mut arena).unwrap();
        let pw = unsafe { out.assume_init() };
        unsafe {
            assert_eq!(CStr::from_ptr(pw.pw_name).to_bytes(), b"alice");
            assert_eq!(CStr::from_ptr(pw.pw_passwd).to_bytes(), b"*");
            assert_eq!(CStr::from_ptr(pw.pw_dir).to_bytes(), b"/home/alice");
            assert_eq!(CStr::from_ptr(pw.pw_shell).to_bytes(), b"/bin/sh");
        }
        assert_eq!((pw.pw_uid, pw.pw_gid), (5001, 5002));
    }

    #[test]
    fn group_members_are_null_terminated() {
        let mut buf = vec![0u8; 256];
        let mut out = MaybeUninit::<group>::uninit();
        // An odd start, to exercise the alignment of the pointer array.
        let mut arena = unsafe { Arena::new(buf.as_mut_ptr().add(1).cast(), 255) };
        let members: [&[u8]; 2] = [b"alice", b"bob"];
        group(b"demo", 7000, members.into_iter(), 2, &mut out, &mut arena).unwrap();
        let gr = unsafe { out.assume_init() };
        assert_eq!(gr.gr_mem as usize % align_of::<*mut c_char>(), 0);
        unsafe {
            assert_eq!(CStr::from_ptr(gr.gr_name).to_bytes(), b"demo");
            assert_eq!(CStr::from_ptr(*gr.gr_mem).to_bytes(), b"alice");
            assert_eq!(CStr::from_ptr(*gr.gr_mem.add(1)).to_bytes(), b"bob");
            assert!((*gr.gr_mem.add(2)).is_null());
        }
        let mut tiny = unsafe { Arena::new(buf.as_mut_ptr().cast(), 20) };
        assert_eq!(
            group(b"demo", 7000, members.into_iter(), 2, &mut out, &mut tiny),
            Err(Erange)
        );
        let mut none = unsafe { Arena::new(std::ptr::null_mut(), 100) };
        assert_eq!(
            group(b"demo", 7000, members.into_iter(), 2, &mut out, &mut none),
            Err(Erange)
        );
    }
}
