//! The daemon's local socket: the NSS module, the helpers sshd runs and `guest-agent token`
//! ask here (protocol: `guest_agent_wire::proto`).
//!
//! Anyone may look users and groups up (what `getent` shows anyway). Login questions
//! (authorized keys, principals) are answered only to root and to the configured
//! AuthorizedKeysCommandUser, checked with SO_PEERCRED; tokens only to root and members of
//! `tokens.group`, checked with SO_PEERCRED and SO_PEERGROUPS ([`Peer`]). Every connection is
//! bounded: one request line of at most `MAX_REQUEST` bytes, read within 5 s (the whole line,
//! however slowly it trickles in), the answer written within 5 s.
//!
//! Hostile local users: peers other than root and the AuthorizedKeysCommandUser ("privileged"
//! below) share [`MAX_CONNECTIONS`] connections, at most [`MAX_CONNECTIONS_PER_UID`] each;
//! privileged peers have [`MAX_PRIVILEGED_CONNECTIONS`] of their own, so a flood never keeps
//! root's lookups or sshd's login questions out. Lookups of unprivileged peers that would go
//! to the metadata service spend a token bucket per uid ([`LOOKUP_BURST`], refilled at
//! [`LOOKUP_REFILL_PER_SEC`]) and one shared by all unprivileged uids
//! (`oslogin.unprivileged_lookup_burst`, `unprivileged_lookups_per_minute`): per-uid limits
//! alone multiply with the uids a user has (65,536 subordinate uids each, with user
//! namespaces), the shared one does not. Beyond either the answer is `UNAVAIL` at once, and
//! names already in the directory (or known not to exist) are still answered. Refusals and
//! rate limiting are logged once per uid and kind per [`LOG_EVERY`] (the shared budget's once
//! for all uids), with the count of what was left out.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use guest_agent_wire::proto::{self, Answer, MAX_REQUEST, Request};

use crate::oslogin::directory::Miss;
use crate::oslogin::service::{LOOKUP_GATE, LookupGate, OsLogin, lock};

const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once from unprivileged peers, all uids together.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections open at once from one unprivileged uid.
pub const MAX_CONNECTIONS_PER_UID: usize = 32;
/// Connections open at once from root and the AuthorizedKeysCommandUser.
pub const MAX_PRIVILEGED_CONNECTIONS: usize = 64;
/// Lookups reaching the metadata service an unprivileged uid may make at once...
pub const LOOKUP_BURST: f64 = 20.0;
/// ...and per second after that.
pub const LOOKUP_REFILL_PER_SEC: f64 = 5.0;
/// A refusal or rate limit is logged at most once per uid and kind in this period.
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// How long the AuthorizedKeysCommandUser's uid is remembered.
const COMMAND_USER_TTL: Duration = Duration::from_secs(5);
/// Buckets kept before full (idle) ones are forgotten.
const MAX_BUCKETS: usize = 4096;

/// What answers requests.
pub struct Handler {
    pub oslogin: Arc<OsLogin>,
    pub tokens: Arc<crate::tokens::TokenKeeper>,
}

/// The most supplementary groups a process can have (the kernel's NGROUPS_MAX).
const NGROUPS_MAX: usize = 65_536;

/// The peer's supplementary groups as the kernel recorded them when it connected
/// (`SO_PEERGROUPS`, Linux 4.13), in the daemon's user namespace. Like SO_PEERCRED's ids they
/// belong to the connection, not to a process: they cannot change afterwards, and they stay
/// right when the connecting process has exited and its PID is someone else's (reading
/// `/proc/PID/status` after the connect, as this code once did, let a process outside the token
/// group connect, exit, and be judged by whatever process then had its PID).
pub fn peer_groups(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    const GID: usize = std::mem::size_of::<nix::libc::gid_t>();
    let mut groups: Vec<nix::libc::gid_t> = vec![0; 32];
    // The list cannot change (it is the connection's), so a second try with the size the
    // kernel asked for succeeds; the third is only for a kernel that behaves otherwise.
    for _ in 0..3 {
        let mut len = nix::libc::socklen_t::try_from(groups.len() * GID)
            .map_err(|_| std::io::Error::other("group list too large"))?;
        // SAFETY: `groups` holds `len` bytes; the kernel writes at most that many and sets
        // `len` to what it wrote (or, with ERANGE, to what it needs).
        let rc = unsafe {
            nix::libc::getsockopt(
                fd.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / GID;
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(nix::libc::ERANGE)
            || needed <= groups.len()
            || needed > NGROUPS_MAX
        {
            return Err(err);
        }
        groups.resize(needed, 0);
    }
    Err(std::io::Error::other(
        "SO_PEERGROUPS kept asking for more room",
    ))
}

/// Who is asking: SO_PEERCRED and SO_PEERGROUPS of the accepted socket, taken at accept time
/// (the kernel's record of the connecting process at its connect). Only `pid` names a process
/// that may be gone or replaced by now: it is used to recognise an sshd connection, never for
/// a permission.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    /// The effective gid.
    pub gid: u32,
    pub pid: Option<i32>,
    /// Supplementary groups; `None` when the kernel did not say (before Linux 4.13), and then
    /// only `gid` counts.
    pub groups: Option<Arc<[u32]>>,
}

impl Peer {
    /// Whether the peer had group `gid`, primary or supplementary, when it connected.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.as_deref().is_some_and(|g| g.contains(&gid))
    }

    /// The peer of an accepted connection.
    fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        use std::os::fd::AsFd;
        let cred = stream.peer_cred()?;
        let groups = match peer_groups(stream.as_fd()) {
            Ok(g) => Some(g.into()),
            Err(e) => {
                tracing::debug!(error = %e, "SO_PEERGROUPS failed; only the primary group counts");
                None
            }
        };
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            groups,
        })
    }
}

impl Handler {
    fn may_ask_logins(&self, peer: &Peer) -> bool {
        if peer.uid == 0 {
            return true;
        }
        let user = self.oslogin.config().oslogin.command_user.clone();
        matches!(nix::unistd::User::from_name(&user), Ok(Some(u)) if u.uid.as_raw() == peer.uid)
    }

    /// A token for root and members of `tokens.group` only: the uid and groups the peer had
    /// when it connected ([`Peer`]), never what some process has now.
    fn token(&self, account: &str, format: &str, peer: &Peer) -> Answer {
        let cfg = self.oslogin.config();
        let t = &cfg.tokens;
        let allowed = peer.uid == 0 || {
            let groups = crate::host::passwd::parse_group(&crate::host::passwd::read(
                std::path::Path::new("/etc/group"),
            ));
            let gid = groups.iter().find(|g| g.name == t.group).map(|g| g.gid);
            gid.is_some_and(|gid| peer.in_group(gid))
        };
        if !allowed {
            return Answer::Denied(format!(
                "tokens are for root and members of the group {}",
                t.group
            ));
        }
        if !t.enabled || !t.accounts.iter().any(|a| a == account) {
            return Answer::NotFound;
        }
        match self.tokens.get(account) {
            Some(token) => match token.format(format) {
                Some(line) => Answer::Ok(vec![line]),
                None => Answer::Error("format must be raw, json or header".into()),
            },
            None => Answer::Unavailable(
                "no valid token yet (the metadata service has not given one)".into(),
            ),
        }
    }

    pub async fn answer(&self, request: Request, peer: &Peer) -> Answer {
        match request {
            Request::UserByName(n) => self.oslogin.user_by_name(&n).await,
            Request::UserByUid(u) => self.oslogin.user_by_uid(u).await,
            Request::GroupByName(n) => self.oslogin.group(Miss::GroupName(n)).await,
            Request::GroupByGid(g) => self.oslogin.group(Miss::Gid(g)).await,
            Request::GroupsOfUser(n) => self.oslogin.groups_of(&n).await,
            Request::AuthorizedKeys { .. } | Request::AuthorizedPrincipals { .. } => {
                if !self.may_ask_logins(peer) {
                    return Answer::Denied(
                        "only root and the AuthorizedKeysCommandUser may ask".into(),
                    );
                }
                let connection = peer.pid.and_then(ssh_connection);
                let connection = connection.as_deref();
                match request {
                    Request::AuthorizedKeys {
                        user,
                        fingerprint,
                        certificate,
                    } => {
                        self.oslogin
                            .authorized_keys(
                                &user,
                                fingerprint.as_deref(),
                                certificate.as_ref(),
                                connection,
                            )
                            .await
                    }
                    Request::AuthorizedPrincipals { user, cert } => {
                        self.oslogin
                            .authorized_principals(&user, &cert, connection)
                            .await
                    }
                    _ => Answer::Error("unexpected request".into()),
                }
            }
            Request::Token { account, format } => self.token(&account, &format, peer),
            Request::Status => self.status(peer),
            Request::TwoFactorStart { .. }
            | Request::TwoFactorContinue { .. }
            | Request::PamAccount { .. }
                if peer.uid != 0 =>
            {
                Answer::Denied("only root (sshd's PAM stack) may ask".into())
            }
            Request::TwoFactorStart { user } => self.oslogin.two_factor_start(&user).await,
            Request::TwoFactorContinue {
                user,
                session,
                challenge,
                action,
                credential,
            } => {
                self.oslogin
                    .two_factor_continue(&user, &session, challenge, action, credential.as_deref())
                    .await
            }
            Request::PamAccount { user } => {
                // PAM's account hook runs in the connection's privileged sshd process (the
                // parent of the AuthorizedKeysCommand it ran for the key check) after a
                // publickey login, and in the child that process forks for PAM's
                // keyboard-interactive conversation after the second factor: either names the
                // connection.
                let own = peer.pid.and_then(process_tag);
                let parent = peer.pid.and_then(ssh_connection);
                let candidates: Vec<&str> = [own.as_deref(), parent.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                self.oslogin.pam_account(&user, &candidates).await
            }
        }
    }

    /// `guest-agent status`: one JSON line, the full view for root, the limited one (only the
    /// peer's own login decisions) for everyone else (see [`crate::status`]).
    fn status(&self, peer: &Peer) -> Answer {
        use crate::status::{Live, Viewer};
        let cfg = self.oslogin.config();
        let viewer = if peer.uid == 0 {
            Viewer::Root
        } else {
            Viewer::User(
                nix::unistd::User::from_uid(peer.uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name),
            )
        };
        let ca_age = std::fs::metadata(&cfg.oslogin.ca_file)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| t.elapsed().unwrap_or_default());
        let tokens = if cfg.tokens.enabled {
            cfg.tokens
                .accounts
                .iter()
                .map(|a| {
                    let left = self
                        .tokens
                        .get(a)
                        .map(|t| t.expires_at.saturating_duration_since(Instant::now()));
                    (a.clone(), left)
                })
                .collect()
        } else {
            Vec::new()
        };
        let console = match crate::events::console() {
            Some(c) => (
                c.path.display().to_string(),
                true,
                c.counters
                    .written
                    .load(std::sync::atomic::Ordering::Relaxed),
                c.counters
                    .dropped
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            None => (cfg.daemon.console.clone(), false, 0, 0),
        };
        let live = Live {
            now: Some(std::time::SystemTime::now()),
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            facts: crate::events::facts(),
            directory_users: self
                .oslogin
                .is_enabled()
                .then(|| self.oslogin.directory_size()),
            ca_path: cfg.oslogin.ca_file.clone(),
            ca_age,
            tokens,
            console,
            two_factor: match self.oslogin.two_factor_blocked() {
                Some(why) => {
                    format!("required but cannot be enforced ({why}): OS Login logins refused")
                }
                None if self.oslogin.two_factor() => "on".into(),
                None => "off".into(),
            },
        };
        Answer::Ok(vec![crate::status::shape(&live, &viewer).to_string()])
    }
}

/// Identifies the SSH connection a helper runs for: sshd runs AuthorizedKeysCommand from the
/// connection's own privileged process, once for the key query and once for the signature,
/// so the helper's parent (its pid and start time, against pid reuse) names the login. Read
/// by the daemon from /proc, not taken from the helper.
fn ssh_connection(helper_pid: i32) -> Option<String> {
    let ppid: i32 = stat_fields(helper_pid)?.get(1)?.parse().ok()?;
    process_tag(ppid)
}

/// `PID:STARTTIME` of a process (the start time against pid reuse): the id of the SSH
/// connection whose privileged process `pid` is.
fn process_tag(pid: i32) -> Option<String> {
    let start = stat_fields(pid)?.get(19)?.clone();
    Some(format!("{pid}:{start}"))
}

/// /proc/PID/stat: "pid (comm) state ppid ... starttime(22nd field) ..."; comm may hold
/// blanks and parentheses, so fields are counted after the last ')'.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Binds the socket (0666 in a 0755 root-owned directory; a stale socket is replaced).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; remove it", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// What kind of thing was refused or limited (for the log, once per uid and kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Refusal {
    Token,
    LoginQuestion,
    Lookups,
    /// The budget all unprivileged uids share (logged once for all of them).
    AllLookups,
    Connections,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::Token => "refused a token to a process outside the token group",
            Refusal::LoginQuestion => "refused a login question from an unprivileged process",
            Refusal::Lookups => {
                "too many lookups reaching the metadata service from one user; answered \"unavailable\" without asking the service"
            }
            Refusal::AllLookups => {
                "too many lookups reaching the metadata service from unprivileged users together (oslogin.unprivileged_lookup_burst, unprivileged_lookups_per_minute); answered \"unavailable\" without asking the service"
            }
            Refusal::Connections => "too many connections from one user; closed at once",
        }
    }
}

/// A token bucket's size and refill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_sec: f64,
}

/// Each unprivileged uid's own lookup budget.
const PER_UID: Rate = Rate {
    burst: LOOKUP_BURST,
    per_sec: LOOKUP_REFILL_PER_SEC,
};

impl Rate {
    /// The budget all unprivileged uids share, from the configuration.
    pub fn all_unprivileged(o: &crate::config::OsLoginConfig) -> Rate {
        Rate {
            burst: o.unprivileged_lookup_burst.into(),
            per_sec: f64::from(o.unprivileged_lookups_per_minute) / 60.0,
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    /// Refilled up to `rate` (a smaller burst from a reloaded configuration applies at once).
    fn refill(&mut self, rate: Rate, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * rate.per_sec).min(rate.burst);
        self.at = now;
    }

    #[cfg(test)]
    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The lookup budgets: one per unprivileged uid, one for all of them.
#[derive(Default)]
struct Budgets {
    per_uid: HashMap<u32, Bucket>,
    /// None until the first lookup (then full).
    all: Option<Bucket>,
}

/// What a refusal is logged under: (uid, kind); uid None for all uids (the shared budget).
/// Maps to (when last logged, how many since then were not).
type LogKey = (Option<u32>, Refusal);

/// Per-peer state shared by every connection: open connections, lookup budgets, what was
/// logged.
#[derive(Default)]
struct Limits {
    open: Mutex<HashMap<u32, usize>>,
    budgets: Mutex<Budgets>,
    logged: Mutex<HashMap<LogKey, (Instant, u64)>>,
    command_user: Mutex<Option<(Instant, String, Option<u32>)>>,
}

impl Limits {
    /// Whether `uid` is root or the AuthorizedKeysCommandUser (`user`).
    fn privileged(&self, uid: u32, user: &str) -> bool {
        if uid == 0 {
            return true;
        }
        let now = Instant::now();
        let mut cached = lock(&self.command_user);
        let fresh = matches!(&*cached, Some((at, name, _)) if name == user && now.duration_since(*at) < COMMAND_USER_TTL);
        if !fresh {
            let found = match nix::unistd::User::from_name(user) {
                Ok(Some(u)) => Some(u.uid.as_raw()),
                _ => None,
            };
            *cached = Some((now, user.to_owned(), found));
        }
        matches!(&*cached, Some((_, _, Some(id))) if *id == uid)
    }

    /// One more connection of unprivileged `uid`, unless it has too many open.
    fn open(self: &Arc<Self>, uid: u32) -> Option<OpenGuard> {
        let mut open = lock(&self.open);
        let n = open.entry(uid).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_UID {
            return None;
        }
        *n += 1;
        Some(OpenGuard {
            limits: self.clone(),
            uid,
        })
    }

    /// Spends one lookup of `uid`'s budget and of the one all unprivileged uids share (`all`),
    /// or neither: a lookup refused by one budget costs nothing in the other. The refusal
    /// says which budget was spent. With [`MAX_BUCKETS`] uids holding spent budgets, a uid
    /// not among them is refused (memory stays bounded; the shared budget keeps that from
    /// happening at the default rates).
    fn take_lookup(&self, uid: u32, all: Rate) -> Result<(), Refusal> {
        let now = Instant::now();
        let mut guard = lock(&self.budgets);
        let budgets = &mut *guard;
        let per_uid = &mut budgets.per_uid;
        if per_uid.len() >= MAX_BUCKETS && !per_uid.contains_key(&uid) {
            per_uid.retain(|_, b| {
                b.refill(PER_UID, now);
                b.tokens < PER_UID.burst
            });
            if per_uid.len() >= MAX_BUCKETS {
                return Err(Refusal::AllLookups);
            }
        }
        let mine = per_uid
            .entry(uid)
            .or_insert_with(|| Bucket::full(PER_UID, now));
        mine.refill(PER_UID, now);
        let shared = budgets.all.get_or_insert_with(|| Bucket::full(all, now));
        shared.refill(all, now);
        if mine.tokens < 1.0 {
            return Err(Refusal::Lookups);
        }
        if shared.tokens < 1.0 {
            return Err(Refusal::AllLookups);
        }
        mine.tokens -= 1.0;
        shared.tokens -= 1.0;
        Ok(())
    }

    /// Logs `what` for `peer` unless it was logged for this uid (for the shared budget: for
    /// any uid) less than [`LOG_EVERY`] ago.
    fn note(&self, what: Refusal, peer: &Peer) {
        let now = Instant::now();
        let mut logged = lock(&self.logged);
        if logged.len() >= MAX_BUCKETS {
            logged.retain(|_, (at, _)| now.duration_since(*at) < LOG_EVERY);
        }
        let key = ((what != Refusal::AllLookups).then_some(peer.uid), what);
        match logged.get_mut(&key) {
            Some((at, left_out)) if now.duration_since(*at) < LOG_EVERY => *left_out += 1,
            entry => {
                let left_out = entry.map_or(0, |(_, n)| *n);
                tracing::warn!(
                    uid = peer.uid,
                    pid = peer.pid,
                    not_logged_since_last = left_out,
                    "{} (logged once a minute per user)",
                    what.message()
                );
                logged.insert(key, (now, 0));
            }
        }
    }
}

/// An open connection of an unprivileged uid; counted until dropped.
struct OpenGuard {
    limits: Arc<Limits>,
    uid: u32,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut open = lock(&self.limits.open);
        if let Some(n) = open.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// The lookup budget of one unprivileged peer, consulted by the OS Login service before it
/// asks the metadata service.
struct PeerBudget {
    limits: Arc<Limits>,
    peer: Peer,
    /// The budget all unprivileged uids share (the configuration when the request came).
    all: Rate,
}

impl LookupGate for PeerBudget {
    fn allow(&self) -> bool {
        match self.limits.take_lookup(self.peer.uid, self.all) {
            Ok(()) => true,
            Err(what) => {
                self.limits.note(what, &self.peer);
                false
            }
        }
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: UnixListener, handler: Arc<Handler>) {
    let shared = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let privileged = Arc::new(Semaphore::new(MAX_PRIVILEGED_CONNECTIONS));
    let limits = Arc::new(Limits::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(peer) = Peer::of(&stream) else {
            continue;
        };
        let command_user = handler.oslogin.config().oslogin.command_user.clone();
        let is_privileged = limits.privileged(peer.uid, &command_user);
        // Overloaded: an unprivileged client sees a closed connection and moves on (the NSS
        // module answers "unavailable"). Privileged peers (sshd's helpers during a burst of
        // logins, root) queue for a slot instead, up to the read deadline: a login question
        // dropped here would be a login refused; the helper falls back to asking the service
        // itself only if it is dropped all the same.
        let (permit, guard) = if is_privileged {
            let permit = match privileged.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let privileged = privileged.clone();
                    let handler = handler.clone();
                    let limits = limits.clone();
                    tokio::spawn(async move {
                        let Ok(Ok(_permit)) =
                            tokio::time::timeout(READ_TIMEOUT, privileged.acquire_owned()).await
                        else {
                            return;
                        };
                        if let Err(e) = connection(stream, peer, true, &handler, &limits).await {
                            tracing::debug!(error = %e, "socket connection ended badly");
                        }
                    });
                    continue;
                }
            };
            (permit, None)
        } else {
            let Some(guard) = limits.open(peer.uid) else {
                limits.note(Refusal::Connections, &peer);
                continue;
            };
            let Ok(p) = shared.clone().try_acquire_owned() else {
                continue;
            };
            (p, Some(guard))
        };
        let handler = handler.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _guard = guard;
            if let Err(e) = connection(stream, peer, is_privileged, &handler, &limits).await {
                tracing::debug!(error = %e, "socket connection ended badly");
            }
        });
    }
}

async fn connection(
    stream: UnixStream,
    peer: Peer,
    privileged: bool,
    handler: &Handler,
    limits: &Arc<Limits>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::with_capacity(1024, read.take(MAX_REQUEST as u64));
    match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()), // slow client: dropped
    }
    drop(reader);
    let request = line.strip_suffix('\n').map(Request::parse);
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let (version, body) = proto::split_version(trimmed).unwrap_or((0, trimmed));
    let verb: String = body
        .split(' ')
        .next()
        .unwrap_or("")
        .chars()
        .take(32)
        .collect();
    let answer = match request {
        Some(Ok(request)) => {
            let refusal = match request {
                Request::Token { .. } => Some(Refusal::Token),
                Request::AuthorizedKeys { .. } | Request::AuthorizedPrincipals { .. } => {
                    Some(Refusal::LoginQuestion)
                }
                _ => None,
            };
            let answer = if privileged {
                handler.answer(request, &peer).await
            } else {
                let gate: Arc<dyn LookupGate> = Arc::new(PeerBudget {
                    limits: limits.clone(),
                    peer: peer.clone(),
                    all: Rate::all_unprivileged(&handler.oslogin.config().oslogin),
                });
                LOOKUP_GATE
                    .scope(gate, handler.answer(request, &peer))
                    .await
            };
            if let (Answer::Denied(_), Some(what)) = (&answer, refusal) {
                limits.note(what, &peer);
            }
            answer
        }
        // A client of another version (an upgrade in progress): the error names the versions
        // this daemon speaks, so the client can ask again in one of them or decide alone.
        Some(Err(e)) if e == proto::UNSUPPORTED_VERSION => {
            Answer::Error(proto::unsupported_version(version))
        }
        Some(Err(e)) => Answer::Error(e.to_string()),
        None => Answer::Error("request too long or not terminated".into()),
    };
    // Neither the request (it may carry a certificate) nor the answer (it may carry a token)
    // is logged: only what kind they were.
    tracing::debug!(uid = peer.uid, version, verb = ?verb.trim_end(), answer = answer_kind(&answer), "socket request");
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(answer.encode().as_bytes())).await {
        Ok(r) => r?,
        Err(_) => return Ok(()), // a client that does not read: dropped
    }
    write.shutdown().await
}

fn answer_kind(a: &Answer) -> &'static str {
    match a {
        Answer::Ok(_) => "ok",
        Answer::NotFound => "notfound",
        Answer::Unavailable(_) => "unavailable",
        Answer::Denied(_) => "denied",
        Answer::Error(_) => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared budget far larger than any test spends.
    const ALL: Rate = Rate {
        burst: 1e9,
        per_sec: 1e9,
    };

    #[test]
    fn a_bucket_gives_the_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(PER_UID, t0);
        let burst = (0..100).filter(|_| b.take(PER_UID, t0)).count();
        assert_eq!(burst, LOOKUP_BURST as usize);
        assert!(!b.take(PER_UID, t0 + Duration::from_millis(100)));
        // One second later: LOOKUP_REFILL_PER_SEC more (counting the 0.5 already refilled).
        let later = t0 + Duration::from_millis(1100);
        let more = (0..100).filter(|_| b.take(PER_UID, later)).count();
        assert_eq!(more, LOOKUP_REFILL_PER_SEC as usize);
        // Never more than the burst, however long idle.
        let idle = t0 + Duration::from_secs(3600);
        assert_eq!(
            (0..100).filter(|_| b.take(PER_UID, idle)).count(),
            LOOKUP_BURST as usize
        );
    }

    #[test]
    fn budgets_and_connection_counts_are_per_uid() {
        let limits = Arc::new(Limits::default());
        let spent = (0..100)
            .filter(|_| limits.take_lookup(1000, ALL).is_ok())
            .count();
        assert_eq!(spent, LOOKUP_BURST as usize);
        assert_eq!(limits.take_lookup(1000, ALL), Err(Refusal::Lookups));
        assert!(
            limits.take_lookup(1001, ALL).is_ok(),
            "another uid has its own budget"
        );
        let guards: Vec<_> = (0..MAX_CONNECTIONS_PER_UID)
            .map(|_| limits.open(1000).expect("under the cap"))
            .collect();
        assert!(limits.open(1000).is_none());
        assert!(limits.open(1001).is_some());
        drop(guards);
        assert!(limits.open(1000).is_some(), "closing gives the slots back");
        assert!(
            lock(&limits.open).get(&1000).is_none(),
            "no entry left behind"
        );
    }

    /// Many uids, each far within its own budget, together get no more than the shared one
    /// (refilling one lookup an hour here); a lookup the shared budget refuses costs the uid
    /// nothing; the shared refusal is logged once for all uids.
    #[test]
    fn the_shared_budget_caps_all_unprivileged_uids_together() {
        let limits = Limits::default();
        let all = Rate {
            burst: 30.0,
            per_sec: 1.0 / 3600.0,
        };
        let mut served = 0;
        let mut refused = 0;
        for uid in 100_000..100_100 {
            for _ in 0..5 {
                match limits.take_lookup(uid, all) {
                    Ok(()) => served += 1,
                    Err(Refusal::AllLookups) => refused += 1,
                    Err(other) => panic!("{other:?} for uid {uid}"),
                }
            }
        }
        assert_eq!((served, refused), (30, 470));
        let budgets = lock(&limits.budgets);
        let last = budgets.per_uid.get(&100_099).expect("bucket");
        assert!(
            last.tokens >= LOOKUP_BURST - 0.01,
            "refused lookups cost the uid nothing: {}",
            last.tokens
        );
        drop(budgets);
        for uid in 100_000..100_100 {
            let peer = Peer {
                uid,
                gid: uid,
                pid: None,
                groups: None,
            };
            limits.note(Refusal::AllLookups, &peer);
        }
        let logged = lock(&limits.logged);
        assert_eq!(
            logged.get(&(None, Refusal::AllLookups)).map(|e| e.1),
            Some(99)
        );
        assert_eq!(logged.len(), 1);
    }

    #[test]
    fn the_shared_budget_comes_from_the_configuration() {
        let o = crate::config::OsLoginConfig::default();
        assert_eq!(
            Rate::all_unprivileged(&o),
            Rate {
                burst: 100.0,
                per_sec: 10.0
            }
        );
    }

    #[test]
    fn refusals_are_logged_once_per_uid_and_kind_and_counted() {
        let limits = Limits::default();
        let peer = Peer {
            uid: 1000,
            gid: 1000,
            pid: None,
            groups: None,
        };
        for _ in 0..50 {
            limits.note(Refusal::Token, &peer);
        }
        limits.note(Refusal::LoginQuestion, &peer);
        let logged = lock(&limits.logged);
        assert_eq!(
            logged.get(&(Some(1000), Refusal::Token)).map(|e| e.1),
            Some(49)
        );
        assert_eq!(
            logged
                .get(&(Some(1000), Refusal::LoginQuestion))
                .map(|e| e.1),
            Some(0)
        );
    }

    #[test]
    fn peer_groups_of_a_socketpair_are_this_process_groups() {
        use std::os::fd::AsFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let mut got = peer_groups(a.as_fd()).expect("SO_PEERGROUPS");
        let mut want: Vec<u32> = nix::unistd::getgroups()
            .expect("getgroups")
            .iter()
            .map(|g| g.as_raw())
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    /// A process with known ids and 40 supplementary groups (more than the first buffer holds,
    /// so the ERANGE retry runs) connects and exits before the daemon's side looks: the
    /// connection still tells its uid, gid and groups, which /proc/PID no longer could.
    #[test]
    fn peer_groups_are_the_connecting_process_groups_after_it_exited() {
        use nix::libc;
        use std::os::fd::AsFd;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "\n*** SKIPPED peer_groups_are_the_connecting_process_groups_after_it_exited: needs root (setgroups) ***\n"
            );
            return;
        }
        let path = std::env::temp_dir().join(format!("ga-peergroups-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        let groups: Vec<libc::gid_t> = (70_000..70_040).collect();
        const ID: u32 = 43_210;
        let mut cmd = std::process::Command::new("/bin/true");
        // SAFETY: between fork and exec only async-signal-safe calls, on data prepared before
        // the fork (no allocation).
        unsafe {
            cmd.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(ID) != 0
                    || libc::setuid(ID) != 0
                {
                    return fail();
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if fd < 0 || libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                    return fail();
                }
                Ok(())
            })
        };
        let mut child = cmd.spawn().expect("spawn the peer");
        let pid = child.id() as i32;
        assert!(child.wait().expect("wait").success());
        let (stream, _) = listener.accept().expect("accept");
        let _ = std::fs::remove_file(&path);
        let cred =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .expect("SO_PEERCRED");
        assert_eq!((cred.pid(), cred.uid(), cred.gid()), (pid, ID, ID));
        let mut got = peer_groups(stream.as_fd()).expect("SO_PEERGROUPS");
        got.sort_unstable();
        assert_eq!(got, (70_000..70_040).collect::<Vec<u32>>());
        let peer = Peer {
            uid: ID,
            gid: ID,
            pid: Some(pid),
            groups: Some(got.into()),
        };
        assert!(peer.in_group(ID) && peer.in_group(70_039) && !peer.in_group(0));
        let no_list = Peer {
            groups: None,
            ..peer
        };
        assert!(no_list.in_group(ID) && !no_list.in_group(70_000));
    }

    #[test]
    fn root_is_privileged_and_an_unknown_command_user_matches_nobody() {
        let limits = Limits::default();
        assert!(limits.privileged(0, "no-such-user-here"));
        assert!(!limits.privileged(1000, "no-such-user-here"));
    }
}
