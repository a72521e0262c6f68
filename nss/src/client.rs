//! Asking the daemon on its local socket, when the cache does not know: one connection per
//! question, every step under one total deadline, and a per-thread memory of the last answer so
//! glibc's retry with a bigger buffer (after ERANGE) does not ask again.

use std::cell::RefCell;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use guest_agent_wire::proto::{
    Answer, Head, MAX_LINE, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Request, daemon_speaks,
};

use crate::mapping::coarse_ms;

/// The whole exchange (connect, write, read) must end within this: a lookup of an unknown
/// name while the metadata service hangs costs this plus the caller's own start, and must stay
/// under 100 ms in all.
pub const DEADLINE: Duration = Duration::from_millis(90);
/// Largest answer read (initgroups: up to MAX_ANSWER_LINES short lines; lookups: one line).
const MAX_ANSWER_BYTES: usize = 4 * MAX_LINE;
/// How long an answer is kept for glibc's retry after ERANGE.
const RETRY_MEMORY_MS: u64 = 5_000;

/// What the daemon said, reduced to what the module acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Lines(Vec<String>),
    NotFound,
    /// The daemon is down, slow, said UNAVAIL/DENIED/ERR, or broke the protocol.
    Unavail,
    /// An older daemon (an upgrade in progress): it does not speak this module's protocol
    /// version, and its newest is this one.
    OlderDaemon(u32),
}

/// Asks `request` on the socket at `path`, in this module's protocol version or, when the
/// daemon is older and says so, once more in the daemon's newest version if this module
/// speaks it too; all within `timeout`.
pub fn ask(path: &CStr, request: &Request, timeout: Duration) -> Reply {
    let deadline = Instant::now() + timeout;
    match exchange(path, &request.encode(), deadline) {
        Some(Reply::OlderDaemon(v)) if (MIN_PROTOCOL_VERSION..PROTOCOL_VERSION).contains(&v) => {
            match exchange(path, &request.encode_as(v), deadline) {
                Some(Reply::OlderDaemon(_)) | None => Reply::Unavail,
                Some(reply) => reply,
            }
        }
        Some(Reply::OlderDaemon(_)) | None => Reply::Unavail,
        Some(reply) => reply,
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Waits until `fd` is ready for `events`, or the deadline passes (None).
fn wait(fd: &OwnedFd, events: libc::c_short, deadline: Instant) -> Option<()> {
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        let ms = left.as_micros().div_ceil(1000).clamp(1, 1000) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Some(());
        }
        if r < 0 && errno() != libc::EINTR {
            return None;
        }
    }
}

fn connect(path: &CStr, deadline: Instant) -> Option<OwnedFd> {
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just created and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = path.to_bytes();
    if path.len() >= addr.sun_path.len() {
        return None;
    }
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::offset_of!(libc::sockaddr_un, sun_path) + path.len() + 1) as u32;
    loop {
        // SAFETY: addr is a valid sockaddr_un of length len.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if r == 0 {
            return Some(fd);
        }
        match errno() {
            libc::EINTR => continue,
            libc::EINPROGRESS => {
                wait(&fd, libc::POLLOUT, deadline)?;
                let mut err: libc::c_int = 0;
                let mut sz = size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: err/sz are valid out-pointers for SO_ERROR.
                let r = unsafe {
                    libc::getsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut err as *mut libc::c_int).cast(),
                        &mut sz,
                    )
                };
                return (r == 0 && err == 0).then_some(fd);
            }
            // The listen backlog is full: try again shortly, within the deadline.
            libc::EAGAIN => {
                if Instant::now() + Duration::from_millis(1) >= deadline {
                    return None;
                }
                // SAFETY: poll with no descriptors is a 1 ms sleep.
                unsafe { libc::poll(std::ptr::null_mut(), 0, 1) };
            }
            _ => return None,
        }
    }
}

/// Parses `buf` if it holds a whole answer.
fn complete(buf: &[u8]) -> Option<Reply> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let (head, rest) = buf.split_at(nl);
    let rest = rest.get(1..).unwrap_or_default();
    let Ok(head) = std::str::from_utf8(head) else {
        return Some(Reply::Unavail);
    };
    match Answer::parse_head(head) {
        Ok(Head::Ok(n)) => {
            if rest.iter().filter(|&&b| b == b'\n').count() < n {
                return None;
            }
            let mut lines = Vec::with_capacity(n);
            for line in rest.split(|&b| b == b'\n').take(n) {
                match std::str::from_utf8(line) {
                    Ok(l) => lines.push(l.to_owned()),
                    Err(_) => return Some(Reply::Unavail),
                }
            }
            Some(Reply::Lines(lines))
        }
        Ok(Head::Other(Answer::NotFound)) => Some(Reply::NotFound),
        Ok(Head::Other(Answer::Error(reason))) => Some(match daemon_speaks(&reason) {
            Some(v) => Reply::OlderDaemon(v),
            None => Reply::Unavail,
        }),
        _ => Some(Reply::Unavail),
    }
}

fn exchange(path: &CStr, request: &str, deadline: Instant) -> Option<Reply> {
    let fd = connect(path, deadline)?;
    let mut msg = Vec::with_capacity(request.len() + 1);
    msg.extend_from_slice(request.as_bytes());
    msg.push(b'\n');
    let mut sent = 0;
    while let Some(left) = msg.get(sent..).filter(|l| !l.is_empty()) {
        // SAFETY: left is a valid buffer; MSG_NOSIGNAL: a closed peer gives EPIPE, not SIGPIPE.
        let r = unsafe {
            libc::send(
                fd.as_raw_fd(),
                left.as_ptr().cast(),
                left.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if r > 0 {
            sent += r as usize;
        } else if r < 0 && matches!(errno(), libc::EAGAIN | libc::EINTR) {
            wait(&fd, libc::POLLOUT, deadline)?;
        } else {
            return None;
        }
    }
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(reply) = complete(&buf) {
            return Some(reply);
        }
        if buf.len() >= MAX_ANSWER_BYTES {
            return None;
        }
        wait(&fd, libc::POLLIN, deadline)?;
        // SAFETY: chunk is a valid buffer of its length.
        let r = unsafe { libc::recv(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len(), 0) };
        if r > 0 {
            buf.extend_from_slice(chunk.get(..r as usize)?);
        } else if r == 0 {
            return None; // closed before a whole answer
        } else if !matches!(errno(), libc::EAGAIN | libc::EINTR) {
            return None;
        }
    }
}

struct Remembered {
    request: String,
    lines: Vec<String>,
    at_ms: u64,
}

thread_local! {
    static RETRY: RefCell<Option<Remembered>> = const { RefCell::new(None) };
}

/// The lines remembered for `request` by this thread, if recent.
pub fn recall(request: &str) -> Option<Vec<String>> {
    RETRY
        .try_with(|r| {
            let r = r.try_borrow().ok()?;
            let m = r.as_ref()?;
            (m.request == request && coarse_ms().saturating_sub(m.at_ms) < RETRY_MEMORY_MS)
                .then(|| m.lines.clone())
        })
        .ok()
        .flatten()
}

/// Keeps `lines` for a retry of `request` by this thread.
pub fn remember(request: &str, lines: Vec<String>) {
    let _ = RETRY.try_with(|r| {
        if let Ok(mut r) = r.try_borrow_mut() {
            *r = Some(Remembered {
                request: request.to_owned(),
                lines,
                at_ms: coarse_ms(),
            });
        }
    });
}

pub fn forget() {
    let _ = RETRY.try_with(|r| {
        if let Ok(mut r) = r.try_borrow_mut() {
            *r = None;
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_complete_only_with_all_lines() {
        assert_eq!(complete(b""), None);
        assert_eq!(complete(b"OK 2\na\n"), None);
        assert_eq!(complete(b"OK 2\na\nb"), None);
        assert_eq!(
            complete(b"OK 2\na\nb\n"),
            Some(Reply::Lines(vec!["a".into(), "b".into()]))
        );
        assert_eq!(complete(b"OK 0\n"), Some(Reply::Lines(vec![])));
        assert_eq!(complete(b"NOTFOUND\n"), Some(Reply::NotFound));
        assert_eq!(complete(b"UNAVAIL down\n"), Some(Reply::Unavail));
        assert_eq!(complete(b"DENIED no\n"), Some(Reply::Unavail));
        assert_eq!(complete(b"garbage\n"), Some(Reply::Unavail));
        assert_eq!(complete(b"ERR unknown request\n"), Some(Reply::Unavail));
        assert_eq!(
            complete(b"ERR unsupported protocol version 3: this daemon speaks 1 to 2\n"),
            Some(Reply::OlderDaemon(2))
        );
        assert_eq!(complete(b"OK 1\n\xff\n"), Some(Reply::Unavail));
    }

    #[test]
    fn no_socket_is_unavail_at_once() {
        // Given a minute, the answer comes without waiting for it (10 s: any machine).
        let t = Instant::now();
        let path = c"/nonexistent/guest-agent-test.sock";
        let r = Request::UserByName("a".into());
        assert_eq!(ask(path, &r, Duration::from_secs(60)), Reply::Unavail);
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    /// A daemon that speaks versions 1 to `newest` answers `lines` on `path`, recording every
    /// request line it reads.
    fn fake_daemon(
        path: &std::path::Path,
        newest: u32,
        connections: usize,
    ) -> std::thread::JoinHandle<Vec<String>> {
        use std::io::{BufRead, Write};
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for stream in listener.incoming().take(connections) {
                let mut stream = stream.unwrap();
                let mut line = String::new();
                std::io::BufReader::new(&stream)
                    .read_line(&mut line)
                    .unwrap();
                let line = line.trim_end().to_owned();
                let (v, _) = guest_agent_wire::proto::split_version(&line).unwrap();
                let answer = if (1..=newest).contains(&v) {
                    "OK 1\nalice:*:200001:200001::/home/alice:/bin/bash\n".to_owned()
                } else {
                    format!(
                        "ERR unsupported protocol version {v}: this daemon speaks 1 to {newest}\n"
                    )
                };
                stream.write_all(answer.as_bytes()).unwrap();
                seen.push(line);
            }
            seen
        })
    }

    #[test]
    fn an_older_daemon_is_asked_again_in_its_version_when_the_module_speaks_it() {
        let dir = std::env::temp_dir().join(format!("ga-nss-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let r = Request::UserByName("alice".into());
        // A daemon one version behind this module: the module asks again in that version when
        // it speaks it (MIN_PROTOCOL_VERSION..PROTOCOL_VERSION), else gives up (UNAVAIL: the
        // cache still answers, glibc says "not found", nothing is misread).
        let older = PROTOCOL_VERSION - 1;
        let retries = (MIN_PROTOCOL_VERSION..PROTOCOL_VERSION).contains(&older);
        let daemon = fake_daemon(&path, older, if retries { 2 } else { 1 });
        let reply = ask(&cpath, &r, Duration::from_secs(60));
        let seen = daemon.join().unwrap();
        assert_eq!(seen.first(), Some(&r.encode()));
        if retries {
            assert_eq!(
                reply,
                Reply::Lines(vec!["alice:*:200001:200001::/home/alice:/bin/bash".into()])
            );
            assert_eq!(seen, vec![r.encode(), r.encode_as(older)]);
        } else {
            assert_eq!(reply, Reply::Unavail);
            assert_eq!(seen.len(), 1);
        }
        let _ = std::fs::remove_file(&path);
        // A daemon of this version answers the first question.
        let daemon = fake_daemon(&path, PROTOCOL_VERSION, 1);
        assert!(matches!(
            ask(&cpath, &r, Duration::from_secs(60)),
            Reply::Lines(_)
        ));
        assert_eq!(daemon.join().unwrap(), vec![r.encode()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retry_memory_is_per_request() {
        remember("getpwnam a", vec!["x".into()]);
        assert_eq!(recall("getpwnam a"), Some(vec!["x".into()]));
        assert_eq!(recall("getpwnam b"), None);
        forget();
        assert_eq!(recall("getpwnam a"), None);
    }
}
