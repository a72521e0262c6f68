//! The checks: pure functions from the gathered [`Facts`] (and the configuration) to a
//! [`Check`] each, in the order a person reads them.

mod access;
mod account;
mod google;
mod host;
mod sshd;

use serde_json::{Map, Value};

use super::decide::{OsLoginState, UserKind, oslogin_state, user_kind};
use super::facts::{Facts, ProfileFacts};
use crate::accounts::keys::{MetadataKey, Rejected, desired_keys};
use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    /// One line naming the path, key or line concerned.
    pub summary: String,
    /// What to do, for anything but ok and skip.
    pub fix: Option<String>,
    pub details: Map<String, Value>,
}

impl Check {
    pub fn new(id: &'static str, status: Status, summary: impl Into<String>) -> Check {
        Check {
            id,
            status,
            summary: summary.into(),
            fix: None,
            details: Map::new(),
        }
    }

    pub fn ok(id: &'static str, summary: impl Into<String>) -> Check {
        Check::new(id, Status::Ok, summary)
    }

    pub fn skip(id: &'static str, summary: impl Into<String>) -> Check {
        Check::new(id, Status::Skip, summary)
    }

    pub fn warn(id: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(id, Status::Warn, summary).with_fix(fix)
    }

    pub fn fail(id: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(id, Status::Fail, summary).with_fix(fix)
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Check {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// What the checks share, derived once from the facts.
pub struct Context<'a> {
    pub facts: &'a Facts,
    pub config: &'a Config,
    pub oslogin: OsLoginState,
    /// When a user was given.
    pub kind: Option<UserKind>,
    /// The user's `ssh-keys` entries, expired ones included.
    pub metadata_keys: Vec<MetadataKey>,
    /// Lines of `ssh-keys` refused for this user (other than for expiry).
    pub rejected: Vec<Rejected>,
}

impl<'a> Context<'a> {
    pub fn new(facts: &'a Facts, config: &'a Config) -> Context<'a> {
        let snapshot = facts.metadata.snapshot.as_ref().ok();
        let oslogin = oslogin_state(snapshot, facts.agent_applied_oslogin);
        let (metadata_keys, rejected) = match (snapshot, &facts.user) {
            (Some(s), Some(user)) => {
                // i64::MIN as "now": expired keys are kept (with their expiry) to be reported.
                let mut d = desired_keys(s, i64::MIN, config.accounts.allow_root);
                let rejected = d
                    .rejected
                    .into_iter()
                    .filter(|r| r.user.as_deref() == Some(user.as_str()))
                    .collect();
                (d.keys.remove(user).unwrap_or_default(), rejected)
            }
            _ => (Vec::new(), Vec::new()),
        };
        let kind = facts.user.as_ref().map(|_| {
            let local = matches!(&facts.passwd, Some(Ok(p)) if p.local);
            let has_profile = matches!(facts.profile, ProfileFacts::Found(_));
            user_kind(oslogin.on, has_profile, !metadata_keys.is_empty(), local)
        });
        Context {
            facts,
            config,
            oslogin,
            kind,
            metadata_keys,
            rejected,
        }
    }

    pub fn user(&self) -> &str {
        self.facts.user.as_deref().unwrap_or("")
    }
}

/// Every check, in order.
pub fn all(facts: &Facts, config: &Config) -> Vec<Check> {
    let cx = Context::new(facts, config);
    let mut out = Vec::new();
    if !facts.root {
        out.push(Check::warn(
            "root",
            "not running as root: sshd's configuration is not checked and some files may be \
             unreadable",
            "run it as root: sudo guest-agent doctor ...",
        ));
    }
    out.extend([
        access::metadata(&cx),
        access::oslogin(&cx),
        access::two_factor(&cx),
        sshd::sshd_config(&cx),
        sshd::helper_path(&cx),
        google::google_agent(&cx),
        host::nsswitch(&cx),
        account::user(&cx),
        access::authorization(&cx),
        access::keys(&cx),
        account::ssh_dir(&cx),
        host::ca_file(&cx),
        host::certificate(&cx),
        access::daemon(&cx),
    ]);
    out
}

/// `2026-01-31 12:00:00 UTC`.
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `2h 5m`, `3m 10s`, `42s`, `3d 4h`.
pub fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_well() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_767_225_600), "2026-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
        assert_eq!(human(42), "42s");
        assert_eq!(human(190), "3m 10s");
        assert_eq!(human(7300), "2h 1m");
        assert_eq!(human(90_000), "1d 1h");
    }
}
