//! The directory cache file: OS Login users and groups, written by the daemon, read by the NSS
//! module inside every process that looks a user up.
//!
//! The file is binary, little-endian, and read in place (mmap) with no allocation. Opening it
//! is O(1): [`Cache::parse`] checks the header and the bounds of the sections only, as every
//! process that looks a user up pays for it. Every lookup by name or id is then a probe of an
//! open-addressing hash table (a slot, then the record and its strings: O(1), whatever the
//! number of users) that checks what it reads as it goes: every offset and length is read
//! through a bounds check, a probe visits each slot at most once, a slot is only followed to
//! the start of a record of its kind, and a record is only returned when it matches the query
//! (its name or id is the one asked) and follows every rule below; anything else is a miss.
//! [`Cache::validate_all`] checks every record, index entry and slot, in O(n): the writer runs
//! it on what it wrote. The file is world-readable (0644) and holds nothing secret: names, ids,
//! gecos, home, shell and group memberships.
//!
//! ```text
//! header (HEADER_LEN = 104 bytes)
//!   0 magic "GADIRC\r\n"   8 version u32 (4)   12 header_len u32   16 min_id u32
//!  20 user_count u32   24 group_count u32   28 flags u32 (0)   32 generated_at_unix u64
//!  40 users_off   44 groups_off   48 user_name_idx   52 group_name_idx
//!  56 user_slots u32   60 user_name_hash   64 user_uid_hash
//!  68 group_slots u32  72 group_name_hash  76 group_gid_hash
//!  80 file_len u32   84 words_off   88 words_count   92 strings_off   96 strings_len
//! 100 users_gid u32: the OS Login users group's gid, which every OS Login user the daemon
//!     serves is a member of (0: none; version 2 files always hold 0 here)
//! user record (48 bytes), sorted by name:
//!   uid, gid, name (off,len), gecos (off,len), home (off,len), shell (off,len),
//!   groups (first word, count)              supplementary gids, in the word area
//!   version 4: each record is followed by its name, gecos, home and shell (in that order,
//!   no terminators), then zeros to the next multiple of 64 bytes from the user section's
//!   start, which is itself 64-aligned in the file: a record and its strings share one or two
//!   cache lines (a random hit at 100,000 users then reads a slot and that block, not a slot, a
//!   record and a string area 10 MB away). The string area starts where the user section
//!   does and runs to the end of the file (the records' references land in their blocks; the
//!   groups' strings follow the words). Up to version 3, records are a fixed-stride array and
//!   the string area follows the words, holding each distinct string once.
//! group record (20 bytes), sorted by name:
//!   gid, name (off,len), members (first word, count)   each member is 2 words: (off,len)
//! name indexes (enumeration): one u32 per record, the record's offset in the file, in byte
//!   order of the names; names are unique
//! hash tables: `slots` slots of 8 bytes, (key u32, record offset u32); offset 0 = empty slot
//!   (its key is 0 too). slots is 0 when there are no records, else a power of two
//!   >= 2 * count (load factor <= 1/2, so a probe always meets an empty slot). Linear probing:
//!   a key with hash h sits in the first slot of h, h+1, h+2, ... (mod slots) holding it, with
//!   no empty slot before it. Each record of the kind is in exactly one slot of each table.
//!   name tables: key = name_hash(name) = fmix32(fnv1a32(name)), probed from key & (slots-1)
//!   id tables:   key = the uid or gid,              probed from fmix32(id) & (slots-1)
//!   fnv1a32: h = 0x811c9dc5; for each byte b: h = (h ^ b) * 0x01000193 (mod 2^32)
//!   fmix32 (MurmurHash3's finalizer): h ^= h >> 16; h *= 0x85ebca6b; h ^= h >> 13;
//!                                     h *= 0xc2b2ae35; h ^= h >> 16
//! word area: u32s; string area: bytes, (off,len) relative to its start, no terminators
//! ```
//!
//! The builder lays sections out in this order: header, the four hash tables (8-byte aligned:
//! a slot never straddles a cache line), user records (version 4: the user blocks), group
//! records, name indexes, words, strings (version 4: the groups' strings); the reader only
//! requires every section to be in bounds, after the header, and aligned (hash tables to 8
//! bytes, record arrays, indexes and words to 4).
//!
//! Ids below `min_id` (never below 1: root is never served) are neither written nor accepted.
//! Names follow [`crate::names::is_valid_name`]; gecos, home and shell hold no `:`, newline,
//! carriage return or NUL. Names and ids are unique within each kind.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)]

use std::collections::{HashMap, HashSet};

use crate::records::{PasswdRecord, RecordError, format_group, is_safe_field, is_valid_name_bytes};

/// Where the daemon writes the cache and the NSS module reads it.
pub const CACHE_PATH: &str = "/var/lib/guest-agent/directory.cache";
/// First bytes of every cache file (the CR LF catches text-mode mangling).
pub const MAGIC: [u8; 8] = *b"GADIRC\r\n";
/// Format version this code writes (1: sorted indexes and binary search; 2: hash tables for
/// lookups, name indexes for enumeration; 3: the users group's gid in the header; 4: each user
/// record followed by its own strings, so a hit reads a slot and one block of two cache lines
/// instead of a slot, a record and the string area elsewhere). A reader
/// given any other version refuses the file (`UnsupportedVersion`) and the NSS module then asks
/// the daemon for every name: during an upgrade or a downgrade, a module loaded by a
/// long-running process meets a file written by another version of the daemon, and must never
/// misread it.
///
/// The build flag `next-version` (tests only: the upgrade test builds the next release from
/// this tree) writes version 5, the layout of 4 under a new number, and reads 2 to 5, as a
/// real next format would keep reading the ones before it.
#[cfg(not(feature = "next-version"))]
pub const VERSION: u32 = 4;
#[cfg(feature = "next-version")]
pub const VERSION: u32 = 5;
/// Oldest version this code reads (a version 2 file is read as one with no users group).
pub const MIN_READ_VERSION: u32 = 2;
/// Older versions the daemon also writes, each to [`compat_path`] next to the file, so that an
/// NSS module of the previous release, still loaded in a long-running process after an upgrade
/// (or loaded by a new process in the moment of a downgrade, before the older daemon has
/// written its own file), reads a fresh file of its own version instead of depending on the
/// daemon for every name. A module that cannot read [`CACHE_PATH`] reads the compat file of its
/// own version, and only when neither opens asks the daemon. Versions 3 (the release before the
/// strings moved next to the records) and 2 (the one before the users group's gid moved into
/// the header); with `next-version`, 4 as well.
#[cfg(not(feature = "next-version"))]
pub const COMPAT_VERSIONS: &[u32] = &[3, 2];
#[cfg(feature = "next-version")]
pub const COMPAT_VERSIONS: &[u32] = &[4, 3, 2];

/// Where the daemon writes the delta file (see [`delta_path`]).
pub const DELTA_PATH: &str = "/var/lib/guest-agent/directory.delta";

/// The delta file beside the cache file at `path` (`directory.cache` -> `directory.delta`):
/// the users the daemon learned on a miss since the last full build of `path`, in the same
/// format and [`VERSION`] (and header, the users group's gid included), so that learning one
/// user costs a file of the learned users, not a rewrite of the whole directory. The NSS module
/// reads it after the main file (the main file wins), before it asks the daemon; a reader of
/// another version refuses it like the main file and asks the daemon instead.
pub fn delta_path(path: &str) -> String {
    match path.strip_suffix(".cache") {
        Some(stem) => format!("{stem}.delta"),
        None => format!("{path}.delta"),
    }
}

/// Where the file of format `version` is written beside `path` (`directory.cache` ->
/// `directory.v2.cache`).
pub fn compat_path(path: &str, version: u32) -> String {
    match path.strip_suffix(".cache") {
        Some(stem) => format!("{stem}.v{version}.cache"),
        None => format!("{path}.v{version}"),
    }
}

/// The file `bytes` (as [`CacheBuilder::build`] made it) in the older format `version`, for
/// [`COMPAT_VERSIONS`] only: the same users and groups, written again in that version's
/// layout (version 3 has the shared string area, version 2 holds 0 where later versions hold
/// the users group's gid); None for another version or bytes that are not a valid file.
pub fn in_compat_version(bytes: &[u8], version: u32) -> Option<Vec<u8>> {
    if !COMPAT_VERSIONS.contains(&version) {
        return None;
    }
    let c = Cache::parse(bytes).ok()?;
    let mut b = CacheBuilder::new(c.min_id(), c.generated_at_unix());
    if let Some(gid) = c.users_gid() {
        b.users_group(gid);
    }
    for i in 0..c.user_count() {
        b.add_user(UserEntry::from(&c.user_at(i)?));
    }
    for i in 0..c.group_count() {
        b.add_group(GroupEntry::from(&c.group_at(i)?));
    }
    Some(b.build_as(version))
}

/// Lossy text of a field read from a file (a valid file holds only UTF-8 there).
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl From<&Passwd<'_>> for UserEntry {
    /// The entry a builder needs to write this record again (into another layout or file).
    fn from(p: &Passwd<'_>) -> Self {
        UserEntry {
            name: lossy(p.name),
            uid: p.uid,
            gid: p.gid,
            gecos: lossy(p.gecos),
            home: lossy(p.home),
            shell: lossy(p.shell),
            groups: p.groups().collect(),
        }
    }
}

impl From<&Group<'_>> for GroupEntry {
    /// The entry a builder needs to write this group again.
    fn from(g: &Group<'_>) -> Self {
        GroupEntry {
            name: lossy(g.name),
            gid: g.gid,
            members: g.members().map(lossy).collect(),
        }
    }
}

/// Size of the header.
pub const HEADER_LEN: usize = 104;
/// Longest gecos, home or shell the builder keeps (longer entries are dropped).
pub const MAX_FIELD_LEN: usize = 1024;

const USER_REC: usize = 48;
/// The first version whose user records are followed by their own strings.
const INLINE_VERSION: u32 = 4;
/// From [`INLINE_VERSION`] on, where user records start (a multiple of this from the user
/// section's start): a record and its strings, about 100 bytes, then span two cache lines.
const BLOCK_ALIGN: usize = 64;
const GROUP_REC: usize = 20;
const SLOT: usize = 8;

/// FNV-1a, 32 bits.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h: u32, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// MurmurHash3's 32-bit finalizer: a bijection that spreads every input bit over the output.
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The key of a name in a name table (and where its probe starts).
fn name_hash(name: &[u8]) -> u32 {
    fmix32(fnv1a32(name))
}

/// Where the probe for an id starts (the key is the id itself).
fn id_hash(id: u32) -> u32 {
    fmix32(id)
}

/// Slots of a table for `count` records: 0, or a power of two at least twice the count.
fn slots_for(count: usize) -> usize {
    if count == 0 {
        0
    } else {
        count.saturating_mul(2).next_power_of_two()
    }
}

/// Why bytes are not a usable cache file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheError {
    /// Shorter than the header, or not as long as the header says.
    Truncated,
    /// Not a cache file.
    BadMagic,
    /// Written by another version of the format.
    UnsupportedVersion(u32),
    /// A section, record, string or index is out of bounds or breaks a rule.
    Corrupt(&'static str),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::Truncated => f.write_str("cache file truncated"),
            CacheError::BadMagic => f.write_str("not a guest-agent directory cache"),
            CacheError::UnsupportedVersion(v) => write!(f, "unsupported cache version {v}"),
            CacheError::Corrupt(what) => write!(f, "corrupt cache: {what}"),
        }
    }
}

impl std::error::Error for CacheError {}

/// A user as the daemon hands it to [`CacheBuilder`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
    /// Supplementary gids (initgroups), without the primary gid.
    pub groups: Vec<u32>,
}

impl UserEntry {
    /// The passwd(5) line (for socket answers).
    pub fn passwd_line(&self) -> Result<String, RecordError> {
        PasswdRecord {
            name: &self.name,
            uid: self.uid,
            gid: self.gid,
            gecos: &self.gecos,
            home: &self.home,
            shell: &self.shell,
        }
        .to_line()
    }
}

/// A group as the daemon hands it to [`CacheBuilder`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

impl GroupEntry {
    /// The group(5) line (for socket answers).
    pub fn group_line(&self) -> Result<String, RecordError> {
        format_group(&self.name, self.gid, &self.members)
    }
}

/// Collects users and groups and writes a cache file.
#[derive(Debug, Clone)]
pub struct CacheBuilder {
    min_id: u32,
    generated_at_unix: u64,
    users_gid: u32,
    users: Vec<UserEntry>,
    groups: Vec<GroupEntry>,
}

fn to_u32(n: usize) -> u32 {
    // A directory past 4 GiB cannot be written; the saturated offsets make `parse` refuse it.
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn field_ok(s: &str) -> bool {
    s.len() <= MAX_FIELD_LEN && is_safe_field(s.as_bytes())
}

/// Keeps the first of each value, in order.
fn dedup_in_order<T: std::hash::Hash + Eq + Clone>(v: &mut Vec<T>) {
    let mut seen = HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

struct Strings {
    bytes: Vec<u8>,
    seen: HashMap<String, (u32, u32)>,
}

impl Strings {
    /// (offset, length) of `s` in the string area, stored once however often it is used.
    fn add(&mut self, s: &str) -> (u32, u32) {
        if let Some(&r) = self.seen.get(s) {
            return r;
        }
        let r = (to_u32(self.bytes.len()), to_u32(s.len()));
        self.bytes.extend_from_slice(s.as_bytes());
        self.seen.insert(s.to_owned(), r);
        r
    }
}

fn put(out: &mut Vec<u8>, words: &[u32]) {
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

/// A hash table of `slots` slots as words (key, offset), from (probe start, key, record offset)
/// entries inserted in order by linear probing.
fn hash_table(slots: usize, entries: impl Iterator<Item = (u32, u32, u32)>) -> Vec<u32> {
    let mut words = vec![0u32; slots * 2];
    let mask = slots.wrapping_sub(1);
    for (start, key, off) in entries {
        let mut i = start as usize & mask;
        // The load factor is at most 1/2: an empty slot is always found.
        for _ in 0..slots {
            if let Some([k, o]) = words.get_mut(i * 2..i * 2 + 2)
                && *o == 0
            {
                (*k, *o) = (key, off);
                break;
            }
            i = (i + 1) & mask;
        }
    }
    words
}

impl CacheBuilder {
    /// `min_id`: ids below it are dropped (and a floor of 1 always applies).
    pub fn new(min_id: u32, generated_at_unix: u64) -> Self {
        CacheBuilder {
            min_id: min_id.max(1),
            generated_at_unix,
            users_gid: 0,
            users: Vec::new(),
            groups: Vec::new(),
        }
    }

    pub fn add_user(&mut self, u: UserEntry) {
        self.users.push(u);
    }

    pub fn add_group(&mut self, g: GroupEntry) {
        self.groups.push(g);
    }

    /// Names the OS Login users group (header field `users_gid`): every user the daemon
    /// serves is a member. The NSS module adds it to the groups of a user it learned from the
    /// daemon when the daemon cannot answer that user's initgroups in time, so sshd's
    /// `Match Group` for the users group never fails open (dropped when below `min_id`).
    pub fn users_group(&mut self, gid: u32) {
        self.users_gid = gid;
    }

    /// The cache file. Entries with an id below `min_id`, an invalid name or a field holding
    /// `:`, a newline, CR or NUL (or longer than [`MAX_FIELD_LEN`]) are dropped; of entries
    /// sharing a name or an id the first added is kept. Supplementary gids below `min_id` and
    /// invalid member names are dropped from their lists.
    pub fn build(self) -> Vec<u8> {
        self.build_as(VERSION)
    }

    /// The file in format `version`: [`VERSION`] (see [`CacheBuilder::build`]), or one of
    /// [`COMPAT_VERSIONS`] (for [`in_compat_version`]): from version 4 on each user's strings
    /// follow its record, before that they are in the shared string area.
    fn build_as(self, version: u32) -> Vec<u8> {
        let inline = version >= INLINE_VERSION;
        let min = self.min_id;
        let (mut names, mut ids) = (HashSet::new(), HashSet::new());
        let mut users: Vec<UserEntry> = Vec::new();
        for mut u in self.users {
            let ok = u.uid >= min
                && u.gid >= min
                && is_valid_name_bytes(u.name.as_bytes())
                && [&u.gecos, &u.home, &u.shell].iter().all(|f| field_ok(f));
            if !ok || names.contains(&u.name) || ids.contains(&u.uid) {
                continue;
            }
            names.insert(u.name.clone());
            ids.insert(u.uid);
            u.groups.retain(|&g| g >= min);
            dedup_in_order(&mut u.groups);
            users.push(u);
        }
        let (mut names, mut ids) = (HashSet::new(), HashSet::new());
        let mut groups: Vec<GroupEntry> = Vec::new();
        for mut g in self.groups {
            if g.gid < min || !is_valid_name_bytes(g.name.as_bytes()) {
                continue;
            }
            if names.contains(&g.name) || ids.contains(&g.gid) {
                continue;
            }
            names.insert(g.name.clone());
            ids.insert(g.gid);
            g.members.retain(|m| is_valid_name_bytes(m.as_bytes()));
            dedup_in_order(&mut g.members);
            groups.push(g);
        }
        users.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        groups.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));

        let mut strings = Strings {
            bytes: Vec::new(),
            seen: HashMap::new(),
        };
        let mut words: Vec<u32> = Vec::new();
        let mut user_recs = Vec::with_capacity(users.len() * USER_REC);
        // Where each user record starts, from the start of the user section.
        let mut user_starts = Vec::with_capacity(users.len());
        for u in &users {
            user_starts.push(user_recs.len());
            let (n, g, h, s) = if inline {
                // Relative to the string area, which starts where the user section does.
                let mut at = user_recs.len() + USER_REC;
                let mut next = |f: &str| {
                    let r = (to_u32(at), to_u32(f.len()));
                    at += f.len();
                    r
                };
                (next(&u.name), next(&u.gecos), next(&u.home), next(&u.shell))
            } else {
                (
                    strings.add(&u.name),
                    strings.add(&u.gecos),
                    strings.add(&u.home),
                    strings.add(&u.shell),
                )
            };
            let at = to_u32(words.len());
            words.extend_from_slice(&u.groups);
            let rec = [
                u.uid,
                u.gid,
                n.0,
                n.1,
                g.0,
                g.1,
                h.0,
                h.1,
                s.0,
                s.1,
                at,
                to_u32(u.groups.len()),
            ];
            put(&mut user_recs, &rec);
            if inline {
                for f in [&u.name, &u.gecos, &u.home, &u.shell] {
                    user_recs.extend_from_slice(f.as_bytes());
                }
                user_recs.resize(user_recs.len().next_multiple_of(BLOCK_ALIGN), 0);
            }
        }
        // Group strings are in the string area: from version 4 in its part after the words,
        // which starts at `tail` in it.
        let member_words: usize = groups.iter().map(|g| 2 * g.members.len()).sum();
        let (user_slots, group_slots) = (slots_for(users.len()), slots_for(groups.len()));
        let user_name_hash = HEADER_LEN;
        let user_uid_hash = user_name_hash + SLOT * user_slots;
        let group_name_hash = user_uid_hash + SLOT * user_slots;
        let group_gid_hash = group_name_hash + SLOT * group_slots;
        let users_off = group_gid_hash + SLOT * group_slots;
        let users_off = if inline && !users.is_empty() {
            users_off.next_multiple_of(BLOCK_ALIGN)
        } else {
            users_off
        };
        let groups_off = users_off + user_recs.len();
        let user_name_idx = groups_off + groups.len() * GROUP_REC;
        let group_name_idx = user_name_idx + 4 * users.len();
        let words_off = group_name_idx + 4 * groups.len();
        let tail_off = words_off + 4 * (words.len() + member_words);
        let (strings_off, tail) = if inline {
            (users_off, to_u32(tail_off - users_off))
        } else {
            (tail_off, 0)
        };
        let mut group_recs = Vec::with_capacity(groups.len() * GROUP_REC);
        for g in &groups {
            let n = strings.add(&g.name);
            let at = to_u32(words.len());
            for m in &g.members {
                let (off, len) = strings.add(m);
                words.extend_from_slice(&[off.wrapping_add(tail), len]);
            }
            put(
                &mut group_recs,
                &[
                    g.gid,
                    n.0.wrapping_add(tail),
                    n.1,
                    at,
                    to_u32(g.members.len()),
                ],
            );
        }
        let file_len = tail_off + strings.bytes.len();

        // Records are laid out in name order: the name indexes are their offsets in order.
        let user_at = |i: usize| to_u32(users_off + user_starts.get(i).copied().unwrap_or(0));
        let group_at = |i: usize| to_u32(groups_off + i * GROUP_REC);
        let by_name_users: Vec<u32> = (0..users.len()).map(user_at).collect();
        let by_name_groups: Vec<u32> = (0..groups.len()).map(group_at).collect();
        let user_names = hash_table(
            user_slots,
            users.iter().enumerate().map(|(i, u)| {
                let h = name_hash(u.name.as_bytes());
                (h, h, user_at(i))
            }),
        );
        let user_uids = hash_table(
            user_slots,
            users
                .iter()
                .enumerate()
                .map(|(i, u)| (id_hash(u.uid), u.uid, user_at(i))),
        );
        let group_names = hash_table(
            group_slots,
            groups.iter().enumerate().map(|(i, g)| {
                let h = name_hash(g.name.as_bytes());
                (h, h, group_at(i))
            }),
        );
        let group_gids = hash_table(
            group_slots,
            groups
                .iter()
                .enumerate()
                .map(|(i, g)| (id_hash(g.gid), g.gid, group_at(i))),
        );

        let mut out = Vec::with_capacity(file_len);
        out.extend_from_slice(&MAGIC);
        put(
            &mut out,
            &[
                version,
                to_u32(HEADER_LEN),
                min,
                to_u32(users.len()),
                to_u32(groups.len()),
                0,
            ],
        );
        out.extend_from_slice(&self.generated_at_unix.to_le_bytes());
        put(
            &mut out,
            &[
                to_u32(users_off),
                to_u32(groups_off),
                to_u32(user_name_idx),
                to_u32(group_name_idx),
                to_u32(user_slots),
                to_u32(user_name_hash),
                to_u32(user_uid_hash),
                to_u32(group_slots),
                to_u32(group_name_hash),
                to_u32(group_gid_hash),
                to_u32(file_len),
                to_u32(words_off),
                to_u32(words.len()),
                to_u32(strings_off),
                to_u32(file_len - strings_off),
                if version >= 3 && self.users_gid >= min {
                    self.users_gid
                } else {
                    0
                },
            ],
        );
        put(&mut out, &user_names);
        put(&mut out, &user_uids);
        put(&mut out, &group_names);
        put(&mut out, &group_gids);
        out.resize(users_off, 0);
        out.extend_from_slice(&user_recs);
        out.extend_from_slice(&group_recs);
        put(&mut out, &by_name_users);
        put(&mut out, &by_name_groups);
        put(&mut out, &words);
        out.extend_from_slice(&strings.bytes);
        out
    }
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

/// A user, borrowed from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passwd<'a> {
    pub name: &'a [u8],
    pub uid: u32,
    pub gid: u32,
    pub gecos: &'a [u8],
    pub home: &'a [u8],
    pub shell: &'a [u8],
    groups_raw: &'a [u8],
    /// The cache's min_id: supplementary gids below it (only a corrupt file has them) are
    /// skipped, so a lookup need not read the word area unless the groups are asked for.
    min_id: u32,
}

impl<'a> Passwd<'a> {
    /// Supplementary gids (without the primary gid); never one below min_id.
    pub fn groups(&self) -> impl Iterator<Item = u32> + 'a {
        let min_id = self.min_id;
        self.groups_raw
            .chunks_exact(4)
            .filter_map(|c| c.try_into().ok().map(u32::from_le_bytes))
            .filter(move |&g| g >= min_id)
    }

    /// Whether every supplementary gid is at least min_id (as in a valid file).
    fn groups_ok(&self) -> bool {
        self.groups().count() == self.groups_raw.len() / 4
    }
}

/// A group, borrowed from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group<'a> {
    pub name: &'a [u8],
    pub gid: u32,
    members_raw: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Group<'a> {
    pub fn members(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let strings = self.strings;
        self.members_raw.chunks_exact(8).filter_map(move |c| {
            let off = u32_at(c, 0)? as usize;
            let len = u32_at(c, 4)? as usize;
            strings.get(off..off.checked_add(len)?)
        })
    }

    pub fn member_count(&self) -> usize {
        self.members_raw.len() / 8
    }
}

/// A hash table in the file: slots of (key, record offset).
#[derive(Debug, Clone, Copy)]
struct Table<'a> {
    slots: &'a [u8],
}

impl<'a> Table<'a> {
    /// The occupied slots on the probe path starting at `hash`, as (key, record offset), up to
    /// the first empty slot and never more than every slot once (a table with no empty slot,
    /// which only corruption makes, still ends). The slot count is a power of two (checked by
    /// [`Cache::parse`]).
    fn probe(self, hash: u32) -> impl Iterator<Item = (u32, usize)> + 'a {
        let slots = self.slots;
        let n = slots.len() / SLOT;
        let mask = n.wrapping_sub(1);
        (0..n).map_while(move |k| {
            let at = ((hash as usize).wrapping_add(k) & mask).checked_mul(SLOT)?;
            let slot = slots.get(at..at.checked_add(SLOT)?)?;
            let off = u32_at(slot, 4)?;
            (off != 0).then_some((u32_at(slot, 0)?, off as usize))
        })
    }

    /// Number of occupied slots, or None when an empty slot has a key (not as written).
    fn occupied(self) -> Option<usize> {
        let mut n = 0;
        for slot in self.slots.chunks_exact(SLOT) {
            match (u32_at(slot, 0)?, u32_at(slot, 4)?) {
                (0, 0) => {}
                (_, 0) => return None,
                _ => n += 1,
            }
        }
        Some(n)
    }
}

/// A view over the bytes of a cache file whose header and section bounds are checked (see
/// [`Cache::parse`]); records are checked as they are read.
#[derive(Debug, Clone, Copy)]
pub struct Cache<'a> {
    bytes: &'a [u8],
    min_id: u32,
    generated_at_unix: u64,
    users_gid: Option<u32>,
    user_count: usize,
    group_count: usize,
    users_off: usize,
    groups_off: usize,
    /// From version 4: user records are followed by their strings (see [`INLINE_VERSION`]),
    /// so they start anywhere in the user section (4-aligned), not at a fixed stride.
    inline: bool,
    user_name_idx: &'a [u8],
    group_name_idx: &'a [u8],
    user_names: Table<'a>,
    user_uids: Table<'a>,
    group_names: Table<'a>,
    group_gids: Table<'a>,
    words: &'a [u8],
    strings: &'a [u8],
}

/// `len` bytes at the offset stored at `field` in the header: after the header, in the file,
/// and starting at a multiple of `align`.
fn section(
    bytes: &[u8],
    field: usize,
    len: Option<usize>,
    align: usize,
) -> Result<&[u8], CacheError> {
    let off = u32_at(bytes, field).ok_or(CacheError::Truncated)? as usize;
    let end = len.and_then(|l| off.checked_add(l));
    let s = end
        .filter(|_| off >= HEADER_LEN)
        .and_then(|end| bytes.get(off..end))
        .ok_or(CacheError::Corrupt("section out of bounds"))?;
    if !off.is_multiple_of(align) {
        return Err(CacheError::Corrupt("section not aligned"));
    }
    Ok(s)
}

fn header_u32(bytes: &[u8], off: usize) -> Result<u32, CacheError> {
    u32_at(bytes, off).ok_or(CacheError::Truncated)
}

/// The hash table whose slot count is at `slots_field` and offset at `field`, for `count`
/// records: 0 slots for no records, else a power of two at least twice the count.
fn table(
    bytes: &[u8],
    slots_field: usize,
    field: usize,
    count: usize,
) -> Result<Table<'_>, CacheError> {
    let slots = header_u32(bytes, slots_field)? as usize;
    if !(slots == 0 && count == 0 || slots.is_power_of_two() && slots / 2 >= count) {
        return Err(CacheError::Corrupt("hash table size"));
    }
    Ok(Table {
        slots: section(bytes, field, slots.checked_mul(SLOT), SLOT)?,
    })
}

/// Whether `off` is where one of the `count` records of `size` bytes from `base` starts.
fn record_start(off: usize, base: usize, size: usize, count: usize) -> bool {
    off.checked_sub(base)
        .is_some_and(|d| d.is_multiple_of(size) && d / size < count)
}

impl<'a> Cache<'a> {
    /// Checks the header and that every section (record arrays, name indexes, hash tables,
    /// words, strings) lies in the file after the header, aligned, with slot counts that fit
    /// the record counts: O(1), whatever the size of the file. Records, slots and index
    /// entries are checked as lookups and enumeration read them: whatever a corrupt file
    /// holds, they stay in bounds, end, and return only entries that follow the rules and match
    /// the query (or nothing). Arbitrary bytes give `Err` or such a view, never a panic. See
    /// [`Cache::validate_all`] for the check of the whole file.
    pub fn parse(bytes: &'a [u8]) -> Result<Cache<'a>, CacheError> {
        if bytes.len() < HEADER_LEN {
            return Err(CacheError::Truncated);
        }
        if bytes.get(..8) != Some(&MAGIC[..]) {
            return Err(CacheError::BadMagic);
        }
        let version = header_u32(bytes, 8)?;
        if !(MIN_READ_VERSION..=VERSION).contains(&version) {
            return Err(CacheError::UnsupportedVersion(version));
        }
        let users_gid = header_u32(bytes, 100)?;
        if header_u32(bytes, 12)? as usize != HEADER_LEN
            || header_u32(bytes, 28)? != 0
            || (version < 3 && users_gid != 0)
        {
            return Err(CacheError::Corrupt("header"));
        }
        if header_u32(bytes, 80)? as usize != bytes.len() {
            return Err(CacheError::Truncated);
        }
        let min_id = header_u32(bytes, 16)?;
        if min_id == 0 {
            return Err(CacheError::Corrupt("min_id is 0"));
        }
        if users_gid != 0 && users_gid < min_id {
            return Err(CacheError::Corrupt("users_gid below min_id"));
        }
        let user_count = header_u32(bytes, 20)? as usize;
        let group_count = header_u32(bytes, 24)? as usize;
        let generated_at_unix = u64_at(bytes, 32).ok_or(CacheError::Truncated)?;
        // The record arrays are in bounds as a whole (records are then read one by one); from
        // version 4 the user section (records and their strings) ends where the groups start.
        let inline = version >= INLINE_VERSION;
        let users_off = header_u32(bytes, 40)? as usize;
        let groups_off = header_u32(bytes, 44)? as usize;
        let users_len = if inline {
            groups_off
                .checked_sub(users_off)
                .filter(|&l| user_count.checked_mul(USER_REC).is_some_and(|min| l >= min))
                .ok_or(CacheError::Corrupt("section out of bounds"))?
        } else {
            user_count
                .checked_mul(USER_REC)
                .ok_or(CacheError::Corrupt("section out of bounds"))?
        };
        section(bytes, 40, Some(users_len), 4)?;
        section(bytes, 44, group_count.checked_mul(GROUP_REC), 4)?;
        let words_count = header_u32(bytes, 88)? as usize;
        let strings_len = header_u32(bytes, 96)? as usize;
        Ok(Cache {
            bytes,
            min_id,
            generated_at_unix,
            users_gid: (users_gid != 0).then_some(users_gid),
            user_count,
            group_count,
            users_off,
            groups_off,
            inline,
            user_name_idx: section(bytes, 48, user_count.checked_mul(4), 4)?,
            group_name_idx: section(bytes, 52, group_count.checked_mul(4), 4)?,
            user_names: table(bytes, 56, 60, user_count)?,
            user_uids: table(bytes, 56, 64, user_count)?,
            group_names: table(bytes, 68, 72, group_count)?,
            group_gids: table(bytes, 68, 76, group_count)?,
            words: section(bytes, 84, words_count.checked_mul(4), 4)?,
            strings: section(bytes, 92, Some(strings_len), 1)?,
        })
    }

    /// Checks every record, string reference, index entry and hash slot, in O(n): after `Ok`,
    /// every record follows the rules, is found by name and by id through the hash tables,
    /// and is listed once by enumeration, in name order. For the writer (right after writing)
    /// and tests; readers need only [`Cache::parse`].
    pub fn validate_all(&self) -> Result<(), CacheError> {
        // Up to version 3, one pass over the string area stands for a check of every field in
        // it (from version 4 it holds the user records too: each field is checked instead).
        if !self.inline && !is_safe_field(self.strings) {
            return Err(CacheError::Corrupt(
                "string area holds ':', a newline or NUL",
            ));
        }
        self.check_indexes()?;
        self.check_records()
    }

    /// Every record (each listed once by the name index, as [`Cache::check_indexes`] found):
    /// in bounds, following the rules, and found through both of its kind's hash tables at its
    /// own offset. As each table holds exactly as many entries as there are records, that makes
    /// every slot point at a distinct record under that record's key, and names and ids unique
    /// (a duplicate would find the other record first).
    fn check_records(&self) -> Result<(), CacheError> {
        let bad_table = CacheError::Corrupt("hash table");
        for t in [self.user_names, self.user_uids] {
            if t.occupied() != Some(self.user_count) {
                return Err(bad_table);
            }
        }
        for t in [self.group_names, self.group_gids] {
            if t.occupied() != Some(self.group_count) {
                return Err(bad_table);
            }
        }
        for i in 0..self.user_count {
            let off = u32_at(self.user_name_idx, i * 4).ok_or(CacheError::Corrupt("index"))?;
            let off = off as usize;
            let p = self.checked_user(off)?;
            if !p.groups_ok() {
                return Err(CacheError::Corrupt("user id below min_id"));
            }
            if self.find_user_by_name(p.name) != Some(off)
                || self.find_user_by_uid(p.uid) != Some(off)
            {
                return Err(CacheError::Corrupt("user hash table"));
            }
        }
        for i in 0..self.group_count {
            let off = self.groups_off + i * GROUP_REC;
            let g = self.checked_group(off)?;
            if self.find_group_by_name(g.name) != Some(off)
                || self.find_group_by_gid(g.gid) != Some(off)
            {
                return Err(CacheError::Corrupt("group hash table"));
            }
        }
        Ok(())
    }

    /// Every name index entry points at a record of its kind, and names strictly increase (so
    /// each record is listed once).
    fn check_indexes(&self) -> Result<(), CacheError> {
        let bad = CacheError::Corrupt("index");
        let kinds = [
            (self.user_name_idx, self.user_count, 8),
            (self.group_name_idx, self.group_count, 4),
        ];
        for (idx, count, name_at) in kinds {
            let mut prev: Option<&[u8]> = None;
            for i in 0..count {
                let off = u32_at(idx, i * 4).ok_or(bad)? as usize;
                let ok = if name_at == 8 {
                    self.is_user(off)
                } else {
                    self.is_group(off)
                };
                if !ok {
                    return Err(bad);
                }
                let name = self.name_at(off, name_at).ok_or(bad)?;
                if prev.is_some_and(|prev| prev >= name) {
                    return Err(CacheError::Corrupt("name index not sorted"));
                }
                prev = Some(name);
            }
        }
        Ok(())
    }

    /// Whether a user record starts at `off`: up to version 3, one of the records at their
    /// fixed stride; from version 4, a record's worth of the user section, 4-aligned (a
    /// record and its strings take a variable length: [`Cache::validate_all`] checks that
    /// every slot and index entry points at a record the name index lists).
    fn is_user(&self, off: usize) -> bool {
        if self.inline {
            off.checked_sub(self.users_off)
                .is_some_and(|d| d.is_multiple_of(4))
                && off
                    .checked_add(USER_REC)
                    .is_some_and(|end| end <= self.groups_off)
        } else {
            record_start(off, self.users_off, USER_REC, self.user_count)
        }
    }

    /// Whether a group record starts at `off`.
    fn is_group(&self, off: usize) -> bool {
        record_start(off, self.groups_off, GROUP_REC, self.group_count)
    }

    fn string(&self, rec: &[u8], at: usize) -> Option<&'a [u8]> {
        let off = u32_at(rec, at)? as usize;
        let len = u32_at(rec, at + 4)? as usize;
        self.strings.get(off..off.checked_add(len)?)
    }

    fn word_slice(&self, rec: &[u8], at: usize, words_per_item: usize) -> Option<&'a [u8]> {
        let first = (u32_at(rec, at)? as usize).checked_mul(4)?;
        let len = (u32_at(rec, at + 4)? as usize)
            .checked_mul(4)?
            .checked_mul(words_per_item)?;
        self.words.get(first..first.checked_add(len)?)
    }

    /// The user record at `off`, its references in bounds (nothing else checked).
    fn user_record(&self, off: usize) -> Option<Passwd<'a>> {
        let rec = self.bytes.get(off..off.checked_add(USER_REC)?)?;
        Some(Passwd {
            uid: u32_at(rec, 0)?,
            gid: u32_at(rec, 4)?,
            name: self.string(rec, 8)?,
            gecos: self.string(rec, 16)?,
            home: self.string(rec, 24)?,
            shell: self.string(rec, 32)?,
            groups_raw: self.word_slice(rec, 40, 1)?,
            min_id: self.min_id,
        })
    }

    /// The group record at `off`, its references in bounds (nothing else checked).
    fn group_record(&self, off: usize) -> Option<Group<'a>> {
        let rec = self.bytes.get(off..off.checked_add(GROUP_REC)?)?;
        Some(Group {
            gid: u32_at(rec, 0)?,
            name: self.string(rec, 4)?,
            members_raw: self.word_slice(rec, 12, 2)?,
            strings: self.strings,
        })
    }

    /// The user record at `off` if it follows the rules a lookup relies on: references in
    /// bounds, uid and gid at least min_id, a valid name, fields free of `:`, newline, CR, NUL.
    /// (Supplementary gids below min_id are skipped by [`Passwd::groups`], not read here.)
    fn checked_user(&self, off: usize) -> Result<Passwd<'a>, CacheError> {
        let p = self
            .user_record(off)
            .ok_or(CacheError::Corrupt("user record out of bounds"))?;
        if p.uid < self.min_id || p.gid < self.min_id {
            return Err(CacheError::Corrupt("user id below min_id"));
        }
        if !is_valid_name_bytes(p.name) {
            return Err(CacheError::Corrupt("invalid user name"));
        }
        if !(is_safe_field(p.gecos) && is_safe_field(p.home) && is_safe_field(p.shell)) {
            return Err(CacheError::Corrupt(
                "user field holds ':', a newline or NUL",
            ));
        }
        Ok(p)
    }

    /// The group record at `off` if it follows every rule: references in bounds (members'
    /// too), gid at least min_id, valid names (members' too).
    fn checked_group(&self, off: usize) -> Result<Group<'a>, CacheError> {
        let g = self
            .group_record(off)
            .ok_or(CacheError::Corrupt("group record out of bounds"))?;
        if g.gid < self.min_id {
            return Err(CacheError::Corrupt("gid below min_id"));
        }
        if !is_valid_name_bytes(g.name) {
            return Err(CacheError::Corrupt("invalid group name"));
        }
        // members() skips references out of bounds: count them to see none was skipped.
        let mut n = 0;
        for m in g.members() {
            if !is_valid_name_bytes(m) {
                return Err(CacheError::Corrupt("invalid group member"));
            }
            n += 1;
        }
        if n != g.member_count() {
            return Err(CacheError::Corrupt("group member out of bounds"));
        }
        Ok(g)
    }

    /// The name of the record at `off` (users' name reference is at 8, groups' at 4).
    fn name_at(&self, off: usize, at: usize) -> Option<&'a [u8]> {
        let rec = self.bytes.get(off..off.checked_add(at + 8)?)?;
        self.string(rec, at)
    }

    /// The id of the record at `off` (the first word of both kinds).
    fn id_at(&self, off: usize) -> Option<u32> {
        u32_at(self.bytes, off)
    }

    /// The offset of the first user record on `name`'s probe path that is named `name`.
    fn find_user_by_name(&self, name: &[u8]) -> Option<usize> {
        let h = name_hash(name);
        self.user_names
            .probe(h)
            .find(|&(key, off)| key == h && self.is_user(off) && self.name_at(off, 8) == Some(name))
            .map(|(_, off)| off)
    }

    /// The offset of the first user record on `uid`'s probe path whose uid is `uid`.
    fn find_user_by_uid(&self, uid: u32) -> Option<usize> {
        self.user_uids
            .probe(id_hash(uid))
            .find(|&(key, off)| key == uid && self.is_user(off) && self.id_at(off) == Some(uid))
            .map(|(_, off)| off)
    }

    /// The offset of the first group record on `name`'s probe path that is named `name`.
    fn find_group_by_name(&self, name: &[u8]) -> Option<usize> {
        let h = name_hash(name);
        self.group_names
            .probe(h)
            .find(|&(key, off)| {
                key == h && self.is_group(off) && self.name_at(off, 4) == Some(name)
            })
            .map(|(_, off)| off)
    }

    /// The offset of the first group record on `gid`'s probe path whose gid is `gid`.
    fn find_group_by_gid(&self, gid: u32) -> Option<usize> {
        self.group_gids
            .probe(id_hash(gid))
            .find(|&(key, off)| key == gid && self.is_group(off) && self.id_at(off) == Some(gid))
            .map(|(_, off)| off)
    }

    /// The user named `name`: a record with that very name, following the rules, or None.
    pub fn user_by_name(&self, name: &[u8]) -> Option<Passwd<'a>> {
        self.checked_user(self.find_user_by_name(name)?).ok()
    }

    /// The user with uid `uid` (never below min_id), following the rules, or None.
    pub fn user_by_uid(&self, uid: u32) -> Option<Passwd<'a>> {
        if uid < self.min_id {
            return None;
        }
        self.checked_user(self.find_user_by_uid(uid)?).ok()
    }

    /// The group named `name`: a record with that very name, following the rules, or None.
    pub fn group_by_name(&self, name: &[u8]) -> Option<Group<'a>> {
        self.checked_group(self.find_group_by_name(name)?).ok()
    }

    /// The group with gid `gid` (never below min_id), following the rules, or None.
    pub fn group_by_gid(&self, gid: u32) -> Option<Group<'a>> {
        if gid < self.min_id {
            return None;
        }
        self.checked_group(self.find_group_by_gid(gid)?).ok()
    }

    /// Number of user records (in a corrupt file, some may not be served).
    pub fn user_count(&self) -> usize {
        self.user_count
    }

    /// Number of group records (in a corrupt file, some may not be served).
    pub fn group_count(&self) -> usize {
        self.group_count
    }

    /// The `i`th user in name order (enumeration); None past the end, or when the entry or
    /// its record is corrupt (later entries may still be there).
    pub fn user_at(&self, i: usize) -> Option<Passwd<'a>> {
        let off = u32_at(self.user_name_idx, i.checked_mul(4)?)? as usize;
        if !self.is_user(off) {
            return None;
        }
        self.checked_user(off).ok()
    }

    /// The `i`th group in name order (enumeration); None past the end, or when the entry or
    /// its record is corrupt (later entries may still be there).
    pub fn group_at(&self, i: usize) -> Option<Group<'a>> {
        let off = u32_at(self.group_name_idx, i.checked_mul(4)?)? as usize;
        if !self.is_group(off) {
            return None;
        }
        self.checked_group(off).ok()
    }

    /// Ids below this are never served.
    pub fn min_id(&self) -> u32 {
        self.min_id
    }

    pub fn generated_at_unix(&self) -> u64 {
        self.generated_at_unix
    }

    /// The OS Login users group's gid, when the file names one (see
    /// [`CacheBuilder::users_group`]).
    pub fn users_gid(&self) -> Option<u32> {
        self.users_gid
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests;
