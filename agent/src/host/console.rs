//! The serial console (`daemon.console`, `/dev/ttyS0` by default): event lines for whoever
//! reads the VM's serial port output (see [`crate::events`] for which).
//!
//! A console that does not drain (nobody reads the port, a flow-controlled line, a pty whose
//! master is never read) must never stall the daemon. So: the device is opened
//! `O_WRONLY|O_NONBLOCK|O_NOCTTY|O_CLOEXEC` (no controlling terminal, no wait for a carrier);
//! lines go through a bounded queue ([`QUEUE`]) to a thread of their own, never written from the
//! async runtime; a full queue drops the line and counts it; the thread writes without
//! blocking, waits at most [`WRITE_WAIT`] for room, then drops the line and counts it. The
//! drops are told on the console once it drains again, and in `guest-agent status`.
//! A missing device (no serial port) is one debug log line, nothing else.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use crate::events::{Class, Limiter, PREFIX};

/// Lines waiting for the writer thread at most.
pub const QUEUE: usize = 64;
/// How long the writer waits for a console with no room before dropping a line.
pub const WRITE_WAIT: Duration = Duration::from_millis(100);

/// Counters shared with the writer thread.
#[derive(Debug, Default)]
pub struct Counters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
}

/// An open console: [`Console::send`] queues a line and returns at once.
pub struct Console {
    pub path: PathBuf,
    tx: SyncSender<(Class, String)>,
    pub counters: Arc<Counters>,
}

impl Console {
    /// Opens `path` and starts its writer thread; `None` (one debug line) when there is no
    /// such device or it cannot be opened.
    pub fn open(path: &Path) -> Option<Console> {
        let file = match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no serial console; event lines not written");
                return None;
            }
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let counters = Arc::new(Counters::default());
        let theirs = counters.clone();
        let spawned = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || writer(file, rx, &theirs));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the console writer; event lines not written");
            return None;
        }
        tracing::debug!(path = %path.display(), "event lines go to the serial console");
        Some(Console {
            path: path.to_owned(),
            tx,
            counters,
        })
    }

    /// Queues `line` (without its newline); when the queue is full it is dropped and counted.
    pub fn send(&self, class: Class, line: String) {
        match self.tx.try_send((class, line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The writer thread: rate limits ([`Limiter`]), writes the summaries when their minute ends,
/// and tells how many lines were dropped once the console takes lines again.
fn writer(file: File, rx: mpsc::Receiver<(Class, String)>, counters: &Counters) {
    let mut limiter = Limiter::default();
    let mut told_dropped = 0;
    loop {
        let wait = limiter.next_due().map_or(Duration::from_secs(3600), |at| {
            at.saturating_duration_since(Instant::now())
        });
        let received = match rx.recv_timeout(wait) {
            Ok(item) => Some(item),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = Instant::now();
        let mut lines = limiter.due(now);
        if let Some((class, line)) = received
            && limiter.offer(class, now)
        {
            lines.push(line);
        }
        for line in lines {
            let dropped = counters.dropped.load(Ordering::Relaxed);
            if dropped > told_dropped
                && write_line(
                    &file,
                    &format!(
                        "{PREFIX}{} console line(s) dropped (console not draining)",
                        dropped - told_dropped
                    ),
                )
            {
                told_dropped = dropped;
            }
            if write_line(&file, &line) {
                counters.written.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Writes `line` and a newline without blocking for long: false when the console had no
/// room within [`WRITE_WAIT`] (or failed).
pub fn write_line(file: &File, line: &str) -> bool {
    let mut bytes = Vec::with_capacity(line.len() + 2);
    bytes.extend_from_slice(line.as_bytes());
    // A raw serial line needs the carriage return; a tty in cooked mode adds its own (harmless).
    bytes.extend_from_slice(b"\r\n");
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        match nix::unistd::write(file.as_fd(), rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                if !wait_writable(file, WRITE_WAIT) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

fn wait_writable(file: &File, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLOUT)];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe nobody reads stands in for a console that does not drain: writes never block,
    /// every line beyond its room is dropped and counted, and `send` returns at once however
    /// many lines come (the queue is bounded).
    #[test]
    fn a_console_that_does_not_drain_drops_lines_and_never_blocks() {
        // O_CLOEXEC: a process another test starts meanwhile must not keep the read end open.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&write),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .expect("nonblock");
        let file = File::from(write);
        let line = "x".repeat(100);
        let mut ok = 0;
        let mut refused = 0;
        // A pipe holds 64 KiB: 1,000 lines of 102 bytes cannot all fit. Each refusal waits
        // WRITE_WAIT for room first, so three of them are enough.
        for _ in 0..1000 {
            if write_line(&file, &line) {
                ok += 1;
            } else {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
        }
        assert!(ok > 0 && refused > 0, "{ok} written, {refused} refused");
        drop(read);
        // A line that does not fit the room left: with the reader gone it fails (EPIPE, or
        // after the wait while a child of another test forked before its exec still holds the
        // read end), never hangs.
        assert!(
            !write_line(&file, &line),
            "a closed reader is a failure, not a hang"
        );
    }

    #[test]
    fn a_missing_device_is_no_console() {
        assert!(Console::open(Path::new("/nonexistent/ttyS0")).is_none());
    }

    #[test]
    fn lines_reach_the_console_with_a_newline() {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&write));
        let console = Console::open(Path::new(&path)).expect("open the pipe as a console");
        drop(write);
        console.send(Class::Other, "guest-agent: hello".into());
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        let mut file = File::from(read);
        while !got.ends_with(b"\n") {
            let n = std::io::Read::read(&mut file, &mut buf).expect("read");
            assert!(n > 0, "console closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"guest-agent: hello\r\n");
        // The writer counts it (it may still be between the write and the count).
        while console.counters.written.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
    }
}
