//! The control interface, over a Unix socket (as tests in another namespace use it) and TCP.

mod common;

use std::path::PathBuf;

use common::*;
use guest_agent_emulator::{ControlListen, InitialState, key_fingerprint};
use serde_json::json;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF4L0VOIKPsgyixLsvaOb9bSCVR+jOtGhOaKMA+dHIHw a";

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "mds-emu-{name}-{}-{}.sock",
        std::process::id(),
        fastrand::u64(..)
    ))
}

#[tokio::test]
async fn control_over_unix_socket() {
    let sock = socket_path("ctl");
    let emu = start_with(
        InitialState::default(),
        Some(ControlListen::Unix(sock.clone())),
    )
    .await;
    assert_eq!(emu.control_addr(), Some(ControlListen::Unix(sock.clone())));
    let addr = emu.metadata_addrs()[0];
    let c = |m: &'static str, r: &'static str, b: &'static str| {
        let sock = sock.clone();
        async move { unix(&sock, m, r, b).await }
    };

    // Tree and attributes.
    let (s, tree) = c("GET", "/tree", "").await;
    assert_eq!(s, 200);
    assert_eq!(tree["instance"]["hostname"], "emulated-vm.internal");
    let (_, e1) = c("GET", "/etag", "").await;
    let (s, _) = c(
        "PUT",
        "/attributes/instance/ssh-keys",
        "alice:ssh-ed25519 AAAA alice",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        get(addr, &format!("{V1}/instance/attributes/ssh-keys"))
            .await
            .text(),
        "alice:ssh-ed25519 AAAA alice"
    );
    let (_, e2) = c("GET", "/etag", "").await;
    assert_ne!(e1, e2);
    assert_eq!(e2["etag"].as_str(), Some(emu.state().etag().as_str()));
    let (s, _) = c("DELETE", "/attributes/instance/ssh-keys", "").await;
    assert_eq!(s, 200);
    assert_eq!(
        get(addr, &format!("{V1}/instance/attributes/ssh-keys"))
            .await
            .status,
        404
    );
    assert_eq!(c("PUT", "/attributes/galaxy/k", "v").await.0, 400);
    let (s, _) = c(
        "PUT",
        "/tree",
        r#"{"instance":{"id":"fhm1","attributes":{}},"project":{"projectId":""}}"#,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(get(addr, &format!("{V1}/instance/id")).await.text(), "fhm1");
    assert_eq!(c("PUT", "/tree", "[1]").await.0, 400);
    assert_eq!(c("PUT", "/tree", "{nope").await.0, 400);
    let (_, tree) = c("GET", "/tree", "").await;
    assert_eq!(tree["project"], json!({"projectId": ""}));
    let default: &'static str = Box::leak(
        guest_agent_emulator::default_tree()
            .to_string()
            .into_boxed_str(),
    );
    assert_eq!(c("PUT", "/tree", default).await.0, 200);

    // Faults (flattened JSON form) and requests.
    assert_eq!(c("POST", "/faults", r#"{"path_prefix":"/computeMetadata/v1/instance/","kind":"status","code":418,"count":1}"#).await.0, 200);
    assert_eq!(get(addr, &format!("{V1}/instance/id")).await.status, 418);
    assert_eq!(
        c(
            "POST",
            "/faults",
            r#"{"path_prefix":"/","kind":{"kind":"status","code":500}}"#
        )
        .await
        .0,
        200
    );
    let (_, faults) = c("GET", "/faults", "").await;
    assert_eq!(faults.as_array().map(Vec::len), Some(1));
    assert_eq!(get(addr, &format!("{V1}/instance/id")).await.status, 500);
    assert_eq!(c("DELETE", "/faults", "").await.0, 200);
    assert_eq!(get(addr, &format!("{V1}/instance/id")).await.status, 200);
    assert_eq!(c("POST", "/faults", r#"{"kind":"explode"}"#).await.0, 400);
    get(addr, "/latest/meta-data/").await;
    let (_, reqs) = c("GET", "/requests?path_prefix=/latest", "").await;
    assert_eq!(reqs["count"], 1);
    assert_eq!(reqs["requests"][0]["path"], "/latest/meta-data/");
    let (_, reqs) = c("GET", "/requests", "").await;
    assert!(reqs["count"].as_u64().unwrap_or(0) >= 5);
    assert_eq!(reqs["requests"][0]["status"], 200);
    assert_eq!(c("DELETE", "/requests", "").await.0, 200);
    assert_eq!(c("GET", "/requests", "").await.1["count"], 0);

    // OS Login.
    let (s, _) = c(
        "POST",
        "/oslogin/users",
        r#"{"email":"bob@example.com","username":"bob","uid":1500}"#,
    )
    .await;
    assert_eq!(s, 200);
    let profile = get(addr, &format!("{V1}/oslogin/users?username=bob"))
        .await
        .json();
    assert_eq!(profile["loginProfiles"][0]["posixAccounts"][0]["gid"], 1500);
    let key_body: &'static str =
        Box::leak(format!(r#"{{"key":"{KEY}","expiration_usec":null}}"#).into_boxed_str());
    assert_eq!(c("POST", "/oslogin/users/bob/keys", key_body).await.0, 200);
    let fp = key_fingerprint(KEY);
    let profile = get(addr, &format!("{V1}/oslogin/users?uid=1500"))
        .await
        .json();
    assert_eq!(
        profile["loginProfiles"][0]["sshPublicKeys"][&fp]["key"],
        KEY
    );
    let authz = format!(
        "{V1}/oslogin/authorize?email=bob%40example.com&policy=adminLogin&fingerprint={fp}"
    );
    assert_eq!(get(addr, &authz).await.json(), json!({"success": false}));
    assert_eq!(
        c(
            "PUT",
            "/oslogin/users/bob/roles",
            r#"{"login":true,"admin":true}"#
        )
        .await
        .0,
        200
    );
    assert_eq!(get(addr, &authz).await.json(), json!({"success": true}));
    assert_eq!(
        c(
            "PUT",
            "/oslogin/users/zed/roles",
            r#"{"login":true,"admin":true}"#
        )
        .await
        .0,
        404
    );
    let key_ref: &'static str = Box::leak(format!(r#"{{"key":"{KEY}"}}"#).into_boxed_str());
    assert_eq!(c("DELETE", "/oslogin/users/bob/keys", key_ref).await.0, 200);
    assert_eq!(c("DELETE", "/oslogin/users/bob/keys", key_ref).await.0, 404);
    assert_eq!(
        c(
            "POST",
            "/oslogin/groups",
            r#"{"name":"g","gid":7000,"members":["bob"]}"#
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(addr, &format!("{V1}/oslogin/users?groupname=g"))
            .await
            .json()["usernames"],
        json!(["bob"])
    );
    assert_eq!(c("DELETE", "/oslogin/groups/g", "").await.0, 200);
    assert_eq!(c("DELETE", "/oslogin/groups/g", "").await.0, 404);
    assert_eq!(
        c(
            "PUT",
            "/oslogin/raw",
            r#"{"query":"username=raw","status":200,"body":"{\"loginProfiles\":[]}"}"#
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(addr, &format!("{V1}/oslogin/users?username=raw"))
            .await
            .text(),
        r#"{"loginProfiles":[]}"#
    );

    // CA.
    let (_, ca) = c("GET", "/ca", "").await;
    let before = ca["public_keys"][0].as_str().expect("key").to_owned();
    let (_, rotated) = c("POST", "/ca/rotate", "").await;
    let after = rotated["public_key"].as_str().expect("key").to_owned();
    assert_ne!(before, after);
    let sign_body: &'static str =
        Box::leak(format!(r#"{{"username":"bob","public_key":"{KEY}"}}"#).into_boxed_str());
    let (s, cert) = c("POST", "/ca/sign", sign_body).await;
    assert_eq!(s, 200, "{cert}");
    assert!(
        cert["certificate"]
            .as_str()
            .unwrap_or("")
            .starts_with("ssh-ed25519-cert-v01@openssh.com ")
    );
    assert_eq!(
        c(
            "POST",
            "/ca/sign",
            r#"{"username":"nobody","public_key":"x"}"#
        )
        .await
        .0,
        400
    );

    // Tokens and EC2.
    let (_, t) = c("POST", "/tokens/default/rotate", r#"{"expires_in":100}"#).await;
    let token = t["token"].as_str().expect("token").to_owned();
    let (_, got) = c("GET", "/tokens/default", "").await;
    assert_eq!(got["token"].as_str(), Some(token.as_str()));
    let v = get(
        addr,
        &format!("{V1}/instance/service-accounts/default/token"),
    )
    .await
    .json();
    assert_eq!(v["access_token"].as_str(), Some(token.as_str()));
    assert_eq!(c("GET", "/tokens/nobody", "").await.0, 404);
    assert_eq!(
        c("PUT", "/ec2", r#"{"enabled":false,"require_v2":false}"#)
            .await
            .0,
        200
    );
    assert_eq!(
        request(addr, "GET", "/latest/meta-data/", &[], b"")
            .await
            .status,
        400
    );

    assert_eq!(c("GET", "/no/such/route", "").await.0, 404);
    emu.shutdown().await;
    assert!(!sock.exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn control_over_tcp() {
    let emu = start_with(
        InitialState::default(),
        Some(ControlListen::Tcp("127.0.0.1:0".parse().expect("addr"))),
    )
    .await;
    let Some(ControlListen::Tcp(ctl)) = emu.control_addr() else {
        panic!("tcp control address");
    };
    assert_ne!(ctl.port(), 0);
    let r = request(
        ctl,
        "PUT",
        "/attributes/project/enable-oslogin",
        &[],
        b"true",
    )
    .await;
    assert_eq!(r.status, 200);
    let addr = emu.metadata_addrs()[0];
    assert_eq!(
        get(addr, &format!("{V1}/project/attributes/enable-oslogin"))
            .await
            .text(),
        "true"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn stale_socket_is_replaced_but_files_are_not() {
    let sock = socket_path("stale");
    // What a crashed emulator leaves behind: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists());
    let emu = start_with(
        InitialState::default(),
        Some(ControlListen::Unix(sock.clone())),
    )
    .await;
    assert_eq!(unix(&sock, "GET", "/etag", "").await.0, 200);
    emu.shutdown().await;

    let file = socket_path("file");
    std::fs::write(&file, "precious").expect("write");
    let err = guest_agent_emulator::start(guest_agent_emulator::EmulatorOptions {
        metadata_listen: vec![],
        control: Some(ControlListen::Unix(file.clone())),
        initial: InitialState::default(),
    })
    .await;
    assert!(err.is_err());
    assert_eq!(
        std::fs::read_to_string(&file).ok().as_deref(),
        Some("precious")
    );
    let _ = std::fs::remove_file(&file);
}
