//! The directory cache file: OS Login users and groups, written by the daemon, read by the NSS
//! module inside every process that looks a user up.
//!
//! The file is binary, little-endian, and read in place (mmap) with no allocation:
//! [`Cache::parse`] checks every offset, length, name and index once, in O(n), after which every
//! lookup is a binary search that cannot go out of bounds. The file is world-readable (0644) and
//! holds nothing secret: names, ids, gecos, home, shell and group memberships.
//!
//! ```text
//! header (HEADER_LEN = 88 bytes)
//!   0 magic "GADIRC\r\n"   8 version u32   12 header_len u32   16 min_id u32
//!  20 user_count u32      24 group_count u32   28 flags u32 (0)   32 generated_at_unix u64
//!  40 users_off  44 groups_off  48 user_name_idx  52 user_uid_idx  56 group_name_idx
//!  60 group_gid_idx  64 words_off  68 words_count  72 strings_off  76 strings_len
//!  80 file_len u32   84 reserved u32 (0)
//! user record (48 bytes), sorted by name:
//!   uid, gid, name (off,len), gecos (off,len), home (off,len), shell (off,len),
//!   groups (first word, count)              supplementary gids, in the word area
//! group record (20 bytes), sorted by name:
//!   gid, name (off,len), members (first word, count)   each member is 2 words: (off,len)
//! indexes: one u32 per record, the record's offset in the file, sorted by the key
//!   (names compare as bytes; ids as numbers); keys are unique
//! word area: u32s; string area: bytes, (off,len) relative to its start, no terminators
//! ```
//!
//! Ids below `min_id` (never below 1: root is never served) are neither written nor accepted.
//! Names follow [`crate::names::is_valid_name`]; gecos, home and shell hold no `:`, newline,
//! carriage return or NUL.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)]

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use crate::records::{PasswdRecord, RecordError, format_group, is_safe_field, is_valid_name_bytes};

/// Where the daemon writes the cache and the NSS module reads it.
pub const CACHE_PATH: &str = "/var/lib/guest-agent/directory.cache";
/// First bytes of every cache file (the CR LF catches text-mode mangling).
pub const MAGIC: [u8; 8] = *b"GADIRC\r\n";
/// Format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Size of the header.
pub const HEADER_LEN: usize = 88;
/// Longest gecos, home or shell the builder keeps (longer entries are dropped).
pub const MAX_FIELD_LEN: usize = 1024;

const USER_REC: usize = 48;
const GROUP_REC: usize = 20;

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

impl CacheBuilder {
    /// `min_id`: ids below it are dropped (and a floor of 1 always applies).
    pub fn new(min_id: u32, generated_at_unix: u64) -> Self {
        CacheBuilder {
            min_id: min_id.max(1),
            generated_at_unix,
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

    /// The cache file. Entries with an id below `min_id`, an invalid name or a field holding
    /// `:`, a newline, CR or NUL (or longer than [`MAX_FIELD_LEN`]) are dropped; of entries
    /// sharing a name or an id the first added is kept. Supplementary gids below `min_id` and
    /// invalid member names are dropped from their lists.
    pub fn build(self) -> Vec<u8> {
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
        for u in &users {
            let (n, g, h, s) = (
                strings.add(&u.name),
                strings.add(&u.gecos),
                strings.add(&u.home),
                strings.add(&u.shell),
            );
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
        }
        let mut group_recs = Vec::with_capacity(groups.len() * GROUP_REC);
        for g in &groups {
            let n = strings.add(&g.name);
            let at = to_u32(words.len());
            for m in &g.members {
                let (off, len) = strings.add(m);
                words.extend_from_slice(&[off, len]);
            }
            put(
                &mut group_recs,
                &[g.gid, n.0, n.1, at, to_u32(g.members.len())],
            );
        }

        let users_off = HEADER_LEN;
        let groups_off = users_off + user_recs.len();
        let user_name_idx = groups_off + group_recs.len();
        let user_uid_idx = user_name_idx + 4 * users.len();
        let group_name_idx = user_uid_idx + 4 * users.len();
        let group_gid_idx = group_name_idx + 4 * groups.len();
        let words_off = group_gid_idx + 4 * groups.len();
        let strings_off = words_off + 4 * words.len();
        let file_len = strings_off + strings.bytes.len();

        let user_at = |i: usize| to_u32(users_off + i * USER_REC);
        let group_at = |i: usize| to_u32(groups_off + i * GROUP_REC);
        let by_name_users: Vec<u32> = (0..users.len()).map(user_at).collect();
        let mut by_uid: Vec<usize> = (0..users.len()).collect();
        by_uid.sort_by_key(|&i| users.get(i).map(|u| u.uid));
        let by_uid: Vec<u32> = by_uid.into_iter().map(user_at).collect();
        let by_name_groups: Vec<u32> = (0..groups.len()).map(group_at).collect();
        let mut by_gid: Vec<usize> = (0..groups.len()).collect();
        by_gid.sort_by_key(|&i| groups.get(i).map(|g| g.gid));
        let by_gid: Vec<u32> = by_gid.into_iter().map(group_at).collect();

        let mut out = Vec::with_capacity(file_len);
        out.extend_from_slice(&MAGIC);
        put(
            &mut out,
            &[
                VERSION,
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
                to_u32(user_uid_idx),
                to_u32(group_name_idx),
                to_u32(group_gid_idx),
                to_u32(words_off),
                to_u32(words.len()),
                to_u32(strings_off),
                to_u32(strings.bytes.len()),
                to_u32(file_len),
                0,
            ],
        );
        out.extend_from_slice(&user_recs);
        out.extend_from_slice(&group_recs);
        put(&mut out, &by_name_users);
        put(&mut out, &by_uid);
        put(&mut out, &by_name_groups);
        put(&mut out, &by_gid);
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
}

impl<'a> Passwd<'a> {
    /// Supplementary gids (without the primary gid).
    pub fn groups(&self) -> impl Iterator<Item = u32> + 'a {
        self.groups_raw
            .chunks_exact(4)
            .filter_map(|c| c.try_into().ok().map(u32::from_le_bytes))
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

/// A validated view over the bytes of a cache file.
#[derive(Debug, Clone, Copy)]
pub struct Cache<'a> {
    bytes: &'a [u8],
    min_id: u32,
    generated_at_unix: u64,
    user_count: usize,
    group_count: usize,
    users_off: usize,
    groups_off: usize,
    user_name_idx: &'a [u8],
    user_uid_idx: &'a [u8],
    group_name_idx: &'a [u8],
    group_gid_idx: &'a [u8],
    words: &'a [u8],
    strings: &'a [u8],
}

/// `len` bytes at the offset stored at `field` in the header.
fn section(bytes: &[u8], field: usize, len: Option<usize>) -> Result<&[u8], CacheError> {
    let off = u32_at(bytes, field).ok_or(CacheError::Truncated)? as usize;
    let end = len.and_then(|l| off.checked_add(l));
    end.and_then(|end| bytes.get(off..end))
        .ok_or(CacheError::Corrupt("section out of bounds"))
}

fn header_u32(bytes: &[u8], off: usize) -> Result<u32, CacheError> {
    u32_at(bytes, off).ok_or(CacheError::Truncated)
}

/// Binary search over an index of record offsets; `cmp` orders a record against the target.
fn find(idx: &[u8], count: usize, cmp: impl Fn(usize) -> Option<Ordering>) -> Option<usize> {
    let (mut lo, mut hi) = (0usize, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let off = u32_at(idx, mid.checked_mul(4)?)? as usize;
        match cmp(off)? {
            Ordering::Less => lo = mid + 1,
            Ordering::Greater => hi = mid,
            Ordering::Equal => return Some(off),
        }
    }
    None
}

impl<'a> Cache<'a> {
    /// Checks the header and every record, string reference and index. After `Ok`, every
    /// lookup stays in bounds; arbitrary bytes give `Err`, never a panic.
    pub fn parse(bytes: &'a [u8]) -> Result<Cache<'a>, CacheError> {
        if bytes.len() < HEADER_LEN {
            return Err(CacheError::Truncated);
        }
        if bytes.get(..8) != Some(&MAGIC[..]) {
            return Err(CacheError::BadMagic);
        }
        let version = header_u32(bytes, 8)?;
        if version != VERSION {
            return Err(CacheError::UnsupportedVersion(version));
        }
        if header_u32(bytes, 12)? as usize != HEADER_LEN
            || header_u32(bytes, 28)? != 0
            || header_u32(bytes, 84)? != 0
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
        let user_count = header_u32(bytes, 20)? as usize;
        let group_count = header_u32(bytes, 24)? as usize;
        let generated_at_unix = u64_at(bytes, 32).ok_or(CacheError::Truncated)?;
        // The record arrays are in bounds as a whole (records are then read one by one).
        section(bytes, 40, user_count.checked_mul(USER_REC))?;
        section(bytes, 44, group_count.checked_mul(GROUP_REC))?;
        let words_count = header_u32(bytes, 68)? as usize;
        let strings_len = header_u32(bytes, 76)? as usize;
        let cache = Cache {
            bytes,
            min_id,
            generated_at_unix,
            user_count,
            group_count,
            users_off: header_u32(bytes, 40)? as usize,
            groups_off: header_u32(bytes, 44)? as usize,
            user_name_idx: section(bytes, 48, user_count.checked_mul(4))?,
            user_uid_idx: section(bytes, 52, user_count.checked_mul(4))?,
            group_name_idx: section(bytes, 56, group_count.checked_mul(4))?,
            group_gid_idx: section(bytes, 60, group_count.checked_mul(4))?,
            words: section(bytes, 64, words_count.checked_mul(4))?,
            strings: section(bytes, 72, Some(strings_len))?,
        };
        // One pass over the string area stands for a check of every field in it.
        if !is_safe_field(cache.strings) {
            return Err(CacheError::Corrupt(
                "string area holds ':', a newline or NUL",
            ));
        }
        cache.check_records()?;
        cache.check_indexes()?;
        Ok(cache)
    }

    fn check_records(&self) -> Result<(), CacheError> {
        for i in 0..self.user_count {
            let p = self
                .user_record(self.users_off + i * USER_REC)
                .ok_or(CacheError::Corrupt("user record out of bounds"))?;
            if p.uid < self.min_id || p.gid < self.min_id || p.groups().any(|g| g < self.min_id) {
                return Err(CacheError::Corrupt("user id below min_id"));
            }
            if !is_valid_name_bytes(p.name) {
                return Err(CacheError::Corrupt("invalid user name"));
            }
        }
        for i in 0..self.group_count {
            let g = self
                .group_record(self.groups_off + i * GROUP_REC)
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
        }
        Ok(())
    }

    /// Every index entry points at a record of its kind, and keys strictly increase.
    fn check_indexes(&self) -> Result<(), CacheError> {
        let entry_ok = |off: usize, base: usize, rec: usize, count: usize| {
            off >= base && (off - base).is_multiple_of(rec) && (off - base) / rec < count
        };
        let bad = CacheError::Corrupt("index");
        let (mut prev_name, mut prev_id): (Option<&[u8]>, Option<u32>) = (None, None);
        for i in 0..self.user_count {
            let off = u32_at(self.user_name_idx, i * 4).ok_or(bad)? as usize;
            if !entry_ok(off, self.users_off, USER_REC, self.user_count) {
                return Err(bad);
            }
            let name = self.name_at(off, 8).ok_or(bad)?;
            if prev_name.is_some_and(|prev| prev >= name) {
                return Err(CacheError::Corrupt("user name index not sorted"));
            }
            prev_name = Some(name);
            let off = u32_at(self.user_uid_idx, i * 4).ok_or(bad)? as usize;
            if !entry_ok(off, self.users_off, USER_REC, self.user_count) {
                return Err(bad);
            }
            let uid = u32_at(self.bytes, off).ok_or(bad)?;
            if prev_id.is_some_and(|prev| prev >= uid) {
                return Err(CacheError::Corrupt("uid index not sorted"));
            }
            prev_id = Some(uid);
        }
        let (mut prev_name, mut prev_id): (Option<&[u8]>, Option<u32>) = (None, None);
        for i in 0..self.group_count {
            let off = u32_at(self.group_name_idx, i * 4).ok_or(bad)? as usize;
            if !entry_ok(off, self.groups_off, GROUP_REC, self.group_count) {
                return Err(bad);
            }
            let name = self.name_at(off, 4).ok_or(bad)?;
            if prev_name.is_some_and(|prev| prev >= name) {
                return Err(CacheError::Corrupt("group name index not sorted"));
            }
            prev_name = Some(name);
            let off = u32_at(self.group_gid_idx, i * 4).ok_or(bad)? as usize;
            if !entry_ok(off, self.groups_off, GROUP_REC, self.group_count) {
                return Err(bad);
            }
            let gid = u32_at(self.bytes, off).ok_or(bad)?;
            if prev_id.is_some_and(|prev| prev >= gid) {
                return Err(CacheError::Corrupt("gid index not sorted"));
            }
            prev_id = Some(gid);
        }
        Ok(())
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
        })
    }

    fn group_record(&self, off: usize) -> Option<Group<'a>> {
        let rec = self.bytes.get(off..off.checked_add(GROUP_REC)?)?;
        Some(Group {
            gid: u32_at(rec, 0)?,
            name: self.string(rec, 4)?,
            members_raw: self.word_slice(rec, 12, 2)?,
            strings: self.strings,
        })
    }

    /// The name of the record at `off` (names sit at the same place in both record kinds'
    /// string references: users at 8, groups at 4).
    fn name_at(&self, off: usize, at: usize) -> Option<&'a [u8]> {
        let rec = self.bytes.get(off..off.checked_add(at + 8)?)?;
        self.string(rec, at)
    }

    pub fn user_by_name(&self, name: &[u8]) -> Option<Passwd<'a>> {
        let off = find(self.user_name_idx, self.user_count, |off| {
            Some(self.name_at(off, 8)?.cmp(name))
        })?;
        self.user_record(off)
    }

    pub fn user_by_uid(&self, uid: u32) -> Option<Passwd<'a>> {
        if uid < self.min_id {
            return None;
        }
        let off = find(self.user_uid_idx, self.user_count, |off| {
            Some(u32_at(self.bytes, off)?.cmp(&uid))
        })?;
        self.user_record(off)
    }

    pub fn group_by_name(&self, name: &[u8]) -> Option<Group<'a>> {
        let off = find(self.group_name_idx, self.group_count, |off| {
            Some(self.name_at(off, 4)?.cmp(name))
        })?;
        self.group_record(off)
    }

    pub fn group_by_gid(&self, gid: u32) -> Option<Group<'a>> {
        if gid < self.min_id {
            return None;
        }
        let off = find(self.group_gid_idx, self.group_count, |off| {
            Some(u32_at(self.bytes, off)?.cmp(&gid))
        })?;
        self.group_record(off)
    }

    pub fn user_count(&self) -> usize {
        self.user_count
    }

    pub fn group_count(&self) -> usize {
        self.group_count
    }

    /// The `i`th user in name order (enumeration).
    pub fn user_at(&self, i: usize) -> Option<Passwd<'a>> {
        let off = u32_at(self.user_name_idx, i.checked_mul(4)?)?;
        self.user_record(off as usize)
    }

    /// The `i`th group in name order (enumeration).
    pub fn group_at(&self, i: usize) -> Option<Group<'a>> {
        let off = u32_at(self.group_name_idx, i.checked_mul(4)?)?;
        self.group_record(off as usize)
    }

    /// Ids below this are never served.
    pub fn min_id(&self) -> u32 {
        self.min_id
    }

    pub fn generated_at_unix(&self) -> u64 {
        self.generated_at_unix
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
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
        b[8] = 2;
        assert_eq!(
            Cache::parse(&b).err(),
            Some(CacheError::UnsupportedVersion(2))
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
}
