//! OS Login two-step verification through the metadata listener, driven over the control
//! socket: flavor and method checks, TOTP and phone-prompt logins, faults, the request log.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use guest_agent_emulator::{ControlListen, InitialState, Running, UserSpec, totp_code};
use serde_json::{Value, json};

const START: &str = "/computeMetadata/v1/oslogin/authenticate/sessions/start";
const SECRET: &str = "JBSWY3DPEHPK3PXP";
const EMAIL: &str = "alice@example.com";

fn continue_path(session: &str) -> String {
    format!("/computeMetadata/v1/oslogin/authenticate/sessions/{session}/continue")
}

async fn setup() -> (Running, PathBuf) {
    let sock = std::env::temp_dir().join(format!(
        "mds-emu-2fa-{}-{}.sock",
        std::process::id(),
        fastrand::u64(..)
    ));
    let user = UserSpec {
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
        two_factor: Vec::new(),
    };
    let initial = InitialState {
        users: vec![user],
        ..Default::default()
    };
    let r = start_with(initial, Some(ControlListen::Unix(sock.clone()))).await;
    (r, sock)
}

async fn post(addr: std::net::SocketAddr, path: &str, body: &Value) -> Resp {
    request(
        addr,
        "POST",
        path,
        &[FLAVOR, ("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

async fn set_factors(sock: &Path, factors: Value) -> (u16, Value) {
    let body = json!({ "factors": factors }).to_string();
    unix(sock, "POST", "/oslogin/users/alice/two-factor", &body).await
}

async fn start_session(addr: std::net::SocketAddr) -> Value {
    let types = [
        "SECURITY_KEY_OTP",
        "AUTHZEN",
        "TOTP",
        "IDV_PREREGISTERED_PHONE",
    ];
    let r = post(
        addr,
        START,
        &json!({ "email": EMAIL, "supportedChallengeTypes": types }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("metadata-flavor"), Some("Google"));
    r.json()
}

fn respond(challenge: u32, credential: &str) -> Value {
    json!({ "email": EMAIL, "challengeId": challenge, "action": "RESPOND",
            "proposalResponse": { "credential": credential } })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test]
async fn totp_login_faults_and_request_log() {
    let (emu, sock) = setup().await;
    let addr = emu.metadata_addrs()[0];

    // Factors are checked, naming the field at fault.
    let (s, v) = set_factors(&sock, json!([{"type":"TOTP","secret":"NOT-BASE32"}])).await;
    assert_eq!(s, 400);
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("factors[0].secret: not valid base32"),
        "{msg}"
    );
    let (s, v) = set_factors(
        &sock,
        json!([{"type":"TOTP","secret":SECRET},{"type":"SMS"}]),
    )
    .await;
    assert_eq!(s, 400);
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("factors[1].type: unknown factor type"),
        "{msg}"
    );
    let (s, _) = unix(
        &sock,
        "POST",
        "/oslogin/users/nobody/two-factor",
        r#"{"factors":[]}"#,
    )
    .await;
    assert_eq!(s, 404);

    // No factors: no challenge.
    assert_eq!(
        start_session(addr).await,
        json!({ "status": "NO_AVAILABLE_CHALLENGES" })
    );
    let (s, _) = set_factors(
        &sock,
        json!([{"type":"TOTP","secret":SECRET},{"type":"IDV_PREREGISTERED_PHONE","code":"123456"}]),
    )
    .await;
    assert_eq!(s, 200);

    // Flavor and method, as everywhere under /computeMetadata/v1/.
    let body = json!({ "email": EMAIL, "supportedChallengeTypes": ["TOTP"] }).to_string();
    assert_eq!(
        request(addr, "POST", START, &[], body.as_bytes())
            .await
            .status,
        403
    );
    assert_eq!(get(addr, START).await.status, 405);
    assert_eq!(
        request(addr, "POST", &format!("{V1}/oslogin/users"), &[FLAVOR], b"")
            .await
            .status,
        405
    );
    let r = request(addr, "POST", START, &[FLAVOR], b"{not json").await;
    assert_eq!(r.status, 400);
    let r = post(
        addr,
        START,
        &json!({ "email": "bob@example.com", "supportedChallengeTypes": ["TOTP"] }),
    )
    .await;
    assert_eq!(r.status, 404);

    let v = start_session(addr).await;
    assert_eq!(v["status"], "CHALLENGE_REQUIRED");
    assert_eq!(
        v["challenges"],
        json!([
            {"challengeId":1,"challengeType":"TOTP","status":"READY"},
            {"challengeId":2,"challengeType":"IDV_PREREGISTERED_PHONE","status":"PROPOSED"},
        ])
    );
    let session = v["sessionId"].as_str().expect("sessionId").to_owned();
    // A code of no step near now (the server's clock may be a step further).
    let t = unix_now();
    let near: Vec<String> = (0..5)
        .map(|i| totp_code(SECRET, t + i * 30 - 60).expect("code"))
        .collect();
    let wrong = (0u32..)
        .map(|n| format!("{n:06}"))
        .find(|c| !near.contains(c))
        .expect("a wrong code");
    let r = post(addr, &continue_path(&session), &respond(1, &wrong)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({ "status": "CHALLENGE_FAILED", "rejectionReason": "Wrong code. Try again." })
    );
    let code = totp_code(SECRET, unix_now()).expect("code");
    let r = post(addr, &continue_path(&session), &respond(1, &code)).await;
    assert_eq!(
        (r.status, r.json()),
        (200, json!({ "status": "AUTHENTICATED" }))
    );
    let r = post(addr, &continue_path(&session), &respond(1, &code)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["status"], "REJECTED");
    let r = post(addr, &continue_path("nope"), &respond(1, &code)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["rejectionReason"], "Unknown session.");

    // START_ALTERNATE then the SMS code, in a new session.
    let session = start_session(addr).await["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    let alt = json!({ "email": EMAIL, "challengeId": 2, "action": "START_ALTERNATE" });
    let r = post(addr, &continue_path(&session), &alt).await;
    assert_eq!(r.json()["status"], "CHALLENGE_PENDING");
    assert_eq!(r.json()["challenges"][0]["status"], "READY");
    let r = post(addr, &continue_path(&session), &respond(2, "123456")).await;
    assert_eq!(r.json()["status"], "AUTHENTICATED");

    // Faults apply to these paths like to any other.
    let fault = json!({"path_prefix":"/computeMetadata/v1/oslogin/authenticate/",
                       "kind":"status","code":503,"count":1});
    let (s, _) = unix(&sock, "POST", "/faults", &fault.to_string()).await;
    assert_eq!(s, 200);
    let r = post(
        addr,
        START,
        &json!({ "email": EMAIL, "supportedChallengeTypes": ["TOTP"] }),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(start_session(addr).await["status"], "CHALLENGE_REQUIRED");

    // Every call is in the request log, method and path visible.
    let (_, log) = unix(
        &sock,
        "GET",
        "/requests?path_prefix=/computeMetadata/v1/oslogin/authenticate/sessions/",
        "",
    )
    .await;
    let reqs = log["requests"].as_array().cloned().unwrap_or_default();
    let starts = reqs
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == START)
        .count();
    let continues = reqs
        .iter()
        .filter(|r| {
            r["method"] == "POST" && r["path"].as_str().is_some_and(|p| p.ends_with("/continue"))
        })
        .count();
    // 8 POST starts: none available, no flavor, bad body, unknown email, the two sessions,
    // the fault and the one after (and 1 GET); 6 continues: wrong, right, finished, unknown
    // session, START_ALTERNATE, the SMS code.
    assert_eq!((starts, continues), (8, 6), "{log}");
    assert!(reqs.iter().any(|r| r["status"] == 503));
    emu.shutdown().await;
}

#[tokio::test]
async fn authzen_waits_for_the_phone() {
    let (emu, sock) = setup().await;
    let addr = emu.metadata_addrs()[0];
    let (s, _) = set_factors(&sock, json!([{"type":"AUTHZEN","decision":"pending"}])).await;
    assert_eq!(s, 200);
    let v = start_session(addr).await;
    assert_eq!(v["challenges"][0]["challengeType"], "AUTHZEN");
    let session = v["sessionId"].as_str().expect("sessionId").to_owned();
    let press_enter = json!({ "email": EMAIL, "challengeId": 1, "action": "RESPOND" });

    // Held until the control call decides.
    let before = emu.state().requests().len();
    let waiting = tokio::spawn({
        let body = press_enter.clone();
        let path = continue_path(&session);
        async move { post(addr, &path, &body).await }
    });
    wait_recorded(&emu.state(), before + 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "answered before the phone decided");
    let (s, _) = unix(
        &sock,
        "POST",
        "/oslogin/users/alice/authzen",
        r#"{"approve":false}"#,
    )
    .await;
    assert_eq!(s, 200);
    let r = waiting.await.expect("join");
    assert_eq!(
        r.json(),
        json!({ "status": "CHALLENGE_FAILED",
                "rejectionReason": "The login prompt was denied on the device." })
    );

    // A decision made before the RESPOND applies to it.
    let (s, _) = unix(
        &sock,
        "POST",
        "/oslogin/users/alice/authzen",
        r#"{"approve":true}"#,
    )
    .await;
    assert_eq!(s, 200);
    let r = post(addr, &continue_path(&session), &press_enter).await;
    assert_eq!(r.json(), json!({ "status": "AUTHENTICATED" }));

    // Decided by itself after a delay.
    let (s, _) = set_factors(
        &sock,
        json!([{"type":"AUTHZEN","decision":"approve","after_ms":300}]),
    )
    .await;
    assert_eq!(s, 200);
    let session = start_session(addr).await["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    let t0 = std::time::Instant::now();
    let r = post(addr, &continue_path(&session), &press_enter).await;
    assert_eq!(r.json(), json!({ "status": "AUTHENTICATED" }));
    assert!(t0.elapsed() >= Duration::from_millis(300));

    // Bad control bodies and unknown users.
    let (s, v) = unix(
        &sock,
        "POST",
        "/oslogin/users/alice/authzen",
        r#"{"approve":"yes"}"#,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = unix(
        &sock,
        "POST",
        "/oslogin/users/nobody/authzen",
        r#"{"approve":true}"#,
    )
    .await;
    assert_eq!(s, 404);
    emu.shutdown().await;
}
