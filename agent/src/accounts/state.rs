//! What the agent remembers about the accounts it manages (`/var/lib/guest-agent/state.json`):
//! which users it created (only those may ever be deleted by it), which users' keys and sudo
//! membership it manages, and a large removal waiting for confirmation.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::host::files;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountsState {
    /// Users the agent created.
    pub created: BTreeSet<String>,
    /// Users whose managed keys block and sudo membership the agent maintains.
    pub managed: BTreeSet<String>,
    /// A removal of more than half the managed users, seen once; applied only when a later
    /// answer of the metadata service asks for the same.
    pub pending_removal: Option<PendingRemoval>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRemoval {
    pub users: BTreeSet<String>,
    /// The watcher's answer counter when the removal was first seen.
    pub answer: u64,
}

impl AccountsState {
    /// Loads the state; a missing file is the empty state, an unreadable one is logged and
    /// treated as empty (the agent then manages no one it did not see in metadata: it never
    /// deletes an account it cannot prove it created).
    pub fn load(path: &Path) -> AccountsState {
        match files::read_optional(path) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "state file unreadable; starting from an empty state (no account will be deleted)");
                AccountsState::default()
            }),
            Ok(None) => AccountsState::default(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the state file");
                AccountsState::default()
            }
        }
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(self)?;
        files::write_atomic(path, &bytes, 0o600, None)?;
        Ok(())
    }
}
