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

#[test]
fn round_trip() {
    let bytes = sample();
    let c = Cache::parse(&bytes).unwrap();
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
    // Repeated strings are stored once.
    assert_eq!(bytes.windows(9).filter(|w| w == b"/bin/bash").count(), 1);
}

#[test]
fn empty_cache() {
    let bytes = CacheBuilder::new(1000, 0).build();
    assert_eq!(bytes.len(), HEADER_LEN);
    let c = Cache::parse(&bytes).unwrap();
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
    let c = Cache::parse(&bytes).unwrap();
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
    let c = Cache::parse(&bytes).unwrap();
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
    let c = Cache::parse(&bytes).unwrap();
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
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(Cache::parse(&longer).err(), Some(CacheError::Truncated));
}

/// Everything a reader can do with a parsed cache; none of it may panic.
fn exercise(c: &Cache<'_>) {
    for i in 0..c.user_count() + 1 {
        if let Some(p) = c.user_at(i) {
            assert!(p.uid >= c.min_id());
            assert!(is_valid_name_bytes(p.name));
            assert_eq!(c.user_by_name(p.name).map(|q| q.uid), Some(p.uid));
            assert!(c.user_by_uid(p.uid).is_some());
            let _ = p.groups().count();
        }
    }
    for i in 0..c.group_count() + 1 {
        if let Some(g) = c.group_at(i) {
            assert_eq!(g.members().count(), g.member_count());
            assert!(c.group_by_name(g.name).is_some());
            assert!(c.group_by_gid(g.gid).is_some());
        }
    }
    for name in [&b"alice"[..], b"zoe", b"demo", b"", b"\xff"] {
        let _ = c.user_by_name(name);
        let _ = c.group_by_name(name);
    }
    for id in [0, 1, 999, 1000, 5001, 7000, u32::MAX] {
        let _ = c.user_by_uid(id);
        let _ = c.group_by_gid(id);
    }
}

#[test]
fn random_corruption_never_panics() {
    let good = sample();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut err) = (0, 0);
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
        match Cache::parse(&bytes) {
            Ok(c) => {
                ok += 1;
                exercise(&c);
            }
            Err(_) => err += 1,
        }
    }
    // Flips in names and gecos keep some files valid; most are caught.
    assert!(ok > 0 && err > 0, "ok {ok} err {err}");
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
        let _ = Cache::parse(&bytes[..rng.below(bytes.len())]);
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
    // Raising min_id above the stored ids makes the file invalid, not partly served.
    let mut b = good;
    b[16..20].copy_from_slice(&6000u32.to_le_bytes());
    assert_eq!(
        Cache::parse(&b).err(),
        Some(CacheError::Corrupt("user id below min_id"))
    );
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
        Cache::parse(&bytes).unwrap();
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
    let c = Cache::parse(&bytes).unwrap();
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
                assert!(Cache::parse(&b).is_err(), "byte {at} = {v}");
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
    let table_err = |b: &[u8]| Cache::parse(b).err();
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
    let recs = header(&good, 40);
    let uid0 = u32_at(&good, recs).unwrap();
    let uid1 = u32_at(&good, recs + USER_REC).unwrap();
    let mut b = good.clone();
    set_u32(&mut b, recs + USER_REC, uid0);
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
    let end = bytes.len();
    bytes.extend_from_slice(&[0; 2 * 4 * SLOT]);
    set_u32(&mut bytes, 68, 4);
    set_u32(&mut bytes, 72, end as u32);
    set_u32(&mut bytes, 76, (end + 4 * SLOT) as u32);
    let len = bytes.len() as u32;
    set_u32(&mut bytes, 80, len);
    let c = Cache::parse(&bytes).unwrap();
    assert!(c.group_by_gid(5001).is_none() && c.group_by_name(b"alice").is_none());
    assert_eq!(c.user_by_uid(5001).unwrap().name, b"alice");
}
