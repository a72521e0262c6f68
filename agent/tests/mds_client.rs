//! The metadata client against the emulator, in process on 127.0.0.1 (no root needed).

use std::time::{Duration, Instant};

use guest_agent::mds::{ClientSettings, Ec2Client, Endpoint, GceClient, Limits, MdsError};
use guest_agent_emulator::{EmulatorOptions, Fault, FaultKind, InitialState, Running, Scope};

async fn emulator() -> Running {
    guest_agent_emulator::start(EmulatorOptions {
        metadata_listen: vec!["127.0.0.1:0".parse().unwrap()],
        control: None,
        initial: InitialState::default(),
    })
    .await
    .expect("emulator starts")
}

fn settings(emu: &Running, request_timeout_ms: u64, max_body: usize) -> ClientSettings {
    let addr = emu.metadata_addrs()[0];
    ClientSettings {
        endpoint: Endpoint::parse(&format!("http://{addr}")).unwrap(),
        limits: Limits {
            connect_timeout: Duration::from_secs(1),
            max_body_bytes: max_body,
        },
        request_timeout: Duration::from_millis(request_timeout_ms),
    }
}

fn gce(emu: &Running) -> GceClient {
    GceClient::new(settings(emu, 2000, 4 << 20))
}

fn fault(prefix: &str, kind: FaultKind, count: Option<u32>) -> Fault {
    Fault {
        path_prefix: prefix.into(),
        kind,
        count,
    }
}

#[tokio::test]
async fn whole_tree_long_poll_waits_for_a_change() {
    let emu = emulator().await;
    let client = gce(&emu);
    let first = client.tree(None).await.unwrap();
    assert!(first.json["instance"].is_object(), "{}", first.json);
    assert!(!first.etag.is_empty());

    // No change: the service holds the poll for timeout_sec, then answers with the same etag.
    let t0 = Instant::now();
    let same = client.tree(Some((&first.etag, 1))).await.unwrap();
    assert_eq!(same.etag, first.etag);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "answered after {:?}",
        t0.elapsed()
    );

    // A change wakes the poll at once: made while the poll waits in the emulator (its third
    // request, unanswered), it is answered far sooner than the poll's 30 s; the bound (5 s)
    // is what a missed wake-up cannot meet, not a speed (it takes milliseconds).
    let state = emu.state();
    let etag = first.etag.clone();
    let poll = tokio::spawn(async move { client.tree(Some((&etag, 30))).await });
    let t = Instant::now();
    while !state
        .requests()
        .get(2)
        .is_some_and(|r| r.status == 0 && r.query.contains("wait_for_change=true"))
    {
        assert!(t.elapsed() < Duration::from_secs(30), "the poll never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = Instant::now();
    state.set_attribute(Scope::Instance, "ssh-keys", "alice:ssh-ed25519 AAAA");
    let changed = poll.await.unwrap().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "woke after {:?}",
        t0.elapsed()
    );
    assert_ne!(changed.etag, first.etag);
    assert_eq!(
        changed.json["instance"]["attributes"]["ssh-keys"],
        "alice:ssh-ed25519 AAAA"
    );
}

#[tokio::test]
async fn single_keys_text_json_and_404() {
    let emu = emulator().await;
    emu.state()
        .set_attribute(Scope::Project, "enable-oslogin", "true");
    let client = gce(&emu);
    assert_eq!(
        client
            .get_text("project/attributes/enable-oslogin")
            .await
            .unwrap(),
        "true"
    );
    let accounts: serde_json::Value = client
        .get_json("instance/service-accounts/default/?recursive=true")
        .await
        .unwrap();
    assert!(accounts["email"].is_string(), "{accounts}");
    let err = client
        .get_text("instance/attributes/absent")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    // 404 is an answer, not a failure to retry: exactly one request was made for it.
    let n = emu
        .state()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/absent"))
        .count();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn an_answer_without_the_flavor_echo_is_not_the_metadata_service() {
    let emu = emulator().await;
    emu.state()
        .add_fault(fault("/computeMetadata/v1/", FaultKind::NoFlavor, None));
    let err = gce(&emu).tree(None).await.unwrap_err();
    assert!(matches!(err, MdsError::NotMetadataServer { .. }), "{err}");
    assert!(err.to_string().contains("Metadata-Flavor"), "{err}");
}

#[tokio::test]
async fn error_statuses_carry_the_status_and_the_start_of_the_body() {
    let emu = emulator().await;
    emu.state().add_fault(fault(
        "/computeMetadata/v1/",
        FaultKind::Status { code: 503 },
        None,
    ));
    let err = gce(&emu).tree(None).await.unwrap_err();
    match &err {
        MdsError::Status {
            status, body_start, ..
        } => {
            assert_eq!(*status, 503);
            assert!(body_start.contains("503"), "{body_start}");
        }
        other => panic!("expected a status error, got {other}"),
    }
    assert_eq!(err.kind(), "status-5xx");
}

#[tokio::test]
async fn non_json_and_wrong_bodies_are_parse_errors() {
    let emu = emulator().await;
    emu.state()
        .add_fault(fault("/computeMetadata/v1/", FaultKind::NonJson, None));
    let err = gce(&emu).tree(None).await.unwrap_err();
    assert!(matches!(err, MdsError::Parse { .. }), "{err}");
}

#[tokio::test]
async fn the_body_cap_is_enforced() {
    let emu = emulator().await;
    emu.state().add_fault(fault(
        "/computeMetadata/v1/",
        FaultKind::Oversize { bytes: 1 << 20 },
        None,
    ));
    let err = GceClient::new(settings(&emu, 2000, 64 << 10))
        .tree(None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, MdsError::TooLarge { limit: 65536, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn the_deadline_holds_against_a_hanging_service() {
    let emu = emulator().await;
    emu.state()
        .add_fault(fault("/computeMetadata/v1/", FaultKind::Hang, None));
    let t0 = Instant::now();
    let err = GceClient::new(settings(&emu, 300, 4 << 20))
        .tree(None)
        .await
        .unwrap_err();
    assert!(matches!(err, MdsError::Timeout { .. }), "{err}");
    // The 300 ms deadline cut the hang: bound 10x that.
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    emu.state().clear_faults();
}

#[tokio::test]
async fn dropped_and_truncated_answers_are_errors() {
    let emu = emulator().await;
    for kind in [FaultKind::Drop, FaultKind::Truncate] {
        emu.state().clear_faults();
        emu.state()
            .add_fault(fault("/computeMetadata/v1/", kind.clone(), None));
        let err = gce(&emu).tree(None).await.unwrap_err();
        assert!(matches!(err, MdsError::Http { .. }), "{kind:?}: {err}");
    }
    emu.state().clear_faults();
    assert!(
        gce(&emu).tree(None).await.is_ok(),
        "recovers when the fault ends"
    );
}

#[tokio::test]
async fn nothing_listening_fails_fast() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    // Long deadlines, so that failing at once (a refused connection: microseconds) and
    // failing at a deadline are far apart whatever the machine's load.
    let client = GceClient::new(ClientSettings {
        endpoint: Endpoint::parse(&format!("http://{addr}")).unwrap(),
        limits: Limits {
            connect_timeout: Duration::from_secs(20),
            max_body_bytes: 1 << 20,
        },
        request_timeout: Duration::from_secs(30),
    });
    let t0 = Instant::now();
    let err = client.tree(None).await.unwrap_err();
    assert!(matches!(err, MdsError::Connect { .. }), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
}

fn ec2(emu: &Running, v1_fallback: bool) -> Ec2Client {
    Ec2Client::new(
        settings(emu, 2000, 4 << 20),
        Duration::from_secs(600),
        v1_fallback,
    )
}

fn count(emu: &Running, method: &str, prefix: &str) -> usize {
    emu.state()
        .requests()
        .iter()
        .filter(|r| r.method == method && r.path.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn ec2_session_is_reused_and_renewed_after_401() {
    let emu = emulator().await;
    emu.state().set_ec2(true, true);
    let client = ec2(&emu, false);
    let id1 = client.get("meta-data/instance-id").await.unwrap();
    let id2 = client.get("meta-data/instance-id").await.unwrap();
    assert_eq!(id1, id2);
    assert!(!id1.is_empty());
    assert_eq!(
        count(&emu, "PUT", "/latest/api/token"),
        1,
        "the session token is reused"
    );
    // The service forgets the session (401): the client takes a new one and retries once.
    emu.state().add_fault(fault(
        "/latest/meta-data/",
        FaultKind::Status { code: 401 },
        Some(1),
    ));
    assert_eq!(client.get("meta-data/instance-id").await.unwrap(), id1);
    assert_eq!(count(&emu, "PUT", "/latest/api/token"), 2);
}

#[tokio::test]
async fn ec2_v1_fallback_only_when_configured() {
    let emu = emulator().await;
    emu.state().add_fault(fault(
        "/latest/api/token",
        FaultKind::Status { code: 403 },
        None,
    ));
    let err = ec2(&emu, false)
        .get("meta-data/instance-id")
        .await
        .unwrap_err();
    assert!(matches!(err, MdsError::Status { status: 403, .. }), "{err}");
    assert!(ec2(&emu, true).get("meta-data/instance-id").await.is_ok());
    // With v1 no session token is sent at all.
    let last = emu
        .state()
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.method == "GET")
        .unwrap();
    assert_eq!(last.path, "/latest/meta-data/instance-id");
}

#[tokio::test]
async fn ec2_credentials_and_disabled_endpoint() {
    let emu = emulator().await;
    let creds: serde_json::Value = ec2(&emu, false)
        .get_json("meta-data/iam/security-credentials/default/")
        .await
        .unwrap();
    assert_eq!(creds["Code"], "Success");
    assert!(creds["Token"].as_str().is_some_and(|t| !t.is_empty()));
    emu.state().set_ec2(false, false);
    let err = ec2(&emu, false)
        .get("meta-data/instance-id")
        .await
        .unwrap_err();
    assert!(matches!(err, MdsError::Status { status: 400, .. }), "{err}");
}
