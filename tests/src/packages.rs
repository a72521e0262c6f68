//! Building the deb and rpm from this workspace, and an isolated copy of this machine to
//! install them into (the packages and upgrade tests).
//!
//! Building: `cargo build --release -p guest-agent -p guest-agent-nss` (a no-op when
//! scripts/test built them before the tests), then `cargo deb --no-build` and `cargo
//! generate-rpm` into `TARGET/packages/`: always the packages of the sources under test. The
//! upgrade test also builds "the next release" from the same tree ([`Build::next`]): its own
//! target directory, the `next-version` build flag (every version it writes one higher) and a
//! package version one higher.
//!
//! The isolated copy: in a private mount and PID namespace (inside a network namespace where
//! the metadata emulator answers on 169.254.169.254), an overlay with `/` as its lower layer
//! and its upper layer on a tmpfs, /proc, /dev and /sys, a fresh tmpfs on /run and /tmp, and
//! `chroot` into it. Nothing reaches the host; everything vanishes with the namespace holder,
//! whose death kills every process in the PID namespace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::process::Proc;
use crate::require_root;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace dir")
}

/// The target directory holding this test executable (target/debug/deps/packages-HASH).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent()?.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace().join("target"))
}

pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `cmd`, prints what it said, panics unless it succeeded.
pub fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let said = text(&out);
    println!("--- {what}: {}\n{said}", out.status);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{said}",
        out.status
    );
    said
}

pub fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Root, and every tool present. Without root: a loud skip. As root (CI), a missing tool is a
/// failure: scripts/test installs them.
pub fn ready(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    let cargo = cargo();
    let checks: [(&str, bool); 7] = [
        (
            "cargo-deb (cargo install --locked cargo-deb)",
            works(&cargo, &["deb", "--version"]),
        ),
        (
            "cargo-generate-rpm (cargo install --locked cargo-generate-rpm)",
            works(&cargo, &["generate-rpm", "--version"]),
        ),
        (
            "lintian (apt-get install lintian)",
            works("lintian", &["--version"]),
        ),
        (
            "rpmlint (apt-get install rpmlint)",
            works("rpmlint", &["--version"]),
        ),
        ("rpm (apt-get install rpm)", works("rpm", &["--version"])),
        ("dpkg", works("dpkg", &["--version"])),
        ("unshare (util-linux)", works("unshare", &["--version"])),
    ];
    let missing: Vec<&str> = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
    assert!(
        missing.is_empty(),
        "{test}: missing tools {missing:?}; scripts/test installs them"
    );
    true
}

/// Which build of the packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// The workspace as it is, in the workspace's target directory.
    This,
    /// The next release: `TARGET/upgrade-next`, the `next-version` flag, the version
    /// [`NEXT_VERSION`].
    Next,
}

/// The package version of [`Build::Next`] (the workspace's is 0.1.0).
pub const NEXT_VERSION: &str = "0.1.1";

/// The packages of one build.
pub struct Packages {
    pub deb: PathBuf,
    pub rpm: PathBuf,
    /// The target directory they were built in.
    pub target: PathBuf,
    /// Where the packaged binaries are (`TARGET/x86_64-unknown-linux-gnu/release`).
    pub release: PathBuf,
}

/// The Rust target the packages are built for (packaging/build's default).
pub const PACKAGE_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the release binaries and both packages of `build` (call once per test run), the
/// way a release is made: `packaging/build` (glibc 2.28 floor, checked).
pub fn build(build: Build) -> Packages {
    let ws = workspace();
    let target = match build {
        Build::This => target_dir(),
        Build::Next => target_dir().join("upgrade-next"),
    };
    let out = target.join("packages");
    let out_arg = out.display().to_string();
    let mut cmd = Command::new(ws.join("packaging/build"));
    cmd.current_dir(&ws)
        .env("CARGO_TARGET_DIR", &target)
        .args(["--out", &out_arg]);
    if build == Build::Next {
        cmd.args([
            "--features",
            "guest-agent/next-version,guest-agent-nss/next-version",
            "--deb-version",
            &format!("{NEXT_VERSION}-1"),
            "--rpm-version",
            NEXT_VERSION,
        ]);
    }
    let t0 = Instant::now();
    run(&format!("packaging/build ({build:?})"), &mut cmd);
    let find = |ext: &str| -> PathBuf {
        let found: Vec<PathBuf> = std::fs::read_dir(&out)
            .expect("packages dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        assert_eq!(found.len(), 1, "one .{ext} in {}: {found:?}", out.display());
        found.into_iter().next().unwrap()
    };
    let (deb, rpm) = (find("deb"), find("rpm"));
    println!(
        "release build and packages {:.1?}: {} {}",
        t0.elapsed(),
        deb.display(),
        rpm.display()
    );
    let release = target.join(PACKAGE_TARGET).join("release");
    Packages {
        deb,
        rpm,
        target,
        release,
    }
}

/// A private mount and PID namespace (in `ns`) holding an overlay copy of `/` to chroot into.
pub struct Isolated {
    pub root: String,
    /// PID (in the host's namespace) of the holder's `sleep`, PID 1 of the new PID namespace.
    pub pid: i32,
    _holder: Proc,
}

impl Isolated {
    /// An overlay copy of this machine's `/`.
    pub fn new(ns: &Netns, dir: &Path) -> Isolated {
        Isolated::on(ns, dir, Path::new("/"))
    }

    /// An overlay copy of the root `lower` (another release's userland: see
    /// [`crate::releases`]), with this machine's /proc, /dev and /sys.
    pub fn on(ns: &Netns, dir: &Path, lower: &Path) -> Isolated {
        let mut cmd = ns.command(Path::new("unshare"));
        cmd.args([
            "-m",
            "-p",
            "-f",
            "--kill-child",
            "--propagation",
            "private",
            "sleep",
            "3600",
        ]);
        let holder = Proc::spawn("namespace holder", cmd);
        let parent = holder.pid();
        let mut pid = None;
        for _ in 0..400 {
            let children =
                std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                    .unwrap_or_default();
            if let Some(child) = children.split_whitespace().next() {
                let exe = std::fs::read_link(format!("/proc/{child}/exe")).ok();
                if exe.is_some_and(|e| e.ends_with("sleep")) {
                    pid = child.parse().ok();
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = dir.join("iso");
        std::fs::create_dir_all(&t).expect("iso dir");
        let iso = Isolated {
            root: format!("{}/merged", t.display()),
            pid: pid.expect("the holder's sleep"),
            _holder: holder,
        };
        // /run and /tmp are fresh (the host's are on the root filesystem); /run/sshd is there
        // as on a machine where sshd runs (the daemon creates it for `sshd -t` otherwise).
        // The host's serial console is /dev/null inside: the daemon's event lines
        // (`daemon.console`) never reach the machine's real console.
        let out = iso.outside(&format!(
            "set -e; T={t}; mount -t tmpfs -o mode=755 tmpfs $T; mkdir $T/upper $T/work $T/merged
             mount -t overlay overlay -o lowerdir={lower},upperdir=$T/upper,workdir=$T/work $T/merged
             M=$T/merged
             mount -t proc proc $M/proc; mount --bind /dev $M/dev; mount --bind /sys $M/sys
             if [ -e $M/dev/ttyS0 ]; then mount --bind /dev/null $M/dev/ttyS0; fi
             mount -t tmpfs -o mode=755 tmpfs $M/run; mount -t tmpfs -o mode=1777 tmpfs $M/tmp
             mkdir -m 755 $M/run/sshd",
            t = t.display(),
            lower = lower.display()
        ));
        assert!(out.status.success(), "isolation setup: {}", text(&out));
        iso
    }

    pub fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-m", "-n", "-p", "--"]);
        c.env_remove("RUST_LOG").env_remove("JOURNAL_STREAM");
        c.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        c.env("LC_ALL", "C");
        c
    }

    /// A script in the namespaces, outside the chroot.
    pub fn outside(&self, script: &str) -> Output {
        self.enter()
            .args(["sh", "-c", script])
            .output()
            .expect("nsenter")
    }

    /// A command in the chroot.
    pub fn command(&self, script: &str) -> Command {
        let mut c = self.enter();
        c.args(["chroot", &self.root, "sh", "-c", script]);
        c
    }

    pub fn sh(&self, script: &str) -> Output {
        self.command(script).output().expect("nsenter chroot")
    }

    /// `script` in the chroot; printed; panics unless it succeeds.
    pub fn run(&self, what: &str, script: &str) -> String {
        run(what, &mut self.command(script))
    }

    pub fn exists(&self, path: &str) -> bool {
        self.sh(&format!("test -e {path} || test -L {path}"))
            .status
            .success()
    }

    /// Every path under the trees a package or the daemon may touch, with type, mode and
    /// owner; contents by SHA-256 under /etc, /var, /run, /home and /srv; size and mtime under
    /// /usr and /opt (5 GB: hashing them would take minutes, and dpkg writes no file there
    /// but its own).
    pub fn snapshot(&self) -> BTreeSet<String> {
        let out = self.sh("set -e; export LC_ALL=C
             H='/etc /var /run /home /srv'
             find /usr /opt $H -xdev -type d -printf 'd %m %u:%g %p\\n'
             find /usr /opt -xdev ! -type d -printf '%y %m %u:%g %s %T@ %p %l\\n'
             find $H -xdev ! -type d -printf '%y %m %u:%g %p %l\\n'
             find $H -xdev -type f -print0 | xargs -0 -r sha256sum | sed 's/^/sha256 /'");
        assert!(
            out.status.success(),
            "snapshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
