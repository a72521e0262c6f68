//! The directory cache file as the NSS module reads it: any bytes as the file must never
//! crash a process that looks a user up. Opens the bytes ([`Cache::parse`], what the module
//! runs on its mmap), looks up names and ids (from the records and from the input), enumerates
//! both kinds and runs `validate_all`. Invariants: whatever is served follows the rules and
//! matches the query; after `validate_all` succeeds every record is listed once in name order
//! and found by name and id; rebuilding a valid file from what it serves gives the same
//! records.
#![no_main]

use guest_agent_wire::cache::{
    Cache, CacheBuilder, Group, GroupEntry, MAX_FIELD_LEN, Passwd, UserEntry,
};
use guest_agent_wire::records::{is_safe_field, is_valid_name_bytes};
use libfuzzer_sys::fuzz_target;

fn check_user(c: &Cache<'_>, p: &Passwd<'_>) {
    assert!(is_valid_name_bytes(p.name));
    assert!(p.uid >= c.min_id() && p.gid >= c.min_id());
    assert!(is_safe_field(p.gecos) && is_safe_field(p.home) && is_safe_field(p.shell));
    assert!(p.groups().all(|g| g >= c.min_id()));
}

fn check_group(c: &Cache<'_>, g: &Group<'_>) {
    assert!(is_valid_name_bytes(g.name));
    assert!(g.gid >= c.min_id());
    assert!(g.members().all(is_valid_name_bytes));
    assert!(g.members().count() <= g.member_count());
}

/// Lookups of `name` and `id`: a hit is a record following the rules with that very key.
fn lookup(c: &Cache<'_>, name: &[u8], id: u32) {
    if let Some(p) = c.user_by_name(name) {
        assert_eq!(p.name, name);
        check_user(c, &p);
    }
    if let Some(p) = c.user_by_uid(id) {
        assert_eq!(p.uid, id);
        check_user(c, &p);
    }
    if let Some(g) = c.group_by_name(name) {
        assert_eq!(g.name, name);
        check_group(c, &g);
    }
    if let Some(g) = c.group_by_gid(id) {
        assert_eq!(g.gid, id);
        check_group(c, &g);
    }
}

fn dedup<T: PartialEq>(v: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// A valid file rebuilt from what it serves serves the same (fields the builder would drop,
/// over MAX_FIELD_LEN, excepted).
fn rebuild(c: &Cache<'_>) {
    let users: Vec<Passwd<'_>> = (0..c.user_count()).filter_map(|i| c.user_at(i)).collect();
    let groups: Vec<Group<'_>> = (0..c.group_count()).filter_map(|i| c.group_at(i)).collect();
    let fits = |p: &Passwd<'_>| {
        [p.gecos, p.home, p.shell]
            .iter()
            .all(|f| f.len() <= MAX_FIELD_LEN)
    };
    let ascii = |p: &Passwd<'_>| {
        [p.gecos, p.home, p.shell]
            .iter()
            .all(|f| std::str::from_utf8(f).is_ok())
    };
    if !users.iter().all(|p| fits(p) && ascii(p)) {
        return;
    }
    let mut b = CacheBuilder::new(c.min_id(), c.generated_at_unix());
    for p in &users {
        b.add_user(UserEntry::from(p));
    }
    for g in &groups {
        b.add_group(GroupEntry::from(g));
    }
    let bytes = b.build();
    let d = Cache::parse(&bytes).expect("a rebuilt cache opens");
    d.validate_all().expect("a rebuilt cache validates");
    assert_eq!(
        (d.user_count(), d.group_count()),
        (users.len(), groups.len())
    );
    for (i, p) in users.iter().enumerate() {
        let q = d.user_at(i).expect("rebuilt user");
        assert_eq!(
            (q.name, q.uid, q.gid, q.gecos, q.home, q.shell),
            (p.name, p.uid, p.gid, p.gecos, p.home, p.shell)
        );
        assert_eq!(q.groups().collect::<Vec<_>>(), dedup(p.groups()));
    }
    for (i, g) in groups.iter().enumerate() {
        let h = d.group_at(i).expect("rebuilt group");
        assert_eq!((h.name, h.gid), (g.name, g.gid));
        assert_eq!(h.members().collect::<Vec<_>>(), dedup(g.members()));
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    // The same bytes with the header's file length made right (offset 80), so that mutations
    // that add or remove bytes reach the records too, not only the length check.
    if data.len() >= 84 {
        let mut fixed = data.to_vec();
        fixed[80..84].copy_from_slice(&(data.len() as u32).to_le_bytes());
        exercise(&fixed);
    }
});

fn exercise(data: &[u8]) {
    let Ok(c) = Cache::parse(data) else {
        return;
    };
    assert!(c.min_id() >= 1);
    // Every section is in the file: the counts are bounded by its size.
    assert!(c.user_count() <= data.len() / 48 && c.group_count() <= data.len() / 20);

    // Enumeration, as getpwent/getgrent walk it (and one past the end).
    for i in 0..=c.user_count() {
        if let Some(p) = c.user_at(i) {
            check_user(&c, &p);
            lookup(&c, p.name, p.uid);
        }
    }
    for i in 0..=c.group_count() {
        if let Some(g) = c.group_at(i) {
            check_group(&c, &g);
            lookup(&c, g.name, g.gid);
        }
    }
    // Keys taken from the input itself: its tail as a name, its words as ids.
    for n in [1, 3, 8, 32] {
        lookup(&c, &data[data.len().saturating_sub(n)..], 0);
    }
    for w in data.chunks_exact(4).step_by(7).take(64) {
        let id = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        lookup(&c, b"root", id);
    }

    if c.validate_all().is_ok() {
        let mut prev: Option<&[u8]> = None;
        for i in 0..c.user_count() {
            let p = c.user_at(i).expect("a valid cache lists every user");
            assert!(
                prev.is_none_or(|prev| prev < p.name),
                "users not in name order"
            );
            prev = Some(p.name);
            assert_eq!(c.user_by_name(p.name), Some(p));
            assert_eq!(c.user_by_uid(p.uid), Some(p));
        }
        let mut prev: Option<&[u8]> = None;
        for i in 0..c.group_count() {
            let g = c.group_at(i).expect("a valid cache lists every group");
            assert!(
                prev.is_none_or(|prev| prev < g.name),
                "groups not in name order"
            );
            prev = Some(g.name);
            assert_eq!(c.group_by_name(g.name), Some(g));
            assert_eq!(c.group_by_gid(g.gid), Some(g));
        }
        rebuild(&c);
    }
}
