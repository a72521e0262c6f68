//! Other Debian releases' userlands for the release matrix (tests/tests/releases.rs): each a
//! `debootstrap --variant=minbase` root with what a cloud image has for logins (OpenSSH server
//! and client, sudo, procps), made on first use and cached outside the checkout under
//! [`CACHE_DIR`]. The packages test's isolated copy of the machine ([`Isolated::on`]) then
//! uses one as its lower layer and chroots into it: that release's glibc, PAM, sshd, sudo,
//! shadow tools and dpkg run on this kernel.
//!
//! A root is made in a temporary directory beside its final name and renamed into place only
//! when debootstrap succeeded, under an exclusive `flock` per release (tests of several
//! processes may ask at once): a root that exists is complete. Its name holds a hash of the
//! recipe (release, variant, packages), so a changed recipe makes a new root; roots of older
//! recipes are left for the operator to delete (`rm -rf /var/cache/guest-agent-tests`).
//!
//! [`Isolated::on`]: crate::packages::Isolated::on

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// Where the roots are kept between runs.
pub const CACHE_DIR: &str = "/var/cache/guest-agent-tests";
/// The mirror debootstrap fetches from.
pub const MIRROR: &str = "http://deb.debian.org/debian";

/// One Debian release of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// debootstrap's suite name.
    pub codename: &'static str,
    /// "Debian 11" and so on.
    pub name: &'static str,
    /// Packages beyond minbase.
    pub include: &'static str,
}

const BASE: &str = "openssh-server,openssh-client,sudo,procps";

pub const BULLSEYE: Release = Release {
    codename: "bullseye",
    name: "Debian 11",
    include: BASE,
};
pub const BOOKWORM: Release = Release {
    codename: "bookworm",
    name: "Debian 12",
    include: BASE,
};
/// Debian 13 with systemd-userdbd, whose sshd drop-in names `userdbctl` as the
/// AuthorizedKeysCommand (coexistence).
pub const TRIXIE: Release = Release {
    codename: "trixie",
    name: "Debian 13",
    include: "openssh-server,openssh-client,sudo,procps,systemd-userdbd",
};

pub const ALL: [Release; 3] = [BULLSEYE, BOOKWORM, TRIXIE];

/// FNV-1a, 64 bits: a stable name for a recipe (not a security boundary).
fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Release {
    fn recipe(&self) -> String {
        format!("{} minbase {} {MIRROR}", self.codename, self.include)
    }

    /// The root's directory (it exists only once complete).
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(CACHE_DIR).join(format!(
            "debian-{}-{:012x}",
            self.codename,
            fnv64(&self.recipe()) & 0xffff_ffff_ffff
        ))
    }

    /// The root, made first when it is not cached. Panics with debootstrap's output when it
    /// cannot be made (no network to the mirror, no debootstrap: scripts/test installs it).
    pub fn root(&self) -> PathBuf {
        let dir = self.dir();
        std::fs::create_dir_all(CACHE_DIR).expect("cache dir");
        let lock_path = PathBuf::from(CACHE_DIR).join(format!("{}.lock", self.codename));
        let lock = std::fs::File::create(&lock_path).expect("lock file");
        // SAFETY: flock on an open descriptor; released when `lock` is closed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {}", lock_path.display());
        if dir.is_dir() {
            return dir;
        }
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let t0 = Instant::now();
        let out = Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={}", self.include)])
            .arg(self.codename)
            .arg(&tmp)
            .arg(MIRROR)
            .output()
            .unwrap_or_else(|e| panic!("debootstrap (apt-get install debootstrap): {e}"));
        assert!(
            out.status.success(),
            "debootstrap {} failed ({}):\n{}\n{}",
            self.codename,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &dir).expect("rename the new root into place");
        eprintln!(
            "made the {} root {} in {:.0?}",
            self.name,
            dir.display(),
            t0.elapsed()
        );
        dir
    }

    /// A file of the root (e.g. to read a version).
    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.dir().join(path.trim_start_matches('/'))).unwrap_or_default()
    }
}
