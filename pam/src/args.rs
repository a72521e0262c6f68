//! The module's arguments, from its PAM line.

use std::path::PathBuf;
use std::time::Duration;

use guest_agent_wire::proto::SOCKET_PATH;

/// Longest timeout an argument may set (a typo of `3000` must not hang sshd for an hour).
const MAX_SECONDS: u64 = 600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `socket=PATH`: the daemon's socket.
    pub socket: PathBuf,
    /// `call_timeout=SECONDS`: one exchange with the daemon (connect, write, read).
    pub call_timeout: Duration,
    /// `answer_timeout=SECONDS`: how long the user may take over one prompt.
    pub answer_timeout: Duration,
    /// `debug`: a log line per exchange with the daemon.
    pub debug: bool,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            socket: PathBuf::from(SOCKET_PATH),
            call_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(30),
            debug: false,
        }
    }
}

fn seconds(s: &str) -> Option<Duration> {
    let n: u64 = s.parse().ok()?;
    (1..=MAX_SECONDS)
        .contains(&n)
        .then(|| Duration::from_secs(n))
}

/// The arguments, and a complaint for each one that was not understood (it is ignored: the
/// default stays).
pub fn parse<'a>(words: impl IntoIterator<Item = &'a str>) -> (Args, Vec<String>) {
    let mut args = Args::default();
    let mut complaints = Vec::new();
    for word in words {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let ok = match (key, value) {
            ("debug", None) => {
                args.debug = true;
                true
            }
            ("socket", Some(p)) if p.starts_with('/') => {
                args.socket = PathBuf::from(p);
                true
            }
            ("call_timeout", Some(v)) => seconds(v).map(|d| args.call_timeout = d).is_some(),
            ("answer_timeout", Some(v)) => seconds(v).map(|d| args.answer_timeout = d).is_some(),
            _ => false,
        };
        if !ok {
            complaints.push(format!(
                "ignored module argument {:?} (known: socket=/PATH call_timeout=1..{MAX_SECONDS} answer_timeout=1..{MAX_SECONDS} debug)",
                word
            ));
        }
    }
    (args, complaints)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn arguments_set_and_bad_ones_are_ignored() {
        let (a, c) = parse([]);
        assert_eq!(a, Args::default());
        assert!(c.is_empty());
        assert_eq!(a.socket, PathBuf::from("/run/guest-agent/agent.sock"));
        assert_eq!(a.call_timeout, Duration::from_secs(5));
        assert_eq!(a.answer_timeout, Duration::from_secs(30));
        let (a, c) = parse([
            "socket=/tmp/x.sock",
            "call_timeout=2",
            "answer_timeout=60",
            "debug",
        ]);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(
            a,
            Args {
                socket: PathBuf::from("/tmp/x.sock"),
                call_timeout: Duration::from_secs(2),
                answer_timeout: Duration::from_secs(60),
                debug: true,
            }
        );
        let (a, c) = parse([
            "nope",
            "socket=relative",
            "call_timeout=0",
            "answer_timeout=x",
            "call_timeout=601",
            "debug=1",
        ]);
        assert_eq!(a, Args::default());
        assert_eq!(c.len(), 6);
        assert!(c[0].contains("\"nope\""), "{c:?}");
    }
}
