//! Access through a bastion: the VMs have no address the client can reach, and every login goes
//! `ssh -J jump@BASTION user@VM` through a plain OpenSSH jump host. Needs root.
//!
//! This is how cloud bastion services reach VMs without public addresses (a bastion VM in the
//! same network, Yandex Cloud's and GCE's bastion hosts, IAP-style TCP forwarding): the client
//! only reaches the bastion, the bastion opens a TCP stream (`direct-tcpip`, what ProxyJump asks
//! for) to the VM's sshd on its private address, and the client's SSH session to the VM runs end
//! to end inside that stream. The bastion never decides who may log in to the VM and never sees
//! the VM session's keys or certificates: the VM's sshd authenticates the client itself (host
//! keys pinned in the client's known_hosts), and the guest agent authorizes live (OS Login
//! roles, the CA's certificates, metadata keys) exactly as for a direct login. So revoking the
//! role cuts access at the next jump login too, without touching the bastion.
//!
//! Topology (three kinds of network namespace joined by veth pairs, link-local addresses only,
//! no default route anywhere, the host's namespace untouched):
//!
//! ```text
//!  client               bastion (sshd, user jump, ip_forward=0)         VM "oslogin" (agent,
//!  169.254.10.2/24 ---- 169.254.10.1/24                                 emulator, sshd)
//!                       169.254.20.1/24 ------------------------------- 169.254.20.2/24
//!                       169.254.30.1/24 ------------------------------- 169.254.30.2/24
//!                                                                       VM "keys" (agent with
//!                                                                       OS Login off, emulator,
//!                                                                       sshd)
//! ```
//!
//! The bastion is its own network namespace with a private mount namespace (its own copy of
//! /etc, tmpfs on /run and /home) running only OpenSSH's sshd, with a local user `jump`, public
//! keys only, `AllowTcpForwarding local` and `PermitOpen` limited to the two VMs' sshd: no agent,
//! no emulator. Two VMs because OS Login and metadata keys are exclusive on one VM.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use guest_agent_e2e::accounts::KeysVm;
use guest_agent_e2e::netns::Netns;
use guest_agent_e2e::oslogin::{OsLoginVm, keypair, user};
use guest_agent_e2e::process::Proc;
use guest_agent_e2e::require_root;

const CLIENT: &str = "169.254.10.2";
const BASTION: &str = "169.254.10.1";
const BASTION_TO_OSLOGIN: &str = "169.254.20.1";
const VM_OSLOGIN: &str = "169.254.20.2";
const BASTION_TO_KEYS: &str = "169.254.30.1";
const VM_KEYS: &str = "169.254.30.2";
/// The jump host's local user.
const JUMP_USER: &str = "jump";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// One veth pair created directly between two namespaces (it never exists in the host's), with
/// a /24 on each end. Deleted on drop (deleting one end deletes both; deleting a namespace would
/// too).
struct Veth {
    ns: String,
    dev: String,
}

impl Veth {
    fn new(a: &Netns, a_dev: &str, a_addr: &str, b: &Netns, b_dev: &str, b_addr: &str) -> Veth {
        ip(&[
            "-n",
            a.name(),
            "link",
            "add",
            a_dev,
            "type",
            "veth",
            "peer",
            "name",
            b_dev,
            "netns",
            b.name(),
        ]);
        let veth = Veth {
            ns: a.name().to_owned(),
            dev: a_dev.to_owned(),
        };
        for (ns, dev, addr) in [(a, a_dev, a_addr), (b, b_dev, b_addr)] {
            ip(&[
                "-n",
                ns.name(),
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]);
            ip(&["-n", ns.name(), "link", "set", dev, "up"]);
        }
        veth
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "del", &self.dev])
            .output();
    }
}

/// A plain Linux host in `ns`: a private mount namespace with its own copy of /etc and tmpfs on
/// /run and /home, held by one process (killed by PID on drop, the mounts vanish with it).
struct Host {
    holder: Proc,
}

impl Host {
    fn new(ns: &Netns, root: &Path) -> Host {
        std::fs::create_dir_all(root.join("etc")).expect("host dir");
        let script = format!(
            r#"set -e
cp -a /etc/. "{root}/etc/"
mount --bind "{root}/etc" /etc
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/sshd && chmod 755 /run/sshd
mount -t tmpfs -o mode=755 tmpfs /home
echo host-ready
exec sleep 3600
"#,
            root = root.display()
        );
        let mut cmd = ns.command(Path::new("unshare"));
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
        let t0 = Instant::now();
        let holder = Proc::spawn("bastion-holder", cmd);
        holder.expect_line(t0, &["host-ready"], Duration::from_secs(30));
        Host { holder }
    }

    /// `program` inside the host (its mount and network namespaces).
    fn command(&self, program: &str) -> Command {
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

    /// `sh -c script` inside the host; panics unless it succeeds; returns stdout.
    fn run(&self, script: &str) -> String {
        let out = self
            .command("sh")
            .args(["-c", script])
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "{script}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Everything the test starts. Fields drop in order: sshd, the bastion's mount namespace, the
/// links, the VMs (their processes, namespaces, directories), the bastion's and client's
/// namespaces, the directory.
struct Site {
    bastion_sshd: Proc,
    bastion: Host,
    _links: Vec<Veth>,
    oslogin: OsLoginVm,
    keys: KeysVm,
    bastion_ns: Netns,
    client_ns: Netns,
    dir: tempfile::TempDir,
    /// alice's registered key (OS Login), her certificate-only key and its public line,
    /// carol's metadata key.
    alice_key: PathBuf,
    cert_key: PathBuf,
    cert_pub: String,
    carol_key: PathBuf,
}

/// A namespace with nothing on it but lo (the harness puts the metadata address on every
/// namespace's loopback; the client and the bastion are not VMs).
fn plain_netns(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ip(&[
        "-n",
        ns.name(),
        "addr",
        "del",
        "169.254.169.254/32",
        "dev",
        "lo",
    ]);
    ns
}

fn sysctl(ns: &Netns, key: &str, value: Option<&str>) -> String {
    let mut c = ns.command(Path::new("sysctl"));
    match value {
        Some(v) => c.args(["-qw", &format!("{key}={v}")]),
        None => c.args(["-n", key]),
    };
    let out = c.output().expect("sysctl");
    assert!(
        out.status.success(),
        "sysctl {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Site {
    fn start() -> Site {
        let dir = tempfile::Builder::new()
            .prefix("ga-e2e-bastion-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path().to_owned();
        let client_ns = plain_netns("client");
        let bastion_ns = plain_netns("bastion");
        // A new namespace may inherit the host's IPv4 settings: forwarding off, explicitly.
        sysctl(&bastion_ns, "net.ipv4.ip_forward", Some("0"));
        sysctl(&bastion_ns, "net.ipv6.conf.all.forwarding", Some("0"));

        let (alice_key, alice_pub) = keypair(&d, "alice");
        let (cert_key, cert_pub) = keypair(&d, "alice-cert-only");
        let (carol_key, carol_pub) = keypair(&d, "carol");
        let (jump_key, jump_pub) = keypair(&d, "jump");

        let oslogin = OsLoginVm::start("bastol", "ca_refresh_secs = 1\n", |env| {
            env.emulator().ok(
                "POST",
                "/oslogin/users",
                Some(&user("alice", 200001, &alice_pub, true, false).to_string()),
            );
        });
        let keys = KeysVm::start("bastkeys", "", &[], |env| {
            env.emulator()
                .set_attribute("instance", "ssh-keys", &format!("carol:{carol_pub}\n"));
        });

        let links = vec![
            Veth::new(
                &client_ns,
                "to-bastion",
                CLIENT,
                &bastion_ns,
                "to-client",
                BASTION,
            ),
            Veth::new(
                &bastion_ns,
                "to-vm-oslogin",
                BASTION_TO_OSLOGIN,
                &oslogin.env.ns,
                "to-bastion",
                VM_OSLOGIN,
            ),
            Veth::new(
                &bastion_ns,
                "to-vm-keys",
                BASTION_TO_KEYS,
                &keys.env.ns,
                "to-bastion",
                VM_KEYS,
            ),
        ];

        let bastion = Host::new(&bastion_ns, &d.join("bastion"));
        bastion.run(&format!(
            r#"set -e
useradd -m -p '*' -s /bin/sh {JUMP_USER}
install -d -m 700 -o {JUMP_USER} -g {JUMP_USER} /home/{JUMP_USER}/.ssh
echo '{jump_pub}' > /home/{JUMP_USER}/.ssh/authorized_keys
chown {JUMP_USER}:{JUMP_USER} /home/{JUMP_USER}/.ssh/authorized_keys
chmod 600 /home/{JUMP_USER}/.ssh/authorized_keys
rm -f /etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C bastion -f /etc/ssh/ssh_host_ed25519_key
cat > /etc/ssh/sshd_config <<EOF
# A plain OpenSSH jump host: keys only, no shells, forwarding only to the VMs' sshd.
ListenAddress {BASTION}:22
HostKey /etc/ssh/ssh_host_ed25519_key
UsePAM no
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers {JUMP_USER}
AuthorizedKeysFile .ssh/authorized_keys
AllowTcpForwarding local
PermitOpen {VM_OSLOGIN}:22 {VM_KEYS}:22
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
ForceCommand /bin/false
LogLevel VERBOSE
EOF
/usr/sbin/sshd -t -f /etc/ssh/sshd_config
"#
        ));
        let mut cmd = bastion.command("/usr/sbin/sshd");
        cmd.args(["-D", "-e", "-f", "/etc/ssh/sshd_config"]);
        let t0 = Instant::now();
        let bastion_sshd = Proc::spawn("bastion-sshd", cmd);
        bastion_sshd.expect_line(
            t0,
            &["Server listening on", BASTION],
            Duration::from_secs(30),
        );

        // The client pins every host key: the bastion's, and the VMs' (end to end through the
        // tunnel, the bastion could not impersonate them).
        let mut known = format!(
            "{BASTION} {}",
            bastion.run("cat /etc/ssh/ssh_host_ed25519_key.pub")
        );
        for (addr, vm) in [(VM_OSLOGIN, oslogin.env.vm()), (VM_KEYS, keys.env.vm())] {
            for line in vm.run("cat /etc/ssh/ssh_host_*_key.pub").lines() {
                known.push_str(&format!("{addr} {line}\n"));
            }
        }
        std::fs::write(d.join("known_hosts"), known).expect("known_hosts");
        // Per-host options live in a file because ProxyJump passes `-F` to the jump's ssh but
        // not `-o` or `-i`: the bastion's identity is chosen here, the VM's with `-i`.
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host {BASTION}\n    User {JUMP_USER}\n    IdentityFile {jump}\n\
                 Host *\n    BatchMode yes\n    IdentitiesOnly yes\n    IdentityAgent none\n    \
                 StrictHostKeyChecking yes\n    UserKnownHostsFile {known}\n    \
                 GlobalKnownHostsFile /dev/null\n    UpdateHostKeys no\n    ConnectTimeout 5\n    \
                 ServerAliveInterval 2\n    ServerAliveCountMax 3\n    LogLevel ERROR\n",
                jump = jump_key.display(),
                known = d.join("known_hosts").display(),
            ),
        )
        .expect("ssh_config");

        Site {
            bastion_sshd,
            bastion,
            _links: links,
            oslogin,
            keys,
            bastion_ns,
            client_ns,
            dir,
            alice_key,
            cert_key,
            cert_pub,
            carol_key,
        }
    }

    /// `ssh` from the client namespace with the test's ssh_config, bounded by `timeout` (60 s,
    /// against a hang: a jump login takes about a second) as well as ConnectTimeout.
    fn ssh(&self, args: &[&str]) -> Output {
        let config = self.dir.path().join("ssh_config");
        self.client_ns
            .command(Path::new("timeout"))
            .args(["-k", "2", "60", "ssh", "-F"])
            .arg(config)
            .args(args)
            .output()
            .expect("ssh")
    }

    /// `ssh -J jump@BASTION -i KEY USER@VM id -un`.
    fn jump(&self, key: &Path, user: &str, vm: &str) -> Output {
        let key = key.display().to_string();
        self.ssh(&[
            "-J",
            &format!("{JUMP_USER}@{BASTION}"),
            "-i",
            &key,
            &format!("{user}@{vm}"),
            "id -un",
        ])
    }

    fn dump(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}",
            self.bastion_sshd.dump(),
            self.oslogin.env.agent().dump(),
            self.oslogin.sshd().dump(),
            self.keys.env.agent().dump(),
            self.keys
                .sshd
                .as_ref()
                .map(|s| s.dump())
                .unwrap_or_default()
        )
    }

    /// The jump login succeeds and `id -un` prints `user`; the bastion accepted its own user
    /// and the VM's sshd saw the connection come from the bastion's VM-side address.
    fn expect_login(&self, key: &Path, user: &str, vm: &str, what: &str) -> Duration {
        let t0 = Instant::now();
        let out = self.jump(key, user, vm);
        let took = t0.elapsed();
        assert!(
            out.status.success(),
            "{what}: jump login failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.dump()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), user, "{what}");
        let from = format!("Accepted publickey for {JUMP_USER} from {CLIENT}");
        assert!(
            self.bastion_sshd
                .wait_for_line(t0, &[&from], Duration::from_secs(10))
                .is_some(),
            "{what}: the bastion did not authenticate the jump:\n{}",
            self.bastion_sshd.dump()
        );
        let (sshd, bastion_side) = if vm == VM_OSLOGIN {
            (self.oslogin.sshd(), BASTION_TO_OSLOGIN)
        } else {
            (self.keys.sshd.as_ref().expect("sshd"), BASTION_TO_KEYS)
        };
        let accepted = format!("Accepted publickey for {user} from {bastion_side} ");
        assert!(
            sshd.wait_for_line(t0, &[&accepted], Duration::from_secs(10))
                .is_some(),
            "{what}: the VM's sshd did not see the login come from the bastion:\n{}",
            sshd.dump()
        );
        eprintln!("{what}: `id -un` = {user} through the bastion in {took:?}");
        took
    }
}

/// The CA file in the OS Login VM holds the emulator's current CA key.
fn wait_for_ca(vm: &OsLoginVm) {
    let a = vm.env.emulator().ok("GET", "/ca", None).json();
    let first = a["public_keys"][0].as_str().expect("a CA key").to_owned();
    let blob = first
        .split_whitespace()
        .nth(1)
        .expect("key blob")
        .to_owned();
    let t0 = Instant::now();
    loop {
        let file = vm
            .env
            .vm()
            .read("/etc/ssh/guest-agent/trusted-ca.pub")
            .unwrap_or_default();
        if file.contains(&blob) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "CA file never got the key: {file:?}\n{}",
            vm.env.agent().dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn logins_through_a_bastion_follow_os_login_certificates_and_metadata_keys() {
    if !require_root("logins_through_a_bastion_follow_os_login_certificates_and_metadata_keys") {
        return;
    }
    let t_start = Instant::now();
    let site = Site::start();
    eprintln!("topology up in {:?}", t_start.elapsed());

    // The bastion is a plain jump host: no helper decides logins there, it only relays to the
    // two VMs' sshd.
    let t = site
        .bastion
        .run("/usr/sbin/sshd -T -f /etc/ssh/sshd_config");
    for line in [
        "authorizedkeyscommand none".to_owned(),
        "authorizedprincipalscommand none".to_owned(),
        "allowtcpforwarding local".to_owned(),
        format!("permitopen {VM_OSLOGIN}:22 {VM_KEYS}:22"),
    ] {
        assert!(
            t.lines().any(|l| l == line),
            "bastion sshd -T lacks {line:?}:\n{t}"
        );
    }

    // The bastion does not forward, and the client has no route to either VM: a direct login
    // with alice's valid key does not even reach the VM's sshd.
    assert_eq!(sysctl(&site.bastion_ns, "net.ipv4.ip_forward", None), "0");
    let key = site.alice_key.display().to_string();
    let carol = site.carol_key.display().to_string();
    for (key, target) in [
        (&key, format!("alice@{VM_OSLOGIN}")),
        (&carol, format!("carol@{VM_KEYS}")),
    ] {
        let out = site.ssh(&["-o", "ConnectTimeout=2", "-i", key, &target, "id -un"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && !err.contains("Permission denied"),
            "the client reached {target} directly: {err}"
        );
        eprintln!("direct {target} from the client: {}", err.trim());
    }
    // Even a client that routes the VM's network through the bastion (and a VM that routes
    // back) gets nowhere: the bastion's kernel does not forward, only its sshd relays.
    ip(&[
        "-n",
        site.client_ns.name(),
        "route",
        "add",
        "169.254.20.0/24",
        "via",
        BASTION,
    ]);
    ip(&[
        "-n",
        site.oslogin.env.ns.name(),
        "route",
        "add",
        "169.254.10.0/24",
        "via",
        BASTION_TO_OSLOGIN,
    ]);
    let out = site.ssh(&[
        "-o",
        "ConnectTimeout=2",
        "-i",
        &key,
        &format!("alice@{VM_OSLOGIN}"),
        "id -un",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ip(&[
        "-n",
        site.client_ns.name(),
        "route",
        "del",
        "169.254.20.0/24",
    ]);
    ip(&[
        "-n",
        site.oslogin.env.ns.name(),
        "route",
        "del",
        "169.254.10.0/24",
    ]);
    assert!(
        !out.status.success() && !err.contains("Permission denied"),
        "the bastion forwarded the client's packets to the VM: {err}"
    );
    eprintln!(
        "direct alice@{VM_OSLOGIN} routed via the bastion: {}",
        err.trim()
    );

    // (a) OS Login user with a registered key, login role granted.
    site.expect_login(&site.alice_key, "alice", VM_OSLOGIN, "(a) OS Login key");

    // (b) OS Login user with a certificate from the emulator's CA, for a key OS Login does not
    // know: without the certificate it is refused, with it the login works.
    wait_for_ca(&site.oslogin);
    let out = site.jump(&site.cert_key, "alice", VM_OSLOGIN);
    assert!(
        !out.status.success(),
        "an unregistered key without a certificate opened alice's account"
    );
    site.oslogin
        .env
        .emulator()
        .sign_into("alice", &site.cert_pub, 0, &site.cert_key);
    let t0 = Instant::now();
    site.expect_login(
        &site.cert_key,
        "alice",
        VM_OSLOGIN,
        "(b) OS Login certificate",
    );
    assert!(
        site.oslogin
            .sshd()
            .wait_for_line(
                t0,
                &["Accepted publickey for alice", "-CERT"],
                Duration::from_secs(10)
            )
            .is_some(),
        "the certificate was not what logged in:\n{}",
        site.oslogin.sshd().dump()
    );

    // (c) metadata-keys user on the second VM (OS Login off there).
    site.expect_login(&site.carol_key, "carol", VM_KEYS, "(c) metadata key");

    // Revoking the login role: the next jump login fails, with the key and with the
    // certificate, although the bastion still lets the jump through.
    site.oslogin.env.emulator().ok(
        "PUT",
        "/oslogin/users/alice/roles",
        Some(r#"{"login": false, "admin": false}"#),
    );
    let since = Instant::now();
    for (key, what) in [(&site.alice_key, "key"), (&site.cert_key, "certificate")] {
        let t0 = Instant::now();
        let out = site.jump(key, "alice", VM_OSLOGIN);
        assert!(
            !out.status.success(),
            "revoked role, {what}: the jump login still worked\n{}",
            site.dump()
        );
        let from = format!("Accepted publickey for {JUMP_USER} from {CLIENT}");
        assert!(
            site.bastion_sshd
                .wait_for_line(t0, &[&from], Duration::from_secs(10))
                .is_some(),
            "revoked role, {what}: the bastion hop itself failed, so this proves nothing:\n{}",
            site.bastion_sshd.dump()
        );
        eprintln!(
            "revoked role, {what}: refused through the bastion in {:?}: {}",
            t0.elapsed(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    assert!(
        !site
            .oslogin
            .env
            .agent()
            .lines_since(since, &["login role not granted"])
            .is_empty()
            || !site
                .oslogin
                .sshd()
                .lines_since(since, &["login role not granted"])
                .is_empty(),
        "the VM refused for another reason:\n{}",
        site.dump()
    );
    // Granted again: the next jump login works (the refusal was the role, live).
    site.oslogin.env.emulator().ok(
        "PUT",
        "/oslogin/users/alice/roles",
        Some(r#"{"login": true, "admin": false}"#),
    );
    site.expect_login(&site.alice_key, "alice", VM_OSLOGIN, "role granted again");

    eprintln!("bastion test took {:?}", t_start.elapsed());
}
