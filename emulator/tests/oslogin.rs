//! OS Login endpoints: users, paging, groups, authorize, certificates, raw answers.

mod common;

use std::path::Path;

use common::*;
use guest_agent_emulator::{
    CertRequest, GroupSpec, InitialState, KeySpec, UserSpec, key_fingerprint,
};
use serde_json::{Value, json};

const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF4L0VOIKPsgyixLsvaOb9bSCVR+jOtGhOaKMA+dHIHw a";
const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEYMZw14KmbNtbEbIZsv61glyPkayhip3+nGsEUJRP1S b";

fn user(name: &str, uid: u32) -> UserSpec {
    UserSpec {
        email: format!("{name}@example.com"),
        username: name.into(),
        uid,
        gid: None,
        home: None,
        shell: None,
        keys: vec![],
        login: true,
        admin: false,
        security_keys: Vec::new(),
        two_factor: Vec::new(),
    }
}

async fn setup() -> (guest_agent_emulator::Running, std::net::SocketAddr) {
    let mut alice = user("alice", 1001);
    alice.keys.push(KeySpec {
        key: KEY_A.into(),
        expiration_usec: Some(1_767_225_600_000_000),
    });
    alice.admin = true;
    let mut bob = user("bob", 1002);
    bob.gid = Some(3000);
    bob.home = Some("/srv/bob".into());
    bob.shell = Some("/bin/zsh".into());
    let initial = InitialState {
        users: vec![
            alice,
            bob,
            user("carol", 1003),
            user("dave", 1004),
            user("erin", 1005),
        ],
        groups: vec![
            GroupSpec {
                name: "devs".into(),
                gid: 4000,
                members: vec!["alice".into(), "bob".into()],
            },
            GroupSpec {
                name: "ops".into(),
                gid: 4001,
                members: vec!["carol".into()],
            },
        ],
        ..Default::default()
    };
    let r = start_with(initial, None).await;
    let addr = r.metadata_addrs()[0];
    (r, addr)
}

fn usernames(page: &Value) -> Vec<String> {
    page["loginProfiles"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    p["posixAccounts"][0]["username"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn users_by_name_and_uid() {
    let (emu, addr) = setup().await;
    let r = get(addr, &format!("{V1}/oslogin/users?username=alice")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Metadata-Flavor"), Some("Google"));
    let fp = key_fingerprint(KEY_A);
    assert_eq!(
        r.json(),
        json!({"loginProfiles":[{
            "name":"alice@example.com",
            "posixAccounts":[{"primary":true,"username":"alice","uid":1001,"gid":1001,
                "homeDirectory":"/home/alice","shell":"/bin/bash",
                "operatingSystemType":"LINUX","accountId":"emulated-project"}],
            "sshPublicKeys":{fp.clone():{"key":KEY_A,"expirationTimeUsec":"1767225600000000","fingerprint":fp}}
        }]})
    );
    let bob = get(addr, &format!("{V1}/oslogin/users?uid=1002"))
        .await
        .json();
    let acct = &bob["loginProfiles"][0]["posixAccounts"][0];
    assert_eq!(
        (acct["username"].as_str(), acct["gid"].as_u64()),
        (Some("bob"), Some(3000))
    );
    assert_eq!(acct["homeDirectory"], "/srv/bob");
    assert_eq!(acct["shell"], "/bin/zsh");
    assert_eq!(bob["loginProfiles"][0]["sshPublicKeys"], json!({}));
    assert_eq!(
        get(addr, &format!("{V1}/oslogin/users?username=zed"))
            .await
            .status,
        404
    );
    assert_eq!(
        get(addr, &format!("{V1}/oslogin/users?uid=4242"))
            .await
            .status,
        404
    );
    // Flavor is required here too.
    let r = request(
        addr,
        "GET",
        &format!("{V1}/oslogin/users?username=alice"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    // Live changes.
    let st = emu.state();
    assert!(st.remove_user("alice"));
    assert!(!st.remove_user("alice"));
    assert_eq!(
        get(addr, &format!("{V1}/oslogin/users?username=alice"))
            .await
            .status,
        404
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn users_paging_last_page_has_profiles() {
    let (emu, addr) = setup().await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let q = if token.is_empty() {
            "pagesize=2".to_owned()
        } else {
            format!("pagesize=2&pagetoken={token}")
        };
        let page = get(addr, &format!("{V1}/oslogin/users?{q}")).await.json();
        pages += 1;
        seen.extend(usernames(&page));
        token = page["nextPageToken"].as_str().expect("token").to_owned();
        if token == "0" {
            assert_eq!(
                usernames(&page),
                ["erin"],
                "the last page carries its profiles"
            );
            break;
        }
        assert!(pages < 10);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["alice", "bob", "carol", "dave", "erin"]);
    let all = get(addr, &format!("{V1}/oslogin/users?pagesize=100"))
        .await
        .json();
    assert_eq!(usernames(&all).len(), 5);
    assert_eq!(all["nextPageToken"], "0");
    emu.shutdown().await;
}

#[tokio::test]
async fn groups_and_members() {
    let (emu, addr) = setup().await;
    let g = |q: String| async move { get(addr, &format!("{V1}/oslogin/{q}")).await };
    assert_eq!(
        g("groups?pagesize=10".into()).await.json(),
        json!({"posixGroups":[{"name":"devs","gid":4000},{"name":"ops","gid":4001}],"nextPageToken":"0"})
    );
    let p1 = g("groups?pagesize=1".into()).await.json();
    assert_eq!(p1["posixGroups"][0]["name"], "devs");
    assert_ne!(p1["nextPageToken"], "0");
    assert_eq!(
        g("groups?groupname=ops".into()).await.json()["posixGroups"][0]["gid"],
        4001
    );
    assert_eq!(
        g("groups?gid=4000".into()).await.json()["posixGroups"][0]["name"],
        "devs"
    );
    assert_eq!(g("groups?gid=1".into()).await.status, 404);
    assert_eq!(
        g("groups?email=bob%40example.com".into()).await.json(),
        json!({"posixGroups":[{"name":"devs","gid":4000}],"nextPageToken":"0"})
    );
    assert_eq!(
        g("users?groupname=devs".into()).await.json(),
        json!({"usernames":["alice","bob"],"nextPageToken":"0"})
    );
    assert_eq!(g("users?groupname=nope".into()).await.status, 404);
    emu.state().upsert_group(GroupSpec {
        name: "ops".into(),
        gid: 4001,
        members: vec!["carol".into(), "dave".into()],
    });
    assert_eq!(
        g("users?groupname=ops".into()).await.json()["usernames"],
        json!(["carol", "dave"])
    );
    assert!(emu.state().remove_group("ops"));
    assert_eq!(g("groups?groupname=ops".into()).await.status, 404);
    emu.shutdown().await;
}

async fn authorized(addr: std::net::SocketAddr, q: &str) -> bool {
    let r = get(addr, &format!("{V1}/oslogin/authorize?{q}")).await;
    assert_eq!(r.status, 200, "{q}");
    match r.json()["success"] {
        Value::Bool(b) => b,
        ref other => panic!("success is {other}"),
    }
}

#[tokio::test]
async fn authorize_follows_roles_and_fingerprints() {
    let (emu, addr) = setup().await;
    let st = emu.state();
    let a = "email=alice%40example.com";
    assert!(authorized(addr, &format!("{a}&policy=login")).await);
    assert!(authorized(addr, &format!("{a}&policy=adminLogin")).await);
    assert!(authorized(addr, "email=bob%40example.com&policy=login").await);
    assert!(!authorized(addr, "email=bob%40example.com&policy=adminLogin").await);
    assert!(!authorized(addr, "email=zed%40example.com&policy=login").await);
    assert!(!authorized(addr, &format!("{a}&policy=somethingElse")).await);

    // Fingerprints: a registered key, a certificate id, or nothing.
    // (KEY_A expires in 2026: give it a far expiry for this test.)
    assert!(st.add_key("alice", KEY_A, None));
    let fp = key_fingerprint(KEY_A);
    assert!(authorized(addr, &format!("{a}&policy=login&fingerprint={fp}")).await);
    assert!(
        !authorized(
            addr,
            &format!("{a}&policy=login&fingerprint={}", key_fingerprint(KEY_B))
        )
        .await
    );
    let cert = st
        .sign_certificate(CertRequest::new("alice", KEY_B))
        .expect("signed");
    let parsed = ssh_key::Certificate::from_openssh(&cert).expect("cert parses");
    let id = parsed
        .extensions()
        .keys()
        .find_map(|k| k.strip_prefix("fingerprint@google.com="))
        .expect("fingerprint extension")
        .to_owned();
    assert_eq!(parsed.valid_principals(), ["alice".to_owned()]);
    assert!(authorized(addr, &format!("{a}&policy=login&fingerprint={id}")).await);
    // The id belongs to alice only.
    assert!(
        !authorized(
            addr,
            &format!("email=bob%40example.com&policy=login&fingerprint={id}")
        )
        .await
    );
    assert!(st.sign_certificate(CertRequest::new("zed", KEY_B)).is_err());
    assert!(
        st.sign_certificate(CertRequest::new("alice", "not a key"))
            .is_err()
    );

    // Roles are live.
    assert!(st.set_roles("alice", false, true));
    assert!(!authorized(addr, &format!("{a}&policy=login")).await);
    assert!(!authorized(addr, &format!("{a}&policy=login&fingerprint={id}")).await);
    assert!(authorized(addr, &format!("{a}&policy=adminLogin&fingerprint={id}")).await);
    assert!(st.set_roles("alice", true, false));
    assert!(!authorized(addr, &format!("{a}&policy=adminLogin")).await);
    assert!(!st.set_roles("zed", true, true));
    assert!(st.remove_key("alice", KEY_A));
    assert!(!authorized(addr, &format!("{a}&policy=login&fingerprint={fp}")).await);
    emu.shutdown().await;
}

#[tokio::test]
async fn certificates_follow_rotation() {
    let (emu, addr) = setup().await;
    let st = emu.state();
    let cas = get(addr, &format!("{V1}/oslogin/certificates"))
        .await
        .json();
    let first = cas["trustedCertificateAuthorities"][0]["publicKey"]
        .as_str()
        .expect("key")
        .to_owned();
    assert!(
        first.starts_with("ssh-ed25519 AAAA") && first.ends_with(" emulator-ca"),
        "{first}"
    );
    assert_eq!(st.ca_public_keys(), vec![first.clone()]);
    let cert = st
        .sign_certificate(CertRequest::new("bob", KEY_A))
        .expect("signed");
    let rotated = st.rotate_ca();
    assert_ne!(rotated, first);
    let cas = get(addr, &format!("{V1}/oslogin/certificates"))
        .await
        .json();
    assert_eq!(
        cas,
        json!({"trustedCertificateAuthorities":[{"publicKey": rotated}]})
    );
    // The old certificate was signed by the old CA.
    let old = ssh_key::Certificate::from_openssh(&cert).expect("parse");
    let new_ca = ssh_key::PublicKey::from_openssh(&rotated).expect("ca");
    assert!(
        old.validate(&[new_ca.fingerprint(Default::default())])
            .is_err()
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn raw_user_answers_serve_fixtures_verbatim() {
    let (emu, addr) = setup().await;
    // A string-uid profile from guest-oslogin's tests (see /work/shared/fixtures/oslogin).
    let fixture = Path::new(
        "/work/shared/fixtures/oslogin/profiles/ParseJsonPasswdTest.ParseJsonToPasswdSucceedsWithStringUid.test_user.json",
    );
    let body = std::fs::read_to_string(fixture).unwrap_or_else(|_| {
        r#"{"loginProfiles":[{"name":"foo@example.com","posixAccounts":[{"primary":true,"username":"foo","uid":"1337","gid":"1338","homeDirectory":"/home/foo","shell":"/bin/bash"}]}]}"#.to_owned()
    });
    let st = emu.state();
    st.set_raw_user_response("username=foo", 200, body.clone());
    st.set_raw_user_response("uid=1337", 200, body.clone());
    st.set_raw_user_response("username=broken", 500, "<html>oops</html>".into());
    let r = get(addr, &format!("{V1}/oslogin/users?username=foo")).await;
    assert_eq!((r.status, r.text()), (200, body.clone()));
    assert_eq!(
        get(addr, &format!("{V1}/oslogin/users?uid=1337"))
            .await
            .text(),
        body
    );
    let r = get(addr, &format!("{V1}/oslogin/users?username=broken")).await;
    assert_eq!((r.status, r.text().as_str()), (500, "<html>oops</html>"));
    // Other queries are unaffected.
    assert_eq!(
        get(addr, &format!("{V1}/oslogin/users?username=alice"))
            .await
            .status,
        200
    );
    emu.shutdown().await;
}
