//! The `ssh-keys` metadata attribute (and the keys of cloud-init users): which keys each user
//! gets, and why each refused line was refused. No I/O: text in, data out.
//!
//! One key per line: `USERNAME:[OPTIONS ]KEYTYPE BASE64 [COMMENT]`.
//! - Blank lines and lines starting with `#` are skipped silently. A CR before the newline is
//!   tolerated. Surrounding blanks (spaces, tabs) are ignored.
//! - Refused, each with a reason: a line over [`MAX_LINE_LEN`] bytes (the reason gives the
//!   length, never the content); a control character other than tab (NUL, ESC, a lone CR, ...);
//!   no `USERNAME:` prefix; a user name outside `^[a-z_][a-z0-9_.-]{0,31}$`; `root` unless
//!   allowed; options that are malformed (unterminated quote, empty option, value not quoted)
//!   or unknown to sshd (sshd would ignore the whole line); a key type that is not an OpenSSH
//!   user key type ([`USER_KEY_TYPES`]: certificates and DSA are refused); key data that does not
//!   decode to a key of the stated type; an RSA key under [`MIN_RSA_BITS`] (sshd would refuse
//!   it); a `google-ssh {...}` comment that is not JSON, whose `expireOn` is not a timestamp
//!   ([`super::expiry`]), or that has expired (reason `expired`, also at the very second).
//! - A `google-ssh` comment without `expireOn` is a key that does not expire; the marker with
//!   nothing after it (`google-ssh` alone) is refused, as Google's agent does.
//! - What a rejection reports is safe to log: the source, the line number, the user name part
//!   (escaped and cut short when it is not a valid name) and the key type; never the line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use guest_agent_wire::names::is_valid_name;
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PublicKey};

pub use super::entry::{Entry, USER_KEY_TYPES, key_identity, split_entry};
use super::entry::{KeyKind, check_options, classify, excerpt, is_blank};
use super::expiry::parse_timestamp;
use super::userdata;
use crate::mds::snapshot::Snapshot;

/// The longest line accepted, in bytes (an RSA 16384-bit key with options fits).
pub const MAX_LINE_LEN: usize = 8 * 1024;

/// The shortest RSA modulus sshd accepts (`RequiredRSASize`'s default), in bits.
pub const MIN_RSA_BITS: usize = 1024;

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// Instance `ssh-keys`, or the legacy instance `sshKeys`.
    Instance,
    /// Project `ssh-keys` (or legacy project `sshKeys`).
    Project,
    /// cloud-init `user-data` (`users:` → `ssh_authorized_keys`).
    UserData,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Instance => "instance",
            Source::Project => "project",
            Source::UserData => "user-data",
        })
    }
}

/// A key accepted for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataKey {
    pub user: String,
    /// The authorized_keys line to write: options (if any), type, base64 and comment (if any),
    /// separated by single spaces. Never holds a newline or control character.
    pub line: String,
    /// `SHA256:...`, as `ssh-keygen -l` and sshd's log show it.
    pub fingerprint: String,
    pub expires_unix: Option<i64>,
    pub source: Source,
}

/// A line (or user-data key) that was refused. Every field is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub source: Source,
    /// The attribute the line came from: `ssh-keys`, `sshKeys` or `user-data`.
    pub attribute: &'static str,
    /// 1-based line number in the attribute (for user-data: the line of the key, or of the
    /// user for a bad group, in the YAML; 0 when the whole user-data could not be read).
    pub line: usize,
    /// The user name part: as is when it is a valid name, escaped and cut to 32 characters
    /// otherwise; `None` when there is none (or it could not be told apart from the rest).
    pub user: Option<String>,
    /// The key type, escaped and cut short, when the line got that far.
    pub key_type: Option<String>,
    pub reason: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            Source::UserData => f.write_str("user-data")?,
            source => write!(f, "{source} {}", self.attribute)?,
        }
        if self.line > 0 {
            write!(f, " line {}", self.line)?;
        }
        if let Some(user) = &self.user {
            write!(f, " (user `{user}`)")?;
        }
        if let Some(t) = &self.key_type {
            write!(f, " ({t})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What the metadata asks for, all sources together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// user -> keys, in source order (instance, legacy instance, project, user-data; line order
    /// within each), each key once. A user appears only with at least one key.
    pub keys: BTreeMap<String, Vec<MetadataKey>>,
    /// Users who get the sudo group: every user with a key from `ssh-keys`/`sshKeys`, and
    /// cloud-init users with a `sudo` entry that is not false. Always a subset of `keys`.
    pub sudo: BTreeSet<String>,
    /// Extra groups cloud-init users ask for (`groups:`), valid names only. Only users in `keys`.
    pub groups: BTreeMap<String, BTreeSet<String>>,
    pub rejected: Vec<Rejected>,
    /// The earliest expiry among the kept keys: reconcile again at that second.
    pub next_expiry_unix: Option<i64>,
    /// `user-data` is `#cloud-config` but could not be read; its users are then absent from
    /// `keys`. The reconciler may prefer to keep what it had for them (the text is also in
    /// `rejected`).
    pub user_data_error: Option<String>,
}

impl Desired {
    /// user -> the authorized_keys lines of the managed block, in order.
    pub fn lines(&self) -> BTreeMap<String, Vec<String>> {
        self.keys
            .iter()
            .map(|(user, keys)| (user.clone(), keys.iter().map(|k| k.line.clone()).collect()))
            .collect()
    }
}

/// Why a line was refused, before it is given its place.
struct Refusal {
    user: Option<String>,
    key_type: Option<String>,
    reason: String,
}

/// Parses the text of an `ssh-keys` attribute. Returns the accepted keys in line order
/// (duplicates included: [`desired_keys`] keeps each key once) and the refused lines.
pub fn parse_ssh_keys(
    text: &str,
    source: Source,
    now_unix: i64,
    allow_root: bool,
) -> (Vec<MetadataKey>, Vec<Rejected>) {
    parse_attribute(text, source, "ssh-keys", now_unix, allow_root)
}

fn parse_attribute(
    text: &str,
    source: Source,
    attribute: &'static str,
    now_unix: i64,
    allow_root: bool,
) -> (Vec<MetadataKey>, Vec<Rejected>) {
    let mut keys = Vec::new();
    let mut rejected = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_matches(is_blank);
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(trimmed, source, now_unix, allow_root) {
            Ok(key) => keys.push(key),
            Err(r) => rejected.push(Rejected {
                source,
                attribute,
                line: i + 1,
                user: r.user,
                key_type: r.key_type,
                reason: r.reason,
            }),
        }
    }
    (keys, rejected)
}

/// One `USERNAME:ENTRY` line (already trimmed, not blank, not a comment).
fn parse_line(
    line: &str,
    source: Source,
    now_unix: i64,
    allow_root: bool,
) -> Result<MetadataKey, Refusal> {
    let name_prefix = || {
        line.split_once(':')
            .map(|(u, _)| u)
            .filter(|u| is_valid_name(u))
            .map(str::to_owned)
    };
    if line.len() > MAX_LINE_LEN {
        return Err(Refusal {
            user: name_prefix(),
            key_type: None,
            reason: format!(
                "line is {} bytes, over the {MAX_LINE_LEN}-byte limit",
                line.len()
            ),
        });
    }
    if let Some(c) = line.chars().find(|&c| is_forbidden_control(c)) {
        return Err(Refusal {
            user: name_prefix(),
            key_type: None,
            reason: format!("control character {} in the line", control_name(c)),
        });
    }
    let Some((user, entry)) = line.split_once(':') else {
        return Err(Refusal {
            user: None,
            key_type: None,
            reason: "no `USERNAME:` before the key".into(),
        });
    };
    parse_key_for(user, entry, source, now_unix, allow_root)
}

/// Validates `user` and one authorized_keys entry for that user. Used for `ssh-keys` lines and
/// for the keys of cloud-init users.
fn parse_key_for(
    user: &str,
    entry: &str,
    source: Source,
    now_unix: i64,
    allow_root: bool,
) -> Result<MetadataKey, Refusal> {
    let refuse = |key_type: Option<&str>, reason: String| Refusal {
        user: Some(excerpt(user, 32)),
        key_type: key_type.map(|t| excerpt(t, 48)),
        reason,
    };
    if !is_valid_name(user) {
        return Err(refuse(
            None,
            "invalid user name (must match ^[a-z_][a-z0-9_.-]{0,31}$)".into(),
        ));
    }
    if user == "root" && !allow_root {
        return Err(refuse(
            None,
            "root is refused (the configuration does not allow root)".into(),
        ));
    }
    if entry.len() > MAX_LINE_LEN {
        return Err(refuse(
            None,
            format!(
                "key is {} bytes, over the {MAX_LINE_LEN}-byte limit",
                entry.len()
            ),
        ));
    }
    if let Some(c) = entry.chars().find(|&c| is_forbidden_control(c)) {
        return Err(refuse(
            None,
            format!("control character {} in the key", control_name(c)),
        ));
    }
    let e = split_entry(entry).map_err(|reason| refuse(None, reason))?;
    let t = e.key_type;
    match classify(t) {
        KeyKind::User => {}
        KeyKind::Certificate => {
            return Err(refuse(
                Some(t),
                "a certificate is not a user key (certificates are trusted through a CA)".into(),
            ));
        }
        KeyKind::Dsa => {
            return Err(refuse(
                Some(t),
                "DSA keys are refused (OpenSSH no longer accepts them)".into(),
            ));
        }
        KeyKind::Unknown => return Err(refuse(Some(t), "unknown key type".into())),
    }
    if let Some(options) = e.options {
        check_options(options).map_err(|reason| refuse(Some(t), reason))?;
    }
    // The decoder's message may quote bytes of the key data (a curve label, ...): escaped and
    // cut short, so the reason stays one printable line.
    let key = PublicKey::from_openssh(&format!("{t} {}", e.base64)).map_err(|err| {
        let err = excerpt(&err.to_string(), 80);
        refuse(Some(t), format!("key data is not a valid {t} key: {err}"))
    })?;
    if let KeyData::Rsa(rsa) = key.key_data() {
        let bits = rsa.n.as_positive_bytes().map_or(0, |n| match n {
            [first, rest @ ..] => rest.len() * 8 + (8 - first.leading_zeros() as usize),
            [] => 0,
        });
        if bits < MIN_RSA_BITS {
            return Err(refuse(
                Some(t),
                format!("RSA key of {bits} bits is too short (sshd needs {MIN_RSA_BITS})"),
            ));
        }
    }
    let expires_unix = expiry_of(e.comment).map_err(|reason| refuse(Some(t), reason))?;
    if expires_unix.is_some_and(|at| at <= now_unix) {
        return Err(refuse(Some(t), "expired".into()));
    }
    let mut out = String::with_capacity(entry.len());
    if let Some(options) = e.options {
        out.push_str(options);
        out.push(' ');
    }
    out.push_str(t);
    out.push(' ');
    out.push_str(e.base64);
    if !e.comment.is_empty() {
        out.push(' ');
        out.push_str(e.comment);
    }
    Ok(MetadataKey {
        user: user.to_owned(),
        line: out,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        expires_unix,
        source,
    })
}

/// The expiry a `google-ssh {"expireOn": ...}` comment sets. Other comments set none.
///
/// The marker alone (`google-ssh` with nothing after it) is refused, as Google's agent refuses
/// it ("expiration missing"): the marker says the key was meant to expire, and a key whose
/// expiry was lost on the way must not become one that never expires.
fn expiry_of(comment: &str) -> Result<Option<i64>, String> {
    let comment = comment.trim_matches(is_blank);
    if comment == "google-ssh" {
        return Err(
            "the google-ssh comment has no expiry JSON after the marker (expected \
                    `google-ssh {\"userName\":...,\"expireOn\":...}`); an expiring key \
                    without its expiry is dropped"
                .into(),
        );
    }
    let Some(json) = comment
        .strip_prefix("google-ssh")
        .filter(|rest| rest.starts_with(is_blank))
        .map(|rest| rest.trim_matches(is_blank))
        .filter(|rest| !rest.is_empty())
    else {
        return Ok(None);
    };
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("the google-ssh comment is not valid JSON ({e})"))?;
    let Some(obj) = value.as_object() else {
        return Err("the google-ssh comment is not a JSON object".into());
    };
    match obj.get("expireOn") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => parse_timestamp(s)
            .map(Some)
            .ok_or_else(|| "expireOn is not a timestamp (RFC 3339 or %Y-%m-%dT%H:%M:%S%z)".into()),
        Some(_) => Err("expireOn is not a string".into()),
    }
}

fn is_forbidden_control(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}'
}

fn control_name(c: char) -> String {
    match c {
        '\0' => "NUL".into(),
        '\r' => "CR".into(),
        '\n' => "LF".into(),
        c => format!("U+{:04X}", u32::from(c)),
    }
}

/// Everything metadata asks for: instance `ssh-keys` and legacy instance `sshKeys`; project
/// `ssh-keys` and legacy project `sshKeys` unless blocked (`block-project-ssh-keys` true, instance
/// over project, or a legacy instance `sshKeys` present at all); then the users of a
/// `#cloud-config` instance `user-data`. A key (same key data) is kept once per user, first
/// occurrence wins.
pub fn desired_keys(snapshot: &Snapshot, now_unix: i64, allow_root: bool) -> Desired {
    let inst = &snapshot.instance.attributes;
    let proj = &snapshot.project.attributes;
    let legacy = inst.contains_key("sshKeys");
    let blocked = legacy || matches!(snapshot.flag("block-project-ssh-keys"), Some((true, _)));
    let mut attributes = vec![
        (inst.get("ssh-keys"), Source::Instance, "ssh-keys"),
        (inst.get("sshKeys"), Source::Instance, "sshKeys"),
    ];
    if !blocked {
        attributes.push((proj.get("ssh-keys"), Source::Project, "ssh-keys"));
        attributes.push((proj.get("sshKeys"), Source::Project, "sshKeys"));
    }

    let mut d = Desired::default();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut keep = |d: &mut Desired, key: MetadataKey| -> bool {
        if !seen.insert((key.user.clone(), key.fingerprint.clone())) {
            return false;
        }
        if let Some(at) = key.expires_unix {
            d.next_expiry_unix = Some(d.next_expiry_unix.map_or(at, |n| n.min(at)));
        }
        d.keys.entry(key.user.clone()).or_default().push(key);
        true
    };
    for (text, source, attribute) in attributes {
        let Some(text) = text else { continue };
        let (keys, rejected) = parse_attribute(text, source, attribute, now_unix, allow_root);
        d.rejected.extend(rejected);
        for key in keys {
            d.sudo.insert(key.user.clone());
            keep(&mut d, key);
        }
    }

    let Some(user_data) = inst.get("user-data") else {
        return d;
    };
    let users = match userdata::parse_user_data(user_data) {
        Ok(users) => users,
        Err(e) => {
            d.rejected.push(Rejected {
                source: Source::UserData,
                attribute: "user-data",
                line: 0,
                user: None,
                key_type: None,
                reason: e.strip_prefix("user-data: ").unwrap_or(&e).to_owned(),
            });
            d.user_data_error = Some(e);
            return d;
        }
    };
    for e in users.skipped {
        d.rejected.push(Rejected {
            source: Source::UserData,
            attribute: "user-data",
            line: e.line,
            user: e.name,
            key_type: None,
            reason: e.reason,
        });
    }
    for cu in users.users {
        let mut any = false;
        for k in &cu.ssh_authorized_keys {
            match parse_key_for(
                &cu.name,
                k.key.trim(),
                Source::UserData,
                now_unix,
                allow_root,
            ) {
                Ok(key) => {
                    keep(&mut d, key);
                    any = true;
                }
                Err(r) => d.rejected.push(Rejected {
                    source: Source::UserData,
                    attribute: "user-data",
                    line: k.line,
                    user: r.user,
                    key_type: r.key_type,
                    reason: r.reason,
                }),
            }
        }
        if !any && !d.keys.contains_key(&cu.name) {
            continue;
        }
        if cu.sudo {
            d.sudo.insert(cu.name.clone());
        }
        for g in &cu.groups {
            if is_valid_name(g) {
                d.groups
                    .entry(cu.name.clone())
                    .or_default()
                    .insert(g.clone());
            } else {
                d.rejected.push(Rejected {
                    source: Source::UserData,
                    attribute: "user-data",
                    line: cu.line,
                    user: Some(cu.name.clone()),
                    key_type: None,
                    reason: format!("invalid group name `{}`", excerpt(g, 32)),
                });
            }
        }
    }
    d
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
