//! The synchronous client side of the local socket, for the helpers sshd runs (no async
//! runtime: a helper run must cost milliseconds). Used by the `guest-agent` binary and by the
//! small `guest-agent-sshd` helper (`helper/`), so it lives here, with no dependency.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::proto::{Answer, Head, MAX_ANSWER_LINES, MAX_LINE, Request};

#[derive(Debug)]
pub enum ClientError {
    /// The daemon is not there (no socket, nobody listening): the caller may fall back.
    NoDaemon(std::io::Error),
    /// The daemon closed the connection before answering (overloaded, or stopping): it took
    /// no decision, so the caller may fall back as for [`ClientError::NoDaemon`].
    Dropped(String),
    Io(std::io::Error),
    Timeout(Duration),
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NoDaemon(e) => write!(f, "daemon not running ({e})"),
            ClientError::Dropped(why) => write!(f, "the daemon dropped the question ({why})"),
            ClientError::Io(e) => write!(f, "talking to the daemon failed: {e}"),
            ClientError::Timeout(d) => write!(f, "the daemon did not answer within {d:?}"),
            ClientError::Protocol(why) => write!(f, "malformed answer from the daemon: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl ClientError {
    /// The daemon took no decision (not running, or dropped the question): the caller may
    /// decide without it.
    pub fn no_decision(&self) -> bool {
        matches!(self, ClientError::NoDaemon(_) | ClientError::Dropped(_))
    }
}

const CLOSED_EARLY: &str = "connection closed early";

/// A reset or broken pipe before the answer's first line: the daemon dropped the question.
fn dropped(e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
            ClientError::Dropped(e.to_string())
        }
        _ => ClientError::Io(e),
    }
}

/// Asks `request` on the socket at `path`, all within `deadline`.
pub fn ask(path: &Path, request: &Request, deadline: Duration) -> Result<Answer, ClientError> {
    let start = Instant::now();
    let stream = UnixStream::connect(path).map_err(ClientError::NoDaemon)?;
    let remaining = || {
        deadline
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1))
    };
    stream.set_write_timeout(Some(remaining()))?;
    let mut line = request.encode();
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(dropped)?;
    let mut reader = BufReader::new(&stream);
    let read_line = |reader: &mut BufReader<&UnixStream>| -> Result<String, ClientError> {
        reader.get_ref().set_read_timeout(Some(remaining()))?;
        let mut buf = String::new();
        match reader.by_ref().take(MAX_LINE as u64).read_line(&mut buf) {
            Ok(0) => Err(ClientError::Protocol(CLOSED_EARLY.into())),
            Ok(_) if !buf.ends_with('\n') => Err(ClientError::Protocol("line too long".into())),
            Ok(_) => {
                buf.pop();
                Ok(buf)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(ClientError::Timeout(deadline))
            }
            Err(e) => Err(e.into()),
        }
    };
    let head = match read_line(&mut reader) {
        Err(ClientError::Protocol(why)) if why == CLOSED_EARLY => {
            return Err(ClientError::Dropped("closed before answering".into()));
        }
        Err(ClientError::Io(e)) => return Err(dropped(e)),
        other => other?,
    };
    match Answer::parse_head(&head).map_err(|e| ClientError::Protocol(e.to_string()))? {
        Head::Other(answer) => Ok(answer),
        Head::Ok(n) => {
            let mut lines = Vec::with_capacity(n.min(MAX_ANSWER_LINES));
            for _ in 0..n {
                lines.push(read_line(&mut reader)?);
            }
            Ok(Answer::Ok(lines))
        }
    }
}
