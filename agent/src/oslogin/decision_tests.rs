use super::*;
use proptest::prelude::*;

fn rules() -> Rules {
    Rules {
        min_id: 1000,
        home_bases: vec!["/home".into()],
        users_group: "guest-agent-oslogin".into(),
        users_group_gid: 4_000_000_000,
        ignore_user_keys: true,
        extra_reserved: vec!["google-sudoers".into()],
    }
}

fn user(name: &str, uid: u32, gid: u32, home: &str) -> Arc<OsUser> {
    Arc::new(OsUser {
        email: format!("{name}@example.com"),
        username: name.into(),
        uid,
        gid,
        home: home.into(),
        shell: "/bin/bash".into(),
        keys: Vec::new(),
    })
}

fn local() -> LocalAccounts {
    LocalAccounts::parse(
        "root:x:0:0:root:/root:/bin/bash\ndebian:x:1000:1000::/home/debian:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/sh\n",
        "root:x:0:\nsudo:x:27:debian\ndebian:x:1000:\nbob:x:1001:\nops:x:5000:debian\n",
    )
}

#[test]
fn the_reserved_list_is_sorted_for_its_binary_search() {
    let mut sorted = RESERVED.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, RESERVED);
    for name in [
        "docker",
        "sudo",
        "wheel",
        "systemd-network",
        "_apt",
        "guest-agent-x",
    ] {
        assert!(is_reserved_name(name), "{name}");
    }
    assert!(!is_reserved_name("alice") && !is_reserved_name("dockers"));
}

#[test]
fn local_accounts_win_over_the_directory() {
    let l = local();
    let r = rules();
    let refused = |u: &Arc<OsUser>| admit_user(u, &l, &r, true, false).unwrap_err();
    assert_eq!(
        refused(&user("debian", 200001, 200001, "/home/debian")),
        Refusal::LocalName("debian".into())
    );
    assert_eq!(
        refused(&user("ops", 200001, 200001, "/home/ops")),
        Refusal::LocalName("ops".into())
    );
    assert_eq!(
        refused(&user("carol", 1001, 200001, "/home/carol")),
        Refusal::LocalUid(1001)
    );
    // gid of a local group: its rights; uid = a local group's gid: the personal group aliases it.
    assert_eq!(
        refused(&user("carol", 200001, 5000, "/home/carol")),
        Refusal::LocalGid(5000)
    );
    assert_eq!(
        refused(&user("carol", 5000, 200001, "/home/carol")),
        Refusal::LocalGid(5000)
    );
    assert_eq!(
        refused(&user("carol", 200001, 4_000_000_000, "/home/carol")),
        Refusal::UsersGroupGid(4_000_000_000)
    );
    let (ok, why) = admit_user(
        &user("carol", 200001, 200001, "/home/carol"),
        &l,
        &r,
        false,
        false,
    )
    .unwrap();
    assert_eq!((ok.home.as_str(), why), ("/home/carol", None));
}

#[test]
fn ids_names_and_reserved_names() {
    let l = LocalAccounts::default();
    let r = rules();
    let refused = |u: &Arc<OsUser>| admit_user(u, &l, &r, true, false).unwrap_err();
    assert_eq!(
        refused(&user("carol", 999, 200001, "/home/c")),
        Refusal::IdOutOfRange(999)
    );
    assert_eq!(
        refused(&user("carol", 200001, 0, "/home/c")),
        Refusal::IdOutOfRange(0)
    );
    assert_eq!(
        refused(&user("carol", u32::MAX, 200001, "/home/c")),
        Refusal::IdOutOfRange(u32::MAX)
    );
    assert_eq!(
        refused(&user("docker", 200001, 200001, "/home/d")),
        Refusal::ReservedName("docker".into())
    );
    assert_eq!(
        refused(&user("google-sudoers", 200001, 200001, "/home/d")),
        Refusal::ReservedName("google-sudoers".into())
    );
    assert_eq!(
        refused(&user("bad:name", 200001, 200001, "/home/d")),
        Refusal::InvalidName("bad:name".into())
    );
    assert_eq!(
        admit_group("docker", 300000, &l, &r, true),
        Err(Refusal::ReservedName("docker".into()))
    );
    assert_eq!(
        admit_group("systemd-journal", 300000, &l, &r, true),
        Err(Refusal::ReservedName("systemd-journal".into()))
    );
    assert_eq!(
        admit_group("devs", 4_000_000_000, &l, &r, true),
        Err(Refusal::UsersGroupGid(4_000_000_000))
    );
    assert_eq!(
        admit_group("sudo2", 27, &l, &r, true),
        Err(Refusal::IdOutOfRange(27))
    );
    assert_eq!(admit_group("devs", 300000, &l, &r, true), Ok(()));
    let lg = local();
    assert_eq!(
        admit_group("ops", 300000, &lg, &r, true),
        Err(Refusal::LocalName("ops".into()))
    );
    assert_eq!(
        admit_group("devs", 5000, &lg, &r, true),
        Err(Refusal::LocalGid(5000))
    );
}

#[test]
fn homes_stay_below_the_bases() {
    let r = rules();
    let home = |h: &str| match home_for("carol", h, &r, false) {
        Ok(h) => Ok(h.into_owned()),
        Err((h, _)) => Err(h),
    };
    assert_eq!(home("/home/carol"), Ok("/home/carol".into()));
    assert_eq!(home("/home//carol/"), Ok("/home/carol".into()));
    assert_eq!(home("/home/team/carol"), Ok("/home/team/carol".into()));
    for bad in [
        "/etc/systemd/system/ssh.service.d",
        "/home/../etc/systemd/system/ssh.service.d",
        "/home/./carol",
        "/home",
        "/home/",
        "/homeX/carol",
        "home/carol",
        "/",
    ] {
        assert_eq!(home(bad), Err("/home/carol".into()), "{bad}");
    }
    assert!(
        matches!(home_for("carol", "/home/carol", &r, true), Err((h, _)) if h == "/home/carol")
    );
    let two = Rules {
        home_bases: vec!["/srv/users/".into(), "/home".into()],
        ..rules()
    };
    assert!(home_for("carol", "/srv/users/carol", &two, false).is_ok());
    assert!(
        matches!(home_for("carol", "/srv/carol", &two, false), Err((h, _)) if h == "/srv/users/carol")
    );
}

#[test]
fn a_stale_view_admits_only_names_served_before() {
    let mut l = local();
    l.stale = true;
    let r = rules();
    let u = user("carol", 200001, 200001, "/home/carol");
    assert_eq!(
        admit_user(&u, &l, &r, false, false).unwrap_err(),
        Refusal::LocalAccountsUnknown("carol".into())
    );
    assert!(admit_user(&u, &l, &r, true, false).is_ok());
    assert_eq!(
        admit_group("devs", 300000, &l, &r, false),
        Err(Refusal::LocalAccountsUnknown("devs".into()))
    );
    // The last good view still protects local accounts.
    assert!(
        admit_user(
            &user("bob", 200001, 200001, "/home/bob"),
            &l,
            &r,
            true,
            false
        )
        .is_err()
    );
}

#[test]
fn a_local_group_holding_the_users_group_admits_nobody() {
    let r = rules();
    let u = user("carol", 200001, 200001, "/home/carol");
    for group in ["guest-agent-oslogin:x:5001:\n", "other:x:4000000000:\n"] {
        let l = LocalAccounts::parse("", group);
        assert!(matches!(
            admit_user(&u, &l, &r, true, false),
            Err(Refusal::UsersGroupTaken(_))
        ));
        let off = Rules {
            ignore_user_keys: false,
            ..rules()
        };
        assert!(admit_user(&u, &l, &off, true, false).is_ok());
    }
}

#[test]
fn certificates_and_verdicts() {
    let info = CertInfo {
        key_id: "k".into(),
        principals: vec!["carol".into()],
        valid_after: 100,
        valid_before: 200,
        fingerprint: Some("ID".into()),
        ca_fingerprint: "CA".into(),
        ca_key: String::new(),
    };
    assert_eq!(certificate_id(&info, "carol", 150), Ok("ID"));
    assert!(certificate_id(&info, "carol", 250).is_err());
    assert!(certificate_id(&info, "root", 150).is_err());
    let no_id = CertInfo {
        fingerprint: None,
        ..info
    };
    assert!(certificate_id(&no_id, "carol", 150).is_err());
    assert_eq!(
        login_verdict(&Decision::Allowed, false),
        Verdict::Allow { by_grace: false }
    );
    assert_eq!(
        login_verdict(&Decision::Denied, true),
        Verdict::Deny("login role not granted".into())
    );
    assert_eq!(
        login_verdict(&Decision::Unavailable("x".into()), true),
        Verdict::Allow { by_grace: true }
    );
    assert_eq!(
        login_verdict(&Decision::Unavailable("x".into()), false),
        Verdict::Unavailable("x".into())
    );
}

/// Names from a small alphabet so that profiles and local accounts collide often.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-e]{1,2}",
        Just("root".to_owned()),
        Just("docker".to_owned()),
        Just("sudo".to_owned()),
        Just("systemd-x".to_owned()),
        Just("guest-agent-oslogin".to_owned()),
        "[a-z_][a-z0-9_:.-]{0,6}",
    ]
}

fn id() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..3,
        995u32..1010,
        200_000u32..200_010,
        Just(4_000_000_000),
        Just(u32::MAX)
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        "(/(home|etc|srv|\\.\\.|\\.|[a-c]{1,2}|)){0,4}",
        "/home/[a-c]{1,3}",
        Just("/etc/systemd/system/ssh.service.d".to_owned()),
    ]
}

fn under_a_base(home: &str, bases: &[String]) -> bool {
    let parts: Vec<&str> = home.split('/').collect();
    parts.first() == Some(&"")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != "..")
        && bases.iter().any(|b| {
            let b = b.trim_end_matches('/');
            home.len() > b.len() + 1 && home.starts_with(b) && home.as_bytes()[b.len()] == b'/'
        })
}

proptest! {
    /// For random profiles and local account sets: no decision maps onto a local account, an
    /// id below the floor (or 0, or -1), a home outside the bases, or a reserved or privileged
    /// name; and a refusal is the only other outcome.
    #[test]
    fn no_admitted_user_aliases_the_vm(
        uname in name(), uid in id(), gid in id(), home in path(),
        locals in proptest::collection::vec((name(), id(), id()), 0..6),
        lgroups in proptest::collection::vec((name(), id()), 0..6),
        stale in any::<bool>(), known in any::<bool>(), taken in any::<bool>(),
        groups in proptest::collection::vec((name(), id()), 0..4),
    ) {
        let passwd: String = locals.iter().map(|(n, u, g)| format!("{n}:x:{u}:{g}::/home/{n}:/bin/sh\n")).collect();
        let group: String = lgroups.iter().map(|(n, g)| format!("{n}:x:{g}:\n")).collect();
        let mut l = LocalAccounts::parse(&passwd, &group);
        l.stale = stale;
        let r = Rules { home_bases: vec!["/home".into(), "/srv/".into()], ..rules() };
        let u = user(&uname, uid, gid, &home);
        if let Ok((served, _)) = admit_user(&u, &l, &r, known, taken) {
            prop_assert!(!l.user_names.contains(&served.username));
            prop_assert!(!l.group_names.contains(&served.username));
            prop_assert!(!l.uids.contains(&served.uid));
            prop_assert!(!l.gids.contains(&served.gid) && !l.gids.contains(&served.uid));
            prop_assert!(served.uid >= 1000 && served.gid >= 1000 && served.uid != u32::MAX && served.gid != u32::MAX);
            prop_assert!(served.gid != r.users_group_gid && served.uid != r.users_group_gid);
            prop_assert!(!is_reserved_name(&served.username) && served.username != "google-sudoers");
            prop_assert!(under_a_base(&served.home, &r.home_bases), "home {:?}", served.home);
            prop_assert!(!stale || known);
            prop_assert!(!l.clashes_with_group(&r.users_group, r.users_group_gid));
            let fallback = format!("/home/{}", served.username);
            prop_assert!(!taken || served.home == fallback);
            prop_assert_eq!((&served.username, served.uid, served.gid), (&u.username, u.uid, u.gid));
        }
        for (gname, ggid) in groups {
            if admit_group(&gname, ggid, &l, &r, known).is_ok() {
                prop_assert!(!l.group_names.contains(&gname) && !l.gids.contains(&ggid));
                prop_assert!(ggid >= 1000 && ggid != u32::MAX && ggid != r.users_group_gid);
                prop_assert!(!is_reserved_name(&gname) && gname != "google-sudoers");
            }
        }
    }
}
