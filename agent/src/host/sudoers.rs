//! A sudoers drop-in granting passwordless sudo to users and groups.
//!
//! The file's name has no `.` and does not end in `~`, because sudo's `#includedir` silently
//! skips such names (the incumbent agent's users with a `.` in their names could not sudo).
//! The new content is staged as a temporary file next to the target, checked with the real
//! `visudo -c -f`, and only then renamed into place with mode 0440, root:root: a file sudo
//! would reject never becomes live (one bad sudoers file locks everyone out of sudo).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_agent_wire::names::is_valid_name;

use super::command::{self, CommandError};
use super::files::{self, DirFd, FileError};

#[derive(Debug, thiserror::Error)]
pub enum SudoersError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("refusing to grant sudo to {0:?}: not a valid user or group name")]
    InvalidName(String),
    #[error(
        "sudo ignores {path} (its name contains '.' or ends in '~'); choose a name without them"
    )]
    IgnoredName { path: PathBuf },
    #[error("visudo rejected the new {path} (the old file is untouched): {message}")]
    Rejected { path: PathBuf, message: String },
}

/// Where the drop-in goes and which visudo checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SudoersPaths {
    pub file: PathBuf,
    pub visudo: PathBuf,
    pub timeout: Duration,
}

impl Default for SudoersPaths {
    fn default() -> Self {
        SudoersPaths {
            file: "/etc/sudoers.d/guest-agent-oslogin".into(),
            visudo: "/usr/sbin/visudo".into(),
            timeout: command::DEFAULT_TIMEOUT,
        }
    }
}

/// Who gets passwordless sudo.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grantee {
    /// A user: `NAME ALL=(ALL:ALL) NOPASSWD: ALL`.
    User(String),
    /// Every member of a group: `%NAME ALL=(ALL:ALL) NOPASSWD: ALL`.
    Group(String),
}

const HEADER: &str = "# Managed by guest-agent: passwordless sudo for the users and groups the \
                      metadata service names.\n# Do not edit: the agent rewrites or removes \
                      this file.\n";

/// The file's text, users then groups, each sorted and listed once; `None` when nobody is
/// granted anything (the file should then not exist).
pub fn render(grantees: &[Grantee]) -> Result<Option<String>, SudoersError> {
    if grantees.is_empty() {
        return Ok(None);
    }
    let mut sorted = grantees.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut text = String::from(HEADER);
    for grantee in &sorted {
        let (prefix, name) = match grantee {
            Grantee::User(name) => ("", name),
            Grantee::Group(name) => ("%", name),
        };
        if !is_valid_name(name) {
            return Err(SudoersError::InvalidName(name.clone()));
        }
        text.push_str(&format!("{prefix}{name} ALL=(ALL:ALL) NOPASSWD: ALL\n"));
    }
    Ok(Some(text))
}

/// What a drop-in this module wrote grants, read back: the grantees of its rule lines (any
/// other line, and a rule of another shape, is not ours and is skipped).
pub fn parse(text: &str) -> Vec<Grantee> {
    text.lines()
        .filter_map(|line| line.strip_suffix(" ALL=(ALL:ALL) NOPASSWD: ALL"))
        .filter_map(|who| match who.strip_prefix('%') {
            Some(group) => is_valid_name(group).then(|| Grantee::Group(group.to_owned())),
            None => is_valid_name(who).then(|| Grantee::User(who.to_owned())),
        })
        .collect()
}

/// The grantees of the drop-in at `path` (none when it does not exist).
pub fn read(path: &Path) -> Result<Vec<Grantee>, FileError> {
    let bytes = files::read_optional(path)?.unwrap_or_default();
    Ok(parse(&String::from_utf8_lossy(&bytes)))
}

/// Whether sudo's `#includedir` reads a file with this name.
pub fn is_included_name(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    !name.is_empty() && !name.contains(&b'.') && !name.ends_with(b"~")
}

/// Whether sudo is installed as far as a drop-in needs: its directory and visudo (which
/// checks every file before it goes live) exist. Minimal images come without sudo.
pub fn installed(paths: &SudoersPaths) -> bool {
    paths.file.parent().is_some_and(Path::is_dir) && paths.visudo.is_file()
}

/// What to do with the drop-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// [`apply`] it (removing an unwanted file needs no visudo, nor a missing directory).
    Apply,
    /// A rule is wanted but sudo is not installed: nothing can be written (or would be read)
    /// until it is; the caller says so once and asks again at its next pass.
    Wait,
}

/// The decision: write when sudo is installed, remove whenever nothing is wanted, wait
/// otherwise.
pub fn step(installed: bool, wanted: bool) -> Step {
    if installed || !wanted {
        Step::Apply
    } else {
        Step::Wait
    }
}

/// Makes the drop-in grant exactly `grantees` (removing it when there are none). Returns
/// whether the file changed.
pub fn apply(paths: &SudoersPaths, grantees: &[Grantee]) -> Result<bool, SudoersError> {
    let changed = match render(grantees)? {
        Some(text) => install_checked(paths, &text)?,
        None => files::remove_if_exists(&paths.file)?,
    };
    if changed {
        crate::events::emit(crate::events::Event::SudoChanged {
            file: paths.file.display().to_string(),
        });
    }
    Ok(changed)
}

/// Stages `text`, has visudo check the staged file, and commits it only if visudo agrees.
fn install_checked(paths: &SudoersPaths, text: &str) -> Result<bool, SudoersError> {
    let (Some(dir), Some(name)) = (paths.file.parent(), paths.file.file_name()) else {
        return Err(SudoersError::IgnoredName {
            path: paths.file.clone(),
        });
    };
    if !is_included_name(name) {
        return Err(SudoersError::IgnoredName {
            path: paths.file.clone(),
        });
    }
    if files::read_optional(&paths.file)?.as_deref() == Some(text.as_bytes())
        && is_root_0440(&paths.file)
    {
        return Ok(false);
    }
    let dir = DirFd::open(dir)?;
    let staged = files::stage_at(&dir, name, text.as_bytes(), 0o440, Some((0, 0)))?;
    check(
        &paths.visudo,
        &staged.temp_path(),
        &paths.file,
        paths.timeout,
    )?;
    staged.commit()?;
    Ok(true)
}

fn is_root_0440(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_file() && m.mode() & 0o7777 == 0o440 && m.uid() == 0 && m.gid() == 0)
}

/// `visudo -c -f FILE` (not `-q`: that would hide the syntax error we want to report).
fn check(visudo: &Path, file: &Path, target: &Path, timeout: Duration) -> Result<(), SudoersError> {
    let file_arg = file.to_string_lossy();
    let out = command::run(visudo, &["-c", "-f", &file_arg], timeout)?;
    if out.status.success() {
        return Ok(());
    }
    Err(SudoersError::Rejected {
        path: target.to_path_buf(),
        message: out.message(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::files::tests::{TempDir, is_root};
    use std::os::unix::fs::MetadataExt;

    fn user(name: &str) -> Grantee {
        Grantee::User(name.into())
    }

    #[test]
    fn renders_sorted_unique_lines() {
        let text = render(&[
            user("zed"),
            Grantee::Group("admins".into()),
            user("bob.smith"),
            user("zed"),
        ])
        .unwrap()
        .unwrap();
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "bob.smith ALL=(ALL:ALL) NOPASSWD: ALL",
                "zed ALL=(ALL:ALL) NOPASSWD: ALL",
                "%admins ALL=(ALL:ALL) NOPASSWD: ALL",
            ]
        );
        assert!(text.starts_with("# Managed by guest-agent"));
        assert_eq!(render(&[]).unwrap(), None);
        for bad in ["root ALL=(ALL) ALL\nx", "Alice", "-x", ""] {
            assert!(matches!(
                render(&[user(bad)]),
                Err(SudoersError::InvalidName(_))
            ));
        }
    }

    #[test]
    fn a_rule_waits_for_sudo_and_removing_never_does() {
        assert_eq!(step(true, true), Step::Apply);
        assert_eq!(step(true, false), Step::Apply);
        assert_eq!(
            step(false, false),
            Step::Apply,
            "nothing wanted: remove (or nothing)"
        );
        assert_eq!(step(false, true), Step::Wait);
        let tmp = TempDir::new("nosudo");
        let paths = SudoersPaths {
            file: tmp.join("sudoers.d/guest-agent-sudoers"),
            visudo: tmp.join("visudo"),
            ..SudoersPaths::default()
        };
        assert!(!installed(&paths));
        // No sudoers.d: removing is nothing to do, not an error.
        assert!(!apply(&paths, &[]).unwrap());
        std::fs::create_dir(tmp.join("sudoers.d")).unwrap();
        assert!(!installed(&paths), "visudo missing");
        std::fs::write(tmp.join("visudo"), "").unwrap();
        assert!(installed(&paths));
    }

    #[test]
    fn a_rendered_file_parses_back_to_its_grantees() {
        let grantees = vec![
            Grantee::User("alice".into()),
            Grantee::User("bob.smith".into()),
            Grantee::Group("admins".into()),
        ];
        let text = render(&grantees).unwrap().unwrap();
        let mut back = parse(&text);
        back.sort();
        let mut want = grantees.clone();
        want.sort();
        assert_eq!(back, want);
        // Lines of another shape or with bad names are not ours.
        let text = "root ALL=(ALL) ALL\nBad ALL=(ALL:ALL) NOPASSWD: ALL\n# eve ALL=(ALL:ALL) NOPASSWD: ALL\neve ALL=(ALL:ALL) NOPASSWD: ALL\n";
        assert_eq!(parse(text), vec![Grantee::User("eve".into())]);
    }

    #[test]
    fn file_names_sudo_would_skip() {
        assert!(is_included_name(OsStr::new("guest-agent-oslogin")));
        for name in ["guest-agent.conf", "x~", ""] {
            assert!(!is_included_name(OsStr::new(name)), "{name}");
        }
        let tmp = TempDir::new("sudoers");
        let paths = SudoersPaths {
            file: tmp.join("ga.conf"),
            ..SudoersPaths::default()
        };
        let err = apply(&paths, &[user("alice")]).unwrap_err();
        assert!(matches!(err, SudoersError::IgnoredName { .. }), "{err}");
    }

    fn visudo_paths(tmp: &TempDir) -> Option<SudoersPaths> {
        let paths = SudoersPaths {
            file: tmp.join("guest-agent-oslogin"),
            ..SudoersPaths::default()
        };
        if !paths.visudo.exists() {
            eprintln!(
                "SKIPPED: {} is missing (apt-get install sudo)",
                paths.visudo.display()
            );
            return None;
        }
        if !is_root() {
            eprintln!("SKIPPED: installing a root:root 0440 file needs root");
            return None;
        }
        Some(paths)
    }

    #[test]
    fn installs_checks_and_removes_with_real_visudo() {
        let tmp = TempDir::new("sudoers");
        let Some(paths) = visudo_paths(&tmp) else {
            return;
        };
        assert!(apply(&paths, &[user("alice"), Grantee::Group("ops".into())]).unwrap());
        let meta = std::fs::metadata(&paths.file).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o440, 0, 0)
        );
        let out = command::run(
            &paths.visudo,
            &["-c", "-f", &paths.file.to_string_lossy()],
            paths.timeout,
        )
        .unwrap();
        assert!(out.status.success(), "{}", out.message());
        assert!(!apply(&paths, &[Grantee::Group("ops".into()), user("alice")]).unwrap());
        assert!(apply(&paths, &[user("alice")]).unwrap());
        assert!(apply(&paths, &[]).unwrap());
        assert!(!paths.file.exists());
        assert!(!apply(&paths, &[]).unwrap());
        assert_eq!(std::fs::read_dir(&tmp.0).unwrap().count(), 0);
    }

    #[test]
    fn rejected_file_leaves_the_old_one_untouched() {
        let tmp = TempDir::new("sudoers");
        let Some(paths) = visudo_paths(&tmp) else {
            return;
        };
        apply(&paths, &[user("alice")]).unwrap();
        let before = std::fs::read(&paths.file).unwrap();
        let err = install_checked(&paths, "alice ALL=(ALL:ALL NOPASSWD: ALL\n").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, SudoersError::Rejected { .. }));
        assert!(
            message.contains("guest-agent-oslogin") && message.contains("syntax error"),
            "{message}"
        );
        assert_eq!(std::fs::read(&paths.file).unwrap(), before);
        assert_eq!(
            std::fs::read_dir(&tmp.0).unwrap().count(),
            1,
            "temporary file removed"
        );
    }
}
