//! The OS Login service inside the daemon: answers lookups and login questions that arrive on
//! the local socket, keeps the directory in sync, and writes the directory cache file.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};

use guest_agent_wire::proto::Answer;
use guest_agent_wire::records::{PasswdRecord, format_group};

use super::authorize::Authorizer;
use super::decision::{self, Refusal, Rules};
use super::directory::{Directory, Group, Inserted, LocalAccounts, Miss};
use super::profile::{OsUser, parse_group_page, parse_members, parse_single_user};
use crate::config::Config;
use crate::mds::{ClientSettings, GceClient, MdsError, query_escape};

/// Deadline for a lookup the NSS module is waiting on (it gives up after 90 ms; the answer
/// still lands in the directory for the next lookup).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// While lookups fail (service down or hanging), unknown names are answered "unavailable" at
/// once, and only one lookup in this period goes to the service to see whether it is back.
const LOOKUP_PROBE_EVERY: Duration = Duration::from_secs(2);
/// A lookup still unanswered after this means the service is hanging: the NSS module has
/// already given up on it, so later lookups are answered at once rather than queued behind it.
const LOOKUP_SLOW: Duration = Duration::from_millis(100);

/// Decides whether a lookup on behalf of the current socket peer may go to the metadata
/// service (the socket's rate limits: the peer's uid's budget and the one all unprivileged
/// uids share).
pub trait LookupGate: Send + Sync {
    fn allow(&self) -> bool;
}

tokio::task_local! {
    /// Set by the socket around the answer to an unprivileged peer; unset (no limit) for
    /// root, the AuthorizedKeysCommandUser and the daemon's own work.
    pub static LOOKUP_GATE: Arc<dyn LookupGate>;
}

/// How lookups to the service are going.
#[derive(Debug, Default)]
struct LookupHealth {
    /// When lookups are failing: the earliest time the next one may try the service.
    down_until: Option<Instant>,
    /// Start times of the lookups in flight, by id.
    inflight: std::collections::HashMap<u64, Instant>,
    next_id: u64,
}

/// Where the service reads and writes on the host.
#[derive(Debug, Clone)]
pub struct Paths {
    pub cache: PathBuf,
    pub passwd: PathBuf,
    pub group: PathBuf,
    pub sudoers: PathBuf,
    pub skel: PathBuf,
}

impl Paths {
    /// The delta file beside the cache file (`cache::delta_path`).
    pub fn delta(&self) -> PathBuf {
        guest_agent_wire::cache::delta_path(&self.cache.to_string_lossy()).into()
    }
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            cache: guest_agent_wire::cache::CACHE_PATH.into(),
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            sudoers: "/etc/sudoers.d/guest-agent-oslogin".into(),
            skel: "/etc/skel".into(),
        }
    }
}

pub struct OsLogin {
    pub(super) config: watch::Receiver<Arc<Config>>,
    pub(super) paths: Paths,
    pub(super) directory: Mutex<Directory>,
    pub(super) authorizer: Authorizer,
    /// Users currently in the sudoers drop-in.
    pub(super) admins: Mutex<BTreeSet<String>>,
    /// Users an earlier run left in the sudoers drop-in and no answer has confirmed yet (read
    /// at start; emptied after the first sync, see `confirm_inherited_admins`).
    pub(super) inherited_admins: Mutex<BTreeSet<String>>,
    /// Users whose sudo rule a denied admin role removed since the session check last ran
    /// (`sessions`: their root processes go too, with `end_revoked_sessions`).
    pub(super) demoted: Mutex<BTreeSet<String>>,
    enabled: AtomicBool,
    /// Security-key mode (`enable-oslogin-sk`): the keys command serves the profile's
    /// `securityKeys` only, and certificates are not accepted.
    security_keys: AtomicBool,
    /// Two-step verification (`enable-oslogin-2fa`, see `two_factor`).
    pub(super) two_factor: AtomicBool,
    /// Two-step verification is asked for but cannot be enforced here (`UsePAM no`, the PAM
    /// module missing): why. OS Login logins other than `sa_` accounts are refused meanwhile
    /// rather than let in with the key alone.
    pub(super) two_factor_blocked: Mutex<Option<String>>,
    /// The last local account view read whole (kept, marked stale, while the files cannot be
    /// read), and whether the failure was logged.
    last_local: Mutex<Option<LocalAccounts>>,
    local_failing: AtomicBool,
    /// Users whose profile home exists and belongs to another account (seen at login): they
    /// are served `BASE/NAME` instead.
    pub(super) homes_taken: Mutex<HashSet<String>>,
    /// Users whose replaced home was logged (once each).
    homes_noted: Mutex<HashSet<String>>,
    /// Runs of the login commands by connection and key (see `login`), and profile refreshes
    /// for unknown keys by user.
    pub(super) passes: Mutex<super::login::Seen>,
    pub(super) refreshes: Mutex<super::login::Seen>,
    lookups: Mutex<LookupHealth>,
    /// Held across one cache rebuild and write (`write_cache`).
    pub(super) cache_writes: tokio::sync::Mutex<()>,
    sync_requested: Notify,
    /// How many syncs were requested: a request made before a sync started is answered by
    /// that sync (OS Login turning on while the first sync is about to run asked for a second,
    /// redundant one: at 100,000 users, 101 more requests and a second rebuild).
    sync_generation: AtomicU64,
    /// Wakes the trusted-CA refresher (OS Login turned on, SIGUSR1).
    ca_requested: Notify,
    /// When the last on-demand CA fetch went out; held across it (single flight, see
    /// `trusted_ca::refresh_for`).
    ca_on_demand: tokio::sync::Mutex<Option<std::time::Instant>>,
    cache_dirty: Notify,
    /// The next cache write must be a full rebuild, not a delta (see `request_full_rebuild`).
    full_rebuild: AtomicBool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn now_usec() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The passwd(5) line served for a user (`*` password: no shadow entry). The profile parser
/// already refused unusable names and paths; an email that cannot be a gecos is left out.
pub(super) fn passwd_line(u: &OsUser) -> String {
    let record = |gecos: &str| {
        PasswdRecord {
            name: &u.username,
            uid: u.uid,
            gid: u.gid,
            gecos,
            home: &u.home,
            shell: &u.shell,
        }
        .to_line()
    };
    record(&u.email).or_else(|_| record("")).unwrap_or_default()
}

fn group_line(g: &Group) -> String {
    format_group(&g.name, g.gid, &g.members).unwrap_or_default()
}

impl OsLogin {
    pub fn new(config: watch::Receiver<Arc<Config>>, paths: Paths) -> Arc<OsLogin> {
        let inherited = match crate::host::sudoers::read(&paths.sudoers) {
            Ok(grantees) => grantees
                .into_iter()
                .filter_map(|g| match g {
                    crate::host::sudoers::Grantee::User(u) => Some(u),
                    crate::host::sudoers::Grantee::Group(_) => None,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the OS Login sudoers drop-in");
                BTreeSet::new()
            }
        };
        Arc::new(OsLogin {
            inherited_admins: Mutex::new(inherited),
            config,
            paths,
            directory: Mutex::new(Directory::default()),
            authorizer: Authorizer::default(),
            admins: Mutex::new(BTreeSet::new()),
            demoted: Mutex::new(BTreeSet::new()),
            enabled: AtomicBool::new(false),
            security_keys: AtomicBool::new(false),
            two_factor: AtomicBool::new(false),
            two_factor_blocked: Mutex::new(None),
            last_local: Mutex::new(None),
            local_failing: AtomicBool::new(false),
            homes_taken: Mutex::new(HashSet::new()),
            homes_noted: Mutex::new(HashSet::new()),
            passes: Mutex::new(Default::default()),
            refreshes: Mutex::new(Default::default()),
            lookups: Mutex::new(LookupHealth::default()),
            cache_writes: tokio::sync::Mutex::new(()),
            sync_requested: Notify::new(),
            sync_generation: AtomicU64::new(0),
            ca_requested: Notify::new(),
            ca_on_demand: tokio::sync::Mutex::new(None),
            cache_dirty: Notify::new(),
            full_rebuild: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Users in the directory now (`guest-agent status`).
    pub fn directory_size(&self) -> usize {
        lock(&self.directory).user_count()
    }

    pub(super) fn client(&self) -> Result<GceClient, String> {
        Ok(GceClient::new(ClientSettings::from_config(
            &self.config().metadata,
        )?))
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// Turned on or off by the reconciler (from `enable-oslogin`).
    pub fn set_enabled(&self, on: bool) {
        if self.enabled.swap(on, Ordering::SeqCst) != on && on {
            self.request_sync();
        }
    }

    pub fn security_keys(&self) -> bool {
        self.security_keys.load(Ordering::SeqCst)
    }

    /// Set by the reconciler on every pass (from `enable-oslogin-sk`); logged when it changes.
    pub fn set_security_keys(&self, on: bool) {
        if self.security_keys.swap(on, Ordering::SeqCst) != on {
            tracing::info!(
                security_keys = on,
                "OS Login security-key mode {}",
                if on {
                    "on: only security keys are served"
                } else {
                    "off"
                }
            );
        }
    }

    /// The profile's security keys (`users?username=NAME&view=securityKey`), asked live for a
    /// login in security-key mode: only `sk-` keys are kept (anything else in the list is not
    /// a security key and is skipped with a log line).
    pub(super) async fn security_keys_of(&self, name: &str) -> Result<Vec<String>, Answer> {
        let path = format!("users?username={}&view=securityKey", query_escape(name));
        let Some(v) = self.lookup_json(&path).await? else {
            return Err(Answer::NotFound);
        };
        let keys = super::profile::security_keys(&v, name)
            .map_err(|e| Answer::Unavailable(format!("security keys of {name}: {e}")))?;
        Ok(keys)
    }

    /// Syncs the directory and fetches the CA keys now (OS Login turned on, SIGUSR1).
    pub fn request_sync(&self) {
        self.sync_generation.fetch_add(1, Ordering::SeqCst);
        self.sync_requested.notify_one();
        self.ca_requested.notify_one();
    }

    /// The local accounts now; while the files cannot be read, the last good view marked
    /// stale (or an empty stale view when none was ever read: nothing new is admitted then).
    pub(super) fn local(&self) -> LocalAccounts {
        match LocalAccounts::read(&self.paths.passwd, &self.paths.group) {
            Ok(l) => {
                if self.local_failing.swap(false, Ordering::SeqCst) {
                    tracing::info!("the local account files are readable again");
                }
                *lock(&self.last_local) = Some(l.clone());
                l
            }
            Err(e) => {
                if !self.local_failing.swap(true, Ordering::SeqCst) {
                    tracing::error!(error = %e, "cannot read the local account files; serving only OS Login names served before, from the last good view, until they can be read (check the file's permissions and contents)");
                }
                let mut l = lock(&self.last_local).clone().unwrap_or_default();
                l.stale = true;
                l
            }
        }
    }

    pub(super) fn rules(&self) -> Rules {
        Rules::from_config(&self.config())
    }

    /// `u` as this VM serves it (`decision::admit_user`), a replaced home logged once.
    /// `known`: `u` is in the directory (not fetched just now).
    pub(super) fn admit(&self, u: &Arc<OsUser>, known: bool) -> Result<Arc<OsUser>, Refusal> {
        let taken = lock(&self.homes_taken).contains(&u.username);
        let (served, why) = decision::admit_user(u, &self.local(), &self.rules(), known, taken)
            .inspect_err(|why| {
                tracing::debug!(user = %u.username, reason = %why, "OS Login user not served");
            })?;
        if let Some(why) = why
            && lock(&self.homes_noted).insert(u.username.clone())
        {
            tracing::warn!(user = %u.username, home = %u.home, served = %served.home, reason = why, "OS Login home not used");
        }
        Ok(served)
    }

    fn refusal_answer(why: Refusal) -> Answer {
        match why {
            Refusal::LocalAccountsUnknown(_) => Answer::Unavailable(why.to_string()),
            _ => Answer::NotFound,
        }
    }

    fn floor(&self) -> u32 {
        self.config().oslogin.min_id
    }

    /// The user `name` from the directory, or fetched (`users?username=`), unless it clashes
    /// with a local account. `Err` carries the answer to give when there is no user.
    pub(super) async fn user(&self, name: &str) -> Result<Arc<OsUser>, Answer> {
        let ttl = Duration::from_secs(self.config().oslogin.negative_cache_secs);
        let cached = {
            let d = lock(&self.directory);
            if d.is_negative(&Miss::UserName(name.to_owned()), ttl) {
                return Err(Answer::NotFound);
            }
            d.user(name)
        };
        let (user, known) = match cached {
            Some(u) => (u, true),
            None => (
                self.fetch_user(
                    &format!("username={}", query_escape(name)),
                    Miss::UserName(name.to_owned()),
                )
                .await?,
                false,
            ),
        };
        if user.username != name {
            return Err(Answer::NotFound);
        }
        self.admit(&user, known).map_err(Self::refusal_answer)
    }

    /// Whether a lookup may go to the service now: always, unless lookups are failing or one
    /// has hung past [`LOOKUP_SLOW`]; then one probe per [`LOOKUP_PROBE_EVERY`]. Returns the
    /// lookup's id (to pass to [`OsLogin::lookup_done`]).
    fn lookup_start(&self) -> Option<u64> {
        let now = Instant::now();
        let mut h = lock(&self.lookups);
        let hanging = h
            .inflight
            .values()
            .any(|t| now.duration_since(*t) > LOOKUP_SLOW);
        if hanging && h.down_until.is_none() {
            tracing::warn!(
                "an OS Login lookup is hanging; unknown names are answered \"unavailable\" at once until the service answers again"
            );
            h.down_until = Some(now + LOOKUP_PROBE_EVERY);
            return None;
        }
        match h.down_until {
            Some(next) if now < next => return None,
            Some(_) => h.down_until = Some(now + LOOKUP_PROBE_EVERY),
            None => {}
        }
        h.next_id += 1;
        let id = h.next_id;
        h.inflight.insert(id, now);
        Some(id)
    }

    /// Records how lookup `id` ended: `Err(why)` when the service did not answer.
    fn lookup_done(&self, id: u64, outcome: Result<(), &str>) {
        let mut h = lock(&self.lookups);
        h.inflight.remove(&id);
        match outcome {
            Err(why) => {
                if h.down_until.is_none() {
                    tracing::warn!(
                        error = why,
                        "OS Login lookups failing; unknown names are answered \"unavailable\" at once until the service answers again"
                    );
                }
                h.down_until = Some(Instant::now() + LOOKUP_PROBE_EVERY);
            }
            Ok(()) => {
                if h.down_until.take().is_some() {
                    tracing::info!("OS Login lookups work again");
                }
            }
        }
    }

    /// One lookup request (`oslogin/PATH`) with the health rules: `Ok(None)` for 404,
    /// `Err(Unavailable)` when the service fails or is known to be failing.
    async fn lookup_json(&self, path: &str) -> Result<Option<serde_json::Value>, Answer> {
        if !LOOKUP_GATE.try_with(|g| g.allow()).unwrap_or(true) {
            return Err(Answer::Unavailable(
                "too many lookups from this user or from unprivileged users together; try again later".into(),
            ));
        }
        let Some(id) = self.lookup_start() else {
            return Err(Answer::Unavailable("metadata service failing".into()));
        };
        let client = match self.client() {
            Ok(c) => c.with_timeout(LOOKUP_TIMEOUT),
            Err(e) => {
                self.lookup_done(id, Ok(()));
                return Err(Answer::Unavailable(e));
            }
        };
        match client
            .get_json::<serde_json::Value>(&format!("oslogin/{path}"))
            .await
        {
            Ok(v) => {
                self.lookup_done(id, Ok(()));
                Ok(Some(v))
            }
            Err(MdsError::NotFound { .. }) => {
                self.lookup_done(id, Ok(()));
                Ok(None)
            }
            Err(e) => {
                let why = e.to_string();
                self.lookup_done(id, Err(&why));
                Err(Answer::Unavailable(why))
            }
        }
    }

    /// Fetches one profile (`users?QUERY`) into the directory.
    pub(super) async fn fetch_user(&self, query: &str, miss: Miss) -> Result<Arc<OsUser>, Answer> {
        let Some(answer) = self.lookup_json(&format!("users?{query}")).await? else {
            lock(&self.directory).note_negative(miss);
            return Err(Answer::NotFound);
        };
        match parse_single_user(&answer, self.floor(), now_usec()) {
            // Not kept while the local view is stale: what the directory holds counts as
            // served before (`decision`).
            Ok(u) if self.local().stale => Ok(Arc::new(u)),
            Ok(u) => {
                let (u, how) = lock(&self.directory).insert_user(u);
                match how {
                    Inserted::New => self.cache_dirty.notify_one(),
                    Inserted::Changed => self.request_full_rebuild(),
                    Inserted::Same => {}
                }
                Ok(u)
            }
            Err(e) => {
                tracing::warn!(query, error = %e, "OS Login profile refused");
                lock(&self.directory).note_negative(miss);
                Err(Answer::NotFound)
            }
        }
    }

    pub async fn user_by_name(&self, name: &str) -> Answer {
        if !self.is_enabled() {
            return Answer::NotFound;
        }
        match self.user(name).await {
            Ok(u) => Answer::Ok(vec![passwd_line(&u)]),
            Err(a) => a,
        }
    }

    pub async fn user_by_uid(&self, uid: u32) -> Answer {
        if !self.is_enabled() || uid < self.floor() {
            return Answer::NotFound;
        }
        let ttl = Duration::from_secs(self.config().oslogin.negative_cache_secs);
        let cached = {
            let d = lock(&self.directory);
            if d.is_negative(&Miss::Uid(uid), ttl) {
                return Answer::NotFound;
            }
            d.user_by_uid(uid)
        };
        let (user, known) = match cached {
            Some(u) => (u, true),
            None => match self.fetch_user(&format!("uid={uid}"), Miss::Uid(uid)).await {
                Ok(u) => (u, false),
                Err(a) => return a,
            },
        };
        if user.uid != uid {
            return Answer::NotFound;
        }
        match self.admit(&user, known) {
            Ok(u) => Answer::Ok(vec![passwd_line(&u)]),
            Err(why) => Self::refusal_answer(why),
        }
    }

    /// A group by name or gid: the directory, the users group, or fetched.
    pub async fn group(&self, by: Miss) -> Answer {
        if !self.is_enabled() {
            return Answer::NotFound;
        }
        let cfg = self.config();
        let o = &cfg.oslogin;
        let users_group = Group {
            name: o.users_group.clone(),
            gid: o.users_group_gid,
            members: Vec::new(),
        };
        let local = self.local();
        let matches = |g: &Group| match &by {
            Miss::GroupName(n) => &g.name == n,
            Miss::Gid(id) => g.gid == *id,
            _ => false,
        };
        if matches(&users_group) {
            return if local.clashes_with_group(&users_group.name, users_group.gid) {
                Answer::NotFound
            } else {
                Answer::Ok(vec![group_line(&users_group)])
            };
        }
        let ttl = Duration::from_secs(o.negative_cache_secs);
        let cached = {
            let d = lock(&self.directory);
            if d.is_negative(&by, ttl) {
                return Answer::NotFound;
            }
            match &by {
                Miss::GroupName(n) => d.group(n),
                Miss::Gid(g) => d.group_by_gid(*g),
                _ => return Answer::NotFound,
            }
            .or_else(|| d.personal_group(&by).map(Arc::new))
        };
        let (group, known) = match cached {
            Some(g) => (g, true),
            None => match self.fetch_group(&by).await {
                Ok(g) => (g, false),
                Err(a) => return a,
            },
        };
        if !matches(&group) {
            return Answer::NotFound;
        }
        // A personal group is admitted with its user (by `user`'s rules, in the cache build).
        let personal = lock(&self.directory)
            .user(&group.name)
            .is_some_and(|u| u.gid == group.gid && u.uid == group.gid);
        if personal {
            let user = lock(&self.directory).user(&group.name);
            return match user.map(|u| self.admit(&u, true)) {
                Some(Ok(_)) => Answer::Ok(vec![group_line(&group)]),
                _ => Answer::NotFound,
            };
        }
        match decision::admit_group(&group.name, group.gid, &local, &self.rules(), known) {
            Ok(()) => Answer::Ok(vec![group_line(&group)]),
            Err(why) => Self::refusal_answer(why),
        }
    }

    async fn fetch_group(&self, by: &Miss) -> Result<Arc<Group>, Answer> {
        let query = match by {
            Miss::GroupName(n) => format!("groupname={}", query_escape(n)),
            Miss::Gid(g) => format!("gid={g}"),
            _ => return Err(Answer::NotFound),
        };
        let found = self.lookup_json(&format!("groups?{query}")).await?;
        let Some(g) = found
            .and_then(|v| parse_group_page(&v, self.floor()).ok())
            .and_then(|page| page.groups.into_iter().next())
        else {
            lock(&self.directory).note_negative(by.clone());
            return Err(Answer::NotFound);
        };
        let members_path = format!("users?groupname={}", query_escape(&g.name));
        let members = match self.lookup_json(&members_path).await? {
            Some(v) => parse_members(&v).map(|(m, _)| m).unwrap_or_default(),
            None => Vec::new(),
        };
        let group = Group {
            name: g.name,
            gid: g.gid,
            members,
        };
        if !self.local().stale {
            lock(&self.directory).insert_group(group.clone());
            self.request_full_rebuild();
        }
        Ok(Arc::new(group))
    }

    /// Supplementary gids of `name` (initgroups): its directory groups and the users group.
    pub async fn groups_of(&self, name: &str) -> Answer {
        if !self.is_enabled() {
            return Answer::NotFound;
        }
        if let Err(a) = self.user(name).await {
            return a;
        }
        let cfg = self.config();
        let local = self.local();
        let rules = self.rules();
        let d = lock(&self.directory);
        let mut gids: Vec<String> = d
            .groups_of(name)
            .into_iter()
            .filter(|gid| {
                d.group_by_gid(*gid).is_some_and(|g| {
                    decision::admit_group(&g.name, g.gid, &local, &rules, true).is_ok()
                })
            })
            .map(|g| g.to_string())
            .collect();
        if !local.clashes_with_group(&cfg.oslogin.users_group, cfg.oslogin.users_group_gid) {
            gids.push(cfg.oslogin.users_group_gid.to_string());
        }
        Answer::Ok(gids)
    }

    /// OS Login turned off: forget the directory and the admins, remove the sudo rules, the
    /// cache file and the delta file.
    pub fn clear(&self) -> anyhow::Result<()> {
        *lock(&self.directory) = Directory::default();
        lock(&self.inherited_admins).clear();
        let had_admins = !std::mem::take(&mut *lock(&self.admins)).is_empty();
        if had_admins || self.paths.sudoers.exists() {
            super::effects::write_sudoers(&self.paths.sudoers, &[]).map_err(anyhow::Error::msg)?;
        }
        crate::host::files::remove_if_exists(&self.paths.cache)?;
        crate::host::files::remove_if_exists(&self.paths.delta())?;
        super::effects::remove_compat_caches(&self.paths.cache, &[]).map_err(anyhow::Error::msg)?;
        Ok(())
    }

    pub(super) fn sync_requested(&self) -> &Notify {
        &self.sync_requested
    }

    pub(super) fn sync_generation(&self) -> u64 {
        self.sync_generation.load(Ordering::SeqCst)
    }

    pub(super) fn ca_requested(&self) -> &Notify {
        &self.ca_requested
    }

    pub(super) fn ca_on_demand(&self) -> &tokio::sync::Mutex<Option<std::time::Instant>> {
        &self.ca_on_demand
    }

    pub(super) fn cache_dirty(&self) -> &Notify {
        &self.cache_dirty
    }

    pub(super) fn full_rebuild_wanted(&self) -> &AtomicBool {
        &self.full_rebuild
    }

    /// A change the delta cannot carry (a group learned on a miss: the main file's members
    /// must list it; a home taken: a user the main file holds is served another home): the
    /// next write rebuilds the whole file, debounced like a delta, in a blocking thread.
    pub(super) fn request_full_rebuild(&self) {
        self.full_rebuild.store(true, Ordering::SeqCst);
        self.cache_dirty.notify_one();
    }
}
