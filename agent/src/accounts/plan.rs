//! The pure decision: from the keys metadata asks for, the local accounts and what the agent
//! remembers, what to create, which managed blocks to write, who is in the sudo group, and who
//! to delete. No I/O.

use std::collections::{BTreeMap, BTreeSet};

use super::state::{AccountsState, PendingRemoval};

/// What to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Users to create (not present locally).
    pub create: Vec<String>,
    /// Managed keys block of each user to write (empty: remove the block).
    pub keys: BTreeMap<String, Vec<String>>,
    /// Members the sudo group must have among the managed users.
    pub sudo: BTreeSet<String>,
    /// Users whose management ends now (block emptied, out of the sudo group).
    pub released: BTreeSet<String>,
    /// Accounts to delete (`deprovision = "delete"`, created by us, released now).
    pub delete: Vec<String>,
    /// The state to save afterwards.
    pub state: AccountsState,
    /// Users whose removal waits for confirmation by a later answer.
    pub held: BTreeSet<String>,
}

/// The inputs.
pub struct Inputs<'a> {
    /// user -> authorized_keys lines metadata asks for (empty when OS Login is on).
    pub wanted: &'a BTreeMap<String, Vec<String>>,
    /// Users who get the sudo group.
    pub sudo: &'a BTreeSet<String>,
    /// Users still listed in metadata whose keys have all expired: their removal follows the
    /// clock, not an answer of the service, so it is never held for confirmation.
    pub expired: &'a BTreeSet<String>,
    /// Names of the local accounts.
    pub local: &'a BTreeSet<String>,
    pub state: &'a AccountsState,
    pub delete_released: bool,
    /// Accounts never deleted whoever created them (cloud-init's default user).
    pub protected: &'a BTreeSet<String>,
    /// The watcher's answer counter now.
    pub answer: u64,
}

/// Decides. A removal of more than half the managed users (a wiped `ssh-keys`, a bad answer)
/// is held until a later answer of the metadata service asks for the same removal.
pub fn plan(i: &Inputs) -> Plan {
    let mut state = i.state.clone();
    let wanted: BTreeSet<&String> = i.wanted.keys().collect();
    let leaving: BTreeSet<String> = state
        .managed
        .iter()
        .filter(|u| !wanted.contains(u))
        .cloned()
        .collect();
    let suspicious = leaving.iter().filter(|u| !i.expired.contains(*u)).count();
    let mass = suspicious > 0 && suspicious * 2 > state.managed.len();
    let confirmed = match &state.pending_removal {
        Some(p) => p.users == leaving && i.answer > p.answer,
        None => false,
    };
    let (released, held) = if mass && !confirmed {
        if state
            .pending_removal
            .as_ref()
            .is_none_or(|p| p.users != leaving)
        {
            state.pending_removal = Some(PendingRemoval {
                users: leaving.clone(),
                answer: i.answer,
            });
        }
        (BTreeSet::new(), leaving)
    } else {
        state.pending_removal = None;
        (leaving, BTreeSet::new())
    };

    let mut keys: BTreeMap<String, Vec<String>> = i.wanted.clone();
    for u in &released {
        keys.insert(u.clone(), Vec::new());
    }
    let create: Vec<String> = i
        .wanted
        .keys()
        .filter(|u| !i.local.contains(*u))
        .cloned()
        .collect();
    let delete: Vec<String> = if i.delete_released {
        released
            .iter()
            .filter(|u| state.created.contains(*u) && !i.protected.contains(*u))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    state.managed = i
        .wanted
        .keys()
        .cloned()
        .chain(held.iter().cloned())
        .collect();
    state.created.extend(create.iter().cloned());
    for u in &delete {
        state.created.remove(u);
    }
    let sudo = i
        .sudo
        .iter()
        .filter(|u| i.wanted.contains_key(*u))
        .cloned()
        .collect();
    Plan {
        create,
        keys,
        sudo,
        released,
        delete,
        state,
        held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn wanted(list: &[&str]) -> BTreeMap<String, Vec<String>> {
        list.iter()
            .map(|u| (u.to_string(), vec![format!("ssh-ed25519 AAAA {u}")]))
            .collect()
    }

    #[test]
    fn new_users_are_created_and_existing_ones_only_get_keys() {
        let w = wanted(&["alice", "bob"]);
        let p = plan(&Inputs {
            wanted: &w,
            sudo: &names(&["alice", "bob"]),
            expired: &BTreeSet::new(),
            local: &names(&["root", "bob"]),
            state: &AccountsState::default(),
            delete_released: true,
            protected: &BTreeSet::new(),
            answer: 1,
        });
        assert_eq!(p.create, vec!["alice"]);
        assert_eq!(p.keys.len(), 2);
        assert_eq!(
            p.state.created,
            names(&["alice"]),
            "bob existed: never ours to delete"
        );
        assert_eq!(p.state.managed, names(&["alice", "bob"]));
        assert_eq!(p.sudo, names(&["alice", "bob"]));
    }

    #[test]
    fn a_user_leaving_metadata_loses_keys_and_sudo_and_is_deleted_only_if_ours() {
        let state = AccountsState {
            created: names(&["alice"]),
            managed: names(&["alice", "bob", "carol"]),
            pending_removal: None,
        };
        let w = wanted(&["bob", "carol"]);
        let local = names(&["alice", "bob", "carol"]);
        let sudo = names(&["bob", "carol"]);
        let keep = plan(&Inputs {
            wanted: &w,
            sudo: &sudo,
            expired: &BTreeSet::new(),
            local: &local,
            state: &state,
            delete_released: false,
            protected: &BTreeSet::new(),
            answer: 5,
        });
        assert_eq!(keep.released, names(&["alice"]));
        assert_eq!(keep.keys["alice"], Vec::<String>::new());
        assert!(keep.delete.is_empty(), "deprovision = keep");
        let del = plan(&Inputs {
            wanted: &w,
            sudo: &sudo,
            expired: &BTreeSet::new(),
            local: &local,
            state: &state,
            delete_released: true,
            protected: &BTreeSet::new(),
            answer: 5,
        });
        assert_eq!(del.delete, vec!["alice"]);
        assert!(!del.state.created.contains("alice"));
        // cloud-init's default user is never deleted, even when the agent created it.
        let adopted = plan(&Inputs {
            wanted: &w,
            sudo: &sudo,
            expired: &BTreeSet::new(),
            local: &local,
            state: &state,
            delete_released: true,
            protected: &names(&["alice"]),
            answer: 5,
        });
        assert_eq!(adopted.released, names(&["alice"]));
        assert!(adopted.delete.is_empty());
        // bob was not created by us: released, never deleted.
        let w = wanted(&["carol"]);
        let state = AccountsState {
            created: BTreeSet::new(),
            managed: names(&["alice", "bob", "carol"]),
            pending_removal: None,
        };
        let p = plan(&Inputs {
            wanted: &w,
            sudo: &sudo,
            expired: &BTreeSet::new(),
            local: &local,
            state: &state,
            delete_released: true,
            protected: &BTreeSet::new(),
            answer: 5,
        });
        assert!(p.delete.is_empty());
    }

    #[test]
    fn removing_more_than_half_waits_for_a_later_answer_that_agrees() {
        let state = AccountsState {
            created: BTreeSet::new(),
            managed: names(&["a", "b", "c", "d"]),
            pending_removal: None,
        };
        let empty = BTreeMap::new();
        let none = BTreeSet::new();
        let local = names(&["a", "b", "c", "d"]);
        let first = plan(&Inputs {
            wanted: &empty,
            sudo: &none,
            expired: &BTreeSet::new(),
            local: &local,
            state: &state,
            delete_released: true,
            protected: &BTreeSet::new(),
            answer: 7,
        });
        assert!(
            first.released.is_empty() && first.keys.is_empty(),
            "held: nothing touched"
        );
        assert_eq!(first.held, names(&["a", "b", "c", "d"]));
        assert_eq!(first.state.managed, names(&["a", "b", "c", "d"]));
        // The same answer again (a timer pass): still held.
        let again = plan(&Inputs {
            wanted: &empty,
            sudo: &none,
            expired: &BTreeSet::new(),
            local: &local,
            state: &first.state,
            delete_released: true,
            protected: &BTreeSet::new(),
            answer: 7,
        });
        assert!(again.released.is_empty());
        // A later answer agreeing: applied.
        let later = plan(&Inputs {
            wanted: &empty,
            sudo: &none,
            expired: &BTreeSet::new(),
            local: &local,
            state: &again.state,
            delete_released: true,
            protected: &BTreeSet::new(),
            answer: 8,
        });
        assert_eq!(later.released, names(&["a", "b", "c", "d"]));
        assert!(later.state.pending_removal.is_none());
        assert!(later.state.managed.is_empty());
        // A later answer that disagrees (the keys came back): nothing removed, pending dropped.
        let back = wanted(&["a", "b", "c", "d"]);
        let healed = plan(&Inputs {
            wanted: &back,
            sudo: &none,
            expired: &BTreeSet::new(),
            local: &local,
            state: &first.state,
            delete_released: true,
            protected: &BTreeSet::new(),
            answer: 8,
        });
        assert!(healed.released.is_empty() && healed.state.pending_removal.is_none());
    }

    #[test]
    fn keys_that_expired_are_removed_at_once_even_for_everyone() {
        let state = AccountsState {
            created: BTreeSet::new(),
            managed: names(&["a"]),
            pending_removal: None,
        };
        let empty = BTreeMap::new();
        let p = plan(&Inputs {
            wanted: &empty,
            sudo: &BTreeSet::new(),
            expired: &names(&["a"]),
            local: &names(&["a"]),
            state: &state,
            delete_released: false,
            protected: &BTreeSet::new(),
            answer: 1,
        });
        assert_eq!(p.released, names(&["a"]));
        assert!(p.held.is_empty());
    }

    #[test]
    fn removing_half_or_fewer_applies_at_once() {
        let state = AccountsState {
            created: BTreeSet::new(),
            managed: names(&["a", "b"]),
            pending_removal: None,
        };
        let w = wanted(&["a"]);
        let p = plan(&Inputs {
            wanted: &w,
            sudo: &BTreeSet::new(),
            expired: &BTreeSet::new(),
            local: &names(&["a", "b"]),
            state: &state,
            delete_released: false,
            protected: &BTreeSet::new(),
            answer: 1,
        });
        assert_eq!(p.released, names(&["b"]));
    }
}
