//! Turns OS Login on and off from the `enable-oslogin` attribute (instance over project):
//! sshd's AuthorizedKeysCommand drop-in, `guestagent` in nsswitch.conf, the directory service.
//! Off again leaves sshd_config and nsswitch.conf as they were before (byte for byte), and
//! removes the sudo rules and the directory cache.
//!
//! What was added to nsswitch.conf is remembered in `/var/lib/guest-agent/oslogin-state.json`,
//! so a restarted agent removes exactly that and nothing an operator had put there.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::service::OsLogin;
use crate::config::Config;
use crate::host::state_file::{self, StateFile};
use crate::host::{files, nsswitch, sshd};
use crate::mds::Snapshot;
use crate::reconcile::Reconciler;

#[derive(Debug, Clone)]
pub struct HostPaths {
    pub state: PathBuf,
    pub nsswitch: nsswitch::NsswitchPaths,
    pub sshd: crate::host::SshdPaths,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            state: "/var/lib/guest-agent/oslogin-state.json".into(),
            nsswitch: Default::default(),
            sshd: Default::default(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
struct State {
    enabled: bool,
    nsswitch_added: Vec<String>,
    /// Set before sshd's configuration is edited, cleared once sshd has been reloaded (or
    /// needed no reload): a kill in between leaves the file right but sshd running the old
    /// configuration, and the next start must reload it although the file needs no change.
    sshd_reload_pending: bool,
    /// Another AuthorizedKeysCommand the helper hands other users on to while OS Login is on
    /// (its file is never edited: OS Login off puts it back in effect by removing ours).
    chained: Option<sshd::rival::Rival>,
}

/// Versions: 1 the file of guest-agent 0.1.0 (no `"version"`), 2 the same fields with a
/// version (see [`state_file`] for upgrades and downgrades).
impl StateFile for State {
    const WHAT: &'static str = "OS Login state";
    const VERSION: u32 = if cfg!(feature = "next-version") { 3 } else { 2 };
    fn migrate(
        from: u32,
        _object: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        match from {
            1 => Ok(()),
            _ => state_file::next_version_step(from, 2),
        }
    }
}

pub struct OsLoginReconciler {
    service: Arc<OsLogin>,
    config: watch::Receiver<Arc<Config>>,
    paths: HostPaths,
    /// (enabled, sshd settings, the main sshd_config's identity) last applied successfully:
    /// a main config changed since (a takeover removed another agent's block, an operator's
    /// edit) is planned again, so a chained command that is gone is not kept.
    applied: Option<(bool, sshd::SshdSettings, Option<FileStamp>)>,
    /// After a failure, when to try again without a metadata change (sshd installed later,
    /// a config fixed by hand): every `accounts.check_interval_secs`.
    retry_at: Option<std::time::Instant>,
}

impl OsLoginReconciler {
    pub fn new(
        service: Arc<OsLogin>,
        config: watch::Receiver<Arc<Config>>,
        paths: HostPaths,
    ) -> Self {
        OsLoginReconciler {
            service,
            config,
            paths,
            applied: None,
            retry_at: None,
        }
    }

    fn load_state(&self) -> State {
        state_file::load(&self.paths.state)
    }

    fn save_state(&self, state: &State) -> anyhow::Result<()> {
        state_file::save(&self.paths.state, state)
    }

    fn settings(&self) -> sshd::SshdSettings {
        sshd_settings(&self.config.borrow())
    }

    fn enable(&mut self, settings: &sshd::SshdSettings) -> anyhow::Result<()> {
        let mut state = self.load_state();
        // What will be added is saved before nsswitch.conf is written: killed in between, the
        // agent must still know what to take out when OS Login goes off.
        let planned = nsswitch::planned_additions(
            &self.paths.nsswitch,
            nsswitch::DEFAULT_MODULE,
            &nsswitch::DEFAULT_DBS,
        )?;
        for db in planned {
            if !state.nsswitch_added.contains(&db) {
                state.nsswitch_added.push(db);
            }
        }
        state.enabled = true;
        self.save_state(&state)?;
        let (changed, added) = nsswitch::apply_enable(
            &self.paths.nsswitch,
            nsswitch::DEFAULT_MODULE,
            &nsswitch::DEFAULT_DBS,
        )?;
        if added.iter().any(|db| !state.nsswitch_added.contains(db)) {
            for db in added {
                if !state.nsswitch_added.contains(&db) {
                    state.nsswitch_added.push(db);
                }
            }
            self.save_state(&state)?;
        }
        if changed {
            tracing::info!(path = %self.paths.nsswitch.file.display(), "nsswitch.conf: guestagent added");
        }
        // The CA file exists before the service is on (whose first act is to fill it) and
        // before sshd is told about it; the service is on before sshd runs our helper.
        if let Some(ca) = &settings.trusted_ca_file {
            super::trusted_ca::ensure_exists(ca).map_err(anyhow::Error::msg)?;
        }
        self.service.set_enabled(true);
        self.service
            .ensure_cache_file()
            .map_err(anyhow::Error::msg)?;
        let report = self.edit_sshd(&mut state, |paths| sshd::apply::enable(paths, settings))?;
        if let Some(place) = &report.shadowed_principals {
            tracing::warn!(
                place = %place,
                "another AuthorizedPrincipalsCommand comes after the agent's and is not used while OS Login is on (certificates are OS Login's)"
            );
        }
        let same = |a: &Option<sshd::rival::Rival>, b: &Option<sshd::rival::Rival>| {
            a.as_ref().map(|r| (&r.chain, &r.file)) == b.as_ref().map(|r| (&r.chain, &r.file))
        };
        if !same(&state.chained, &report.chained) {
            match &report.chained {
                Some(r) => tracing::info!(
                    command = %r.chain.command,
                    user = %r.chain.user,
                    place = %r.place,
                    layout = ?report.layout,
                    "chained to another AuthorizedKeysCommand: the agent's comes first and hands users that are not OS Login users on to it"
                ),
                None => tracing::info!("no other AuthorizedKeysCommand to chain any more"),
            }
            state.chained = report.chained.clone();
            self.save_state(&state)?;
        }
        tracing::info!(changed = ?report.changed, reloaded = ?report.reloaded, layout = ?report.layout, "OS Login enabled");
        Ok(())
    }

    /// Runs one sshd edit between setting and clearing `sshd_reload_pending`; reloads sshd
    /// when an earlier run was killed before it could.
    fn edit_sshd(
        &self,
        state: &mut State,
        edit: impl FnOnce(&crate::host::SshdPaths) -> Result<crate::host::SshdReport, sshd::SshdError>,
    ) -> anyhow::Result<crate::host::SshdReport> {
        let left_pending = state.sshd_reload_pending;
        if !left_pending {
            state.sshd_reload_pending = true;
            self.save_state(state)?;
        }
        let mut report = edit(&self.paths.sshd)?;
        if left_pending && report.reloaded.is_none() {
            tracing::info!(
                "reloading sshd: an earlier run changed its configuration and stopped before reloading it"
            );
            report.reloaded = Some(crate::host::service::reload(&self.paths.sshd.reload)?);
        }
        state.sshd_reload_pending = false;
        self.save_state(state)?;
        Ok(report)
    }

    /// OS Login on, with two-step verification when `settings` asks for it
    /// (`two_factor_group`). The PAM lines are written before sshd asks for
    /// keyboard-interactive and removed after it stopped (see [`crate::host::pam`]). When
    /// two-step verification cannot be enforced (`UsePAM no`, no module), OS Login is on
    /// without it, and the service refuses OS Login logins other than `sa_` accounts, with
    /// the reason, until it can: the second factor is never skipped silently.
    fn enable_with_two_factor(&mut self, settings: &mut sshd::SshdSettings) -> anyhow::Result<()> {
        if settings.two_factor_group.is_none() {
            // sshd first (keyboard-interactive no longer asked), then the PAM lines.
            self.enable(settings)?;
            return self.two_factor_off();
        }
        let (pam_file, module) = {
            let c = self.config.borrow();
            (
                PathBuf::from(&c.oslogin.pam_file),
                c.oslogin.pam_module.clone(),
            )
        };
        // An sshd before 8.7 prints `challengeresponseauthentication` (8.7 made it an alias).
        match sshd::apply::effective_value(&self.paths.sshd, "challengeresponseauthentication") {
            Ok(Some(_)) => {
                let lines = sshd::scan::flatten(
                    &self.paths.sshd.main_config,
                    &self.paths.sshd.ssh_dir,
                    &[
                        self.paths.sshd.dropin.as_path(),
                        self.paths.sshd.early_dropin.as_path(),
                    ],
                    &sshd::scan::RealFs,
                );
                let passwords =
                    sshd::apply::effective_value(&self.paths.sshd, "passwordauthentication")
                        .ok()
                        .flatten()
                        .is_none_or(|v| v != "no");
                settings.two_factor_legacy = Some(sshd::LegacyKbdInt {
                    keep_others_off: !sshd::operator_challenge_response(&lines) && !passwords,
                });
            }
            _ => settings.two_factor_legacy = None,
        }
        let blocked = match sshd::apply::effective_value(&self.paths.sshd, "usepam") {
            Ok(Some(v)) if v == "yes" => None,
            Ok(v) => Some(format!(
                "sshd has `UsePAM {}`; two-step verification runs in sshd's PAM stack: set UsePAM yes in {}",
                v.as_deref().unwrap_or("(unset)"),
                self.paths.sshd.main_config.display()
            )),
            Err(e) => Some(format!("cannot read sshd's configuration: {e}")),
        };
        let blocked = match blocked {
            Some(b) => Some(b),
            None => match crate::host::pam::enable(&pam_file, &module) {
                Ok(changed) => {
                    if changed {
                        tracing::info!(path = %pam_file.display(), module = %module, "PAM: two-step verification lines added");
                    }
                    None
                }
                Err(e) => Some(e.to_string()),
            },
        };
        if let Some(why) = blocked {
            settings.two_factor_group = None;
            settings.two_factor_legacy = None;
            self.service.set_two_factor(false);
            self.service.set_two_factor_blocked(Some(why.clone()));
            self.enable(settings)?;
            // The PAM lines are not needed without sshd's requirement (a stack we could not
            // validate is not left behind either).
            if let Err(e) = crate::host::pam::disable(&pam_file) {
                tracing::warn!(error = %e, "cannot remove the PAM lines");
            }
            anyhow::bail!("two-step verification (enable-oslogin-2fa) cannot be turned on: {why}");
        }
        self.service.set_two_factor(true);
        self.service.set_two_factor_blocked(None);
        self.enable(settings)
    }

    /// Two-step verification off: sshd no longer asks for it (done by the caller before),
    /// then the PAM lines go.
    fn two_factor_off(&mut self) -> anyhow::Result<()> {
        self.service.set_two_factor(false);
        self.service.set_two_factor_blocked(None);
        let pam_file = PathBuf::from(&self.config.borrow().oslogin.pam_file);
        if crate::host::pam::disable(&pam_file)? {
            tracing::info!(path = %pam_file.display(), "PAM: two-step verification lines removed");
        }
        Ok(())
    }

    fn disable(&mut self) -> anyhow::Result<()> {
        let mut state = self.load_state();
        self.service.set_enabled(false);
        let report = self.edit_sshd(&mut state, sshd::apply::disable)?;
        if let Some(r) = state.chained.take() {
            match report.keys_command_after.as_deref() {
                Some(after) if after == r.chain.command => tracing::info!(
                    command = %r.chain.command,
                    place = %r.place,
                    "the other AuthorizedKeysCommand is in effect again"
                ),
                after => tracing::warn!(
                    command = %r.chain.command,
                    place = %r.place,
                    found = after.unwrap_or("(sshd not asked)"),
                    "the AuthorizedKeysCommand chained while OS Login was on is not what sshd uses now"
                ),
            }
        }
        if !state.nsswitch_added.is_empty() {
            nsswitch::apply_disable(
                &self.paths.nsswitch,
                nsswitch::DEFAULT_MODULE,
                &state.nsswitch_added,
            )?;
        }
        state.nsswitch_added.clear();
        let was_enabled = std::mem::replace(&mut state.enabled, false);
        self.save_state(&state)?;
        self.service.clear()?;
        let ca = std::path::PathBuf::from(&self.config.borrow().oslogin.ca_file);
        if ca.exists() {
            files::remove_if_exists(&ca)?;
            if let Some(dir) = ca.parent() {
                let _ = std::fs::remove_dir(dir); // only when empty: ours
            }
        }
        if was_enabled || !report.changed.is_empty() {
            tracing::info!(changed = ?report.changed, reloaded = ?report.reloaded, "OS Login disabled");
        }
        Ok(())
    }
}

impl Reconciler for OsLoginReconciler {
    fn name(&self) -> &'static str {
        "oslogin"
    }

    fn next_wakeup(&self) -> Option<std::time::Instant> {
        self.retry_at
    }

    fn reconcile(&mut self, snapshot: &Snapshot) -> anyhow::Result<()> {
        let flag = snapshot.flag("enable-oslogin");
        let on = flag.is_some_and(|(v, _)| v);
        let why = match flag {
            Some((v, scope)) => format!("{scope} attribute enable-oslogin = {v}"),
            None => "no enable-oslogin attribute".into(),
        };
        self.service
            .set_security_keys(on && snapshot.flag("enable-oslogin-sk").is_some_and(|(v, _)| v));
        let want_2fa = on && snapshot.flag("enable-oslogin-2fa").is_some_and(|(v, _)| v);
        let mut settings = self.settings();
        if want_2fa {
            settings.two_factor_group = Some(self.config.borrow().oslogin.users_group.clone());
        }
        let stamp = file_stamp(&self.paths.sshd.main_config);
        if self.applied.as_ref() == Some(&(on, settings.clone(), stamp)) {
            return Ok(());
        }
        // What was asked is remembered, not what the sshd at hand made of it (the legacy
        // lines): the next pass compares the same thing.
        let asked = settings.clone();
        let result = if on {
            self.enable_with_two_factor(&mut settings)
        } else {
            self.disable().and_then(|()| self.two_factor_off())
        };
        match result {
            Ok(()) => {
                // The stamp after our own edit (a block we wrote there is no change).
                self.applied = Some((on, asked, file_stamp(&self.paths.sshd.main_config)));
                self.retry_at = None;
                crate::events::oslogin(on, why);
                Ok(())
            }
            Err(e) => {
                self.applied = None;
                let every = self.config.borrow().accounts.check_interval_secs.max(1);
                self.retry_at =
                    Some(std::time::Instant::now() + std::time::Duration::from_secs(every));
                Err(e.context(if on {
                    format!("enabling OS Login (retried every {every} s)")
                } else {
                    format!("disabling OS Login (retried every {every} s)")
                }))
            }
        }
    }
}

/// A file's inode, size and modification time (`None`: missing).
type FileStamp = (u64, u64, i64, i64);

fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// What OS Login asks of sshd with this configuration (also what `doctor` expects to find).
pub fn sshd_settings(cfg: &Config) -> sshd::SshdSettings {
    let o = &cfg.oslogin;
    let program = o.sshd_program();
    sshd::SshdSettings {
        principals_command: format!("{program} authorized-principals %u %k"),
        keys_command: format!("{program} authorized-keys %u %f %t %k"),
        command_user: o.command_user.clone(),
        trusted_ca_file: Some(o.ca_file.clone().into()),
        ignore_user_keys_group: o.ignore_user_keys.then(|| o.users_group.clone()),
        two_factor_group: None,
        two_factor_legacy: None,
        chain: None,
    }
}
