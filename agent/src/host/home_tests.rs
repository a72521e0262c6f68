//! Tests of home creation in temp dirs (ownership checks need root and are skipped without).

use super::*;
use crate::host::files::tests::{TempDir, is_root};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

#[test]
fn mode_follows_useradd() {
    assert_eq!(home_mode(None), 0o755);
    assert_eq!(
        home_mode(Some("UMASK\t\t022\n#HOME_MODE\t0700\n")),
        0o755,
        "Debian 12"
    );
    assert_eq!(home_mode(Some("UMASK 027\n")), 0o750);
    assert_eq!(home_mode(Some("UMASK 077\nHOME_MODE 0700\n")), 0o700);
    assert_eq!(home_mode(Some("HOME_MODE 0x1e8\n")), 0o750);
    assert_eq!(
        home_mode(Some("HOME_MODE 488\n")),
        0o750,
        "decimal, as strtol reads it"
    );
    assert_eq!(home_mode(Some("HOME_MODE junk\nUMASK 002\n")), 0o775);
}

struct Setup {
    tmp: TempDir,
    paths: HomePaths,
}

/// A root-owned 0755 parent `homes/` and a skeleton with a file, a private file, a
/// directory, a link to a secret file and a dangling link.
fn setup() -> Setup {
    let tmp = TempDir::new("home");
    std::fs::create_dir(tmp.join("homes")).unwrap();
    std::fs::set_permissions(tmp.join("homes"), PermissionsExt::from_mode(0o755)).unwrap();
    let skel = tmp.join("skel");
    std::fs::create_dir_all(skel.join(".config/app")).unwrap();
    std::fs::write(skel.join(".bashrc"), "# bashrc\n").unwrap();
    std::fs::set_permissions(skel.join(".bashrc"), PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(skel.join(".config/app/secret"), "s").unwrap();
    std::fs::set_permissions(
        skel.join(".config/app/secret"),
        PermissionsExt::from_mode(0o4600),
    )
    .unwrap();
    std::fs::set_permissions(skel.join(".config"), PermissionsExt::from_mode(0o750)).unwrap();
    std::fs::write(tmp.join("shadow"), "root:secret\n").unwrap();
    symlink(tmp.join("shadow"), skel.join("shadow-link")).unwrap();
    symlink("/nonexistent/target", skel.join("dangling")).unwrap();
    symlink(tmp.join("homes"), skel.join("dir-link")).unwrap();
    std::fs::write(tmp.join("login.defs"), "UMASK 027\n").unwrap();
    let paths = HomePaths {
        skel,
        login_defs: tmp.join("login.defs"),
    };
    Setup { tmp, paths }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn copies_the_skeleton_without_following_links() {
    if !is_root() {
        eprintln!("SKIPPED copies_the_skeleton_without_following_links: needs a root-owned parent");
        return;
    }
    let s = setup();
    let home = s.tmp.join("homes/alice");
    assert_eq!(
        create_home(&s.paths, &home, 12345, 23456).unwrap(),
        HomeOutcome::Created
    );
    assert_eq!(
        listing(&s.tmp.join("homes")),
        ["alice"],
        "no temporary sibling left"
    );
    assert_eq!(
        listing(&home),
        [".bashrc", ".config", "dangling", "dir-link", "shadow-link"]
    );
    let meta = |p: &str| std::fs::symlink_metadata(home.join(p)).unwrap();
    assert_eq!(meta("").mode() & 0o7777, 0o750, "from UMASK 027");
    assert_eq!(
        std::fs::read_to_string(home.join(".bashrc")).unwrap(),
        "# bashrc\n"
    );
    assert_eq!(meta(".bashrc").mode() & 0o7777, 0o644);
    assert_eq!(meta(".config").mode() & 0o7777, 0o750);
    assert_eq!(
        meta(".config/app/secret").mode() & 0o7777,
        0o600,
        "set-id bit dropped"
    );
    for link in ["shadow-link", "dangling", "dir-link"] {
        assert!(
            meta(link).file_type().is_symlink(),
            "{link} copied as a link"
        );
    }
    assert_eq!(
        std::fs::read_link(home.join("shadow-link")).unwrap(),
        s.tmp.join("shadow")
    );
    for p in [
        "",
        ".bashrc",
        ".config",
        ".config/app",
        ".config/app/secret",
        "shadow-link",
        "dangling",
    ] {
        assert_eq!((meta(p).uid(), meta(p).gid()), (12345, 23456), "{p:?}");
    }
    let target = std::fs::metadata(s.tmp.join("shadow")).unwrap();
    assert_eq!(target.uid(), 0, "the link's target was not chowned");
}

#[test]
fn existing_home_is_left_alone() {
    if !is_root() {
        eprintln!("SKIPPED existing_home_is_left_alone: needs a root-owned parent");
        return;
    }
    let s = setup();
    let home = s.tmp.join("homes/bob");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("notes"), "mine").unwrap();
    assert_eq!(
        create_home(&s.paths, &home, 1, 1).unwrap(),
        HomeOutcome::AlreadyExists
    );
    assert_eq!(listing(&home), ["notes"]);
    symlink("/etc", s.tmp.join("homes/carol")).unwrap();
    let carol = s.tmp.join("homes/carol");
    assert_eq!(
        create_home(&s.paths, &carol, 1, 1).unwrap(),
        HomeOutcome::AlreadyExists
    );
    assert_eq!(listing(&s.tmp.join("homes")), ["bob", "carol"]);
}

#[test]
fn refuses_an_unsafe_parent() {
    let s = setup();
    let homes = s.tmp.join("homes");
    std::fs::set_permissions(&homes, PermissionsExt::from_mode(0o777)).unwrap();
    let err = create_home(&s.paths, &homes.join("dave"), 1, 1).unwrap_err();
    assert!(matches!(err, HomeError::UnsafeParent { .. }), "{err}");
    assert!(err.to_string().contains("homes"), "{err}");
    if is_root() {
        std::fs::set_permissions(&homes, PermissionsExt::from_mode(0o755)).unwrap();
        nix::unistd::chown(&homes, Some(Uid::from_raw(1000)), None).unwrap();
        let err = create_home(&s.paths, &homes.join("dave"), 1, 1).unwrap_err();
        assert!(
            matches!(err, HomeError::UnsafeParent { uid: 1000, .. }),
            "{err}"
        );
    }
    assert!(listing(&homes).is_empty());
    for bad in ["relative/home", "/"] {
        let err = create_home(&s.paths, Path::new(bad), 1, 1).unwrap_err();
        assert!(matches!(err, HomeError::BadPath { .. }), "{bad}: {err}");
    }
}

#[test]
fn failure_leaves_nothing_behind() {
    if !is_root() {
        eprintln!("SKIPPED failure_leaves_nothing_behind: needs a root-owned parent");
        return;
    }
    let s = setup();
    let mut deep = s.paths.skel.clone();
    for _ in 0..=MAX_DEPTH {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let err = create_home(&s.paths, &s.tmp.join("homes/erin"), 1, 1).unwrap_err();
    assert!(matches!(err, HomeError::TooDeep { .. }), "{err}");
    assert!(listing(&s.tmp.join("homes")).is_empty());
}

#[test]
fn missing_skeleton_gives_an_empty_home() {
    if !is_root() {
        eprintln!("SKIPPED missing_skeleton_gives_an_empty_home: needs a root-owned parent");
        return;
    }
    let s = setup();
    let paths = HomePaths {
        skel: s.tmp.join("no-skel"),
        login_defs: s.tmp.join("no-login.defs"),
    };
    let home = s.tmp.join("homes/frank");
    assert_eq!(
        create_home(&paths, &home, 0, 0).unwrap(),
        HomeOutcome::Created
    );
    assert!(listing(&home).is_empty());
    let mode = std::fs::metadata(&home).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755, "no login.defs: useradd's defaults");
}

#[test]
fn half_built_homes_a_killed_agent_left_are_removed_at_the_next_creation() {
    if !is_root() {
        eprintln!("SKIPPED half_built_homes_...: needs a root-owned parent");
        return;
    }
    let s = setup();
    let homes = s.tmp.join("homes");
    let stale = homes.join(".erin.guest-agent-0123456789abcdef");
    let fresh = homes.join(".erin.guest-agent-fedcba9876543210");
    let other = homes.join(".frank.guest-agent-0123456789abcdef");
    for d in [&stale, &fresh, &other] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join(".profile"), "partial").unwrap();
    }
    let hour_ago = nix::sys::time::TimeSpec::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            - std::time::Duration::from_secs(3600),
    );
    for d in [&stale, &other] {
        nix::sys::stat::utimensat(
            None,
            d.as_path(),
            &hour_ago,
            &hour_ago,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    assert_eq!(
        create_home(&s.paths, &homes.join("erin"), 1, 1).unwrap(),
        HomeOutcome::Created
    );
    assert_eq!(
        listing(&homes),
        [
            ".erin.guest-agent-fedcba9876543210",
            ".frank.guest-agent-0123456789abcdef",
            "erin"
        ]
    );
}
