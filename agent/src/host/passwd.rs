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
    /// The login shell (empty when the field is missing).
    pub shell: String,
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
                shell: f.get(6).unwrap_or(&"").to_string(),
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

/// Reads a local account file as text. The files are bytes, not UTF-8: a Latin-1 gecos (common
/// on old images) must not make the whole file unreadable, so bytes that are not UTF-8 become
/// U+FFFD (names, ids and paths the agent compares are ASCII; a name holding such a byte can
/// never equal a valid directory or metadata name, and still counts as taken by its id).
pub fn try_read(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// [`try_read`], with a missing or unreadable file read as empty (logged). Only for callers to
/// whom an empty file is harmless; protection of local accounts uses [`try_read`] and fails
/// closed.
pub fn read(path: &Path) -> String {
    try_read(path).unwrap_or_else(|e| {
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
                home: "/home/bob".into(),
                shell: "/bin/sh".into(),
            }
        );
        let g = parse_group("sudo:x:27:alice,bob\nempty:x:5:\n");
        assert_eq!(g[0].members, vec!["alice", "bob"]);
        assert!(g[1].members.is_empty());
    }

    #[test]
    fn a_file_that_is_not_utf8_is_still_read() {
        let dir = std::env::temp_dir().join(format!("passwd-latin1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        // A Latin-1 gecos ("Jos\xe9") on the first line.
        std::fs::write(
            &path,
            b"jose:x:1001:1001:Jos\xe9:/home/jose:/bin/sh\nbob:x:1002:1002::/home/bob:/bin/sh\n",
        )
        .unwrap();
        let p = parse_passwd(&try_read(&path).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            p.iter()
                .map(|e| (e.name.as_str(), e.uid))
                .collect::<Vec<_>>(),
            vec![("jose", 1001), ("bob", 1002)]
        );
        assert!(try_read(&dir.join("missing")).is_err());
    }
}
