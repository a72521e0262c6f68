//! The synchronous client side of the local socket, for the helpers sshd runs (no async
//! runtime: a helper run must cost milliseconds).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use guest_agent_wire::proto::{Answer, Head, MAX_ANSWER_LINES, MAX_LINE, Request};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon is not there (no socket, nobody listening): the caller may fall back.
    #[error("daemon not running ({0})")]
    NoDaemon(std::io::Error),
    /// The daemon closed the connection before answering (overloaded, or stopping): it took
    /// no decision, so the caller may fall back as for [`ClientError::NoDaemon`].
    #[error("the daemon dropped the question ({0})")]
    Dropped(String),
    #[error("talking to the daemon failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    #[error("malformed answer from the daemon: {0}")]
    Protocol(String),
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
