//! The login decision's one home: what a directory profile or group may become on this VM, and
//! whether a login is allowed, as pure functions of the profile, the local accounts, the rules
//! from the configuration, the clock and the service's authorization answers. The daemon (its
//! socket, its cache file, its login path) and the helper's own path when the daemon is down
//! both decide here; they only gather the inputs and turn the result into their answer.
//!
//! What the directory (an administrator, or a compromised directory account) may not do to
//! the VM:
//! - shadow or alias a local account: a user whose name or uid a local user holds, or whose
//!   primary gid a local group holds (that gid would give the group's rights: `sudo`, an
//!   admin's private group), is not served; a group whose name or gid a local group holds, or
//!   the gid of the OS Login users group, is not served;
//! - squat a well-known system name (see [`is_reserved_name`]) that a package may create
//!   later (`docker` before `apt install docker.io`, whose `groupadd` would then be skipped
//!   because the name resolves) or that another source (systemd, sssd) serves;
//! - hand out ids below the floor (`oslogin.min_id`), 0 or `(uid_t)-1`;
//! - put a home outside `oslogin.home_bases`: a home is normalised, must lie strictly below a
//!   base, and holds no `.` or `..`; otherwise the user gets `BASE/NAME` (the first base).
//!   A home that exists and belongs to someone else is not adopted either (the login path
//!   sees that; [`admit_user`] is told with `home_taken`).
//! - escape `oslogin.ignore_user_keys`: sshd ignores OS Login users' own
//!   `~/.ssh/authorized_keys` through `Match Group USERS_GROUP`, which only works while the
//!   users group resolves to the name and gid we serve. When a local group holds that name or
//!   gid, the rule cannot match anyone, so no user is admitted at all (fail closed; the error
//!   names `oslogin.users_group` / `users_group_gid` to change) rather than every user's own
//!   key file becoming a way in that no role revocation closes.
//! - while the local account files cannot be read (the caller keeps the last good view and
//!   marks it stale), admit a name the daemon did not already serve.

use std::borrow::Cow;
use std::sync::Arc;

use guest_agent_wire::names::is_valid_name;

use super::authorize::Decision;
use super::certificate::CertInfo;
use super::directory::LocalAccounts;
use super::profile::OsUser;

/// The largest id, `(uid_t)-1`: never handed out.
const INVALID_ID: u32 = u32::MAX;

/// Names of system users and groups a distribution or a common package creates (or another
/// NSS source serves), and which grant privilege when a directory entry takes them first.
/// `systemd-*` and `_*` (Debian's and OpenBSD-style service accounts) are reserved as
/// prefixes, and so are our own `guest-agent*`.
const RESERVED: &[&str] = &[
    "adm",
    "admin",
    "audio",
    "backup",
    "bin",
    "cdrom",
    "containerd",
    "crontab",
    "daemon",
    "dialout",
    "dip",
    "disk",
    "docker",
    "floppy",
    "games",
    "gnats",
    "google-sudoers",
    "incus",
    "incus-admin",
    "input",
    "irc",
    "kmem",
    "kvm",
    "libvirt",
    "libvirt-qemu",
    "list",
    "lp",
    "lpadmin",
    "lxd",
    "mail",
    "man",
    "messagebus",
    "netdev",
    "news",
    "nobody",
    "nogroup",
    "operator",
    "plugdev",
    "podman",
    "polkitd",
    "proxy",
    "qemu",
    "render",
    "root",
    "sgx",
    "shadow",
    "sshd",
    "ssl-cert",
    "staff",
    "sudo",
    "sync",
    "sys",
    "tape",
    "tss",
    "tty",
    "users",
    "utmp",
    "uucp",
    "video",
    "voice",
    "wheel",
    "www-data",
];

const RESERVED_PREFIXES: &[&str] = &["systemd-", "_", "guest-agent"];

/// Whether `name` is a well-known system name no directory user or group may take.
pub fn is_reserved_name(name: &str) -> bool {
    RESERVED.binary_search(&name).is_ok() || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// What admission is judged against (from the configuration).
#[derive(Debug, Clone)]
pub struct Rules {
    pub min_id: u32,
    /// Where homes may be; the first is where a refused home goes.
    pub home_bases: Vec<String>,
    pub users_group: String,
    pub users_group_gid: u32,
    /// Further names no directory entry may take (the metadata users' sudo group).
    pub extra_reserved: Vec<String>,
    /// sshd must ignore the users' own key files (`oslogin.ignore_user_keys`).
    pub ignore_user_keys: bool,
}

impl Rules {
    pub fn from_config(c: &crate::config::Config) -> Rules {
        Rules {
            min_id: c.oslogin.min_id,
            home_bases: c.oslogin.home_bases.clone(),
            users_group: c.oslogin.users_group.clone(),
            users_group_gid: c.oslogin.users_group_gid,
            extra_reserved: vec![c.accounts.sudo_group.clone()],
            ignore_user_keys: c.oslogin.ignore_user_keys,
        }
    }

    fn reserved(&self, name: &str) -> bool {
        is_reserved_name(name) || self.extra_reserved.iter().any(|r| r == name)
    }

    fn id_ok(&self, id: u32) -> bool {
        id != 0 && id >= self.min_id && id != INVALID_ID
    }

    fn default_base(&self) -> &str {
        self.home_bases.first().map_or("/home", |b| b.as_str())
    }
}

/// Why a directory entry is not served here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0:?} is not a valid name")]
    InvalidName(String),
    #[error("{0:?} is a reserved system name")]
    ReservedName(String),
    #[error("a local account holds the name {0:?}")]
    LocalName(String),
    #[error("a local user holds uid {0}")]
    LocalUid(u32),
    #[error("a local group holds gid {0}")]
    LocalGid(u32),
    #[error("id {0} is outside the allowed range")]
    IdOutOfRange(u32),
    #[error("gid {0} is the OS Login users group's")]
    UsersGroupGid(u32),
    #[error("the local account files cannot be read, and {0:?} was not served before")]
    LocalAccountsUnknown(String),
    #[error(
        "a local group holds the OS Login users group's name or gid ({0}), so sshd could not \
         ignore OS Login users' own key files: no OS Login user is served until \
         oslogin.users_group / oslogin.users_group_gid name a free group"
    )]
    UsersGroupTaken(String),
}

/// `path` normalised (repeated and trailing `/` dropped), if it is absolute and holds no `.`
/// or `..` component.
fn normalise(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return None;
        }
        out.push('/');
        out.push_str(part);
    }
    (!out.is_empty()).then_some(out)
}

/// The home a profile gets: its own when it lies strictly below a base, else `BASE/NAME`.
/// `Err` carries the reason the profile's home was not used.
pub fn home_for<'a>(
    username: &str,
    home: &'a str,
    rules: &Rules,
    home_taken: bool,
) -> Result<Cow<'a, str>, (String, &'static str)> {
    let fallback = || format!("{}/{username}", rules.default_base().trim_end_matches('/'));
    if home_taken {
        return Err((fallback(), "it exists and belongs to another account"));
    }
    let Some(normal) = normalise(home) else {
        return Err((fallback(), "it is not a normalised absolute path"));
    };
    let below = rules.home_bases.iter().any(|base| {
        normalise(base).is_some_and(|b| {
            let b = if b == "/" { String::new() } else { b };
            normal.len() > b.len() + 1
                && normal.starts_with(&b)
                && normal.as_bytes()[b.len()] == b'/'
        })
    });
    if !below {
        return Err((fallback(), "it is not below oslogin.home_bases"));
    }
    Ok(if normal == home {
        Cow::Borrowed(home)
    } else {
        Cow::Owned(normal)
    })
}

/// A user as this VM serves it: the profile, or the profile with its home replaced (the second
/// value says why, for the caller to log once). `known`: the daemon served this name before
/// (only read when `local` is stale).
pub fn admit_user(
    u: &Arc<OsUser>,
    local: &LocalAccounts,
    rules: &Rules,
    known: bool,
    home_taken: bool,
) -> Result<(Arc<OsUser>, Option<&'static str>), Refusal> {
    let name = &u.username;
    if !is_valid_name(name) {
        return Err(Refusal::InvalidName(name.clone()));
    }
    if rules.reserved(name) || *name == rules.users_group {
        return Err(Refusal::ReservedName(name.clone()));
    }
    for id in [u.uid, u.gid] {
        if !rules.id_ok(id) {
            return Err(Refusal::IdOutOfRange(id));
        }
    }
    if local.stale && !known {
        return Err(Refusal::LocalAccountsUnknown(name.clone()));
    }
    if rules.ignore_user_keys && local.clashes_with_group(&rules.users_group, rules.users_group_gid)
    {
        return Err(Refusal::UsersGroupTaken(format!(
            "{}:{}",
            rules.users_group, rules.users_group_gid
        )));
    }
    if local.user_names.contains(name) || local.group_names.contains(name) {
        return Err(Refusal::LocalName(name.clone()));
    }
    if local.uids.contains(&u.uid) {
        return Err(Refusal::LocalUid(u.uid));
    }
    // A primary gid a local group holds gives that group's rights; so would the personal
    // group's gid (= uid) when a local group holds it.
    for gid in [u.gid, u.uid] {
        if local.gids.contains(&gid) {
            return Err(Refusal::LocalGid(gid));
        }
    }
    if u.gid == rules.users_group_gid || u.uid == rules.users_group_gid {
        return Err(Refusal::UsersGroupGid(rules.users_group_gid));
    }
    match home_for(name, &u.home, rules, home_taken) {
        Ok(Cow::Borrowed(_)) => Ok((u.clone(), None)),
        Ok(Cow::Owned(home)) => Ok((
            Arc::new(OsUser {
                home,
                ..(**u).clone()
            }),
            None,
        )),
        Err((home, why)) => Ok((
            Arc::new(OsUser {
                home,
                ..(**u).clone()
            }),
            Some(why),
        )),
    }
}

/// Whether a directory group may be served here.
pub fn admit_group(
    name: &str,
    gid: u32,
    local: &LocalAccounts,
    rules: &Rules,
    known: bool,
) -> Result<(), Refusal> {
    if !is_valid_name(name) {
        return Err(Refusal::InvalidName(name.to_owned()));
    }
    if rules.reserved(name) || name == rules.users_group {
        return Err(Refusal::ReservedName(name.to_owned()));
    }
    if !rules.id_ok(gid) {
        return Err(Refusal::IdOutOfRange(gid));
    }
    if gid == rules.users_group_gid {
        return Err(Refusal::UsersGroupGid(gid));
    }
    if local.stale && !known {
        return Err(Refusal::LocalAccountsUnknown(name.to_owned()));
    }
    if local.group_names.contains(name) {
        return Err(Refusal::LocalName(name.to_owned()));
    }
    if local.gids.contains(&gid) {
        return Err(Refusal::LocalGid(gid));
    }
    Ok(())
}

/// What a certificate must carry before anyone is asked: an OS Login id, validity now, and
/// `user` among its principals. `Ok` is the id to authorize with.
pub fn certificate_id<'a>(
    info: &'a CertInfo,
    user: &str,
    now_unix: u64,
) -> Result<&'a str, &'static str> {
    let Some(id) = info.fingerprint.as_deref() else {
        return Err("the certificate carries no OS Login id (fingerprint@google.com)");
    };
    if !info.is_valid_at(now_unix) {
        return Err("the certificate is outside its validity period");
    }
    if !info.principals.iter().any(|p| p == user) {
        return Err("the certificate does not name this user");
    }
    Ok(id)
}

/// The login verdict from the login role's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow { by_grace: bool },
    Deny(String),
    Unavailable(String),
}

/// `login`: the answer to `authorize?policy=login`; `within_grace`: the user's last positive
/// answer is younger than the grace period (only read when the service did not answer).
pub fn login_verdict(login: &Decision, within_grace: bool) -> Verdict {
    match login {
        Decision::Allowed => Verdict::Allow { by_grace: false },
        Decision::Denied => Verdict::Deny("login role not granted".into()),
        Decision::Unavailable(_) if within_grace => Verdict::Allow { by_grace: true },
        Decision::Unavailable(why) => Verdict::Unavailable(why.clone()),
    }
}

#[cfg(test)]
#[path = "decision_tests.rs"]
mod tests;
