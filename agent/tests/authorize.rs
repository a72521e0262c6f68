//! Login decisions against the emulator in process: single flight, per-connection sharing,
//! no reuse across logins by default.

use std::sync::Arc;
use std::time::Duration;

use guest_agent::mds::{ClientSettings, Endpoint, GceClient, Limits};
use guest_agent::oslogin::authorize::{Authorizer, Decision, Policy};
use guest_agent_emulator::{
    EmulatorOptions, Fault, FaultKind, InitialState, KeySpec, Running, UserSpec,
};

async fn emulator() -> Running {
    let emu = guest_agent_emulator::start(EmulatorOptions {
        metadata_listen: vec!["127.0.0.1:0".parse().unwrap()],
        control: None,
        initial: InitialState::default(),
    })
    .await
    .unwrap();
    emu.state().upsert_user(UserSpec {
        email: "alice@example.com".into(),
        username: "alice".into(),
        uid: 200001,
        gid: None,
        home: None,
        shell: None,
        keys: vec![KeySpec {
            key:
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a"
                    .into(),
            expiration_usec: None,
        }],
        login: true,
        admin: false,
        security_keys: Vec::new(),
        two_factor: Vec::new(),
    });
    emu
}

fn client(emu: &Running) -> GceClient {
    GceClient::new(ClientSettings {
        endpoint: Endpoint::parse(&format!("http://{}", emu.metadata_addrs()[0])).unwrap(),
        limits: Limits {
            connect_timeout: Duration::from_secs(1),
            max_body_bytes: 1 << 20,
        },
        request_timeout: Duration::from_secs(2),
    })
}

fn authorize_requests(emu: &Running) -> usize {
    emu.state()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/oslogin/authorize"))
        .count()
}

#[tokio::test]
async fn concurrent_identical_checks_share_one_request() {
    let emu = emulator().await;
    emu.state().add_fault(Fault {
        path_prefix: "/computeMetadata/v1/oslogin/authorize".into(),
        kind: FaultKind::Delay { ms: 200 },
        count: None,
    });
    let auth = Arc::new(Authorizer::default());
    let c = client(&emu);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (auth, c) = (auth.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            auth.decide(
                &c,
                "alice@example.com",
                Policy::Login,
                None,
                None,
                Duration::ZERO,
            )
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Decision::Allowed);
    }
    assert_eq!(authorize_requests(&emu), 1);
}

#[tokio::test]
async fn runs_of_one_connection_share_a_decision_but_logins_do_not() {
    let emu = emulator().await;
    let auth = Authorizer::default();
    let c = client(&emu);
    let ask = |conn: Option<&'static str>| {
        auth.decide(
            &c,
            "alice@example.com",
            Policy::Login,
            None,
            conn,
            Duration::ZERO,
        )
    };
    assert_eq!(ask(Some("100:1")).await, Decision::Allowed);
    assert_eq!(ask(Some("100:1")).await, Decision::Allowed);
    assert_eq!(
        authorize_requests(&emu),
        1,
        "the second run of the same connection reuses"
    );
    // A revocation between logins is seen by the next login at once.
    emu.state().set_roles("alice", false, false);
    assert_eq!(ask(Some("200:1")).await, Decision::Denied);
    assert_eq!(ask(None).await, Decision::Denied);
    assert_eq!(authorize_requests(&emu), 3);
    assert_eq!(
        auth.decide(
            &c,
            "alice@example.com",
            Policy::AdminLogin,
            None,
            None,
            Duration::ZERO
        )
        .await,
        Decision::Denied
    );
}

#[tokio::test]
async fn failures_are_unavailable_and_grace_follows_the_last_positive_decision() {
    let emu = emulator().await;
    let auth = Authorizer::default();
    let c = client(&emu);
    let grace = Duration::from_secs(60);
    assert!(!auth.within_grace("alice@example.com", Policy::Login, grace));
    assert_eq!(
        auth.decide(
            &c,
            "alice@example.com",
            Policy::Login,
            None,
            None,
            Duration::ZERO
        )
        .await,
        Decision::Allowed
    );
    emu.state().add_fault(Fault {
        path_prefix: "/computeMetadata/v1/oslogin/".into(),
        kind: FaultKind::Status { code: 503 },
        count: None,
    });
    let d = auth
        .decide(
            &c,
            "alice@example.com",
            Policy::Login,
            None,
            None,
            Duration::ZERO,
        )
        .await;
    assert!(matches!(d, Decision::Unavailable(_)), "{d:?}");
    assert!(auth.within_grace("alice@example.com", Policy::Login, grace));
    assert!(
        !auth.within_grace("alice@example.com", Policy::Login, Duration::ZERO),
        "no grace configured"
    );
    // Unknown users are denied, not unavailable.
    emu.state().clear_faults();
    assert_eq!(
        auth.decide(
            &c,
            "nobody@example.com",
            Policy::Login,
            None,
            None,
            Duration::ZERO
        )
        .await,
        Decision::Denied
    );
    assert!(!auth.within_grace("nobody@example.com", Policy::Login, grace));
}

#[tokio::test]
async fn without_a_connection_id_a_decision_is_reused_only_within_the_operators_window() {
    let emu = emulator().await;
    let auth = Authorizer::default();
    let c = client(&emu);
    let reuse = Duration::from_secs(1);
    let decide = || auth.decide(&c, "alice@example.com", Policy::Login, None, None, reuse);
    assert_eq!(decide().await, Decision::Allowed);
    assert_eq!(decide().await, Decision::Allowed);
    assert_eq!(
        authorize_requests(&emu),
        1,
        "reused within decision_reuse_secs"
    );
    // Past the operator's 1 s (slept for 1.5 s: a slower machine only sleeps longer), the
    // service is asked again. Before the fix the connection scope's 60 s applied to "no
    // connection" too, and this second login reused the first one's decision.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(decide().await, Decision::Allowed);
    assert_eq!(authorize_requests(&emu), 2, "asked again after the window");
}
