//! A "VM" for end-to-end tests: inside the test's network namespace, a private mount
//! namespace with its own copy of /etc, tmpfs on /run, /home, /root, /var/lib and /srv, the
//! NSS module in an overlay on the library directory, and the agent's binaries under /srv
//! (root-owned 0755 all the way up, as sshd requires for AuthorizedKeysCommand). Nothing in
//! it reaches the host: the mounts vanish with the namespace, which dies with its holder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::TestEnv;
use crate::process::Proc;

pub const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";
/// Where the agent binary lives inside the VM.
pub const AGENT: &str = "/srv/guest-agent";
/// The program sshd runs with OS Login on (`guest-agent-sshd`, next to [`AGENT`] as the
/// package installs it, so the agent names it in sshd_config).
pub const SSHD_HELPER: &str = "/srv/guest-agent-sshd";

pub struct Vm {
    holder: Proc,
    root: PathBuf,
}

impl Vm {
    /// Builds the VM inside `env`'s network namespace.
    pub fn new(env: &TestEnv) -> Vm {
        let root = env.dir().join("vm");
        std::fs::create_dir_all(&root).expect("vm dir");
        let mut cmd = env.ns.command(Path::new("unshare"));
        cmd.args(["-m", "--propagation", "private", "sleep", "3600"]);
        let holder = Proc::spawn("vm-holder", cmd);
        // Wait until the holder is in its new mount namespace (milliseconds; a loaded machine
        // is given 30 s, and the setup below never runs anywhere else).
        let pid = holder.pid();
        let t0 = std::time::Instant::now();
        loop {
            let mine = std::fs::read_link("/proc/self/ns/mnt").ok();
            let its = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            if its.is_some() && its != mine && exe.is_some_and(|e| e.ends_with("sleep")) {
                break;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "the VM's holder never reached its mount namespace: {}",
                holder.dump()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let vm = Vm { holder, root };
        let nss = crate::bins::path("libnss_guestagent.so");
        let agent = crate::bins::agent();
        let script = format!(
            r#"set -e
R={root}
mkdir -p "$R/etc" "$R/libupper" "$R/libwork"
cp -a /etc/. "$R/etc/"
mount --bind "$R/etc" /etc
# The host's serial console is /dev/null in the VM: the agent's event lines (daemon.console,
# /dev/ttyS0 by default) never reach the machine's real console.
if [ -e /dev/ttyS0 ]; then mount --bind /dev/null /dev/ttyS0; fi
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/sshd && chmod 755 /run/sshd
mount -t tmpfs -o mode=755 tmpfs /home
mount -t tmpfs -o mode=755 tmpfs /var/lib
mount -t tmpfs -o mode=755 tmpfs /srv
mount -t tmpfs -o mode=700 tmpfs /root
cp {agent} {AGENT} && chmod 755 {AGENT}
cp {helper} {SSHD_HELPER} && chmod 755 {SSHD_HELPER}
cp {nss} "$R/libupper/libnss_guestagent.so.2"
# The PAM module where the package puts it (two-step verification), when it is built.
if [ -f {pam} ]; then mkdir -p "$R/libupper/security" && cp {pam} "$R/libupper/security/pam_guestagent.so" && chmod 644 "$R/libupper/security/pam_guestagent.so"; fi
mount -t overlay overlay -o lowerdir={LIBDIR},upperdir="$R/libupper",workdir="$R/libwork" {LIBDIR}
"#,
            root = vm.root.display(),
            agent = agent.display(),
            helper = crate::bins::path("guest-agent-sshd").display(),
            nss = nss.display(),
            pam = nss.with_file_name("libpam_guestagent.so").display(),
        );
        let out = vm.sh(&script);
        assert!(
            out.status.success(),
            "vm setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        vm
    }

    /// `program` run inside the VM (its mount and network namespaces).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.holder.pid().to_string(),
            "-m",
            "-n",
            "--",
            program,
        ]);
        c
    }

    /// A shell script run inside the VM, waited for.
    pub fn sh(&self, script: &str) -> Output {
        self.command("sh")
            .args(["-c", script])
            .output()
            .expect("nsenter sh")
    }

    /// `sh -c script` inside the VM; panics unless it succeeds; returns stdout.
    pub fn run(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Makes all of /var the VM's own for a test that writes outside /var/lib (Google's
    /// `/var/google-users.d`): an overlay on the host's /var whose writes land in the VM's
    /// directory, with the VM's own /var/lib (a tmpfs, and whatever is in it already) moved
    /// onto it. Idempotent.
    pub fn private_var(&self) {
        let r = self.root.display();
        self.run(&format!(
            "set -e; [ -e {r}/varupper ] && exit 0; mkdir -p {r}/varupper {r}/varwork {r}/varlib; \
             mount --move /var/lib {r}/varlib; \
             mount -t overlay overlay -o lowerdir=/var,upperdir={r}/varupper,workdir={r}/varwork /var; \
             mount --move {r}/varlib /var/lib"
        ));
    }

    /// A file's content inside the VM.
    pub fn read(&self, path: &str) -> Option<String> {
        let out = self.command("cat").arg(path).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A long-running process inside the VM.
    pub fn spawn(&self, name: &str, cmd: Command) -> Proc {
        Proc::spawn(name, cmd)
    }
}

/// `ssh -i KEY USER@127.0.0.1 COMMAND` from inside `ns` (batch mode, no host key checks).
pub fn ssh(ns: &crate::netns::Netns, key: &Path, user: &str, command: &str) -> Output {
    ssh_offering(ns, &[key], user, command)
}

/// [`ssh`] offering each of `keys` in turn (`-i` for each, in order).
pub fn ssh_offering(ns: &crate::netns::Netns, keys: &[&Path], user: &str, command: &str) -> Output {
    ssh_command(ns, keys, user, command, false)
        .output()
        .expect("ssh")
}

/// The `ssh` command line of [`ssh_offering`] (batch mode, no host key checks, errors only),
/// not run; `tty`: `-tt` (a session with a terminal, kept open by the caller).
pub fn ssh_command(
    ns: &crate::netns::Netns,
    keys: &[&Path],
    user: &str,
    command: &str,
    tty: bool,
) -> Command {
    let mut c = ns.command(Path::new("ssh"));
    if tty {
        c.arg("-tt");
    }
    c.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
    ])
    .args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
    ])
    .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]);
    for key in keys {
        c.arg("-i").arg(key);
    }
    c.arg(format!("{user}@127.0.0.1")).arg(command);
    c
}

/// Starts a real sshd in the VM (`extra`: e.g. `-o UsePAM=no`) and waits until it listens.
pub fn start_sshd(vm: &Vm, extra: &[&str]) -> Proc {
    let mut cmd = vm.command("/usr/sbin/sshd");
    cmd.args(["-D", "-e", "-f", "/etc/ssh/sshd_config"])
        .args(extra);
    let t0 = std::time::Instant::now();
    let sshd = Proc::spawn("sshd", cmd);
    sshd.expect_line(
        t0,
        &["Server listening"],
        std::time::Duration::from_secs(30),
    );
    sshd
}
