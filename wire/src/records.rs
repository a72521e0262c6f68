//! passwd(5) and group(5) lines, as the daemon sends them on the socket and the NSS module
//! reads them:
//!
//! ```text
//! name:*:uid:gid:gecos:home:shell  (`*`, not `x`: there is no shadow entry, and pam_unix
//! refuses an account whose `x` points at a missing one)
//! name:x:gid:member1,member2
//! ```
//!
//! Both directions check the same rules: names follow [`crate::names::is_valid_name`], ids are
//! plain decimal `u32`, and no field holds `:`, a newline, a carriage return or NUL (members,
//! being names, hold no `,` either). A line that breaks a rule is refused whole, never repaired.
//! Parsing borrows from the line and does not allocate.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)]

use crate::names::is_valid_name;

/// Why a passwd or group line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Not 7 (passwd) or 4 (group) colon-separated fields.
    FieldCount,
    /// The password field is not `x`.
    Password,
    /// The user or group name breaks the name rule.
    Name,
    /// A uid or gid is not a plain decimal `u32`.
    Id,
    /// gecos, home or shell holds a forbidden byte.
    Field,
    /// A group member breaks the name rule.
    Member,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordError::FieldCount => "wrong number of fields",
            RecordError::Password => "password field is not 'x'",
            RecordError::Name => "invalid name",
            RecordError::Id => "invalid id",
            RecordError::Field => "field holds ':', a newline or NUL",
            RecordError::Member => "invalid group member name",
        })
    }
}

impl std::error::Error for RecordError {}

/// Whether `field` may appear in a passwd/group line or the cache file: no `:`, `\n`, `\r`, NUL.
pub fn is_safe_field(field: &[u8]) -> bool {
    // Eight bytes at a time (the cache reader runs this over its whole string area):
    // `has_zero` is the exact "some byte is zero" test of Hacker's Delight, 6-1.
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(LO) & !v & HI != 0;
    let forbidden = |b: u8| matches!(b, b':' | b'\n' | b'\r' | 0);
    let mut chunks = field.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            return !chunk.iter().any(|&b| forbidden(b));
        };
        let v = u64::from_le_bytes(bytes);
        if has_zero(v)
            | has_zero(v ^ (LO * u64::from(b':')))
            | has_zero(v ^ (LO * u64::from(b'\n')))
            | has_zero(v ^ (LO * u64::from(b'\r')))
        {
            return false;
        }
    }
    !chunks.remainder().iter().any(|&b| forbidden(b))
}

/// Bytes allowed after the first in a name (`[a-z0-9_.-]`).
// Evaluated at compile time: an index out of range would fail the build, not panic.
#[allow(clippy::indexing_slicing)]
const NAME_TAIL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-');
        b += 1;
    }
    t
};

/// Whether `name` (bytes) follows the name rule; the same rule as
/// [`crate::names::is_valid_name`], written over bytes for the cache reader.
pub fn is_valid_name_bytes(name: &[u8]) -> bool {
    let Some((&first, rest)) = name.split_first() else {
        return false;
    };
    name.len() <= crate::names::MAX_NAME_LEN
        && (first.is_ascii_lowercase() || first == b'_')
        && rest
            .iter()
            .all(|&b| NAME_TAIL.get(usize::from(b)).copied().unwrap_or(false))
}

/// A decimal id: digits only, no sign, no blanks, fits in `u32`.
pub fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One passwd(5) entry, borrowed from a line or from the caller's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswdRecord<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub gecos: &'a str,
    pub home: &'a str,
    pub shell: &'a str,
}

impl<'a> PasswdRecord<'a> {
    /// Parses `name:*:uid:gid:gecos:home:shell` (no newline).
    pub fn parse(line: &'a str) -> Result<Self, RecordError> {
        let mut fields = line.split(':');
        let mut next = || fields.next().ok_or(RecordError::FieldCount);
        let (name, password, uid, gid) = (next()?, next()?, next()?, next()?);
        let (gecos, home, shell) = (next()?, next()?, next()?);
        if fields.next().is_some() {
            return Err(RecordError::FieldCount);
        }
        if password != "*" {
            return Err(RecordError::Password);
        }
        let record = PasswdRecord {
            name,
            uid: parse_id(uid).ok_or(RecordError::Id)?,
            gid: parse_id(gid).ok_or(RecordError::Id)?,
            gecos,
            home,
            shell,
        };
        record.check()?;
        Ok(record)
    }

    /// Checks every field against the rules.
    pub fn check(&self) -> Result<(), RecordError> {
        if !is_valid_name(self.name) {
            return Err(RecordError::Name);
        }
        if ![self.gecos, self.home, self.shell]
            .iter()
            .all(|f| is_safe_field(f.as_bytes()))
        {
            return Err(RecordError::Field);
        }
        Ok(())
    }

    /// The line, without a newline; refuses records that break the rules.
    pub fn to_line(&self) -> Result<String, RecordError> {
        self.check()?;
        Ok(format!(
            "{}:*:{}:{}:{}:{}:{}",
            self.name, self.uid, self.gid, self.gecos, self.home, self.shell
        ))
    }
}

/// One group(5) entry borrowed from a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRecord<'a> {
    pub name: &'a str,
    pub gid: u32,
    /// The raw member field (`a,b,c`, or empty), already checked.
    members: &'a str,
}

impl<'a> GroupRecord<'a> {
    /// Parses `name:x:gid:member1,member2` (no newline; an empty member list is allowed).
    pub fn parse(line: &'a str) -> Result<Self, RecordError> {
        let mut fields = line.split(':');
        let mut next = || fields.next().ok_or(RecordError::FieldCount);
        let (name, password, gid, members) = (next()?, next()?, next()?, next()?);
        if fields.next().is_some() {
            return Err(RecordError::FieldCount);
        }
        if password != "x" {
            return Err(RecordError::Password);
        }
        if !is_valid_name(name) {
            return Err(RecordError::Name);
        }
        let gid = parse_id(gid).ok_or(RecordError::Id)?;
        if !members.is_empty() && !members.split(',').all(is_valid_name) {
            return Err(RecordError::Member);
        }
        Ok(GroupRecord { name, gid, members })
    }

    /// The member names, in line order.
    pub fn members(&self) -> impl Iterator<Item = &'a str> + Clone + 'a {
        let raw = self.members;
        raw.split(',').filter(move |_| !raw.is_empty())
    }

    pub fn member_count(&self) -> usize {
        self.members().count()
    }
}

/// `name:x:gid:member1,member2`, without a newline; refuses invalid names.
pub fn format_group<S: AsRef<str>>(
    name: &str,
    gid: u32,
    members: &[S],
) -> Result<String, RecordError> {
    if !is_valid_name(name) {
        return Err(RecordError::Name);
    }
    let mut line = format!("{name}:x:{gid}:");
    for (i, m) in members.iter().enumerate() {
        let m = m.as_ref();
        if !is_valid_name(m) {
            return Err(RecordError::Member);
        }
        if i > 0 {
            line.push(',');
        }
        line.push_str(m);
    }
    Ok(line)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn byte_name_rule_matches_the_name_rule() {
        let mut names: Vec<Vec<u8>> = vec![vec![], b"a".to_vec(), vec![b'a'; 32], vec![b'a'; 33]];
        for b in 0..=255u8 {
            names.push(vec![b]);
            names.push(vec![b'a', b]);
            names.push(vec![b, b'a']);
        }
        names.push("\u{e4}".as_bytes().to_vec());
        names.push(b"abcdefghijklmnopqrstuvwxyz0123_.-".to_vec());
        for n in names {
            let expect = std::str::from_utf8(&n).is_ok_and(is_valid_name);
            assert_eq!(is_valid_name_bytes(&n), expect, "{n:?}");
        }
    }

    #[test]
    fn safe_field_finds_forbidden_bytes_anywhere() {
        for len in 0..40 {
            let clean = vec![b'a'; len];
            assert!(is_safe_field(&clean));
            for at in 0..len {
                for bad in [b':', b'\n', b'\r', 0] {
                    let mut f = clean.clone();
                    f[at] = bad;
                    assert!(!is_safe_field(&f), "{f:?}");
                }
            }
        }
        // Neighbours of the forbidden bytes pass (no false positives).
        let near: Vec<u8> = (1..=255u8).filter(|b| !b":\n\r".contains(b)).collect();
        assert!(is_safe_field(&near));
    }

    #[test]
    fn passwd_round_trip() {
        let r = PasswdRecord {
            name: "alice",
            uid: 200001,
            gid: 200002,
            gecos: "Alice Liddell,,,",
            home: "/home/alice",
            shell: "/bin/bash",
        };
        let line = r.to_line().unwrap();
        assert_eq!(
            line,
            "alice:*:200001:200002:Alice Liddell,,,:/home/alice:/bin/bash"
        );
        assert_eq!(PasswdRecord::parse(&line), Ok(r));
        let empty = PasswdRecord::parse("bob:*:1000:1000:::").unwrap();
        assert_eq!((empty.gecos, empty.home, empty.shell), ("", "", ""));
    }

    #[test]
    fn bad_passwd_lines_are_refused() {
        for (line, err) in [
            ("alice:*:1:1:g:/h", RecordError::FieldCount),
            ("alice:*:1:1:g:/h:/s:extra", RecordError::FieldCount),
            ("alice:x:1:1:g:/h:/s", RecordError::Password),
            ("Alice:*:1:1:g:/h:/s", RecordError::Name),
            (":*:1:1:g:/h:/s", RecordError::Name),
            ("alice:*:-1:1:g:/h:/s", RecordError::Id),
            ("alice:*:1:+1:g:/h:/s", RecordError::Id),
            ("alice:*:4294967296:1:g:/h:/s", RecordError::Id),
            ("alice:*::1:g:/h:/s", RecordError::Id),
            ("alice:*:1:1:g\0:/h:/s", RecordError::Field),
            ("alice:*:1:1:g:/h\r:/s", RecordError::Field),
            ("alice:*:1:1:g:/h:/s\n", RecordError::Field),
        ] {
            assert_eq!(PasswdRecord::parse(line), Err(err), "{line:?}");
        }
        let bad = PasswdRecord {
            name: "alice",
            uid: 1,
            gid: 1,
            gecos: "a:b",
            home: "/h",
            shell: "/s",
        };
        assert_eq!(bad.to_line(), Err(RecordError::Field));
        let bad = PasswdRecord {
            name: "a\nb",
            ..bad
        };
        assert_eq!(bad.to_line(), Err(RecordError::Name));
    }

    #[test]
    fn group_round_trip() {
        let line = format_group("demo", 123452, &["alice", "bob"]).unwrap();
        assert_eq!(line, "demo:x:123452:alice,bob");
        let g = GroupRecord::parse(&line).unwrap();
        assert_eq!((g.name, g.gid, g.member_count()), ("demo", 123452, 2));
        assert_eq!(g.members().collect::<Vec<_>>(), ["alice", "bob"]);
        let empty = format_group::<&str>("solo", 5000, &[]).unwrap();
        assert_eq!(empty, "solo:x:5000:");
        let g = GroupRecord::parse(&empty).unwrap();
        assert_eq!(g.members().count(), 0);
    }

    #[test]
    fn bad_group_lines_are_refused() {
        for (line, err) in [
            ("demo:x:1", RecordError::FieldCount),
            ("demo:x:1:a:b", RecordError::FieldCount),
            ("demo:pw:1:a", RecordError::Password),
            ("Demo:x:1:a", RecordError::Name),
            ("demo:x:1x:a", RecordError::Id),
            ("demo:x:1:a,,b", RecordError::Member),
            ("demo:x:1:a,", RecordError::Member),
            ("demo:x:1:a b", RecordError::Member),
            ("demo:x:1:a\0", RecordError::Member),
        ] {
            assert_eq!(GroupRecord::parse(line), Err(err), "{line:?}");
        }
        assert_eq!(format_group("demo", 1, &["a,b"]), Err(RecordError::Member));
        assert_eq!(format_group("demo", 1, &["a:b"]), Err(RecordError::Member));
        assert_eq!(format_group("de:mo", 1, &["a"]), Err(RecordError::Name));
    }
}
