//! Ownership and mode rules sshd applies to paths, as pure functions over `lstat` results:
//! the AuthorizedKeysCommand program and its parents (root-owned, not group/world-writable),
//! and StrictModes for a user's home, `~/.ssh` and `~/.ssh/authorized_keys`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What `lstat` said about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub kind: Kind,
}

/// A path and its `lstat` (`Err`: missing or unreadable, with the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub stat: Result<Stat, String>,
}

/// One thing sshd would object to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub what: String,
    /// The command that fixes it.
    pub fix: String,
}

/// `path` and each parent directory up to `/`, the path itself first.
pub fn with_parents(path: &Path) -> Vec<PathBuf> {
    path.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect()
}

fn writable_by_others(mode: u32) -> bool {
    mode & 0o022 != 0
}

/// sshd's rule for AuthorizedKeysCommand/AuthorizedPrincipalsCommand: the program (a regular,
/// executable file) and every directory above it owned by root and not writable by group or
/// others. `chain` is the program first, then its parents (see [`with_parents`]) of the
/// resolved path.
pub fn helper_problems(chain: &[Entry]) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, e) in chain.iter().enumerate() {
        let p = e.path.display();
        let stat = match &e.stat {
            Ok(s) => s,
            Err(why) => {
                out.push(Problem {
                    path: e.path.clone(),
                    what: format!("{p}: {why}"),
                    fix: format!(
                        "install the agent binary at {p} or set oslogin.helper_path to where it is"
                    ),
                });
                continue;
            }
        };
        if i == 0 && stat.kind != Kind::File {
            out.push(Problem {
                path: e.path.clone(),
                what: format!("{p} is not a regular file"),
                fix: format!("set oslogin.helper_path to the guest-agent binary, not {p}"),
            });
        }
        if i == 0 && stat.mode & 0o111 == 0 {
            out.push(Problem {
                path: e.path.clone(),
                what: format!("{p} is not executable"),
                fix: format!("chmod 755 {p}"),
            });
        }
        if stat.uid != 0 {
            out.push(Problem {
                path: e.path.clone(),
                what: format!(
                    "{p} is owned by uid {}, not root (sshd refuses the command)",
                    stat.uid
                ),
                fix: format!("chown root:root {p}"),
            });
        }
        if writable_by_others(stat.mode) {
            let kind = if i == 0 { "file" } else { "directory" };
            out.push(Problem {
                path: e.path.clone(),
                what: format!(
                    "{kind} {p} is group/world-writable (mode {:04o}; sshd refuses the command)",
                    stat.mode
                ),
                fix: format!("chmod go-w {p}"),
            });
        }
    }
    out
}

/// Who the user is, for StrictModes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// The user's primary group is a private group (named like the user, no other members):
    /// Debian's sshd then accepts group-writable files.
    pub private_group: bool,
}

/// StrictModes: `chain` is `~/.ssh/authorized_keys`, `~/.ssh`, then the home, each owned by the
/// user or root and not writable by others (group-writable is accepted, with a warning, when the
/// group is the user's private group: Debian's sshd allows it, upstream's does not).
/// Returns (failures, warnings). A missing authorized_keys is reported by the caller, who
/// knows whether one is expected.
pub fn strict_modes(chain: &[Entry], user: &str, owner: Owner) -> (Vec<Problem>, Vec<Problem>) {
    let (mut fail, mut warn) = (Vec::new(), Vec::new());
    for e in chain {
        let p = e.path.display();
        let Ok(stat) = &e.stat else { continue };
        if stat.kind == Kind::Symlink {
            warn.push(Problem {
                path: e.path.clone(),
                what: format!("{p} is a symbolic link (sshd checks where it points)"),
                fix: format!("replace the link {p} with a real file or directory"),
            });
            continue;
        }
        if stat.uid != owner.uid && stat.uid != 0 {
            fail.push(Problem {
                path: e.path.clone(),
                what: format!(
                    "{p} is owned by uid {}, not by {user} or root (StrictModes)",
                    stat.uid
                ),
                fix: format!("chown {user}: {p}"),
            });
        }
        let mode = format!("{:04o}", stat.mode);
        let want = match stat.kind {
            Kind::Dir if e.path.ends_with(".ssh") => "700",
            Kind::Dir => "755",
            _ => "600",
        };
        if stat.mode & 0o002 != 0 {
            fail.push(Problem {
                path: e.path.clone(),
                what: format!("{p} is world-writable (mode {mode}; StrictModes refuses it)"),
                fix: format!("chmod {want} {p}"),
            });
        } else if stat.mode & 0o020 != 0 {
            let allowed = owner.private_group && stat.gid == owner.gid;
            let problem = Problem {
                path: e.path.clone(),
                what: format!(
                    "{p} is group-writable (mode {mode}){}",
                    if allowed {
                        " by the user's private group"
                    } else {
                        "; StrictModes refuses it"
                    }
                ),
                fix: format!("chmod {want} {p}"),
            };
            if allowed {
                warn.push(problem);
            } else {
                fail.push(problem);
            }
        }
    }
    (fail, warn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, uid: u32, mode: u32, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            stat: Ok(Stat {
                uid,
                gid: uid,
                mode,
                kind,
            }),
        }
    }

    #[test]
    fn parents_up_to_the_root() {
        assert_eq!(
            with_parents(Path::new("/usr/bin/guest-agent")),
            vec![
                PathBuf::from("/usr/bin/guest-agent"),
                "/usr/bin".into(),
                "/usr".into(),
                "/".into()
            ]
        );
    }

    #[test]
    fn a_group_writable_parent_of_the_helper_is_named() {
        let good = vec![
            entry("/srv/gw/guest-agent", 0, 0o755, Kind::File),
            entry("/srv/gw", 0, 0o755, Kind::Dir),
            entry("/srv", 0, 0o755, Kind::Dir),
            entry("/", 0, 0o755, Kind::Dir),
        ];
        assert!(helper_problems(&good).is_empty());
        let mut bad = good.clone();
        bad[1] = entry("/srv/gw", 0, 0o775, Kind::Dir);
        let p = helper_problems(&bad);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, PathBuf::from("/srv/gw"));
        assert!(
            p[0].what
                .contains("directory /srv/gw is group/world-writable (mode 0775")
        );
        assert_eq!(p[0].fix, "chmod go-w /srv/gw");
        let mut bad = good.clone();
        bad[2] = entry("/srv", 1000, 0o755, Kind::Dir);
        bad[0] = entry("/srv/gw/guest-agent", 0, 0o644, Kind::File);
        let p = helper_problems(&bad);
        assert_eq!(p.len(), 2);
        assert!(p[0].what.contains("not executable"));
        assert_eq!(p[1].fix, "chown root:root /srv");
        let missing = vec![Entry {
            path: "/usr/bin/guest-agent".into(),
            stat: Err("no such file".into()),
        }];
        assert_eq!(helper_problems(&missing).len(), 1);
    }

    #[test]
    fn strict_modes_name_the_path_and_the_chmod() {
        let owner = Owner {
            uid: 1001,
            gid: 1001,
            private_group: true,
        };
        let good = vec![
            entry("/home/dave/.ssh/authorized_keys", 1001, 0o600, Kind::File),
            entry("/home/dave/.ssh", 1001, 0o700, Kind::Dir),
            entry("/home/dave", 1001, 0o755, Kind::Dir),
        ];
        assert_eq!(strict_modes(&good, "dave", owner), (vec![], vec![]));
        let mut bad = good.clone();
        bad[1] = entry("/home/dave/.ssh", 1001, 0o777, Kind::Dir);
        let (fail, _) = strict_modes(&bad, "dave", owner);
        assert_eq!(fail.len(), 1);
        assert!(
            fail[0]
                .what
                .contains("/home/dave/.ssh is world-writable (mode 0777")
        );
        assert_eq!(fail[0].fix, "chmod 700 /home/dave/.ssh");
        // Group-writable by the private group: a warning only; by another group: a failure.
        let mut g = good.clone();
        g[2] = entry("/home/dave", 1001, 0o775, Kind::Dir);
        let (fail, warn) = strict_modes(&g, "dave", owner);
        assert_eq!((fail.len(), warn.len()), (0, 1));
        let shared = Owner {
            private_group: false,
            ..owner
        };
        let (fail, _) = strict_modes(&g, "dave", shared);
        assert_eq!(fail[0].fix, "chmod 755 /home/dave");
        // Owned by someone else.
        let mut o = good.clone();
        o[0] = entry("/home/dave/.ssh/authorized_keys", 1002, 0o600, Kind::File);
        let (fail, _) = strict_modes(&o, "dave", owner);
        assert_eq!(fail[0].fix, "chown dave: /home/dave/.ssh/authorized_keys");
    }
}
