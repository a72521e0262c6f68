//! Keeps local users, their managed keys and the sudo group in step with the `ssh-keys`
//! metadata (and cloud-init `user-data` users) while OS Login is off; strips the managed keys
//! and sudo when OS Login is turned on (the users' own keys stay).
//!
//! Runs on every new snapshot, at the next key expiry, and every `check_interval_secs`: each
//! pass compares the files on disk with what they should be, so a managed block edited or
//! deleted on the VM comes back within one interval.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::apply::{self, Tools};
use super::authorized_keys::GoogleLines;
use super::keys::desired_keys;
use super::plan::{Inputs, plan};
use super::state::AccountsState;
use crate::config::Config;
use crate::events::{self, Event};
use crate::host::accountdb::{self, AccountFiles};
use crate::host::cloud_init::{self, CloudInitPaths, Gate};
use crate::host::home::HomePaths;
use crate::host::{passwd, sudoers};
use crate::mds::Snapshot;
use crate::reconcile::Reconciler;

#[derive(Debug, Clone)]
pub struct Paths {
    pub state: PathBuf,
    pub passwd: PathBuf,
    pub group: PathBuf,
    pub sudoers: PathBuf,
    pub homes: HomePaths,
    /// Where new accounts' homes are made (`/home/NAME`); the owners of its entries are never
    /// given to a new account.
    pub home_base: PathBuf,
    pub cloud_init: CloudInitPaths,
    /// The takeover report ([`crate::takeover::Report`]).
    pub takeover_report: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            state: "/var/lib/guest-agent/state.json".into(),
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            sudoers: "/etc/sudoers.d/guest-agent-sudoers".into(),
            homes: HomePaths::default(),
            home_base: "/home".into(),
            cloud_init: CloudInitPaths::default(),
            takeover_report: crate::takeover::REPORT_PATH.into(),
        }
    }
}

pub struct AccountsReconciler {
    config: watch::Receiver<Arc<Config>>,
    paths: Paths,
    tools: Tools,
    /// The watcher's count of good answers (a held mass removal needs a later one).
    answers: Arc<AtomicU64>,
    /// Asks the watcher for a fresh answer (to confirm a held removal quickly).
    reread: Arc<tokio::sync::Notify>,
    next_pass: Option<Instant>,
    /// Rejections and skipped users or groups already logged (each once, while it lasts).
    logged: HashSet<String>,
    /// When the first pass found cloud-init still provisioning (None: not waiting yet).
    cloud_init_since: Option<Instant>,
    /// cloud-init has finished (or the wait is over): accounts may be touched from now on.
    cloud_init_done: bool,
    /// The sudo rule is wanted but sudo is not installed (warned once; written when it is).
    sudo_waiting: bool,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl AccountsReconciler {
    pub fn new(
        config: watch::Receiver<Arc<Config>>,
        paths: Paths,
        answers: Arc<AtomicU64>,
        reread: Arc<tokio::sync::Notify>,
    ) -> Self {
        AccountsReconciler {
            config,
            paths,
            tools: Tools::default(),
            answers,
            reread,
            next_pass: None,
            logged: HashSet::new(),
            cloud_init_since: None,
            cloud_init_done: false,
            sudo_waiting: false,
        }
    }
}

impl AccountsReconciler {
    /// Whether cloud-init lets us touch accounts now; logs the wait once and its end.
    fn cloud_init_allows(&mut self, limit: Duration) -> bool {
        if self.cloud_init_done {
            return true;
        }
        let since = self.cloud_init_since;
        let waited = since.map_or(Duration::ZERO, |s| s.elapsed());
        match cloud_init::gate(cloud_init::progress(&self.paths.cloud_init), waited, limit) {
            Gate::Wait => {
                if since.is_none() {
                    tracing::info!(
                        run_dir = %self.paths.cloud_init.run_dir.display(),
                        limit_secs = limit.as_secs(),
                        "cloud-init is provisioning; metadata accounts wait until it has finished"
                    );
                    self.cloud_init_since = Some(Instant::now());
                }
                self.next_pass = Some(Instant::now() + Duration::from_millis(500));
                false
            }
            Gate::TimedOut => {
                tracing::warn!(
                    waited_secs = waited.as_secs(),
                    "cloud-init has not finished within accounts.cloud_init_wait_secs; managing \
                     metadata accounts now"
                );
                self.cloud_init_done = true;
                true
            }
            Gate::Open => {
                if since.is_some() {
                    tracing::info!(
                        waited_ms = waited.as_millis() as u64,
                        "cloud-init finished; managing metadata accounts"
                    );
                }
                self.cloud_init_done = true;
                true
            }
        }
    }

    fn account_files(&self) -> AccountFiles {
        AccountFiles {
            passwd: self.paths.passwd.clone(),
            group: self.paths.group.clone(),
            ..Default::default()
        }
    }
}

impl Reconciler for AccountsReconciler {
    fn name(&self) -> &'static str {
        "accounts"
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.next_pass
    }

    fn reconcile(&mut self, snapshot: &Snapshot) -> anyhow::Result<()> {
        let cfg = self.config.borrow().clone();
        let a = &cfg.accounts;
        let started = Instant::now();
        let spawned_before = crate::host::command::SPAWNED.load(Ordering::Relaxed);
        let now = now_unix();
        let check = Duration::from_secs(a.check_interval_secs);
        let tools = Tools {
            useradd_cmd: a.useradd_cmd.clone(),
            userdel_cmd: a.userdel_cmd.clone(),
            ..self.tools.clone()
        };
        if !self.cloud_init_allows(Duration::from_secs(a.cloud_init_wait_secs)) {
            return Ok(());
        }
        let oslogin = snapshot.flag("enable-oslogin").is_some_and(|(v, _)| v);

        let desired = desired_keys(snapshot, now, a.allow_root);
        // Each note is logged once while it lasts (the first pass that sees it), never once per
        // pass: a line every check interval would bury the others.
        let mut seen = HashSet::new();
        for r in &desired.rejected {
            let id = r.to_string();
            if !self.logged.contains(&id) {
                tracing::warn!(rejected = %r, "ssh-keys line skipped");
            }
            seen.insert(id);
        }
        let (wanted, sudo, cloud_groups) = if !a.enabled || oslogin {
            (BTreeMap::new(), BTreeSet::new(), BTreeMap::new())
        } else {
            (
                desired.lines(),
                desired.sudo.clone(),
                desired.groups.clone(),
            )
        };

        let expired: BTreeSet<String> = desired
            .rejected
            .iter()
            .filter(|r| r.reason == "expired")
            .filter_map(|r| r.user.clone())
            .filter(|u| !wanted.contains_key(u))
            .collect();
        let local = passwd::parse_passwd(&passwd::read(&self.paths.passwd));
        let groups = passwd::parse_group(&passwd::read(&self.paths.group));
        let files = self.account_files();
        let mut state = AccountsState::load(&self.paths.state);
        // A takeover from Google's agent: its users are ours now (once per report), and its
        // key lines are ours to drop.
        let taken_over = crate::takeover::adopted(&self.paths.takeover_report);
        if let Some((at, adoption)) = &taken_over
            && state.takeover_merged != Some(*at)
        {
            tracing::info!(
                managed = ?adoption.managed,
                created = ?adoption.created,
                "users of Google's guest agent adopted"
            );
            state.managed.extend(adoption.managed.iter().cloned());
            state.created.extend(adoption.created.iter().cloned());
            state.takeover_merged = Some(*at);
        }
        let google_lines = if taken_over.is_some() {
            GoogleLines::DropAll
        } else {
            GoogleLines::KeepUnlisted
        };
        let reserved = accountdb::reserved_uids(&self.paths.home_base, &state.retired);
        // Only deletions need the names to protect (cloud.cfg is read only then).
        let delete_released = a.deprovision == "delete";
        let protected = if delete_released {
            cloud_init::default_users(&self.paths.cloud_init)
        } else {
            BTreeSet::new()
        };
        let p = plan(&Inputs {
            wanted: &wanted,
            sudo: &sudo,
            expired: &expired,
            local: &local,
            groups: &groups,
            pending: &accountdb::pending_names(&files),
            state: &state,
            delete_released,
            protected: &protected,
            answer: self.answers.load(Ordering::SeqCst),
            uid_range: accountdb::uid_range(&files),
            reserved: &reserved,
            cloud_groups: &cloud_groups,
            sudo_group: &a.sudo_group,
            extra_groups: &a.extra_groups,
        });
        let mut once = |id: String| {
            let new = !self.logged.contains(&id);
            seen.insert(id);
            new
        };
        for (user, gid) in &p.clashes {
            if once(format!("clash:{user}")) {
                tracing::warn!(
                    %user,
                    group = %user,
                    gid,
                    "metadata user not created: a local group already has its name (its user \
                     private group would clash); the other users are created. Rename the user \
                     in ssh-keys, or rename or remove the local group (groupmod -n NEW {user})"
                );
            }
        }
        for (user, why) in &p.system {
            if once(format!("system:{user}")) {
                tracing::warn!(
                    %user,
                    reason = %why,
                    "metadata user is a system account: its keys are managed, but it is never \
                     put in the sudo group or any other group"
                );
            }
        }
        for ((user, group), why) in &p.groups_refused {
            if once(format!("group:{user}:{group}:{why}")) {
                tracing::warn!(%user, %group, reason = %why, "cloud-init group not applied");
            }
        }
        self.logged = seen;
        if !p.held.is_empty() && state.pending_removal.is_none() {
            tracing::warn!(users = ?p.held, "metadata would remove more than half the managed users at once; waiting for a second answer that agrees");
        }
        let mut errors = Vec::new();
        // Saved before anything is touched, with what this pass creates and still with the
        // users it releases or deletes: a pass interrupted by a crash leaves created users known
        // as ours, and the next pass releases (keys, sudo) and deletes the others again. The
        // state of this pass is saved at the end.
        let mut before = p.state.clone();
        before.managed.extend(p.released.iter().cloned());
        before.created.extend(p.delete.iter().cloned());
        // Memberships being removed stay recorded until the removal is done (a crash between
        // would otherwise leave a group nobody remembers granting).
        for (user, gs) in &state.granted {
            before
                .granted
                .entry(user.clone())
                .or_default()
                .extend(gs.iter().cloned());
        }
        before.save(&self.paths.state)?;
        if let Err(e) = apply::create_users(&tools, &p.create, &files, &self.paths.homes, &reserved)
        {
            errors.push(format!("creating {:?}: {e}", p.create));
        } else if !p.create.is_empty() {
            tracing::info!(users = p.create.len(), "metadata users created");
            events::emit(Event::UsersCreated(p.create.clone()));
        }
        let local = passwd::parse_passwd(&passwd::read(&self.paths.passwd));
        let mut written = 0;
        for (user, lines) in &p.keys {
            let Some(entry) = local.iter().find(|e| &e.name == user) else {
                if !lines.is_empty() {
                    errors.push(format!("{user}: no such local account"));
                }
                continue;
            };
            // A pass interrupted after the account files were written leaves accounts we
            // created without a home: made now (an existing home is left alone).
            if !lines.is_empty()
                && p.state.created.contains(user)
                && !std::path::Path::new(&entry.home).exists()
                && let Err(e) = crate::host::home::create_home(
                    &self.paths.homes,
                    std::path::Path::new(&entry.home),
                    entry.uid,
                    entry.gid,
                )
            {
                tracing::warn!(%user, error = %e, "cannot create the home");
            }
            match apply::write_keys_with(entry, lines, google_lines) {
                Ok(true) => {
                    written += 1;
                    tracing::info!(%user, keys = lines.len(), "authorized_keys updated");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%user, error = %e, "managed keys not written");
                }
            }
        }
        let groups = passwd::parse_group(&passwd::read(&self.paths.group));
        let managed: BTreeSet<String> = p
            .state
            .managed
            .iter()
            .chain(p.released.iter())
            .cloned()
            .collect();
        for group in std::iter::once(&a.sudo_group).chain(a.extra_groups.iter()) {
            let members = if group == &a.sudo_group {
                p.sudo.clone()
            } else {
                p.members.clone()
            };
            if let Err(e) = apply::set_group_members(&tools, &groups, group, &members, &managed) {
                errors.push(format!("group {group}: {e}"));
            }
        }
        for (group, change) in &p.group_changes {
            match apply::change_group_members(&tools, &groups, group, &change.add, &change.remove) {
                Ok(true) => tracing::info!(
                    %group,
                    added = ?change.add,
                    removed = ?change.remove,
                    "cloud-init group members updated"
                ),
                Ok(false) => {}
                Err(e) => errors.push(format!("group {group}: {e}")),
            }
        }
        let grantees = if p.sudo.is_empty() {
            Vec::new()
        } else {
            vec![sudoers::Grantee::Group(a.sudo_group.clone())]
        };
        let sudo_paths = sudoers::SudoersPaths {
            file: self.paths.sudoers.clone(),
            ..Default::default()
        };
        match sudoers::step(sudoers::installed(&sudo_paths), !grantees.is_empty()) {
            sudoers::Step::Apply => {
                if std::mem::take(&mut self.sudo_waiting) && !grantees.is_empty() {
                    tracing::info!(
                        path = %sudo_paths.file.display(),
                        "sudo is installed now; writing the rule for the sudo group"
                    );
                }
                if let Err(e) = sudoers::apply(&sudo_paths, &grantees) {
                    errors.push(format!("sudoers: {e}"));
                }
            }
            sudoers::Step::Wait => {
                if !std::mem::replace(&mut self.sudo_waiting, true) {
                    tracing::warn!(
                        path = %sudo_paths.file.display(),
                        visudo = %sudo_paths.visudo.display(),
                        group = %a.sudo_group,
                        "sudo is not installed (no sudoers.d directory or visudo): metadata \
                         users are created and put in the sudo group, and the sudo rule is \
                         written once sudo is installed (checked every check interval)"
                    );
                }
            }
        }
        let failed = apply::delete_users(&tools, &p.delete);
        let mut after = p.state.clone();
        for (user, e) in &failed {
            errors.push(format!("deleting {user}: {e}"));
            // Still ours and still leaving: the next pass deletes it again (it used to be
            // forgotten, so an account whose deletion failed once stayed for good).
            after.created.insert(user.clone());
            after.managed.insert(user.clone());
        }
        let deleted = p.delete.len() - failed.len();
        let gone: Vec<String> = p
            .delete
            .iter()
            .filter(|u| !failed.iter().any(|(f, _)| f == *u))
            .cloned()
            .collect();
        if !gone.is_empty() {
            events::emit(Event::UsersDeleted(gone));
        }
        let released: Vec<String> = p
            .released
            .iter()
            .filter(|u| !p.delete.contains(u))
            .cloned()
            .collect();
        if !released.is_empty() {
            events::emit(Event::UsersReleased(released));
        }
        events::note(|f| f.managed_users = Some(after.managed.len()));
        if before != after {
            after.save(&self.paths.state)?;
        }
        let next_expiry = desired
            .next_expiry_unix
            .map(|t| Duration::from_secs((t - now).max(0) as u64 + 1));
        // A held removal is confirmed by a later answer of the service: ask for one now and
        // look again in a moment.
        let check = if p.held.is_empty() {
            check
        } else {
            self.reread.notify_one();
            check.min(Duration::from_millis(300))
        };
        self.next_pass = Some(Instant::now() + next_expiry.map_or(check, |e| e.min(check)));
        let spawned = crate::host::command::SPAWNED.load(Ordering::Relaxed) - spawned_before;
        if !p.create.is_empty() || written > 0 || !p.released.is_empty() || deleted > 0 {
            tracing::info!(
                created = p.create.len(),
                keys_written = written,
                released = p.released.len(),
                deleted,
                processes = spawned,
                took_ms = started.elapsed().as_millis() as u64,
                "metadata accounts reconciled"
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(errors.join("; ")))
        }
    }
}
