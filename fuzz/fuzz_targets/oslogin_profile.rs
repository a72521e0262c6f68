//! OS Login answers (users pages, single-user answers, groups pages, group members,
//! authorize): any bytes, parsed as the daemon parses them (serde_json, then the profile
//! rules), never panic. Invariants: every accepted user and group follows the rules (valid
//! name, id in range, absolute home and shell usable in passwd, keys one line each and
//! unexpired), makes a passwd line that parses back, and a directory cache built from the
//! accepted users validates and serves the first of them.
#![no_main]

use guest_agent::oslogin::profile::{
    OsUser, parse_authorized, parse_group_page, parse_keys, parse_members, parse_profile,
    parse_single_user, parse_user_page,
};
use guest_agent_wire::cache::{Cache, CacheBuilder, MAX_FIELD_LEN, UserEntry};
use guest_agent_wire::names::is_valid_name;
use guest_agent_wire::records::{PasswdRecord, is_safe_field};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const FLOOR: u32 = 1000;
/// 2026-01-01T00:00:00Z in microseconds.
const NOW_USEC: i64 = 1_767_225_600_000_000;

fn check_user(u: &OsUser) {
    assert!(is_valid_name(&u.username));
    for id in [u.uid, u.gid] {
        assert!(id >= FLOOR && id != u32::MAX);
    }
    for path in [&u.home, &u.shell] {
        assert!(
            path.starts_with('/') && is_safe_field(path.as_bytes()),
            "{path:?}"
        );
        assert!(!path.chars().any(char::is_control));
    }
    for k in &u.keys {
        assert!(!k.line.is_empty() && !k.line.contains(['\n', '\r', '\0']));
        assert!(k.is_valid_at(NOW_USEC));
    }
    let rec = PasswdRecord {
        name: &u.username,
        uid: u.uid,
        gid: u.gid,
        gecos: "",
        home: &u.home,
        shell: &u.shell,
    };
    let line = rec.to_line().expect("an accepted user makes a passwd line");
    assert_eq!(PasswdRecord::parse(&line), Ok(rec));
}

/// The users as the directory sync hands them to the cache builder.
fn cache_of(users: &[OsUser]) {
    let Some(first) = users.first() else {
        return;
    };
    let entry = |u: &OsUser| UserEntry {
        name: u.username.clone(),
        uid: u.uid,
        gid: u.gid,
        gecos: if is_safe_field(u.email.as_bytes()) {
            u.email.clone()
        } else {
            String::new()
        },
        home: u.home.clone(),
        shell: u.shell.clone(),
        groups: Vec::new(),
    };
    let mut b = CacheBuilder::new(FLOOR, 0);
    for u in users {
        b.add_user(entry(u));
    }
    let bytes = b.build();
    let c = Cache::parse(&bytes).expect("a built cache opens");
    c.validate_all().expect("a built cache validates");
    let e = entry(first);
    // The builder drops entries with a field over MAX_FIELD_LEN.
    if [&e.gecos, &e.home, &e.shell]
        .iter()
        .all(|f| f.len() <= MAX_FIELD_LEN)
    {
        let p = c
            .user_by_name(e.name.as_bytes())
            .expect("first user served");
        assert_eq!((p.uid, p.home), (e.uid, e.home.as_bytes()));
        assert_eq!(
            c.user_by_uid(e.uid).map(|p| p.name),
            Some(e.name.as_bytes())
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // As the daemon reads an answer body.
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(page) = parse_user_page(&v, FLOOR, NOW_USEC) {
        page.users.iter().for_each(check_user);
        assert!(
            page.next
                .as_deref()
                .is_none_or(|t| !t.is_empty() && t != "0")
        );
        cache_of(&page.users);
    }
    if let Ok(u) = parse_single_user(&v, FLOOR, NOW_USEC) {
        check_user(&u);
    }
    if let Ok(u) = parse_profile(&v, FLOOR, NOW_USEC) {
        check_user(&u);
    }
    for k in parse_keys(&v, NOW_USEC) {
        assert!(k.is_valid_at(NOW_USEC));
    }
    if let Ok(page) = parse_group_page(&v, FLOOR) {
        for g in &page.groups {
            assert!(is_valid_name(&g.name) && g.gid >= FLOOR && g.gid != u32::MAX);
        }
    }
    if let Ok((names, _next)) = parse_members(&v) {
        assert!(names.iter().all(|n| is_valid_name(n)));
    }
    let _ = parse_authorized(&v);
});
