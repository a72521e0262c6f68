//! The service's background work: full directory syncs (at start, every
//! `sync_interval_secs`, on demand), the cache file written at each sync, the delta file after
//! each user learned on a miss, and the admins' sudo rules re-checked at each sync.
//! The session check (`sessions`, with `end_revoked_sessions`) runs beside them.
//!
//! A user learned on a miss (a lookup of a user added since the last sync) is written to the
//! delta file (`cache::delta_path`, the learned users only: O(learned), not O(directory));
//! the whole cache file is rebuilt only at a sync, when local accounts change, when a group
//! or a home changes what the main file says, or when the delta holds more than
//! `DELTA_CAP` users.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::authorize::{Decision, Policy, ask};
use super::directory::DELTA_CAP;
use super::service::{OsLogin, lock, now_usec};
use super::sync::{Listing, list_all};
use crate::mds::watcher::Episode;
use crate::task::AbortOnDrop;

/// Changes are written to the cache at most this often (a burst of misses is one write).
const CACHE_DEBOUNCE: Duration = Duration::from_millis(100);
/// How often /etc/passwd and /etc/group are checked for changes: a local account created
/// since the last write must drop a clashing directory entry from the cache.
const LOCAL_CHECK: Duration = Duration::from_secs(2);

/// Whether a listing that shrank from `before` to `now` users must be read again before it
/// is believed (it would drop more than half the users).
pub fn needs_confirmation(before: usize, now: usize) -> bool {
    before > 0 && now < before.div_ceil(2)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl OsLogin {
    /// Runs the sync loop and the cache writer until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let _ca = AbortOnDrop(tokio::spawn(super::trusted_ca::run(self.clone())));
        let _sessions = AbortOnDrop(tokio::spawn(self.clone().watch_sessions()));
        let writer = {
            let me = self.clone();
            tokio::spawn(async move {
                let local = |me: &OsLogin| (mtime(&me.paths.passwd), mtime(&me.paths.group));
                let mut seen = local(&me);
                loop {
                    let local_changed = tokio::select! {
                        () = me.cache_dirty().notified() => {
                            tokio::time::sleep(CACHE_DEBOUNCE).await;
                            false
                        }
                        () = tokio::time::sleep(LOCAL_CHECK) => {
                            let now = local(&me);
                            if now == seen {
                                continue;
                            }
                            seen = now;
                            true
                        }
                    };
                    if me.is_enabled() {
                        let full = me.full_rebuild_wanted().swap(false, Ordering::SeqCst);
                        let learned = lock(&me.directory).learned_count();
                        if local_changed {
                            tracing::info!("local accounts changed; rewriting the directory cache");
                            me.write_cache().await;
                        } else if full || learned > DELTA_CAP {
                            me.write_cache().await;
                        } else {
                            me.write_delta().await;
                        }
                    }
                }
            })
        };
        let mut failures = Episode::default();
        // The admins in the sudoers drop-in when this process started (an earlier run wrote
        // them): confirmed once, after the first sync.
        let mut inherited = true;
        loop {
            // Requests made until now are answered by the sync below.
            let generation = self.sync_generation();
            if self.is_enabled() {
                let synced = self.sync_once().await;
                if std::mem::take(&mut inherited) {
                    self.confirm_inherited_admins(synced.is_ok()).await;
                }
                match synced {
                    Ok(()) => {
                        if let Some((n, lasted)) = failures.success() {
                            tracing::info!(failed_attempts = n, outage = %format_args!("{:.1}s", lasted.as_secs_f32()), "OS Login directory sync works again");
                        }
                    }
                    Err(e) => {
                        if failures.failure("sync") {
                            tracing::warn!(error = %e, "OS Login directory sync failed ({e}); keeping the last good directory");
                        }
                    }
                }
            }
            // A sync of a large directory frees its listing and the old directory at once.
            // SAFETY: malloc_trim only releases free heap memory to the kernel.
            unsafe { nix::libc::malloc_trim(0) };
            let interval = Duration::from_secs(self.config().oslogin.sync_interval_secs);
            // A failed sync is retried sooner than a successful one is repeated.
            let wait = if failures.is_failing() {
                interval.min(Duration::from_secs(30))
            } else {
                interval
            };
            let until = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    () = self.sync_requested().notified() => {
                        // A request the last sync already answered (made before it
                        // started) waits for the next one.
                        if self.sync_generation() != generation || !self.is_enabled() {
                            break;
                        }
                    }
                }
            }
            if writer.is_finished() {
                tracing::error!("cache writer stopped");
                return;
            }
        }
    }

    async fn list(&self) -> Result<Listing, String> {
        let cfg = self.config();
        let client = self.client()?;
        list_all(
            &client,
            cfg.oslogin.page_size,
            cfg.oslogin.min_id,
            now_usec(),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// One full sync. An answer that would drop more than half the users is read a second
    /// time and taken only if the second read agrees.
    pub async fn sync_once(&self) -> Result<(), String> {
        let started = std::time::Instant::now();
        let mut listing = self.list().await?;
        let before = lock(&self.directory).user_count();
        if needs_confirmation(before, listing.users.len()) {
            tracing::warn!(
                before,
                now = listing.users.len(),
                "directory shrank by more than half; reading it again to confirm"
            );
            let second = self.list().await?;
            if needs_confirmation(before, second.users.len()) {
                tracing::warn!(
                    before,
                    now = second.users.len(),
                    "confirmed by a second read; applying"
                );
            }
            listing = second;
        }
        for refused in listing.refused.iter().take(20) {
            tracing::warn!(error = %refused, "OS Login entry refused");
        }
        let (users, groups) = (listing.users.len(), listing.groups.len());
        if self.local().stale {
            return Err(
                "the local account files cannot be read: the directory is kept as it was".into(),
            );
        }
        lock(&self.directory).replace(listing.users, listing.groups);
        self.write_cache().await;
        crate::events::note(|f| {
            f.directory_synced = Some(std::time::SystemTime::now());
            f.directory_users = Some(users);
        });
        tracing::info!(
            users,
            groups,
            requests = listing.requests,
            took_ms = started.elapsed().as_millis() as u64,
            refused = listing.refused.len(),
            "OS Login directory synced"
        );
        self.recheck_admins().await;
        Ok(())
    }

    /// The sudo rules an earlier run left in the drop-in: the admin list lives in memory, so a
    /// restart (an upgrade, a reboot, a crash) would otherwise keep them until that user's next
    /// login, whatever happened to the role meanwhile. Each user is asked adminLogin now; a
    /// rule stays only when the answer is yes. Denied, no longer in the directory, or not
    /// confirmed because the service does not answer (or the first sync failed): removed, and
    /// logged (sudo is a privilege: it is not kept on an unverified state; the next login that
    /// the role allows writes it again).
    async fn confirm_inherited_admins(&self, directory_ok: bool) {
        let users: Vec<String> = std::mem::take(&mut *lock(&self.inherited_admins))
            .into_iter()
            .collect();
        if users.is_empty() {
            return;
        }
        let client = self.client().ok();
        let mut removed = Vec::new();
        for name in &users {
            let email = lock(&self.directory).user(name).map(|u| u.email.clone());
            let decision = match (&client, email, directory_ok) {
                (Some(client), Some(email), true) => {
                    ask(client, &email, Policy::AdminLogin, None).await
                }
                (_, None, true) => Decision::Denied,
                _ => Decision::Unavailable("the directory could not be read".into()),
            };
            if lock(&self.admins).contains(name) {
                continue; // a login confirmed it meanwhile
            }
            match decision {
                Decision::Allowed => {
                    lock(&self.admins).insert(name.clone());
                }
                Decision::Denied => {
                    tracing::info!(user = %name, "sudo rule from an earlier run removed: the admin role is not granted");
                    removed.push(name.clone());
                }
                Decision::Unavailable(why) => {
                    tracing::warn!(user = %name, reason = %why, "sudo rule from an earlier run removed until the admin role is confirmed (the metadata service did not answer)");
                    removed.push(name.clone());
                }
            }
        }
        // Rewritten from the confirmed set (and the admins logins confirmed meanwhile).
        if !removed.is_empty() {
            self.write_sudoers().await;
        }
        tracing::info!(
            kept = users.len() - removed.len(),
            removed = removed.len(),
            "sudo rules from an earlier run checked"
        );
    }

    /// Asks adminLogin again for everyone in the sudoers drop-in.
    async fn recheck_admins(&self) {
        let admins: Vec<String> = lock(&self.admins).iter().cloned().collect();
        if admins.is_empty() {
            return;
        }
        let Ok(client) = self.client() else { return };
        for name in admins {
            let email = lock(&self.directory).user(&name).map(|u| u.email.clone());
            let decision = match email {
                Some(email) => ask(&client, &email, Policy::AdminLogin, None).await,
                None => Decision::Denied, // no longer in the directory
            };
            self.update_admin(&name, &decision).await;
        }
    }

    /// Writes the directory cache file from the in-memory directory, then the delta file of
    /// what was learned since the snapshot it was built from (empty: removed). In that order,
    /// so a reader never misses a user: until the new main file is in place, the old delta
    /// still holds the users the old main file lacks.
    ///
    /// Built from a snapshot of the directory in a blocking thread, never under the directory
    /// lock: lookups on the socket (sshd's getpwnam and initgroups for a new user among them)
    /// must not wait for a rebuild of a large directory. One write at a time (the delta's
    /// included), so a later snapshot is never overwritten by an earlier one.
    pub(super) async fn write_cache(&self) {
        let _one_at_a_time = self.cache_writes.lock().await;
        let settings = self.rules();
        let local = self.local();
        if local.stale {
            // The last file was built from a good view: it stays until the files read again.
            tracing::warn!("directory cache not rebuilt: the local account files cannot be read");
            return;
        }
        let taken = lock(&self.homes_taken).clone();
        if settings.ignore_user_keys
            && local.clashes_with_group(&settings.users_group, settings.users_group_gid)
        {
            tracing::error!(
                group = %settings.users_group,
                gid = settings.users_group_gid,
                "a local group holds the OS Login users group's name or gid: no OS Login user is served (sshd could not ignore their own key files); set oslogin.users_group and oslogin.users_group_gid to a free name and gid"
            );
        }
        let now = unix_now();
        let (snapshot, learned) = lock(&self.directory).snapshot();
        let users = snapshot.user_count();
        let path = self.paths.cache.clone();
        let result = tokio::task::spawn_blocking(move || {
            let (bytes, skipped) = snapshot.build_cache(&settings, &local, &taken, now);
            if !skipped.is_empty() {
                tracing::warn!(entries = ?skipped, "left out of the directory (see the reasons)");
            }
            super::effects::write_cache(&path, &bytes)
        })
        .await;
        match result {
            Ok(Ok(_)) => {
                tracing::info!(users, "directory cache written");
                lock(&self.directory).forget_learned(&learned);
                self.write_delta_now().await;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot write the directory cache"),
            Err(e) => tracing::error!(error = %e, "cache write task failed"),
        }
    }

    /// Writes the delta file: the users learned on a miss since the last full build (see
    /// `Directory::delta`), by the same rules and builder as the main file.
    pub(super) async fn write_delta(&self) {
        let _one_at_a_time = self.cache_writes.lock().await;
        self.write_delta_now().await;
    }

    /// `write_delta` with the write lock held by the caller.
    async fn write_delta_now(&self) {
        let local = self.local();
        if local.stale {
            return; // as the main file: kept until the files read again
        }
        let settings = self.rules();
        let taken = lock(&self.homes_taken).clone();
        let delta = lock(&self.directory).delta();
        let path = self.paths.delta();
        let now = unix_now();
        let result = tokio::task::spawn_blocking(move || {
            if delta.user_count() == 0 {
                return crate::host::files::remove_if_exists(&path)
                    .map(|_| 0)
                    .map_err(|e| e.to_string());
            }
            let (bytes, _skipped) = delta.build_cache(&settings, &local, &taken, now);
            super::effects::write_delta(&path, &bytes).map(|()| delta.user_count())
        })
        .await;
        match result {
            Ok(Ok(users)) => tracing::debug!(users, "directory delta written"),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot write the directory delta"),
            Err(e) => tracing::error!(error = %e, "delta write task failed"),
        }
    }

    /// Writes a cache file of an empty directory when there is none yet (OS Login turning on,
    /// before sshd is pointed at the helper): its header names the users group, so the NSS
    /// module's fallback for a slow `initgroups` (see `nss/src/module.rs`, `Learned`) holds
    /// from the first login on, before the first sync has filled the directory.
    ///
    /// Never over a file a sync is writing: without the write lock, a sync that had just
    /// written the full directory (OS Login turning on starts one) could be overwritten by
    /// this empty file, and the users then served by the socket only until the next change
    /// (seen once in `users_and_groups_resolve_through_glibc`: enumeration without alice).
    /// When a write is in flight, that write makes the file.
    pub fn ensure_cache_file(&self) -> Result<(), String> {
        let Ok(_one_at_a_time) = self.cache_writes.try_lock() else {
            return Ok(());
        };
        if self.paths.cache.exists() {
            return Ok(());
        }
        let local = self.local();
        if local.stale {
            return Ok(());
        }
        let now = unix_now();
        let (bytes, _) = super::directory::Directory::default().build_cache(
            &self.rules(),
            &local,
            &std::collections::HashSet::new(),
            now,
        );
        super::effects::write_cache(&self.paths.cache, &bytes).map(|_| ())
    }

    /// Rewrites the sudoers drop-in from the admins set (and the rules an earlier run left that
    /// are not confirmed or refused yet: another user's login before the first sync must not
    /// take them out).
    pub(super) async fn write_sudoers(&self) {
        let mut admins: std::collections::BTreeSet<String> = lock(&self.admins).clone();
        admins.extend(lock(&self.inherited_admins).iter().cloned());
        let admins: Vec<String> = admins.into_iter().collect();
        let path = self.paths.sudoers.clone();
        let result =
            tokio::task::spawn_blocking(move || super::effects::write_sudoers(&path, &admins))
                .await;
        match result {
            Ok(Ok(())) => tracing::info!("sudo rules for OS Login admins updated"),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot update the sudo rules"),
            Err(e) => tracing::error!(error = %e, "sudoers task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::needs_confirmation;

    #[test]
    fn losing_more_than_half_needs_a_second_read() {
        assert!(!needs_confirmation(0, 0), "a first sync is believed");
        assert!(!needs_confirmation(10, 10));
        assert!(!needs_confirmation(10, 5), "exactly half is believed");
        assert!(needs_confirmation(10, 4));
        assert!(
            needs_confirmation(10, 0),
            "an empty answer is never believed at once"
        );
        assert!(needs_confirmation(1, 0));
        assert!(needs_confirmation(3, 1));
        assert!(!needs_confirmation(3, 2));
    }
}
