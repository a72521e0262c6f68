//! Everything doctor looks at, gathered in one place and bounded in time: the metadata tree,
//! the OS Login profile and roles, `sshd -t`/`-T` and the config files, `lstat` of paths,
//! nsswitch.conf and the NSS module, the user as glibc sees it, the CA file, the certificate,
//! the daemon's socket. Nothing here decides; [`super::checks`] does.

use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guest_agent_wire::proto::{Request, SOCKET_PATH};
use serde_json::Value;

use super::decide::oslogin_state;
use super::perms::{Entry, Kind, Stat, with_parents};
use super::sshd_scan::{self, ConfigLine};
use crate::config::Config;
use crate::host::{SshdPaths, command, nsswitch};
use crate::mds::{ClientSettings, GceClient, Snapshot, query_escape};
use crate::oslogin::authorize::{Decision, Policy, ask};
use crate::oslogin::certificate::CertInfo;
use crate::oslogin::profile::{OsUser, parse_single_user};

/// Deadline of one metadata request.
pub const METADATA_DEADLINE: Duration = Duration::from_secs(3);
/// Deadline of one `sshd -t` / `sshd -T` run.
pub const SSHD_DEADLINE: Duration = Duration::from_secs(5);
/// Deadline of the daemon's answer.
pub const DAEMON_DEADLINE: Duration = Duration::from_secs(2);
/// Where the OS Login reconciler remembers what it applied.
const OSLOGIN_STATE: &str = "/var/lib/guest-agent/oslogin-state.json";
/// Largest certificate file read.
const MAX_CERT_BYTES: u64 = 64 * 1024;

/// The metadata service's answer to the whole-tree request.
#[derive(Debug)]
pub struct MetadataFacts {
    pub url: String,
    pub latency: Duration,
    /// The tree as a snapshot, or why there is none (unreachable, no flavor echo, bad shape).
    pub snapshot: Result<Snapshot, String>,
}

/// The OS Login profile lookup for the user.
#[derive(Debug)]
pub enum ProfileFacts {
    /// Not asked (no user, or the metadata service did not answer the tree).
    NotAsked,
    /// `users?username=` answered 404 (or a profile for another name).
    None,
    /// The profile, with ALL its keys (expired ones too; `expires_usec` tells).
    Found(OsUser),
    Error(String),
}

/// `sshd -t` and `sshd -T` (with `-C` when a user is given) and the scanned config.
#[derive(Debug)]
pub struct SshdFacts {
    pub paths: SshdPaths,
    /// `sshd -t`: `Err` holds sshd's message (or why it could not run).
    pub test: Result<(), String>,
    /// `sshd -T` output, when `-t` passed.
    pub effective: Option<Result<String, String>>,
    pub lines: Vec<ConfigLine>,
}

/// The user as glibc resolves it.
#[derive(Debug, Clone)]
pub struct PasswdFacts {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
    /// Listed in /etc/passwd (else it came from another NSS module: ours).
    pub local: bool,
    /// The primary group is named like the user and has no other members.
    pub private_group: bool,
    pub shell_stat: Result<Stat, String>,
}

#[derive(Debug)]
pub struct CaFacts {
    pub path: PathBuf,
    pub stat: Result<Stat, String>,
    pub size: u64,
    /// Age of the content (now - mtime).
    pub age: Option<Duration>,
    /// SHA256 fingerprints of the keys it holds.
    pub fingerprints: Vec<String>,
    pub bad_lines: usize,
}

#[derive(Debug)]
pub struct Facts {
    pub now_unix: i64,
    pub root: bool,
    pub user: Option<String>,
    pub metadata: MetadataFacts,
    /// `enabled` from the OS Login reconciler's state file: what the agent last applied.
    pub agent_applied_oslogin: Option<bool>,
    pub profile: ProfileFacts,
    /// (login, adminLogin) decisions, asked only for an OS Login profile while OS Login is on.
    pub roles: Option<(Decision, Decision)>,
    pub sshd: Option<SshdFacts>,
    pub helper: Vec<Entry>,
    pub nsswitch: Result<String, String>,
    /// sshd's PAM stack (`oslogin.pam_file`) and the PAM module's file check (two-step
    /// verification): the module's path, or why it is not usable.
    pub pam_stack: Result<String, String>,
    pub pam_module: Result<PathBuf, String>,
    /// Where the dynamic loader found the NSS module, or dlopen's error.
    pub nss_module: Result<String, String>,
    /// `None`: no user given; `Some(Err)`: does not resolve (or the lookup failed).
    pub passwd: Option<Result<PasswdFacts, String>>,
    /// authorized_keys, ~/.ssh, home (lstat), when the user resolves.
    pub ssh_chain: Vec<Entry>,
    pub ca: CaFacts,
    /// The `--cert` file: path and its parse.
    pub cert: Option<(PathBuf, Result<CertInfo, String>)>,
    /// The daemon's answer time, or why it did not answer.
    pub daemon: Result<Duration, String>,
    /// Google's guest agent on this VM: its traces, its processes, our takeover report.
    pub google: GoogleFacts,
    /// The local accounts as the agent reads them (for the OS Login admission rules).
    pub local_accounts: Result<crate::oslogin::directory::LocalAccounts, String>,
}

/// Google's guest agent beside us (issue 16).
#[derive(Debug, Default)]
pub struct GoogleFacts {
    /// What a takeover would change (its plan), when anything of Google's is on the VM.
    pub plan: Option<crate::takeover::plan::Plan>,
    /// Pids of its daemons still running (`google_guest_agent`, `google_oslogin_nss_cache`).
    pub running: Vec<(i32, String)>,
    /// Our takeover report: (status, unix time).
    pub report: Option<(crate::takeover::Status, i64)>,
}

/// Processes of Google's agent: by `/proc/PID/comm` (15 bytes: `google_guest_ag`) or the
/// executable's name.
fn google_processes() -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<(i32, String)> = dir
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim();
            let exe = std::fs::read_link(e.path().join("exe"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            let name = [comm, exe.as_str()]
                .into_iter()
                .find(|n| n.starts_with("google_guest_ag") || n.starts_with("google_oslogin"))?;
            Some((pid, name.to_owned()))
        })
        .collect();
    out.sort();
    out
}

fn google_facts(config: &Config, snapshot: Option<&Snapshot>, oslogin_on: bool) -> GoogleFacts {
    let paths = crate::takeover::apply::Paths::default();
    let ctx = crate::takeover::apply::Context {
        oslogin_on,
        two_factor: snapshot
            .and_then(|s| s.flag("enable-oslogin-2fa"))
            .is_some_and(|(v, _)| v),
        sudo_group: config.accounts.sudo_group.clone(),
        helper: config.oslogin.sshd_program(),
    };
    let found = crate::takeover::apply::gather(&paths, &ctx);
    GoogleFacts {
        plan: found
            .any()
            .then(|| crate::takeover::plan::plan(&found, &paths.traces)),
        running: google_processes(),
        report: crate::takeover::Report::load(&paths.report)
            .ok()
            .flatten()
            .map(|r| (r.status, r.at)),
    }
}

pub fn stat(path: &Path) -> Result<Stat, String> {
    let m = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    let ft = m.file_type();
    Ok(Stat {
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode() & 0o7777,
        kind: if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else {
            Kind::Other
        },
    })
}

fn entries(paths: Vec<PathBuf>) -> Vec<Entry> {
    paths
        .into_iter()
        .map(|path| Entry {
            stat: stat(&path),
            path,
        })
        .collect()
}

/// Gathers everything (what is asked depends on whether OS Login is on:
/// [`oslogin_state`] decides, as the checks do).
pub fn gather(config: &Config, user: Option<&str>, cert: Option<&Path>) -> Facts {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let root = nix::unistd::geteuid().is_root();
    let agent_applied_oslogin = std::fs::read(OSLOGIN_STATE)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("enabled").and_then(Value::as_bool));

    let (metadata, profile, roles) =
        remote(config, user, |s| oslogin_state(s, agent_applied_oslogin).on);
    let on = oslogin_state(metadata.snapshot.as_ref().ok(), agent_applied_oslogin).on;
    let metadata_snapshot = metadata.snapshot.as_ref().ok().cloned();

    let sshd = root.then(|| sshd_facts(user));
    let helper_path = PathBuf::from(config.oslogin.sshd_program());
    let resolved = std::fs::canonicalize(&helper_path).unwrap_or(helper_path);
    let helper = entries(with_parents(&resolved));
    let nsswitch = std::fs::read_to_string(&nsswitch::NsswitchPaths::default().file)
        .map_err(|e| e.to_string());
    let pam_stack = std::fs::read_to_string(&config.oslogin.pam_file).map_err(|e| e.to_string());
    let pam_module =
        crate::host::pam::check_module(&config.oslogin.pam_module).map_err(|e| e.to_string());
    let nss_module = if on {
        load_nss_module()
    } else {
        Err("not checked (OS Login off)".into())
    };
    let passwd = user.map(passwd_facts);
    let ssh_chain = match &passwd {
        Some(Ok(p)) => {
            let ssh = p.home.join(".ssh");
            entries(vec![ssh.join("authorized_keys"), ssh, p.home.clone()])
        }
        _ => Vec::new(),
    };
    Facts {
        now_unix,
        root,
        user: user.map(str::to_owned),
        metadata,
        agent_applied_oslogin,
        profile,
        roles,
        sshd,
        helper,
        nsswitch,
        pam_stack,
        pam_module,
        nss_module,
        passwd,
        ssh_chain,
        ca: ca_facts(Path::new(&config.oslogin.ca_file)),
        cert: cert.map(|p| (p.to_path_buf(), read_cert(p))),
        local_accounts: crate::oslogin::directory::LocalAccounts::read(
            Path::new("/etc/passwd"),
            Path::new("/etc/group"),
        ),
        daemon: daemon(),
        google: google_facts(config, metadata_snapshot.as_ref(), on),
    }
}

/// The metadata tree, then (for a user) the OS Login profile and, when OS Login is on, the
/// login and admin roles: each request within [`METADATA_DEADLINE`], nothing asked after the
/// tree failed (a hanging service costs one deadline, not four).
fn remote(
    config: &Config,
    user: Option<&str>,
    oslogin_on: impl Fn(Option<&Snapshot>) -> bool,
) -> (MetadataFacts, ProfileFacts, Option<(Decision, Decision)>) {
    let url = config.metadata.base_url.clone();
    let failed = |why: String| {
        (
            MetadataFacts {
                url: url.clone(),
                latency: Duration::ZERO,
                snapshot: Err(why),
            },
            ProfileFacts::NotAsked,
            None,
        )
    };
    let mut settings = match ClientSettings::from_config(&config.metadata) {
        Ok(s) => s,
        Err(e) => return failed(format!("metadata.base_url: {e}")),
    };
    settings.limits.connect_timeout = settings.limits.connect_timeout.min(METADATA_DEADLINE);
    let client = GceClient::new(settings).with_timeout(METADATA_DEADLINE);
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return failed("cannot start an async runtime".into());
    };
    let floor = config.oslogin.min_id;
    runtime.block_on(async {
        let start = Instant::now();
        let tree = client.tree(None).await;
        let latency = start.elapsed();
        let snapshot = tree
            .map_err(|e| e.to_string())
            .and_then(|t| Snapshot::from_tree(&t.json).map_err(|e| e.to_string()));
        let Some(user) = user.filter(|_| snapshot.is_ok()) else {
            return (
                MetadataFacts {
                    url: url.clone(),
                    latency,
                    snapshot,
                },
                ProfileFacts::NotAsked,
                None,
            );
        };
        let path = format!("oslogin/users?username={}", query_escape(user));
        // i64::MIN as "now": every key is kept, with its expiry, for the keys check to judge.
        let profile = match client.get_json::<Value>(&path).await {
            Ok(v) => match parse_single_user(&v, floor, i64::MIN) {
                Ok(p) if p.username == user => ProfileFacts::Found(p),
                Ok(_) => ProfileFacts::None,
                Err(e) => ProfileFacts::Error(format!("the profile is not usable: {e}")),
            },
            Err(e) if e.is_not_found() => ProfileFacts::None,
            Err(e) => ProfileFacts::Error(e.to_string()),
        };
        let roles = match (&profile, oslogin_on(snapshot.as_ref().ok())) {
            (ProfileFacts::Found(p), true) => Some(tokio::join!(
                ask(&client, &p.email, Policy::Login, None),
                ask(&client, &p.email, Policy::AdminLogin, None)
            )),
            _ => None,
        };
        (
            MetadataFacts {
                url: url.clone(),
                latency,
                snapshot,
            },
            profile,
            roles,
        )
    })
}

fn sshd_facts(user: Option<&str>) -> SshdFacts {
    let paths = SshdPaths::default();
    let config = paths.main_config.to_string_lossy().into_owned();
    let run = |args: &[&str]| -> Result<String, String> {
        let mut all = args.to_vec();
        all.extend(["-f", &config]);
        match command::run(&paths.sshd, &all, SSHD_DEADLINE) {
            Ok(out) if out.status.success() => Ok(out.stdout),
            Ok(out) => Err(out.message()),
            Err(e) => Err(e.to_string()),
        }
    };
    let test = run(&["-t"]).map(|_| ());
    let effective = test.is_ok().then(|| match user {
        Some(u) => run(&[
            "-T",
            "-C",
            &format!("user={u},host=localhost,addr=127.0.0.1"),
        ]),
        None => run(&["-T"]),
    });
    let lines = sshd_scan::flatten(
        &paths.main_config,
        &paths.ssh_dir,
        &[paths.dropin.as_path(), paths.early_dropin.as_path()],
        &sshd_scan::RealFs,
    );
    SshdFacts {
        paths,
        test,
        effective,
        lines,
    }
}

unsafe extern "C" {
    fn dlopen(filename: *const std::ffi::c_char, flag: std::ffi::c_int) -> *mut std::ffi::c_void;
    fn dlclose(handle: *mut std::ffi::c_void) -> std::ffi::c_int;
    fn dlerror() -> *const std::ffi::c_char;
}

/// RTLD_LAZY on Linux.
const RTLD_LAZY: std::ffi::c_int = 1;

/// Loads the NSS module by its soname, as glibc does, and says where the loader found it.
fn load_nss_module() -> Result<String, String> {
    let soname = format!("libnss_{}.so.2", nsswitch::DEFAULT_MODULE);
    let c = CString::new(soname.clone()).map_err(|_| "bad module name".to_string())?;
    // SAFETY: dlopen/dlerror/dlclose are called with a valid NUL-terminated name and the
    // handle dlopen returned; the module is the one glibc loads into every process anyway
    // (no constructors beyond Rust's), and it is closed again before returning.
    unsafe {
        let handle = dlopen(c.as_ptr(), RTLD_LAZY);
        if handle.is_null() {
            let err = dlerror();
            let why = if err.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            };
            return Err(why);
        }
        let found = std::fs::read_to_string("/proc/self/maps")
            .ok()
            .and_then(|maps| {
                maps.lines()
                    .filter_map(|l| l.split_whitespace().nth(5))
                    .find(|p| p.contains(&soname))
                    .map(str::to_owned)
            })
            .unwrap_or(soname);
        dlclose(handle);
        Ok(found)
    }
}

fn passwd_facts(name: &str) -> Result<PasswdFacts, String> {
    if !guest_agent_wire::names::is_valid_name(name) {
        return Err(format!("{name:?} is not a valid user name"));
    }
    let u = match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => u,
        Ok(None) => return Err("no such user (getpwnam found nothing)".into()),
        Err(e) => return Err(format!("getpwnam failed: {e}")),
    };
    let local = crate::host::passwd::parse_passwd(
        &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
    )
    .iter()
    .any(|e| e.name == name);
    let private_group = matches!(
        nix::unistd::Group::from_gid(u.gid),
        Ok(Some(g)) if g.name == name && g.mem.iter().all(|m| m == name)
    );
    Ok(PasswdFacts {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        shell_stat: std::fs::metadata(&u.shell)
            .map_err(|e| e.to_string())
            .and_then(|_| stat(&std::fs::canonicalize(&u.shell).map_err(|e| e.to_string())?)),
        home: u.dir,
        shell: u.shell,
        local,
        private_group,
    })
}

fn ca_facts(path: &Path) -> CaFacts {
    let st = stat(path);
    let meta = std::fs::metadata(path).ok();
    let age = meta.as_ref().and_then(|m| m.modified().ok()).map(|t| {
        SystemTime::now()
            .duration_since(t)
            .unwrap_or(Duration::ZERO)
    });
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut fingerprints = Vec::new();
    let mut bad_lines = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match ssh_key::PublicKey::from_openssh(line) {
            Ok(k) => fingerprints.push(k.fingerprint(ssh_key::HashAlg::Sha256).to_string()),
            Err(_) => bad_lines += 1,
        }
    }
    CaFacts {
        path: path.to_path_buf(),
        stat: st,
        size: meta.map(|m| m.len()).unwrap_or(0),
        age,
        fingerprints,
        bad_lines,
    }
}

fn read_cert(path: &Path) -> Result<CertInfo, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_CERT_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    crate::oslogin::certificate::parse(text.trim())
}

/// A question that costs the daemon nothing and changes nothing: uid 0 is never an OS Login
/// user, so it answers NOTFOUND without asking the metadata service.
fn daemon() -> Result<Duration, String> {
    let start = Instant::now();
    guest_agent_wire::client::ask(
        Path::new(SOCKET_PATH),
        &Request::UserByUid(0),
        DAEMON_DEADLINE,
    )
    .map(|_| start.elapsed())
    .map_err(|e| e.to_string())
}
