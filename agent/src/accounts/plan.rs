//! The pure decision: from the keys metadata asks for, the local accounts and groups and what
//! the agent remembers, what to create, which managed blocks to write, who is in which group,
//! and who to delete. No I/O.
//!
//! Rules beyond "metadata users get accounts, keys and the sudo group":
//! - **A name taken by a group** (issue 13, item 8): a user to create whose name is already a
//!   local group's (an operator's `deploy`, Debian's `staff`) cannot get its private group, and
//!   used to fail the creation of every user of the pass. Such a user is skipped (no account,
//!   no keys, no groups; [`Plan::clashes`], logged with the group and what to do) and the others
//!   are created. A group left by an interrupted creation of that very name (accountdb's pending
//!   record) is not a clash: the creation completes it.
//! - **System accounts never get groups** (item 10): an account whose uid is outside login.defs'
//!   `UID_MIN..=UID_MAX` (`nobody`, `www-data`, `sshd`, `root`) or whose shell is `nologin` or
//!   `false` is never put in the sudo group, in `accounts.extra_groups` or in cloud-init groups
//!   ([`Plan::system`], logged once). Its keys are still managed as for anyone (an operator may
//!   want a key for a service account to run a forced command or a tunnel): keys give what the
//!   account already has, groups would give more.
//! - **A deleted account's uid is not given out again while its home stays** (item 9): with
//!   `deprovision = "delete"` the home is kept, still owned by the old uid; a new user given
//!   that uid would own the old home, its files and its `.ssh`. Each deleted account's uid is
//!   remembered with its home ([`AccountsState::retired`]) and stays reserved while that path
//!   exists, even after the home itself is chowned away (its files may still carry the uid);
//!   the creation also skips every uid owning an entry of `/home` (homes kept by anyone). The
//!   record is dropped once the home is gone ([`Inputs::reserved`] no longer holds the uid).
//! - **cloud-init `groups:`** (Desired::groups): a user is added to each listed group that
//!   exists locally; a missing group is reported, never created. A privileged group (see
//!   [`PRIVILEGED_GROUPS`], any group with gid 0, and the sudo group) is applied only to a
//!   user who gets the sudo group anyway (a cloud-init `sudo:` or an `ssh-keys` key): for
//!   anyone else `groups: docker` would be root without `sudo:`. The sudo group and
//!   `accounts.extra_groups` keep their own rules and are never set from `groups:`. The agent
//!   remembers the memberships it added ([`AccountsState::granted`]) and removes exactly those
//!   when they are no longer asked for (the user left metadata, the group left the list, the
//!   user lost sudo); memberships the user had before are never removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::state::{AccountsState, PendingRemoval};
use crate::host::passwd::{GroupEntry, PasswdEntry};

/// Groups that give root or its equivalent (sudo rules, reading logs and shadow, raw disks,
/// container and VM daemons): applied from cloud-init `groups:` only to sudo users.
pub const PRIVILEGED_GROUPS: &[&str] = &[
    "sudo",
    "wheel",
    "adm",
    "admin",
    "root",
    "shadow",
    "disk",
    "docker",
    "lxd",
    "libvirt",
    "kvm",
    "google-sudoers",
    "systemd-journal",
];

/// What to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Users to create (not present locally).
    pub create: Vec<String>,
    /// Managed keys block of each user to write (empty: remove the block).
    pub keys: BTreeMap<String, Vec<String>>,
    /// Members the sudo group must have among the managed users.
    pub sudo: BTreeSet<String>,
    /// Members `accounts.extra_groups` must have among the managed users.
    pub members: BTreeSet<String>,
    /// cloud-init group memberships to add and remove, by group.
    pub group_changes: BTreeMap<String, GroupChange>,
    /// Users whose management ends now (block emptied, out of the sudo group).
    pub released: BTreeSet<String>,
    /// Accounts to delete (`deprovision = "delete"`, created by us, released now).
    pub delete: Vec<String>,
    /// The state to save afterwards.
    pub state: AccountsState,
    /// Users whose removal waits for confirmation by a later answer.
    pub held: BTreeSet<String>,
    /// Users not created because a local group has their name: user -> that group's gid.
    pub clashes: BTreeMap<String, u32>,
    /// Metadata users that are system accounts (never given groups): user -> why.
    pub system: BTreeMap<String, String>,
    /// cloud-init groups not applied: (user, group) -> why (missing, privileged).
    pub groups_refused: BTreeMap<(String, String), String>,
}

/// Members to add to and remove from one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupChange {
    pub add: BTreeSet<String>,
    pub remove: BTreeSet<String>,
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
    /// The local accounts (`/etc/passwd`).
    pub local: &'a [PasswdEntry],
    /// The local groups (`/etc/group`).
    pub groups: &'a [GroupEntry],
    /// Names whose creation was interrupted (accountdb's pending record): their group is their
    /// own leftover, not a clash.
    pub pending: &'a BTreeSet<String>,
    pub state: &'a AccountsState,
    pub delete_released: bool,
    /// Accounts never deleted whoever created them (cloud-init's default user).
    pub protected: &'a BTreeSet<String>,
    /// The watcher's answer counter now.
    pub answer: u64,
    /// login.defs `UID_MIN..=UID_MAX`: accounts outside are system accounts.
    pub uid_range: (u32, u32),
    /// uids no new account may get now (owners of kept homes, retired uids whose home still
    /// exists); a retired uid not in it is forgotten.
    pub reserved: &'a BTreeSet<u32>,
    /// cloud-init users' `groups:` (user -> groups).
    pub cloud_groups: &'a BTreeMap<String, BTreeSet<String>>,
    /// `accounts.sudo_group`.
    pub sudo_group: &'a str,
    /// `accounts.extra_groups`.
    pub extra_groups: &'a [String],
}

/// Why `e` is a system account (never given groups), or None for a regular one.
pub fn system_account(e: &PasswdEntry, (min, max): (u32, u32)) -> Option<String> {
    if !(min..=max).contains(&e.uid) {
        return Some(format!(
            "uid {} is outside login.defs UID_MIN..UID_MAX ({min}..{max})",
            e.uid
        ));
    }
    let shell = Path::new(&e.shell).file_name().and_then(|n| n.to_str());
    if matches!(shell, Some("nologin" | "false")) {
        return Some(format!("its shell is {}", e.shell));
    }
    None
}

/// Decides. A removal of more than half the managed users (a wiped `ssh-keys`, a bad answer)
/// is held until a later answer of the metadata service asks for the same removal.
pub fn plan(i: &Inputs) -> Plan {
    let mut state = i.state.clone();
    let local: BTreeMap<&str, &PasswdEntry> =
        i.local.iter().map(|e| (e.name.as_str(), e)).collect();
    let groups: BTreeMap<&str, &GroupEntry> =
        i.groups.iter().map(|g| (g.name.as_str(), g)).collect();
    let clashes: BTreeMap<String, u32> = i
        .wanted
        .keys()
        .filter(|u| !local.contains_key(u.as_str()) && !i.pending.contains(*u))
        .filter_map(|u| groups.get(u.as_str()).map(|g| (u.clone(), g.gid)))
        .collect();
    let wanted: BTreeMap<String, Vec<String>> = i
        .wanted
        .iter()
        .filter(|(u, _)| !clashes.contains_key(*u))
        .map(|(u, k)| (u.clone(), k.clone()))
        .collect();
    let leaving: BTreeSet<String> = state
        .managed
        .iter()
        .filter(|u| !wanted.contains_key(*u))
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

    let mut keys: BTreeMap<String, Vec<String>> = wanted.clone();
    for u in &released {
        keys.insert(u.clone(), Vec::new());
    }
    let create: Vec<String> = wanted
        .keys()
        .filter(|u| !local.contains_key(u.as_str()))
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
    state.managed = wanted.keys().cloned().chain(held.iter().cloned()).collect();
    state.created.extend(create.iter().cloned());
    state.retired.retain(|uid, _| i.reserved.contains(uid));
    for u in &delete {
        state.created.remove(u);
        if let Some(e) = local.get(u.as_str()) {
            state.retired.insert(e.uid, e.home.clone());
        }
    }
    // Users to create get a uid in the range and bash: never system accounts.
    let system: BTreeMap<String, String> = wanted
        .keys()
        .filter_map(|u| {
            let e = local.get(u.as_str())?;
            system_account(e, i.uid_range).map(|why| (u.clone(), why))
        })
        .collect();
    let members: BTreeSet<String> = wanted
        .keys()
        .filter(|u| !system.contains_key(*u))
        .cloned()
        .collect();
    let sudo: BTreeSet<String> = i
        .sudo
        .iter()
        .filter(|u| members.contains(*u))
        .cloned()
        .collect();
    let (group_changes, groups_refused) =
        cloud_groups(i, &groups, &members, &sudo, &held, &mut state);
    Plan {
        create,
        keys,
        sudo,
        members,
        group_changes,
        released,
        delete,
        state,
        held,
        clashes,
        system,
        groups_refused,
    }
}

/// Whether `g` is privileged (applied from `groups:` only to sudo users).
fn privileged(g: &GroupEntry, sudo_group: &str) -> bool {
    g.gid == 0 || g.name == sudo_group || PRIVILEGED_GROUPS.contains(&g.name.as_str())
}

type Refused = BTreeMap<(String, String), String>;

/// cloud-init group memberships: what to add and remove, and what is refused; updates
/// `state.granted` to the memberships the agent holds afterwards.
fn cloud_groups(
    i: &Inputs,
    groups: &BTreeMap<&str, &GroupEntry>,
    members: &BTreeSet<String>,
    sudo: &BTreeSet<String>,
    held: &BTreeSet<String>,
    state: &mut AccountsState,
) -> (BTreeMap<String, GroupChange>, Refused) {
    let own_rule = |g: &str| g == i.sudo_group || i.extra_groups.iter().any(|e| e == g);
    let mut refused = Refused::new();
    // (user, group) the agent must hold now.
    let mut want: BTreeSet<(String, String)> = BTreeSet::new();
    for (user, list) in i.cloud_groups {
        if !members.contains(user) {
            continue;
        }
        for name in list {
            if own_rule(name) {
                continue;
            }
            let key = (user.clone(), name.clone());
            match groups.get(name.as_str()) {
                None => {
                    refused.insert(key, "no such local group (groups are never created)".into());
                }
                Some(g) if privileged(g, i.sudo_group) && !sudo.contains(user) => {
                    refused.insert(
                        key,
                        "a privileged group, applied only to users with sudo".into(),
                    );
                }
                Some(_) => {
                    want.insert(key);
                }
            }
        }
    }
    let mut changes: BTreeMap<String, GroupChange> = BTreeMap::new();
    let is_member = |user: &str, group: &str| {
        groups
            .get(group)
            .is_some_and(|g| g.members.iter().any(|m| m == user))
    };
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (user, group) in &want {
        let ours = state.granted.get(user).is_some_and(|gs| gs.contains(group));
        if !is_member(user, group) {
            changes
                .entry(group.clone())
                .or_default()
                .add
                .insert(user.clone());
        } else if !ours {
            // A membership the user had before: not ours, never removed.
            continue;
        }
        granted
            .entry(user.clone())
            .or_default()
            .insert(group.clone());
    }
    for (user, gs) in &state.granted {
        for group in gs {
            if want.contains(&(user.clone(), group.clone())) {
                continue;
            }
            // A removal held for confirmation touches nothing yet.
            if held.contains(user) {
                granted
                    .entry(user.clone())
                    .or_default()
                    .insert(group.clone());
                continue;
            }
            if is_member(user, group) {
                changes
                    .entry(group.clone())
                    .or_default()
                    .remove
                    .insert(user.clone());
            }
        }
    }
    state.granted = granted;
    (changes, refused)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
