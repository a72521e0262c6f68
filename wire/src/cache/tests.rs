use super::*;

fn user(name: &str, uid: u32, groups: &[u32]) -> UserEntry {
    UserEntry {
        name: name.into(),
        uid,
        gid: uid,
        gecos: format!("{name} gecos"),
        home: format!("/home/{name}"),
        shell: "/bin/bash".into(),
        groups: groups.to_vec(),
    }
}

fn group(name: &str, gid: u32, members: &[&str]) -> GroupEntry {
    GroupEntry {
        name: name.into(),
        gid,
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

fn sample() -> Vec<u8> {
    let mut b = CacheBuilder::new(1000, 1_700_000_000);
    b.add_user(user("zoe", 5003, &[7000, 7001]));
    b.add_user(user("alice", 5001, &[7000]));
    b.add_user(user("bob.smith", 5002, &[]));
    b.add_group(group("demo", 7000, &["alice", "zoe"]));
    b.add_group(group("admins", 7001, &["zoe"]));
    b.add_group(group("empty", 7002, &[]));
    b.build()
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The cheap parse and the full check: what the old, O(n), parse was.
fn full(bytes: &[u8]) -> Result<Cache<'_>, CacheError> {
    let c = Cache::parse(bytes)?;
    c.validate_all()?;
    Ok(c)
}

#[test]
fn round_trip() {
    let bytes = sample();
    let c = full(&bytes).unwrap();
    assert_eq!((c.user_count(), c.group_count()), (3, 3));
    assert_eq!((c.min_id(), c.generated_at_unix()), (1000, 1_700_000_000));
    let a = c.user_by_name(b"alice").unwrap();
    assert_eq!((a.uid, a.gid), (5001, 5001));
    assert_eq!(a.gecos, b"alice gecos");
    assert_eq!(a.home, b"/home/alice");
    assert_eq!(a.shell, b"/bin/bash");
    assert_eq!(a.groups().collect::<Vec<_>>(), [7000]);
    assert_eq!(c.user_by_uid(5003).unwrap().name, b"zoe");
    assert_eq!(
        c.user_by_uid(5003).unwrap().groups().collect::<Vec<_>>(),
        [7000, 7001]
    );
    assert_eq!(c.user_by_uid(5002).unwrap().groups().count(), 0);
    assert!(c.user_by_name(b"carol").is_none());
    assert!(c.user_by_name(b"").is_none());
    assert!(c.user_by_uid(5004).is_none());
    assert!(c.user_by_uid(0).is_none());
    let d = c.group_by_name(b"demo").unwrap();
    assert_eq!(d.gid, 7000);
    assert_eq!(d.members().collect::<Vec<_>>(), [&b"alice"[..], b"zoe"]);
    assert_eq!(d.member_count(), 2);
    assert_eq!(c.group_by_gid(7001).unwrap().name, b"admins");
    assert_eq!(c.group_by_gid(7002).unwrap().member_count(), 0);
    assert!(c.group_by_gid(7003).is_none());
    assert!(c.group_by_name(b"zzz").is_none());
    let users: Vec<&[u8]> = (0..3).map(|i| c.user_at(i).unwrap().name).collect();
    assert_eq!(users, [&b"alice"[..], b"bob.smith", b"zoe"]);
    assert!(c.user_at(3).is_none());
    let groups: Vec<&[u8]> = (0..3).map(|i| c.group_at(i).unwrap().name).collect();
    assert_eq!(groups, [&b"admins"[..], b"demo", b"empty"]);
    assert!(c.group_at(3).is_none());
    // Each user's strings follow its record (three users' shells); in the version 3 copy,
    // repeated strings are stored once.
    let bash = |b: &[u8]| b.windows(9).filter(|w| w == b"/bin/bash").count();
    assert_eq!(bash(&bytes), 3);
    assert_eq!(bash(&in_compat_version(&bytes, 3).unwrap()), 1);
}

#[test]
fn empty_cache() {
    let bytes = CacheBuilder::new(1000, 0).build();
    assert_eq!(bytes.len(), HEADER_LEN);
    let c = full(&bytes).unwrap();
    assert_eq!((c.user_count(), c.group_count()), (0, 0));
    assert!(c.user_by_name(b"a").is_none());
    assert!(c.user_by_uid(1000).is_none());
    assert!(c.group_at(0).is_none());
}

#[test]
fn lookups_at_100k_users() {
    let mut b = CacheBuilder::new(1000, 1);
    let n = 100_000u32;
    for i in 0..n {
        // uids not in name order, to exercise both indexes.
        let uid = 1000 + (i * 7919) % n;
        b.add_user(user(&format!("u{i}"), uid, &[2_000_000 + i % 50]));
    }
    for g in 0..50 {
        b.add_group(group(&format!("g{g}"), 2_000_000 + g, &["u1", "u2"]));
    }
    let bytes = b.build();
    let c = full(&bytes).unwrap();
    assert_eq!(c.user_count(), n as usize);
    for i in (0..n).step_by(997).chain([0, n - 1]) {
        let uid = 1000 + (i * 7919) % n;
        let name = format!("u{i}");
        let p = c.user_by_name(name.as_bytes()).unwrap();
        assert_eq!(p.uid, uid);
        assert_eq!(p.groups().collect::<Vec<_>>(), [2_000_000 + i % 50]);
        assert_eq!(c.user_by_uid(uid).unwrap().name, name.as_bytes());
    }
    assert!(c.user_by_name(b"u100000").is_none());
    assert!(c.user_by_uid(1000 + n).is_none());
    assert!(c.user_by_uid(999).is_none());
    assert_eq!(c.group_by_gid(2_000_049).unwrap().name, b"g49");
}

#[test]
fn duplicates_low_ids_and_bad_entries_are_dropped() {
    let mut b = CacheBuilder::new(1000, 0);
    b.add_user(user("alice", 5001, &[999, 7000, 7000, 0]));
    b.add_user(user("alice", 5002, &[])); // same name
    b.add_user(user("bob", 5001, &[])); // same uid
    b.add_user(user("root", 0, &[]));
    b.add_user(user("low", 999, &[]));
    b.add_user(UserEntry {
        gid: 10,
        ..user("lowgid", 5005, &[])
    });
    b.add_user(user("Bad", 5006, &[]));
    b.add_user(UserEntry {
        gecos: "a:b".into(),
        ..user("colon", 5007, &[])
    });
    b.add_user(UserEntry {
        home: "/h\n".into(),
        ..user("newline", 5008, &[])
    });
    b.add_user(UserEntry {
        shell: "/bin/sh\0".into(),
        ..user("nul", 5009, &[])
    });
    b.add_user(UserEntry {
        gecos: "x".repeat(MAX_FIELD_LEN + 1),
        ..user("long", 5010, &[])
    });
    b.add_user(user("carol", 5011, &[]));
    b.add_group(group("demo", 7000, &["alice", "Bad", "alice", "x,y"]));
    b.add_group(group("demo", 7001, &[]));
    b.add_group(group("other", 7000, &[]));
    b.add_group(group("wheel", 10, &[]));
    b.add_group(group("a:b", 7002, &[]));
    let bytes = b.build();
    let c = full(&bytes).unwrap();
    let names: Vec<&[u8]> = (0..c.user_count())
        .map(|i| c.user_at(i).unwrap().name)
        .collect();
    assert_eq!(names, [&b"alice"[..], b"carol"]);
    let a = c.user_by_name(b"alice").unwrap();
    assert_eq!(a.uid, 5001);
    assert_eq!(a.groups().collect::<Vec<_>>(), [7000]);
    assert_eq!(c.group_count(), 1);
    let g = c.group_by_gid(7000).unwrap();
    assert_eq!(g.name, b"demo");
    assert_eq!(g.members().collect::<Vec<_>>(), [&b"alice"[..]]);
    // min_id 0 still never serves root.
    let mut b = CacheBuilder::new(0, 0);
    b.add_user(user("root", 0, &[]));
    let bytes = b.build();
    let c = full(&bytes).unwrap();
    assert_eq!((c.min_id(), c.user_count()), (1, 0));
}

#[test]
fn every_truncation_is_refused() {
    let bytes = sample();
    for len in 0..bytes.len() {
        assert!(Cache::parse(&bytes[..len]).is_err(), "len {len}");
        // Also with the header's length patched to match: the sections must catch it.
        if len >= HEADER_LEN {
            let mut cut = bytes[..len].to_vec();
            cut[80..84].copy_from_slice(&(len as u32).to_le_bytes());
            match Cache::parse(&cut) {
                Ok(c) => exercise(&c),
                Err(e) => assert_ne!(e, CacheError::Truncated, "len {len}"),
            }
            assert!(full(&cut).is_err(), "len {len}");
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(Cache::parse(&longer).err(), Some(CacheError::Truncated));
}

/// A user as served: following every rule of the format.
fn assert_servable_user(c: &Cache<'_>, p: &Passwd<'_>) {
    assert!(p.uid >= c.min_id() && p.gid >= c.min_id());
    assert!(p.groups().all(|g| g >= c.min_id()));
    assert!(is_valid_name_bytes(p.name));
    assert!(is_safe_field(p.gecos) && is_safe_field(p.home) && is_safe_field(p.shell));
}

/// A group as served: following every rule of the format.
fn assert_servable_group(c: &Cache<'_>, g: &Group<'_>) {
    assert!(g.gid >= c.min_id());
    assert!(is_valid_name_bytes(g.name));
    assert_eq!(g.members().count(), g.member_count());
    assert!(g.members().all(is_valid_name_bytes));
}

/// Every lookup by that name or id: nothing, or an entry by that very name or id.
fn lookups_match_the_query(c: &Cache<'_>, name: &[u8], id: u32) {
    if let Some(p) = c.user_by_name(name) {
        assert_eq!(p.name, name);
        assert_servable_user(c, &p);
    }
    if let Some(p) = c.user_by_uid(id) {
        assert_eq!(p.uid, id);
        assert_servable_user(c, &p);
    }
    if let Some(g) = c.group_by_name(name) {
        assert_eq!(g.name, name);
        assert_servable_group(c, &g);
    }
    if let Some(g) = c.group_by_gid(id) {
        assert_eq!(g.gid, id);
        assert_servable_group(c, &g);
    }
}

/// Everything a reader can do with a cache that passed the cheap parse: none of it may panic,
/// and whatever it returns follows the rules and matches the query. If the full check passes
/// too, every record is also found by name, by id and by enumeration.
fn exercise(c: &Cache<'_>) {
    for i in 0..c.user_count() + 1 {
        if let Some(p) = c.user_at(i) {
            assert_servable_user(c, &p);
            lookups_match_the_query(c, p.name, p.uid);
        }
    }
    for i in 0..c.group_count() + 1 {
        if let Some(g) = c.group_at(i) {
            assert_servable_group(c, &g);
            lookups_match_the_query(c, g.name, g.gid);
        }
    }
    let names = [
        &b"alice"[..],
        b"bob.smith",
        b"zoe",
        b"demo",
        b"admins",
        b"",
        b"\xff",
    ];
    let ids = [
        0,
        1,
        999,
        1000,
        5001,
        5002,
        5003,
        7000,
        7001,
        7002,
        u32::MAX,
    ];
    for (name, id) in names.iter().zip(ids.iter().cycle()) {
        lookups_match_the_query(c, name, *id);
    }
    for id in ids {
        lookups_match_the_query(c, b"x", id);
    }
    if c.validate_all().is_ok() {
        exercise_valid(c);
    }
}

/// What a fully valid cache guarantees on top: every record served, by every way in.
fn exercise_valid(c: &Cache<'_>) {
    assert!(c.user_at(c.user_count()).is_none() && c.group_at(c.group_count()).is_none());
    for i in 0..c.user_count() {
        let p = c.user_at(i).unwrap();
        assert_eq!(c.user_by_name(p.name), Some(p));
        assert_eq!(c.user_by_uid(p.uid), Some(p));
        if i > 0 {
            assert!(c.user_at(i - 1).unwrap().name < p.name);
        }
    }
    for i in 0..c.group_count() {
        let g = c.group_at(i).unwrap();
        assert_eq!(c.group_by_name(g.name), Some(g));
        assert_eq!(c.group_by_gid(g.gid), Some(g));
        if i > 0 {
            assert!(c.group_at(i - 1).unwrap().name < g.name);
        }
    }
}

#[test]
fn random_corruption_never_panics() {
    let good = sample();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut err, mut opened) = (0, 0, 0);
    for _ in 0..30_000 {
        let mut bytes = good.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(bytes.len());
            bytes[i] = match rng.below(4) {
                0 => bytes[i] ^ (1 << rng.below(8)),
                1 => 0,
                2 => 0xff,
                _ => rng.next() as u8,
            };
        }
        if let Ok(c) = Cache::parse(&bytes) {
            opened += 1;
            exercise(&c);
        }
        match full(&bytes) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    // Flips in names and gecos keep some files valid; most are caught by the full check, and
    // only those in the header (a fifth of the file) by the cheap one.
    assert!(ok > 0 && err > 0, "ok {ok} err {err}");
    assert!(opened > ok && opened < 30_000, "opened {opened} ok {ok}");
}

#[test]
fn random_bodies_behind_a_valid_header_are_refused_or_safe() {
    let good = sample();
    let mut rng = Rng(42);
    for _ in 0..5_000 {
        let mut bytes = good.clone();
        for b in bytes.iter_mut().skip(HEADER_LEN) {
            *b = if rng.below(2) == 0 {
                rng.next() as u8
            } else {
                rng.below(200) as u8
            };
        }
        if let Ok(c) = Cache::parse(&bytes) {
            exercise(&c);
        }
        let cut = &bytes[..rng.below(bytes.len())];
        assert!(Cache::parse(cut).is_err());
        // With the header's length patched to match, sections past the end are caught.
        if cut.len() >= HEADER_LEN {
            let mut cut = cut.to_vec();
            let len = cut.len() as u32;
            set_u32(&mut cut, 80, len);
            if let Ok(c) = Cache::parse(&cut) {
                exercise(&c);
            }
        }
    }
}

#[test]
fn bad_headers() {
    let good = sample();
    assert_eq!(Cache::parse(b"short").err(), Some(CacheError::Truncated));
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(Cache::parse(&b).err(), Some(CacheError::BadMagic));
    let mut b = good.clone();
    b[8] = 1;
    assert_eq!(
        Cache::parse(&b).err(),
        Some(CacheError::UnsupportedVersion(1))
    );
    let mut b = good.clone();
    b[16..20].copy_from_slice(&0u32.to_le_bytes());
    assert!(Cache::parse(&b).is_err());
    // Raising min_id above the stored ids makes the file invalid, and nothing of it served.
    let mut b = good;
    b[16..20].copy_from_slice(&6000u32.to_le_bytes());
    assert_eq!(
        full(&b).err(),
        Some(CacheError::Corrupt("user id below min_id"))
    );
    let c = Cache::parse(&b).unwrap();
    assert!(c.user_by_name(b"alice").is_none() && c.user_by_uid(5001).is_none());
    assert!((0..3).all(|i| c.user_at(i).is_none()));
    assert_eq!(c.group_by_gid(7000).unwrap().name, b"demo");
    exercise(&c);
}

fn header(bytes: &[u8], field: usize) -> usize {
    u32_at(bytes, field).unwrap() as usize
}

fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// (slots, offset) of the hash tables: user names, uids, group names, gids.
fn tables(bytes: &[u8]) -> [(usize, usize); 4] {
    let (us, gs) = (header(bytes, 56), header(bytes, 68));
    [
        (us, header(bytes, 60)),
        (us, header(bytes, 64)),
        (gs, header(bytes, 72)),
        (gs, header(bytes, 76)),
    ]
}

/// (key, record offset) of slot `i` of the table at `off`.
fn slot(bytes: &[u8], off: usize, i: usize) -> (u32, u32) {
    (
        u32_at(bytes, off + i * SLOT).unwrap(),
        u32_at(bytes, off + i * SLOT + 4).unwrap(),
    )
}

#[test]
fn hash_functions_are_fixed() {
    // The file is written by one program and read by another: these values are the format.
    assert_eq!(fnv1a32(b""), 0x811c_9dc5);
    assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
    assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    assert_eq!(fmix32(0), 0);
    assert_eq!(fmix32(1), 0x514e_28b7);
    assert_eq!(name_hash(b"alice"), fmix32(fnv1a32(b"alice")));
    assert_eq!(id_hash(1000), fmix32(1000));
    assert_eq!(name_hash(b"alice"), 0xea14_d61e);
    assert_eq!(id_hash(1000), 0x6669_2658);
}

#[test]
fn tables_are_half_empty_powers_of_two_holding_every_record_once() {
    for n in [0usize, 1, 2, 3, 4, 5, 100, 1000] {
        let mut b = CacheBuilder::new(1000, 0);
        for i in 0..n {
            b.add_user(user(&format!("u{i}"), 1000 + i as u32, &[]));
            b.add_group(group(&format!("g{i}"), 1000 + i as u32, &[]));
        }
        let bytes = b.build();
        exercise_valid(&full(&bytes).unwrap());
        for (slots, off) in tables(&bytes) {
            assert_eq!(slots, slots_for(n));
            assert!(
                slots == 0 || slots.is_power_of_two() && slots >= 2 * n,
                "n {n}"
            );
            assert_eq!(off % 8, 0, "tables are 8-byte aligned");
            let used = (0..slots).filter(|&i| slot(&bytes, off, i).1 != 0).count();
            assert_eq!(used, n);
        }
    }
}

#[test]
fn colliding_keys_wrap_around_the_table() {
    // Three users and three groups: 8 slots. Pick ids and names that all start their probe at
    // the last slot, so the second and third wrap to slots 0 and 1.
    let ids: Vec<u32> = (1000..).filter(|&i| id_hash(i) & 7 == 7).take(4).collect();
    let names: Vec<String> = (0..)
        .map(|i| format!("n{i}"))
        .filter(|n| name_hash(n.as_bytes()) & 7 == 7)
        .take(4)
        .collect();
    let mut b = CacheBuilder::new(1000, 0);
    for i in 0..3 {
        b.add_user(user(&names[i], ids[i], &[]));
        b.add_group(group(&names[i], ids[i], &[]));
    }
    let bytes = b.build();
    let c = full(&bytes).unwrap();
    for (slots, off) in tables(&bytes) {
        assert_eq!(slots, 8);
        let used: Vec<usize> = (0..8).filter(|&i| slot(&bytes, off, i).1 != 0).collect();
        assert_eq!(used, [0, 1, 7]);
    }
    for i in 0..3 {
        assert_eq!(c.user_by_uid(ids[i]).unwrap().name, names[i].as_bytes());
        assert_eq!(c.user_by_name(names[i].as_bytes()).unwrap().uid, ids[i]);
        assert_eq!(c.group_by_gid(ids[i]).unwrap().name, names[i].as_bytes());
        assert_eq!(c.group_by_name(names[i].as_bytes()).unwrap().gid, ids[i]);
    }
    // Misses on the same probe path walk past all three and stop at the empty slot 2.
    assert!(c.user_by_uid(ids[3]).is_none());
    assert!(c.user_by_name(names[3].as_bytes()).is_none());
    assert!(c.group_by_gid(ids[3]).is_none());
    assert!(c.group_by_name(names[3].as_bytes()).is_none());
    exercise(&c);
}

#[test]
fn every_byte_change_in_a_hash_table_is_refused() {
    let good = sample();
    for (slots, off) in tables(&good) {
        for at in off..off + slots * SLOT {
            for v in [0u8, 1, 0x80, 0xff] {
                let mut b = good.clone();
                if b[at] == v {
                    continue;
                }
                b[at] = v;
                assert!(full(&b).is_err(), "byte {at} = {v}");
                // Opened anyway, the file serves nothing wrong.
                exercise(&Cache::parse(&b).unwrap());
            }
        }
    }
}

#[test]
fn corrupt_tables_are_refused() {
    let good = sample();
    let [_, (slots, uids), ..] = tables(&good);
    let used: Vec<usize> = (0..slots)
        .filter(|&i| slot(&good, uids, i).1 != 0)
        .collect();
    let empty: Vec<usize> = (0..slots)
        .filter(|&i| slot(&good, uids, i).1 == 0)
        .collect();
    let table_err = |b: &[u8]| {
        if let Ok(c) = Cache::parse(b) {
            exercise(&c);
        }
        full(b).err()
    };
    let user_table = Some(CacheError::Corrupt("user hash table"));

    // An entry moved off its probe path (from its home to an empty slot) is not found.
    let home = *used
        .iter()
        .find(|&&i| id_hash(slot(&good, uids, i).0) as usize & (slots - 1) == i)
        .unwrap();
    let mut b = good.clone();
    let (k, o) = slot(&good, uids, home);
    set_u32(&mut b, uids + home * SLOT, 0);
    set_u32(&mut b, uids + home * SLOT + 4, 0);
    set_u32(&mut b, uids + empty[0] * SLOT, k);
    set_u32(&mut b, uids + empty[0] * SLOT + 4, o);
    assert_eq!(table_err(&b), user_table);

    // Two slots swapping records: keys no longer match.
    let mut b = good.clone();
    let (a, c) = (slot(&good, uids, used[0]), slot(&good, uids, used[1]));
    set_u32(&mut b, uids + used[0] * SLOT + 4, c.1);
    set_u32(&mut b, uids + used[1] * SLOT + 4, a.1);
    assert_eq!(table_err(&b), user_table);

    // Two slots naming one record (under both keys, or one key twice): another is missing.
    let mut b = good.clone();
    set_u32(&mut b, uids + used[1] * SLOT + 4, a.1);
    assert_eq!(table_err(&b), user_table);
    set_u32(&mut b, uids + used[1] * SLOT, a.0);
    assert_eq!(table_err(&b), user_table);

    // A slot pointing inside a record, or at the header.
    for bad in [a.1 + 4, a.1 + 1, 8, HEADER_LEN as u32] {
        let mut b = good.clone();
        set_u32(&mut b, uids + used[0] * SLOT + 4, bad);
        assert_eq!(table_err(&b), user_table, "offset {bad}");
    }

    // A missing entry, an extra one, a key in an empty slot.
    let hash_table = Some(CacheError::Corrupt("hash table"));
    let mut b = good.clone();
    set_u32(&mut b, uids + used[0] * SLOT + 4, 0);
    assert_eq!(table_err(&b), hash_table);
    let mut b = good.clone();
    set_u32(&mut b, uids + empty[0] * SLOT, 5001);
    set_u32(&mut b, uids + empty[0] * SLOT + 4, a.1);
    assert_eq!(table_err(&b), hash_table);
    let mut b = good.clone();
    set_u32(&mut b, uids + empty[0] * SLOT, 5001);
    assert_eq!(table_err(&b), hash_table);

    // Slot counts: not a power of two, fuller than half, or tables for no records.
    for bad in [0u32, 4, 6, 12] {
        let mut b = good.clone();
        set_u32(&mut b, 56, bad);
        assert_eq!(
            table_err(&b),
            Some(CacheError::Corrupt("hash table size")),
            "{bad}"
        );
    }
    let mut b = good.clone();
    set_u32(&mut b, 56, 1 << 20);
    assert_eq!(
        table_err(&b),
        Some(CacheError::Corrupt("section out of bounds"))
    );

    // Two users with one uid (record and slot key patched alike): one of them is unreachable.
    let uid0 = u32_at(&good, rec(&good, 0)).unwrap();
    let uid1 = u32_at(&good, rec(&good, 1)).unwrap();
    let mut b = good.clone();
    set_u32(&mut b, rec(&good, 1), uid0);
    let s1 = used
        .iter()
        .find(|&&i| slot(&good, uids, i).0 == uid1)
        .unwrap();
    set_u32(&mut b, uids + s1 * SLOT, uid0);
    assert_eq!(table_err(&b), user_table);
}

#[test]
fn an_empty_table_may_have_slots() {
    // Not what the builder writes, but valid: a power of two of empty slots for no groups.
    let mut b = CacheBuilder::new(1000, 0);
    b.add_user(user("alice", 5001, &[]));
    let mut bytes = b.build();
    assert_eq!(header(&bytes, 68), 0);
    // Tables are 8-aligned (from version 4 the file may end anywhere).
    let end = bytes.len().next_multiple_of(SLOT);
    bytes.resize(end, 0);
    bytes.extend_from_slice(&[0; 2 * 4 * SLOT]);
    set_u32(&mut bytes, 68, 4);
    set_u32(&mut bytes, 72, end as u32);
    set_u32(&mut bytes, 76, (end + 4 * SLOT) as u32);
    let len = bytes.len() as u32;
    set_u32(&mut bytes, 80, len);
    let c = full(&bytes).unwrap();
    assert!(c.group_by_gid(5001).is_none() && c.group_by_name(b"alice").is_none());
    assert_eq!(c.user_by_uid(5001).unwrap().name, b"alice");
}

#[test]
fn opening_checks_the_header_and_sections_only() {
    let good = sample();
    // A body of zeros behind a valid header opens (nothing in it is read) and serves nothing.
    let mut b = good.clone();
    b[HEADER_LEN..].fill(0);
    let c = Cache::parse(&b).unwrap();
    assert!(c.validate_all().is_err());
    assert_eq!((c.user_count(), c.group_count()), (3, 3));
    assert!((0..4).all(|i| c.user_at(i).is_none() && c.group_at(i).is_none()));
    assert!(c.user_by_name(b"alice").is_none() && c.user_by_uid(5001).is_none());
    assert!(c.group_by_name(b"demo").is_none() && c.group_by_gid(7000).is_none());
    exercise(&c);

    // Sections: after the header, in the file, aligned.
    let aligned = Some(CacheError::Corrupt("section not aligned"));
    let out = Some(CacheError::Corrupt("section out of bounds"));
    for (field, delta, want) in [
        (60, 4, aligned), // a hash table: 8 bytes
        (76, 4, aligned),
        (40, 2, aligned), // user records, indexes, words: 4 bytes
        (44, 1, aligned),
        (48, 2, aligned),
        (84, 2, aligned),
    ] {
        let mut b = good.clone();
        let off = header(&b, field) as u32;
        set_u32(&mut b, field, off + delta);
        assert_eq!(Cache::parse(&b).err(), want, "field {field}");
    }
    for field in [40, 44, 48, 52, 60, 64, 72, 76, 84, 92] {
        let mut b = good.clone();
        set_u32(&mut b, field, 0);
        assert_eq!(Cache::parse(&b).err(), out, "field {field}");
        let mut b = good.clone();
        set_u32(&mut b, field, good.len() as u32 + 8);
        assert_eq!(Cache::parse(&b).err(), out, "field {field}");
    }
    // Counts too large for the file.
    for field in [20, 24, 88, 96] {
        let mut b = good.clone();
        set_u32(&mut b, field, u32::MAX);
        assert!(Cache::parse(&b).is_err(), "field {field}");
    }
    // The string area is not scanned at open: a NUL in it is found by the full check (field
    // by field from version 4, where the area holds the records too; in one pass over the
    // area before), and refused by the lookups that read it.
    let v3 = in_compat_version(&good, 3).unwrap();
    for (file, want) in [
        (&good, "user field holds ':', a newline or NUL"),
        (&v3, "string area holds ':', a newline or NUL"),
    ] {
        let mut b = file.clone();
        let strings = header(&b, 92);
        let home = strings + find(&b[strings..], b"/home/alice");
        b[home + 1] = 0;
        let c = Cache::parse(&b).unwrap();
        assert_eq!(c.validate_all().err(), Some(CacheError::Corrupt(want)));
        assert!(c.user_by_name(b"alice").is_none() && c.user_by_uid(5001).is_none());
        assert_eq!(c.user_by_name(b"zoe").unwrap().uid, 5003);
        exercise(&c);
    }
}

/// Where the `i`-th user record (in name order) starts, from the name index (from version 4
/// records and their strings have no fixed stride).
fn rec(b: &[u8], i: usize) -> usize {
    u32_at(b, header(b, 48) + 4 * i).unwrap() as usize
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn a_corrupt_record_hides_only_itself() {
    let good = sample();
    let groups = header(&good, 44);
    // Name order: alice, bob.smith, zoe; admins, demo, empty.
    let (alice, bob, zoe) = (rec(&good, 0), rec(&good, 1), rec(&good, 2));
    let (admins, demo) = (groups, groups + GROUP_REC);
    let mut b = good.clone();
    set_u32(&mut b, alice + 12, u32::MAX); // name length
    set_u32(&mut b, bob + 4, 5); // gid below min_id
    set_u32(&mut b, zoe + 40, u32::MAX); // first supplementary gid
    set_u32(&mut b, demo + 12, u32::MAX - 1); // first member
    let c = Cache::parse(&b).unwrap();
    assert!(c.validate_all().is_err());
    assert!(c.user_by_name(b"alice").is_none() && c.user_by_uid(5001).is_none());
    assert!(c.user_by_name(b"bob.smith").is_none() && c.user_by_uid(5002).is_none());
    assert!(c.user_by_name(b"zoe").is_none() && c.user_by_uid(5003).is_none());
    assert!((0..3).all(|i| c.user_at(i).is_none()));
    assert!(c.group_by_name(b"demo").is_none() && c.group_by_gid(7000).is_none());
    assert!(c.group_at(1).is_none());
    assert_eq!(c.group_at(0).unwrap().name, b"admins");
    assert_eq!(c.group_by_gid(7001).unwrap().name, b"admins");
    assert_eq!(c.group_at(2).unwrap().name, b"empty");
    exercise(&c);

    // Each alone: the others are still served, and enumeration goes on past it.
    for (at, v) in [(alice + 12, u32::MAX), (alice + 16, 1 << 30), (bob, 999)] {
        let mut b = good.clone();
        set_u32(&mut b, at, v);
        let c = Cache::parse(&b).unwrap();
        assert!(c.validate_all().is_err());
        let served: Vec<&[u8]> = (0..3)
            .filter_map(|i| c.user_at(i))
            .map(|p| p.name)
            .collect();
        assert_eq!(served.len(), 2, "{at} = {v}");
        for name in served {
            assert_eq!(c.user_by_name(name).unwrap().name, name);
        }
        assert_eq!(c.group_by_name(b"admins").unwrap().gid, 7001);
        exercise(&c);
    }

    // A record renamed (in its string reference) to another valid name, or given another's
    // uid: lookups of either name or uid return only a record that has it.
    let mut b = good.clone();
    b[bob + 8..bob + 16].copy_from_slice(&good[zoe + 8..zoe + 16]);
    set_u32(&mut b, alice, 5003);
    let c = Cache::parse(&b).unwrap();
    assert!(c.validate_all().is_err());
    exercise(&c);
    assert!(c.user_by_name(b"bob.smith").is_none());
    assert_eq!(c.user_by_uid(5001), None);

    // A supplementary gid below min_id is never handed out (the user still is).
    let mut b = good.clone();
    let words = header(&good, 84);
    let first = header(&good, zoe + 40);
    assert_eq!(u32_at(&good, words + 4 * first), Some(7000));
    set_u32(&mut b, words + 4 * first, 0);
    let c = Cache::parse(&b).unwrap();
    assert_eq!(
        c.validate_all().err(),
        Some(CacheError::Corrupt("user id below min_id"))
    );
    assert_eq!(
        c.user_by_name(b"zoe").unwrap().groups().collect::<Vec<_>>(),
        [7001]
    );
    exercise(&c);
    let _ = admins;
}

#[test]
fn corrupt_tables_end_every_probe_and_return_no_wrong_entry() {
    let good = sample();
    let [(slots, names), (_, uids), (gslots, gnames), (_, gids)] = tables(&good);
    let (users, groups) = (header(&good, 40), header(&good, 44));
    // Every slot full, all pointing at alice under other keys: no empty slot ends the probes.
    let mut b = good.clone();
    for i in 0..slots {
        set_u32(&mut b, uids + i * SLOT, 5002 + (i as u32 % 2)); // bob's and zoe's uids
        set_u32(&mut b, uids + i * SLOT + 4, users as u32);
        set_u32(&mut b, names + i * SLOT, name_hash(b"zoe"));
        set_u32(&mut b, names + i * SLOT + 4, users as u32);
    }
    for i in 0..gslots {
        set_u32(&mut b, gids + i * SLOT, 7000);
        set_u32(
            &mut b,
            gids + i * SLOT + 4,
            (groups + GROUP_REC * (i % 3)) as u32 + 4,
        );
        set_u32(&mut b, gnames + i * SLOT, name_hash(b"demo"));
        set_u32(
            &mut b,
            gnames + i * SLOT + 4,
            (groups + GROUP_REC * 2) as u32,
        );
    }
    let c = Cache::parse(&b).unwrap();
    assert!(c.validate_all().is_err());
    for uid in [5001, 5002, 5003, 5004] {
        assert!(c.user_by_uid(uid).is_none(), "{uid}");
    }
    for name in [&b"alice"[..], b"zoe", b"bob.smith", b"nobody"] {
        assert!(c.user_by_name(name).is_none());
    }
    for gid in [7000, 7001, 7002, 7003] {
        assert!(c.group_by_gid(gid).is_none(), "{gid}");
    }
    assert!(c.group_by_name(b"demo").is_none() && c.group_by_name(b"empty").is_none());
    // Enumeration does not go through the tables.
    assert_eq!(c.user_at(2).unwrap().name, b"zoe");
    assert_eq!(c.group_at(1).unwrap().name, b"demo");
    exercise(&c);
}

#[test]
fn opening_a_large_cache_reads_none_of_its_records() {
    let mut b = CacheBuilder::new(1000, 1);
    for i in 0..100_000u32 {
        b.add_user(user(&format!("u{i}"), 1000 + i, &[]));
    }
    let mut bytes = b.build();
    // Corrupt every record but the first: opening still succeeds, and the first is served.
    let recs: Vec<usize> = (1..100_000).map(|i| rec(&bytes, i)).collect();
    for r in recs {
        set_u32(&mut bytes, r + 12, u32::MAX);
    }
    let c = Cache::parse(&bytes).unwrap();
    assert!(c.validate_all().is_err());
    let first = c.user_at(0).unwrap();
    assert_eq!(c.user_by_uid(first.uid).unwrap().name, first.name);
    assert_eq!(c.user_by_name(first.name).unwrap().uid, first.uid);
    assert!(c.user_at(1).is_none() && c.user_by_name(b"u99999").is_none());
}

#[test]
fn the_users_group_gid_is_in_the_header_and_dropped_in_version_2() {
    assert_eq!(Cache::parse(&sample()).unwrap().users_gid(), None);
    let mut b = CacheBuilder::new(1000, 1);
    b.add_user(user("alice", 5001, &[4_000_000_000]));
    b.users_group(4_000_000_000);
    let bytes = b.build();
    let c = full(&bytes).unwrap();
    assert_eq!(c.users_gid(), Some(4_000_000_000));
    // The previous release's format holds 0 there, and reads the rest unchanged.
    let v2 = in_compat_version(&bytes, 2).unwrap();
    assert_eq!(header(&v2, 8), 2);
    assert_eq!(header(&v2, 100), 0);
    let c2 = full(&v2).unwrap();
    assert_eq!(c2.users_gid(), None);
    assert_eq!(c2.user_by_name(b"alice").unwrap().uid, 5001);
    // A version 2 file with the field set, or a gid below min_id, is refused.
    let mut bad = v2.clone();
    set_u32(&mut bad, 100, 4_000_000_000);
    assert_eq!(
        Cache::parse(&bad).err(),
        Some(CacheError::Corrupt("header"))
    );
    let mut bad = bytes.clone();
    set_u32(&mut bad, 100, 999);
    assert_eq!(
        Cache::parse(&bad).err(),
        Some(CacheError::Corrupt("users_gid below min_id"))
    );
    // A gid below min_id is never written.
    let mut low = CacheBuilder::new(1000, 1);
    low.users_group(10);
    assert_eq!(Cache::parse(&low.build()).unwrap().users_gid(), None);
}

#[test]
fn the_delta_file_sits_beside_the_cache() {
    assert_eq!(delta_path(CACHE_PATH), DELTA_PATH);
    assert_eq!(delta_path("/tmp/x"), "/tmp/x.delta");
    // Never a name the compat rule gives (the daemon removes those of other versions).
    assert!(!DELTA_PATH.ends_with(".cache"));
}

#[test]
fn compat_copies_hold_the_same_directory_in_their_own_layout() {
    let bytes = sample();
    let c = full(&bytes).unwrap();
    assert_eq!(header(&bytes, 8), VERSION as usize);
    // Version 4: user records are 64-aligned blocks with their strings, not a 48-byte stride.
    let starts: Vec<usize> = (0..3).map(|i| rec(&bytes, i)).collect();
    assert!(starts.iter().all(|s| s % 64 == 0), "{starts:?}");
    assert_ne!(starts[1] - starts[0], USER_REC);
    for v in [3, 2] {
        let old = in_compat_version(&bytes, v).unwrap();
        assert_eq!(header(&old, 8), v as usize);
        let o = full(&old).unwrap();
        // Up to version 3: a fixed stride of records, strings elsewhere.
        assert_eq!(rec(&old, 1) - rec(&old, 0), USER_REC);
        assert_eq!(
            (o.user_count(), o.group_count()),
            (c.user_count(), c.group_count())
        );
        for i in 0..c.user_count() {
            let (a, b) = (c.user_at(i).unwrap(), o.user_at(i).unwrap());
            assert_eq!(
                a,
                Passwd {
                    min_id: a.min_id,
                    groups_raw: a.groups_raw,
                    ..b
                }
            );
            assert_eq!(
                a.groups().collect::<Vec<_>>(),
                b.groups().collect::<Vec<_>>()
            );
            assert_eq!(o.user_by_uid(a.uid).unwrap().name, a.name);
        }
        for i in 0..c.group_count() {
            let (a, b) = (c.group_at(i).unwrap(), o.group_at(i).unwrap());
            assert_eq!((a.name, a.gid), (b.name, b.gid));
            assert_eq!(
                a.members().collect::<Vec<_>>(),
                b.members().collect::<Vec<_>>()
            );
        }
        assert_eq!(o.users_gid(), if v >= 3 { c.users_gid() } else { None });
    }
    // Not a compat version, or not a valid file: nothing.
    assert!(in_compat_version(&bytes, VERSION).is_none());
    assert!(in_compat_version(&bytes[..HEADER_LEN], 3).is_none());
}
