//! Resolving a path in a user's home with that user's permissions, from the root daemon.
//!
//! [`AsUser`] switches the filesystem credentials of the calling thread only (fsuid, fsgid and
//! the supplementary groups: Linux keeps them per thread; glibc's `setgroups` would change
//! every thread of the process, so the raw system call is used) and switches them back when
//! dropped. While it lives, path lookups and opens are checked by the kernel as if the user
//! made them, and root's filesystem capabilities (`CAP_DAC_OVERRIDE` and friends) are off for
//! the thread. Other threads (the socket, the watcher) keep running as root throughout; a
//! thread started meanwhile from this one would inherit the user's credentials, so nothing
//! but path resolution happens under it.
//!
//! Only path resolution runs under it (`openat2` from a descriptor of the home): the kernel
//! then refuses what the user could not reach. It is no sandbox for reading files outside the
//! home: the process is still the daemon, and `/proc/self` would be the daemon's own. Reading
//! a file a link outside the home points at is done by a child process that *is* the user
//! ([`crate::host::command::run_as`]).

use nix::libc;
use nix::unistd::{Gid, Uid, setfsgid, setfsuid};

/// The calling thread's filesystem credentials are a user's while this lives.
#[derive(Debug)]
pub struct AsUser {
    fsuid: Uid,
    fsgid: Gid,
    groups: Vec<libc::gid_t>,
}

/// The thread's supplementary groups.
fn thread_groups() -> std::io::Result<Vec<libc::gid_t>> {
    // SAFETY: getgroups(0, NULL) only returns the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut groups = vec![0 as libc::gid_t; n as usize];
    // SAFETY: the buffer holds `n` entries.
    let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    groups.truncate(got as usize);
    Ok(groups)
}

/// setgroups(2) for this thread only.
fn set_thread_groups(groups: &[libc::gid_t]) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe `groups`; the raw system call changes the
    // calling thread's credentials and nothing else.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            groups.len() as libc::size_t,
            groups.as_ptr(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The current fsuid (setfsuid with an invalid id changes nothing and returns it).
fn current_fsuid() -> Uid {
    setfsuid(Uid::from_raw(u32::MAX))
}

fn current_fsgid() -> Gid {
    setfsgid(Gid::from_raw(u32::MAX))
}

impl AsUser {
    /// Switches to `uid`/`gid` with no other group. Fails (nothing switched) when the kernel
    /// refuses, e.g. without `CAP_SETUID`.
    pub fn enter(uid: u32, gid: u32) -> std::io::Result<AsUser> {
        let groups = thread_groups()?;
        let fsuid = current_fsuid();
        let fsgid = current_fsgid();
        let saved = AsUser {
            fsuid,
            fsgid,
            groups,
        };
        set_thread_groups(&[gid])?;
        setfsgid(Gid::from_raw(gid));
        setfsuid(Uid::from_raw(uid));
        if current_fsuid().as_raw() != uid || current_fsgid().as_raw() != gid {
            drop(saved); // switches back what did change
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        }
        Ok(saved)
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        setfsuid(self.fsuid);
        setfsgid(self.fsgid);
        let groups_back = set_thread_groups(&self.groups);
        if groups_back.is_err() || current_fsuid() != self.fsuid || current_fsgid() != self.fsgid {
            // A root thread left with a user's credentials would make every later write on
            // it wrong; stop instead (systemd restarts the daemon).
            tracing::error!("cannot switch a thread's credentials back to root; aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::files::tests::{TempDir, is_root};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_thread_as_a_user_is_refused_what_the_user_is_refused_and_is_root_again_after() {
        if !is_root() {
            eprintln!("SKIPPED a_thread_as_a_user_...: needs root");
            return;
        }
        let tmp = TempDir::new("asuser");
        let private = tmp.join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(private.join("f"), "x").unwrap();
        let before = thread_groups().unwrap();
        // Another thread, started before the switch (a thread inherits its creator's
        // credentials), stays root meanwhile.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn({
            let f = private.join("f");
            move || {
                wait.recv().unwrap();
                std::fs::read(f).is_ok()
            }
        });
        {
            let _as = AsUser::enter(54321, 54321).unwrap();
            let err = std::fs::read(private.join("f")).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
            assert_eq!(thread_groups().unwrap(), [54321]);
            go.send(()).unwrap();
            assert!(other.join().unwrap(), "only this thread switched");
        }
        assert_eq!(std::fs::read(private.join("f")).unwrap(), b"x");
        assert_eq!(thread_groups().unwrap(), before);
        assert_eq!(current_fsuid().as_raw(), 0);
    }
}
