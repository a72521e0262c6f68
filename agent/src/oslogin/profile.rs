//! OS Login answers, parsed: login profiles (users and their keys), posix groups, group
//! members, authorization.
//!
//! Rules (the reference module's bugs fixed, each said where it happens):
//! - `uid`/`gid` may be JSON numbers or strings of digits; anything else refuses the profile.
//! - A uid or gid below the floor (default 1000), zero, or 4294967295 (`(uid_t)-1`, which
//!   chown(2) and setresuid(2) read as "unchanged") is refused. The reference accepts the
//!   latter; we do not.
//! - A missing `gid` is the uid (the reference left it uninitialised); a missing home is
//!   `/home/<username>`; a missing shell is `/bin/bash`.
//! - Only the primary posix account is used, else the first.
//! - A key whose `expirationTimeUsec` is in the past, zero, or not a number is expired.
//! - The username must pass the name rule; home and shell must be absolute paths without
//!   `:` or control characters (they end up in passwd lines).

use serde_json::Value;

use guest_agent_wire::names::is_valid_name;

/// The largest id we never hand out: `(uid_t)-1`.
const INVALID_ID: u64 = u32::MAX as u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    /// The identity (`name` of the profile: an email or a cloud user id).
    pub email: String,
    pub username: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    pub keys: Vec<OsKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsKey {
    /// The authorized_keys line as registered (`ssh-ed25519 AAAA... comment`).
    pub line: String,
    /// Microseconds since the epoch; `None` = does not expire.
    pub expires_usec: Option<i64>,
}

impl OsKey {
    pub fn is_valid_at(&self, now_usec: i64) -> bool {
        self.expires_usec.is_none_or(|t| t > now_usec)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsGroup {
    pub name: String,
    pub gid: u32,
}

/// Why a profile or group was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("not JSON of the expected shape: {0}")]
    Shape(String),
    #[error("profile {who}: {what}")]
    Invalid { who: String, what: String },
}

fn invalid(who: &str, what: impl Into<String>) -> ProfileError {
    ProfileError::Invalid {
        who: who.to_owned(),
        what: what.into(),
    }
}

/// A JSON number or a string of digits, as u64.
fn id_value(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

fn check_id(who: &str, field: &str, id: u64, floor: u32) -> Result<u32, ProfileError> {
    if id == 0 || id < u64::from(floor) || id >= INVALID_ID {
        return Err(invalid(
            who,
            format!("{field} {id} is outside the allowed range ({floor} to 4294967294)"),
        ));
    }
    Ok(id as u32)
}

fn path_field(
    who: &str,
    field: &str,
    v: Option<&Value>,
    default: String,
) -> Result<String, ProfileError> {
    let s = match v {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::String(s)) if s.is_empty() => return Ok(default),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid(who, format!("{field} is not a string"))),
    };
    if !s.starts_with('/') || s.contains(':') || s.chars().any(char::is_control) {
        return Err(invalid(
            who,
            format!("{field} {s:?} is not an absolute path usable in passwd"),
        ));
    }
    Ok(s)
}

/// Parses one login profile (an element of `loginProfiles`).
pub fn parse_profile(v: &Value, floor: u32, now_usec: i64) -> Result<OsUser, ProfileError> {
    let email = v
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let who = if email.is_empty() {
        "?"
    } else {
        email.as_str()
    };
    let accounts = v
        .get("posixAccounts")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(who, "no posixAccounts"))?;
    let account = accounts
        .iter()
        .find(|a| a.get("primary").and_then(Value::as_bool) == Some(true))
        .or_else(|| accounts.first())
        .ok_or_else(|| invalid(who, "posixAccounts is empty"))?;
    let username = account
        .get("username")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !is_valid_name(username) {
        return Err(invalid(
            who,
            format!("username {username:?} is not a valid user name"),
        ));
    }
    let uid = account
        .get("uid")
        .map(|u| id_value(u).ok_or_else(|| invalid(who, format!("uid {u} is not a number"))))
        .transpose()?
        .ok_or_else(|| invalid(who, "no uid"))?;
    let uid = check_id(who, "uid", uid, floor)?;
    let gid = match account.get("gid") {
        None | Some(Value::Null) => uid, // the reference left it uninitialised
        Some(g) => check_id(
            who,
            "gid",
            id_value(g).ok_or_else(|| invalid(who, format!("gid {g} is not a number")))?,
            floor,
        )?,
    };
    let home = path_field(
        who,
        "homeDirectory",
        account.get("homeDirectory"),
        format!("/home/{username}"),
    )?;
    let shell = path_field(who, "shell", account.get("shell"), "/bin/bash".into())?;
    Ok(OsUser {
        email,
        username: username.to_owned(),
        uid,
        gid,
        home,
        shell,
        keys: parse_keys(v, now_usec),
    })
}

/// The unexpired keys of a profile (`sshPublicKeys`), sorted for stable output.
pub fn parse_keys(v: &Value, now_usec: i64) -> Vec<OsKey> {
    let Some(map) = v.get("sshPublicKeys").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut keys: Vec<OsKey> = map
        .values()
        .filter_map(|k| {
            let line = k.get("key")?.as_str()?.trim();
            if line.is_empty() || line.contains(['\n', '\r', '\0']) {
                return None;
            }
            let expires_usec = match k.get("expirationTimeUsec") {
                None | Some(Value::Null) => None,
                Some(e) => Some(match id_value(e) {
                    Some(t) if t > 0 => i64::try_from(t).unwrap_or(i64::MAX),
                    _ => 0, // zero, negative or garbage: expired
                }),
            };
            let key = OsKey {
                line: line.to_owned(),
                expires_usec,
            };
            key.is_valid_at(now_usec).then_some(key)
        })
        .collect();
    keys.sort_by(|a, b| a.line.cmp(&b.line));
    keys.dedup_by(|a, b| a.line == b.line);
    keys
}

/// A page of `users?pagesize=`: the profiles that parse, the refusals, and the next token
/// (`None` when the listing ends: token absent, empty or `"0"`). Profiles on the last page are
/// read too (the reference ignored them).
pub struct UserPage {
    pub users: Vec<OsUser>,
    pub refused: Vec<ProfileError>,
    pub next: Option<String>,
}

pub fn parse_user_page(v: &Value, floor: u32, now_usec: i64) -> Result<UserPage, ProfileError> {
    if !v.is_object() {
        return Err(ProfileError::Shape("users answer is not an object".into()));
    }
    let mut page = UserPage {
        users: Vec::new(),
        refused: Vec::new(),
        next: next_token(v),
    };
    match v.get("loginProfiles") {
        None | Some(Value::Null) => {}
        Some(Value::Array(profiles)) => {
            for p in profiles {
                match parse_profile(p, floor, now_usec) {
                    Ok(u) => page.users.push(u),
                    Err(e) => page.refused.push(e),
                }
            }
        }
        Some(_) => return Err(ProfileError::Shape("loginProfiles is not an array".into())),
    }
    Ok(page)
}

fn next_token(v: &Value) -> Option<String> {
    v.get("nextPageToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && *t != "0")
        .map(str::to_owned)
}

/// The single profile of a `users?username=` / `users?uid=` answer.
pub fn parse_single_user(v: &Value, floor: u32, now_usec: i64) -> Result<OsUser, ProfileError> {
    let page = parse_user_page(v, floor, now_usec)?;
    match (
        page.users.into_iter().next(),
        page.refused.into_iter().next(),
    ) {
        (Some(u), _) => Ok(u),
        (None, Some(e)) => Err(e),
        (None, None) => Err(ProfileError::Shape("no loginProfiles in the answer".into())),
    }
}

/// A page of `groups?...`: groups that parse, refusals, next token.
pub struct GroupPage {
    pub groups: Vec<OsGroup>,
    pub refused: Vec<ProfileError>,
    pub next: Option<String>,
}

/// Parses a page of `groups?...`.
pub fn parse_group_page(v: &Value, floor: u32) -> Result<GroupPage, ProfileError> {
    if !v.is_object() {
        return Err(ProfileError::Shape("groups answer is not an object".into()));
    }
    let mut groups = Vec::new();
    let mut refused = Vec::new();
    if let Some(list) = v.get("posixGroups") {
        let list = list
            .as_array()
            .ok_or_else(|| ProfileError::Shape("posixGroups is not an array".into()))?;
        for g in list {
            let name = g.get("name").and_then(Value::as_str).unwrap_or("");
            let who = format!("group {name:?}");
            if !is_valid_name(name) {
                refused.push(invalid(&who, "not a valid group name"));
                continue;
            }
            match g.get("gid").and_then(id_value) {
                Some(gid) => match check_id(&who, "gid", gid, floor) {
                    Ok(gid) => groups.push(OsGroup {
                        name: name.to_owned(),
                        gid,
                    }),
                    Err(e) => refused.push(e),
                },
                None => refused.push(invalid(&who, "no numeric gid")),
            }
        }
    }
    Ok(GroupPage {
        groups,
        refused,
        next: next_token(v),
    })
}

/// `users?groupname=`: member names (invalid ones dropped) and the next token.
pub fn parse_members(v: &Value) -> Result<(Vec<String>, Option<String>), ProfileError> {
    if !v.is_object() {
        return Err(ProfileError::Shape(
            "members answer is not an object".into(),
        ));
    }
    let names = match v.get("usernames") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|n| is_valid_name(n))
            .map(str::to_owned)
            .collect(),
        Some(_) => return Err(ProfileError::Shape("usernames is not an array".into())),
    };
    Ok((names, next_token(v)))
}

/// `authorize?...`: only `{"success": true}` is a yes.
pub fn parse_authorized(v: &Value) -> bool {
    v.get("success").and_then(Value::as_bool) == Some(true)
}

/// The key types a security key makes (FIDO, `ssh-keygen -t ed25519-sk` / `ecdsa-sk`).
pub const SECURITY_KEY_TYPES: [&str; 2] = [
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The `securityKeys` of the profile of `username` in a `users?username=NAME&view=securityKey`
/// answer (only `publicKey` is used): the lines of security-key types; a profile without any
/// has none (not an error). `Err`: the answer is not that user's profile.
pub fn security_keys(answer: &Value, username: &str) -> Result<Vec<String>, String> {
    let profile = answer
        .get("loginProfiles")
        .and_then(Value::as_array)
        .and_then(|p| p.first())
        .ok_or("no loginProfiles in the answer")?;
    let named = profile
        .get("posixAccounts")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|acct| acct.get("username").and_then(Value::as_str) == Some(username))
        });
    if !named {
        return Err(format!("the profile is not {username:?}'s"));
    }
    let Some(list) = profile.get("securityKeys") else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or("securityKeys is not a list")?;
    Ok(list
        .iter()
        .filter_map(|k| k.get("publicKey").and_then(Value::as_str))
        .map(str::trim)
        .filter(|k| {
            let ok = k
                .split_whitespace()
                .next()
                .is_some_and(|t| SECURITY_KEY_TYPES.contains(&t))
                && !k.contains(['\n', '\r']);
            if !ok {
                tracing::warn!(
                    user = username,
                    "a securityKeys entry that is not a security key skipped"
                );
            }
            ok
        })
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests;
