//! What the agent remembers about the accounts it manages (`/var/lib/guest-agent/state.json`):
//! which users it created (only those may ever be deleted by it), which users' keys and sudo
//! membership it manages, and a large removal waiting for confirmation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::host::state_file::{self, StateFile};

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
    /// uid -> home of accounts the agent deleted with their home kept: never given to a new
    /// account while that path exists (its files may still carry the uid).
    pub retired: BTreeMap<u32, String>,
    /// user -> the cloud-init `groups:` memberships the agent added (only these are ever
    /// removed by it).
    pub granted: BTreeMap<String, BTreeSet<String>>,
    /// The takeover from Google's agent (its report's time) whose users were merged into
    /// `managed` and `created` (each report once: a user released since is not adopted again).
    pub takeover_merged: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRemoval {
    pub users: BTreeSet<String>,
    /// The watcher's answer counter when the removal was first seen.
    pub answer: u64,
}

/// Versions: 1 the file of guest-agent 0.1.0 (no `"version"`), 2 the same fields with a
/// version (see [`crate::host::state_file`] for upgrades and downgrades).
impl StateFile for AccountsState {
    const WHAT: &'static str = "accounts state";
    const VERSION: u32 = if cfg!(feature = "next-version") { 3 } else { 2 };
    fn migrate(from: u32, _object: &mut Map<String, Value>) -> Result<(), String> {
        match from {
            1 => Ok(()),
            _ => state_file::next_version_step(from, 2),
        }
    }
}

impl AccountsState {
    /// Loads the state; a missing file is the empty state, an unreadable one is logged and
    /// treated as empty (the agent then manages no one it did not see in metadata: it never
    /// deletes an account it cannot prove it created).
    pub fn load(path: &Path) -> AccountsState {
        state_file::load(path)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        state_file::save(path, self)
    }
}
