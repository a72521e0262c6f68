#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable
)]

use super::*;
use std::collections::VecDeque;

/// A daemon answering from a script, recording what it was asked.
struct FakeDaemon {
    answers: VecDeque<Result<Answer, Unreachable>>,
    asked: Vec<String>,
}

impl Daemon for FakeDaemon {
    fn ask(&mut self, request: &Request) -> Result<Answer, Unreachable> {
        self.asked.push(request.encode());
        self.answers
            .pop_front()
            .unwrap_or_else(|| Err(Unreachable("script ended".into())))
    }
}

/// A user replying from a script (text, seconds taken), recording what was shown.
#[derive(Default)]
struct FakeUser {
    replies: VecDeque<Option<(&'static str, u64)>>,
    shown: Vec<String>,
}

impl User for FakeUser {
    fn prompt(&mut self, echo: bool, text: &str) -> Option<Reply> {
        self.shown
            .push(format!("{} {text}", if echo { "ECHO" } else { "SECRET" }));
        let (text, secs) = self.replies.pop_front().flatten()?;
        Some(Reply {
            text: Secret::new(text.as_bytes().to_vec()),
            elapsed: Duration::from_secs(secs),
        })
    }
    fn info(&mut self, text: &str) {
        self.shown.push(format!("INFO {text}"));
    }
    fn error(&mut self, text: &str) {
        self.shown.push(format!("ERROR {text}"));
    }
}

fn ok(lines: &[&str]) -> Result<Answer, Unreachable> {
    Ok(Answer::Ok(lines.iter().map(|l| l.to_string()).collect()))
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one auth of `name` against the scripts; returns the outcome, the requests, what the
/// user saw.
fn auth(
    name: &str,
    answers: Vec<Result<Answer, Unreachable>>,
    replies: Vec<Option<(&'static str, u64)>>,
) -> (Outcome, Vec<String>, Vec<String>) {
    let mut d = FakeDaemon {
        answers: answers.into(),
        asked: vec![],
    };
    let mut u = FakeUser {
        replies: replies.into(),
        ..Default::default()
    };
    let o = authenticate(name, TIMEOUT, &mut d, &mut u);
    (o, d.asked, u.shown)
}

fn respond(session: &str, id: u32, cred: Option<&str>) -> String {
    Request::TwoFactorContinue {
        user: "alice".into(),
        session: session.into(),
        challenge: id,
        action: TwoFactorAction::Respond,
        credential: cred.map(|c| hex_encode(c.as_bytes())),
    }
    .encode()
}

fn start() -> String {
    Request::TwoFactorStart {
        user: "alice".into(),
    }
    .encode()
}

#[test]
fn one_totp_challenge_is_asked_and_the_code_sent_in_hex() {
    let (o, asked, shown) = auth(
        "alice",
        vec![
            ok(&["session s1", "challenge 3 TOTP READY"]),
            ok(&["authenticated"]),
        ],
        vec![Some(("123456", 5))],
    );
    assert_eq!(o, outcome(Verdict::Success, "authenticated"));
    assert_eq!(asked, vec![start(), respond("s1", 3, Some("123456"))]);
    assert!(asked[1].ends_with(" 3 respond 313233343536"), "{asked:?}");
    assert_eq!(shown, vec![format!("SECRET {TOTP_PROMPT}")]);
}

#[test]
fn several_challenges_make_a_menu() {
    let (o, asked, shown) = auth(
        "alice",
        vec![
            ok(&[
                "session s1",
                "challenge 1 TOTP READY",
                "challenge 2 IDV_PREREGISTERED_PHONE READY",
            ]),
            ok(&["authenticated"]),
        ],
        vec![Some((" 2 ", 3)), Some(("987654", 3))],
    );
    assert_eq!(o.verdict, Verdict::Success);
    assert_eq!(
        shown[0],
        format!(
            "ECHO {MENU_HEAD}\n1: Authenticator app (one-time code)\n2: Security code sent to your phone\n{MENU_TAIL}"
        )
    );
    assert_eq!(shown[1], format!("SECRET {PHONE_PROMPT}"));
    assert_eq!(asked[1], respond("s1", 2, Some("987654")));
}

#[test]
fn a_menu_choice_that_is_no_method_is_refused() {
    for choice in ["3", "0", "x", "", "-1"] {
        let (o, asked, shown) = auth(
            "alice",
            vec![ok(&[
                "session s1",
                "challenge 1 TOTP READY",
                "challenge 2 AUTHZEN READY",
            ])],
            vec![Some((choice, 1))],
        );
        assert_eq!(o.verdict, Verdict::Deny, "{choice:?}");
        assert_eq!(asked.len(), 1);
        assert!(
            shown.last().unwrap().contains("no such method"),
            "{shown:?}"
        );
    }
}

#[test]
fn a_proposed_challenge_is_started_first_and_authzen_sends_no_credential() {
    let (o, asked, shown) = auth(
        "alice",
        vec![
            ok(&["session s1", "challenge 2 AUTHZEN PROPOSED"]),
            ok(&["pending", "challenge 2 AUTHZEN READY"]),
            ok(&["authenticated"]),
        ],
        vec![Some(("anything typed", 10))],
    );
    assert_eq!(o.verdict, Verdict::Success);
    assert_eq!(
        asked[1],
        "@1 2fa-continue alice s1 2 start-alternate -".replace(
            "@1",
            &format!("@{}", guest_agent_wire::proto::PROTOCOL_VERSION)
        )
    );
    assert_eq!(asked[2], respond("s1", 2, None));
    assert!(asked[2].ends_with(" 2 respond -"));
    assert_eq!(
        shown,
        vec![
            format!("INFO {AUTHZEN_INFO}"),
            format!("ECHO {AUTHZEN_PROMPT}")
        ]
    );
}

#[test]
fn a_start_alternate_that_is_not_pending_is_refused_with_its_reason() {
    let proposed = || ok(&["session s1", "challenge 2 TOTP PROPOSED"]);
    let (o, asked, shown) = auth(
        "alice",
        vec![proposed(), Ok(Answer::Denied("challenge expired".into()))],
        vec![],
    );
    assert_eq!(o, outcome(Verdict::Deny, "refused: challenge expired"));
    assert_eq!(asked.len(), 2);
    assert_eq!(
        shown,
        vec!["ERROR Two-step verification failed: challenge expired".to_string()]
    );
    let (o, _, _) = auth("alice", vec![proposed(), ok(&["authenticated"])], vec![]);
    assert_eq!(o.verdict, Verdict::Deny);
    let (o, _, _) = auth("alice", vec![proposed(), ok(&["pending", "junk"])], vec![]);
    assert_eq!(o.verdict, Verdict::Deny);
}

#[test]
fn other_kinds_prompt_their_own_way() {
    for (kind, prompt) in [
        ("SECURITY_KEY_OTP", CODE_PROMPT),
        ("INTERNAL_TWO_FACTOR", CODE_PROMPT),
        ("IDV_PREREGISTERED_PHONE", PHONE_PROMPT),
    ] {
        let (o, _, shown) = auth(
            "alice",
            vec![
                ok(&["session s1", &format!("challenge 1 {kind} READY")]),
                ok(&["authenticated"]),
            ],
            vec![Some(("42", 1))],
        );
        assert_eq!(o.verdict, Verdict::Success, "{kind}");
        assert_eq!(shown, vec![format!("SECRET {prompt}")], "{kind}");
    }
}

#[test]
fn a_wrong_code_shows_the_rejection_reason() {
    let (o, asked, shown) = auth(
        "alice",
        vec![
            ok(&["session s1", "challenge 1 TOTP READY"]),
            Ok(Answer::Denied("Wrong code. Try again.".into())),
        ],
        vec![Some(("000000", 2))],
    );
    assert_eq!(o, outcome(Verdict::Deny, "refused: Wrong code. Try again."));
    assert_eq!(asked.len(), 2);
    assert_eq!(
        shown.last().unwrap(),
        "ERROR Two-step verification failed: Wrong code. Try again."
    );
    assert!(!o.log.contains("000000"));
}

#[test]
fn not_ours_is_left_to_the_stack() {
    let (o, asked, shown) = auth("alice", vec![Ok(Answer::NotFound)], vec![]);
    assert_eq!(o.verdict, Verdict::Ignore);
    assert!(o.log.contains("not an OS Login user"));
    assert_eq!(asked, vec![start()]);
    assert!(shown.is_empty());
    // Service accounts and names OS Login never gives: not even asked.
    for name in ["sa_123456789", "not a name", "x\ny", ""] {
        let (o, asked, shown) = auth(name, vec![], vec![]);
        assert_eq!(o.verdict, Verdict::Ignore, "{name:?}");
        assert!(asked.is_empty() && shown.is_empty(), "{name:?}");
    }
}

#[test]
fn the_service_s_refusal_is_shown() {
    for a in [
        Answer::Denied("NO_AVAILABLE_CHALLENGES".into()),
        Answer::Unavailable("metadata service down".into()),
    ] {
        let (Answer::Denied(r) | Answer::Unavailable(r)) = a.clone() else {
            unreachable!()
        };
        let (o, _, shown) = auth("alice", vec![Ok(a)], vec![]);
        assert_eq!(o.verdict, Verdict::Deny);
        assert_eq!(
            shown,
            vec![format!("ERROR Two-step verification failed: {r}")]
        );
    }
}

#[test]
fn an_unreachable_or_confused_daemon_is_a_denial_with_a_message() {
    let (o, _, shown) = auth("alice", vec![Err(Unreachable("timeout".into()))], vec![]);
    assert_eq!(o.verdict, Verdict::Deny);
    assert!(o.log.contains("did not answer: timeout"), "{o:?}");
    assert_eq!(shown, vec![format!("ERROR {NO_AGENT}")]);
    let too_many: Vec<String> = std::iter::once("session s".to_string())
        .chain((0..=MAX_CHALLENGES).map(|i| format!("challenge {i} TOTP READY")))
        .collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    for answer in [
        Ok(Answer::Error("unknown request".into())),
        ok(&[]),
        ok(&["challenge 1 TOTP READY"]),
        ok(&["session s1"]),
        ok(&["session s1", "challenge 1 TOTP DONE"]),
        ok(&["session s1", "authenticated"]),
        ok(&["session a b", "challenge 1 TOTP READY"]),
        ok(&too_many),
    ] {
        let (o, asked, shown) = auth("alice", vec![answer.clone()], vec![]);
        assert_eq!(o.verdict, Verdict::Deny, "{answer:?}");
        assert_eq!(asked.len(), 1);
        assert_eq!(shown.len(), 1, "{answer:?}");
        assert!(shown[0].starts_with("ERROR "), "{shown:?}");
    }
    // Exactly MAX_CHALLENGES is fine.
    let most: Vec<String> = std::iter::once("session s".to_string())
        .chain((1..=MAX_CHALLENGES).map(|i| format!("challenge {i} TOTP READY")))
        .collect();
    let most: Vec<&str> = most.iter().map(String::as_str).collect();
    let (o, _, _) = auth(
        "alice",
        vec![ok(&most), ok(&["authenticated"])],
        vec![Some(("16", 1)), Some(("1", 1))],
    );
    assert_eq!(o.verdict, Verdict::Success);
    // The answer to respond: unreachable, ERR, something else than authenticated.
    for answer in [
        Err(Unreachable("closed".into())),
        Ok(Answer::Error("bad".into())),
        ok(&["pending"]),
        ok(&[]),
        Ok(Answer::NotFound),
    ] {
        let (o, _, _) = auth(
            "alice",
            vec![
                ok(&["session s1", "challenge 1 TOTP READY"]),
                answer.clone(),
            ],
            vec![Some(("1", 1))],
        );
        assert_eq!(o.verdict, Verdict::Deny, "{answer:?}");
    }
}

#[test]
fn unknown_kinds_are_not_offered() {
    let (o, _, shown) = auth(
        "alice",
        vec![
            ok(&[
                "session s1",
                "challenge 1 PASSKEY READY",
                "challenge 2 TOTP READY",
            ]),
            ok(&["authenticated"]),
        ],
        vec![Some(("1", 1))],
    );
    assert_eq!(o.verdict, Verdict::Success);
    assert_eq!(
        shown,
        vec![format!("SECRET {TOTP_PROMPT}")],
        "no menu for one"
    );
    let (o, asked, shown) = auth(
        "alice",
        vec![ok(&["session s1", "challenge 1 PASSKEY READY"])],
        vec![],
    );
    assert_eq!(o.verdict, Verdict::Deny);
    assert_eq!(asked.len(), 1);
    assert!(shown[0].contains("none of your methods"), "{shown:?}");
}

#[test]
fn late_missing_empty_or_long_answers_are_refused_without_asking() {
    let one = || vec![ok(&["session s1", "challenge 1 TOTP READY"])];
    let (o, asked, shown) = auth("alice", one(), vec![Some(("123456", 31))]);
    assert_eq!(o, outcome(Verdict::Deny, "refused: no answer within 30 s"));
    assert_eq!(asked.len(), 1);
    assert!(shown.last().unwrap().contains("no answer within 30 s"));
    let (o, asked, _) = auth("alice", one(), vec![None]);
    assert_eq!(o.verdict, Verdict::Deny);
    assert_eq!(asked.len(), 1);
    let (o, asked, _) = auth("alice", one(), vec![Some(("", 1))]);
    assert_eq!(o.verdict, Verdict::Deny);
    assert_eq!(asked.len(), 1);
    let long: &'static str = "9".repeat(MAX_CREDENTIAL + 1).leak();
    let (o, asked, _) = auth("alice", one(), vec![Some((long, 1))]);
    assert_eq!(o.verdict, Verdict::Deny);
    assert_eq!(asked.len(), 1);
    // MAX_CREDENTIAL itself is sent.
    let most: &'static str = "9".repeat(MAX_CREDENTIAL).leak();
    let (o, asked, _) = auth(
        "alice",
        vec![one().remove(0), ok(&["authenticated"])],
        vec![Some((most, 1))],
    );
    assert_eq!(o.verdict, Verdict::Success);
    assert!(Request::parse(&asked[1]).is_ok());
    // A late menu choice too.
    let (o, asked, _) = auth(
        "alice",
        vec![ok(&[
            "session s1",
            "challenge 1 TOTP READY",
            "challenge 2 TOTP READY",
        ])],
        vec![Some(("1", 60))],
    );
    assert_eq!(o.verdict, Verdict::Deny);
    assert_eq!(asked.len(), 1);
}

#[test]
fn a_credential_with_a_blank_travels_as_hex() {
    let (o, asked, _) = auth(
        "alice",
        vec![
            ok(&["session s1", "challenge 1 SECURITY_KEY_OTP READY"]),
            ok(&["authenticated"]),
        ],
        vec![Some(("12 34\tx", 1))],
    );
    assert_eq!(o.verdict, Verdict::Success);
    assert!(asked[1].ends_with(" respond 31322033340978"), "{asked:?}");
    match Request::parse(&asked[1]).unwrap() {
        Request::TwoFactorContinue { credential, .. } => assert_eq!(
            guest_agent_wire::proto::hex_decode(&credential.unwrap()),
            Some(b"12 34\tx".to_vec())
        ),
        r => panic!("{r:?}"),
    }
}

#[test]
fn the_account_check() {
    let run = |name: &str, answer: Result<Answer, Unreachable>| {
        let mut d = FakeDaemon {
            answers: vec![answer].into(),
            asked: vec![],
        };
        let mut u = FakeUser::default();
        let o = account(name, &mut d, &mut u);
        (o, d.asked, u.shown)
    };
    let (o, asked, _) = run("alice", ok(&[]));
    assert_eq!(o.verdict, Verdict::Success);
    assert_eq!(
        asked,
        vec![
            Request::PamAccount {
                user: "alice".into()
            }
            .encode()
        ]
    );
    // sa_ users are asked like everyone.
    let (o, asked, _) = run("sa_1234", ok(&[]));
    assert_eq!(o.verdict, Verdict::Success);
    assert_eq!(asked.len(), 1);
    assert_eq!(
        run("alice", Ok(Answer::NotFound)).0.verdict,
        Verdict::Ignore
    );
    let (o, _, shown) = run("alice", Ok(Answer::Denied("no login role".into())));
    assert_eq!(o, outcome(Verdict::Deny, "refused: no login role"));
    assert_eq!(
        shown,
        vec!["ERROR Login refused: no login role".to_string()]
    );
    assert_eq!(
        run("alice", Ok(Answer::Unavailable("down".into())))
            .0
            .verdict,
        Verdict::Deny
    );
    assert_eq!(
        run("alice", Ok(Answer::Error("bad".into()))).0.verdict,
        Verdict::Deny
    );
    let (o, _, shown) = run("alice", Err(Unreachable("no socket".into())));
    assert_eq!(o.verdict, Verdict::Ignore);
    assert!(o.log.contains("no socket"));
    assert!(shown.is_empty());
    let (o, asked, _) = run("Not Valid", ok(&[]));
    assert_eq!(o.verdict, Verdict::Ignore);
    assert!(asked.is_empty());
}

#[test]
fn secrets_are_wiped() {
    let mut b = b"123456".to_vec();
    wipe(&mut b);
    assert_eq!(b, vec![0; 6]);
}
