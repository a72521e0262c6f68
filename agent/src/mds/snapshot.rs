//! The typed view of the whole metadata tree that every reconciler works from.
//!
//! Built from the JSON of the recursive answer, for both clouds: GCE's numeric `instance.id`
//! and Yandex's string one, Yandex's absent or empty `project`, attribute values that are not
//! strings. Empty strings are normalised to "absent", so an empty project id never looks like a
//! change. Equality is on content only (the ETag is not part of it).

use std::collections::BTreeMap;

use serde_json::Value;

/// Which level of the tree a value came from. Instance attributes override project ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Instance,
    Project,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Instance => "instance",
            Scope::Project => "project",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub instance: Instance,
    pub project: Project,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Instance {
    /// GCE: a number; Yandex: a string like `fhm...`. Kept as text.
    pub id: Option<String>,
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub zone: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub service_accounts: BTreeMap<String, ServiceAccount>,
    /// Yandex: `instance.vendor.folder-id` (or top-level `yandex.folder-id`).
    pub folder_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceAccount {
    pub email: Option<String>,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Project {
    pub id: Option<String>,
    pub numeric_id: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// The tree could not be read as a metadata tree. The last good snapshot stays in force.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("metadata tree has the wrong shape: {0}")]
    Shape(String),
}

/// A difference between two snapshots, for the log: names only, never values (attributes such
/// as `user-data` may hold secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(String),
    Removed(String),
    Changed(String),
}

impl Snapshot {
    pub fn from_tree(tree: &Value) -> Result<Snapshot, SnapshotError> {
        let root = tree.as_object().ok_or_else(|| {
            SnapshotError::Shape(format!("root is {}, not an object", kind(tree)))
        })?;
        let instance = match root.get("instance") {
            Some(Value::Object(i)) => i,
            Some(other) => {
                return Err(SnapshotError::Shape(format!(
                    "`instance` is {}, not an object",
                    kind(other)
                )));
            }
            None => return Err(SnapshotError::Shape("no `instance`".into())),
        };
        let project = match root.get("project") {
            Some(Value::Object(p)) => Some(p),
            None | Some(Value::Null) => None,
            Some(other) => {
                return Err(SnapshotError::Shape(format!(
                    "`project` is {}, not an object",
                    kind(other)
                )));
            }
        };
        let folder_id = instance
            .get("vendor")
            .and_then(|v| v.get("folder-id").or_else(|| v.get("folderId")))
            .or_else(|| root.get("yandex").and_then(|y| y.get("folder-id")))
            .and_then(text);
        Ok(Snapshot {
            instance: Instance {
                id: instance.get("id").and_then(text),
                name: instance.get("name").and_then(text),
                hostname: instance.get("hostname").and_then(text),
                zone: instance.get("zone").and_then(text),
                attributes: attributes(instance.get("attributes"), "instance.attributes")?,
                service_accounts: service_accounts(instance.get("serviceAccounts")),
                folder_id,
            },
            project: match project {
                Some(p) => Project {
                    id: p.get("projectId").and_then(text),
                    numeric_id: p.get("numericProjectId").and_then(text),
                    attributes: attributes(p.get("attributes"), "project.attributes")?,
                },
                None => Project::default(),
            },
        })
    }

    /// The value of attribute `key`, instance over project, with where it came from.
    pub fn attribute(&self, key: &str) -> Option<(&str, Scope)> {
        self.instance
            .attributes
            .get(key)
            .map(|v| (v.as_str(), Scope::Instance))
            .or_else(|| {
                self.project
                    .attributes
                    .get(key)
                    .map(|v| (v.as_str(), Scope::Project))
            })
    }

    /// A boolean attribute, instance over project. A value that is not a boolean counts as
    /// unset at its level (see [`Snapshot::invalid_flags`] to warn about it).
    pub fn flag(&self, key: &str) -> Option<(bool, Scope)> {
        [
            (&self.instance.attributes, Scope::Instance),
            (&self.project.attributes, Scope::Project),
        ]
        .into_iter()
        .find_map(|(attrs, scope)| {
            attrs
                .get(key)
                .and_then(|v| parse_bool(v))
                .map(|b| (b, scope))
        })
    }

    /// Boolean attributes among `keys` whose values are not booleans: worth a warning.
    pub fn invalid_flags<'a>(&'a self, keys: &[&'a str]) -> Vec<(Scope, &'a str, &'a str)> {
        let mut out = Vec::new();
        for key in keys {
            for (attrs, scope) in [
                (&self.instance.attributes, Scope::Instance),
                (&self.project.attributes, Scope::Project),
            ] {
                if let Some(v) = attrs.get(*key).filter(|v| parse_bool(v).is_none()) {
                    out.push((scope, *key, v.as_str()));
                }
            }
        }
        out
    }

    /// What differs from `older`, by name.
    pub fn changes_since(&self, older: &Snapshot) -> Vec<Change> {
        let mut out = Vec::new();
        let fields = |s: &Snapshot| -> BTreeMap<String, String> {
            let mut m = BTreeMap::new();
            let i = &s.instance;
            for (name, v) in [
                ("instance.id", &i.id),
                ("instance.name", &i.name),
                ("instance.hostname", &i.hostname),
                ("instance.zone", &i.zone),
                ("instance.folder-id", &i.folder_id),
                ("project.id", &s.project.id),
                ("project.numeric-id", &s.project.numeric_id),
            ] {
                if let Some(v) = v {
                    m.insert(name.to_owned(), v.clone());
                }
            }
            for (k, v) in &i.attributes {
                m.insert(format!("instance.attributes.{k}"), v.clone());
            }
            for (k, v) in &s.project.attributes {
                m.insert(format!("project.attributes.{k}"), v.clone());
            }
            for (k, v) in &i.service_accounts {
                m.insert(format!("instance.service-accounts.{k}"), format!("{v:?}"));
            }
            m
        };
        let (old, new) = (fields(older), fields(self));
        for (k, v) in &new {
            match old.get(k) {
                None => out.push(Change::Added(k.clone())),
                Some(o) if o != v => out.push(Change::Changed(k.clone())),
                _ => {}
            }
        }
        out.extend(
            old.keys()
                .filter(|k| !new.contains_key(*k))
                .map(|k| Change::Removed(k.clone())),
        );
        out
    }
}

/// `true/false/1/0/yes/no`, any case, surrounding blanks ignored.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A scalar as non-empty text.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn attributes(v: Option<&Value>, name: &str) -> Result<BTreeMap<String, String>, SnapshotError> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => Ok(map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), value)
            })
            .collect()),
        Some(other) => Err(SnapshotError::Shape(format!(
            "`{name}` is {}, not an object",
            kind(other)
        ))),
    }
}

fn service_accounts(v: Option<&Value>) -> BTreeMap<String, ServiceAccount> {
    let Some(Value::Object(map)) = v else {
        return BTreeMap::new();
    };
    map.iter()
        .filter_map(|(name, sa)| {
            let sa = sa.as_object()?;
            let scopes = match sa.get("scopes") {
                Some(Value::Array(a)) => a.iter().filter_map(text).collect(),
                Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
                _ => Vec::new(),
            };
            Some((
                name.clone(),
                ServiceAccount {
                    email: sa.get("email").and_then(text),
                    scopes,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gce_tree() -> Value {
        json!({
            "instance": {
                "attributes": {"ssh-keys": "alice:ssh-ed25519 AAAA alice", "enable-oslogin": "TRUE"},
                "hostname": "vm-1.c.proj.internal",
                "id": 4520031799277581759u64,
                "name": "vm-1",
                "zone": "projects/123/zones/europe-west1-b",
                "serviceAccounts": {
                    "default": {"email": "123-compute@developer.gserviceaccount.com", "aliases": ["default"],
                                "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
                },
                "networkInterfaces": [{"ip": "10.0.0.2"}]
            },
            "project": {
                "attributes": {"enable-oslogin": "false", "block-project-ssh-keys": "yes", "ssh-keys": "bob:ssh-rsa AAAA"},
                "numericProjectId": 123,
                "projectId": "proj"
            }
        })
    }

    /// Shaped like a Yandex Cloud answer: string id, no project, vendor block.
    fn yandex_tree() -> Value {
        json!({
            "instance": {
                "attributes": {"ssh-keys": "yc-user:ssh-ed25519 AAAA", "user-data": "#cloud-config\n", "serial-port-enable": "1"},
                "hostname": "fhm1abcdefgh.auto.internal",
                "id": "fhm1abcdefghijklmnop",
                "name": "my-vm",
                "zone": "projects/b1gxxxxxxxxxxxxxxxxx/zones/ru-central1-a",
                "vendor": {"cloud-id": "b1gcloud", "folder-id": "b1gfolder", "identity": {"document": "{}"}},
                "serviceAccounts": {}
            },
            "yandex": {"folder-id": "b1gfolder"}
        })
    }

    #[test]
    fn gce_tree_is_typed() {
        let s = Snapshot::from_tree(&gce_tree()).unwrap();
        assert_eq!(s.instance.id.as_deref(), Some("4520031799277581759"));
        assert_eq!(s.instance.name.as_deref(), Some("vm-1"));
        assert_eq!(s.project.id.as_deref(), Some("proj"));
        assert_eq!(s.project.numeric_id.as_deref(), Some("123"));
        assert_eq!(
            s.instance.service_accounts["default"].email.as_deref(),
            Some("123-compute@developer.gserviceaccount.com")
        );
        assert_eq!(s.instance.service_accounts["default"].scopes.len(), 1);
        // Instance over project, for values and for booleans.
        assert_eq!(
            s.attribute("ssh-keys"),
            Some(("alice:ssh-ed25519 AAAA alice", Scope::Instance))
        );
        assert_eq!(s.flag("enable-oslogin"), Some((true, Scope::Instance)));
        assert_eq!(
            s.flag("block-project-ssh-keys"),
            Some((true, Scope::Project))
        );
        assert_eq!(s.flag("enable-oslogin-2fa"), None);
    }

    #[test]
    fn yandex_tree_without_project_is_typed() {
        let s = Snapshot::from_tree(&yandex_tree()).unwrap();
        assert_eq!(s.instance.id.as_deref(), Some("fhm1abcdefghijklmnop"));
        assert_eq!(s.instance.folder_id.as_deref(), Some("b1gfolder"));
        assert_eq!(s.project, Project::default());
        assert_eq!(s.flag("serial-port-enable"), Some((true, Scope::Instance)));
        assert_eq!(s.attribute("user-data").map(|v| v.1), Some(Scope::Instance));
    }

    #[test]
    fn empty_project_ids_equal_absent_project() {
        let mut with_empty = yandex_tree();
        with_empty["project"] = json!({"projectId": "", "numericProjectId": "", "attributes": {}});
        let a = Snapshot::from_tree(&yandex_tree()).unwrap();
        let b = Snapshot::from_tree(&with_empty).unwrap();
        assert_eq!(a, b, "an empty project must not look like a change");
        assert!(b.changes_since(&a).is_empty());
    }

    #[test]
    fn booleans_accept_the_documented_spellings_only() {
        for (v, want) in [
            ("true", Some(true)),
            ("YES", Some(true)),
            (" 1 ", Some(true)),
            ("False", Some(false)),
            ("no", Some(false)),
            ("0", Some(false)),
            ("on", None),
            ("", None),
            ("truee", None),
        ] {
            assert_eq!(parse_bool(v), want, "{v:?}");
        }
        let mut t = gce_tree();
        t["instance"]["attributes"]["enable-oslogin"] = json!("maybe");
        let s = Snapshot::from_tree(&t).unwrap();
        // The instance value is unusable, so the project's `false` applies, and it is reported.
        assert_eq!(s.flag("enable-oslogin"), Some((false, Scope::Project)));
        assert_eq!(
            s.invalid_flags(&["enable-oslogin"]),
            vec![(Scope::Instance, "enable-oslogin", "maybe")]
        );
    }

    #[test]
    fn non_string_attribute_values_are_kept_as_json_text() {
        let mut t = gce_tree();
        t["instance"]["attributes"]["count"] = json!(3);
        t["instance"]["attributes"]["obj"] = json!({"a": 1});
        let s = Snapshot::from_tree(&t).unwrap();
        assert_eq!(s.attribute("count"), Some(("3", Scope::Instance)));
        assert_eq!(s.attribute("obj"), Some(("{\"a\":1}", Scope::Instance)));
    }

    #[test]
    fn wrong_shapes_are_errors_not_empty_snapshots() {
        for bad in [
            json!(["not", "a", "tree"]),
            json!({}),
            json!({"instance": "x"}),
            json!({"instance": {}, "project": 5}),
            json!({"instance": {"attributes": []}}),
        ] {
            assert!(Snapshot::from_tree(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn changes_name_keys_not_values() {
        let old = Snapshot::from_tree(&gce_tree()).unwrap();
        let mut t = gce_tree();
        t["instance"]["attributes"]["ssh-keys"] = json!("secret-ish value");
        t["instance"]["attributes"]["new-key"] = json!("v");
        t["project"]["attributes"]
            .as_object_mut()
            .unwrap()
            .remove("ssh-keys");
        let new = Snapshot::from_tree(&t).unwrap();
        let changes = new.changes_since(&old);
        assert_eq!(changes.len(), 3);
        assert!(changes.contains(&Change::Changed("instance.attributes.ssh-keys".into())));
        assert!(changes.contains(&Change::Added("instance.attributes.new-key".into())));
        assert!(changes.contains(&Change::Removed("project.attributes.ssh-keys".into())));
        assert!(!format!("{changes:?}").contains("secret-ish"));
    }
}
