//! GCE flavour: flavor header, tree answers, etags, long polls, tokens.

mod common;

use std::time::{Duration, Instant};

use common::*;
use guest_agent_emulator::Scope;

#[tokio::test]
async fn flavor_is_required_and_echoed() {
    let (emu, addr) = start_default().await;
    let r = request(addr, "GET", &format!("{V1}/instance/hostname"), &[], b"").await;
    assert_eq!(r.status, 403);
    assert!(!r.body.is_empty());
    let r = get(addr, &format!("{V1}/instance/hostname")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Metadata-Flavor"), Some("Google"));
    assert!(r.header("ETag").is_some());
    assert_eq!(r.text(), "emulated-vm.internal");
    let r = request(
        addr,
        "GET",
        &format!("{V1}/instance/hostname"),
        &[FLAVOR, ("X-Forwarded-For", "10.0.0.1")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = request(
        addr,
        "GET",
        &format!("{V1}/instance/hostname"),
        &[("Metadata-Flavor", "Amazon")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    emu.shutdown().await;
}

#[tokio::test]
async fn listings_leaves_and_json() {
    let (emu, addr) = start_default().await;
    let st = emu.state();
    st.set_attribute(Scope::Instance, "ssh-keys", "alice:ssh-ed25519 AAAA alice");
    st.set_attribute(Scope::Project, "enable-oslogin", "TRUE");

    let r = get(addr, &format!("{V1}/instance/")).await;
    assert_eq!(r.status, 200);
    let lines: Vec<String> = r.text().lines().map(str::to_owned).collect();
    for want in [
        "attributes/",
        "hostname",
        "id",
        "name",
        "zone",
        "service-accounts/",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "{want} missing from {lines:?}"
        );
    }
    let r = get(addr, &format!("{V1}/instance/attributes/")).await;
    assert_eq!(r.text(), "ssh-keys\n");
    let r = get(addr, &format!("{V1}/instance/attributes/ssh-keys")).await;
    assert_eq!(r.text(), "alice:ssh-ed25519 AAAA alice");
    let r = get(addr, &format!("{V1}/instance/attributes/ssh-keys?alt=json")).await;
    assert_eq!(r.json(), serde_json::json!("alice:ssh-ed25519 AAAA alice"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let r = get(addr, &format!("{V1}/project/project-id")).await;
    assert_eq!(r.text(), "emulated-project");
    let r = get(addr, &format!("{V1}/project/numeric-project-id")).await;
    assert_eq!(r.text(), "123456789");
    let r = get(addr, &format!("{V1}/instance/zone")).await;
    assert_eq!(r.text(), "projects/123456789/zones/emulated-zone-a");

    let r = get(addr, &format!("{V1}/?recursive=true&alt=json")).await;
    let tree = r.json();
    assert_eq!(
        tree["instance"]["attributes"]["ssh-keys"],
        "alice:ssh-ed25519 AAAA alice"
    );
    assert_eq!(tree["project"]["attributes"]["enable-oslogin"], "TRUE");
    assert_eq!(
        tree["instance"]["serviceAccounts"]["default"]["aliases"][0],
        "default"
    );
    assert!(tree["project"]["projectId"].is_string());
    assert!(tree.get("oslogin").is_none());
    assert!(!r.text().contains("access_token"));
    assert_eq!(tree, st.tree());

    let r = get(addr, &format!("{V1}/instance/?recursive=true&alt=json")).await;
    assert_eq!(r.json(), st.tree()["instance"]);
    assert_eq!(get(addr, &format!("{V1}/instance/nope")).await.status, 404);
    assert_eq!(
        get(addr, &format!("{V1}/instance/attributes/sshKeys"))
            .await
            .status,
        404
    );
    assert_eq!(get(addr, "/nothing/here").await.status, 404);
    emu.shutdown().await;
}

#[tokio::test]
async fn etags_follow_content() {
    let (emu, addr) = start_default().await;
    let st = emu.state();
    let root = format!("{V1}/?recursive=true&alt=json");
    let project = format!("{V1}/project/?recursive=true&alt=json");
    let e1 = get(addr, &root).await.etag();
    let p1 = get(addr, &project).await.etag();
    assert_eq!(e1, get(addr, &root).await.etag(), "stable without change");
    assert_eq!(e1, st.etag());
    st.set_attribute(Scope::Instance, "k", "v");
    let e2 = get(addr, &root).await.etag();
    assert_ne!(e1, e2);
    assert_eq!(
        p1,
        get(addr, &project).await.etag(),
        "project subtree untouched"
    );
    st.set_attribute(Scope::Instance, "k", "v");
    assert_eq!(e2, get(addr, &root).await.etag(), "same value, same etag");
    st.remove_attribute(Scope::Instance, "k");
    assert_eq!(e1, get(addr, &root).await.etag(), "content-addressed");
    emu.shutdown().await;
}

#[tokio::test]
async fn wait_for_change_holds_then_wakes_fast() {
    let (emu, addr) = start_default().await;
    let st = emu.state();
    let etag = st.etag();
    let path = format!(
        "{V1}/?recursive=true&alt=json&wait_for_change=true&last_etag={etag}&timeout_sec=30"
    );
    let poll = tokio::spawn(async move { (get(addr, &path).await, Instant::now()) });
    wait_recorded(&st, 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!poll.is_finished(), "held while nothing changes");
    st.set_attribute(Scope::Instance, "x", "1");
    let changed_at = Instant::now();
    let (r, answered_at) = poll.await.expect("poll task");
    let lag = answered_at.duration_since(changed_at);
    // Milliseconds; the bound is what a missed wake-up (answered at the 30 s timeout) cannot
    // meet, not a speed a loaded machine might miss.
    assert!(lag < Duration::from_secs(5), "woke after {lag:?}");
    assert_eq!(r.status, 200);
    assert_ne!(r.etag(), etag);
    assert_eq!(r.json()["instance"]["attributes"]["x"], "1");
    emu.shutdown().await;
}

#[tokio::test]
async fn wait_for_change_answers_at_once_without_current_etag() {
    let (emu, addr) = start_default().await;
    for last in ["NONE", "0123456789abcdef"] {
        let t = Instant::now();
        let r = get(
            addr,
            &format!(
                "{V1}/?recursive=true&alt=json&wait_for_change=true&last_etag={last}&timeout_sec=30"
            ),
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_secs(2), "{last}");
    }
    let t = Instant::now();
    get(
        addr,
        &format!("{V1}/?recursive=true&alt=json&wait_for_change=true&timeout_sec=30"),
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(2));
    emu.shutdown().await;
}

#[tokio::test]
async fn wait_for_change_times_out_with_current_value() {
    let (emu, addr) = start_default().await;
    let etag = emu.state().etag();
    let t = Instant::now();
    let r = get(
        addr,
        &format!(
            "{V1}/?recursive=true&alt=json&wait_for_change=true&last_etag={etag}&timeout_sec=1"
        ),
    )
    .await;
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.etag(), etag);
    // Never before the 1 s timeout; after it within 10x.
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let bad = get(
        addr,
        &format!("{V1}/?wait_for_change=true&last_etag={etag}&timeout_sec=soon"),
    )
    .await;
    assert_eq!(bad.status, 400);
    emu.shutdown().await;
}

#[tokio::test]
async fn per_key_long_poll_sees_only_its_key() {
    let (emu, addr) = start_default().await;
    let st = emu.state();
    st.set_attribute(Scope::Instance, "ssh-keys", "a");
    let key = format!("{V1}/instance/attributes/ssh-keys");
    let etag = get(addr, &key).await.etag();
    let path = format!("{key}?wait_for_change=true&last_etag={etag}&timeout_sec=30");
    let poll = tokio::spawn(async move { get(addr, &path).await });
    wait_recorded(&st, 2).await;
    st.set_attribute(Scope::Project, "other", "1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "other keys do not wake a per-key poll");
    st.set_attribute(Scope::Instance, "ssh-keys", "b");
    let r = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("woken")
        .expect("task");
    assert_eq!(r.text(), "b");
    assert_ne!(r.etag(), etag);
    emu.shutdown().await;
}

#[tokio::test]
async fn abandoned_long_poll_is_recorded_unanswered() {
    let (emu, addr) = start_default().await;
    let etag = emu.state().etag();
    let path = format!("{V1}/?recursive=true&wait_for_change=true&last_etag={etag}");
    let poll = tokio::spawn(async move { get(addr, &path).await });
    wait_recorded(&emu.state(), 1).await;
    poll.abort();
    let _ = poll.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let recs = emu.state().requests();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].status, 0);
    // The emulator still serves.
    assert_eq!(get(addr, &format!("{V1}/instance/id")).await.status, 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn service_account_tokens() {
    let (emu, addr) = start_default().await;
    let st = emu.state();
    let r = get(addr, &format!("{V1}/instance/service-accounts/")).await;
    let list = r.text();
    assert!(list.lines().any(|l| l == "default/"), "{list}");
    let email = get(
        addr,
        &format!("{V1}/instance/service-accounts/default/email"),
    )
    .await
    .text();
    assert!(email.contains('@'));
    assert!(list.lines().any(|l| l == format!("{email}/")), "{list}");
    let scopes = get(
        addr,
        &format!("{V1}/instance/service-accounts/default/scopes"),
    )
    .await
    .text();
    assert!(scopes.lines().count() >= 1 && scopes.starts_with("https://"));

    let tok = get(
        addr,
        &format!("{V1}/instance/service-accounts/default/token"),
    )
    .await;
    assert_eq!(tok.status, 200);
    assert_eq!(tok.header("Metadata-Flavor"), Some("Google"));
    let v = tok.json();
    assert_eq!(v["token_type"], "Bearer");
    let first = v["access_token"].as_str().expect("token").to_owned();
    assert!(first.len() > 16);
    let left = v["expires_in"].as_u64().expect("expires_in");
    assert!((3500..=3599).contains(&left), "{left}");
    assert_eq!(st.token("default").as_deref(), Some(first.as_str()));
    let by_email = get(
        addr,
        &format!("{V1}/instance/service-accounts/{email}/token"),
    )
    .await
    .json();
    assert_eq!(by_email["access_token"], first.as_str());

    let rotated = st.rotate_token("default", 120);
    assert_ne!(rotated, first);
    let v = get(
        addr,
        &format!("{V1}/instance/service-accounts/default/token"),
    )
    .await
    .json();
    assert_eq!(v["access_token"], rotated.as_str());
    assert!(v["expires_in"].as_u64().expect("n") <= 120);
    // An expired token is replaced by itself.
    let short = st.rotate_token("default", 0);
    let v = get(
        addr,
        &format!("{V1}/instance/service-accounts/default/token"),
    )
    .await
    .json();
    assert_ne!(v["access_token"], short.as_str());
    assert_eq!(
        get(
            addr,
            &format!("{V1}/instance/service-accounts/nobody/token")
        )
        .await
        .status,
        404
    );
    assert_eq!(st.token("nobody"), None);
    emu.shutdown().await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_per_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (emu, addr) = start_default().await;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let one =
        format!("GET {V1}/instance/name HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\n\r\n");
    let two = String::from_utf8(build(
        "GET",
        &format!("{V1}/instance/hostname"),
        &[FLAVOR],
        b"",
    ))
    .expect("utf8");
    s.write_all(format!("{one}{two}").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(CLIENT_DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(
        text.contains("emulated-vm\r\n") || text.contains("\r\n\r\nemulated-vmHTTP"),
        "{text}"
    );
    assert!(text.ends_with("emulated-vm.internal"), "{text}");
    emu.shutdown().await;
}
