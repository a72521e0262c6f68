//! `guest-agent status [--json]`: what the daemon knows now, asked over its socket
//! (`Request::Status`). The daemon answers one JSON line ([`shape`]); the command prints it
//! as it is (`--json`) or as text for people ([`text`]). Both are pure functions here.
//!
//! The shape is stable (fields are only ever added; the README documents it):
//!
//! ```text
//! {"version": "0.1.0", "view": "full" | "limited",
//!  "daemon": {"pid", "started_at", "uptime_secs", "ready"},
//!  "metadata": {"state": "ok" | "outage" | "unknown", "last_answer_at", "last_answer_secs_ago",
//!               "outage_secs", "error"},
//!  "oslogin": {"enabled", "why", "two_factor", "directory_users", "last_sync_at",
//!              "last_sync_secs_ago"},
//!  "accounts": {"managed_users"},
//!  "logins": [{"user", "decision": "allow" | "deny", "reason", "at", "secs_ago"}],
//!  "trusted_ca": {"path", "age_secs"},
//!  "tokens": [{"account", "state": "fresh" | "none", "expires_in_secs"}],
//!  "console": {"path", "open", "written", "dropped"}}
//! ```
//! Times are Unix seconds, unknowns `null`, logins newest first (at most 20). A peer that is
//! not root gets the `"limited"` view: only its own login decisions (none of another user's,
//! so no other user's name).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::events::Facts;

/// Everything [`shape`] reports, gathered by the daemon when asked.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub now: Option<SystemTime>,
    pub version: &'static str,
    pub pid: u32,
    pub facts: Facts,
    /// Users in the OS Login directory now (`None` while OS Login is off).
    pub directory_users: Option<usize>,
    pub ca_path: String,
    /// Since the CA file was last written (`None`: no such file).
    pub ca_age: Option<Duration>,
    /// Each kept account and what is left of its token (`None`: no valid token).
    pub tokens: Vec<(String, Option<Duration>)>,
    /// The configured console, whether it is open, lines written and dropped.
    pub console: (String, bool, u64, u64),
    /// Two-step verification: `off`, `on`, or why it is asked for and cannot be enforced.
    pub two_factor: String,
}

/// Who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    Root,
    /// Another local user (its name, when it has one): the limited view.
    User(Option<String>),
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn ago(now: SystemTime, t: SystemTime) -> u64 {
    now.duration_since(t).map_or(0, |d| d.as_secs())
}

/// The answer to `viewer`.
pub fn shape(live: &Live, viewer: &Viewer) -> Value {
    let now = live.now.unwrap_or(UNIX_EPOCH);
    let f = &live.facts;
    let at = |t: Option<SystemTime>| t.map(unix);
    let secs_ago = |t: Option<SystemTime>| t.map(|t| ago(now, t));
    let state = match (&f.outage, f.metadata_answered) {
        (Some(_), _) => "outage",
        (None, Some(_)) => "ok",
        (None, None) => "unknown",
    };
    let logins: Vec<Value> = f
        .logins
        .iter()
        .rev()
        .filter(|r| match viewer {
            Viewer::Root => true,
            Viewer::User(name) => name.as_deref() == Some(r.user.as_str()),
        })
        .map(|r| {
            json!({"user": r.user, "decision": if r.allowed { "allow" } else { "deny" },
                   "reason": r.reason, "at": unix(r.at), "secs_ago": ago(now, r.at)})
        })
        .collect();
    let tokens: Vec<Value> = live
        .tokens
        .iter()
        .map(|(account, left)| {
            json!({"account": account, "state": if left.is_some() { "fresh" } else { "none" },
                   "expires_in_secs": left.map(|d| d.as_secs())})
        })
        .collect();
    let (console_path, open, written, dropped) = &live.console;
    json!({
        "version": live.version,
        "view": if *viewer == Viewer::Root { "full" } else { "limited" },
        "daemon": {"pid": live.pid, "started_at": at(f.started), "uptime_secs": secs_ago(f.started),
                   "ready": f.ready.is_some()},
        "metadata": {"state": state, "last_answer_at": at(f.metadata_answered),
                     "last_answer_secs_ago": secs_ago(f.metadata_answered),
                     "outage_secs": f.outage.as_ref().map(|(since, _)| ago(now, *since)),
                     "error": f.outage.as_ref().map(|(_, e)| e.clone())},
        "oslogin": {"enabled": f.oslogin, "why": f.oslogin_why, "two_factor": live.two_factor,
                    "directory_users": live.directory_users,
                    "last_sync_at": at(f.directory_synced),
                    "last_sync_secs_ago": secs_ago(f.directory_synced)},
        "accounts": {"managed_users": f.managed_users},
        "logins": logins,
        "trusted_ca": {"path": live.ca_path, "age_secs": live.ca_age.map(|d| d.as_secs())},
        "tokens": tokens,
        "console": {"path": console_path, "open": open, "written": written, "dropped": dropped},
    })
}

/// "3s", "4m 10s", "2h 5m", "3d 4h".
pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// The text for people, from [`shape`]'s JSON.
pub fn text(v: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let n = |v: &Value| v.as_u64();
    let ago = |v: &Value| n(v).map_or("never".to_owned(), |x| format!("{} ago", duration(x)));
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("{label:<12}{value}\n"));
    };
    let d = &v["daemon"];
    line(
        "daemon",
        format!(
            "pid {}, up {}, version {}{}",
            n(&d["pid"]).unwrap_or(0),
            n(&d["uptime_secs"]).map_or("?".into(), duration),
            s(&v["version"]),
            if d["ready"].as_bool() == Some(true) {
                ""
            } else {
                " (not READY yet)"
            }
        ),
    );
    let m = &v["metadata"];
    line(
        "metadata",
        match m["state"].as_str() {
            Some("ok") => format!(
                "answering (last answer {})",
                ago(&m["last_answer_secs_ago"])
            ),
            Some("outage") => format!(
                "OUTAGE for {} ({}); last answer {}",
                n(&m["outage_secs"]).map_or("?".into(), duration),
                s(&m["error"]),
                ago(&m["last_answer_secs_ago"])
            ),
            _ => "no answer yet".into(),
        },
    );
    let o = &v["oslogin"];
    line(
        "OS Login",
        format!(
            "{} ({}); 2-step verification: {}",
            match o["enabled"].as_bool() {
                Some(true) => "on",
                Some(false) => "off",
                None => "not decided yet",
            },
            s(&o["why"]),
            s(&o["two_factor"])
        ),
    );
    if o["enabled"].as_bool() == Some(true) {
        line(
            "directory",
            format!(
                "{} users, last sync {}",
                n(&o["directory_users"]).unwrap_or(0),
                ago(&o["last_sync_secs_ago"])
            ),
        );
    }
    line(
        "accounts",
        match n(&v["accounts"]["managed_users"]) {
            Some(k) => format!("{k} metadata users managed"),
            None => "no pass yet".into(),
        },
    );
    let ca = &v["trusted_ca"];
    line(
        "trusted CA",
        match n(&ca["age_secs"]) {
            Some(a) => format!("{}, written {} ago", s(&ca["path"]), duration(a)),
            None => format!("{}: no such file", s(&ca["path"])),
        },
    );
    let tokens: Vec<String> = v["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| match n(&t["expires_in_secs"]) {
            Some(e) => format!("{}: fresh, expires in {}", s(&t["account"]), duration(e)),
            None => format!("{}: no valid token", s(&t["account"])),
        })
        .collect();
    line(
        "tokens",
        if tokens.is_empty() {
            "none kept".into()
        } else {
            tokens.join("; ")
        },
    );
    let c = &v["console"];
    line(
        "console",
        if c["open"].as_bool() == Some(true) {
            format!(
                "{}: {} lines written, {} dropped",
                s(&c["path"]),
                n(&c["written"]).unwrap_or(0),
                n(&c["dropped"]).unwrap_or(0)
            )
        } else if s(&c["path"]).is_empty() {
            "off".into()
        } else {
            format!("{}: not open (no such device)", s(&c["path"]))
        },
    );
    let logins = v["logins"].as_array().cloned().unwrap_or_default();
    let limited = v["view"].as_str() == Some("limited");
    if logins.is_empty() {
        out.push_str(if limited {
            "logins      none of yours (run as root to see everyone's)\n"
        } else {
            "logins      none yet\n"
        });
    } else {
        out.push_str(&format!(
            "logins      {} (newest first{})\n",
            logins.len(),
            if limited {
                "; only yours: run as root to see everyone's"
            } else {
                ""
            }
        ));
        for l in &logins {
            out.push_str(&format!(
                "  {:>9}  {:<5}  {:<16} {}\n",
                format!("{} ago", duration(n(&l["secs_ago"]).unwrap_or(0))),
                s(&l["decision"]),
                s(&l["user"]),
                s(&l["reason"])
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::LoginRecord;

    fn live() -> Live {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut facts = Facts {
            started: Some(t - Duration::from_secs(300)),
            ready: Some(t - Duration::from_secs(299)),
            metadata_answered: Some(t - Duration::from_secs(2)),
            oslogin: Some(true),
            oslogin_why: "project attribute enable-oslogin = true".into(),
            directory_synced: Some(t - Duration::from_secs(10)),
            managed_users: Some(0),
            ..Default::default()
        };
        for (user, allowed, reason, ago) in [
            ("alice", true, "login role granted", 30),
            ("bob", false, "login role not granted", 20),
            ("alice", false, "metadata service unavailable", 5),
        ] {
            facts.logins.push_back(LoginRecord {
                user: user.into(),
                allowed,
                reason: reason.into(),
                at: t - Duration::from_secs(ago),
            });
        }
        Live {
            now: Some(t),
            version: "0.1.0",
            pid: 42,
            facts,
            directory_users: Some(3),
            ca_path: "/etc/ssh/guest-agent/trusted-ca.pub".into(),
            ca_age: Some(Duration::from_secs(12)),
            tokens: vec![("default".into(), Some(Duration::from_secs(3500)))],
            console: ("/dev/ttyS0".into(), true, 5, 0),
            two_factor: "off".into(),
        }
    }

    #[test]
    fn root_sees_everything_in_the_documented_shape() {
        let v = shape(&live(), &Viewer::Root);
        assert_eq!(v["view"], "full");
        assert_eq!(v["daemon"]["uptime_secs"], 300);
        assert_eq!(v["metadata"]["state"], "ok");
        assert_eq!(v["metadata"]["last_answer_secs_ago"], 2);
        assert_eq!(v["metadata"]["outage_secs"], Value::Null);
        assert_eq!(v["oslogin"]["enabled"], true);
        assert_eq!(v["oslogin"]["two_factor"], "off");
        assert_eq!(v["oslogin"]["directory_users"], 3);
        assert_eq!(v["oslogin"]["last_sync_secs_ago"], 10);
        assert_eq!(v["accounts"]["managed_users"], 0);
        assert_eq!(v["trusted_ca"]["age_secs"], 12);
        assert_eq!(v["tokens"][0]["state"], "fresh");
        assert_eq!(v["console"]["written"], 5);
        let logins = v["logins"].as_array().expect("logins");
        assert_eq!(logins.len(), 3);
        assert_eq!(logins[0]["user"], "alice", "newest first");
        assert_eq!(logins[0]["decision"], "deny");
        assert_eq!(logins[1]["user"], "bob");
        assert_eq!(logins[1]["reason"], "login role not granted");
        assert_eq!(logins[1]["secs_ago"], 20);
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            [
                "accounts",
                "console",
                "daemon",
                "logins",
                "metadata",
                "oslogin",
                "tokens",
                "trusted_ca",
                "version",
                "view"
            ]
        );
    }

    #[test]
    fn another_user_sees_no_one_else_s_name_or_decision() {
        let v = shape(&live(), &Viewer::User(Some("alice".into())));
        assert_eq!(v["view"], "limited");
        let logins = v["logins"].as_array().expect("logins");
        assert_eq!(logins.len(), 2);
        assert!(logins.iter().all(|l| l["user"] == "alice"));
        assert!(!v.to_string().contains("bob"), "{v}");
        let nobody = shape(&live(), &Viewer::User(None));
        assert_eq!(nobody["logins"], json!([]));
        assert!(!nobody.to_string().contains("alice"));
        assert!(text(&nobody).contains("none of yours"));
    }

    #[test]
    fn an_outage_shows_its_length_and_error() {
        let mut l = live();
        let now = l.now.unwrap();
        l.facts.outage = Some((now - Duration::from_secs(75), "timeout after 10s".into()));
        let v = shape(&l, &Viewer::Root);
        assert_eq!(v["metadata"]["state"], "outage");
        assert_eq!(v["metadata"]["outage_secs"], 75);
        let t = text(&v);
        assert!(
            t.contains("metadata    OUTAGE for 1m 15s (timeout after 10s); last answer 2s ago"),
            "{t}"
        );
    }

    #[test]
    fn the_text_reads_line_by_line() {
        let t = text(&shape(&live(), &Viewer::Root));
        let want = [
            "daemon      pid 42, up 5m 0s, version 0.1.0",
            "metadata    answering (last answer 2s ago)",
            "OS Login    on (project attribute enable-oslogin = true); 2-step verification: off",
            "directory   3 users, last sync 10s ago",
            "accounts    0 metadata users managed",
            "trusted CA  /etc/ssh/guest-agent/trusted-ca.pub, written 12s ago",
            "tokens      default: fresh, expires in 58m 20s",
            "console     /dev/ttyS0: 5 lines written, 0 dropped",
            "logins      3 (newest first)",
        ];
        for w in want {
            assert!(t.lines().any(|l| l == w), "missing {w:?} in\n{t}");
        }
        assert!(
            t.lines()
                .any(|l| l.contains("20s ago") && l.contains("deny") && l.contains("bob")),
            "{t}"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m 1s");
        assert_eq!(duration(7260), "2h 1m");
        assert_eq!(duration(90_000), "1d 1h");
    }
}
