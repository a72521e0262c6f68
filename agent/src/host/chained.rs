//! Running another AuthorizedKeysCommand for the helper (see [`super::sshd::rival`]): as sshd
//! would have run it, as its own AuthorizedKeysCommandUser (supplementary groups, gid and uid
//! of that user, a minimal environment, stdin from /dev/null, stderr left to sshd's log),
//! after sshd's check of the program's path, and bounded: killed (its whole process group)
//! at the deadline, and its output refused beyond a size. Its output is passed through only
//! when it exits 0, as sshd uses it only then.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, User};

/// How long the other command may take (sshd itself waits for ever).
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The most output taken from it (authorized_keys lines: a generous bound).
pub const MAX_OUTPUT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("no user {0} to run the other AuthorizedKeysCommand as")]
    NoUser(String),
    #[error(
        "cannot run the other AuthorizedKeysCommand as {user}: this helper runs as uid {uid}, not root (sshd: AuthorizedKeysCommandUser root)"
    )]
    NotRoot { user: String, uid: u32 },
    #[error("{path}: {what}; sshd refuses such an AuthorizedKeysCommand, and so does the agent")]
    Unsafe { path: PathBuf, what: String },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {deadline:?} and was killed")]
    Timeout { program: String, deadline: Duration },
    #[error("{program} printed more than {MAX_OUTPUT} bytes and was killed")]
    TooMuch { program: String },
    #[error("{program} exited with {status}")]
    Failed { program: String, status: String },
}

/// sshd's `auth_secure_path` for an AuthorizedKeysCommand: the resolved program a regular
/// file, it and every directory above it owned by root and not group/world-writable.
pub fn check_path(program: &Path) -> Result<(), ChainError> {
    let unsafe_ = |path: &Path, what: &str| ChainError::Unsafe {
        path: path.to_path_buf(),
        what: what.into(),
    };
    if !program.is_absolute() {
        return Err(unsafe_(program, "not an absolute path"));
    }
    let real = std::fs::canonicalize(program).map_err(|e| unsafe_(program, &e.to_string()))?;
    for (i, p) in real.ancestors().enumerate() {
        let meta = std::fs::metadata(p).map_err(|e| unsafe_(p, &e.to_string()))?;
        if i == 0 && !meta.is_file() {
            return Err(unsafe_(p, "not a regular file"));
        }
        if meta.uid() != 0 {
            return Err(unsafe_(p, "not owned by root"));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(unsafe_(p, "writable by group or others"));
        }
    }
    Ok(())
}

/// Runs `argv` (program first, arguments already expanded by sshd) as `user`, within
/// `deadline` and [`MAX_OUTPUT`]; its stdout when it exits 0.
pub fn run_as(argv: &[String], user: &str, deadline: Duration) -> Result<Vec<u8>, ChainError> {
    let program = argv.first().cloned().unwrap_or_default();
    check_path(Path::new(&program))?;
    let pw = User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| ChainError::NoUser(user.to_owned()))?;
    let me = Uid::effective();
    let change = me != pw.uid;
    if change && !me.is_root() {
        return Err(ChainError::NotRoot {
            user: user.to_owned(),
            uid: me.as_raw(),
        });
    }
    // The groups are looked up here: after fork only system calls are safe.
    let groups: Vec<Gid> = if change {
        let name = CString::new(user).map_err(|_| ChainError::NoUser(user.to_owned()))?;
        nix::unistd::getgrouplist(&name, pw.gid).unwrap_or_else(|_| vec![pw.gid])
    } else {
        Vec::new()
    };
    let (uid, gid) = (pw.uid, pw.gid);
    let mut command = Command::new(&program);
    command
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("USER", &pw.name)
        .env("LOGNAME", &pw.name)
        .env("HOME", &pw.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    if let Ok(lang) = std::env::var("LANG") {
        command.env("LANG", lang);
    }
    if change {
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setresgid(gid, gid, gid)?;
                nix::unistd::setresuid(uid, uid, uid)?;
                Ok(())
            });
        }
    }
    let mut child =
        super::command::spawn_retrying(&mut command).map_err(|source| ChainError::Spawn {
            program: program.clone(),
            source,
        })?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let kill = || {
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    };
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stdout)
            .take(MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut buf);
        buf
    });
    let until = Instant::now() + deadline;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                kill();
                let _ = child.wait();
                return Err(ChainError::Timeout { program, deadline });
            }
        }
    };
    // Children it left behind holding the pipe go with its process group.
    let out = loop {
        if reader.is_finished() {
            break reader.join().unwrap_or_default();
        }
        if Instant::now() >= until {
            kill();
            break reader.join().unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if out.len() > MAX_OUTPUT {
        kill();
        return Err(ChainError::TooMuch { program });
    }
    if !status.success() {
        return Err(ChainError::Failed {
            program,
            status: status.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::files::tests::is_root;

    /// A directory beside the test binary (not /tmp, which is world-writable), removed at
    /// the end.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn script(tmp: &TempDir, name: &str, body: &str) -> String {
        let path = tmp.0.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path.display().to_string()
    }

    fn root_tmp() -> Option<TempDir> {
        if !is_root() {
            eprintln!("SKIPPED: running another command as its user needs root");
            return None;
        }
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().join(format!(
            "chained-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let tmp = TempDir(dir);
        for p in tmp.0.ancestors() {
            let meta = std::fs::metadata(p).unwrap();
            if meta.mode() & 0o022 != 0 || meta.uid() != 0 {
                eprintln!(
                    "SKIPPED: {} is not root-owned 0755 (sshd's rule)",
                    p.display()
                );
                return None;
            }
        }
        Some(tmp)
    }

    #[test]
    fn runs_as_the_other_commands_user_with_sshds_environment() {
        let Some(tmp) = root_tmp() else { return };
        let s = script(
            &tmp,
            "who",
            "id -u; id -G; echo \"$USER $HOME\"; cat; echo \"$1\"",
        );
        let out = run_as(&[s, "a b".into()], "nobody", DEADLINE).unwrap();
        let text = String::from_utf8(out).unwrap();
        let pw = User::from_name("nobody").unwrap().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], pw.uid.to_string(), "{text}");
        assert!(
            !lines[1].split(' ').any(|g| g == "0"),
            "no root group: {text}"
        );
        assert_eq!(lines[2], format!("nobody {}", pw.dir.display()));
        assert_eq!(lines[3], "a b", "stdin is empty, arguments kept whole");
        // Root stays root only when the other command ran as root.
        let out = run_as(&[script(&tmp, "root", "id -u")], "root", DEADLINE).unwrap();
        assert_eq!(out, b"0\n");
    }

    #[test]
    fn hangs_floods_failures_and_unsafe_paths_give_nothing() {
        let Some(tmp) = root_tmp() else { return };
        let started = Instant::now();
        let hang = script(&tmp, "hang", "echo key; sleep 600 & sleep 600");
        let err = run_as(&[hang], "nobody", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, ChainError::Timeout { .. }), "{err}");
        // 10x margin over the 300 ms deadline: the sleeps were killed with their group.
        assert!(started.elapsed() < Duration::from_secs(3));
        let flood = script(&tmp, "flood", "yes ssh-ed25519 AAAA");
        let err = run_as(&[flood], "nobody", DEADLINE).unwrap_err();
        assert!(matches!(err, ChainError::TooMuch { .. }), "{err}");
        let fail = script(&tmp, "fail", "echo key; exit 3");
        let err = run_as(&[fail], "nobody", DEADLINE).unwrap_err();
        assert!(matches!(err, ChainError::Failed { .. }), "{err}");
        let open = script(&tmp, "open", "echo key");
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let err = run_as(&[open], "nobody", DEADLINE).unwrap_err();
        assert!(matches!(err, ChainError::Unsafe { .. }), "{err}");
        let err = run_as(&["/nonexistent/x".into()], "nobody", DEADLINE).unwrap_err();
        assert!(matches!(err, ChainError::Unsafe { .. }), "{err}");
        let ok = script(&tmp, "ok", "echo key");
        let err = run_as(&[ok], "no-such-user-here", DEADLINE).unwrap_err();
        assert!(matches!(err, ChainError::NoUser(_)), "{err}");
    }
}
