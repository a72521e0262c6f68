//! cloud-init `user-data` (`#cloud-config` YAML), as Yandex images expect it: the users it
//! lists, their SSH keys, sudo and extra groups. No I/O.
//!
//! Read: `users:`, a list whose entries are mappings with `name`, `ssh_authorized_keys` (or
//! `ssh-authorized-keys`; a list of strings, or one string), `sudo` and `groups` (a string
//! `"a, b"` or a list). Ignored: every other field and top-level key, and any user-data that is
//! not `#cloud-config` (a shell script, MIME multipart, `#cloud-config-archive`, Jinja
//! templates): that is no users.
//!
//! One entry never costs the others: an entry that is not a user with a name (`- default`,
//! which is cloud-init's own default user; a bare name, which carries no keys; a
//! `- snapuser: ...` mapping; any mapping without `name`) or whose fields are malformed is
//! skipped and reported ([`UserData::skipped`], with its index and line), and the other users
//! are read. Only a document that cannot be read as a whole (bad YAML, not a mapping, `users:`
//! not a list, over the limits) is an error.
//!
//! `sudo` gives the sudo group unless it is absent, null, false (YAML 1.1 as cloud-init reads
//! it: `false`, `no`, `off` in any usual case), the string `"false"`, an empty string or an
//! empty list. The rule text itself is not copied: a sudo user gets the agent's sudo group.
//!
//! The document is built from the parser's events without recursion, with a nesting limit and a
//! node budget that counts alias expansions (a "billion laughs" document is refused, not
//! expanded). Errors name what is wrong and where (line and column).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// The largest user-data read, in bytes.
pub const MAX_USER_DATA: usize = 1024 * 1024;
/// The most YAML nodes (after alias expansion) a document may have.
const MAX_NODES: usize = 100_000;
/// The deepest nesting of lists and mappings.
const MAX_DEPTH: usize = 64;

/// A user from `users:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudUser {
    /// As written (not yet validated as a user name).
    pub name: String,
    /// The line of the entry in the YAML (1-based).
    pub line: usize,
    pub ssh_authorized_keys: Vec<CloudKey>,
    pub sudo: bool,
    /// As written, blanks trimmed, empty ones dropped (not yet validated as group names).
    pub groups: Vec<String>,
}

/// One entry of `ssh_authorized_keys`: an authorized_keys line, not yet validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudKey {
    /// The line of the key in the YAML (1-based).
    pub line: usize,
    pub key: String,
}

/// An entry of `users:` that was not read, and why. Every field is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    /// Its index in `users:` (0-based, as `users[0]`).
    pub index: usize,
    /// Its line in the YAML (1-based).
    pub line: usize,
    /// The entry's `name` when it had one (escaped, cut to 32 characters).
    pub name: Option<String>,
    /// Starts with `users[INDEX]`.
    pub reason: String,
}

/// What `users:` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserData {
    pub users: Vec<CloudUser>,
    pub skipped: Vec<SkippedEntry>,
}

/// The users of `text` when it is `#cloud-config` (the first line, a BOM and trailing blanks
/// aside); nothing for any other kind of user-data. An error only when the document as a whole
/// cannot be read; a bad entry is skipped (see the module's text).
pub fn parse_user_data(text: &str) -> Result<UserData, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.split('\n').next().unwrap_or("");
    if first.trim_end() != "#cloud-config" {
        return Ok(UserData::default());
    }
    if text.len() > MAX_USER_DATA {
        return Err(format!(
            "user-data is {} bytes, over the {MAX_USER_DATA}-byte limit",
            text.len()
        ));
    }
    let Some(root) = load(text)? else {
        return Ok(UserData::default());
    };
    let top = match &root.value {
        Value::Map(entries) => entries,
        Value::Scalar { text, .. } if root.is_null() || text.is_empty() => {
            return Ok(UserData::default());
        }
        _ => {
            return Err(format!(
                "user-data: the #cloud-config document is {}, not a mapping (line {})",
                root.kind(),
                root.line
            ));
        }
    };
    let Some(users) = lookup(top, "users") else {
        return Ok(UserData::default());
    };
    let items = match &users.value {
        Value::Seq(items) => items,
        _ if users.is_null() => return Ok(UserData::default()),
        // A bare string lists names only (`users: default`): no keys to manage.
        Value::Scalar { .. } => return Ok(UserData::default()),
        Value::Map(_) => {
            return Err(format!(
                "user-data: `users` (line {}) is a mapping; a list of users is expected",
                users.line
            ));
        }
    };
    let mut out = UserData::default();
    for (index, item) in items.iter().enumerate() {
        let skip = |name: Option<&str>, reason: String| SkippedEntry {
            index,
            line: item.line,
            name: name.map(|n| super::entry::excerpt(n, 32)),
            reason,
        };
        let fields = match &item.value {
            Value::Map(fields) => fields,
            Value::Scalar { text, .. } if text == "default" && !item.is_null() => {
                out.skipped.push(skip(
                    None,
                    format!(
                        "users[{index}] is `default`, cloud-init's own default user (its \
                         keys come from ssh-keys); skipped"
                    ),
                ));
                continue;
            }
            Value::Scalar { text, .. } if !item.is_null() => {
                out.skipped.push(skip(
                    None,
                    format!(
                        "users[{index}] is the bare name `{}`, which carries no keys; skipped",
                        super::entry::excerpt(text, 32)
                    ),
                ));
                continue;
            }
            _ => {
                out.skipped.push(skip(
                    None,
                    format!(
                        "users[{index}] is {}, not a user (a mapping with `name`); skipped",
                        item.kind()
                    ),
                ));
                continue;
            }
        };
        match user(index, item.line, fields) {
            Ok(u) => out.users.push(u),
            Err((name, reason)) => out
                .skipped
                .push(skip(name.as_deref(), format!("{reason}; entry skipped"))),
        }
    }
    Ok(out)
}

/// One entry of `users:`; an error gives the name when it was read, and the reason.
fn user(
    index: usize,
    line: usize,
    fields: &[(Node, Node)],
) -> Result<CloudUser, (Option<String>, String)> {
    let at = |field: &str, node: &Node| format!("users[{index}].{field} (line {})", node.line);
    let name = match lookup(fields, "name") {
        Some(n) => match &n.value {
            Value::Scalar { text, .. } if !n.is_null() => text.clone(),
            _ => {
                return Err((
                    None,
                    format!("{} is {}, not a name", at("name", n), n.kind()),
                ));
            }
        },
        None => {
            let first = fields.first().and_then(|(k, _)| match &k.value {
                Value::Scalar { text, .. } => Some(super::entry::excerpt(text, 32)),
                _ => None,
            });
            let what = match first {
                Some(key) => format!(" (a mapping of `{key}`:...)"),
                None => String::new(),
            };
            return Err((
                None,
                format!("users[{index}] (line {line}) has no `name`{what}"),
            ));
        }
    };
    user_fields(name.clone(), line, fields, &at).map_err(|e| (Some(name), e))
}

fn user_fields(
    name: String,
    line: usize,
    fields: &[(Node, Node)],
    at: &dyn Fn(&str, &Node) -> String,
) -> Result<CloudUser, String> {
    let mut keys = Vec::new();
    for field in ["ssh_authorized_keys", "ssh-authorized-keys"] {
        let Some(n) = lookup(fields, field) else {
            continue;
        };
        match &n.value {
            _ if n.is_null() => {}
            Value::Scalar { text, .. } => keys.push(CloudKey {
                line: n.line,
                key: text.clone(),
            }),
            Value::Seq(items) => {
                for k in items {
                    match &k.value {
                        Value::Scalar { text, .. } if !k.is_null() => keys.push(CloudKey {
                            line: k.line,
                            key: text.clone(),
                        }),
                        _ => {
                            return Err(format!(
                                "{} holds {} (line {}), not a key",
                                at(field, n),
                                k.kind(),
                                k.line
                            ));
                        }
                    }
                }
            }
            Value::Map(_) => {
                return Err(format!("{} is a mapping, not a list of keys", at(field, n)));
            }
        }
    }
    let sudo = lookup(fields, "sudo").is_some_and(grants_sudo);
    let groups = match lookup(fields, "groups") {
        None => Vec::new(),
        Some(n) => match &n.value {
            _ if n.is_null() => Vec::new(),
            Value::Scalar { text, .. } => text
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect(),
            Value::Seq(items) => {
                let mut groups = Vec::new();
                for g in items {
                    match &g.value {
                        Value::Scalar { text, .. } if !text.trim().is_empty() => {
                            groups.push(text.trim().to_owned());
                        }
                        _ => {
                            return Err(format!(
                                "{} holds {} (line {}), not a group name",
                                at("groups", n),
                                g.kind(),
                                g.line
                            ));
                        }
                    }
                }
                groups
            }
            Value::Map(_) => {
                return Err(format!(
                    "{} is a mapping, not a list of groups",
                    at("groups", n)
                ));
            }
        },
    };
    Ok(CloudUser {
        name,
        line,
        ssh_authorized_keys: keys,
        sudo,
        groups,
    })
}

fn grants_sudo(n: &Node) -> bool {
    match &n.value {
        _ if n.is_null() => false,
        Value::Scalar { text, plain } => {
            let t = text.trim();
            !(t.is_empty() || t.eq_ignore_ascii_case("false") || (*plain && is_yaml11_false(t)))
        }
        Value::Seq(items) => !items.is_empty(),
        Value::Map(entries) => !entries.is_empty(),
    }
}

/// YAML 1.1 false, as PyYAML (and so cloud-init) reads a plain scalar.
fn is_yaml11_false(t: &str) -> bool {
    matches!(
        t,
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF"
    )
}

/// The value of `key` in a mapping (the last one when the key repeats, as PyYAML does).
fn lookup<'a>(entries: &'a [(Node, Node)], key: &str) -> Option<&'a Node> {
    entries
        .iter()
        .rev()
        .find(|(k, _)| matches!(&k.value, Value::Scalar { text, .. } if text == key))
        .map(|(_, v)| v)
}

/// A YAML node with the line it starts on.
#[derive(Debug, Clone)]
struct Node {
    line: usize,
    value: Value,
}

#[derive(Debug, Clone)]
enum Value {
    /// `plain`: written without quotes or block style, so `null`/`~`/`` mean null.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    fn kind(&self) -> &'static str {
        match &self.value {
            _ if self.is_null() => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    fn size(&self) -> usize {
        1 + match &self.value {
            Value::Scalar { .. } => 0,
            Value::Seq(items) => items.iter().map(Node::size).sum(),
            Value::Map(entries) => entries.iter().map(|(k, v)| k.size() + v.size()).sum(),
        }
    }
}

/// A list or mapping being built.
struct Frame {
    line: usize,
    anchor: usize,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>, Option<Node>),
}

/// Builds the first document of `text`; `None` for an empty stream. More than one document is
/// an error (cloud-init reads exactly one).
fn load(text: &str) -> Result<Option<Node>, String> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let mut nodes = 0usize;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            format!(
                "user-data: bad YAML at {}: {}",
                position(e.marker()),
                e.info()
            )
        })?;
        let line = mark.line();
        let done = match event {
            Event::StreamEnd => return Ok(root),
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(format!(
                        "user-data: more than one YAML document (the second starts at line {line})"
                    ));
                }
                None
            }
            Event::Scalar(text, style, anchor, _) => {
                nodes += 1;
                let node = Node {
                    line,
                    value: Value::Scalar {
                        text,
                        plain: style == TScalarStyle::Plain,
                    },
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => {
                let Some(node) = anchors.get(&id) else {
                    return Err(format!("user-data: unknown alias at line {line}"));
                };
                nodes += node.size();
                if nodes > MAX_NODES {
                    return Err(too_many_nodes());
                }
                Some(Node {
                    line,
                    value: node.value.clone(),
                })
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                nodes += 1;
                if stack.len() >= MAX_DEPTH {
                    return Err(format!(
                        "user-data: nested deeper than {MAX_DEPTH} levels at line {line}"
                    ));
                }
                let kind = if matches!(event, Event::SequenceStart(..)) {
                    FrameKind::Seq(Vec::new())
                } else {
                    FrameKind::Map(Vec::new(), None)
                };
                stack.push(Frame { line, anchor, kind });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = stack.pop() else {
                    return Err(format!("user-data: unbalanced YAML at line {line}"));
                };
                let value = match frame.kind {
                    FrameKind::Seq(items) => Value::Seq(items),
                    FrameKind::Map(entries, _) => Value::Map(entries),
                };
                let node = Node {
                    line: frame.line,
                    value,
                };
                if frame.anchor > 0 {
                    anchors.insert(frame.anchor, node.clone());
                }
                Some(node)
            }
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => None,
        };
        if nodes > MAX_NODES {
            return Err(too_many_nodes());
        }
        let Some(node) = done else { continue };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame {
                kind: FrameKind::Seq(items),
                ..
            }) => items.push(node),
            Some(Frame {
                kind: FrameKind::Map(entries, pending),
                ..
            }) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

fn too_many_nodes() -> String {
    format!("user-data: more than {MAX_NODES} YAML nodes (aliases included)")
}

fn position(m: &Marker) -> String {
    format!("line {} column {}", m.line(), m.col() + 1)
}

#[cfg(test)]
#[path = "userdata_tests.rs"]
mod tests;
