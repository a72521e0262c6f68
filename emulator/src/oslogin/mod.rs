//! The OS Login directory (users, groups, roles, keys, issued certificate ids) and its
//! endpoints under `/computeMetadata/v1/oslogin/`; two-step verification sessions are in
//! `twofactor.rs`, TOTP codes in `totp.rs`.

pub(crate) mod totp;
pub(crate) mod twofactor;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::{GroupSpec, KeySpec, TwoFactor, UserSpec};
use crate::http::{Response, parse_query};

/// Page size when a listing request gives none.
const DEFAULT_PAGE_SIZE: usize = 1000;
/// `accountId` of every POSIX account.
const ACCOUNT_ID: &str = "emulated-project";

const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Lowercase hex sha256 of the key's base64-decoded blob (the second field of the line).
/// A line whose blob does not decode is fingerprinted by its text, so it can still be served.
pub fn key_fingerprint(key_line: &str) -> String {
    let blob = key_line
        .split_whitespace()
        .nth(1)
        .and_then(|b| B64.decode(b).ok());
    let digest = match blob {
        Some(blob) => Sha256::digest(&blob),
        None => Sha256::digest(key_line.trim().as_bytes()),
    };
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_usec() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Query parameters of one request.
struct Params<'a>(&'a [(String, String)]);

impl<'a> Params<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
struct RawAnswer {
    params: Vec<(String, String)>,
    status: u16,
    body: String,
}

fn sorted_params(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut p = params.to_vec();
    p.sort();
    p
}

#[derive(Debug, Default)]
pub(crate) struct Directory {
    users: BTreeMap<String, UserSpec>,
    groups: BTreeMap<String, GroupSpec>,
    raw: Vec<RawAnswer>,
    /// Certificate fingerprint ids issued -> username.
    cert_ids: HashMap<String, String>,
    /// Two-step verification sessions, used TOTP steps, phone-prompt decisions.
    two_factor: twofactor::TwoFactorState,
    /// email -> usernames and uid -> usernames: `authorize` and the lookups by uid and email
    /// answer a 100,000-user directory without scanning it (issue 15: the scan made each
    /// authorize cost ~9 ms there, which the benchmarks then had to subtract). Sets, so that
    /// the first username in order answers, as a scan of `users` would.
    by_email: HashMap<String, BTreeSet<String>>,
    by_uid: HashMap<u32, BTreeSet<String>>,
}

impl Directory {
    pub fn upsert_user(&mut self, user: UserSpec) {
        self.unindex(&user.username);
        let name = user.username.clone();
        self.by_email
            .entry(user.email.clone())
            .or_default()
            .insert(name.clone());
        self.by_uid
            .entry(user.uid)
            .or_default()
            .insert(name.clone());
        self.users.insert(name, user);
    }

    pub fn remove_user(&mut self, username: &str) -> bool {
        self.cert_ids.retain(|_, u| u != username);
        self.two_factor.forget_user(username);
        self.unindex(username);
        self.users.remove(username).is_some()
    }

    /// Takes `username`'s present entry out of the email and uid indexes.
    fn unindex(&mut self, username: &str) {
        let Some(old) = self.users.get(username) else {
            return;
        };
        if let Some(set) = self.by_email.get_mut(&old.email) {
            set.remove(username);
            if set.is_empty() {
                self.by_email.remove(&old.email);
            }
        }
        if let Some(set) = self.by_uid.get_mut(&old.uid) {
            set.remove(username);
            if set.is_empty() {
                self.by_uid.remove(&old.uid);
            }
        }
    }

    /// The user with this email (the first by username when several have it).
    pub(crate) fn user_by_email(&self, email: &str) -> Option<&UserSpec> {
        let name = self.by_email.get(email)?.first()?;
        self.users.get(name)
    }

    fn user_by_uid(&self, uid: u32) -> Option<&UserSpec> {
        let name = self.by_uid.get(&uid)?.first()?;
        self.users.get(name)
    }

    pub fn user(&self, username: &str) -> Option<&UserSpec> {
        self.users.get(username)
    }

    pub fn set_roles(&mut self, username: &str, login: bool, admin: bool) -> bool {
        let Some(u) = self.users.get_mut(username) else {
            return false;
        };
        u.login = login;
        u.admin = admin;
        true
    }

    /// Replaces the user's two-step factors (forgetting its used TOTP steps and any
    /// undelivered phone-prompt decision); false if the user is unknown.
    pub fn set_two_factor(&mut self, username: &str, factors: Vec<TwoFactor>) -> bool {
        let Some(u) = self.users.get_mut(username) else {
            return false;
        };
        u.two_factor = factors;
        self.two_factor.forget_user(username);
        true
    }

    /// Decides the user's waiting phone prompt, or its next one; false if the user is unknown.
    pub fn decide_authzen(&mut self, username: &str, approve: bool) -> bool {
        if !self.users.contains_key(username) {
            return false;
        }
        self.two_factor.decide_authzen(username, approve);
        true
    }

    /// Adds a key (replacing one with the same fingerprint).
    pub fn add_key(&mut self, username: &str, key: &str, expiration_usec: Option<i64>) -> bool {
        let Some(u) = self.users.get_mut(username) else {
            return false;
        };
        let fp = key_fingerprint(key);
        u.keys.retain(|k| key_fingerprint(&k.key) != fp);
        u.keys.push(KeySpec {
            key: key.trim().to_owned(),
            expiration_usec,
        });
        true
    }

    /// Removes the key with the same blob as `key`; false if user or key is unknown.
    pub fn remove_key(&mut self, username: &str, key: &str) -> bool {
        let Some(u) = self.users.get_mut(username) else {
            return false;
        };
        let fp = key_fingerprint(key);
        let before = u.keys.len();
        u.keys.retain(|k| key_fingerprint(&k.key) != fp);
        u.keys.len() != before
    }

    pub fn upsert_group(&mut self, group: GroupSpec) {
        self.groups.insert(group.name.clone(), group);
    }

    pub fn remove_group(&mut self, name: &str) -> bool {
        self.groups.remove(name).is_some()
    }

    /// From now on `users?<query>` answers exactly `status` and `body`.
    pub fn set_raw(&mut self, query: &str, status: u16, body: String) {
        let params = sorted_params(&parse_query(query.trim_start_matches('?')));
        self.raw.retain(|r| r.params != params);
        self.raw.push(RawAnswer {
            params,
            status,
            body,
        });
    }

    pub fn remember_cert(&mut self, id: String, username: &str) {
        self.cert_ids.insert(id, username.to_owned());
    }

    /// Answers `oslogin/<endpoint>?<params>`.
    pub fn answer(&self, endpoint: &str, params: &[(String, String)], ca: &[String]) -> Response {
        let param = Params(params);
        let result = match endpoint {
            "users" => self.users_endpoint(&param),
            "groups" => self.groups_endpoint(&param),
            "authorize" => self.authorize(&param),
            "certificates" => {
                let cas: Vec<Value> = ca.iter().map(|k| json!({ "publicKey": k })).collect();
                Ok(json!({ "trustedCertificateAuthorities": cas }))
            }
            _ => Err(not_found()),
        };
        match result {
            Ok(v) => Response::json(200, &v),
            Err(resp) => resp,
        }
    }

    fn users_endpoint(&self, param: &Params<'_>) -> Result<Value, Response> {
        let wanted = sorted_params(param.0);
        if let Some(raw) = self.raw.iter().find(|r| r.params == wanted) {
            return Err(Response::new(
                raw.status,
                "application/json",
                raw.body.clone(),
            ));
        }
        if let Some(name) = param.get("username") {
            let user = self.users.get(name).ok_or_else(not_found)?;
            let mut p = profile(user);
            if param.get("view") == Some("securityKey") {
                // Only `publicKey` is used by agents; the real service sends a key handle too.
                let keys: Vec<Value> = user
                    .security_keys
                    .iter()
                    .map(|k| json!({ "publicKey": k, "privateKey": "(key handle)" }))
                    .collect();
                p["securityKeys"] = Value::Array(keys);
            }
            return Ok(json!({ "loginProfiles": [p] }));
        }
        if let Some(uid) = param.get("uid") {
            let uid: u32 = uid.parse().map_err(|_| bad_request("bad uid"))?;
            let user = self.user_by_uid(uid).ok_or_else(not_found)?;
            return Ok(json!({ "loginProfiles": [profile(user)] }));
        }
        if let Some(group) = param.get("groupname") {
            let g = self.groups.get(group).ok_or_else(not_found)?;
            let (names, token) = page(&g.members, param)?;
            return Ok(json!({ "usernames": names, "nextPageToken": token }));
        }
        let users: Vec<&UserSpec> = self.users.values().collect();
        let (users, token) = page(&users, param)?;
        let profiles: Vec<Value> = users.iter().map(|u| profile(u)).collect();
        Ok(json!({ "loginProfiles": profiles, "nextPageToken": token }))
    }

    fn groups_endpoint(&self, param: &Params<'_>) -> Result<Value, Response> {
        let one = |g: &GroupSpec| json!({ "posixGroups": [group_json(g)], "nextPageToken": "0" });
        if let Some(name) = param.get("groupname") {
            return self.groups.get(name).map(one).ok_or_else(not_found);
        }
        if let Some(gid) = param.get("gid") {
            let gid: u32 = gid.parse().map_err(|_| bad_request("bad gid"))?;
            return self
                .groups
                .values()
                .find(|g| g.gid == gid)
                .map(one)
                .ok_or_else(not_found);
        }
        let groups: Vec<&GroupSpec> = match param.get("email") {
            Some(email) => {
                let username = self.user_by_email(email).map(|u| u.username.as_str());
                self.groups
                    .values()
                    .filter(|g| username.is_some_and(|n| g.members.iter().any(|m| m == n)))
                    .collect()
            }
            None => self.groups.values().collect(),
        };
        let (groups, token) = page(&groups, param)?;
        let groups: Vec<Value> = groups.iter().map(|g| group_json(g)).collect();
        Ok(json!({ "posixGroups": groups, "nextPageToken": token }))
    }

    fn authorize(&self, param: &Params<'_>) -> Result<Value, Response> {
        let email = param
            .get("email")
            .ok_or_else(|| bad_request("missing email"))?;
        let policy = param
            .get("policy")
            .ok_or_else(|| bad_request("missing policy"))?;
        let Some(user) = self.user_by_email(email) else {
            return Ok(json!({ "success": false }));
        };
        let has_role = match policy {
            "login" => user.login,
            "adminLogin" => user.admin,
            _ => false,
        };
        let key_ok = match param.get("fingerprint") {
            None => true,
            Some(fp) => {
                let now = now_usec();
                self.cert_ids.get(fp).is_some_and(|u| *u == user.username)
                    || user.keys.iter().any(|k| {
                        k.expiration_usec.is_none_or(|e| e > now) && key_fingerprint(&k.key) == fp
                    })
            }
        };
        Ok(json!({ "success": has_role && key_ok }))
    }
}

fn not_found() -> Response {
    Response::json(
        404,
        &json!({ "error": { "code": 404, "message": "Not Found" } }),
    )
}

fn bad_request(msg: &str) -> Response {
    Response::json(400, &json!({ "error": { "code": 400, "message": msg } }))
}

/// One page of `items` according to `pagesize` / `pagetoken`, and the next token
/// (`"0"` on the last page, which still carries its items).
fn page<T: Clone>(items: &[T], param: &Params<'_>) -> Result<(Vec<T>, String), Response> {
    let size = match param.get("pagesize") {
        None | Some("") => DEFAULT_PAGE_SIZE,
        Some(s) => match s.parse::<usize>() {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(n) => n,
            Err(_) => return Err(bad_request("bad pagesize")),
        },
    };
    let start = match param.get("pagetoken") {
        None | Some("") => 0,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| bad_request("bad pagetoken"))?,
    };
    let end = start.saturating_add(size).min(items.len());
    let chunk = items.get(start..end).unwrap_or_default().to_vec();
    let next = if end < items.len() {
        end.to_string()
    } else {
        "0".to_owned()
    };
    Ok((chunk, next))
}

fn group_json(g: &GroupSpec) -> Value {
    json!({ "name": g.name, "gid": g.gid })
}

/// The login profile of a user, as `users?username=` answers it.
pub fn profile(u: &UserSpec) -> Value {
    let mut keys = serde_json::Map::new();
    for k in &u.keys {
        let fp = key_fingerprint(&k.key);
        let mut entry = json!({ "key": k.key, "fingerprint": fp });
        if let Some(exp) = k.expiration_usec {
            entry["expirationTimeUsec"] = Value::String(exp.to_string());
        }
        keys.insert(fp, entry);
    }
    json!({
        "name": u.email,
        "posixAccounts": [{
            "primary": true,
            "username": u.username,
            "uid": u.uid,
            "gid": u.gid.unwrap_or(u.uid),
            "homeDirectory": u.home.clone().unwrap_or_else(|| format!("/home/{}", u.username)),
            "shell": u.shell.clone().unwrap_or_else(|| "/bin/bash".to_owned()),
            "operatingSystemType": "LINUX",
            "accountId": ACCOUNT_ID,
        }],
        "sshPublicKeys": keys,
    })
}

#[cfg(test)]
mod tests;
