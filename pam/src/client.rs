//! Asking the daemon on its socket: one connection per request, connect + write + read all
//! within one deadline (std's blocking `UnixStream` with socket timeouts set from what is left
//! of it). sshd is an ordinary process, so std is fine here; there is no retry.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent_wire::proto::{Answer, Head, MAX_LINE, Request};

use crate::flow::{Daemon, Secret, Unreachable};

/// Largest answer read: a session line and at most MAX_CHALLENGES challenge lines are far
/// below this; more is a broken daemon.
const MAX_ANSWER_BYTES: usize = MAX_LINE;

pub struct SocketDaemon {
    pub path: PathBuf,
    /// One exchange's deadline.
    pub timeout: Duration,
}

impl Daemon for SocketDaemon {
    fn ask(&mut self, request: &Request) -> Result<Answer, Unreachable> {
        let mut line = request.encode();
        line.push('\n');
        // The line may carry the credential (hex): zeroed when dropped.
        let line = Secret::new(line.into_bytes());
        exchange(&self.path, line.bytes(), Instant::now() + self.timeout)
    }
}

fn os_error(what: &str) -> Unreachable {
    Unreachable(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// What is left until `deadline`, or the timeout error.
fn left(deadline: Instant) -> Result<Duration, Unreachable> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Unreachable("no answer within the call timeout".into()))
}

/// Connects within the deadline. `UnixStream::connect` has no timeout, and connect(2) on a
/// socket whose listen backlog is full waits; Linux bounds that wait by the socket's send
/// timeout, so the socket is made first, given the timeout, and then connected.
fn connect(path: &Path, deadline: Instant) -> Result<UnixStream, Unreachable> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_error("socket"));
    }
    // SAFETY: fd was just created and is owned from here on.
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    stream
        .set_write_timeout(Some(left(deadline)?))
        .map_err(|e| Unreachable(format!("setsockopt: {e}")))?;
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(Unreachable(format!(
            "socket path too long: {}",
            path.display()
        )));
    }
    addr.sun_path
        .iter_mut()
        .zip(bytes)
        .for_each(|(d, s)| *d = *s as libc::c_char);
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un (NUL-terminated path) of size len.
    let r = unsafe { libc::connect(stream.as_raw_fd(), (&raw const addr).cast(), len) };
    if r != 0 {
        return Err(os_error(&format!("cannot connect to {}", path.display())));
    }
    Ok(stream)
}

fn exchange(path: &Path, msg: &[u8], deadline: Instant) -> Result<Answer, Unreachable> {
    let stream = connect(path, deadline)?;
    let mut sent = 0;
    while let Some(rest) = msg.get(sent..).filter(|r| !r.is_empty()) {
        stream
            .set_write_timeout(Some(left(deadline)?))
            .map_err(|e| Unreachable(format!("setsockopt: {e}")))?;
        // SAFETY: rest is a valid buffer. send, not write: MSG_NOSIGNAL makes a closed peer
        // EPIPE rather than a SIGPIPE in a host that did not ignore it.
        let r = unsafe {
            libc::send(
                stream.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if r > 0 {
            sent += r as usize;
        } else if std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
            return Err(os_error("cannot send the request"));
        }
    }
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(answer) = complete(&buf) {
            return Ok(answer);
        }
        if buf.len() > MAX_ANSWER_BYTES {
            return Ok(Answer::Error("answer too long".into()));
        }
        stream
            .set_read_timeout(Some(left(deadline)?))
            .map_err(|e| Unreachable(format!("setsockopt: {e}")))?;
        match (&stream).read(&mut chunk) {
            Ok(0) => return Err(Unreachable("the daemon closed the connection".into())),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Unreachable("no answer within the call timeout".into()));
            }
            Err(e) => return Err(Unreachable(format!("cannot read the answer: {e}"))),
        }
    }
}

/// The answer in `buf` once it is whole; a malformed one is an `Answer::Error` (refused like
/// an ERR).
fn complete(buf: &[u8]) -> Option<Answer> {
    let malformed = |why: &str| Some(Answer::Error(format!("malformed answer: {why}")));
    let Ok(text) = std::str::from_utf8(buf) else {
        return malformed("not UTF-8");
    };
    let (head, body) = text.split_once('\n')?;
    match Answer::parse_head(head) {
        Err(e) => malformed(&e.to_string()),
        Ok(Head::Other(answer)) => Some(answer),
        Ok(Head::Ok(n)) => {
            let lines: Vec<String> = body
                .split_inclusive('\n')
                .take(n)
                .map(String::from)
                .collect();
            if lines.len() < n || lines.last().is_some_and(|l| !l.ends_with('\n')) {
                return None;
            }
            Some(Answer::Ok(
                lines
                    .into_iter()
                    .map(|mut l| {
                        l.pop();
                        l
                    })
                    .collect(),
            ))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};

    #[test]
    fn answers_are_whole_only_with_all_lines() {
        assert_eq!(complete(b""), None);
        assert_eq!(complete(b"OK 2\nsession s\n"), None);
        assert_eq!(complete(b"OK 2\nsession s\nchallenge 1 TOTP REA"), None);
        assert_eq!(
            complete(b"OK 2\nsession s\nchallenge 1 TOTP READY\n"),
            Some(Answer::Ok(vec![
                "session s".into(),
                "challenge 1 TOTP READY".into()
            ]))
        );
        assert_eq!(complete(b"OK 0\n"), Some(Answer::Ok(vec![])));
        assert_eq!(complete(b"NOTFOUND\n"), Some(Answer::NotFound));
        assert_eq!(
            complete(b"DENIED wrong code\n"),
            Some(Answer::Denied("wrong code".into()))
        );
        assert!(matches!(complete(b"WHAT\n"), Some(Answer::Error(_))));
        assert!(matches!(complete(b"OK 1\n\xff\n"), Some(Answer::Error(_))));
    }

    #[test]
    fn no_socket_is_unreachable_at_once() {
        let t = Instant::now();
        let mut d = SocketDaemon {
            path: "/nonexistent/guest-agent-pam-test.sock".into(),
            timeout: Duration::from_secs(60),
        };
        let r = d.ask(&Request::PamAccount {
            user: "alice".into(),
        });
        assert!(
            matches!(r, Err(Unreachable(ref w)) if w.contains("cannot connect")),
            "{r:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    fn temp_socket(tag: &str) -> (PathBuf, std::os::unix::net::UnixListener) {
        let dir = std::env::temp_dir().join(format!("ga-pam-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        (path, listener)
    }

    #[test]
    fn a_request_is_sent_and_its_answer_read() {
        let (path, listener) = temp_socket("answer");
        let daemon = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&s).read_line(&mut line).unwrap();
            s.write_all(b"OK 1\nauthenticated\n").unwrap();
            line
        });
        let mut d = SocketDaemon {
            path: path.clone(),
            timeout: Duration::from_secs(60),
        };
        let r = Request::TwoFactorStart {
            user: "alice".into(),
        };
        assert_eq!(d.ask(&r), Ok(Answer::Ok(vec!["authenticated".into()])));
        assert_eq!(daemon.join().unwrap(), format!("{}\n", r.encode()));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_silent_daemon_is_unreachable_after_the_call_timeout() {
        let (path, listener) = temp_socket("silent");
        let mut d = SocketDaemon {
            path: path.clone(),
            timeout: Duration::from_millis(300),
        };
        let t = Instant::now();
        // Accepted by the kernel (the backlog), never answered.
        let r = d.ask(&Request::PamAccount {
            user: "alice".into(),
        });
        assert!(
            matches!(r, Err(Unreachable(ref w)) if w.contains("within")),
            "{r:?}"
        );
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(10));
        drop(listener);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
