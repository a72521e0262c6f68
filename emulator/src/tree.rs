//! The metadata tree: the default content, path lookup, directory listings and etags.
//!
//! The tree is stored the way the recursive JSON answer looks (camelCase keys). A path segment
//! is looked up verbatim first, then in its camelCase form (`service-accounts` ->
//! `serviceAccounts`), except below `attributes` and `serviceAccounts`, whose keys are taken
//! verbatim. Listings show keys in path form (`serviceAccounts` -> `service-accounts`).

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::api::Scope;

/// Keys whose children are named verbatim (no camelCase mapping either way).
const VERBATIM_PARENTS: [&str; 2] = ["attributes", "serviceAccounts"];

/// The tree served when no state file gives one: a GCE-looking instance.
pub fn default_tree() -> Value {
    json!({
        "instance": {
            "attributes": {},
            "hostname": "emulated-vm.internal",
            "id": 4_520_031_799_277_581_759_u64,
            "name": "emulated-vm",
            "zone": "projects/123456789/zones/emulated-zone-a",
            "machineType": "projects/123456789/machineTypes/e2-small",
            "serviceAccounts": {
                "default": {
                    "aliases": ["default"],
                    "email": "123456789-compute@developer.emulated.example",
                    "scopes": [
                        "https://www.googleapis.com/auth/cloud-platform",
                        "https://www.googleapis.com/auth/userinfo.email"
                    ]
                }
            }
        },
        "project": {
            "attributes": {},
            "projectId": "emulated-project",
            "numericProjectId": 123_456_789_u64
        }
    })
}

/// Deep merge: objects merge key by key, anything else in `over` replaces `base`.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `service-accounts` -> `serviceAccounts`.
pub fn camel(seg: &str) -> String {
    let mut out = String::with_capacity(seg.len());
    let mut upper = false;
    for c in seg.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `numericProjectId` -> `numeric-project-id`.
pub fn hyphen(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A node found by [`lookup`]: its value and the JSON key it was found under.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub value: &'a Value,
    pub key: Option<&'a str>,
}

impl Node<'_> {
    /// Whether this node answers as a directory (object, or array holding objects/arrays).
    pub fn is_dir(&self) -> bool {
        match self.value {
            Value::Object(_) => true,
            Value::Array(a) => a.iter().any(|v| v.is_object() || v.is_array()),
            _ => false,
        }
    }

    fn verbatim_children(&self) -> bool {
        self.key.is_some_and(|k| VERBATIM_PARENTS.contains(&k))
    }

    /// Child names for a directory listing; directories carry a trailing `/`.
    pub fn listing(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self.value {
            Value::Object(map) => {
                let verbatim = self.verbatim_children();
                for (k, v) in map {
                    let name = if verbatim { k.clone() } else { hyphen(k) };
                    let child = Node {
                        value: v,
                        key: Some(k),
                    };
                    out.push(if child.is_dir() { name + "/" } else { name });
                }
                if self.key == Some("serviceAccounts") {
                    // Accounts are also reachable under their email.
                    for v in map.values() {
                        if let Some(email) = v.get("email").and_then(Value::as_str) {
                            let name = format!("{email}/");
                            if !map.contains_key(email) && !out.contains(&name) {
                                out.push(name);
                            }
                        }
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    let child = Node {
                        value: v,
                        key: None,
                    };
                    out.push(if child.is_dir() {
                        format!("{i}/")
                    } else {
                        i.to_string()
                    });
                }
            }
            _ => {}
        }
        out
    }

    /// Text form of a leaf: strings as they are, arrays one item per line.
    pub fn text(&self) -> String {
        match self.value {
            Value::Array(items) => items
                .iter()
                .map(|v| scalar_text(v) + "\n")
                .collect::<String>(),
            v => scalar_text(v),
        }
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Finds the node at `segs` (path segments, empty ones already removed).
pub fn lookup<'a>(root: &'a Value, segs: &[&str]) -> Option<Node<'a>> {
    let mut node = Node {
        value: root,
        key: None,
    };
    for seg in segs {
        node = child(node, seg)?;
    }
    Some(node)
}

fn child<'a>(node: Node<'a>, seg: &str) -> Option<Node<'a>> {
    match node.value {
        Value::Object(map) => {
            if let Some((k, v)) = map.get_key_value(seg) {
                return Some(Node {
                    value: v,
                    key: Some(k),
                });
            }
            if node.verbatim_children() {
                if node.key == Some("serviceAccounts") {
                    return map.iter().find_map(|(k, v)| {
                        (v.get("email").and_then(Value::as_str) == Some(seg)).then_some(Node {
                            value: v,
                            key: Some(k),
                        })
                    });
                }
                return None;
            }
            let (k, v) = map.get_key_value(&camel(seg))?;
            Some(Node {
                value: v,
                key: Some(k),
            })
        }
        Value::Array(items) => {
            let i: usize = seg.parse().ok()?;
            items.get(i).map(|v| Node {
                value: v,
                key: None,
            })
        }
        _ => None,
    }
}

/// Serialises with object keys sorted, whatever serde_json's map order is.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(child) = map.get(*k) {
                    write_canonical(child, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// First 16 hex digits of the sha256 of some bytes.
pub fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The etag of a subtree (a missing one hashes as `null`).
pub fn etag(v: Option<&Value>) -> String {
    short_hash(canonical(v.unwrap_or(&Value::Null)).as_bytes())
}

/// Returns the attribute map of `scope`, creating whatever is missing on the way.
fn attributes_mut(tree: &mut Value, scope: Scope) -> &mut Map<String, Value> {
    let root = ensure_object(tree);
    let top = ensure_object(
        root.entry(scope.tree_key())
            .or_insert_with(|| Value::Object(Map::new())),
    );
    ensure_object(
        top.entry("attributes")
            .or_insert_with(|| Value::Object(Map::new())),
    )
}

fn ensure_object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

/// Sets `scope.attributes[key] = value`; returns whether the tree changed.
pub fn set_attribute(tree: &mut Value, scope: Scope, key: &str, value: &str) -> bool {
    let attrs = attributes_mut(tree, scope);
    let new = Value::String(value.to_owned());
    if attrs.get(key) == Some(&new) {
        return false;
    }
    attrs.insert(key.to_owned(), new);
    true
}

/// Removes `scope.attributes[key]`; returns whether it was there.
pub fn remove_attribute(tree: &mut Value, scope: Scope, key: &str) -> bool {
    tree.get_mut(scope.tree_key())
        .and_then(|top| top.get_mut("attributes"))
        .and_then(Value::as_object_mut)
        .is_some_and(|attrs| attrs.remove(key).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_mapping() {
        assert_eq!(camel("service-accounts"), "serviceAccounts");
        assert_eq!(camel("numeric-project-id"), "numericProjectId");
        assert_eq!(camel("hostname"), "hostname");
        assert_eq!(hyphen("serviceAccounts"), "service-accounts");
        assert_eq!(hyphen("numericProjectId"), "numeric-project-id");
    }

    #[test]
    fn lookup_paths() {
        let mut t = default_tree();
        set_attribute(
            &mut t,
            Scope::Instance,
            "ssh-keys",
            "alice:ssh-ed25519 AAAA",
        );
        set_attribute(&mut t, Scope::Instance, "sshKeys", "legacy");
        let n = lookup(&t, &["instance", "attributes", "ssh-keys"]).expect("found");
        assert_eq!(n.text(), "alice:ssh-ed25519 AAAA");
        // Attribute keys are verbatim: no camelCase fallback below `attributes`.
        assert!(lookup(&t, &["instance", "attributes", "ssh-Keys"]).is_none());
        let n = lookup(&t, &["project", "project-id"]).expect("found");
        assert_eq!(n.text(), "emulated-project");
        let n = lookup(&t, &["project", "numeric-project-id"]).expect("found");
        assert_eq!(n.text(), "123456789");
        let sa = lookup(&t, &["instance", "service-accounts"]).expect("found");
        let listing = sa.listing();
        assert_eq!(
            listing,
            vec![
                "default/".to_owned(),
                "123456789-compute@developer.emulated.example/".to_owned()
            ]
        );
        let by_email = lookup(
            &t,
            &[
                "instance",
                "service-accounts",
                "123456789-compute@developer.emulated.example",
                "email",
            ],
        )
        .expect("alias");
        assert_eq!(
            by_email.text(),
            "123456789-compute@developer.emulated.example"
        );
        let scopes =
            lookup(&t, &["instance", "service-accounts", "default", "scopes"]).expect("scopes");
        assert!(!scopes.is_dir());
        assert_eq!(scopes.text().lines().count(), 2);
        let inst = lookup(&t, &["instance"]).expect("instance");
        assert!(inst.listing().contains(&"service-accounts/".to_owned()));
        assert!(inst.listing().contains(&"machine-type".to_owned()));
        assert!(lookup(&t, &["nope"]).is_none());
    }

    #[test]
    fn etag_is_canonical_and_content_based() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":[1,"s"]}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a":{"x":[1,"s"],"y":2},"b":1}"#).expect("json");
        assert_eq!(canonical(&a), r#"{"a":{"x":[1,"s"],"y":2},"b":1}"#);
        assert_eq!(etag(Some(&a)), etag(Some(&b)));
        assert_eq!(etag(Some(&a)).len(), 16);
        let mut t = default_tree();
        let before = etag(Some(&t));
        assert!(set_attribute(&mut t, Scope::Project, "k", "v"));
        assert!(!set_attribute(&mut t, Scope::Project, "k", "v"));
        assert_ne!(before, etag(Some(&t)));
        assert!(remove_attribute(&mut t, Scope::Project, "k"));
        assert_eq!(before, etag(Some(&t)));
    }

    #[test]
    fn merge_deep() {
        let mut t = default_tree();
        merge(
            &mut t,
            json!({"instance": {"attributes": {"a": "1"}, "id": "fhm123"}}),
        );
        assert_eq!(t["instance"]["attributes"]["a"], "1");
        assert_eq!(t["instance"]["id"], "fhm123");
        assert_eq!(t["instance"]["hostname"], "emulated-vm.internal");
    }
}
