//! The OS Login service's side effects on the host, each a thin call into `crate::host`.

use std::path::Path;

use super::profile::OsUser;
use crate::host::{files, home, sudoers};

/// The directory cache: world-readable (it holds no keys), in a root-owned 0755 directory;
/// then the same directory in each older format of `cache::COMPAT_VERSIONS` beside it (for the
/// NSS modules of the previous release), and files of other versions removed (left by another
/// release: nobody keeps them fresh). True when the main file changed.
pub fn write_cache(path: &Path, bytes: &[u8]) -> Result<bool, String> {
    use guest_agent_wire::cache;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let changed = files::write_atomic(path, bytes, 0o644, None).map_err(|e| e.to_string())?;
    for &v in cache::COMPAT_VERSIONS {
        if let Some(old) = cache::in_compat_version(bytes, v) {
            let compat = Path::new(&cache::compat_path(&path.to_string_lossy(), v)).to_owned();
            files::write_atomic(&compat, &old, 0o644, None).map_err(|e| e.to_string())?;
        }
    }
    remove_compat_caches(path, cache::COMPAT_VERSIONS)?;
    Ok(changed)
}

/// The delta file (see `cache::delta_path`): world-readable, replaced atomically, in this
/// format only (an older module ignores it and asks the daemon, as it always did on a miss).
pub fn write_delta(path: &Path, bytes: &[u8]) -> Result<(), String> {
    files::write_atomic(path, bytes, 0o644, None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Removes the cache files of other format versions beside `path` (`directory.vN.cache`), but
/// those of `keep`.
pub fn remove_compat_caches(path: &Path, keep: &[u32]) -> Result<(), String> {
    use guest_agent_wire::cache;
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let main = path.to_string_lossy();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let name = p.to_string_lossy();
        // Only names this rule gives: compat_path(main, N) for a number N.
        let version = name
            .rsplit_once(".v")
            .and_then(|(_, rest)| rest.strip_suffix(".cache"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(v) = version
            && !keep.contains(&v)
            && cache::compat_path(&main, v) == name
        {
            files::remove_if_exists(&p).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The admins' passwordless sudo rules (checked by visudo, installed atomically; removed when
/// nobody is an admin).
pub fn write_sudoers(path: &Path, admins: &[String]) -> Result<(), String> {
    let paths = sudoers::SudoersPaths {
        file: path.to_owned(),
        ..Default::default()
    };
    let grantees: Vec<sudoers::Grantee> =
        admins.iter().cloned().map(sudoers::Grantee::User).collect();
    sudoers::apply(&paths, &grantees)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What [`ensure_home`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    Created,
    /// There already, the user's own.
    Exists,
    /// There already, owned by this other uid (root included): never adopted.
    TakenBy(u32),
}

/// The user's home from the skeleton, at the first authorized login.
pub fn ensure_home(user: &OsUser, skel: &Path) -> Result<Home, String> {
    use std::os::unix::fs::MetadataExt;
    let paths = home::HomePaths {
        skel: skel.to_owned(),
        ..Default::default()
    };
    match home::create_home(&paths, Path::new(&user.home), user.uid, user.gid) {
        Ok(home::HomeOutcome::Created) => Ok(Home::Created),
        Ok(_) => match std::fs::symlink_metadata(&user.home) {
            Ok(m) if m.uid() != user.uid => Ok(Home::TakenBy(m.uid())),
            _ => Ok(Home::Exists),
        },
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::files::tests::TempDir;

    #[test]
    fn the_cache_is_written_with_its_compat_files_and_strays_removed() {
        let tmp = TempDir::new("effects-cache");
        let main = tmp.join("directory.cache");
        for name in [
            "directory.v1.cache",
            "directory.v9.cache",
            "directory.vx.cache",
            "other.v1.cache",
        ] {
            std::fs::write(tmp.join(name), "x").unwrap();
        }
        remove_compat_caches(&main, &[9]).unwrap();
        let left = |name: &str| tmp.join(name).exists();
        assert!(
            !left("directory.v1.cache"),
            "another version's file removed"
        );
        assert!(left("directory.v9.cache") && left("directory.vx.cache") && left("other.v1.cache"));
        // Writing the cache: the main file, each compat version beside it, no other version.
        let bytes = guest_agent_wire::cache::CacheBuilder::new(1000, 1).build();
        assert!(write_cache(&main, &bytes).unwrap());
        assert_eq!(std::fs::read(&main).unwrap(), bytes);
        assert!(!left("directory.v9.cache"));
        for &v in guest_agent_wire::cache::COMPAT_VERSIONS {
            let compat = std::fs::read(tmp.join(&format!("directory.v{v}.cache"))).unwrap();
            let c = guest_agent_wire::cache::Cache::parse(&compat);
            assert!(c.is_ok() || v < guest_agent_wire::cache::MIN_READ_VERSION);
            assert_eq!(compat[8..12], v.to_le_bytes());
        }
    }
}
