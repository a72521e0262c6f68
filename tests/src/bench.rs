//! What the benchmark binaries (`login-bench`, `accounts-bench`) share: the supervisor that
//! runs the measuring part in a child process and cleans up after it, duration formatting and
//! the result table.
//!
//! Release builds abort on panic (no Drop), so a benchmark measures in a child process (the
//! worker, started again from the same binary with [`Bench::worker_env`] set) while the parent,
//! a child subreaper, kills by PID whatever that child left behind and deletes its network
//! namespaces and temporary directory.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// One benchmark binary, as the supervisor needs to know it.
pub struct Bench {
    /// The binary's name, at the start of its messages and of its temporary file's name.
    pub name: &'static str,
    /// Set (to a file to record the temporary directory in) in the measuring child.
    pub worker_env: &'static str,
    /// Namespace tag: the harness names namespaces `ga-<tag>-<pid>-<n>`.
    pub tag: &'static str,
}

// ---------------------------------------------------------------------------------------
// Supervisor: runs the worker, then cleans up whatever it left behind.

extern "C" fn ignore_signal(_: libc::c_int) {}

impl Bench {
    /// Runs this binary again as the worker (with [`Bench::worker_env`] set to a file in which
    /// the worker records its temporary directory), waits for it, then kills by PID every
    /// process it left behind, deletes its network namespaces and removes its temporary
    /// directory. Returns the exit code: 0 if the worker succeeded, 1 otherwise.
    pub fn supervise(&self) -> i32 {
        let name = self.name;
        // SAFETY: prctl and signal with constant arguments; the handler does nothing (it only
        // keeps this process alive to clean up after Ctrl-C; exec resets it in the child).
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
            let handler = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
        let record = match tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempfile()
        {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{name}: temporary file: {e}");
                return 1;
            }
        };
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("{name}: own path: {e}");
                return 1;
            }
        };
        let mut child = match Command::new(exe)
            .env(self.worker_env, record.path())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{name}: cannot start the measuring process: {e}");
                return 1;
            }
        };
        let worker_pid = child.id();
        let status = child.wait();
        let ok = matches!(&status, Ok(s) if s.success());
        let killed = kill_orphans();
        let namespaces = self.delete_namespaces(worker_pid);
        let mut dir_removed = false;
        if let Ok(dir) = std::fs::read_to_string(record.path()) {
            let dir = PathBuf::from(dir.trim());
            let ours = dir.starts_with(std::env::temp_dir())
                && dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ga-e2e-"));
            if ours && dir.is_dir() {
                dir_removed = std::fs::remove_dir_all(&dir).is_ok();
            }
        }
        if killed + namespaces > 0 || dir_removed {
            eprintln!(
                "{name}: cleaned up after the measuring process ({status:?}): {killed} \
                 live process(es) killed, {namespaces} namespace(s) deleted, temporary \
                 directory {}",
                if dir_removed {
                    "removed"
                } else {
                    "already gone"
                }
            );
        }
        if ok { 0 } else { 1 }
    }

    /// Deletes the network namespaces the worker made (`ga-<tag>-<worker pid>-<n>`).
    fn delete_namespaces(&self, worker_pid: u32) -> usize {
        let prefix = format!("ga-{}-{worker_pid}-", self.tag);
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return 0;
        };
        let mut n = 0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if name.starts_with(&prefix)
                && Command::new("ip")
                    .args(["netns", "del", name])
                    .status()
                    .is_ok_and(|s| s.success())
            {
                n += 1;
            }
        }
        let empty = std::fs::read_dir("/run/netns")
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if n > 0 && empty {
            let _ = Command::new("umount").arg("/run/netns").status();
        }
        n
    }
}

/// (state, parent pid) of `pid`, from /proc/PID/stat (fields counted after the last ')').
fn state_of(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// Kills (by PID) every live process reparented to this subreaper, until none is left, and
/// reaps them and the zombies reparented here (sshd's session processes leave one per login).
/// Returns how many live processes it killed.
fn kill_orphans() -> usize {
    let me = std::process::id() as i32;
    let mut killed = 0;
    for _ in 0..250 {
        let live: Vec<i32> = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|&pid| matches!(state_of(pid), Some((s, p)) if p == me && s != 'Z'))
                    .collect()
            })
            .unwrap_or_default();
        for &pid in &live {
            // SAFETY: signalling a child of ours by its PID.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
        // Reap whatever has exited (grandchildren reparented to us included).
        loop {
            let mut status = 0;
            // SAFETY: waiting for any child of ours without blocking.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r <= 0 {
                break;
            }
        }
        if live.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

// ---------------------------------------------------------------------------------------
// Output.

/// A duration with three significant digits or so: `1.23 s`, `123 ms`, `12.3 ms`, `1.23 ms`,
/// `123 µs`.
pub fn fmt_d(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else if ms >= 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{:.0} µs", ms * 1000.0)
    }
}

/// One table row: what, ours, the incumbent's, our goal (bar).
pub struct Row(String, String, String, String);

/// A [`Row`]: what, ours, the incumbent's, our goal (bar).
pub fn row(
    what: impl Into<String>,
    ours: impl Into<String>,
    inc: impl Into<String>,
    goal: impl Into<String>,
) -> Row {
    Row(what.into(), ours.into(), inc.into(), goal.into())
}

/// Prints `title`, a blank line, then `rows` under a header, columns padded and separated by
/// ` | `.
pub fn print_table(title: &str, rows: &[Row]) {
    let head = row("measurement", "guest-agent (this run)", "incumbent", "goal");
    let w = |f: fn(&Row) -> usize| rows.iter().chain([&head]).map(f).max().unwrap_or(0);
    let (w0, w1, w2, w3) = (
        w(|r| r.0.chars().count()),
        w(|r| r.1.chars().count()),
        w(|r| r.2.chars().count()),
        w(|r| r.3.chars().count()),
    );
    let line = |r: &Row| {
        let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w - s.chars().count()));
        println!(
            "{} | {} | {} | {}",
            pad(&r.0, w0),
            pad(&r.1, w1),
            pad(&r.2, w2),
            pad(&r.3, w3)
        );
    };
    println!("{title}");
    println!();
    line(&head);
    println!("{}", "-".repeat(w0 + w1 + w2 + w3 + 9));
    for r in rows {
        line(r);
    }
}
