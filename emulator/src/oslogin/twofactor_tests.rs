//! Unit tests of factor JSON and two-step verification sessions.

use super::*;
use crate::api::{AuthzenDecision, UserSpec};
use crate::oslogin::totp::totp_code;

/// `12345678901234567890` (ASCII), the RFC 6238 SHA1 secret, in base32.
const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
const EMAIL: &str = "alice@example.com";
const ALL_TYPES: [&str; 5] = [
    "INTERNAL_TWO_FACTOR",
    "SECURITY_KEY_OTP",
    "AUTHZEN",
    "TOTP",
    "IDV_PREREGISTERED_PHONE",
];

fn totp() -> TwoFactor {
    TwoFactor::Totp {
        secret: RFC_SECRET.into(),
    }
}

fn authzen(decision: AuthzenDecision, after_ms: u64) -> TwoFactor {
    TwoFactor::Authzen { decision, after_ms }
}

fn phone(code: &str) -> TwoFactor {
    TwoFactor::IdvPreregisteredPhone { code: code.into() }
}

fn directory(factors: Vec<TwoFactor>) -> Directory {
    let mut d = Directory::default();
    d.upsert_user(UserSpec {
        email: EMAIL.into(),
        username: "alice".into(),
        uid: 1001,
        gid: None,
        home: None,
        shell: None,
        keys: vec![],
        login: true,
        admin: false,
        security_keys: Vec::new(),
        two_factor: factors,
    });
    d
}

fn at(unix: u64) -> Now {
    Now {
        mono: Instant::now(),
        unix,
    }
}

fn body(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

fn start(d: &mut Directory, types: &[&str], now: Now) -> (u16, Value) {
    let r = d.start_session(
        json!({ "email": EMAIL, "supportedChallengeTypes": types })
            .to_string()
            .as_bytes(),
        now,
    );
    (r.status, body(&r))
}

/// Starts a session offering every type; returns its id.
fn session(d: &mut Directory, now: Now) -> String {
    let (s, v) = start(d, &ALL_TYPES, now);
    assert_eq!(s, 200, "{v}");
    v["sessionId"].as_str().expect("sessionId").to_owned()
}

fn cont(d: &mut Directory, id: &str, v: &Value, now: Now) -> Step {
    d.continue_step(id, v.to_string().as_bytes(), now)
}

/// A continue that must answer at once.
fn answer(d: &mut Directory, id: &str, v: &Value, now: Now) -> (u16, Value) {
    match cont(d, id, v, now) {
        Step::Answer(r) => (r.status, body(&r)),
        Step::Wait(w) => panic!("waits for a phone prompt: {w:?}"),
    }
}

fn respond(challenge: u32, credential: &str) -> Value {
    json!({ "email": EMAIL, "challengeId": challenge, "action": "RESPOND",
            "proposalResponse": { "credential": credential } })
}

fn alternate(challenge: u32) -> Value {
    json!({ "email": EMAIL, "challengeId": challenge, "action": "START_ALTERNATE" })
}

fn code_at(unix: u64) -> String {
    totp_code(RFC_SECRET, unix).expect("code")
}

#[test]
fn sessions_accept_one_step_either_side() {
    let t = 1_111_111_111;
    let mut d = directory(vec![totp()]);
    for (offset, ok) in [(-60i64, false), (60, false), (-30, true), (30, true)] {
        let now = at(t);
        let id = session(&mut d, now);
        let code = code_at(t.saturating_add_signed(offset));
        let (s, v) = answer(&mut d, &id, &respond(1, &code), now);
        assert_eq!(s, 200);
        let want = if ok {
            "AUTHENTICATED"
        } else {
            "CHALLENGE_FAILED"
        };
        assert_eq!(v["status"], want, "offset {offset}: {v}");
        if !ok {
            assert_eq!(v["rejectionReason"], "Wrong code. Try again.");
        }
    }
}

#[test]
fn a_code_is_accepted_once() {
    let mut d = directory(vec![totp()]);
    let t = 1_234_567_890;
    let id = session(&mut d, at(t));
    assert_eq!(
        answer(&mut d, &id, &respond(1, &code_at(t)), at(t)).1,
        json!({ "status": "AUTHENTICATED" })
    );
    // The session is finished.
    let (s, v) = answer(&mut d, &id, &respond(1, &code_at(t)), at(t));
    assert_eq!((s, &v["status"]), (400, &json!("REJECTED")), "{v}");
    assert_eq!(v["rejectionReason"], "The session is finished.");
    // A new session, the same code (still in the window ten seconds later): a replay.
    let id = session(&mut d, at(t + 10));
    let (s, v) = answer(&mut d, &id, &respond(1, &code_at(t)), at(t + 10));
    assert_eq!(s, 200);
    assert_eq!(v["status"], "CHALLENGE_FAILED");
    assert_eq!(
        v["rejectionReason"],
        "That code was already used. Wait for the next one."
    );
    // The challenge stays READY: the next step's code works.
    let (_, v) = answer(&mut d, &id, &respond(1, &code_at(t + 30)), at(t + 10));
    assert_eq!(v["status"], "AUTHENTICATED");
    // New factors forget the used steps.
    assert!(d.set_two_factor("alice", vec![totp()]));
    let id = session(&mut d, at(t));
    assert_eq!(
        answer(&mut d, &id, &respond(1, &code_at(t)), at(t)).1["status"],
        "AUTHENTICATED"
    );
}

#[test]
fn menu_keeps_order_and_filters_by_supported_types() {
    let mut d = directory(vec![
        totp(),
        authzen(AuthzenDecision::Approve, 0),
        phone("123456"),
        TwoFactor::SecurityKeyOtp {
            code: "sk-otp".into(),
        },
    ]);
    let now = at(1_000_000);
    let (s, v) = start(&mut d, &ALL_TYPES, now);
    assert_eq!(s, 200);
    assert_eq!(v["status"], "CHALLENGE_REQUIRED");
    assert!(v["sessionId"].as_str().is_some_and(|s| s.len() == 32));
    assert_eq!(
        v["challenges"],
        json!([
            {"challengeId":1,"challengeType":"TOTP","status":"READY"},
            {"challengeId":2,"challengeType":"AUTHZEN","status":"PROPOSED"},
            {"challengeId":3,"challengeType":"IDV_PREREGISTERED_PHONE","status":"PROPOSED"},
            {"challengeId":4,"challengeType":"SECURITY_KEY_OTP","status":"PROPOSED"},
        ])
    );
    let (_, v) = start(
        &mut d,
        &["SECURITY_KEY_OTP", "IDV_PREREGISTERED_PHONE"],
        now,
    );
    assert_eq!(
        v["challenges"],
        json!([
            {"challengeId":1,"challengeType":"IDV_PREREGISTERED_PHONE","status":"READY"},
            {"challengeId":2,"challengeType":"SECURITY_KEY_OTP","status":"PROPOSED"},
        ])
    );
    let (_, v2) = start(&mut d, &ALL_TYPES, now);
    assert_ne!(v2["sessionId"], v["sessionId"]);
}

#[test]
fn no_available_challenges() {
    let mut d = directory(vec![]);
    let now = at(0);
    assert_eq!(
        start(&mut d, &ALL_TYPES, now),
        (200, json!({ "status": "NO_AVAILABLE_CHALLENGES" }))
    );
    assert!(d.set_two_factor("alice", vec![totp()]));
    assert_eq!(
        start(&mut d, &["AUTHZEN"], now),
        (200, json!({ "status": "NO_AVAILABLE_CHALLENGES" }))
    );
    assert!(!d.set_two_factor("nobody", vec![]));
}

#[test]
fn start_alternate_moves_the_ready_challenge() {
    let mut d = directory(vec![totp(), phone("424242")]);
    let now = at(1_111_111_111);
    let id = session(&mut d, now);
    // Not READY yet: refused.
    let (s, v) = answer(&mut d, &id, &respond(2, "424242"), now);
    assert_eq!(s, 400);
    assert_eq!(v["status"], "REJECTED");
    assert_eq!(
        v["rejectionReason"],
        "Challenge 2 (IDV_PREREGISTERED_PHONE) is not ready: start it with START_ALTERNATE first."
    );
    // "The code is sent."
    assert_eq!(
        answer(&mut d, &id, &alternate(2), now),
        (
            200,
            json!({ "status": "CHALLENGE_PENDING", "sessionId": id,
                    "challenges": [{"challengeId":2,"challengeType":"IDV_PREREGISTERED_PHONE","status":"READY"}] })
        )
    );
    // Only one challenge is READY at a time: TOTP went back to PROPOSED.
    let (s, v) = answer(&mut d, &id, &respond(1, &code_at(now.unix)), now);
    assert_eq!((s, &v["status"]), (400, &json!("REJECTED")));
    let (_, v) = answer(&mut d, &id, &respond(2, "000000"), now);
    assert_eq!(v["status"], "CHALLENGE_FAILED");
    let (_, v) = answer(&mut d, &id, &respond(2, "424242"), now);
    assert_eq!(v["status"], "AUTHENTICATED");
}

#[test]
fn security_key_otp_and_missing_credentials() {
    let mut d = directory(vec![TwoFactor::SecurityKeyOtp {
        code: "cccc-otp".into(),
    }]);
    let now = at(0);
    let id = session(&mut d, now);
    let no_credential = json!({ "email": EMAIL, "challengeId": 1, "action": "RESPOND" });
    assert_eq!(
        answer(&mut d, &id, &no_credential, now).1["status"],
        "CHALLENGE_FAILED"
    );
    // challengeId as a string of digits is accepted.
    let v = json!({ "email": EMAIL, "challengeId": "1", "action": "RESPOND",
                    "proposalResponse": { "credential": "cccc-otp" } });
    assert_eq!(answer(&mut d, &id, &v, now).1["status"], "AUTHENTICATED");

    let mut d = directory(vec![totp()]);
    let id = session(&mut d, now);
    assert_eq!(
        answer(&mut d, &id, &no_credential, now).1,
        json!({ "status": "CHALLENGE_FAILED", "rejectionReason": "Enter the one-time password." })
    );
}

/// Starts a session whose only factor is `f` and RESPONDs: the wait it gives.
fn authzen_wait(f: TwoFactor, now: Now) -> (Directory, AuthzenWait) {
    let mut d = directory(vec![f]);
    let id = session(&mut d, now);
    let v = json!({ "email": EMAIL, "challengeId": 1, "action": "RESPOND" });
    match cont(&mut d, &id, &v, now) {
        Step::Wait(w) => (d, w),
        Step::Answer(r) => panic!("answered at once: {}", body(&r)),
    }
}

fn status(r: Option<Response>) -> Option<Value> {
    r.map(|r| body(&r))
}

#[test]
fn authzen_configured_decisions() {
    let now = at(0);
    let (mut d, w) = authzen_wait(authzen(AuthzenDecision::Approve, 0), now);
    assert_eq!(w.next_wake(), now.mono);
    assert_eq!(
        status(d.authzen_outcome(&w, now.mono)),
        Some(json!({ "status": "AUTHENTICATED" }))
    );
    // The session is finished now.
    assert_eq!(
        status(d.authzen_outcome(&w, now.mono)).map(|v| v["status"].clone()),
        Some(json!("REJECTED"))
    );

    let (mut d, w) = authzen_wait(authzen(AuthzenDecision::Deny, 0), now);
    assert_eq!(
        status(d.authzen_outcome(&w, now.mono)),
        Some(json!({ "status": "CHALLENGE_FAILED",
                     "rejectionReason": "The login prompt was denied on the device." }))
    );

    // Decided after a delay.
    let (mut d, w) = authzen_wait(authzen(AuthzenDecision::Approve, 5000), now);
    assert_eq!(w.next_wake(), now.mono + Duration::from_secs(5));
    assert!(d.authzen_outcome(&w, now.mono).is_none());
    assert!(
        d.authzen_outcome(&w, now.mono + Duration::from_millis(4999))
            .is_none()
    );
    assert_eq!(
        status(d.authzen_outcome(&w, now.mono + Duration::from_secs(5))),
        Some(json!({ "status": "AUTHENTICATED" }))
    );

    // A delay beyond the cap times out at the cap.
    let (mut d, w) = authzen_wait(authzen(AuthzenDecision::Approve, 120_000), now);
    assert_eq!(w.next_wake(), now.mono + AUTHZEN_MAX_WAIT);
    assert_eq!(
        status(d.authzen_outcome(&w, now.mono + AUTHZEN_MAX_WAIT)),
        Some(json!({ "status": "CHALLENGE_FAILED",
            "rejectionReason": "The login prompt timed out: the device did not answer within 60 s." }))
    );
}

#[test]
fn authzen_control_decisions() {
    let now = at(0);
    let (mut d, w) = authzen_wait(authzen(AuthzenDecision::Pending, 0), now);
    assert!(d.authzen_outcome(&w, now.mono).is_none());
    assert!(
        d.authzen_outcome(&w, now.mono + Duration::from_secs(59))
            .is_none()
    );
    assert!(d.decide_authzen("alice", false));
    assert!(!d.decide_authzen("nobody", true));
    assert_eq!(
        status(d.authzen_outcome(&w, now.mono)).map(|v| v["status"].clone()),
        Some(json!("CHALLENGE_FAILED"))
    );
    // The denial decided one prompt only; the challenge stays READY for another try.
    assert!(d.authzen_outcome(&w, now.mono).is_none());
    assert!(d.decide_authzen("alice", true));
    assert_eq!(
        status(d.authzen_outcome(&w, now.mono)),
        Some(json!({ "status": "AUTHENTICATED" }))
    );

    // A control decision beats a configured one, and one made before the prompt applies.
    let mut d = directory(vec![authzen(AuthzenDecision::Deny, 0)]);
    assert!(d.decide_authzen("alice", true));
    let id = session(&mut d, now);
    let v = json!({ "email": EMAIL, "challengeId": 1, "action": "RESPOND" });
    let Step::Wait(w) = cont(&mut d, &id, &v, now) else {
        panic!("no wait");
    };
    assert_eq!(
        status(d.authzen_outcome(&w, now.mono)),
        Some(json!({ "status": "AUTHENTICATED" }))
    );

    // Pending and never decided: times out.
    let (mut d, w) = authzen_wait(authzen(AuthzenDecision::Pending, 0), now);
    assert_eq!(
        status(d.authzen_outcome(&w, now.mono + AUTHZEN_MAX_WAIT)).map(|v| v["status"].clone()),
        Some(json!("CHALLENGE_FAILED"))
    );
}

#[test]
fn refusals() {
    let mut d = directory(vec![totp()]);
    let now = at(1_111_111_111);
    let id = session(&mut d, now);
    let reason = |d: &mut Directory, id: &str, v: &Value, now: Now| {
        let (s, v) = answer(d, id, v, now);
        assert_eq!((s, &v["status"]), (400, &json!("REJECTED")), "{v}");
        v["rejectionReason"].as_str().unwrap_or_default().to_owned()
    };
    let code = code_at(now.unix);
    assert_eq!(
        reason(&mut d, "no-such-session", &respond(1, &code), now),
        "Unknown session."
    );
    let mut other = respond(1, &code);
    other["email"] = json!("bob@example.com");
    assert_eq!(
        reason(&mut d, &id, &other, now),
        "The email does not match the session."
    );
    assert_eq!(
        reason(&mut d, &id, &respond(7, &code), now),
        "Unknown challenge 7."
    );
    let mut bad_action = respond(1, &code);
    bad_action["action"] = json!("CANCEL");
    assert_eq!(
        reason(&mut d, &id, &bad_action, now),
        "Unknown action \"CANCEL\" (expected RESPOND or START_ALTERNATE)."
    );
    // Sessions expire.
    let later = Now {
        mono: now.mono + SESSION_LIFETIME,
        unix: now.unix,
    };
    assert_eq!(
        reason(&mut d, &id, &respond(1, &code), later),
        "The session expired."
    );
    assert_eq!(
        reason(&mut d, &id, &respond(1, &code), now),
        "Unknown session."
    );
}

#[test]
fn malformed_bodies_and_unknown_users() {
    let mut d = directory(vec![totp()]);
    let now = at(0);
    for b in [
        &b"not json"[..],
        b"{}",
        br#"{"email":"alice@example.com"}"#,
        br#"{"email":7,"supportedChallengeTypes":[]}"#,
        br#"{"email":"alice@example.com","supportedChallengeTypes":"TOTP"}"#,
    ] {
        let r = d.start_session(b, now);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(b));
        assert!(body(&r)["error"]["message"].is_string());
    }
    let r = d.start_session(
        br#"{"email":"nobody@example.com","supportedChallengeTypes":["TOTP"]}"#,
        now,
    );
    assert_eq!(r.status, 404);
    let id = session(&mut d, now);
    for b in [
        &b"not json"[..],
        b"[]",
        br#"{"email":"alice@example.com","action":"RESPOND"}"#,
        br#"{"email":"alice@example.com","challengeId":[1],"action":"RESPOND"}"#,
        br#"{"email":"alice@example.com","challengeId":-1,"action":"RESPOND"}"#,
        br#"{"email":"alice@example.com","challengeId":1}"#,
    ] {
        match d.continue_step(&id, b, now) {
            Step::Answer(r) => {
                assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(b));
                assert!(body(&r)["error"]["message"].is_string());
            }
            Step::Wait(_) => panic!("waits"),
        }
    }
}

#[test]
fn factor_json() {
    let f: Vec<TwoFactor> = serde_json::from_value(json!([
        {"type":"TOTP","secret":"gezd gnbv"},
        {"type":"AUTHZEN","decision":"pending"},
        {"type":"IDV_PREREGISTERED_PHONE","code":"123456"},
        {"type":"SECURITY_KEY_OTP","code":"x"},
    ]))
    .expect("factors");
    assert_eq!(
        f[1],
        TwoFactor::Authzen {
            decision: AuthzenDecision::Pending,
            after_ms: 0
        }
    );
    let back: Vec<TwoFactor> =
        serde_json::from_value(serde_json::to_value(&f).expect("ser")).expect("de");
    assert_eq!(back, f);
    assert_eq!(
        serde_json::to_value(&f[1]).expect("ser"),
        json!({"type":"AUTHZEN","decision":"pending","after_ms":0})
    );
    let err = |v: Value| {
        let raw: crate::api::RawFactor = serde_json::from_value(v).expect("raw");
        TwoFactor::try_from(raw).expect_err("refused").to_string()
    };
    assert!(err(json!({"type":"TOTP","secret":"GEZ1"})).starts_with("secret: not valid base32"));
    assert!(err(json!({"type":"TOTP"})).starts_with("secret: required"));
    assert!(err(json!({"type":"SMS","code":"1"})).starts_with("type: unknown factor type \"SMS\""));
    assert!(err(json!({"type":"AUTHZEN"})).starts_with("decision:"));
    assert!(err(json!({"type":"AUTHZEN","decision":"maybe"})).starts_with("decision:"));
    assert!(
        err(json!({"type":"AUTHZEN","decision":"deny","code":"1"})).starts_with("code: not used")
    );
    assert!(
        err(json!({"type":"SECURITY_KEY_OTP","code":" "})).starts_with("code: must not be empty")
    );
    assert!(
        serde_json::from_value::<crate::api::RawFactor>(json!({"type":"TOTP","secert":"A"}))
            .is_err()
    );
    // In a user's JSON.
    let u: UserSpec = serde_json::from_value(json!({
        "email": EMAIL, "username": "alice", "uid": 1001,
        "two_factor": [{"type":"IDV_PREREGISTERED_PHONE","code":"1"}],
    }))
    .expect("user");
    assert_eq!(u.two_factor, vec![phone("1")]);
    let u: UserSpec =
        serde_json::from_value(json!({"email": EMAIL, "username": "alice", "uid": 1001}))
            .expect("user");
    assert!(u.two_factor.is_empty());
    let e = serde_json::from_value::<UserSpec>(json!({
        "email": EMAIL, "username": "alice", "uid": 1001,
        "two_factor": [{"type":"TOTP","secret":"!"}],
    }))
    .expect_err("bad secret");
    assert!(e.to_string().contains("secret: not valid base32"), "{e}");
}
