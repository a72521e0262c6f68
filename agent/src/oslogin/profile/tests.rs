//! Profile parsing against the reference implementation's own test vectors
//! (`../shared/fixtures/oslogin/profiles`), named `<Suite>.<Test>.<variable>.json`.

use super::*;

const NOW: i64 = 1_800_000_000_000_000; // 2027-01-15, in microseconds

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/oslogin/profiles")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {} missing ({e}): ../shared must sit beside the repository",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn user(name: &str) -> Result<OsUser, ProfileError> {
    parse_single_user(&fixture(name), 1000, NOW)
}

#[test]
fn passwd_succeeds() {
    let u = user("ParseJsonPasswdTest.ParseJsonToPasswdSucceeds.test_user.json").unwrap();
    assert_eq!((u.username.as_str(), u.uid, u.gid), ("foo", 1337, 1338));
    assert_eq!(
        (u.home.as_str(), u.shell.as_str()),
        ("/home/foo", "/bin/bash")
    );
    assert_eq!(u.email, "foo@example.com");
}

#[test]
fn string_ids_succeed() {
    let u =
        user("ParseJsonPasswdTest.ParseJsonToPasswdSucceedsWithStringUid.test_user.json").unwrap();
    assert_eq!((u.uid, u.gid), (1337, 1338));
}

#[test]
fn non_numeric_ids_fail() {
    for f in [
        "ParseJsonPasswdTest.ParseJsonToPasswdFailsWithEINVAL.test_user.json",
        "ParseJsonPasswdTest.ParseJsonToPasswdFailsWithEINVAL.test_user2.json",
    ] {
        assert!(user(f).is_err(), "{f}");
    }
}

#[test]
fn high_uid_is_refused_unlike_the_reference() {
    // The reference accepts 4294967295; it is (uid_t)-1, which chown and setresuid read as
    // "leave unchanged", so we refuse it.
    let e = user("ParseJsonPasswdTest.ParseJsonToPasswdSucceedsWithHighUid.test_user.json")
        .unwrap_err();
    assert!(e.to_string().contains("4294967295"), "{e}");
}

#[test]
fn missing_uid_is_refused_and_missing_home_and_shell_default() {
    assert!(user("ParseJsonPasswdTest.ValidateInvalidJsonResponse.test_user.json").is_err());
    let u = user("ParseJsonPasswdTest.ValidatePartialJsonResponse.test_user.json").unwrap();
    assert_eq!(
        (u.home.as_str(), u.shell.as_str()),
        ("/home/foo", "/bin/bash")
    );
}

#[test]
fn a_bare_profile_without_login_profiles_parses_as_one_profile() {
    let v = fixture("ParseJsonPasswdTest.ParseJsonToPasswdNoLoginProfilesSucceeds.test_user.json");
    let u = parse_profile(&v, 1000, NOW).unwrap();
    assert_eq!(u.username, "foo");
    // As an answer to users?username= it has no loginProfiles: an error, not an empty user.
    assert!(parse_single_user(&v, 1000, NOW).is_err());
}

#[test]
fn missing_gid_defaults_to_uid() {
    // The reference left gid uninitialised here (a real bug).
    let mut v = fixture("ParseJsonPasswdTest.ParseJsonToPasswdSucceeds.test_user.json");
    v["loginProfiles"][0]["posixAccounts"][0]
        .as_object_mut()
        .unwrap()
        .remove("gid");
    assert_eq!(parse_single_user(&v, 1000, NOW).unwrap().gid, 1337);
}

#[test]
fn low_and_zero_ids_are_refused() {
    for (uid, gid) in [(0, 1337), (999, 1337), (1337, 0), (1337, 10)] {
        let mut v = fixture("ParseJsonPasswdTest.ParseJsonToPasswdSucceeds.test_user.json");
        v["loginProfiles"][0]["posixAccounts"][0]["uid"] = uid.into();
        v["loginProfiles"][0]["posixAccounts"][0]["gid"] = gid.into();
        assert!(parse_single_user(&v, 1000, NOW).is_err(), "{uid}/{gid}");
    }
}

#[test]
fn bad_usernames_homes_and_shells_are_refused() {
    for (field, value) in [
        ("username", "Foo"),
        ("username", "../x"),
        ("homeDirectory", "relative"),
        ("homeDirectory", "/home/a:b"),
        ("shell", "/bin/sh\n"),
    ] {
        let mut v = fixture("ParseJsonPasswdTest.ParseJsonToPasswdSucceeds.test_user.json");
        v["loginProfiles"][0]["posixAccounts"][0][field] = value.into();
        assert!(
            parse_single_user(&v, 1000, NOW).is_err(),
            "{field}={value:?}"
        );
    }
}

#[test]
fn the_primary_account_is_used() {
    let mut v = fixture("ParseJsonPasswdTest.ParseJsonToPasswdSucceeds.test_user.json");
    let primary = v["loginProfiles"][0]["posixAccounts"][0].clone();
    let mut other = primary.clone();
    other["primary"] = false.into();
    other["username"] = "other".into();
    v["loginProfiles"][0]["posixAccounts"] = serde_json::json!([other, primary]);
    assert_eq!(parse_single_user(&v, 1000, NOW).unwrap().username, "foo");
}

#[test]
fn keys() {
    let keys = |f: &str| parse_keys(&fixture(f)["loginProfiles"][0], NOW);
    assert_eq!(
        keys("ParseJsonSshKeyTest.ParseJsonToSshKeysSucceeds.test_user.json").len(),
        1
    );
    assert_eq!(
        keys("ParseJsonSshKeyTest.ParseJsonToSshKeysMultipleKeys.test_user.json").len(),
        2
    );
    let k = keys("ParseJsonSshKeyTest.ParseJsonToSshKeysFiltersExpiredKeys.test_user.json");
    assert_eq!(
        k.iter().map(|k| k.line.as_str()).collect::<Vec<_>>(),
        ["test_key"]
    );
    let k = keys("ParseJsonSshKeyTest.ParseJsonToSshKeysFiltersMalformedExpiration.test_user.json");
    assert_eq!(
        k.iter().map(|k| k.line.as_str()).collect::<Vec<_>>(),
        ["test_key"]
    );
    // Future and past expirations.
    let v = serde_json::json!({"sshPublicKeys": {
        "a": {"key": "ssh-ed25519 AAAA future", "expirationTimeUsec": (NOW + 1).to_string()},
        "b": {"key": "ssh-ed25519 BBBB past", "expirationTimeUsec": (NOW - 1).to_string()}}});
    let k = parse_keys(&v, NOW);
    assert_eq!(k.len(), 1);
    assert!(k[0].line.ends_with("future"));
    assert!(!k[0].is_valid_at(NOW + 2));
}

#[test]
fn pages() {
    let p = parse_user_page(
        &fixture("NssCacheTest.TestLoadJsonArray.response.json"),
        1000,
        NOW,
    )
    .unwrap();
    assert_eq!(
        p.users
            .iter()
            .map(|u| u.username.as_str())
            .collect::<Vec<_>>(),
        ["foo", "bar"]
    );
    assert_eq!(p.next.as_deref(), Some("token"));
    let p = parse_user_page(
        &fixture("NssCacheTest.TestLoadJsonFinalResponse.response.json"),
        1000,
        NOW,
    )
    .unwrap();
    assert!(p.users.is_empty() && p.next.is_none());
    // Profiles on the "0" page are read (the reference ignored them).
    let mut v = fixture("NssCacheTest.TestLoadJsonPartialArray.response.json");
    v["nextPageToken"] = "0".into();
    let p = parse_user_page(&v, 1000, NOW).unwrap();
    assert_eq!(p.users.len(), 1);
    assert!(p.next.is_none());
}

#[test]
fn groups() {
    let g = |f: &str| parse_group_page(&fixture(f), 1000).unwrap();
    let p = g("ParseJsonToGroupsTest.ParseJsonToGroupsSucceeds.test_group.json");
    let (ok, bad) = (p.groups, p.refused);
    assert_eq!(
        ok,
        vec![OsGroup {
            name: "demo".into(),
            gid: 123452
        }]
    );
    assert!(bad.is_empty());
    let ok =
        g("ParseJsonToGroupsTest.ParseJsonToGroupsSucceedsWithStringGid.test_group.json").groups;
    assert_eq!(ok[0].gid, 123452);
    let ok = g("ParseJsonToGroupsTest.TestGroups.group_json.json").groups;
    assert_eq!(ok.len(), 2);
    for f in [
        "ParseJsonToGroupsTest.ParseJsonToGroupsFails.test_badgid.json",
        "ParseJsonToGroupsTest.ParseJsonToGroupsFails.test_nogid.json",
        "ParseJsonToGroupsTest.ParseJsonToGroupsFails.test_noname.json",
        // (uid_t)-1 again: refused, unlike the reference.
        "ParseJsonToGroupsTest.ParseJsonToGroupsSucceedsWithHighGid.test_group.json",
    ] {
        let p = g(f);
        assert!(p.groups.is_empty() && p.refused.len() == 1, "{f}");
    }
}

#[test]
fn members_and_authorize() {
    let (m, next) = parse_members(&fixture(
        "ParseJsonToUsersTest.ParseJsonToUsersSucceeds.test_group_users.json",
    ))
    .unwrap();
    assert_eq!(m.len(), 5);
    assert!(next.is_none());
    let (m, _) = parse_members(&fixture(
        "ParseJsonToUsersTest.ParseJsonToUsersEmptyGroupSucceeds.test_group_users.json",
    ))
    .unwrap();
    assert!(m.is_empty());
    assert!(parse_authorized(&fixture(
        "ParseJsonAuthorizeSuccess.SuccessfullyAuthorized.response.json"
    )));
    assert!(!parse_authorized(&serde_json::json!({"success": false})));
    assert!(!parse_authorized(&serde_json::json!({"success": "true"})));
    assert!(!parse_authorized(&serde_json::json!({})));
}

#[test]
fn security_keys_are_the_sk_lines_of_the_named_profile() {
    use super::security_keys;
    let answer = serde_json::json!({"loginProfiles": [{
        "name": "alice@example.com",
        "posixAccounts": [{"primary": true, "username": "alice", "uid": 1001}],
        "securityKeys": [
            {"publicKey": "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t alice ", "privateKey": "h"},
            {"publicKey": "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNh alice2"},
            {"publicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIplain not-a-security-key"},
            {"privateKey": "no public key"}
        ]
    }]});
    assert_eq!(
        security_keys(&answer, "alice").unwrap(),
        vec![
            "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t alice",
            "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNh alice2",
        ]
    );
    assert!(
        security_keys(&answer, "bob").is_err(),
        "another user's profile"
    );
    let none = serde_json::json!({"loginProfiles": [{"posixAccounts": [{"username": "alice"}]}]});
    assert_eq!(security_keys(&none, "alice").unwrap(), Vec::<String>::new());
    assert!(security_keys(&serde_json::json!({}), "alice").is_err());
}
