//! The benchmarks: each part is a library module returning a result struct and its table rows
//! ([`nss`], [`login`], [`console`], [`accounts`], [`scale`], [`service`], [`fleet`]); the
//! binaries `nss-bench`, `login-bench`, `console-bench`, `accounts-bench`, `fleet-bench` print
//! one part each and `bench-report` all of them in one
//! table. Here: what they share, the supervisor that runs the measuring part in a child process
//! and cleans up after it, samples, duration formatting and the result table.
//!
//! Release builds abort on panic (no Drop), so a benchmark measures in a child process (the
//! worker, started again from the same binary with [`Bench::worker_env`] set) while the parent,
//! a child subreaper, kills by PID whatever that child left behind and deletes its network
//! namespaces and temporary directory.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub mod accounts;
pub mod ca_rotation;
pub mod console;
pub mod fleet;
pub mod idle_sessions;
pub mod login;
pub mod nss;
pub mod procfs;
pub mod scale;
pub mod service;
pub mod timer;
pub mod two_factor;

/// One benchmark binary, as the supervisor needs to know it.
pub struct Bench {
    /// The binary's name, at the start of its messages and of its temporary file's name.
    pub name: &'static str,
    /// Set (to a file to record the temporary directories in) in the measuring child.
    pub worker_env: &'static str,
}

// ---------------------------------------------------------------------------------------
// Supervisor: runs the worker, then cleans up whatever it left behind.

extern "C" fn ignore_signal(_: libc::c_int) {}

impl Bench {
    /// A benchmark binary's whole `main` after its own argument handling: refuses to run
    /// without root, then either measures (in the worker child, with `worker` given the record
    /// file) or supervises that child. Exits the process with the outcome.
    pub fn main(&self, worker: impl FnOnce(&std::path::Path) -> Result<(), String>) -> ! {
        let name = self.name;
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "{name}: needs root (network and mount namespaces, a private sshd); run it with \
                 sudo"
            );
            std::process::exit(1);
        }
        let code = match std::env::var_os(self.worker_env) {
            Some(record) => match worker(std::path::Path::new(&record)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{name}: {e}");
                    1
                }
            },
            None => self.supervise(),
        };
        std::process::exit(code);
    }

    /// Runs this binary again, with the same arguments, as the worker (with
    /// [`Bench::worker_env`] set to a file in which the worker records its temporary
    /// directories, [`record_dir`]), waits for it, then kills by PID every process it left
    /// behind, deletes its network namespaces and removes its temporary directories. Returns
    /// the exit code: 0 if the worker succeeded, 1 otherwise.
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
        let exe = timer::own_exe();
        let mut child = match Command::new(exe)
            .args(std::env::args_os().skip(1))
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
        let mut dirs_removed = 0;
        let recorded = std::fs::read_to_string(record.path()).unwrap_or_default();
        for dir in recorded.lines().map(|l| PathBuf::from(l.trim())) {
            let ours = dir.starts_with(std::env::temp_dir())
                && dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ga-e2e-"));
            if ours && dir.is_dir() && std::fs::remove_dir_all(&dir).is_ok() {
                dirs_removed += 1;
            }
        }
        if killed + namespaces + dirs_removed > 0 {
            eprintln!(
                "{name}: cleaned up after the measuring process ({status:?}): {killed} \
                 live process(es) killed, {namespaces} namespace(s) deleted, \
                 {dirs_removed} temporary directory(ies) removed"
            );
        }
        if ok { 0 } else { 1 }
    }

    /// Deletes the network namespaces the worker made: the harness names them
    /// `ga-<tag>-<pid>-<n>` (tags alphanumeric), whatever the part's tag.
    fn delete_namespaces(&self, worker_pid: u32) -> usize {
        let pid = worker_pid.to_string();
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return 0;
        };
        let mut n = 0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let parts: Vec<&str> = name.split('-').collect();
            if parts.len() == 4
                && parts[0] == "ga"
                && parts[2] == pid
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

/// Records `env`'s temporary directory in the worker's `record` file (one line each), for the
/// supervisor to remove if the worker dies without cleaning up.
pub fn record_dir(record: &std::path::Path, env: &crate::TestEnv) -> Result<(), String> {
    record_path(record, env.dir())
}

/// [`record_dir`] for a temporary directory (`ga-e2e-*`) made without a [`crate::TestEnv`].
pub fn record_path(record: &std::path::Path, dir: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(record)
        .and_then(|mut f| writeln!(f, "{}", dir.display()))
        .map_err(|e| format!("{}: {e}", record.display()))
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

/// `kib` KiB as MiB with one decimal.
pub fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Sorted samples.
#[derive(Debug, Clone, Default)]
pub struct Stats(pub Vec<Duration>);

impl Stats {
    pub fn new(mut v: Vec<Duration>) -> Stats {
        v.sort();
        Stats(v)
    }

    /// Nearest-rank percentile.
    pub fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn median(&self) -> Duration {
        self.pct(50.0)
    }

    pub fn p99(&self) -> Duration {
        self.pct(99.0)
    }

    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    /// `median X, p99 Y`.
    pub fn brief(&self) -> String {
        format!("median {}, p99 {}", fmt_d(self.median()), fmt_d(self.p99()))
    }
}

/// One table row: what, the goal, the incumbent's figure, ours, and the verdict against the
/// goal (`None`: no goal for this row).
pub struct Row {
    pub what: String,
    pub goal: String,
    pub incumbent: String,
    pub ours: String,
    pub pass: Option<bool>,
}

/// A [`Row`] without a verdict: what, ours, the incumbent's, our goal (shown, not judged).
pub fn row(
    what: impl Into<String>,
    ours: impl Into<String>,
    inc: impl Into<String>,
    goal: impl Into<String>,
) -> Row {
    Row {
        what: what.into(),
        goal: goal.into(),
        incumbent: inc.into(),
        ours: ours.into(),
        pass: None,
    }
}

impl Row {
    /// The same row judged against its goal.
    pub fn judged(mut self, pass: bool) -> Row {
        self.pass = Some(pass);
        self
    }
}

/// Rows that missed their goal.
pub fn failed(rows: &[Row]) -> Vec<&Row> {
    rows.iter().filter(|r| r.pass == Some(false)).collect()
}

/// Prints `title`, a blank line, then `rows` under a header (measurement, goal, incumbent,
/// this run, PASS/FAIL), columns padded and separated by ` | `.
pub fn print_table(title: &str, rows: &[Row]) {
    let cells = |r: &Row| -> [String; 5] {
        [
            r.what.clone(),
            r.goal.clone(),
            r.incumbent.clone(),
            r.ours.clone(),
            match r.pass {
                Some(true) => "pass".into(),
                Some(false) => "FAIL".into(),
                None => String::new(),
            },
        ]
    };
    let head = [
        "measurement",
        "goal",
        "incumbent",
        "guest-agent (this run)",
        "",
    ]
    .map(String::from);
    let all: Vec<[String; 5]> = std::iter::once(head)
        .chain(rows.iter().map(cells))
        .collect();
    let mut w = [0usize; 5];
    for r in &all {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |r: &[String; 5]| {
        let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w - s.chars().count()));
        let text: Vec<String> = r.iter().zip(w).map(|(c, w)| pad(c, w)).collect();
        println!("{}", text.join(" | ").trim_end());
    };
    println!("{title}");
    println!();
    line(&all[0]);
    println!("{}", "-".repeat(w.iter().sum::<usize>() + 3 * 4));
    for r in &all[1..] {
        line(r);
    }
}
