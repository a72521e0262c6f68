//! The takeover's decision, pure: from what was found on the machine ([`Found`]) to what to
//! change ([`Plan`]). [`super::apply`] gathers and executes.
//!
//! Order and conditions (nothing a user could log in with stops working first):
//! 1. Refused as a whole while 2-step verification is on (metadata `enable-oslogin-2fa`, or
//!    Google's sshd block asking for `keyboard-interactive`): the takeover does not move
//!    Google's second factor (its PAM line and sshd block) to ours in one step yet, and
//!    removing Google's PAM line first would silently drop it.
//! 2. sshd: Google's blocks leave `sshd_config` (its AuthorizedKeysCommand, its FIFO
//!    `TrustedUserCAKeys`, `Include /var/google-users.d/*`); the executor checks the new file
//!    with `sshd -t`, and with OS Login on that `sshd -T` shows our helper as the
//!    AuthorizedKeysCommand, before it renames it into place, then reloads sshd. Then
//!    `/var/google-users.d` goes.
//! 3. Google's units are stopped and disabled (`google-guest-agent.service`,
//!    `google-oslogin-cache.timer` and its service); its startup and shutdown script units are
//!    left alone (guest-agent does not run startup scripts).
//! 4. nsswitch: `cache_oslogin oslogin` leave `passwd:` and `group:`, only when OS Login is
//!    off or our module is on those lines already; then its caches go.
//! 5. PAM (`/etc/pam.d/sshd`) and `/etc/security/group.conf`: its blocks and marked lines go.
//! 6. sudo: every member of `google-sudoers` is put in our sudo group; `google_sudoers` goes
//!    only when our rule for that group is installed (or the group has no members), so sudo
//!    never lapses. OS Login admins' `google-oslogin` and `/var/google-sudoers.d` go (our
//!    OS Login reconciler keeps the admin rule).
//! 7. Users: every name in `google_users` that is a local account becomes managed by us; the
//!    ones [`super::google::made_by_google`] accepts also count as created by us (deprovision
//!    may delete them, as Google's agent would have), the others are kept with the reason.
//!    Then `google_users` goes. Their `# Added by Google` key lines are dropped by the accounts
//!    reconciler once the takeover is recorded (the keys metadata lists are in our block).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::google;
use crate::host::passwd::PasswdEntry;

/// The files and directories Google's agent leaves, where they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePaths {
    pub sshd_config: PathBuf,
    pub pam_sshd: PathBuf,
    pub group_conf: PathBuf,
    pub nsswitch: PathBuf,
    pub google_users: PathBuf,
    pub sudoers_users: PathBuf,
    pub sudoers_oslogin: PathBuf,
    pub sudoers_dir: PathBuf,
    pub users_dir: PathBuf,
    pub caches: Vec<PathBuf>,
    /// The FIFO its agent feeds sshd's `TrustedUserCAKeys` from.
    pub trusted_ca: PathBuf,
}

impl Default for TracePaths {
    fn default() -> Self {
        TracePaths {
            sshd_config: "/etc/ssh/sshd_config".into(),
            pam_sshd: "/etc/pam.d/sshd".into(),
            group_conf: "/etc/security/group.conf".into(),
            nsswitch: "/etc/nsswitch.conf".into(),
            google_users: "/var/lib/google/google_users".into(),
            sudoers_users: "/etc/sudoers.d/google_sudoers".into(),
            sudoers_oslogin: "/etc/sudoers.d/google-oslogin".into(),
            sudoers_dir: "/var/google-sudoers.d".into(),
            users_dir: "/var/google-users.d".into(),
            caches: vec![
                "/etc/oslogin_passwd.cache".into(),
                "/etc/oslogin_group.cache".into(),
            ],
            trusted_ca: "/etc/ssh/oslogin_trustedca.pub".into(),
        }
    }
}

/// Google's units this agent replaces.
pub const UNITS: [&str; 3] = [
    "google-guest-agent.service",
    "google-oslogin-cache.timer",
    "google-oslogin-cache.service",
];

/// A unit as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    pub unit: String,
    pub active: bool,
    pub enabled: bool,
}

/// What [`super::apply::gather`] read.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Each config file's bytes (`None`: missing).
    pub sshd_config: Option<String>,
    pub pam_sshd: Option<String>,
    pub group_conf: Option<String>,
    pub nsswitch: Option<String>,
    pub google_users: Option<String>,
    /// Google's files that go whole when present (sudoers files, caches), and the files in its
    /// two directories.
    pub whole_files: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
    /// Members of `google-sudoers` (`None`: no such group).
    pub sudoers_members: Option<Vec<String>>,
    pub local: Vec<PasswdEntry>,
    pub shadow: String,
    pub uid_range: (u32, u32),
    /// Units that exist (under systemd only).
    pub units: Vec<UnitState>,
    /// From the metadata snapshot.
    pub oslogin_on: bool,
    pub two_factor: bool,
    /// Our NSS module's name, and whether our sudo rule for our group is installed.
    pub our_module: String,
    pub our_sudo_group: String,
    pub our_sudo_rule: bool,
}

/// One file change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Change {
    /// Rewritten without Google's lines (`removed` lines went).
    Rewrite {
        path: PathBuf,
        #[serde(skip)]
        new: String,
        removed: usize,
    },
    /// Removed whole.
    Remove { path: PathBuf },
    /// An empty directory of Google's removed (after the files in it).
    RemoveDir { path: PathBuf },
}

impl Change {
    pub fn path(&self) -> &PathBuf {
        match self {
            Change::Rewrite { path, .. } | Change::Remove { path } | Change::RemoveDir { path } => {
                path
            }
        }
    }
}

/// Which step a change belongs to (the executor checks and commits step by step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Sshd,
    Units,
    Nsswitch,
    Pam,
    Sudo,
    Users,
}

/// The users of `google_users`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    /// Managed by us from now on (keys, sudo group; released when metadata no longer lists
    /// them).
    pub managed: BTreeSet<String>,
    /// Also counted as created by us (deprovision may delete them).
    pub created: BTreeSet<String>,
    /// Listed but not counted as created, and why.
    pub not_created: BTreeMap<String, String>,
    /// Listed but not a local account (nothing to adopt).
    pub missing: BTreeSet<String>,
}

/// What to do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Why nothing is done at all (`None`: go ahead).
    pub refused: Option<String>,
    pub changes: Vec<(Step, Change)>,
    /// Units to stop and disable.
    pub units: Vec<UnitState>,
    /// Members of `google-sudoers` to put in our sudo group.
    pub sudo_add: BTreeSet<String>,
    pub adoption: Adoption,
    /// Traces left in place, and why.
    pub kept: Vec<(String, String)>,
}

impl Plan {
    /// Whether there is anything to do.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
            && self.units.is_empty()
            && self.sudo_add.is_empty()
            && self.adoption.managed.is_empty()
    }
}

impl Found {
    /// Whether anything of Google's agent is on the machine.
    pub fn any(&self) -> bool {
        let marked = |t: &Option<String>| t.as_deref().is_some_and(google::has_marked);
        marked(&self.sshd_config)
            || marked(&self.pam_sshd)
            || marked(&self.group_conf)
            || self.nsswitch.as_deref().is_some_and(google::has_nsswitch)
            || self.google_users.is_some()
            || !self.whole_files.is_empty()
            || !self.dirs.is_empty()
            || self.units.iter().any(|u| u.active || u.enabled)
    }
}

/// Decides (see the module documentation for the order and the conditions).
pub fn plan(f: &Found, paths: &TracePaths) -> Plan {
    let mut p = Plan::default();
    let sshd_2fa = f
        .sshd_config
        .as_deref()
        .is_some_and(|t| google_block_lines(t).any(|l| l.contains("keyboard-interactive")));
    if f.two_factor || sshd_2fa {
        p.refused = Some(
            "2-step verification is on (enable-oslogin-2fa, or Google's sshd block asks for \
             keyboard-interactive), and the takeover does not yet move Google's second factor \
             (its PAM line) to guest-agent's: taking over would drop it. Google's agent is left \
             in charge; stop it and let guest-agent's own two-step verification (its PAM \
             module) take its place by hand, or turn 2-step verification off for the takeover"
                .into(),
        );
        return p;
    }
    let rewrite = |p: &mut Plan, step: Step, path: &PathBuf, text: &Option<String>| {
        if let Some(t) = text {
            let (new, removed) = google::strip_marked(t);
            if removed > 0 {
                p.changes.push((
                    step,
                    Change::Rewrite {
                        path: path.clone(),
                        new,
                        removed,
                    },
                ));
            }
        }
    };
    rewrite(&mut p, Step::Sshd, &paths.sshd_config, &f.sshd_config);
    p.units = f
        .units
        .iter()
        .filter(|u| u.active || u.enabled)
        .cloned()
        .collect();

    // nsswitch and the caches.
    if let Some(text) = &f.nsswitch
        && google::has_nsswitch(text)
    {
        let ours_on_lines = ["passwd", "group"].iter().all(|db| {
            text.lines().any(|l| {
                l.split_once(':').is_some_and(|(d, rest)| {
                    d.trim() == *db && rest.split_whitespace().any(|w| w == f.our_module)
                })
            })
        });
        if f.oslogin_on && !ours_on_lines {
            p.kept.push((
                paths.nsswitch.display().to_string(),
                format!(
                    "OS Login is on and `{}` is not on the passwd and group lines yet: Google's \
                     modules stay until ours is (the next pass)",
                    f.our_module
                ),
            ));
        } else {
            let new = google::strip_nsswitch(text);
            let removed = text
                .lines()
                .zip(new.lines())
                .filter(|(a, b)| a != b)
                .count();
            p.changes.push((
                Step::Nsswitch,
                Change::Rewrite {
                    path: paths.nsswitch.clone(),
                    new,
                    removed,
                },
            ));
        }
    }
    rewrite(&mut p, Step::Pam, &paths.pam_sshd, &f.pam_sshd);
    rewrite(&mut p, Step::Pam, &paths.group_conf, &f.group_conf);

    // sudo.
    let members: BTreeSet<String> = f
        .sudoers_members
        .iter()
        .flatten()
        .filter(|m| f.local.iter().any(|e| &e.name == *m))
        .cloned()
        .collect();
    p.sudo_add = members.clone();
    for path in &f.whole_files {
        let step = if path.starts_with(&paths.users_dir) || *path == paths.trusted_ca {
            Step::Sshd
        } else if paths.caches.contains(path) {
            Step::Nsswitch
        } else {
            Step::Sudo
        };
        if *path == paths.sudoers_users && !members.is_empty() && !f.our_sudo_rule {
            p.kept.push((
                path.display().to_string(),
                format!(
                    "google-sudoers has members and guest-agent's sudo rule for `{}` is not \
                     installed yet (no metadata user has sudo): the members keep sudo through \
                     it",
                    f.our_sudo_group
                ),
            ));
            continue;
        }
        if step == Step::Nsswitch
            && p.kept
                .iter()
                .any(|(what, _)| what == &paths.nsswitch.display().to_string())
        {
            p.kept.push((
                path.display().to_string(),
                "Google's NSS modules are still on the nsswitch lines".into(),
            ));
            continue;
        }
        p.changes
            .push((step, Change::Remove { path: path.clone() }));
    }
    for dir in &f.dirs {
        let step = if *dir == paths.users_dir {
            Step::Sshd
        } else {
            Step::Sudo
        };
        p.changes
            .push((step, Change::RemoveDir { path: dir.clone() }));
    }

    // Users.
    if let Some(text) = &f.google_users {
        for name in google::parse_users(text) {
            let Some(e) = f.local.iter().find(|e| e.name == name) else {
                p.adoption.missing.insert(name);
                continue;
            };
            p.adoption.managed.insert(name.clone());
            match google::made_by_google(e, google::shadow_password(&f.shadow, &name), f.uid_range)
            {
                Ok(()) => {
                    p.adoption.created.insert(name);
                }
                Err(why) => {
                    p.adoption.not_created.insert(name, why);
                }
            }
        }
        p.changes.push((
            Step::Users,
            Change::Remove {
                path: paths.google_users.clone(),
            },
        ));
    }
    p.changes.sort_by_key(|c| c.0);
    p
}

/// The lines inside Google's blocks of `text`.
fn google_block_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut inside = false;
    text.lines().filter(move |l| {
        if l.contains(google::BLOCK_START) {
            inside = true;
            false
        } else if l.contains(google::BLOCK_END) {
            inside = false;
            false
        } else {
            inside
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, uid: u32) -> PasswdEntry {
        PasswdEntry {
            name: name.into(),
            uid,
            gid: uid,
            home: format!("/home/{name}"),
            shell: "/bin/bash".into(),
        }
    }

    fn found() -> Found {
        let paths = TracePaths::default();
        Found {
            sshd_config: Some(format!(
                "{}\nAuthorizedKeysCommand /usr/bin/google_authorized_keys\nAuthorizedKeysCommandUser root\n{}\nInclude /etc/ssh/sshd_config.d/*.conf\n{}\nInclude /var/google-users.d/*\n{}\n",
                google::BLOCK_START,
                google::BLOCK_END,
                google::BLOCK_START,
                google::BLOCK_END
            )),
            pam_sshd: Some(format!(
                "{}\nauth [default=ignore] pam_group.so\n{}\n@include common-auth\n",
                google::BLOCK_START,
                google::BLOCK_END
            )),
            group_conf: Some("# stock\n".into()),
            nsswitch: Some("passwd: files systemd cache_oslogin oslogin guestagent\ngroup: files systemd cache_oslogin oslogin guestagent\n".into()),
            google_users: Some("alice\nadmin\nghost\n".into()),
            whole_files: vec![paths.sudoers_users.clone(), paths.caches[0].clone()],
            dirs: vec![paths.users_dir.clone()],
            sudoers_members: Some(vec!["alice".into(), "carol".into(), "gone".into()]),
            local: vec![entry("alice", 1001), entry("admin", 1002), entry("carol", 1003)],
            shadow: "alice:*:1::::::\nadmin:!:1::::::\ncarol:$y$x:1::::::\n".into(),
            uid_range: (1000, 60000),
            units: vec![UnitState {
                unit: UNITS[0].into(),
                active: true,
                enabled: true,
            }],
            oslogin_on: false,
            two_factor: false,
            our_module: "guestagent".into(),
            our_sudo_group: "guest-agent-sudoers".into(),
            our_sudo_rule: true,
        }
    }

    #[test]
    fn everything_of_googles_goes_in_step_order_and_its_users_are_adopted_by_the_rule() {
        let f = found();
        assert!(f.any());
        let p = plan(&f, &TracePaths::default());
        assert_eq!(p.refused, None);
        let steps: Vec<Step> = p.changes.iter().map(|(s, _)| *s).collect();
        let mut sorted = steps.clone();
        sorted.sort();
        assert_eq!(steps, sorted, "sshd first, users last");
        assert_eq!(steps.first(), Some(&Step::Sshd));
        let sshd = p.changes.iter().find_map(|(_, c)| match c {
            Change::Rewrite { path, new, .. } if path.ends_with("sshd_config") => Some(new),
            _ => None,
        });
        assert_eq!(
            sshd.map(String::as_str),
            Some("Include /etc/ssh/sshd_config.d/*.conf\n")
        );
        let paths: Vec<String> = p
            .changes
            .iter()
            .map(|(_, c)| c.path().display().to_string())
            .collect();
        for want in [
            "/etc/ssh/sshd_config",
            "/etc/pam.d/sshd",
            "/etc/nsswitch.conf",
            "/etc/sudoers.d/google_sudoers",
            "/etc/oslogin_passwd.cache",
            "/var/google-users.d",
            "/var/lib/google/google_users",
        ] {
            assert!(paths.iter().any(|p| p == want), "{want} in {paths:?}");
        }
        assert!(
            !paths.iter().any(|p| p.ends_with("group.conf")),
            "nothing of Google's in it"
        );
        assert_eq!(p.units.len(), 1);
        assert_eq!(
            p.sudo_add,
            BTreeSet::from(["alice".into(), "carol".into()]),
            "a member that is no account is skipped"
        );
        assert_eq!(
            p.adoption.managed,
            BTreeSet::from(["admin".into(), "alice".into()])
        );
        assert_eq!(p.adoption.created, BTreeSet::from(["alice".into()]));
        assert!(
            p.adoption.not_created["admin"].contains("lock"),
            "{:?}",
            p.adoption.not_created
        );
        assert_eq!(p.adoption.missing, BTreeSet::from(["ghost".into()]));
    }

    #[test]
    fn two_step_verification_refuses_the_whole_takeover() {
        let mut f = found();
        f.two_factor = true;
        let p = plan(&f, &TracePaths::default());
        assert!(p.refused.as_deref().is_some_and(|r| r.contains("2-step")));
        assert!(p.is_empty());
        let mut f = found();
        f.sshd_config = Some(format!(
            "{}\nAuthenticationMethods publickey,keyboard-interactive\n{}\n",
            google::BLOCK_START,
            google::BLOCK_END
        ));
        assert!(plan(&f, &TracePaths::default()).refused.is_some());
    }

    #[test]
    fn googles_sudo_rule_stays_while_ours_is_not_installed() {
        let mut f = found();
        f.our_sudo_rule = false;
        let p = plan(&f, &TracePaths::default());
        assert!(
            !p.changes
                .iter()
                .any(|(_, c)| c.path().ends_with("google_sudoers"))
        );
        assert!(p.kept.iter().any(|(w, _)| w.ends_with("google_sudoers")));
        assert!(!p.sudo_add.is_empty(), "members are still put in our group");
    }

    #[test]
    fn with_os_login_on_googles_nss_modules_stay_until_ours_is_on_the_lines() {
        let mut f = found();
        f.oslogin_on = true;
        f.nsswitch = Some(
            "passwd: files cache_oslogin oslogin\ngroup: files cache_oslogin oslogin\n".into(),
        );
        let p = plan(&f, &TracePaths::default());
        assert!(
            !p.changes
                .iter()
                .any(|(_, c)| c.path().ends_with("nsswitch.conf"))
        );
        assert!(
            !p.changes
                .iter()
                .any(|(_, c)| c.path().ends_with("oslogin_passwd.cache")),
            "its caches stay with it"
        );
        f.nsswitch = Some("passwd: files cache_oslogin oslogin guestagent\ngroup: files cache_oslogin oslogin guestagent\n".into());
        let p = plan(&f, &TracePaths::default());
        assert!(
            p.changes
                .iter()
                .any(|(_, c)| c.path().ends_with("nsswitch.conf"))
        );
    }

    #[test]
    fn a_clean_machine_has_nothing_to_take_over() {
        let f = Found {
            sshd_config: Some("Include /etc/ssh/sshd_config.d/*.conf\n".into()),
            nsswitch: Some("passwd: files\n".into()),
            our_module: "guestagent".into(),
            ..Default::default()
        };
        assert!(!f.any());
        assert!(plan(&f, &TracePaths::default()).is_empty());
    }
}
