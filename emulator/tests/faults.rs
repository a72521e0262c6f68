//! Every fault kind, observed from the client side, and the request log.

mod common;

use std::time::{Duration, Instant};

use common::*;
use guest_agent_emulator::{Fault, FaultKind};

fn fault(prefix: &str, kind: FaultKind, count: Option<u32>) -> Fault {
    Fault {
        path_prefix: prefix.into(),
        kind,
        count,
    }
}

fn hostname() -> String {
    format!("{V1}/instance/hostname")
}

#[tokio::test]
async fn status_fault_counts_down() {
    let (emu, addr) = start_default().await;
    emu.state()
        .add_fault(fault(V1, FaultKind::Status { code: 503 }, Some(2)));
    for _ in 0..2 {
        let r = get(addr, &hostname()).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.text(), "<html><body>Error 503</body></html>");
        assert_eq!(r.header("Metadata-Flavor"), Some("Google"));
    }
    assert_eq!(get(addr, &hostname()).await.status, 200);
    assert!(emu.state().faults().is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn faults_apply_by_prefix_first_match_wins() {
    let (emu, addr) = start_default().await;
    let st = emu.state();
    st.add_fault(fault(
        &format!("{V1}/oslogin/"),
        FaultKind::Status { code: 429 },
        None,
    ));
    st.add_fault(fault("/", FaultKind::Status { code: 500 }, None));
    assert_eq!(
        get(addr, &format!("{V1}/oslogin/users?username=x"))
            .await
            .status,
        429
    );
    assert_eq!(get(addr, &hostname()).await.status, 500);
    st.clear_faults();
    assert_eq!(get(addr, &hostname()).await.status, 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn delay_then_normal() {
    let (emu, addr) = start_default().await;
    emu.state()
        .add_fault(fault("/", FaultKind::Delay { ms: 300 }, Some(1)));
    let t = Instant::now();
    let r = get(addr, &hostname()).await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!((r.status, r.text().as_str()), (200, "emulated-vm.internal"));
    emu.shutdown().await;
}

#[tokio::test]
async fn hang_until_cleared() {
    let (emu, addr) = start_default().await;
    let st = emu.state();
    st.add_fault(fault("/", FaultKind::Hang, Some(1)));
    let req = tokio::spawn(async move { get(addr, &format!("{V1}/instance/hostname")).await });
    wait_recorded(&st, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!req.is_finished(), "hangs");
    // The fault used its count, yet the hung request waits for a clear.
    assert!(st.faults().is_empty());
    assert_eq!(get(addr, &hostname()).await.status, 200);
    st.clear_faults();
    let r = tokio::time::timeout(Duration::from_secs(10), req)
        .await
        .expect("released")
        .expect("task");
    assert_eq!(r.status, 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn hang_ends_when_client_leaves() {
    let (emu, addr) = start_default().await;
    emu.state().add_fault(fault("/", FaultKind::Hang, None));
    let req = tokio::spawn(async move { get(addr, &hostname()).await });
    wait_recorded(&emu.state(), 1).await;
    req.abort();
    let _ = req.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    emu.state().clear_faults();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let recs = emu.state().requests();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].status, 0, "never answered");
    emu.shutdown().await;
}

#[tokio::test]
async fn drop_closes_without_answer() {
    let (emu, addr) = start_default().await;
    emu.state().add_fault(fault("/", FaultKind::Drop, Some(1)));
    let bytes = raw(addr, build("GET", &hostname(), &[FLAVOR], b"")).await;
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    assert_eq!(get(addr, &hostname()).await.status, 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn truncate_sends_half_the_body() {
    let (emu, addr) = start_default().await;
    emu.state()
        .add_fault(fault("/", FaultKind::Truncate, Some(1)));
    let path = format!("{V1}/?recursive=true&alt=json");
    let r = get(addr, &path).await;
    assert_eq!(r.status, 200);
    let full = r.content_length().expect("Content-Length");
    assert_eq!(r.body.len(), full / 2);
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());
    assert_eq!(get(addr, &path).await.body.len(), full);
    emu.shutdown().await;
}

#[tokio::test]
async fn canned_bodies() {
    let (emu, addr) = start_default().await;
    let st = emu.state();
    st.add_fault(fault("/", FaultKind::Oversize { bytes: 200_000 }, Some(1)));
    st.add_fault(fault("/", FaultKind::NonJson, Some(1)));
    st.add_fault(fault("/", FaultKind::WrongShape, Some(1)));
    st.add_fault(fault("/", FaultKind::NoFlavor, Some(1)));
    let path = format!("{V1}/?recursive=true&alt=json");

    let r = get(addr, &path).await;
    assert_eq!((r.status, r.body.len()), (200, 200_000));
    assert!(r.json().is_object());
    assert_eq!(r.header("Metadata-Flavor"), Some("Google"));

    let r = get(addr, &path).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Metadata-Flavor"), Some("Google"));
    assert!(r.text().starts_with("<html>"));
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());

    let r = get(addr, &path).await;
    assert_eq!(r.json(), serde_json::json!(["not", "a", "tree"]));
    assert_eq!(r.header("Metadata-Flavor"), Some("Google"));

    let r = get(addr, &path).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Metadata-Flavor"), None);
    assert_eq!(r.json(), st.tree());

    assert_eq!(
        get(addr, &path).await.header("Metadata-Flavor"),
        Some("Google")
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn slow_body_dribbles() {
    let (emu, addr) = start_default().await;
    emu.state().add_fault(fault(
        "/",
        FaultKind::SlowBody {
            bytes_per_sec: 1000,
        },
        Some(1),
    ));
    let path = format!("{V1}/?recursive=true&alt=json");
    let t = Instant::now();
    let r = get(addr, &path).await;
    let took = t.elapsed();
    let expected = Duration::from_secs_f64(r.body.len() as f64 / 1000.0);
    assert!(r.body.len() > 300);
    assert!(
        took >= expected.mul_f64(0.8),
        "{took:?} for {} bytes",
        r.body.len()
    );
    assert_eq!(r.json(), emu.state().tree());
    emu.shutdown().await;
}

#[tokio::test]
async fn etag_churn() {
    let (emu, addr) = start_default().await;
    let st = emu.state();
    st.add_fault(fault("/", FaultKind::EtagChurn, None));
    let path = format!("{V1}/?recursive=true&alt=json");
    let a = get(addr, &path).await.etag();
    let b = get(addr, &path).await.etag();
    assert_ne!(a, b);
    let etag = st.etag();
    let t = Instant::now();
    let r = get(
        addr,
        &format!("{path}&wait_for_change=true&last_etag={etag}&timeout_sec=30"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "long poll answered at once"
    );
    assert_ne!(r.etag(), etag);
    emu.shutdown().await;
}

#[tokio::test]
async fn request_log_records_everything_in_order() {
    let (emu, addr) = start_default().await;
    let st = emu.state();
    get(addr, &format!("{V1}/instance/id?alt=json")).await;
    request(addr, "GET", &hostname(), &[], b"").await;
    st.add_fault(fault("/", FaultKind::Status { code: 502 }, Some(1)));
    get(addr, &hostname()).await;
    st.add_fault(fault("/", FaultKind::Drop, Some(1)));
    raw(addr, build("GET", "/latest/meta-data/", &[], b"")).await;
    request(
        addr,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "5")],
        b"",
    )
    .await;
    let recs = st.requests();
    let got: Vec<(&str, &str, &str, bool, u16)> = recs
        .iter()
        .map(|r| {
            (
                r.method.as_str(),
                r.path.as_str(),
                r.query.as_str(),
                r.flavor_header,
                r.status,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "GET",
                "/computeMetadata/v1/instance/id",
                "alt=json",
                true,
                200
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/hostname",
                "",
                false,
                403
            ),
            (
                "GET",
                "/computeMetadata/v1/instance/hostname",
                "",
                true,
                502
            ),
            ("GET", "/latest/meta-data/", "", false, 0),
            ("PUT", "/latest/api/token", "", false, 200),
        ]
    );
    assert!(recs.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    st.clear_requests();
    assert!(st.requests().is_empty());
    emu.shutdown().await;
}
