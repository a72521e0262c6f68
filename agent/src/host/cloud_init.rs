//! cloud-init on the same machine: whether it is still provisioning this boot, and which
//! account it considers its default user.
//!
//! cloud-init creates users (its default user and `users:` from user-data) in its network stage
//! and may run commands that touch accounts until its final stage ends. The agent creates
//! accounts from the `ssh-keys` metadata, so the two could race on the same name (the loser's
//! `useradd` fails, and the account ends up remembered as created by the wrong party). The
//! metadata-keys reconciler therefore waits, bounded, until cloud-init has finished this boot
//! before it touches accounts; see [`gate`].
//!
//! Progress is read from the files cloud-init itself keeps under `/run/cloud-init`: it writes
//! `status.json` as soon as any stage runs this boot and `result.json` when its last stage has
//! finished. Neither file: cloud-init is not installed, is disabled, or has not started this
//! boot (the unit is ordered after `cloud-init-local.service`, so when cloud-init is enabled it
//! has started before the agent does).
//!
//! The default user (`system_info: default_user: name:` in `/etc/cloud/cloud.cfg` and
//! `cloud.cfg.d/*.cfg`) is adopted: the agent manages its keys when metadata lists it, and
//! never deletes the account, even when it created it itself because cloud-init was late.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

#[derive(Debug, Clone)]
pub struct CloudInitPaths {
    /// cloud-init's run directory (`status.json`, `result.json`).
    pub run_dir: PathBuf,
    /// Its main configuration file.
    pub config: PathBuf,
    /// Its configuration drop-in directory (`*.cfg`, read in name order after `config`).
    pub config_dir: PathBuf,
}

impl Default for CloudInitPaths {
    fn default() -> Self {
        CloudInitPaths {
            run_dir: "/run/cloud-init".into(),
            config: "/etc/cloud/cloud.cfg".into(),
            config_dir: "/etc/cloud/cloud.cfg.d".into(),
        }
    }
}

/// Where cloud-init is in this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Not installed, disabled, or not started this boot.
    Absent,
    /// Started and not finished.
    Running,
    /// Its final stage has finished this boot.
    Finished,
}

pub fn progress(paths: &CloudInitPaths) -> Progress {
    if paths.run_dir.join("result.json").exists() {
        Progress::Finished
    } else if paths.run_dir.join("status.json").exists() {
        Progress::Running
    } else {
        Progress::Absent
    }
}

/// What the accounts reconciler does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Touch accounts.
    Open,
    /// Not yet: look again shortly.
    Wait,
    /// cloud-init is still running after the whole allowance: go ahead (and say so).
    TimedOut,
}

/// The pure decision: `waited` is how long the agent has been waiting, `limit` the allowance
/// (`accounts.cloud_init_wait_secs`; zero never waits).
pub fn gate(progress: Progress, waited: Duration, limit: Duration) -> Gate {
    match progress {
        Progress::Absent | Progress::Finished => Gate::Open,
        Progress::Running if limit.is_zero() => Gate::Open,
        Progress::Running if waited >= limit => Gate::TimedOut,
        Progress::Running => Gate::Wait,
    }
}

/// The default user's name(s) cloud-init is configured with: the last `default_user.name`
/// among `cloud.cfg` and the drop-ins in name order (later files win, as in cloud-init).
/// Unreadable or malformed files are skipped: this only ever protects accounts.
pub fn default_users(paths: &CloudInitPaths) -> BTreeSet<String> {
    let mut files = vec![paths.config.clone()];
    if let Ok(dir) = std::fs::read_dir(&paths.config_dir) {
        let mut drop_ins: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cfg"))
            .collect();
        drop_ins.sort();
        files.extend(drop_ins);
    }
    let mut last = None;
    for file in files {
        if let Some(name) = read_default_user(&file) {
            last = Some(name);
        }
    }
    last.into_iter().collect()
}

fn read_default_user(path: &Path) -> Option<String> {
    // cloud.cfg is small; a huge file is not cloud-init's and is not read whole.
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        return None;
    }
    default_user_in(&std::fs::read_to_string(path).ok()?)
}

/// `system_info: default_user: name: NAME` in one cloud-init configuration text.
pub fn default_user_in(text: &str) -> Option<String> {
    let docs = YamlLoader::load_from_str(text).ok()?;
    let name = &docs.first()?["system_info"]["default_user"]["name"];
    match name {
        Yaml::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::files::tests::TempDir;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn gate_waits_only_while_cloud_init_runs_and_only_for_the_allowance() {
        assert_eq!(gate(Progress::Absent, S(0), S(120)), Gate::Open);
        assert_eq!(gate(Progress::Finished, S(0), S(120)), Gate::Open);
        assert_eq!(gate(Progress::Running, S(5), S(120)), Gate::Wait);
        assert_eq!(gate(Progress::Running, S(120), S(120)), Gate::TimedOut);
        assert_eq!(gate(Progress::Running, S(0), S(0)), Gate::Open);
    }

    #[test]
    fn progress_follows_cloud_init_run_files() {
        let dir = TempDir::new("cloud-init-run");
        let paths = CloudInitPaths {
            run_dir: dir.join("run"),
            ..Default::default()
        };
        assert_eq!(progress(&paths), Progress::Absent);
        std::fs::create_dir(&paths.run_dir).unwrap();
        // The generator's log alone (cloud-init disabled) is not a running cloud-init.
        std::fs::write(paths.run_dir.join("cloud-init-generator.log"), "").unwrap();
        assert_eq!(progress(&paths), Progress::Absent);
        std::fs::write(paths.run_dir.join("status.json"), "{}").unwrap();
        assert_eq!(progress(&paths), Progress::Running);
        std::fs::write(paths.run_dir.join("result.json"), "{}").unwrap();
        assert_eq!(progress(&paths), Progress::Finished);
    }

    #[test]
    fn default_user_from_cloud_cfg_and_drop_ins_later_wins() {
        let dir = TempDir::new("cloud-init-cfg");
        let paths = CloudInitPaths {
            run_dir: dir.join("run"),
            config: dir.join("cloud.cfg"),
            config_dir: dir.join("cloud.cfg.d"),
        };
        assert!(default_users(&paths).is_empty());
        std::fs::write(
            &paths.config,
            "users:\n - default\nsystem_info:\n  distro: debian\n  default_user:\n    name: debian\n    groups: [adm, sudo]\n",
        )
        .unwrap();
        assert_eq!(default_users(&paths), ["debian".to_string()].into());
        std::fs::create_dir(&paths.config_dir).unwrap();
        std::fs::write(
            paths.config_dir.join("90-yandex.cfg"),
            "system_info:\n  default_user:\n    name: yc-user\n",
        )
        .unwrap();
        std::fs::write(paths.config_dir.join("50-broken.cfg"), "system_info: [\n").unwrap();
        std::fs::write(paths.config_dir.join("README"), "not a cfg").unwrap();
        assert_eq!(default_users(&paths), ["yc-user".to_string()].into());
    }

    #[test]
    fn default_user_absent_or_malformed() {
        assert_eq!(default_user_in("system_info:\n  distro: ubuntu\n"), None);
        assert_eq!(
            default_user_in("system_info:\n  default_user:\n    name: ''\n"),
            None
        );
        assert_eq!(default_user_in(": : :"), None);
        assert_eq!(default_user_in(""), None);
    }
}
