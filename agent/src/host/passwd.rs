//! Reading the local account files (`/etc/passwd`, `/etc/group`) directly, not through NSS:
//! the agent decides about *local* accounts, and must not see the OS Login directory (which
//! NSS would show) as local.

use std::path::Path;

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The colon-separated fields of the entries of `text`, skipping comments and NIS `+`/`-`
/// lines.
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.first().is_some_and(|n| !n.is_empty()))
}

pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    records(text)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    records(text)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|m| !m.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Reads and parses a file; a missing or unreadable file is empty (logged).
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "cannot read local accounts");
        String::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_skips_the_rest() {
        let p = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# c\n+nis\nbob:x:1000:1001::/home/bob:/bin/sh\nbad:x:y:1::/:/bin/sh\n",
        );
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[1],
            PasswdEntry {
                name: "bob".into(),
                uid: 1000,
                gid: 1001,
                home: "/home/bob".into()
            }
        );
        let g = parse_group("sudo:x:27:alice,bob\nempty:x:5:\n");
        assert_eq!(g[0].members, vec!["alice", "bob"]);
        assert!(g[1].members.is_empty());
    }
}
