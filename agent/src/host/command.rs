//! Running a system tool (`sshd -t`, `visudo -c`, `systemctl`) with a deadline.
//!
//! Every helper run is bounded: a tool that hangs is killed when its deadline passes and the
//! run reported as failed, so a reconcile never waits on it for long.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a system tool may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run {program}: {source}; check that it is installed at that path")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout { program: PathBuf, timeout: Duration },
}

/// What a finished tool said.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stderr (or stdout when stderr is empty), trimmed, for error messages.
    pub fn message(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let text = text.trim();
        if text.is_empty() {
            format!("{} with no message", self.status)
        } else {
            text.to_string()
        }
    }
}

/// Processes started through this module since the daemon started (benchmarks and logs
/// report how many a reconcile cost).
pub static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `program args...` with no stdin and a clean locale, collecting its output, killing it
/// after `timeout`.
pub fn run(program: &Path, args: &[&str], timeout: Duration) -> Result<Output, CommandError> {
    run_with_input(program, args, None, timeout)
}

/// [`run`] as the user `uid`/`gid` (no supplementary groups), for reading what that user may
/// read and nothing more. At most `max_output` bytes of stdout are kept (the rest is read and
/// dropped, so a tool pointed at /dev/zero cannot fill the daemon's memory).
pub fn run_as(
    program: &Path,
    args: &[&str],
    owner: (u32, u32),
    max_output: usize,
    timeout: Duration,
) -> Result<Output, CommandError> {
    spawn_and_collect(program, args, None, Some(owner), max_output, timeout)
}

/// [`run`] with `input` written to the tool's stdin (for batch tools such as `newusers` and
/// `chpasswd`, which read their work there and never on the command line, where other users
/// could see it in `ps`).
pub fn run_with_input(
    program: &Path,
    args: &[&str],
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, CommandError> {
    spawn_and_collect(program, args, input, None, usize::MAX, timeout)
}

fn spawn_and_collect(
    program: &Path,
    args: &[&str],
    input: Option<&[u8]>,
    owner: Option<(u32, u32)>,
    max_output: usize,
    timeout: Duration,
) -> Result<Output, CommandError> {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = owner {
        // std drops the supplementary groups (setgroups(0)) before setuid when uid is set.
        std::os::unix::process::CommandExt::uid(&mut command, uid);
        std::os::unix::process::CommandExt::gid(&mut command, gid);
    }
    command
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_retrying(&mut command).map_err(|source| CommandError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let writer = match (input, child.stdin.take()) {
        (Some(bytes), Some(mut stdin)) => {
            let bytes = bytes.to_vec();
            Some(std::thread::spawn(move || {
                use std::io::Write;
                let _ = stdin.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let readers = [
        child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = (&mut out).take(max_output as u64).read_to_end(&mut buf);
                let _ = io::copy(&mut out, &mut io::sink());
                buf
            })
        }),
        child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = err.read_to_end(&mut buf);
                buf
            })
        }),
    ];
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CommandError::Timeout {
                    program: program.to_path_buf(),
                    timeout,
                });
            }
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let [stdout, stderr] = readers.map(|reader| {
        let bytes = reader.and_then(|r| r.join().ok()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    });
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Spawns `command`, retrying briefly on ETXTBSY: a program written a moment ago (a test's
/// script) can be held open for writing by a forked child of another thread until it execs.
pub(crate) fn spawn_retrying(command: &mut Command) -> io::Result<std::process::Child> {
    let mut attempt = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && attempt < 50 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_output_and_status() {
        let out = run(
            Path::new("/bin/sh"),
            &["-c", "echo out; echo err >&2; exit 3"],
            DEFAULT_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.message(), "err");
    }

    #[test]
    fn kills_a_tool_that_hangs() {
        let started = Instant::now();
        let err = run(Path::new("/bin/sleep"), &["5"], Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn runs_as_a_user_with_capped_output() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED runs_as_a_user_...: needs root");
            return;
        }
        let out = run_as(
            Path::new("/bin/sh"),
            &["-c", "id -u; id -G; head -c 100000 /dev/zero"],
            (54321, 54322),
            20,
            DEFAULT_TIMEOUT,
        )
        .unwrap();
        assert!(out.status.success(), "{}", out.message());
        assert!(out.stdout.starts_with("54321\n54322\n"), "{:?}", out.stdout);
        assert_eq!(out.stdout.len(), 20);
    }

    #[test]
    fn names_a_missing_program() {
        let err = run(Path::new("/nonexistent/tool"), &[], DEFAULT_TIMEOUT).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tool"), "{err}");
    }
}
