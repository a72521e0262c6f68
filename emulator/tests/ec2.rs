//! EC2 flavour: IMDSv2 sessions, settings, credentials, user-data.

mod common;

use std::time::Duration;

use common::*;
use guest_agent_emulator::{Ec2Settings, InitialState, Scope};

const TTL: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN: &str = "X-aws-ec2-metadata-token";

async fn session(addr: std::net::SocketAddr, ttl: &str) -> Resp {
    request(addr, "PUT", "/latest/api/token", &[(TTL, ttl)], b"").await
}

#[tokio::test]
async fn imdsv2_sessions() {
    let (emu, addr) = start_default().await;
    let r = session(addr, "60").await;
    assert_eq!(r.status, 200);
    assert!(r.header("Metadata-Flavor").is_none());
    let token = r.text();
    assert!(!token.is_empty());
    let r = request(
        addr,
        "GET",
        "/latest/meta-data/instance-id",
        &[(TOKEN, &token)],
        b"",
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "4520031799277581759"));
    // v1 (no token) is allowed by default.
    let r = request(addr, "GET", "/latest/meta-data/hostname", &[], b"").await;
    assert_eq!((r.status, r.text().as_str()), (200, "emulated-vm.internal"));
    let r = request(addr, "GET", "/latest/meta-data/", &[], b"").await;
    assert!(r.text().lines().any(|l| l == "iam/"), "{}", r.text());
    // Unknown token: 401.
    let r = request(
        addr,
        "GET",
        "/latest/meta-data/instance-id",
        &[(TOKEN, "bogus")],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    // Bad TTLs: 400.
    for ttl in ["0", "21601", "abc", ""] {
        assert_eq!(session(addr, ttl).await.status, 400, "ttl {ttl:?}");
    }
    assert_eq!(
        request(addr, "PUT", "/latest/api/token", &[], b"")
            .await
            .status,
        400
    );
    assert_eq!(session(addr, "21600").await.status, 200);
    // Sessions expire.
    let short = session(addr, "1").await.text();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = request(
        addr,
        "GET",
        "/latest/meta-data/instance-id",
        &[(TOKEN, &short)],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    emu.shutdown().await;
}

#[tokio::test]
async fn require_v2_and_disabled() {
    let initial = InitialState {
        ec2: Some(Ec2Settings {
            enabled: true,
            require_v2: true,
        }),
        ..Default::default()
    };
    let emu = start_with(initial, None).await;
    let addr = emu.metadata_addrs()[0];
    let st = emu.state();
    assert_eq!(
        request(addr, "GET", "/latest/meta-data/instance-id", &[], b"")
            .await
            .status,
        401
    );
    let token = session(addr, "60").await.text();
    assert_eq!(
        request(
            addr,
            "GET",
            "/latest/meta-data/instance-id",
            &[(TOKEN, &token)],
            b""
        )
        .await
        .status,
        200
    );
    st.set_ec2(false, false);
    assert_eq!(
        request(
            addr,
            "GET",
            "/latest/meta-data/instance-id",
            &[(TOKEN, &token)],
            b""
        )
        .await
        .status,
        400
    );
    assert_eq!(
        request(addr, "GET", "/latest/meta-data/instance-id", &[], b"")
            .await
            .status,
        400
    );
    assert_eq!(session(addr, "60").await.status, 400);
    st.set_ec2(true, false);
    assert_eq!(
        request(addr, "GET", "/latest/meta-data/instance-id", &[], b"")
            .await
            .status,
        200
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn credentials_carry_the_gce_token() {
    let (emu, addr) = start_default().await;
    let st = emu.state();
    let r = request(
        addr,
        "GET",
        "/latest/meta-data/iam/security-credentials/",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.text(), "default");
    let v = request(
        addr,
        "GET",
        "/latest/meta-data/iam/security-credentials/default/",
        &[],
        b"",
    )
    .await
    .json();
    assert_eq!(v["Code"], "Success");
    let gce = get(
        addr,
        &format!("{V1}/instance/service-accounts/default/token"),
    )
    .await
    .json();
    assert_eq!(v["Token"], gce["access_token"]);
    let exp = v["Expiration"].as_str().expect("Expiration");
    // 2026-06-28T04:43:32+00:00
    assert_eq!(exp.len(), 25, "{exp}");
    assert!(
        exp.ends_with("+00:00") && exp.as_bytes()[10] == b'T',
        "{exp}"
    );
    let rotated = st.rotate_token("default", 600);
    let v = request(
        addr,
        "GET",
        "/latest/meta-data/iam/security-credentials/default",
        &[],
        b"",
    )
    .await
    .json();
    assert_eq!(v["Token"], rotated.as_str());
    emu.shutdown().await;
}

#[tokio::test]
async fn user_data() {
    let (emu, addr) = start_default().await;
    assert_eq!(
        request(addr, "GET", "/latest/user-data", &[], b"")
            .await
            .status,
        404
    );
    emu.state()
        .set_attribute(Scope::Instance, "user-data", "#cloud-config\nhostname: x\n");
    let r = request(addr, "GET", "/latest/user-data", &[], b"").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "#cloud-config\nhostname: x\n")
    );
    assert_eq!(
        request(addr, "GET", "/latest/meta-data/nothing", &[], b"")
            .await
            .status,
        404
    );
    emu.shutdown().await;
}
