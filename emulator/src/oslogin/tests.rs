//! Unit tests of the OS Login directory.

use super::*;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF4L0VOIKPsgyixLsvaOb9bSCVR+jOtGhOaKMA+dHIHw test";

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

fn ask(d: &Directory, endpoint: &str, q: &str) -> (u16, Value) {
    let r = d.answer(endpoint, &parse_query(q), &["ca-line".into()]);
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

#[test]
fn fingerprint_is_sha256_of_blob() {
    // sha256 of the decoded blob, lowercase hex (the value `ssh-keygen -lf` prints in base64).
    let fp = key_fingerprint(KEY);
    assert_eq!(fp.len(), 64);
    assert_eq!(
        fp,
        key_fingerprint(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF4L0VOIKPsgyixLsvaOb9bSCVR+jOtGhOaKMA+dHIHw other-comment"
        )
    );
    assert_ne!(fp, key_fingerprint("garbage"));
}

#[test]
fn profiles_and_defaults() {
    let mut d = Directory::default();
    d.upsert_user(user("alice", 1001));
    assert!(d.add_key("alice", KEY, Some(1_767_225_600_000_000)));
    assert!(!d.add_key("nobody", KEY, None));
    let (s, v) = ask(&d, "users", "username=alice");
    assert_eq!(s, 200);
    let p = &v["loginProfiles"][0];
    assert_eq!(p["name"], "alice@example.com");
    let acct = &p["posixAccounts"][0];
    assert_eq!(acct["uid"], 1001);
    assert_eq!(acct["gid"], 1001);
    assert_eq!(acct["homeDirectory"], "/home/alice");
    assert_eq!(acct["shell"], "/bin/bash");
    let fp = key_fingerprint(KEY);
    assert_eq!(
        p["sshPublicKeys"][&fp]["expirationTimeUsec"],
        "1767225600000000"
    );
    assert_eq!(p["sshPublicKeys"][&fp]["fingerprint"], fp.as_str());
    assert_eq!(ask(&d, "users", "uid=1001").1, v);
    assert_eq!(ask(&d, "users", "username=bob").0, 404);
    assert_eq!(ask(&d, "users", "uid=7").0, 404);
    assert_eq!(ask(&d, "users", "uid=x").0, 400);
    assert!(d.remove_key("alice", KEY));
    assert!(!d.remove_key("alice", KEY));
    assert_eq!(ask(&d, "nope", "").0, 404);
}

#[test]
fn paging_last_page_carries_profiles() {
    let mut d = Directory::default();
    for (i, n) in ["carol", "alice", "bob"].iter().enumerate() {
        d.upsert_user(user(n, 2000 + i as u32));
    }
    let (_, p1) = ask(&d, "users", "pagesize=2");
    let names: Vec<&str> = p1["loginProfiles"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["posixAccounts"][0]["username"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(names, ["alice", "bob"]);
    let token = p1["nextPageToken"].as_str().expect("token");
    assert_ne!(token, "0");
    let (_, p2) = ask(&d, "users", &format!("pagesize=2&pagetoken={token}"));
    assert_eq!(p2["nextPageToken"], "0");
    assert_eq!(
        p2["loginProfiles"][0]["posixAccounts"][0]["username"],
        "carol"
    );
    assert_eq!(ask(&d, "users", "pagesize=2&pagetoken=zz").0, 400);
}

#[test]
fn groups_and_members() {
    let mut d = Directory::default();
    d.upsert_user(user("alice", 1001));
    d.upsert_group(GroupSpec {
        name: "demo".into(),
        gid: 5000,
        members: vec!["alice".into(), "bob".into()],
    });
    d.upsert_group(GroupSpec {
        name: "other".into(),
        gid: 5001,
        members: vec![],
    });
    assert_eq!(
        ask(&d, "groups", "groupname=demo").1["posixGroups"][0]["gid"],
        5000
    );
    assert_eq!(
        ask(&d, "groups", "gid=5001").1["posixGroups"][0]["name"],
        "other"
    );
    assert_eq!(ask(&d, "groups", "gid=9").0, 404);
    let (_, mine) = ask(&d, "groups", "email=alice%40example.com");
    assert_eq!(
        mine,
        json!({"posixGroups":[{"name":"demo","gid":5000}],"nextPageToken":"0"})
    );
    let (_, all) = ask(&d, "groups", "pagesize=1");
    assert_eq!(all["nextPageToken"], "1");
    let (_, members) = ask(&d, "users", "groupname=demo");
    assert_eq!(
        members,
        json!({"usernames":["alice","bob"],"nextPageToken":"0"})
    );
    assert!(d.remove_group("other"));
    assert_eq!(ask(&d, "groups", "gid=5001").0, 404);
}

#[test]
fn authorize_roles_and_fingerprints() {
    let mut d = Directory::default();
    let mut a = user("alice", 1001);
    a.keys.push(KeySpec {
        key: KEY.into(),
        expiration_usec: None,
    });
    d.upsert_user(a);
    let fp = key_fingerprint(KEY);
    let ok = |d: &Directory, q: &str| ask(d, "authorize", q).1["success"] == true;
    assert!(ok(&d, "email=alice@example.com&policy=login"));
    assert!(!ok(&d, "email=alice@example.com&policy=adminLogin"));
    assert!(ok(
        &d,
        &format!("email=alice@example.com&policy=login&fingerprint={fp}")
    ));
    assert!(!ok(
        &d,
        "email=alice@example.com&policy=login&fingerprint=abc"
    ));
    d.remember_cert("cert-id".into(), "alice");
    assert!(ok(
        &d,
        "email=alice@example.com&policy=login&fingerprint=cert-id"
    ));
    assert!(d.set_roles("alice", false, true));
    assert!(!ok(&d, "email=alice@example.com&policy=login"));
    assert!(ok(&d, "email=alice@example.com&policy=adminLogin"));
    assert!(!ok(&d, "email=bob@example.com&policy=login"));
    assert_eq!(ask(&d, "authorize", "policy=login").0, 400);
    // Expired keys do not authorize.
    assert!(d.add_key("alice", KEY, Some(1)));
    assert!(!ok(
        &d,
        &format!("email=alice@example.com&policy=adminLogin&fingerprint={fp}")
    ));
    assert!(d.remove_user("alice"));
    assert!(!ok(
        &d,
        "email=alice@example.com&policy=adminLogin&fingerprint=cert-id"
    ));
}

#[test]
fn raw_answers_and_certificates() {
    let mut d = Directory::default();
    d.set_raw(
        "username=foo",
        200,
        "{\"loginProfiles\":[{\"name\":\"x\"}]}".into(),
    );
    d.set_raw("uid=5", 503, "oops".into());
    let r = d.answer("users", &parse_query("username=foo"), &[]);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"{\"loginProfiles\":[{\"name\":\"x\"}]}"[..])
    );
    assert_eq!(d.answer("users", &parse_query("uid=5"), &[]).status, 503);
    let (s, v) = ask(&d, "certificates", "");
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"trustedCertificateAuthorities":[{"publicKey":"ca-line"}]})
    );
}

#[test]
fn security_keys_are_served_only_in_the_security_key_view() {
    let mut d = Directory::default();
    let mut u = user("alice", 1001);
    u.security_keys =
        vec!["sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t alice-sk".into()];
    d.upsert_user(u);
    let ask = |q: &str| ask(&d, "users", q).1;
    let plain = ask("username=alice");
    assert!(
        plain["loginProfiles"][0].get("securityKeys").is_none(),
        "{plain}"
    );
    let sk = ask("username=alice&view=securityKey");
    assert_eq!(
        sk["loginProfiles"][0]["securityKeys"][0]["publicKey"],
        "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t alice-sk"
    );
}

/// The email and uid indexes follow every upsert and removal: a user whose email or uid
/// changed is found by the new one only, a removed user by neither, and of two users with one
/// uid the first by name answers (what a scan in name order found).
#[test]
fn email_and_uid_indexes_follow_the_directory() {
    let mut d = Directory::default();
    let login = |d: &Directory, email: &str| {
        ask(d, "authorize", &format!("email={email}&policy=login")).1["success"] == true
    };
    let by_uid = |d: &Directory, uid: u32| {
        let (status, v) = ask(d, "users", &format!("uid={uid}"));
        (status == 200).then(|| v["loginProfiles"][0]["posixAccounts"][0]["username"].clone())
    };
    d.upsert_user(user("alice", 1001));
    assert!(login(&d, "alice@example.com"));
    assert_eq!(by_uid(&d, 1001), Some(json!("alice")));
    let mut moved = user("alice", 1002);
    moved.email = "alice@corp.example".into();
    d.upsert_user(moved);
    assert!(!login(&d, "alice@example.com"));
    assert!(login(&d, "alice@corp.example"));
    assert_eq!(by_uid(&d, 1001), None);
    assert_eq!(by_uid(&d, 1002), Some(json!("alice")));
    d.upsert_user(user("zed", 1002));
    d.upsert_user(user("bob", 1002));
    assert_eq!(by_uid(&d, 1002), Some(json!("alice")));
    assert!(d.remove_user("alice"));
    assert!(!login(&d, "alice@corp.example"));
    assert_eq!(by_uid(&d, 1002), Some(json!("bob")));
    assert!(d.remove_user("bob"));
    assert_eq!(by_uid(&d, 1002), Some(json!("zed")));
}
