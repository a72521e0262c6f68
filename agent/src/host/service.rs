//! Telling a running daemon (sshd) to re-read its configuration.
//!
//! Under systemd (`/run/systemd/system` exists) through `systemctl try-reload-or-restart`,
//! which reloads a running unit and leaves a stopped one stopped; otherwise with SIGHUP to the
//! pid in the daemon's pid file, after checking that the pid really is that daemon (a stale
//! pid file may name a pid the kernel has since given to another process).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::command::{self, CommandError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot reload {units:?}: {message}; see `systemctl status` and the journal")]
    Systemctl { units: Vec<String>, message: String },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("cannot send SIGHUP to {name} (pid {pid} from {pid_file}): {source}")]
    Signal {
        name: String,
        pid: i32,
        pid_file: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// How to find and reload one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadTarget {
    /// Exists when systemd is PID 1.
    pub systemd_marker: PathBuf,
    pub systemctl: PathBuf,
    /// Unit names to try in order (the first one systemd knows wins).
    pub units: Vec<String>,
    /// Without systemd: the daemon's pid file; missing means not running.
    pub pid_file: PathBuf,
    /// The process name (`/proc/PID/comm`) the pid must have.
    pub process_name: String,
    /// Where `/proc` is.
    pub proc_dir: PathBuf,
    pub timeout: Duration,
}

impl ReloadTarget {
    /// OpenSSH's server: `ssh.service` on Debian and Ubuntu, `sshd.service` elsewhere.
    pub fn sshd() -> ReloadTarget {
        ReloadTarget {
            systemd_marker: "/run/systemd/system".into(),
            systemctl: "/usr/bin/systemctl".into(),
            units: vec!["ssh.service".into(), "sshd.service".into()],
            pid_file: "/run/sshd.pid".into(),
            process_name: "sshd".into(),
            proc_dir: "/proc".into(),
            timeout: command::DEFAULT_TIMEOUT,
        }
    }
}

/// What [`reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// `systemctl try-reload-or-restart UNIT` succeeded (a stopped unit stays stopped).
    Systemd { unit: String },
    /// SIGHUP sent to this pid.
    Signalled { pid: i32 },
    /// No pid file, or one naming a pid that is not the daemon: nothing to reload.
    NotRunning,
}

/// Makes the daemon re-read its configuration.
pub fn reload(target: &ReloadTarget) -> Result<Reloaded, ServiceError> {
    if target.systemd_marker.is_dir() {
        reload_systemd(target)
    } else {
        signal_pid_file(target)
    }
}

fn reload_systemd(target: &ReloadTarget) -> Result<Reloaded, ServiceError> {
    let mut messages = Vec::new();
    for unit in &target.units {
        let out = command::run(
            &target.systemctl,
            &["try-reload-or-restart", unit],
            target.timeout,
        )?;
        if out.status.success() {
            return Ok(Reloaded::Systemd { unit: unit.clone() });
        }
        messages.push(format!("{unit}: {}", out.message()));
    }
    Err(ServiceError::Systemctl {
        units: target.units.clone(),
        message: messages.join("; "),
    })
}

/// Parses a pid file's text: one positive decimal pid above 1, surrounding blanks allowed.
pub fn parse_pid(text: &str) -> Option<i32> {
    text.trim().parse::<i32>().ok().filter(|&pid| pid > 1)
}

fn signal_pid_file(target: &ReloadTarget) -> Result<Reloaded, ServiceError> {
    let Ok(text) = std::fs::read_to_string(&target.pid_file) else {
        return Ok(Reloaded::NotRunning);
    };
    let Some(pid) = parse_pid(&text) else {
        tracing::warn!(pid_file = %target.pid_file.display(), "pid file holds no pid; not signalling");
        return Ok(Reloaded::NotRunning);
    };
    if !is_process(&target.proc_dir, pid, &target.process_name) {
        tracing::warn!(
            pid_file = %target.pid_file.display(),
            pid,
            expected = %target.process_name,
            "stale pid file: that pid is not the daemon; not signalling"
        );
        return Ok(Reloaded::NotRunning);
    }
    match kill(Pid::from_raw(pid), Signal::SIGHUP) {
        Ok(()) => Ok(Reloaded::Signalled { pid }),
        Err(nix::Error::ESRCH) => Ok(Reloaded::NotRunning),
        Err(source) => Err(ServiceError::Signal {
            name: target.process_name.clone(),
            pid,
            pid_file: target.pid_file.clone(),
            source,
        }),
    }
}

fn is_process(proc_dir: &Path, pid: i32, name: &str) -> bool {
    std::fs::read_to_string(proc_dir.join(pid.to_string()).join("comm"))
        .is_ok_and(|comm| comm.trim_end_matches('\n') == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::files::tests::TempDir;
    use std::os::unix::process::ExitStatusExt;

    fn target(tmp: &TempDir) -> ReloadTarget {
        ReloadTarget {
            systemd_marker: tmp.join("no-systemd"),
            pid_file: tmp.join("sshd.pid"),
            ..ReloadTarget::sshd()
        }
    }

    #[test]
    fn pid_file_parsing() {
        assert_eq!(parse_pid("1234\n"), Some(1234));
        for bad in ["", "1", "0", "-5", "12x", "99999999999"] {
            assert_eq!(parse_pid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn no_pid_file_means_not_running() {
        let tmp = TempDir::new("service");
        assert_eq!(reload(&target(&tmp)).unwrap(), Reloaded::NotRunning);
    }

    #[test]
    fn signals_only_the_named_process() {
        let tmp = TempDir::new("service");
        // A copy of sleep called `sshd` stands in for the daemon; a plain sleep for a stranger.
        std::fs::copy("/bin/sleep", tmp.join("sshd")).unwrap();
        // Children inherit an ignored SIGHUP (a test run started under `nohup`): the stand-in
        // must die of it as sshd would reload on it.
        // SAFETY: setting a signal's disposition to the default handler.
        unsafe { nix::sys::signal::signal(Signal::SIGHUP, nix::sys::signal::SigHandler::SigDfl) }
            .unwrap();
        let mut stranger = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut daemon =
            command::spawn_retrying(std::process::Command::new(tmp.join("sshd")).arg("30"))
                .unwrap();
        let t = target(&tmp);

        std::fs::write(&t.pid_file, format!("{}\n", stranger.id())).unwrap();
        assert_eq!(reload(&t).unwrap(), Reloaded::NotRunning);
        assert!(stranger.try_wait().unwrap().is_none(), "stranger untouched");

        std::fs::write(&t.pid_file, format!("{}\n", daemon.id())).unwrap();
        let pid = daemon.id() as i32;
        // The kernel names the process a moment after spawn() returns (exec closes the
        // CLOEXEC pipe spawn waits on before it sets the new name).
        for _ in 0..2000 {
            if is_process(&t.proc_dir, pid, "sshd") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(reload(&t).unwrap(), Reloaded::Signalled { pid });
        assert_eq!(daemon.wait().unwrap().signal(), Some(Signal::SIGHUP as i32));
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }

    #[test]
    fn systemd_path_tries_units_in_order() {
        let tmp = TempDir::new("service");
        std::fs::create_dir(tmp.join("systemd")).unwrap();
        let log = tmp.join("calls");
        let script = tmp.join("systemctl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\n[ \"$2\" = sshd.service ] || {{ echo \"Unit $2 not found.\" >&2; exit 5; }}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let t = ReloadTarget {
            systemd_marker: tmp.join("systemd"),
            systemctl: script.clone(),
            ..target(&tmp)
        };
        let unit = "sshd.service".to_string();
        assert_eq!(reload(&t).unwrap(), Reloaded::Systemd { unit });
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "try-reload-or-restart ssh.service\ntry-reload-or-restart sshd.service\n"
        );
        let t = ReloadTarget {
            units: vec!["ssh.service".into()],
            ..t
        };
        let err = reload(&t).unwrap_err();
        assert!(
            err.to_string().contains("Unit ssh.service not found"),
            "{err}"
        );
    }
}
