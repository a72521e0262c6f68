//! `/etc/nsswitch.conf`: adding our NSS module to the `passwd` and `group` lines, and taking
//! exactly that out again.
//!
//! The edit is textual and minimal: every byte we did not add (spacing, tabs, comments,
//! `[NOTFOUND=return]` actions, other modules such as `systemd` or `sss`) stays as it was, so
//! [`disable`] after [`enable`] gives back the original file byte for byte.
//!
//! Where the module goes: right after `files` (or `compat`) and the action items that belong
//! to it, and after the `systemd` and `sss` entries that follow those, so local accounts
//! always win, and so do the accounts systemd (DynamicUser, homed, userdb) and sssd (LDAP, AD)
//! serve: a directory name must not shadow them. An operator's `files [NOTFOUND=return]` keeps
//! its meaning (then our module is never asked, which is what that operator asked for). Without
//! `files` or `compat` it goes at the end of the line. A database with no line at all behaves
//! as `files` in glibc, so we add `DB: files MODULE # added by guest-agent` at the end of the
//! file, marked so that [`disable`] recognises and deletes the whole line. A line that names a
//! database but no service is refused rather than guessed at.

use std::path::{Path, PathBuf};

use super::files::{self, FileError};

/// The NSS module's name (`libnss_guestagent.so.2`).
pub const DEFAULT_MODULE: &str = "guestagent";
/// The databases the module serves.
pub const DEFAULT_DBS: [&str; 2] = ["passwd", "group"];
/// Ends a line we added whole.
const ADDED_MARK: &str = " # added by guest-agent";

#[derive(Debug, thiserror::Error)]
pub enum NsswitchError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{path} does not exist; create it (`passwd: files`, `group: files`) or reinstall libc-bin"
    )]
    Missing { path: PathBuf },
    #[error("{path} is not UTF-8 text; fix the file by hand")]
    NotText { path: PathBuf },
    #[error("nsswitch.conf line {line} (`{db}:`) lists no service; add `files` to it")]
    EmptyServiceList { line: usize, db: String },
}

/// Where the file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsswitchPaths {
    pub file: PathBuf,
}

impl Default for NsswitchPaths {
    fn default() -> Self {
        NsswitchPaths {
            file: "/etc/nsswitch.conf".into(),
        }
    }
}

/// One item of a service list, by byte range in its line.
#[derive(Debug, Clone, Copy)]
struct Item {
    start: usize,
    end: usize,
    action: bool,
}

/// A configuration line split into database name and service items (comments excluded).
fn parse(line: &str) -> Option<(&str, Vec<Item>)> {
    let active = &line[..line.find('#').unwrap_or(line.len())];
    let colon = active.find(':')?;
    let db = active[..colon].trim();
    if db.is_empty() || !db.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let bytes = active.as_bytes();
    let mut items = Vec::new();
    let mut i = colon + 1;
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let action = bytes[i] == b'[';
        if action {
            // An action list may hold blanks: `[ NOTFOUND=return ]`.
            while i < bytes.len() && bytes[i] != b']' {
                i += 1;
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'[' {
                i += 1;
            }
        }
        items.push(Item {
            start,
            end: i,
            action,
        });
    }
    Some((db, items))
}

fn has_service(line: &str, items: &[Item], name: &str) -> bool {
    items
        .iter()
        .any(|it| !it.action && &line[it.start..it.end] == name)
}

/// Adds `module` to the lines of `dbs`. Returns the new text and the databases it was added to
/// (a line that already has it is left alone and not listed); keep that list for [`disable`].
pub fn enable(
    text: &str,
    module: &str,
    dbs: &[&str],
) -> Result<(String, Vec<String>), NsswitchError> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut added: Vec<String> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let Some((db, items)) = parse(line).filter(|(db, _)| dbs.contains(db)) else {
            out.push_str(line);
            continue;
        };
        seen.push(db);
        if has_service(line, &items, module) {
            out.push_str(line);
            continue;
        }
        let at = match items
            .iter()
            .position(|it| !it.action && matches!(&line[it.start..it.end], "files" | "compat"))
        {
            Some(k) => {
                // `files` and its actions, then each `systemd` / `sss` and its actions.
                let mut last = k + items[k + 1..].iter().take_while(|it| it.action).count();
                while let Some(next) = items.get(last + 1)
                    && !next.action
                    && matches!(&line[next.start..next.end], "systemd" | "sss")
                {
                    last += 1 + items[last + 2..].iter().take_while(|it| it.action).count();
                }
                items[last].end
            }
            None => match items.last() {
                Some(last) => last.end,
                None => {
                    return Err(NsswitchError::EmptyServiceList {
                        line: number + 1,
                        db: db.to_string(),
                    });
                }
            },
        };
        out.push_str(&line[..at]);
        out.push(' ');
        out.push_str(module);
        out.push_str(&line[at..]);
        if !added.iter().any(|d| d == db) {
            added.push(db.to_string());
        }
    }
    for db in dbs.iter().filter(|db| !seen.contains(db)) {
        if !out.is_empty() && !out.ends_with('\n') {
            // Keep "no newline at end of file": the new line goes after a newline we add,
            // and itself ends without one, so disable can take both out again.
            out.push('\n');
            out.push_str(&added_line(db, module));
        } else {
            out.push_str(&added_line(db, module));
            out.push('\n');
        }
        added.push(db.to_string());
    }
    Ok((out, added))
}

fn added_line(db: &str, module: &str) -> String {
    format!("{db}: files {module}{ADDED_MARK}")
}

/// Removes `module` from the lines of the databases [`enable`] reported as `added`: a line it
/// added whole is deleted, otherwise the module and the blank before it are taken out.
pub fn disable(text: &str, module: &str, added: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let Some((db, items)) = parse(line).filter(|(db, _)| added.iter().any(|a| a == db)) else {
            out.push_str(line);
            continue;
        };
        if line.trim_end_matches('\n') == added_line(db, module) {
            if !line.ends_with('\n') && out.ends_with('\n') {
                out.pop(); // the newline enable put in front of it
            }
            continue;
        }
        let Some(it) = items
            .iter()
            .find(|it| !it.action && &line[it.start..it.end] == module)
        else {
            out.push_str(line);
            continue;
        };
        let start = if line[..it.start].ends_with([' ', '\t']) {
            it.start - 1
        } else {
            it.start
        };
        out.push_str(&line[..start]);
        out.push_str(&line[it.end..]);
    }
    out
}

fn read(path: &Path) -> Result<String, NsswitchError> {
    let bytes = files::read_optional(path)?.ok_or_else(|| NsswitchError::Missing {
        path: path.to_path_buf(),
    })?;
    String::from_utf8(bytes).map_err(|_| NsswitchError::NotText {
        path: path.to_path_buf(),
    })
}

/// The databases [`apply_enable`] would add the module to now, without writing anything:
/// record them before the edit, so that a crash right after it cannot lose them.
pub fn planned_additions(
    paths: &NsswitchPaths,
    module: &str,
    dbs: &[&str],
) -> Result<Vec<String>, NsswitchError> {
    Ok(enable(&read(&paths.file)?, module, dbs)?.1)
}

/// [`enable`] on the file (where a symbolic link points: the link stays), written atomically
/// (0644). Returns whether the file changed and
/// the databases the module was added to: persist that list for [`apply_disable`].
pub fn apply_enable(
    paths: &NsswitchPaths,
    module: &str,
    dbs: &[&str],
) -> Result<(bool, Vec<String>), NsswitchError> {
    let file = files::config_target(&paths.file);
    let (text, added) = enable(&read(&file)?, module, dbs)?;
    let changed = files::write_atomic(&file, text.as_bytes(), 0o644, None)?;
    Ok((changed, added))
}

/// [`disable`] on the file, written atomically (0644). Returns whether the file changed.
pub fn apply_disable(
    paths: &NsswitchPaths,
    module: &str,
    added: &[String],
) -> Result<bool, NsswitchError> {
    let file = files::config_target(&paths.file);
    let text = disable(&read(&file)?, module, added);
    Ok(files::write_atomic(&file, text.as_bytes(), 0o644, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::files::tests::TempDir;

    const DEBIAN_12: &str = "# /etc/nsswitch.conf\n#\n# Example configuration of GNU Name Service Switch functionality.\n# If you have the `glibc-doc-reference' and `info' packages installed, try:\n# `info libc \"Name Service Switch\"' for information about this file.\n\npasswd:         files systemd\ngroup:          files systemd\nshadow:         files systemd\ngshadow:        files systemd\n\nhosts:          files dns\nnetworks:       files\n\nprotocols:      db files\nservices:       db files\nethers:         db files\nrpc:            db files\n\nnetgroup:       nis\n";
    const UBUNTU_2204: &str = "# /etc/nsswitch.conf\n#\n# Example configuration of GNU Name Service Switch functionality.\n# If you have the `glibc-doc-reference' and `info' packages installed, try:\n# `info libc \"Name Service Switch\"' for information about this file.\n\npasswd:         files systemd\ngroup:          files systemd\nshadow:         files\ngshadow:        files\n\nhosts:          files mdns4_minimal [NOTFOUND=return] dns\nnetworks:       files\n\nprotocols:      db files\nservices:       db files\nethers:         db files\nrpc:            db files\n\nnetgroup:       nis\n";

    fn round_trip(text: &str) -> (String, Vec<String>) {
        let (new, added) = enable(text, DEFAULT_MODULE, &DEFAULT_DBS).unwrap();
        assert_eq!(
            disable(&new, DEFAULT_MODULE, &added),
            text,
            "round trip of {text:?}"
        );
        let (again, none) = enable(&new, DEFAULT_MODULE, &DEFAULT_DBS).unwrap();
        assert_eq!(
            (again.as_str(), none.len()),
            (new.as_str(), 0),
            "idempotent"
        );
        (new, added)
    }

    #[test]
    fn debian_and_ubuntu_defaults() {
        for text in [DEBIAN_12, UBUNTU_2204] {
            let (new, added) = round_trip(text);
            assert_eq!(added, ["passwd", "group"]);
            assert!(
                new.contains("\npasswd:         files systemd guestagent\n"),
                "{new}"
            );
            assert!(
                new.contains("\ngroup:          files systemd guestagent\n"),
                "{new}"
            );
            assert!(new.contains("\nshadow:         files"), "shadow untouched");
        }
    }

    #[test]
    fn odd_files_round_trip() {
        let cases = [
            (
                "passwd:\tfiles\tsss\ngroup:\tcompat\n",
                "passwd:\tfiles\tsss guestagent\ngroup:\tcompat guestagent\n",
            ),
            (
                "passwd: files [NOTFOUND=return] systemd # local first\ngroup: files   \n",
                "passwd: files [NOTFOUND=return] systemd guestagent # local first\ngroup: files guestagent   \n",
            ),
            (
                "passwd: sss ldap\ngroup: files",
                "passwd: sss ldap guestagent\ngroup: files guestagent",
            ),
            (
                "  passwd : files [ NOTFOUND = return ]#x\n",
                "  passwd : files [ NOTFOUND = return ] guestagent#x\ngroup: files guestagent # added by guest-agent\n",
            ),
            (
                "# passwd: files\nhosts: files dns",
                "# passwd: files\nhosts: files dns\npasswd: files guestagent # added by guest-agent\ngroup: files guestagent # added by guest-agent",
            ),
            (
                "",
                "passwd: files guestagent # added by guest-agent\ngroup: files guestagent # added by guest-agent\n",
            ),
            (
                "passwd: files systemd\npasswd: compat\ngroup: files\n",
                "passwd: files systemd guestagent\npasswd: compat guestagent\ngroup: files guestagent\n",
            ),
        ];
        for (before, after) in cases {
            let (new, _) = round_trip(before);
            assert_eq!(new, after);
        }
    }

    #[test]
    fn goes_after_systemd_and_sss_that_follow_files() {
        for (before, after) in [
            (
                "passwd: files systemd sss [UNAVAIL=continue] ldap\n",
                "passwd: files systemd sss [UNAVAIL=continue] guestagent ldap\n",
            ),
            (
                "passwd: files ldap systemd\n",
                "passwd: files guestagent ldap systemd\n",
            ),
            ("passwd: files sss\n", "passwd: files sss guestagent\n"),
        ] {
            let (new, added) = enable(before, DEFAULT_MODULE, &["passwd"]).unwrap();
            assert_eq!(new, after);
            assert_eq!(disable(&new, DEFAULT_MODULE, &added), before);
        }
    }

    #[test]
    fn leaves_a_line_that_has_the_module_alone() {
        let text = "passwd: files guestagent\ngroup: files\n";
        let (new, added) = enable(text, DEFAULT_MODULE, &DEFAULT_DBS).unwrap();
        assert_eq!(new, "passwd: files guestagent\ngroup: files guestagent\n");
        assert_eq!(added, ["group"]);
        assert_eq!(
            disable(&new, DEFAULT_MODULE, &added),
            text,
            "operator's module kept"
        );
    }

    #[test]
    fn refuses_an_empty_service_list() {
        let err = enable(
            "hosts: dns\ngroup:   # nothing\n",
            DEFAULT_MODULE,
            &DEFAULT_DBS,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "nsswitch.conf line 2 (`group:`) lists no service; add `files` to it"
        );
    }

    #[test]
    fn apply_on_a_real_file() {
        let tmp = TempDir::new("nsswitch");
        let paths = NsswitchPaths {
            file: tmp.join("nsswitch.conf"),
        };
        assert!(matches!(
            apply_enable(&paths, DEFAULT_MODULE, &DEFAULT_DBS),
            Err(NsswitchError::Missing { .. })
        ));
        std::fs::write(&paths.file, DEBIAN_12).unwrap();
        let (changed, added) = apply_enable(&paths, DEFAULT_MODULE, &DEFAULT_DBS).unwrap();
        assert!(changed);
        let (changed, none) = apply_enable(&paths, DEFAULT_MODULE, &DEFAULT_DBS).unwrap();
        assert!(!changed && none.is_empty());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&paths.file).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o644);
        assert!(apply_disable(&paths, DEFAULT_MODULE, &added).unwrap());
        assert_eq!(std::fs::read_to_string(&paths.file).unwrap(), DEBIAN_12);
    }

    /// A symlinked nsswitch.conf (image builders and config managers make them): the file it
    /// points at is edited, and the link stays a link (an atomic replace of the link turned it
    /// into a regular file, detached from what the operator manages).
    #[test]
    fn a_symlinked_file_is_edited_where_it_points() {
        let tmp = TempDir::new("nsswitch-link");
        std::fs::create_dir_all(tmp.join("managed")).unwrap();
        let target = tmp.join("managed/nsswitch.conf");
        std::fs::write(&target, DEBIAN_12).unwrap();
        let paths = NsswitchPaths {
            file: tmp.join("nsswitch.conf"),
        };
        std::os::unix::fs::symlink("managed/nsswitch.conf", &paths.file).unwrap();
        let (changed, added) = apply_enable(&paths, DEFAULT_MODULE, &DEFAULT_DBS).unwrap();
        assert!(changed);
        assert!(
            std::fs::symlink_metadata(&paths.file)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            std::fs::read_to_string(&target)
                .unwrap()
                .contains("files systemd guestagent")
        );
        assert!(apply_disable(&paths, DEFAULT_MODULE, &added).unwrap());
        assert!(
            std::fs::symlink_metadata(&paths.file)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), DEBIAN_12);
    }
}
