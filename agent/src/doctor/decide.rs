//! Decisions several checks share: is OS Login on and why, what kind of user this is, and
//! what a list of key expiries means. Pure.

use crate::mds::Snapshot;
use crate::mds::snapshot::Scope;

pub const OSLOGIN_KEY: &str = "enable-oslogin";

/// OS Login on or off, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsLoginState {
    pub on: bool,
    /// Read from the metadata now (else taken from what the agent last applied).
    pub from_metadata: bool,
    pub why: String,
    /// `enable-oslogin` values that are not booleans (they count as unset).
    pub invalid: Vec<String>,
}

/// The rule the agent uses ([`Snapshot::flag`]: instance over project, booleans only), with
/// the reason spelled out. Without a snapshot, what the agent last applied (`applied`).
pub fn oslogin_state(snapshot: Option<&Snapshot>, applied: Option<bool>) -> OsLoginState {
    let Some(s) = snapshot else {
        let on = applied.unwrap_or(false);
        return OsLoginState {
            on,
            from_metadata: false,
            why: match applied {
                Some(v) => format!(
                    "metadata unavailable; the agent last applied OS Login {}",
                    on_off(v)
                ),
                None => "metadata unavailable and the agent has recorded no OS Login state".into(),
            },
            invalid: Vec::new(),
        };
    };
    let invalid = s
        .invalid_flags(&[OSLOGIN_KEY])
        .into_iter()
        .map(|(scope, key, value)| format!("{scope} attribute {key} = {value:?} is not a boolean"))
        .collect();
    let value = |scope: Scope| {
        let attrs = match scope {
            Scope::Instance => &s.instance.attributes,
            Scope::Project => &s.project.attributes,
        };
        attrs.get(OSLOGIN_KEY).cloned().unwrap_or_default()
    };
    let (on, why) = match s.flag(OSLOGIN_KEY) {
        Some((on, Scope::Instance)) => {
            let mut why = format!(
                "instance attribute {OSLOGIN_KEY} = {:?}",
                value(Scope::Instance)
            );
            if let Some(p) = s.project.attributes.get(OSLOGIN_KEY) {
                why.push_str(&format!(" (overrides the project's {p:?})"));
            }
            (on, why)
        }
        Some((on, Scope::Project)) => (
            on,
            format!(
                "project attribute {OSLOGIN_KEY} = {:?} (no instance value)",
                value(Scope::Project)
            ),
        ),
        None => (
            false,
            format!("{OSLOGIN_KEY} is set at neither instance nor project level"),
        ),
    };
    OsLoginState {
        on,
        from_metadata: true,
        why,
        invalid,
    }
}

pub fn on_off(v: bool) -> &'static str {
    if v { "on" } else { "off" }
}

/// Where a user's access comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    /// An OS Login profile, while OS Login is on.
    OsLogin,
    /// `ssh-keys` metadata lists the user, while OS Login is off.
    Metadata,
    /// A local account (/etc/passwd) that neither applies to.
    Local,
    Unknown,
}

/// With OS Login on a local account wins over a profile of the same name (the agent refuses
/// clashing names); with it off, `ssh-keys` decides.
pub fn user_kind(oslogin_on: bool, has_profile: bool, in_ssh_keys: bool, local: bool) -> UserKind {
    match (oslogin_on, local, has_profile, in_ssh_keys) {
        (true, true, _, _) => UserKind::Local,
        (true, false, true, _) => UserKind::OsLogin,
        (false, _, _, true) => UserKind::Metadata,
        (_, true, _, _) => UserKind::Local,
        _ => UserKind::Unknown,
    }
}

/// What a user's keys amount to at `now` (expiries in seconds since the epoch, `None` for a
/// key that does not expire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    NoKeys,
    AllExpired { count: usize, latest: i64 },
    Valid { valid: usize, expired: usize },
}

pub fn key_verdict(expiries: &[Option<i64>], now: i64) -> KeyVerdict {
    if expiries.is_empty() {
        return KeyVerdict::NoKeys;
    }
    let valid = expiries
        .iter()
        .filter(|e| e.is_none_or(|t| t > now))
        .count();
    if valid == 0 {
        let latest = expiries.iter().flatten().copied().max().unwrap_or(0);
        return KeyVerdict::AllExpired {
            count: expiries.len(),
            latest,
        };
    }
    KeyVerdict::Valid {
        valid,
        expired: expiries.len() - valid,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn snap(instance: Option<&str>, project: Option<&str>) -> Snapshot {
        let mut t = json!({"instance": {"attributes": {}}, "project": {"attributes": {}}});
        if let Some(v) = instance {
            t["instance"]["attributes"][OSLOGIN_KEY] = json!(v);
        }
        if let Some(v) = project {
            t["project"]["attributes"][OSLOGIN_KEY] = json!(v);
        }
        Snapshot::from_tree(&t).unwrap()
    }

    #[test]
    fn instance_wins_and_the_reason_says_so() {
        let s = oslogin_state(Some(&snap(Some("false"), Some("TRUE"))), None);
        assert!(!s.on);
        assert_eq!(
            s.why,
            "instance attribute enable-oslogin = \"false\" (overrides the project's \"TRUE\")"
        );
        let s = oslogin_state(Some(&snap(None, Some("TRUE"))), Some(false));
        assert!(s.on && s.from_metadata);
        assert!(s.why.starts_with("project attribute"));
        let s = oslogin_state(Some(&snap(Some("maybe"), Some("yes"))), None);
        assert!(s.on, "an invalid instance value counts as unset");
        assert_eq!(s.invalid.len(), 1);
        let s = oslogin_state(Some(&snap(None, None)), None);
        assert!(!s.on);
        assert!(s.why.contains("neither"));
        let s = oslogin_state(None, Some(true));
        assert!(s.on && !s.from_metadata);
    }

    #[test]
    fn user_kinds() {
        assert_eq!(user_kind(true, true, false, false), UserKind::OsLogin);
        assert_eq!(user_kind(true, true, false, true), UserKind::Local);
        assert_eq!(user_kind(true, false, true, false), UserKind::Unknown);
        assert_eq!(user_kind(false, true, false, false), UserKind::Unknown);
        assert_eq!(user_kind(false, true, true, true), UserKind::Metadata);
        assert_eq!(user_kind(false, false, false, true), UserKind::Local);
    }

    #[test]
    fn key_verdicts() {
        assert_eq!(key_verdict(&[], 100), KeyVerdict::NoKeys);
        assert_eq!(
            key_verdict(&[Some(50), Some(90), Some(100)], 100),
            KeyVerdict::AllExpired {
                count: 3,
                latest: 100
            }
        );
        assert_eq!(
            key_verdict(&[Some(50), None, Some(101)], 100),
            KeyVerdict::Valid {
                valid: 2,
                expired: 1
            }
        );
    }
}
