//! The OS Login directory as the daemon knows it: users (with keys, kept in memory only),
//! groups and members, negative answers; and the directory cache file built from it for the
//! NSS module (names and ids only, no keys).
//!
//! What is served is what `super::decision` admits (local accounts win, id floors, reserved
//! names, homes below the bases): the NSS module relies on the daemon for these rules (it
//! reads only the cache and the socket).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_agent_wire::cache::{CacheBuilder, GroupEntry, UserEntry};

use super::decision::{self, Rules};
use super::profile::OsUser;
use crate::host::passwd;

/// The names learned on a miss that a snapshot held (see `Directory::snapshot`).
#[derive(Debug, Default, Clone)]
pub struct Learned {
    pub users: HashSet<String>,
    pub groups: HashSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// A lookup the service answered with "no such user/group".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Miss {
    UserName(String),
    Uid(u32),
    GroupName(String),
    Gid(u32),
}

/// Names and ids of local accounts.
#[derive(Debug, Default, Clone)]
pub struct LocalAccounts {
    pub user_names: HashSet<String>,
    pub uids: HashSet<u32>,
    pub group_names: HashSet<String>,
    pub gids: HashSet<u32>,
    /// The files could not be read: this is the last good view (or none at all), and no
    /// name the daemon did not serve before is admitted (see `decision`).
    pub stale: bool,
}

impl LocalAccounts {
    /// Reads passwd(5) and group(5) files (as bytes: see `passwd::try_read`). An unreadable
    /// file is an error, never "no local accounts": the caller keeps its last good view.
    pub fn read(passwd: &Path, group: &Path) -> Result<LocalAccounts, String> {
        let read = |p: &Path| passwd::try_read(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok(LocalAccounts::parse(&read(passwd)?, &read(group)?))
    }

    pub fn parse(passwd_text: &str, group_text: &str) -> LocalAccounts {
        let mut l = LocalAccounts::default();
        for u in passwd::parse_passwd(passwd_text) {
            l.user_names.insert(u.name);
            l.uids.insert(u.uid);
        }
        for g in passwd::parse_group(group_text) {
            l.group_names.insert(g.name);
            l.gids.insert(g.gid);
        }
        l
    }

    pub fn clashes_with_group(&self, name: &str, gid: u32) -> bool {
        self.group_names.contains(name) || self.gids.contains(&gid)
    }
}

/// What [`Directory::insert_user`] did to the files' view of the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Not held before: the delta file gets it.
    New,
    /// Held with the same cache fields: no file changes.
    Same,
    /// Held with other cache fields: a full rebuild (the main file wins over the delta).
    Changed,
}

/// The most users learned on a miss that the delta file holds: one more and the next write
/// is a full rebuild (which empties the delta).
pub const DELTA_CAP: usize = 4096;

#[derive(Debug, Default)]
pub struct Directory {
    users: HashMap<String, Arc<OsUser>>,
    by_uid: HashMap<u32, String>,
    groups: HashMap<String, Arc<Group>>,
    by_gid: HashMap<u32, String>,
    /// Index: user name -> names of the groups that list it (initgroups in O(its groups)).
    member_of: HashMap<String, HashSet<String>>,
    negative: HashMap<Miss, Instant>,
    /// Users and groups learned on a miss (a socket lookup) since the last full cache build:
    /// what the delta file holds (see `delta`).
    learned: HashSet<String>,
    learned_groups: HashSet<String>,
}

impl Directory {
    /// Replaces everything with a full sync's result. What was learned on a miss and is in
    /// the sync's result stays learned until the next full build has written it (a delta
    /// written meanwhile must still hold it: the main file on disk does not yet).
    pub fn replace(&mut self, users: Vec<OsUser>, groups: Vec<Group>) {
        let learned = std::mem::take(&mut self.learned);
        let learned_groups = std::mem::take(&mut self.learned_groups);
        *self = Directory::default();
        for u in users {
            self.put_user(u);
        }
        for g in groups {
            self.put_group(g);
        }
        self.learned = learned
            .into_iter()
            .filter(|n| self.users.contains_key(n))
            .collect();
        self.learned_groups = learned_groups
            .into_iter()
            .filter(|n| self.groups.contains_key(n))
            .collect();
    }

    /// A profile fetched on a miss or at a login (not from a sync). A new user is noted for
    /// the delta file. A user the directory held with the same name, ids, gecos, home and
    /// shell (a login's profile refresh: only the keys, which no cache file holds, may differ)
    /// changes no file. A user held with other such fields is [`Inserted::Changed`]: the main
    /// file, which wins over the delta, must be rebuilt.
    pub fn insert_user(&mut self, u: OsUser) -> (Arc<OsUser>, Inserted) {
        self.negative.remove(&Miss::UserName(u.username.clone()));
        self.negative.remove(&Miss::Uid(u.uid));
        let how = match self.users.get(&u.username) {
            None => Inserted::New,
            Some(old)
                if old.uid == u.uid
                    && old.gid == u.gid
                    && old.email == u.email
                    && old.home == u.home
                    && old.shell == u.shell =>
            {
                Inserted::Same
            }
            Some(_) => Inserted::Changed,
        };
        if how != Inserted::Same {
            self.learned.insert(u.username.clone());
        }
        (self.put_user(u), how)
    }

    fn put_user(&mut self, u: OsUser) -> Arc<OsUser> {
        if let Some(old) = self.users.get(&u.username)
            && old.uid != u.uid
        {
            self.by_uid.remove(&old.uid);
        }
        self.by_uid.insert(u.uid, u.username.clone());
        let u = Arc::new(u);
        self.users.insert(u.username.clone(), u.clone());
        u
    }

    /// A group learned on a miss (not from a sync): noted for the delta file.
    pub fn insert_group(&mut self, g: Group) {
        self.negative.remove(&Miss::GroupName(g.name.clone()));
        self.negative.remove(&Miss::Gid(g.gid));
        self.learned_groups.insert(g.name.clone());
        self.put_group(g);
    }

    fn put_group(&mut self, g: Group) {
        if let Some(old) = self.groups.get(&g.name).cloned() {
            if old.gid != g.gid && self.by_gid.get(&old.gid) == Some(&old.name) {
                self.by_gid.remove(&old.gid);
            }
            for m in &old.members {
                if let Some(set) = self.member_of.get_mut(m) {
                    set.remove(&old.name);
                    if set.is_empty() {
                        self.member_of.remove(m);
                    }
                }
            }
        }
        for m in &g.members {
            self.member_of
                .entry(m.clone())
                .or_default()
                .insert(g.name.clone());
        }
        self.by_gid.insert(g.gid, g.name.clone());
        self.groups.insert(g.name.clone(), Arc::new(g));
    }

    /// A copy of the users and groups (entries shared, negative answers left out), to build
    /// the cache from without holding the lock lookups need, and the names learned on a miss
    /// it holds (for `forget_learned` once the file built from it is written).
    pub fn snapshot(&self) -> (Directory, Learned) {
        let copy = Directory {
            users: self.users.clone(),
            by_uid: self.by_uid.clone(),
            groups: self.groups.clone(),
            by_gid: self.by_gid.clone(),
            member_of: HashMap::new(), // build_cache reads the groups' member lists
            negative: HashMap::new(),
            learned: HashSet::new(),
            learned_groups: HashSet::new(),
        };
        let learned = Learned {
            users: self.learned.clone(),
            groups: self.learned_groups.clone(),
        };
        (copy, learned)
    }

    /// The main file built from a snapshot is written: what the snapshot held is no longer
    /// the delta's (what was learned since stays).
    pub fn forget_learned(&mut self, written: &Learned) {
        self.learned.retain(|n| !written.users.contains(n));
        self.learned_groups.retain(|n| !written.groups.contains(n));
    }

    /// How many users were learned on a miss since the last full build.
    pub fn learned_count(&self) -> usize {
        self.learned.len()
    }

    /// The directory the delta file is built from (by the same `build_cache`, so the same
    /// rules): the users learned on a miss; the groups learned on a miss, whole; and, for each
    /// learned user, the groups that list it and the group holding its gid or name (so its
    /// group list and personal group come out as in a full build), those with their learned
    /// members only (the main file holds them whole, and the module reads the main file
    /// first). O(learned users and their groups), never O(directory).
    pub fn delta(&self) -> Directory {
        let mut d = Directory::default();
        let mut wanted: HashSet<&str> = self.learned_groups.iter().map(String::as_str).collect();
        for name in &self.learned {
            let Some(u) = self.users.get(name) else {
                continue;
            };
            d.put_user((**u).clone());
            if let Some(groups) = self.member_of.get(name) {
                wanted.extend(groups.iter().map(String::as_str));
            }
            if let Some(g) = self.by_gid.get(&u.gid) {
                wanted.insert(g);
            }
            if self.groups.contains_key(name) {
                wanted.insert(name);
            }
        }
        for name in wanted {
            let Some(g) = self.groups.get(name) else {
                continue;
            };
            let members = if self.learned_groups.contains(name) {
                g.members.clone()
            } else {
                g.members
                    .iter()
                    .filter(|m| self.learned.contains(*m))
                    .cloned()
                    .collect()
            };
            d.put_group(Group {
                name: g.name.clone(),
                gid: g.gid,
                members,
            });
        }
        d
    }

    pub fn user(&self, name: &str) -> Option<Arc<OsUser>> {
        self.users.get(name).cloned()
    }

    pub fn user_by_uid(&self, uid: u32) -> Option<Arc<OsUser>> {
        self.by_uid.get(&uid).and_then(|n| self.user(n))
    }

    pub fn group(&self, name: &str) -> Option<Arc<Group>> {
        self.groups.get(name).cloned()
    }

    pub fn group_by_gid(&self, gid: u32) -> Option<Arc<Group>> {
        self.by_gid.get(&gid).and_then(|n| self.group(n))
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    pub fn users(&self) -> impl Iterator<Item = &Arc<OsUser>> {
        self.users.values()
    }

    /// A user's personal group (user private group): named like the user, gid = uid, when the
    /// user's primary gid is its uid and no directory group has that gid. Served so that `id`
    /// names the primary group and sshd's group checks need no request.
    pub fn personal_group(&self, by: &Miss) -> Option<Group> {
        let user = match by {
            Miss::GroupName(n) => self.user(n)?,
            Miss::Gid(g) => self.user_by_uid(*g)?,
            _ => return None,
        };
        (user.gid == user.uid
            && !self.by_gid.contains_key(&user.gid)
            && !self.groups.contains_key(&user.username))
        .then(|| Group {
            name: user.username.clone(),
            gid: user.gid,
            members: Vec::new(),
        })
    }

    /// The gids of the directory groups that list `user` as a member (from the index: no scan
    /// of the directory).
    pub fn groups_of(&self, user: &str) -> Vec<u32> {
        let mut gids: Vec<u32> = self
            .member_of
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|g| self.groups.get(g).map(|g| g.gid))
            .collect();
        gids.sort_unstable();
        gids
    }

    pub fn is_negative(&self, miss: &Miss, ttl: Duration) -> bool {
        self.negative.get(miss).is_some_and(|at| at.elapsed() < ttl)
    }

    pub fn note_negative(&mut self, miss: Miss) {
        if self.negative.len() > 10_000 {
            self.negative.clear(); // bounded: a flood of unknown names costs requests, not memory
        }
        self.negative.insert(miss, Instant::now());
    }

    /// The cache file's bytes, and the entries left out (with the reason). `homes_taken`:
    /// users whose home exists and belongs to another account (see `decision::admit_user`).
    pub fn build_cache(
        &self,
        s: &Rules,
        local: &LocalAccounts,
        homes_taken: &HashSet<String>,
        now_unix: u64,
    ) -> (Vec<u8>, Vec<String>) {
        let mut skipped = Vec::new();
        let mut memberships: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut builder = CacheBuilder::new(s.min_id, now_unix);
        // In name order, and gid lists sorted: the same directory gives the same file (the
        // maps' iteration order changed each user's group list, and which of two entries
        // sharing an id was kept, at every rewrite).
        let mut groups: Vec<&Arc<Group>> = self.groups.values().collect();
        groups.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        for g in groups {
            if let Err(why) = decision::admit_group(&g.name, g.gid, local, s, true) {
                skipped.push(format!("group {}: {why}", g.name));
                continue;
            }
            for m in &g.members {
                memberships.entry(m.as_str()).or_default().push(g.gid);
            }
            builder.add_group(GroupEntry {
                name: g.name.clone(),
                gid: g.gid,
                members: g.members.clone(),
            });
        }
        let users_group_ok = !local.clashes_with_group(&s.users_group, s.users_group_gid);
        if users_group_ok {
            builder.users_group(s.users_group_gid);
            builder.add_group(GroupEntry {
                name: s.users_group.clone(),
                gid: s.users_group_gid,
                members: Vec::new(),
            });
        } else {
            skipped.push(format!("group {}", s.users_group));
        }
        let mut users: Vec<&Arc<OsUser>> = self.users.values().collect();
        users.sort_unstable_by(|a, b| a.username.cmp(&b.username));
        for u in users {
            let taken = homes_taken.contains(&u.username);
            let u = match decision::admit_user(u, local, s, true, taken) {
                Ok((served, _)) => served,
                Err(why) => {
                    skipped.push(format!("user {}: {why}", u.username));
                    continue;
                }
            };
            if let Some(g) = self.personal_group(&Miss::Gid(u.uid))
                && !local.clashes_with_group(&g.name, g.gid)
                && g.gid != s.users_group_gid
            {
                builder.add_group(GroupEntry {
                    name: g.name,
                    gid: g.gid,
                    members: Vec::new(),
                });
            }
            let mut groups = memberships
                .get(u.username.as_str())
                .cloned()
                .unwrap_or_default();
            groups.sort_unstable();
            if users_group_ok {
                groups.push(s.users_group_gid);
            }
            builder.add_user(UserEntry {
                name: u.username.clone(),
                uid: u.uid,
                gid: u.gid,
                gecos: if guest_agent_wire::records::is_safe_field(u.email.as_bytes()) {
                    u.email.clone()
                } else {
                    String::new()
                },
                home: u.home.clone(),
                shell: u.shell.clone(),
                groups,
            });
        }
        skipped.sort();
        let bytes = builder.build();
        // The module only checks what each lookup reads: check everything once, here.
        if let Err(e) =
            guest_agent_wire::cache::Cache::parse(&bytes).and_then(|c| c.validate_all().map(|()| c))
        {
            tracing::error!(error = ?e, "the directory cache just built does not validate; this is a bug");
        }
        (bytes, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_agent_wire::cache::Cache;

    fn user(name: &str, uid: u32) -> OsUser {
        OsUser {
            email: format!("{name}@example.com"),
            username: name.into(),
            uid,
            gid: uid,
            home: format!("/home/{name}"),
            shell: "/bin/bash".into(),
            keys: Vec::new(),
        }
    }

    fn settings() -> Rules {
        Rules {
            min_id: 1000,
            home_bases: vec!["/home".into()],
            users_group: "guest-agent-oslogin".into(),
            users_group_gid: 4_000_000_000,
            ignore_user_keys: true,
            extra_reserved: Vec::new(),
        }
    }

    #[test]
    fn local_accounts_parse_names_and_ids() {
        let l = LocalAccounts::parse(
            "root:x:0:0:root:/root:/bin/bash\n# c\nbob:x:1000:1000::/home/bob:/bin/sh\n",
            "root:x:0:\nbob:x:1000:\n",
        );
        assert!(l.user_names.contains("bob") && l.uids.contains(&1000) && l.gids.contains(&0));
    }

    #[test]
    fn the_cache_holds_users_groups_and_memberships_but_not_local_clashes() {
        let mut d = Directory::default();
        d.replace(
            vec![
                user("alice", 200001),
                user("bob", 200002),
                user("carol", 1000),
            ],
            vec![Group {
                name: "devs".into(),
                gid: 300000,
                members: vec!["alice".into()],
            }],
        );
        let local = LocalAccounts::parse(
            "bob:x:5000:5000::/home/bob:/bin/sh\nlocal:x:1000:1000::/:/bin/sh\n",
            "",
        );
        let (bytes, skipped) = d.build_cache(&settings(), &local, &HashSet::new(), 1);
        assert_eq!(
            skipped,
            vec![
                "user bob: a local account holds the name \"bob\"".to_string(),
                "user carol: a local user holds uid 1000".to_string()
            ]
        );
        let c = Cache::parse(&bytes).unwrap();
        c.validate_all().unwrap();
        let alice = c.user_by_name(b"alice").unwrap();
        assert_eq!(alice.uid, 200001);
        assert_eq!(alice.gecos, b"alice@example.com");
        let mut groups: Vec<u32> = alice.groups().collect();
        groups.sort_unstable();
        assert_eq!(groups, vec![300000, 4_000_000_000]);
        assert!(c.user_by_name(b"bob").is_none());
        assert!(c.user_by_uid(1000).is_none());
        assert_eq!(
            c.group_by_gid(4_000_000_000).unwrap().name,
            b"guest-agent-oslogin"
        );
        // Named in the header too, for the module's initgroups when the daemon is slow.
        assert_eq!(c.users_gid(), Some(4_000_000_000));
        assert_eq!(
            c.group_by_name(b"devs")
                .unwrap()
                .members()
                .collect::<Vec<_>>(),
            vec![b"alice".as_slice()]
        );
    }

    #[test]
    fn the_same_directory_gives_the_same_file() {
        let build = || {
            let mut d = Directory::default();
            let groups = (0..20)
                .map(|i| Group {
                    name: format!("g{i}"),
                    gid: 300000 + i,
                    members: vec!["alice".into()],
                })
                .collect();
            d.replace(vec![user("alice", 200001), user("bob", 200002)], groups);
            d.build_cache(
                &settings(),
                &LocalAccounts::parse("", ""),
                &HashSet::new(),
                1,
            )
            .0
        };
        let first = build();
        for _ in 0..10 {
            assert!(build() == first, "a rebuild of the same directory differs");
        }
    }

    #[test]
    fn renamed_uid_and_negative_entries() {
        let mut d = Directory::default();
        d.note_negative(Miss::UserName("alice".into()));
        assert!(d.is_negative(&Miss::UserName("alice".into()), Duration::from_secs(30)));
        assert!(!d.is_negative(&Miss::UserName("alice".into()), Duration::ZERO));
        d.insert_user(user("alice", 200001));
        assert!(
            !d.is_negative(&Miss::UserName("alice".into()), Duration::from_secs(30)),
            "a found user clears its miss"
        );
        d.insert_user(user("alice", 200009));
        assert!(d.user_by_uid(200001).is_none());
        assert_eq!(d.user_by_uid(200009).unwrap().username, "alice");
    }

    #[test]
    fn the_delta_holds_only_the_learned_users_by_the_same_rules() {
        let mut d = Directory::default();
        let everyone: Vec<OsUser> = (0..1000)
            .map(|i| user(&format!("u{i}"), 200_000 + i))
            .collect();
        d.replace(
            everyone,
            vec![
                Group {
                    name: "devs".into(),
                    gid: 300000,
                    members: vec!["u1".into(), "new1".into(), "u2".into()],
                },
                Group {
                    name: "ops".into(),
                    gid: 300001,
                    members: vec!["u3".into()],
                },
            ],
        );
        assert_eq!(d.learned_count(), 0, "a sync is not learned");
        assert!(d.delta().user_count() == 0);
        d.insert_user(user("new1", 250001));
        d.insert_user(user("new2", 250002));
        d.insert_user(user("clash", 250003));
        assert_eq!(d.learned_count(), 3);
        let local = LocalAccounts::parse("clash:x:5000:5000::/:/bin/sh\n", "");
        let delta = d.delta();
        let (bytes, skipped) = delta.build_cache(&settings(), &local, &HashSet::new(), 7);
        assert_eq!(
            skipped,
            vec!["user clash: a local account holds the name \"clash\"".to_string()]
        );
        let c = Cache::parse(&bytes).unwrap();
        c.validate_all().unwrap();
        assert_eq!(
            &bytes[8..12],
            &guest_agent_wire::cache::VERSION.to_le_bytes()
        );
        assert_eq!(
            c.users_gid(),
            Some(4_000_000_000),
            "the header names the users group"
        );
        assert_eq!(c.user_count(), 2, "only the learned users (clash refused)");
        assert!(c.user_by_name(b"u1").is_none());
        let new1 = c.user_by_name(b"new1").unwrap();
        assert_eq!(
            new1.groups().collect::<Vec<_>>(),
            vec![300000, 4_000_000_000]
        );
        assert_eq!(c.user_by_uid(250002).unwrap().name, b"new2");
        // Personal groups as in a full build; the directory group with its learned members.
        assert_eq!(c.group_by_gid(250001).unwrap().name, b"new1");
        let devs = c.group_by_name(b"devs").unwrap();
        assert_eq!(devs.members().collect::<Vec<_>>(), vec![b"new1".as_slice()]);
        assert!(c.group_by_name(b"ops").is_none(), "no learned member");
        // The same entries as a full build gives them.
        let (full, _) = d.build_cache(&settings(), &local, &HashSet::new(), 7);
        let full = Cache::parse(&full).unwrap();
        let f = full.user_by_name(b"new1").unwrap();
        assert_eq!(
            (f.uid, f.gid, f.home, f.shell),
            (new1.uid, new1.gid, new1.home, new1.shell)
        );
        assert_eq!(
            f.groups().collect::<Vec<_>>(),
            new1.groups().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_full_build_forgets_what_it_wrote_and_keeps_what_came_after() {
        let mut d = Directory::default();
        d.replace(vec![user("alice", 200001)], Vec::new());
        d.insert_user(user("new1", 250001));
        let (snapshot, learned) = d.snapshot();
        assert!(snapshot.user("new1").is_some());
        d.insert_user(user("new2", 250002)); // learned while the full build runs
        d.forget_learned(&learned);
        assert_eq!(d.learned_count(), 1);
        assert!(d.delta().user("new2").is_some() && d.delta().user("new1").is_none());
        // A sync keeps a learned user it lists (the main file on disk lacks it until the
        // sync's own build is written) and drops one it does not.
        d.insert_user(user("gone", 250003));
        d.replace(
            vec![user("alice", 200001), user("new2", 250002)],
            Vec::new(),
        );
        assert_eq!(d.learned_count(), 1);
        assert!(d.delta().user("new2").is_some());
    }

    #[test]
    fn groups_of_comes_from_the_member_index() {
        let mut d = Directory::default();
        let g = |name: &str, gid, members: &[&str]| Group {
            name: name.into(),
            gid,
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        d.replace(
            vec![user("alice", 200001)],
            vec![
                g("b", 300002, &["alice"]),
                g("a", 300001, &["alice", "bob"]),
            ],
        );
        assert_eq!(d.groups_of("alice"), vec![300001, 300002]);
        assert_eq!(d.groups_of("bob"), vec![300001]);
        d.insert_group(g("a", 300001, &["bob"])); // alice left "a"
        assert_eq!(d.groups_of("alice"), vec![300002]);
        d.insert_group(g("b", 300009, &["alice"])); // "b" got another gid
        assert_eq!(d.groups_of("alice"), vec![300009]);
        assert!(d.group_by_gid(300002).is_none());
        assert!(d.groups_of("nobody").is_empty());
    }

    /// A login's profile refresh of a user the sync already gave changes no file (the first
    /// fault-matrix cell once saw the delta written by the first certificate login); a new
    /// user goes to the delta; changed cache fields ask for a full rebuild.
    #[test]
    fn a_refreshed_profile_with_the_same_fields_is_not_learned() {
        let mut d = Directory::default();
        d.replace(vec![user("alice", 200001)], vec![]);
        let mut refreshed = user("alice", 200001);
        refreshed.keys.push(super::super::profile::OsKey {
            line: "ssh-ed25519 AAAA new".into(),
            expires_usec: None,
        });
        assert_eq!(d.insert_user(refreshed).1, Inserted::Same);
        assert_eq!(d.learned_count(), 0);
        let mut moved = user("alice", 200001);
        moved.home = "/home/alice2".into();
        assert_eq!(d.insert_user(moved).1, Inserted::Changed);
        assert_eq!(d.insert_user(user("bob", 200002)).1, Inserted::New);
        assert_eq!(d.learned_count(), 2);
    }
}
