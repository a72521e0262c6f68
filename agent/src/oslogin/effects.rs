//! The OS Login service's side effects on the host, each a thin call into `crate::host`.

use std::path::Path;

use super::profile::OsUser;
use crate::host::{files, home, sudoers};

/// The directory cache: world-readable (it holds no keys), in a root-owned 0755 directory.
pub fn write_cache(path: &Path, bytes: &[u8]) -> Result<bool, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    files::write_atomic(path, bytes, 0o644, None).map_err(|e| e.to_string())
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

/// The user's home from the skeleton, at the first authorized login; true when created.
pub fn ensure_home(user: &OsUser, skel: &Path) -> Result<bool, String> {
    let paths = home::HomePaths {
        skel: skel.to_owned(),
        ..Default::default()
    };
    match home::create_home(&paths, Path::new(&user.home), user.uid, user.gid) {
        Ok(home::HomeOutcome::Created) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}
