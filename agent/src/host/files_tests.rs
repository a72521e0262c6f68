//! Tests of atomic writes, and the temp-dir helpers the other host tests share.

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "guest-agent-{tag}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(path)
    }
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn writes_then_skips_identical_content() {
    let tmp = TempDir::new("files");
    let path = tmp.join("a.conf");
    assert!(write_atomic(&path, b"one\n", 0o640, None).unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), b"one\n");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    let ino = meta.ino();
    assert!(!write_atomic(&path, b"one\n", 0o640, None).unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino, "no rewrite");
    // A different mode alone is a change.
    assert!(write_atomic(&path, b"one\n", 0o644, None).unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
    assert!(write_atomic(&path, b"two\n", 0o644, None).unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
    assert_eq!(entries(&tmp.0), ["a.conf"], "no temporary file left");
}

#[test]
fn sets_owner_by_descriptor() {
    if !is_root() {
        eprintln!("SKIPPED sets_owner_by_descriptor: needs root to chown");
        return;
    }
    let tmp = TempDir::new("files");
    let path = tmp.join("owned");
    assert!(write_atomic(&path, b"x", 0o600, Some((4242, 4343))).unwrap());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
    assert!(!write_atomic(&path, b"x", 0o600, Some((4242, 4343))).unwrap());
    assert!(write_atomic(&path, b"x", 0o600, Some((0, 0))).unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), 0);
}

#[test]
fn replaces_a_symlink_instead_of_following_it() {
    let tmp = TempDir::new("files");
    let victim = tmp.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let dir = DirFd::open(&tmp.0).unwrap();
    symlink(&victim, tmp.join("authorized_keys")).unwrap();
    let name = OsStr::new("authorized_keys");
    assert!(write_atomic_at(&dir, name, b"key\n", 0o600, None).unwrap());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let meta = std::fs::symlink_metadata(tmp.join("authorized_keys")).unwrap();
    assert!(meta.file_type().is_file());
}

#[test]
fn open_child_refuses_symlinked_directories() {
    let tmp = TempDir::new("files");
    std::fs::create_dir(tmp.join("real")).unwrap();
    symlink(tmp.join("real"), tmp.join(".ssh")).unwrap();
    let dir = DirFd::open(&tmp.0).unwrap();
    let err = dir.open_child(OsStr::new(".ssh")).unwrap_err();
    assert!(err.to_string().contains(".ssh"), "{err}");
    assert!(dir.open_child(OsStr::new("real")).is_ok());
    for bad in ["", ".", "..", "a/b"] {
        assert!(matches!(
            write_atomic_at(&dir, OsStr::new(bad), b"", 0o600, None),
            Err(FileError::BadName { .. })
        ));
    }
}

#[test]
fn error_removes_the_temporary_file_and_names_the_path() {
    let tmp = TempDir::new("files");
    // The target is a non-empty directory: the rename fails after the temp was written.
    std::fs::create_dir(tmp.join("target")).unwrap();
    std::fs::write(tmp.join("target/inside"), b"").unwrap();
    let err = write_atomic(&tmp.join("target"), b"data", 0o644, None).unwrap_err();
    assert!(err.to_string().contains("target"), "{err}");
    assert_eq!(entries(&tmp.0), ["target"]);
    let err = write_atomic(&tmp.join("missing/file"), b"", 0o644, None).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn staged_file_is_invisible_until_committed() {
    let tmp = TempDir::new("files");
    let dir = DirFd::open(&tmp.0).unwrap();
    let staged = stage_at(&dir, OsStr::new("f"), b"new", 0o440, None).unwrap();
    let temp = staged.temp_path();
    assert!(temp.file_name().unwrap().as_bytes().starts_with(b".f.tmp-"));
    assert_eq!(std::fs::read(&temp).unwrap(), b"new");
    drop(staged);
    assert!(entries(&tmp.0).is_empty());
    stage_at(&dir, OsStr::new("f"), b"new", 0o440, None)
        .unwrap()
        .commit()
        .unwrap();
    assert_eq!(entries(&tmp.0), ["f"]);
}

#[test]
fn remove_and_read_optional() {
    let tmp = TempDir::new("files");
    let path = tmp.join("f");
    assert_eq!(read_optional(&path).unwrap(), None);
    assert!(!remove_if_exists(&path).unwrap());
    std::fs::write(&path, b"x").unwrap();
    assert_eq!(read_optional(&path).unwrap(), Some(b"x".to_vec()));
    assert!(remove_if_exists(&path).unwrap());
    assert!(!path.exists());
}

#[test]
fn a_symlink_planted_at_the_temporary_name_is_never_followed() {
    let dir = TempDir::new("plant");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    // Predict the first temporary name by seeding this thread's generator, and plant a link
    // there (what a hostile user could do in a directory they own).
    fastrand::seed(7);
    let predicted = format!(".authorized_keys.tmp-{:016x}", fastrand::u64(..));
    symlink(&victim, dir.join(&predicted)).unwrap();
    fastrand::seed(7);
    let d = DirFd::open(&dir.0).unwrap();
    assert!(write_atomic_at(&d, OsStr::new("authorized_keys"), b"keys\n", 0o600, None).unwrap());
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "the link was followed"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("authorized_keys")).unwrap(),
        "keys\n"
    );
    assert!(
        std::fs::symlink_metadata(dir.join(&predicted))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// Sets the modification time of `path` (not following a link) `secs` into the past.
fn age_by(path: &Path, secs: u64) {
    let t = nix::sys::time::TimeSpec::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            - std::time::Duration::from_secs(secs),
    );
    nix::sys::stat::utimensat(
        None,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

#[test]
fn leftovers_of_a_killed_write_are_swept_at_the_next_write_of_the_same_file() {
    let tmp = TempDir::new("sweep");
    let outside = tmp.join("outside");
    std::fs::write(&outside, "keep me").unwrap();
    let dir = tmp.join("d");
    std::fs::create_dir(&dir).unwrap();
    let old = dir.join(".a.conf.tmp-0123456789abcdef");
    let fresh = dir.join(".a.conf.tmp-fedcba9876543210");
    let link = dir.join(".a.conf.tmp-00000000000000aa");
    let other = dir.join(".b.conf.tmp-0123456789abcdef");
    let odd = dir.join(".a.conf.tmp-notours");
    for p in [&old, &fresh, &other, &odd] {
        std::fs::write(p, "partial").unwrap();
    }
    symlink(&outside, &link).unwrap();
    for p in [&old, &link, &other, &odd] {
        age_by(p, 3600);
    }
    assert!(write_atomic(&dir.join("a.conf"), b"new\n", 0o644, None).unwrap());
    assert_eq!(
        entries(&dir),
        [
            ".a.conf.tmp-fedcba9876543210", // fresh: maybe a write in progress
            ".a.conf.tmp-notours",
            ".b.conf.tmp-0123456789abcdef", // another file's: swept when that one is written
            "a.conf",
        ]
    );
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me");
}

#[test]
fn removing_a_file_whose_directory_is_missing_is_nothing_to_do() {
    let tmp = TempDir::new("files");
    assert!(!remove_if_exists(&tmp.join("no-such-dir/file")).unwrap());
    std::fs::write(tmp.join("f"), b"x").unwrap();
    // A directory that is a file is still an error (something odd is there).
    assert!(remove_if_exists(&tmp.join("f/x")).is_err());
    assert!(remove_if_exists(&tmp.join("f")).unwrap());
}
