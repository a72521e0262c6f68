//! The module's decisions, free of PAM and of sockets: one two-step verification attempt
//! (`auth`) and one account check (`account`), driven by a [`Daemon`] that answers requests and
//! a [`User`] that answers prompts. Each returns an [`Outcome`]: what PAM is told and the one
//! line the log gets.

use std::time::Duration;

use guest_agent_wire::names::is_valid_name;
use guest_agent_wire::proto::{
    Answer, MAX_CHALLENGES, MAX_CREDENTIAL, Request, TwoFactorAction, TwoFactorLine, hex_encode,
};

/// The daemon could not be asked or did not answer in time (why, for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable(pub String);

/// The guest-agent daemon, asked on its socket.
pub trait Daemon {
    fn ask(&mut self, request: &Request) -> Result<Answer, Unreachable>;
}

/// What the user typed and how long they took to type it.
pub struct Reply {
    pub text: Secret,
    pub elapsed: Duration,
}

/// The person logging in, through the PAM conversation.
pub trait User {
    /// Shows `text` and reads a line (echoed or not); None when the conversation failed.
    fn prompt(&mut self, echo: bool, text: &str) -> Option<Reply>;
    fn info(&mut self, text: &str);
    fn error(&mut self, text: &str);
}

/// Bytes that are zeroed when dropped (what the user typed, and its hex form).
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Zeroes `bytes` in a way the optimiser keeps.
pub fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: b is a valid, aligned, exclusive reference.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// What PAM is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Not ours: the rest of the stack decides.
    Ignore,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The end of the log line (`authenticated`, `refused: REASON`, ...); never holds what the
    /// user typed.
    pub log: String,
}

fn outcome(verdict: Verdict, log: impl Into<String>) -> Outcome {
    Outcome {
        verdict,
        log: log.into(),
    }
}

/// Refuses: shows `shown` to the user and logs `refused: why`.
fn deny(user: &mut dyn User, shown: &str, why: &str) -> Outcome {
    user.error(shown);
    outcome(Verdict::Deny, format!("refused: {why}"))
}

/// Refuses with the reason the daemon (the metadata service) gave.
fn denied_by_service(user: &mut dyn User, reason: &str) -> Outcome {
    deny(
        user,
        &format!("Two-step verification failed: {reason}"),
        reason,
    )
}

const NO_AGENT: &str = "Two-step verification is unavailable: the guest agent did not answer.";
const BAD_AGENT: &str =
    "Two-step verification is unavailable: the guest agent's answer was not understood.";

/// Refuses for an answer this module cannot act on (ERR, a malformed or unexpected one).
fn bad_answer(user: &mut dyn User, step: &str, answer: &Answer) -> Outcome {
    let what = match answer {
        Answer::Error(r) => format!("the guest agent refused the {step} request: {r}"),
        Answer::Ok(_) => format!("unexpected answer to the {step} request"),
        Answer::NotFound => format!("NOTFOUND in answer to the {step} request"),
        Answer::Unavailable(r) | Answer::Denied(r) => r.clone(),
    };
    deny(user, BAD_AGENT, &what)
}

/// The kinds of challenge this module can offer, as the service names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Totp,
    Authzen,
    Phone,
    SecurityKeyOtp,
    Internal,
}

impl Method {
    pub fn from_kind(kind: &str) -> Option<Method> {
        Some(match kind {
            "TOTP" => Method::Totp,
            "AUTHZEN" => Method::Authzen,
            "IDV_PREREGISTERED_PHONE" => Method::Phone,
            "SECURITY_KEY_OTP" => Method::SecurityKeyOtp,
            "INTERNAL_TWO_FACTOR" => Method::Internal,
            _ => return None,
        })
    }

    /// Its line in the menu.
    pub fn label(self) -> &'static str {
        match self {
            Method::Totp => "Authenticator app (one-time code)",
            Method::Authzen => "Prompt on your phone",
            Method::Phone => "Security code sent to your phone",
            Method::SecurityKeyOtp => "Security key (one-time code)",
            Method::Internal => "Security code",
        }
    }
}

pub const MENU_HEAD: &str = "Please choose a two-step verification method:";
pub const MENU_TAIL: &str = "Enter its number: ";
pub const TOTP_PROMPT: &str = "Enter the one-time code from your authenticator app: ";
pub const AUTHZEN_INFO: &str = "A login prompt has been sent to your enrolled phone.";
pub const AUTHZEN_PROMPT: &str = "Approve it there, then press Enter: ";
pub const PHONE_PROMPT: &str = "A security code has been sent to your phone. Enter it: ";
pub const CODE_PROMPT: &str = "Enter your security code: ";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    id: u32,
    method: Method,
    ready: bool,
}

/// The session and the offered challenges of a `2fa-start` answer; the challenges of kinds
/// this module does not know are left out.
fn parse_start(lines: &[String]) -> Result<(String, Vec<Challenge>), String> {
    let mut parsed = lines.iter().map(|l| TwoFactorLine::parse(l));
    let session = match parsed.next() {
        Some(Ok(TwoFactorLine::Session(s))) => s,
        Some(Ok(_)) => return Err("the answer does not start with a session".into()),
        Some(Err(e)) => return Err(format!("bad answer line: {e}")),
        None => return Err("the answer names no session".into()),
    };
    let mut challenges = Vec::new();
    let mut offered = 0;
    for line in parsed {
        match line {
            Ok(TwoFactorLine::Challenge { id, kind, ready }) => {
                offered += 1;
                if offered > MAX_CHALLENGES {
                    return Err(format!("more than {MAX_CHALLENGES} challenges"));
                }
                if let Some(method) = Method::from_kind(&kind) {
                    challenges.push(Challenge { id, method, ready });
                }
            }
            Ok(_) => return Err("unexpected line after the session".into()),
            Err(e) => return Err(format!("bad answer line: {e}")),
        }
    }
    if offered == 0 {
        return Err("no challenge offered".into());
    }
    Ok((session, challenges))
}

/// Whether `lines` (an `OK` answer to `2fa-continue`) say `want`, with only challenge lines
/// besides.
fn says(lines: &[String], want: &TwoFactorLine) -> bool {
    let mut found = false;
    for line in lines {
        match TwoFactorLine::parse(line) {
            Ok(ref l) if l == want => found = true,
            Ok(TwoFactorLine::Challenge { .. }) => {}
            _ => return false,
        }
    }
    found
}

/// Reads a reply, refusing one that did not come or came after `timeout`.
fn read(user: &mut dyn User, echo: bool, text: &str, timeout: Duration) -> Result<Secret, Outcome> {
    match user.prompt(echo, text) {
        None => Err(deny(
            user,
            "Two-step verification failed: no answer was read.",
            "the conversation gave no answer",
        )),
        Some(r) if r.elapsed > timeout => {
            let secs = timeout.as_secs();
            Err(deny(
                user,
                &format!("Two-step verification failed: no answer within {secs} s."),
                &format!("no answer within {secs} s"),
            ))
        }
        Some(r) => Ok(r.text),
    }
}

/// Lets the user pick one of several challenges.
fn choose(
    user: &mut dyn User,
    challenges: &[Challenge],
    timeout: Duration,
) -> Result<Challenge, Outcome> {
    let mut menu = format!("{MENU_HEAD}\n");
    for (i, c) in challenges.iter().enumerate() {
        menu.push_str(&format!("{}: {}\n", i + 1, c.method.label()));
    }
    menu.push_str(MENU_TAIL);
    let reply = read(user, true, &menu, timeout)?;
    let chosen = std::str::from_utf8(reply.bytes())
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .and_then(|n| challenges.get(n.checked_sub(1)?));
    match chosen {
        Some(c) => Ok(c.clone()),
        None => Err(deny(
            user,
            "Two-step verification failed: no such method.",
            "no such method chosen",
        )),
    }
}

/// Zeroes the hex credential a request carried.
fn wipe_request(request: Request) {
    if let Request::TwoFactorContinue {
        credential: Some(c),
        ..
    } = request
    {
        drop(Secret(c.into_bytes()));
    }
}

/// One two-step verification attempt for `name`: the user's answer must come within
/// `answer_timeout` of each prompt.
pub fn authenticate(
    name: &str,
    answer_timeout: Duration,
    daemon: &mut dyn Daemon,
    user: &mut dyn User,
) -> Outcome {
    if name.starts_with("sa_") {
        return outcome(
            Verdict::Ignore,
            "service account, left to the rest of the stack",
        );
    }
    if !is_valid_name(name) {
        return outcome(
            Verdict::Ignore,
            "not a name OS Login gives, left to the rest of the stack",
        );
    }
    let start = Request::TwoFactorStart { user: name.into() };
    let (session, challenges) = match daemon.ask(&start) {
        Err(Unreachable(why)) => {
            return deny(
                user,
                NO_AGENT,
                &format!("the guest agent did not answer: {why}"),
            );
        }
        Ok(Answer::NotFound) => {
            return outcome(
                Verdict::Ignore,
                "not an OS Login user, left to the rest of the stack",
            );
        }
        Ok(Answer::Denied(r) | Answer::Unavailable(r)) => return denied_by_service(user, &r),
        Ok(Answer::Ok(lines)) => match parse_start(&lines) {
            Ok(s) => s,
            Err(why) => return deny(user, BAD_AGENT, &why),
        },
        Ok(other) => return bad_answer(user, "start", &other),
    };
    let chosen = match challenges.as_slice() {
        [] => {
            return deny(
                user,
                "Two-step verification failed: none of your methods can be used on this machine.",
                "no offered challenge is of a known type",
            );
        }
        [one] => one.clone(),
        several => match choose(user, several, answer_timeout) {
            Ok(c) => c,
            Err(o) => return o,
        },
    };
    let step = |action, credential| Request::TwoFactorContinue {
        user: name.into(),
        session: session.clone(),
        challenge: chosen.id,
        action,
        credential,
    };
    if !chosen.ready {
        match daemon.ask(&step(TwoFactorAction::StartAlternate, None)) {
            Ok(Answer::Ok(lines)) if says(&lines, &TwoFactorLine::Pending) => {}
            Err(Unreachable(why)) => {
                return deny(
                    user,
                    NO_AGENT,
                    &format!("the guest agent did not answer: {why}"),
                );
            }
            Ok(Answer::Denied(r) | Answer::Unavailable(r)) => return denied_by_service(user, &r),
            Ok(other) => return bad_answer(user, "start-alternate", &other),
        }
    }
    let credential = match chosen.method {
        Method::Authzen => {
            user.info(AUTHZEN_INFO);
            if let Err(o) = read(user, true, AUTHZEN_PROMPT, answer_timeout) {
                return o;
            }
            None
        }
        m => {
            let text = match m {
                Method::Totp => TOTP_PROMPT,
                Method::Phone => PHONE_PROMPT,
                _ => CODE_PROMPT,
            };
            let typed = match read(user, false, text, answer_timeout) {
                Ok(t) => t,
                Err(o) => return o,
            };
            if typed.bytes().is_empty() {
                return deny(
                    user,
                    "Two-step verification failed: no code was entered.",
                    "no code entered",
                );
            }
            if typed.bytes().len() > MAX_CREDENTIAL {
                return deny(
                    user,
                    "Two-step verification failed: that code is too long.",
                    &format!("the code typed is longer than {MAX_CREDENTIAL} bytes"),
                );
            }
            Some(hex_encode(typed.bytes()))
        }
    };
    let respond = step(TwoFactorAction::Respond, credential);
    let answer = daemon.ask(&respond);
    wipe_request(respond);
    match answer {
        Ok(Answer::Ok(lines)) if says(&lines, &TwoFactorLine::Authenticated) => {
            outcome(Verdict::Success, "authenticated")
        }
        Err(Unreachable(why)) => deny(
            user,
            NO_AGENT,
            &format!("the guest agent did not answer: {why}"),
        ),
        Ok(Answer::Denied(r) | Answer::Unavailable(r)) => denied_by_service(user, &r),
        Ok(other) => bad_answer(user, "respond", &other),
    }
}

/// The account check of `name`.
///
/// An unreachable daemon is [`Verdict::Ignore`]: this connection's live decision was made by
/// the AuthorizedKeysCommand (which asked the daemon, and fails closed on its own), so a
/// daemon that stopped since then does not lock the user out of a login the key check allowed.
/// An answer that is there but refuses or makes no sense is a denial.
pub fn account(name: &str, daemon: &mut dyn Daemon, user: &mut dyn User) -> Outcome {
    if !is_valid_name(name) {
        return outcome(
            Verdict::Ignore,
            "not a name OS Login gives, left to the rest of the stack",
        );
    }
    match daemon.ask(&Request::PamAccount { user: name.into() }) {
        Ok(Answer::Ok(_)) => outcome(Verdict::Success, "login allowed"),
        Ok(Answer::NotFound) => outcome(
            Verdict::Ignore,
            "not an OS Login user, left to the rest of the stack",
        ),
        Ok(Answer::Denied(r) | Answer::Unavailable(r)) => {
            user.error(&format!("Login refused: {r}"));
            outcome(Verdict::Deny, format!("refused: {r}"))
        }
        Ok(Answer::Error(r)) => {
            user.error("Login refused: the guest agent could not check this account.");
            outcome(
                Verdict::Deny,
                format!("refused: the guest agent refused the request: {r}"),
            )
        }
        Err(Unreachable(why)) => outcome(
            Verdict::Ignore,
            format!("the guest agent did not answer ({why}); left to the key check already made"),
        ),
    }
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
