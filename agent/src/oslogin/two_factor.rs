//! OS Login two-step verification (`enable-oslogin-2fa`) in the daemon: the PAM module asks
//! over the socket ([`Request::TwoFactorStart`], [`Request::TwoFactorContinue`],
//! [`Request::PamAccount`]); the daemon makes the metadata calls
//! (`POST oslogin/authenticate/sessions/start` and `.../sessions/S/continue`), each within
//! `oslogin.two_factor_timeout_ms`, and turns the answers into the module's lines. The parsing
//! of the service's answers is pure ([`start_lines`], [`continue_lines`]) and fails closed:
//! whatever is not a well-formed challenge list or `AUTHENTICATED` is a refusal with a reason
//! the module shows to the user.
//!
//! Not ours (the module leaves the login to the rest of the PAM stack): OS Login off, 2FA off,
//! a name that is not an OS Login user of this VM, and `sa_` service accounts (they log in
//! with the key alone, as with Google's agent).
//!
//! [`Request::TwoFactorStart`]: guest_agent_wire::proto::Request::TwoFactorStart
//! [`Request::TwoFactorContinue`]: guest_agent_wire::proto::Request::TwoFactorContinue
//! [`Request::PamAccount`]: guest_agent_wire::proto::Request::PamAccount

use std::time::Duration;

use guest_agent_wire::proto::{
    Answer, MAX_CHALLENGES, TwoFactorAction, TwoFactorLine, hex_decode, is_session_id,
};
use serde_json::{Value, json};

use super::service::OsLogin;
use crate::events;

/// The challenge types this agent can run (the module has a prompt for each), as Google's
/// agent announces them.
pub const SUPPORTED_CHALLENGES: &[&str] = &[
    "INTERNAL_TWO_FACTOR",
    "SECURITY_KEY_OTP",
    "AUTHZEN",
    "TOTP",
    "IDV_PREREGISTERED_PHONE",
];

/// Whether `name` is a service account's (`sa_...`): no second factor is asked of it.
pub fn is_service_account(name: &str) -> bool {
    name.starts_with("sa_")
}

/// The reason a refusal carries: the service's `rejectionReason` when it gave one.
fn rejection(v: &Value, otherwise: &str) -> String {
    v.get("rejectionReason")
        .and_then(Value::as_str)
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .map(|r| r.chars().take(200).collect())
        .unwrap_or_else(|| otherwise.to_owned())
}

/// The `challenge` lines of a `challenges` array; a malformed list is refused whole (a
/// missing id, an id or type of the wrong shape, an unknown status, too many).
fn challenges(v: &Value) -> Result<Vec<TwoFactorLine>, String> {
    let malformed =
        |what: &str| format!("the metadata service sent a malformed challenge list ({what})");
    let list = v
        .get("challenges")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no challenges"))?;
    if list.len() > MAX_CHALLENGES {
        return Err(malformed("too many challenges"));
    }
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let id = c
            .get("challengeId")
            .and_then(|i| {
                i.as_u64()
                    .or_else(|| i.as_str().and_then(|s| s.parse().ok()))
            })
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| malformed("challengeId"))?;
        let kind = c
            .get("challengeType")
            .and_then(Value::as_str)
            .filter(|t| {
                !t.is_empty()
                    && t.len() <= 64
                    && t.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            })
            .ok_or_else(|| malformed("challengeType"))?;
        let ready = match c.get("status").and_then(Value::as_str) {
            Some("READY") => true,
            Some("PROPOSED") => false,
            _ => return Err(malformed("status")),
        };
        out.push(TwoFactorLine::Challenge {
            id,
            kind: kind.to_owned(),
            ready,
        });
    }
    Ok(out)
}

/// The module's lines for the service's answer to `sessions/start` (`status` is the HTTP
/// status; a 4xx answer is a refusal with its reason).
pub fn start_lines(status: u16, v: &Value) -> Result<Vec<TwoFactorLine>, String> {
    if status != 200 {
        return Err(rejection(
            v,
            &format!("the metadata service refused (HTTP {status})"),
        ));
    }
    match v.get("status").and_then(Value::as_str) {
        Some("CHALLENGE_REQUIRED") => {}
        Some("NO_AVAILABLE_CHALLENGES") => {
            return Err(rejection(
                v,
                "no second factor is enrolled for this account (NO_AVAILABLE_CHALLENGES)",
            ));
        }
        Some(other) => {
            return Err(rejection(
                v,
                &format!("the metadata service answered {other}"),
            ));
        }
        None => return Err("the metadata service sent no status".into()),
    }
    let session = v
        .get("sessionId")
        .and_then(Value::as_str)
        .filter(|s| is_session_id(s))
        .ok_or("the metadata service sent no usable session id")?;
    let list = challenges(v)?;
    if list.is_empty() {
        return Err("the metadata service offered no challenge".into());
    }
    let mut out = vec![TwoFactorLine::Session(session.to_owned())];
    out.extend(list);
    Ok(out)
}

/// The module's lines for the service's answer to `sessions/S/continue`.
pub fn continue_lines(
    status: u16,
    v: &Value,
    action: TwoFactorAction,
) -> Result<Vec<TwoFactorLine>, String> {
    let said = v.get("status").and_then(Value::as_str);
    if status == 200 && said == Some("AUTHENTICATED") {
        return Ok(vec![TwoFactorLine::Authenticated]);
    }
    if status == 200
        && action == TwoFactorAction::StartAlternate
        && said != Some("CHALLENGE_FAILED")
    {
        // The proposed challenge is started; the service lists it (now READY) when it says so.
        let mut out = vec![TwoFactorLine::Pending];
        if v.get("challenges").is_some() {
            out.extend(challenges(v)?);
        }
        return Ok(out);
    }
    Err(rejection(
        v,
        &match said {
            Some(s) => format!("the metadata service answered {s}"),
            None => format!("the metadata service refused (HTTP {status})"),
        },
    ))
}

impl OsLogin {
    /// Two-step verification is asked (`enable-oslogin-2fa` with OS Login on).
    pub fn two_factor(&self) -> bool {
        self.two_factor.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Set by the reconciler on every pass; logged when it changes.
    pub fn set_two_factor(&self, on: bool) {
        if self
            .two_factor
            .swap(on, std::sync::atomic::Ordering::SeqCst)
            != on
        {
            tracing::info!(
                two_factor = on,
                "OS Login two-step verification {}",
                if on { "on" } else { "off" }
            );
        }
    }

    /// Why two-step verification is asked for and cannot be enforced, if so.
    pub fn two_factor_blocked(&self) -> Option<String> {
        super::service::lock(&self.two_factor_blocked).clone()
    }

    /// Set by the reconciler: `Some(why)` refuses OS Login logins (other than `sa_`
    /// accounts) until two-step verification can be enforced.
    pub fn set_two_factor_blocked(&self, why: Option<String>) {
        let mut b = super::service::lock(&self.two_factor_blocked);
        if *b != why {
            match &why {
                Some(w) => {
                    tracing::error!(reason = %w, "two-step verification is required but cannot be enforced: OS Login logins are refused until it can")
                }
                None if b.is_some() => {
                    tracing::info!("two-step verification can be enforced again")
                }
                None => {}
            }
            *b = why;
        }
    }

    /// The OS Login user `name` that a second factor is asked of, or `NotFound` (not ours).
    async fn two_factor_user(&self, name: &str) -> Result<String, Answer> {
        if !self.is_enabled() || !self.two_factor() || is_service_account(name) {
            return Err(Answer::NotFound);
        }
        match self.user(name).await {
            Ok(user) => Ok(user.email.clone()),
            Err(Answer::NotFound) => Err(Answer::NotFound),
            // Denied (not admissible here) or unavailable: refused, never skipped.
            Err(Answer::Denied(why)) => Err(Answer::Denied(why)),
            Err(other) => Err(Answer::Unavailable(format!(
                "cannot tell whether {name} is an OS Login user: {other:?}"
            ))),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let timeout = Duration::from_millis(self.config().oslogin.two_factor_timeout_ms);
        let client = self.client()?.with_timeout(timeout);
        client.post_json(path, body).await.map_err(|e| {
            format!("the metadata service did not answer the two-step verification call: {e}")
        })
    }

    /// `2fa-start USER`.
    pub async fn two_factor_start(&self, name: &str) -> Answer {
        let email = match self.two_factor_user(name).await {
            Ok(e) => e,
            Err(a) => return a,
        };
        let body = json!({ "email": email, "supportedChallengeTypes": SUPPORTED_CHALLENGES });
        let result = match self
            .post("oslogin/authenticate/sessions/start", &body)
            .await
        {
            Ok((status, v)) => start_lines(status, &v),
            Err(e) => Err(e),
        };
        match result {
            Ok(lines) => {
                let offered: Vec<String> = lines
                    .iter()
                    .filter_map(|l| match l {
                        TwoFactorLine::Challenge { kind, .. } => Some(kind.clone()),
                        _ => None,
                    })
                    .collect();
                tracing::info!(user = name, email = %email, challenges = ?offered, "two-step verification started");
                Answer::Ok(lines.iter().map(TwoFactorLine::encode).collect())
            }
            Err(why) => {
                tracing::warn!(user = name, email = %email, reason = %why, "two-step verification refused");
                events::login(name, false, &format!("two-step verification: {why}"), None);
                Answer::Denied(why)
            }
        }
    }

    /// `2fa-continue USER SESSION CHALLENGE ACTION CREDENTIAL`.
    pub async fn two_factor_continue(
        &self,
        name: &str,
        session: &str,
        challenge: u32,
        action: TwoFactorAction,
        credential: Option<&str>,
    ) -> Answer {
        let email = match self.two_factor_user(name).await {
            Ok(e) => e,
            Err(a) => return a,
        };
        let mut body = json!({
            "email": email,
            "challengeId": challenge,
            "action": match action {
                TwoFactorAction::Respond => "RESPOND",
                TwoFactorAction::StartAlternate => "START_ALTERNATE",
            },
        });
        if action == TwoFactorAction::Respond {
            let typed = credential
                .and_then(hex_decode)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            body["proposalResponse"] = json!({ "credential": typed });
        }
        let path = format!("oslogin/authenticate/sessions/{session}/continue");
        let result = match self.post(&path, &body).await {
            Ok((status, v)) => continue_lines(status, &v, action),
            Err(e) => Err(e),
        };
        match result {
            Ok(lines) => {
                if lines.contains(&TwoFactorLine::Authenticated) {
                    tracing::info!(user = name, email = %email, "two-step verification passed");
                }
                Answer::Ok(lines.iter().map(TwoFactorLine::encode).collect())
            }
            Err(why) => {
                tracing::warn!(user = name, email = %email, reason = %why, "two-step verification refused");
                events::login(name, false, &format!("two-step verification: {why}"), None);
                Answer::Denied(why)
            }
        }
    }

    /// `pam-account USER`: the login role now, reusing the decision the key check of the same
    /// SSH connection made (`connections`: the ids the asking process may carry), so the
    /// account hook costs no request of its own.
    pub async fn pam_account(&self, name: &str, connections: &[&str]) -> Answer {
        if !self.is_enabled() {
            return Answer::NotFound;
        }
        match self.decide_account(name, connections).await {
            Ok(()) => Answer::Ok(Vec::new()),
            Err(a) => a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(id: u32, kind: &str, ready: bool) -> TwoFactorLine {
        TwoFactorLine::Challenge {
            id,
            kind: kind.into(),
            ready,
        }
    }

    #[test]
    fn a_challenge_list_becomes_the_session_and_its_challenges() {
        let v = json!({"status":"CHALLENGE_REQUIRED","sessionId":"S1","challenges":[
            {"challengeId":1,"challengeType":"TOTP","status":"READY"},
            {"challengeId":"2","challengeType":"AUTHZEN","status":"PROPOSED"}]});
        assert_eq!(
            start_lines(200, &v),
            Ok(vec![
                TwoFactorLine::Session("S1".into()),
                ch(1, "TOTP", true),
                ch(2, "AUTHZEN", false)
            ])
        );
    }

    #[test]
    fn no_factor_and_malformed_lists_are_refusals_with_a_reason() {
        let none = start_lines(200, &json!({"status":"NO_AVAILABLE_CHALLENGES"})).unwrap_err();
        assert!(none.contains("NO_AVAILABLE_CHALLENGES"), "{none}");
        for bad in [
            json!({"status":"CHALLENGE_REQUIRED","challenges":[]}),
            json!({"status":"CHALLENGE_REQUIRED","sessionId":"S","challenges":[]}),
            json!({"status":"CHALLENGE_REQUIRED","sessionId":"S","challenges":"x"}),
            json!({"status":"CHALLENGE_REQUIRED","sessionId":"S","challenges":[{"challengeType":"TOTP","status":"READY"}]}),
            json!({"status":"CHALLENGE_REQUIRED","sessionId":"S","challenges":[{"challengeId":1,"challengeType":"to tp","status":"READY"}]}),
            json!({"status":"CHALLENGE_REQUIRED","sessionId":"S","challenges":[{"challengeId":1,"challengeType":"TOTP","status":"DONE"}]}),
            json!({"status":"CHALLENGE_REQUIRED","sessionId":"a b","challenges":[{"challengeId":1,"challengeType":"TOTP","status":"READY"}]}),
            json!({"sessionId":"S"}),
            json!([]),
        ] {
            let why = start_lines(200, &bad).unwrap_err();
            assert!(!why.is_empty(), "{bad}");
        }
        let many: Vec<Value> = (0..=MAX_CHALLENGES)
            .map(|i| json!({"challengeId":i,"challengeType":"TOTP","status":"READY"}))
            .collect();
        let v = json!({"status":"CHALLENGE_REQUIRED","sessionId":"S","challenges":many});
        assert!(start_lines(200, &v).unwrap_err().contains("too many"));
        let refused = start_lines(403, &json!({"rejectionReason":"Account suspended"}));
        assert_eq!(refused, Err("Account suspended".into()));
    }

    #[test]
    fn only_authenticated_passes_and_the_rejection_reason_is_kept() {
        let ok = json!({"status":"AUTHENTICATED"});
        assert_eq!(
            continue_lines(200, &ok, TwoFactorAction::Respond),
            Ok(vec![TwoFactorLine::Authenticated])
        );
        let wrong = json!({"status":"CHALLENGE_FAILED","rejectionReason":"Wrong code. Try again."});
        assert_eq!(
            continue_lines(200, &wrong, TwoFactorAction::Respond),
            Err("Wrong code. Try again.".into())
        );
        assert_eq!(
            continue_lines(400, &wrong, TwoFactorAction::Respond),
            Err("Wrong code. Try again.".into())
        );
        // A RESPOND answered with anything but AUTHENTICATED is a refusal, reason or not.
        for v in [
            json!({"status":"CHALLENGE_PENDING"}),
            json!({}),
            json!({"status":"authenticated"}),
        ] {
            assert!(
                continue_lines(200, &v, TwoFactorAction::Respond).is_err(),
                "{v}"
            );
        }
        // AUTHENTICATED with an error status is not trusted.
        assert!(continue_lines(500, &ok, TwoFactorAction::Respond).is_err());
    }

    #[test]
    fn a_started_alternate_is_pending_with_its_challenge() {
        let v = json!({"status":"CHALLENGE_PENDING","sessionId":"S","challenges":[
            {"challengeId":2,"challengeType":"AUTHZEN","status":"READY"}]});
        assert_eq!(
            continue_lines(200, &v, TwoFactorAction::StartAlternate),
            Ok(vec![TwoFactorLine::Pending, ch(2, "AUTHZEN", true)])
        );
        let failed = json!({"status":"CHALLENGE_FAILED","rejectionReason":"No phone"});
        assert_eq!(
            continue_lines(200, &failed, TwoFactorAction::StartAlternate),
            Err("No phone".into())
        );
    }

    #[test]
    fn service_accounts_are_named_sa() {
        assert!(is_service_account("sa_123"));
        assert!(!is_service_account("alice"));
        assert!(!is_service_account("xsa_1"));
    }
}
