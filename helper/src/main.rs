//! `guest-agent-sshd`: the program sshd_config names as AuthorizedKeysCommand and
//! AuthorizedPrincipalsCommand when OS Login is on. sshd runs it for every key and
//! certificate a client offers, a fresh process each time, so it is as small as it can be: it
//! asks the daemon on its socket and prints the answer, and that is all (issue 15: the 4 MB
//! `guest-agent` binary cost 0.3-0.4 ms more per exec than `/bin/true` here, mostly in page
//! faults on what its relocations write; this program costs about what `/bin/true` costs).
//!
//! Everything else is the `guest-agent` binary's, in the same directory, which this program
//! becomes (`execv`, same arguments): a shape of arguments it does not parse, the daemon not
//! running or dropping the question (the agent then decides alone, from its configuration),
//! a daemon of another protocol version (a package upgrade between unpack and restart), and a
//! user handed on to another AuthorizedKeysCommand (the agent runs it as its user). So the
//! answers are the agent's answers whichever program gives them, and sshd_config written by
//! an older version (naming `guest-agent` itself) keeps working. The agent gets a deadline of
//! its own (`HELPER_DEADLINE`): a daemon that drops the question at the end of this one's makes
//! the run take up to twice that, which sshd (no deadline on these commands) waits for.
//!
//! No Rust `main` and no std start-up, for the reason and with the same replacement as in
//! `agent/src/main.rs`.
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use guest_agent_wire::client::{self, ClientError};
use guest_agent_wire::names::is_valid_name;
use guest_agent_wire::proto::{Answer, OfferedCert, Request, SOCKET_PATH, daemon_speaks};
use guest_agent_wire::sshd::{
    HELPER_DEADLINE, SshdCall, clean_fingerprint, hand_on, report, say, sshd_call,
};

/// The full agent's file name, next to this program.
const AGENT: &str = "guest-agent";

/// What one run comes to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Answered (printed) here.
    Answered,
    /// The `guest-agent` binary must run instead, for this reason.
    Agent(&'static str),
}

/// The question `call` asks the daemon, and whether a user it does not serve is handed on.
fn request(call: &SshdCall) -> (Request, bool) {
    match call {
        SshdCall::Keys {
            user,
            fingerprint,
            key,
            chain,
            ..
        } => (
            Request::AuthorizedKeys {
                user: (*user).to_owned(),
                fingerprint: clean_fingerprint(*fingerprint).map(str::to_owned),
                certificate: key.and_then(|(t, k)| OfferedCert::from_tokens(t, k)),
            },
            chain.is_some(),
        ),
        SshdCall::Principals { user, cert, .. } => (
            Request::AuthorizedPrincipals {
                user: (*user).to_owned(),
                cert: (*cert).to_owned(),
            },
            false,
        ),
    }
}

/// What to do with the daemon's reply: the answer to print, or why the agent must run.
fn judge(reply: Result<Answer, ClientError>, chained: bool) -> Result<Answer, &'static str> {
    let answer = match reply {
        Ok(Answer::Error(why)) if daemon_speaks(&why).is_some() => {
            return Err("the daemon speaks another protocol version");
        }
        Ok(a) => a,
        Err(e) if e.no_decision() => return Err("the daemon took no decision"),
        Err(e) => Answer::Unavailable(e.to_string()),
    };
    if chained && hand_on(&answer) {
        return Err("handed on to another AuthorizedKeysCommand");
    }
    Ok(answer)
}

fn run(args: &[String]) -> Outcome {
    let Some(call) = sshd_call(args) else {
        return Outcome::Agent("arguments of another shape");
    };
    let user = match &call {
        SshdCall::Keys { user, .. } | SshdCall::Principals { user, .. } => *user,
    };
    if !is_valid_name(user) {
        say(user, "not a valid user name");
        return Outcome::Answered;
    }
    let (request, chained) = request(&call);
    match judge(
        client::ask(Path::new(SOCKET_PATH), &request, HELPER_DEADLINE),
        chained,
    ) {
        Ok(answer) => {
            report(user, &answer);
            Outcome::Answered
        }
        Err(why) => Outcome::Agent(why),
    }
}

/// The `guest-agent` binary next to this program (`/proc/self/exe`; else next to `argv[0]`,
/// which sshd sets to the absolute path it runs; else /usr/bin).
fn agent_path(argv0: Option<&OsString>) -> PathBuf {
    match std::env::current_exe()
        .ok()
        .or_else(|| argv0.map(PathBuf::from))
    {
        Some(me) => me.with_file_name(AGENT),
        None => Path::new("/usr/bin").join(AGENT),
    }
}

/// Becomes the agent with this run's arguments; returns only when that fails.
fn exec_agent(argv: &[OsString], why: &str) -> i32 {
    let path = agent_path(argv.first());
    let c = |s: &[u8]| CString::new(s).ok();
    let program = c(path.as_os_str().as_bytes());
    let args: Option<Vec<CString>> = std::iter::once(program.clone())
        .chain(argv.iter().skip(1).map(|a| c(a.as_bytes())))
        .collect();
    if let (Some(program), Some(args)) = (program, args) {
        let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        // SAFETY: `program` and every pointer in `ptrs` point at NUL-terminated strings that
        // live until the call returns (it returns only on failure); `ptrs` ends with NULL.
        unsafe { libc::execv(program.as_ptr(), ptrs.as_ptr()) };
    }
    eprintln!(
        "guest-agent-sshd: {why}, and {} could not be run: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    1
}

/// The process's entry point: SIGPIPE ignored and descriptors 0-2 open (what std's start-up
/// would have done that matters here), then one run.
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    guest_agent_wire::process::start_up();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let utf8: Option<Vec<String>> = argv
        .iter()
        .skip(1)
        .map(|a| a.clone().into_string().ok())
        .collect();
    let outcome = match &utf8 {
        Some(args) => run(args),
        None => Outcome::Agent("arguments that are not UTF-8"),
    };
    let code = match outcome {
        Outcome::Answered => 0,
        Outcome::Agent(why) => exec_agent(&argv, why),
    };
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_question_is_the_agents() {
        let a = args(&["authorized-keys", "alice", "SHA256:abc"]);
        let (r, chained) = request(&sshd_call(&a).unwrap());
        assert!(!chained);
        assert_eq!(
            r,
            Request::AuthorizedKeys {
                user: "alice".into(),
                fingerprint: Some("SHA256:abc".into()),
                certificate: None
            }
        );
        // sshd's empty %f is no fingerprint.
        let a = args(&["authorized-keys", "alice", ""]);
        let (r, _) = request(&sshd_call(&a).unwrap());
        assert!(matches!(
            r,
            Request::AuthorizedKeys {
                fingerprint: None,
                ..
            }
        ));
        let a = args(&[
            "authorized-keys",
            "alice",
            "FP",
            "--chain-user",
            "nobody",
            "--",
            "/x",
        ]);
        assert!(request(&sshd_call(&a).unwrap()).1);
        let a = args(&["authorized-principals", "bob", "AAAA"]);
        let (r, _) = request(&sshd_call(&a).unwrap());
        assert_eq!(
            r,
            Request::AuthorizedPrincipals {
                user: "bob".into(),
                cert: "AAAA".into()
            }
        );
    }

    #[test]
    fn only_a_decision_of_the_daemon_is_printed_here() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let keys = Answer::Ok(vec!["ssh-ed25519 AAAA".into()]);
        assert_eq!(judge(Ok(keys.clone()), false), Ok(keys.clone()));
        assert_eq!(judge(Ok(keys.clone()), true), Ok(keys));
        assert_eq!(judge(Ok(Answer::NotFound), false), Ok(Answer::NotFound));
        let denied = Answer::Denied("no login role".into());
        assert_eq!(judge(Ok(denied.clone()), true), Ok(denied));
        // Not ours, and another command is chained: the agent runs it.
        assert!(judge(Ok(Answer::NotFound), true).is_err());
        // No decision: the agent decides alone.
        assert!(judge(Err(ClientError::NoDaemon(io())), false).is_err());
        assert!(judge(Err(ClientError::Dropped("reset".into())), false).is_err());
        let other = guest_agent_wire::proto::unsupported_version(1);
        assert!(judge(Ok(Answer::Error(other)), false).is_err());
        // A daemon that answered late or garbled: fail closed, as the agent does.
        assert!(matches!(
            judge(Err(ClientError::Timeout(HELPER_DEADLINE)), false),
            Ok(Answer::Unavailable(_))
        ));
        assert!(matches!(
            judge(Err(ClientError::Protocol("bad".into())), false),
            Ok(Answer::Unavailable(_))
        ));
    }

    #[test]
    fn other_shapes_go_to_the_agent() {
        for a in [&["--help"][..], &["doctor", "alice"], &["authorized-keys"]] {
            assert_eq!(
                run(&args(a)),
                Outcome::Agent("arguments of another shape"),
                "{a:?}"
            );
        }
    }

    #[test]
    fn the_agent_is_looked_for_next_to_this_program() {
        let p = agent_path(None);
        assert_eq!(p.file_name().unwrap(), AGENT);
        assert_eq!(p.parent(), std::env::current_exe().unwrap().parent());
    }
}
