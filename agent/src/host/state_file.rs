//! The agent's own state files under /var/lib/guest-agent (`state.json`, `oslogin-state.json`):
//! JSON objects with a `"version"` field, migrated forward when read.
//!
//! - **Older file** (an upgrade): each migration step from its version to this code's runs in
//!   order on the JSON, one info line says so, and the next save writes this version. A file
//!   without `"version"` is version 1 (what guest-agent 0.1.0 wrote).
//! - **Newer file** (a downgrade): read with the fields this code knows (the rule for every
//!   change of these files is "add fields with defaults, never change a field's meaning"), one
//!   warning says so, and the next save writes this version (the newer agent migrates it again
//!   when it comes back).
//! - **Unreadable file**: the caller's empty state, with an error line naming the path; never
//!   a crash, and the caller's empty state is the safe one (the accounts reconciler then deletes
//!   no account it cannot prove it created).
//!
//! The build flag `next-version` (tests only) makes every version one higher, with an empty
//! migration step, so the upgrade test installs a next release that migrates for real.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::files;

/// A state file's type: its current version and how to bring older JSON forward.
pub trait StateFile: Serialize + DeserializeOwned + Default {
    /// What the file is, for log lines.
    const WHAT: &'static str;
    /// The version this code writes.
    const VERSION: u32;
    /// Turns the JSON object of version `from` into that of version `from + 1`.
    fn migrate(from: u32, object: &mut Map<String, Value>) -> Result<(), String>;
}

/// What reading found, besides the state: for the log line and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No file.
    Missing,
    /// A file of this version.
    Current,
    /// An older file, migrated from this version.
    Migrated(u32),
    /// A newer file (a downgrade), read with the fields this version knows.
    Newer(u32),
    /// Not a state file of this kind: the reason.
    Unreadable(String),
}

/// The version 1 state file: the file as it is, without a `"version"`.
pub const UNVERSIONED: u32 = 1;

/// Decodes `bytes` into the state, migrating older versions forward.
pub fn decode<T: StateFile>(bytes: &[u8]) -> (T, Found) {
    let mut object = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return (T::default(), Found::Unreadable("not a JSON object".into())),
        Err(e) => return (T::default(), Found::Unreadable(e.to_string())),
    };
    let version = match object.remove("version") {
        None => UNVERSIONED,
        Some(Value::Number(n)) => match n.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(v) if v >= 1 => v,
            _ => return (T::default(), Found::Unreadable(format!("bad version {n}"))),
        },
        Some(other) => {
            return (
                T::default(),
                Found::Unreadable(format!("bad version {other}")),
            );
        }
    };
    let found = match version.cmp(&T::VERSION) {
        std::cmp::Ordering::Equal => Found::Current,
        std::cmp::Ordering::Greater => Found::Newer(version),
        std::cmp::Ordering::Less => {
            for from in version..T::VERSION {
                if let Err(e) = T::migrate(from, &mut object) {
                    return (
                        T::default(),
                        Found::Unreadable(format!(
                            "migration from version {from} to {} failed: {e}",
                            from + 1
                        )),
                    );
                }
            }
            Found::Migrated(version)
        }
    };
    match serde_json::from_value::<T>(Value::Object(object)) {
        Ok(state) => (state, found),
        Err(e) => (T::default(), Found::Unreadable(e.to_string())),
    }
}

/// The file's bytes: the state's fields and `"version"`.
pub fn encode<T: StateFile>(state: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut value = serde_json::to_value(state)?;
    if let Value::Object(o) = &mut value {
        o.insert("version".into(), Value::from(T::VERSION));
    }
    serde_json::to_vec_pretty(&value)
}

/// Loads the state at `path` (see the module's rules), logging what was found when it is not
/// simply the current version.
pub fn load<T: StateFile>(path: &Path) -> T {
    let (state, found) = match files::read_optional(path) {
        Ok(Some(bytes)) => decode::<T>(&bytes),
        Ok(None) => (T::default(), Found::Missing),
        Err(e) => (T::default(), Found::Unreadable(e.to_string())),
    };
    let p = path.display();
    match found {
        Found::Missing | Found::Current => {}
        Found::Migrated(from) => {
            tracing::info!(path = %p, from, to = T::VERSION, "{} migrated from version {from} to {}", T::WHAT, T::VERSION)
        }
        Found::Newer(v) => {
            tracing::warn!(path = %p, version = v, known = T::VERSION, "{} was written by a newer guest-agent (version {v}; this one knows {}): reading the fields this version knows", T::WHAT, T::VERSION)
        }
        Found::Unreadable(e) => {
            tracing::error!(path = %p, error = %e, "{} unreadable; starting from an empty state (fix or delete the file)", T::WHAT)
        }
    }
    state
}

/// Saves the state at `path` atomically (0600), in this code's version.
pub fn save<T: StateFile>(path: &Path, state: &T) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let bytes = encode(state)?;
    files::write_atomic(path, &bytes, 0o600, None)?;
    Ok(())
}

/// A step of the `next-version` build (tests only): the layout does not change.
pub fn next_version_step(from: u32, base: u32) -> Result<(), String> {
    if cfg!(feature = "next-version") && from == base {
        Ok(())
    } else {
        Err(format!("no migration from version {from}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Demo {
        names: Vec<String>,
        count: u32,
    }

    impl StateFile for Demo {
        const WHAT: &'static str = "demo state";
        const VERSION: u32 = 3;
        // 1 -> 2: `name` (one string) became `names`; 2 -> 3: `count` added (default 0) and
        // filled from the names.
        fn migrate(from: u32, o: &mut Map<String, Value>) -> Result<(), String> {
            match from {
                1 => {
                    let name = o.remove("name").unwrap_or(Value::Null);
                    let names = match name {
                        Value::String(s) => vec![Value::String(s)],
                        Value::Null => vec![],
                        _ => return Err("name is not a string".into()),
                    };
                    o.insert("names".into(), Value::Array(names));
                    Ok(())
                }
                2 => {
                    let n = o.get("names").and_then(Value::as_array).map_or(0, Vec::len);
                    o.insert("count".into(), Value::from(n));
                    Ok(())
                }
                _ => Err(format!("no migration from {from}")),
            }
        }
    }

    #[test]
    fn older_files_are_migrated_step_by_step() {
        let (s, f) = decode::<Demo>(br#"{"name": "alice"}"#);
        assert_eq!(f, Found::Migrated(1));
        assert_eq!(s.names, vec!["alice".to_string()]);
        assert_eq!(s.count, 1);
        let (s, f) = decode::<Demo>(br#"{"version": 2, "names": ["a", "b"]}"#);
        assert_eq!((s.count, f), (2, Found::Migrated(2)));
        let (_, f) = decode::<Demo>(br#"{"name": 5}"#);
        assert!(matches!(f, Found::Unreadable(e) if e.contains("from version 1 to 2")));
    }

    #[test]
    fn a_current_file_round_trips_with_its_version() {
        let s = Demo {
            names: vec!["a".into()],
            count: 7,
        };
        let bytes = encode(&s).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["version"], 3);
        assert_eq!(decode::<Demo>(&bytes), (s, Found::Current));
    }

    #[test]
    fn a_newer_file_is_read_with_the_known_fields() {
        let (s, f) =
            decode::<Demo>(br#"{"version": 9, "names": ["a"], "count": 1, "future": {"x": 1}}"#);
        assert_eq!(f, Found::Newer(9));
        assert_eq!(s.names, vec!["a".to_string()]);
    }

    #[test]
    fn garbage_is_the_empty_state_with_a_reason() {
        for bad in [
            &b"[1]"[..],
            b"{",
            b"\xff",
            br#"{"version": "2"}"#,
            br#"{"version": 0}"#,
            br#"{"version": -1}"#,
            br#"{"version": 3, "names": 5}"#,
        ] {
            let (s, f) = decode::<Demo>(bad);
            assert_eq!(s, Demo::default());
            assert!(matches!(f, Found::Unreadable(_)), "{bad:?}: {f:?}");
        }
    }
}
