//! OS Login two-step verification: `oslogin/authenticate/sessions/start` and
//! `oslogin/authenticate/sessions/<id>/continue` (protocol reference, section 4a).
//!
//! A session offers the user's factors the client supports, in the order they were set; the
//! first is `READY`, the others `PROPOSED`; at most one is `READY` at a time
//! (`START_ALTERNATE` moves it). `RESPOND` on the `READY` one checks the credential; the right
//! one finishes the session. Everything but the `AUTHZEN` wait is a pure function of the
//! directory, the request body and the time (`Now`), so unit tests need no clock.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Value, json};

use super::totp;
use super::{Directory, bad_request};
use crate::api::{AuthzenDecision, TwoFactor};
use crate::http::Response;
use crate::state::Emulator;

/// A session can be continued this long after its start.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(600);
/// Longest a `RESPOND` to an `AUTHZEN` challenge waits for the phone prompt to be decided.
pub const AUTHZEN_MAX_WAIT: Duration = Duration::from_secs(60);
/// Open sessions kept at most (the one expiring first is dropped beyond).
const MAX_SESSIONS: usize = 10_000;

/// The time a request is answered at: monotonic for sessions and waits, Unix seconds for TOTP.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub unix: u64,
}

impl Now {
    pub fn current() -> Self {
        Now {
            mono: Instant::now(),
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

#[derive(Debug)]
struct Challenge {
    id: u32,
    factor: TwoFactor,
    ready: bool,
}

#[derive(Debug)]
struct Session {
    email: String,
    username: String,
    expires: Instant,
    challenges: Vec<Challenge>,
    /// Authenticated: every further continue is refused.
    finished: bool,
}

/// Sessions and what outlives them, per user.
#[derive(Debug, Default)]
pub(crate) struct TwoFactorState {
    sessions: HashMap<String, Session>,
    /// Username -> TOTP steps whose code was accepted (a second use is a replay).
    totp_used: HashMap<String, BTreeSet<u64>>,
    /// Username -> a phone-prompt decision made over the control interface and not yet used
    /// by a prompt (the next, or the one waiting, takes it).
    authzen_decisions: HashMap<String, bool>,
}

impl TwoFactorState {
    /// Forgets what is remembered about `username` (its factors changed or it is gone).
    pub fn forget_user(&mut self, username: &str) {
        self.totp_used.remove(username);
        self.authzen_decisions.remove(username);
    }

    /// Records a control decision for `username`'s current or next phone prompt.
    pub fn decide_authzen(&mut self, username: &str, approve: bool) {
        self.authzen_decisions.insert(username.to_owned(), approve);
    }
}

/// What `RESPOND` on an `AUTHZEN` challenge waits for.
#[derive(Debug, Clone)]
pub(crate) struct AuthzenWait {
    session: String,
    username: String,
    /// The configured decision and when it takes effect (`None`: `pending`).
    auto: Option<(bool, Instant)>,
    /// When the wait gives up.
    give_up: Instant,
}

impl AuthzenWait {
    /// When something can next be decided without a control call.
    pub fn next_wake(&self) -> Instant {
        match self.auto {
            Some((_, at)) => at.min(self.give_up),
            None => self.give_up,
        }
    }
}

/// The outcome of the synchronous part of a continue.
#[derive(Debug)]
pub(crate) enum Step {
    Answer(Response),
    /// An `AUTHZEN` prompt to wait for ([`Directory::authzen_outcome`]).
    Wait(AuthzenWait),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    email: String,
    supported_challenge_types: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContinueBody {
    email: String,
    /// A number; a string of digits is accepted too.
    challenge_id: Value,
    action: String,
    #[serde(default)]
    proposal_response: Option<ProposalResponse>,
}

#[derive(Deserialize)]
struct ProposalResponse {
    #[serde(default)]
    credential: Option<String>,
}

fn challenge_json(c: &Challenge) -> Value {
    json!({
        "challengeId": c.id,
        "challengeType": c.factor.challenge_type(),
        "status": if c.ready { "READY" } else { "PROPOSED" },
    })
}

/// HTTP 200 `CHALLENGE_FAILED`: the credential was wrong (the challenge stays `READY`).
fn failed(reason: &str) -> Response {
    Response::json(
        200,
        &json!({ "status": "CHALLENGE_FAILED", "rejectionReason": reason }),
    )
}

/// HTTP 400 `REJECTED`: the continue itself is not acceptable (session, email, challenge,
/// action or state).
fn rejected(reason: &str) -> Response {
    Response::json(
        400,
        &json!({ "status": "REJECTED", "rejectionReason": reason }),
    )
}

fn authenticated() -> Response {
    Response::json(200, &json!({ "status": "AUTHENTICATED" }))
}

fn session_id() -> String {
    let bytes: [u8; 16] = crate::ca::random_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Directory {
    /// Answers `POST oslogin/authenticate/sessions/start`.
    pub fn start_session(&mut self, body: &[u8], now: Now) -> Response {
        let b: StartBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return bad_request(&format!("bad sessions/start body: {e}")),
        };
        let Some(user) = self.user_by_email(&b.email) else {
            return Response::json(
                404,
                &json!({ "error": { "code": 404,
                    "message": format!("no OS Login user with email {:?}", b.email) } }),
            );
        };
        let challenges: Vec<Challenge> = user
            .two_factor
            .iter()
            .filter(|f| {
                b.supported_challenge_types
                    .iter()
                    .any(|t| t == f.challenge_type())
            })
            .zip(1..)
            .map(|(f, id)| Challenge {
                id,
                factor: f.clone(),
                ready: id == 1,
            })
            .collect();
        if challenges.is_empty() {
            return Response::json(200, &json!({ "status": "NO_AVAILABLE_CHALLENGES" }));
        }
        let menu: Vec<Value> = challenges.iter().map(challenge_json).collect();
        let session = Session {
            email: b.email,
            username: user.username.clone(),
            expires: now.mono + SESSION_LIFETIME,
            challenges,
            finished: false,
        };
        let sessions = &mut self.two_factor.sessions;
        sessions.retain(|_, s| s.expires > now.mono);
        while sessions.len() >= MAX_SESSIONS {
            let Some(first) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            sessions.remove(&first);
        }
        let id = session_id();
        sessions.insert(id.clone(), session);
        Response::json(
            200,
            &json!({ "status": "CHALLENGE_REQUIRED", "sessionId": id, "challenges": menu }),
        )
    }

    /// The synchronous part of `POST oslogin/authenticate/sessions/<id>/continue`: an answer,
    /// or an `AUTHZEN` prompt to wait for.
    pub fn continue_step(&mut self, session_id: &str, body: &[u8], now: Now) -> Step {
        let b: ContinueBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                return Step::Answer(bad_request(&format!("bad sessions/continue body: {e}")));
            }
        };
        let challenge_id = match &b.challenge_id {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        let Some(challenge_id) = challenge_id else {
            return Step::Answer(bad_request(&format!(
                "bad sessions/continue body: challengeId {} is not a challenge number",
                b.challenge_id
            )));
        };
        let state = &mut self.two_factor;
        let Some(session) = state.sessions.get_mut(session_id) else {
            return Step::Answer(rejected("Unknown session."));
        };
        if now.mono >= session.expires {
            state.sessions.remove(session_id);
            return Step::Answer(rejected("The session expired."));
        }
        if session.email != b.email {
            return Step::Answer(rejected("The email does not match the session."));
        }
        if session.finished {
            return Step::Answer(rejected("The session is finished."));
        }
        let Some(index) = session
            .challenges
            .iter()
            .position(|c| u64::from(c.id) == challenge_id)
        else {
            return Step::Answer(rejected(&format!("Unknown challenge {challenge_id}.")));
        };
        match b.action.as_str() {
            "START_ALTERNATE" => {
                for (i, c) in session.challenges.iter_mut().enumerate() {
                    c.ready = i == index;
                }
                let c = &session.challenges[index];
                Step::Answer(Response::json(
                    200,
                    &json!({ "status": "CHALLENGE_PENDING", "sessionId": session_id,
                             "challenges": [challenge_json(c)] }),
                ))
            }
            "RESPOND" => {
                let c = &session.challenges[index];
                if !c.ready {
                    return Step::Answer(rejected(&format!(
                        "Challenge {challenge_id} ({}) is not ready: start it with \
                         START_ALTERNATE first.",
                        c.factor.challenge_type()
                    )));
                }
                let credential = b.proposal_response.and_then(|p| p.credential);
                let username = session.username.clone();
                let right = match &c.factor {
                    TwoFactor::Authzen { decision, after_ms } => {
                        let at = now.mono + Duration::from_millis(*after_ms);
                        return Step::Wait(AuthzenWait {
                            session: session_id.to_owned(),
                            username,
                            auto: match decision {
                                AuthzenDecision::Approve => Some((true, at)),
                                AuthzenDecision::Deny => Some((false, at)),
                                AuthzenDecision::Pending => None,
                            },
                            give_up: now.mono + AUTHZEN_MAX_WAIT,
                        });
                    }
                    TwoFactor::Totp { secret } => {
                        let Some(credential) = credential else {
                            return Step::Answer(failed("Enter the one-time password."));
                        };
                        let Ok(key) = totp::decode_base32(secret) else {
                            return Step::Answer(failed("The TOTP secret is not valid base32."));
                        };
                        let Some(step) = totp::matching_step(&key, &credential, now.unix) else {
                            return Step::Answer(failed("Wrong code. Try again."));
                        };
                        let used = state.totp_used.entry(username).or_default();
                        if !used.insert(step) {
                            return Step::Answer(failed(
                                "That code was already used. Wait for the next one.",
                            ));
                        }
                        // Steps before the window can never match again.
                        let oldest = totp::step_of(now.unix).saturating_sub(totp::WINDOW);
                        used.retain(|&s| s >= oldest);
                        true
                    }
                    TwoFactor::IdvPreregisteredPhone { code }
                    | TwoFactor::SecurityKeyOtp { code } => {
                        credential.is_some_and(|c| c.trim() == code.trim())
                    }
                };
                if right {
                    session.finished = true;
                    Step::Answer(authenticated())
                } else {
                    Step::Answer(failed("Wrong code. Try again."))
                }
            }
            other => Step::Answer(rejected(&format!(
                "Unknown action {other:?} (expected RESPOND or START_ALTERNATE)."
            ))),
        }
    }

    /// The answer to a waiting `AUTHZEN` `RESPOND` at `now`, once decided: by a control
    /// decision (taken, so it decides one prompt only), by the configured decision once due,
    /// or by giving up. `None`: keep waiting until [`AuthzenWait::next_wake`] or a decision.
    pub fn authzen_outcome(&mut self, wait: &AuthzenWait, now: Instant) -> Option<Response> {
        let state = &mut self.two_factor;
        let open = state
            .sessions
            .get(&wait.session)
            .is_some_and(|s| !s.finished);
        if !open {
            // Finished (another continue authenticated it) or expired meanwhile.
            return Some(rejected("The session is finished."));
        }
        let decided = match state.authzen_decisions.remove(&wait.username) {
            Some(d) => Some(d),
            None => wait.auto.filter(|(_, at)| now >= *at).map(|(d, _)| d),
        };
        match decided {
            Some(true) => {
                if let Some(s) = state.sessions.get_mut(&wait.session) {
                    s.finished = true;
                }
                Some(authenticated())
            }
            Some(false) => Some(failed("The login prompt was denied on the device.")),
            None if now >= wait.give_up => Some(failed(&format!(
                "The login prompt timed out: the device did not answer within {} s.",
                AUTHZEN_MAX_WAIT.as_secs()
            ))),
            None => None,
        }
    }
}

/// Answers `POST oslogin/authenticate/sessions/<id>/continue`, waiting (without the lock)
/// for an `AUTHZEN` prompt to be decided.
pub(crate) async fn continue_session(emu: &Emulator, session_id: &str, body: &[u8]) -> Response {
    // Subscribe before looking, so a decision made in between is not missed.
    let mut decisions = emu.subscribe_authzen();
    let step = emu
        .lock()
        .directory
        .continue_step(session_id, body, Now::current());
    let wait = match step {
        Step::Answer(resp) => return resp,
        Step::Wait(wait) => wait,
    };
    loop {
        if let Some(resp) = emu.lock().directory.authzen_outcome(&wait, Instant::now()) {
            return resp;
        }
        let wake = tokio::time::Instant::from_std(wait.next_wake());
        tokio::select! {
            changed = decisions.changed() => {
                if changed.is_err() {
                    tokio::time::sleep_until(wake).await;
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

#[cfg(test)]
#[path = "twofactor_tests.rs"]
mod tests;
