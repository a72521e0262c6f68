//! Tests of the accounts plan.

use super::*;

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn wanted(list: &[&str]) -> BTreeMap<String, Vec<String>> {
    list.iter()
        .map(|u| (u.to_string(), vec![format!("ssh-ed25519 AAAA {u}")]))
        .collect()
}

fn account(name: &str, uid: u32, shell: &str) -> PasswdEntry {
    PasswdEntry {
        name: name.into(),
        uid,
        gid: uid,
        home: format!("/home/{name}"),
        shell: shell.into(),
    }
}

/// Regular accounts (root is uid 0), uids from 1000 in name order.
fn accounts_of(list: &BTreeSet<String>) -> Vec<PasswdEntry> {
    list.iter()
        .enumerate()
        .map(|(n, u)| {
            let uid = if u == "root" { 0 } else { 1000 + n as u32 };
            account(u, uid, "/bin/bash")
        })
        .collect()
}

fn group(name: &str, gid: u32, members: &[&str]) -> GroupEntry {
    GroupEntry {
        name: name.into(),
        gid,
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

/// The inputs, owned; defaults: nothing local, login.defs' default range, the default
/// sudo group.
struct Case {
    wanted: BTreeMap<String, Vec<String>>,
    sudo: BTreeSet<String>,
    expired: BTreeSet<String>,
    local: Vec<PasswdEntry>,
    groups: Vec<GroupEntry>,
    pending: BTreeSet<String>,
    state: AccountsState,
    delete_released: bool,
    protected: BTreeSet<String>,
    answer: u64,
    reserved: BTreeSet<u32>,
    cloud_groups: BTreeMap<String, BTreeSet<String>>,
    extra_groups: Vec<String>,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            wanted: BTreeMap::new(),
            sudo: BTreeSet::new(),
            expired: BTreeSet::new(),
            local: Vec::new(),
            groups: Vec::new(),
            pending: BTreeSet::new(),
            state: AccountsState::default(),
            delete_released: false,
            protected: BTreeSet::new(),
            answer: 1,
            reserved: BTreeSet::new(),
            cloud_groups: BTreeMap::new(),
            extra_groups: Vec::new(),
        }
    }
}

impl Case {
    fn run(&self) -> Plan {
        plan(&Inputs {
            wanted: &self.wanted,
            sudo: &self.sudo,
            expired: &self.expired,
            local: &self.local,
            groups: &self.groups,
            pending: &self.pending,
            state: &self.state,
            delete_released: self.delete_released,
            protected: &self.protected,
            answer: self.answer,
            uid_range: (1000, 60000),
            reserved: &self.reserved,
            cloud_groups: &self.cloud_groups,
            sudo_group: "guest-agent-sudoers",
            extra_groups: &self.extra_groups,
        })
    }
}

#[test]
fn new_users_are_created_and_existing_ones_only_get_keys() {
    let w = wanted(&["alice", "bob"]);
    let p = Case {
        wanted: w.clone(),
        sudo: names(&["alice", "bob"]),
        expired: BTreeSet::new(),
        local: accounts_of(&names(&["root", "bob"])),
        state: AccountsState::default(),
        delete_released: true,
        protected: BTreeSet::new(),
        answer: 1,
        ..Default::default()
    }
    .run();
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
        ..Default::default()
    };
    let w = wanted(&["bob", "carol"]);
    let local = names(&["alice", "bob", "carol"]);
    let sudo = names(&["bob", "carol"]);
    let keep = Case {
        wanted: w.clone(),
        sudo: sudo.clone(),
        expired: BTreeSet::new(),
        local: accounts_of(&local),
        state: state.clone(),
        delete_released: false,
        protected: BTreeSet::new(),
        answer: 5,
        ..Default::default()
    }
    .run();
    assert_eq!(keep.released, names(&["alice"]));
    assert_eq!(keep.keys["alice"], Vec::<String>::new());
    assert!(keep.delete.is_empty(), "deprovision = keep");
    let del = Case {
        wanted: w.clone(),
        sudo: sudo.clone(),
        expired: BTreeSet::new(),
        local: accounts_of(&local),
        state: state.clone(),
        delete_released: true,
        protected: BTreeSet::new(),
        answer: 5,
        ..Default::default()
    }
    .run();
    assert_eq!(del.delete, vec!["alice"]);
    assert!(!del.state.created.contains("alice"));
    // cloud-init's default user is never deleted, even when the agent created it.
    let adopted = Case {
        wanted: w.clone(),
        sudo: sudo.clone(),
        expired: BTreeSet::new(),
        local: accounts_of(&local),
        state: state.clone(),
        delete_released: true,
        protected: names(&["alice"]),
        answer: 5,
        ..Default::default()
    }
    .run();
    assert_eq!(adopted.released, names(&["alice"]));
    assert!(adopted.delete.is_empty());
    // bob was not created by us: released, never deleted.
    let w = wanted(&["carol"]);
    let state = AccountsState {
        created: BTreeSet::new(),
        managed: names(&["alice", "bob", "carol"]),
        pending_removal: None,
        ..Default::default()
    };
    let p = Case {
        wanted: w.clone(),
        sudo: sudo.clone(),
        expired: BTreeSet::new(),
        local: accounts_of(&local),
        state: state.clone(),
        delete_released: true,
        protected: BTreeSet::new(),
        answer: 5,
        ..Default::default()
    }
    .run();
    assert!(p.delete.is_empty());
}

#[test]
fn removing_more_than_half_waits_for_a_later_answer_that_agrees() {
    let state = AccountsState {
        created: BTreeSet::new(),
        managed: names(&["a", "b", "c", "d"]),
        pending_removal: None,
        ..Default::default()
    };
    let empty = BTreeMap::new();
    let none = BTreeSet::new();
    let local = names(&["a", "b", "c", "d"]);
    let first = Case {
        wanted: empty.clone(),
        sudo: none.clone(),
        expired: BTreeSet::new(),
        local: accounts_of(&local),
        state: state.clone(),
        delete_released: true,
        protected: BTreeSet::new(),
        answer: 7,
        ..Default::default()
    }
    .run();
    assert!(
        first.released.is_empty() && first.keys.is_empty(),
        "held: nothing touched"
    );
    assert_eq!(first.held, names(&["a", "b", "c", "d"]));
    assert_eq!(first.state.managed, names(&["a", "b", "c", "d"]));
    // The same answer again (a timer pass): still held.
    let again = Case {
        wanted: empty.clone(),
        sudo: none.clone(),
        expired: BTreeSet::new(),
        local: accounts_of(&local),
        state: first.state.clone(),
        delete_released: true,
        protected: BTreeSet::new(),
        answer: 7,
        ..Default::default()
    }
    .run();
    assert!(again.released.is_empty());
    // A later answer agreeing: applied.
    let later = Case {
        wanted: empty.clone(),
        sudo: none.clone(),
        expired: BTreeSet::new(),
        local: accounts_of(&local),
        state: again.state.clone(),
        delete_released: true,
        protected: BTreeSet::new(),
        answer: 8,
        ..Default::default()
    }
    .run();
    assert_eq!(later.released, names(&["a", "b", "c", "d"]));
    assert!(later.state.pending_removal.is_none());
    assert!(later.state.managed.is_empty());
    // A later answer that disagrees (the keys came back): nothing removed, pending dropped.
    let back = wanted(&["a", "b", "c", "d"]);
    let healed = Case {
        wanted: back.clone(),
        sudo: none.clone(),
        expired: BTreeSet::new(),
        local: accounts_of(&local),
        state: first.state.clone(),
        delete_released: true,
        protected: BTreeSet::new(),
        answer: 8,
        ..Default::default()
    }
    .run();
    assert!(healed.released.is_empty() && healed.state.pending_removal.is_none());
}

#[test]
fn keys_that_expired_are_removed_at_once_even_for_everyone() {
    let state = AccountsState {
        created: BTreeSet::new(),
        managed: names(&["a"]),
        pending_removal: None,
        ..Default::default()
    };
    let empty = BTreeMap::new();
    let p = Case {
        wanted: empty.clone(),
        sudo: BTreeSet::new(),
        expired: names(&["a"]),
        local: accounts_of(&names(&["a"])),
        state: state.clone(),
        delete_released: false,
        protected: BTreeSet::new(),
        answer: 1,
        ..Default::default()
    }
    .run();
    assert_eq!(p.released, names(&["a"]));
    assert!(p.held.is_empty());
}

#[test]
fn removing_half_or_fewer_applies_at_once() {
    let state = AccountsState {
        created: BTreeSet::new(),
        managed: names(&["a", "b"]),
        pending_removal: None,
        ..Default::default()
    };
    let w = wanted(&["a"]);
    let p = Case {
        wanted: w.clone(),
        sudo: BTreeSet::new(),
        expired: BTreeSet::new(),
        local: accounts_of(&names(&["a", "b"])),
        state: state.clone(),
        delete_released: false,
        protected: BTreeSet::new(),
        answer: 1,
        ..Default::default()
    }
    .run();
    assert_eq!(p.released, names(&["b"]));
}

/// Item 8: `ssh-keys` lists `deploy`, a local group (an operator's, or Debian's `staff`):
/// its private group cannot be made, and the batch used to fail for every user. Only
/// `deploy` is skipped (no account, keys, sudo or record); `alice` is created.
#[test]
fn a_user_named_like_a_local_group_is_skipped_and_the_others_created() {
    let p = Case {
        wanted: wanted(&["alice", "deploy"]),
        sudo: names(&["alice", "deploy"]),
        local: accounts_of(&names(&["root"])),
        groups: vec![group("root", 0, &[]), group("deploy", 1500, &["bob"])],
        ..Default::default()
    }
    .run();
    assert_eq!(p.create, vec!["alice"]);
    assert_eq!(p.clashes, BTreeMap::from([("deploy".to_string(), 1500)]));
    assert!(!p.keys.contains_key("deploy") && p.keys.contains_key("alice"));
    assert_eq!(p.sudo, names(&["alice"]));
    assert_eq!(p.members, names(&["alice"]));
    assert_eq!(p.state.created, names(&["alice"]), "never recorded as ours");
    assert_eq!(p.state.managed, names(&["alice"]));
    // A group left by an interrupted creation of that very name is no clash: completed.
    let p = Case {
        wanted: wanted(&["deploy"]),
        groups: vec![group("deploy", 1000, &[])],
        pending: names(&["deploy"]),
        ..Default::default()
    }
    .run();
    assert_eq!(p.create, vec!["deploy"]);
    assert!(p.clashes.is_empty());
    // An existing user with its own private group is no clash either.
    let p = Case {
        wanted: wanted(&["bob"]),
        local: accounts_of(&names(&["bob"])),
        groups: vec![group("bob", 1000, &[])],
        ..Default::default()
    }
    .run();
    assert!(p.create.is_empty() && p.clashes.is_empty() && p.keys.contains_key("bob"));
}

/// Item 10: `nobody`, `www-data`, `sshd` (and root) listed in `ssh-keys` got the
/// passwordless sudo group. They keep their keys; they get no group at all.
#[test]
fn system_accounts_get_keys_but_never_sudo_or_groups() {
    let local = vec![
        account("root", 0, "/bin/bash"),
        account("www-data", 33, "/usr/sbin/nologin"),
        account("sshd", 100, "/usr/sbin/nologin"),
        account("nobody", 65534, "/usr/sbin/nologin"),
        account("svc", 1001, "/bin/false"),
        account("sys", 999, "/bin/bash"),
        account("alice", 1000, "/bin/bash"),
        account("shelless", 1002, ""),
    ];
    let all = [
        "root", "www-data", "sshd", "nobody", "svc", "sys", "alice", "shelless",
    ];
    let p = Case {
        wanted: wanted(&all),
        sudo: names(&all),
        local,
        groups: vec![group("video", 44, &[])],
        extra_groups: vec!["users".into()],
        cloud_groups: all
            .iter()
            .map(|u| (u.to_string(), names(&["video"])))
            .collect(),
        ..Default::default()
    }
    .run();
    assert_eq!(p.sudo, names(&["alice", "shelless"]));
    assert_eq!(p.members, names(&["alice", "shelless"]), "extra_groups too");
    let video: BTreeSet<String> = p.group_changes["video"].add.clone();
    assert_eq!(
        video,
        names(&["alice", "shelless"]),
        "cloud-init groups too"
    );
    assert_eq!(
        p.system.keys().cloned().collect::<BTreeSet<_>>(),
        names(&["nobody", "root", "sshd", "svc", "sys", "www-data"])
    );
    assert!(p.system["www-data"].contains("outside login.defs UID_MIN..UID_MAX"));
    assert!(p.system["svc"].contains("shell is /bin/false"));
    assert!(p.system["nobody"].contains("uid 65534"));
    // Keys are managed as for anyone.
    assert_eq!(p.keys.len(), all.len());
    assert!(p.create.is_empty());
    // A new user (created now, uid in range, bash) is never a system account.
    let p = Case {
        wanted: wanted(&["newbie"]),
        sudo: names(&["newbie"]),
        ..Default::default()
    }
    .run();
    assert_eq!(p.sudo, names(&["newbie"]));
    assert!(p.system.is_empty());
}

/// Item 9: a deleted account's uid is remembered with its home, kept while the host
/// reports the uid reserved (the home exists), forgotten after.
#[test]
fn a_deleted_accounts_uid_is_retired_while_its_home_stays() {
    let state = AccountsState {
        created: names(&["alice", "bob"]),
        managed: names(&["alice", "bob"]),
        ..Default::default()
    };
    let local = vec![
        account("alice", 1000, "/bin/bash"),
        account("bob", 1001, "/bin/bash"),
    ];
    let p = Case {
        wanted: wanted(&["bob"]),
        local: local.clone(),
        state,
        delete_released: true,
        ..Default::default()
    }
    .run();
    assert_eq!(p.delete, vec!["alice"]);
    assert_eq!(
        p.state.retired,
        BTreeMap::from([(1000, "/home/alice".to_string())])
    );
    // Next pass: the home still exists (the host reserves 1000): the record stays.
    let next = Case {
        wanted: wanted(&["bob", "carol"]),
        local: local[1..].to_vec(),
        state: p.state.clone(),
        delete_released: true,
        reserved: BTreeSet::from([1000]),
        ..Default::default()
    }
    .run();
    assert_eq!(next.create, vec!["carol"]);
    assert_eq!(next.state.retired.len(), 1);
    // The home was removed (no longer reserved): forgotten.
    let later = Case {
        wanted: wanted(&["bob"]),
        local: local[1..].to_vec(),
        state: next.state.clone(),
        ..Default::default()
    }
    .run();
    assert!(later.state.retired.is_empty());
    // keep: nothing is deleted, nothing retired.
    let keep = Case {
        wanted: wanted(&["bob"]),
        local,
        state: AccountsState {
            created: names(&["alice", "bob"]),
            managed: names(&["alice", "bob"]),
            ..Default::default()
        },
        ..Default::default()
    }
    .run();
    assert!(keep.delete.is_empty() && keep.state.retired.is_empty());
}

/// cloud-init `groups:` were read and never applied. Existing unprivileged groups are
/// applied; missing ones reported, never created; privileged ones only with sudo; the
/// sudo group and extra_groups keep their own rules.
#[test]
fn cloud_init_groups_are_applied_with_privileged_ones_only_for_sudo_users() {
    let groups = vec![
        group("root", 0, &[]),
        group("video", 44, &["alice"]),
        group("audio", 29, &[]),
        group("docker", 998, &[]),
        group("adm", 4, &[]),
        group("wheel0", 0, &[]),
        group("guest-agent-sudoers", 1100, &[]),
        group("users", 100, &[]),
    ];
    let lists = BTreeMap::from([
        (
            "alice".to_string(),
            names(&["video", "audio", "docker", "nosuch", "wheel0"]),
        ),
        (
            "yc".to_string(),
            names(&["docker", "adm", "audio", "guest-agent-sudoers", "users"]),
        ),
    ]);
    let c = Case {
        wanted: wanted(&["alice", "yc"]),
        sudo: names(&["yc"]),
        local: vec![
            account("alice", 1000, "/bin/bash"),
            account("yc", 1001, "/bin/bash"),
        ],
        groups: groups.clone(),
        cloud_groups: lists.clone(),
        extra_groups: vec!["users".into()],
        ..Default::default()
    };
    let p = c.run();
    let adds: BTreeMap<&str, BTreeSet<String>> = p
        .group_changes
        .iter()
        .map(|(g, ch)| (g.as_str(), ch.add.clone()))
        .collect();
    assert_eq!(
        adds,
        BTreeMap::from([
            ("adm", names(&["yc"])),
            ("audio", names(&["alice", "yc"])),
            ("docker", names(&["yc"])),
        ]),
        "alice is already in video; the sudo group and extra_groups are not touched here"
    );
    assert!(p.group_changes.values().all(|c| c.remove.is_empty()));
    let refused: BTreeMap<(&str, &str), &str> = p
        .groups_refused
        .iter()
        .map(|((u, g), why)| ((u.as_str(), g.as_str()), why.as_str()))
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused[&("alice", "docker")].contains("privileged"));
    assert!(
        refused[&("alice", "wheel0")].contains("privileged"),
        "gid 0"
    );
    assert!(refused[&("alice", "nosuch")].contains("no such local group"));
    // What the agent added is remembered; alice's own video membership is not.
    assert_eq!(p.state.granted["alice"], names(&["audio"]));
    assert_eq!(p.state.granted["yc"], names(&["adm", "audio", "docker"]));

    // Next pass, the groups applied: nothing to change.
    let mut applied = groups.clone();
    for g in &mut applied {
        if let Some(ch) = p.group_changes.get(&g.name) {
            g.members.extend(ch.add.iter().cloned());
        }
    }
    let again = Case {
        groups: applied.clone(),
        state: p.state.clone(),
        ..c
    };
    let q = again.run();
    assert!(q.group_changes.is_empty(), "{:?}", q.group_changes);
    assert_eq!(q.state.granted, p.state.granted);

    // yc loses sudo and the video list: docker and adm go (privileged), audio stays;
    // alice leaves metadata: audio (ours) goes, video (hers) stays.
    let lost = Case {
        wanted: wanted(&["yc"]),
        sudo: BTreeSet::new(),
        groups: applied,
        state: AccountsState {
            managed: names(&["alice", "yc"]),
            ..p.state.clone()
        },
        ..again
    };
    let r = lost.run();
    let removes: BTreeMap<&str, BTreeSet<String>> = r
        .group_changes
        .iter()
        .map(|(g, ch)| (g.as_str(), ch.remove.clone()))
        .collect();
    assert_eq!(
        removes,
        BTreeMap::from([
            ("adm", names(&["yc"])),
            ("audio", names(&["alice"])),
            ("docker", names(&["yc"])),
        ])
    );
    assert_eq!(r.state.granted.get("yc"), Some(&names(&["audio"])));
    assert!(!r.state.granted.contains_key("alice"));
}

/// A removal held for confirmation keeps the cloud-init groups too.
#[test]
fn a_held_removal_keeps_granted_groups() {
    let state = AccountsState {
        managed: names(&["a", "b"]),
        granted: BTreeMap::from([("a".to_string(), names(&["audio"]))]),
        ..Default::default()
    };
    let p = Case {
        local: accounts_of(&names(&["a", "b"])),
        groups: vec![group("audio", 29, &["a"])],
        state,
        answer: 3,
        ..Default::default()
    }
    .run();
    assert_eq!(p.held, names(&["a", "b"]));
    assert!(p.group_changes.is_empty());
    assert_eq!(p.state.granted["a"], names(&["audio"]));
}
