//! The syntax of one authorized_keys entry: `[OPTIONS ]KEYTYPE BASE64 [COMMENT]`, split into
//! its fields and its options checked against what sshd knows. Nothing is decoded here (that is
//! [`super::keys`]'s job); [`key_identity`] is what the managed block uses to recognise a key.
//!
//! Options are the first field when it is not a key type. They are `name` or `name="value"`,
//! comma-separated; a quoted value may hold blanks, commas and `\"`. Names are matched
//! case-insensitively, as sshd does; an unknown name or a missing/unexpected value is refused
//! (sshd would ignore the whole line).

/// OpenSSH public key types a user may log in with.
pub const USER_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// authorized_keys options sshd knows that take no value (matched case-insensitively, as sshd
/// does).
const FLAG_OPTIONS: &[&str] = &[
    "agent-forwarding",
    "cert-authority",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-touch-required",
    "no-user-rc",
    "no-x11-forwarding",
    "port-forwarding",
    "pty",
    "restrict",
    "user-rc",
    "verify-required",
    "x11-forwarding",
];

/// authorized_keys options sshd knows that take a quoted value.
const VALUE_OPTIONS: &[&str] = &[
    "command",
    "environment",
    "expiry-time",
    "from",
    "permitlisten",
    "permitopen",
    "principals",
    "tunnel",
];

/// An authorized_keys entry split into its fields, nothing decoded or checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub options: Option<&'a str>,
    pub key_type: &'a str,
    pub base64: &'a str,
    pub comment: &'a str,
}

/// Splits `text` into options, key type, base64 and comment. The options are the first field
/// when it is not a key type; inside options, a double-quoted string may hold blanks and `\"`.
pub fn split_entry(text: &str) -> Result<Entry<'_>, String> {
    let s = text.trim_matches(is_blank);
    let (first, rest) = options_token(s)?;
    if first.is_empty() {
        return Err("no key".into());
    }
    if classify(first) != KeyKind::Unknown {
        let (base64, comment) = plain_token(rest);
        if base64.is_empty() {
            return Err("no key data after the key type".into());
        }
        return Ok(Entry {
            options: None,
            key_type: first,
            base64,
            comment,
        });
    }
    let (key_type, rest) = plain_token(rest);
    if classify(key_type) == KeyKind::Unknown {
        // Neither field is a key type: most likely an unknown key type with no options.
        return Err(format!("unknown key type `{}`", excerpt(first, 48)));
    }
    let (base64, comment) = plain_token(rest);
    if base64.is_empty() {
        return Err("no key data after the key type".into());
    }
    Ok(Entry {
        options: Some(first),
        key_type,
        base64,
        comment,
    })
}

/// The key type and base64 of an authorized_keys line, or `None` when the line holds no key
/// (a comment, a blank line, garbage). Nothing is decoded.
pub fn key_identity(line: &str) -> Option<(&str, &str)> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim_start_matches(is_blank).starts_with('#') {
        return None;
    }
    split_entry(line).ok().map(|e| (e.key_type, e.base64))
}

/// The first field, quote-aware; returns it and the rest (comment-trimmed).
fn options_token(s: &str) -> Result<(&str, &str), String> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if !quoted && is_blank(c) {
            return Ok((&s[..i], s[i..].trim_matches(is_blank)));
        }
    }
    if quoted {
        return Err("unterminated quote in the options".into());
    }
    Ok((s, ""))
}

/// The next blank-separated field and the rest.
fn plain_token(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(is_blank);
    match s.find(is_blank) {
        Some(i) => (&s[..i], s[i..].trim_matches(is_blank)),
        None => (s, ""),
    }
}

/// Checks `opt[,opt...]` where `opt` is `name` or `name="value"` (value with `\"` escapes), and
/// every name is one sshd knows with the right arity.
pub(super) fn check_options(options: &str) -> Result<(), String> {
    let b = options.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-') {
            i += 1;
        }
        let name = &options[start..i];
        if name.is_empty() {
            return Err("malformed options (empty option or bad character)".into());
        }
        let lower = name.to_ascii_lowercase();
        let has_value = b.get(i) == Some(&b'=');
        if has_value {
            i += 1;
            if b.get(i) != Some(&b'"') {
                return Err(format!(
                    "option `{}` needs a double-quoted value",
                    excerpt(name, 24)
                ));
            }
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated quote in the options".into()),
                    Some(b'\\') if b.get(i + 1) == Some(&b'"') => i += 2,
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            i += 1;
        }
        if VALUE_OPTIONS.contains(&lower.as_str()) {
            if !has_value {
                return Err(format!("option `{lower}` needs a value"));
            }
        } else if FLAG_OPTIONS.contains(&lower.as_str()) {
            if has_value {
                return Err(format!("option `{lower}` takes no value"));
            }
        } else {
            return Err(format!("unknown option `{}`", excerpt(name, 24)));
        }
        match b.get(i) {
            None => return Ok(()),
            Some(b',') => i += 1,
            Some(_) => return Err("malformed options (expected `,` between options)".into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    User,
    Certificate,
    Dsa,
    Unknown,
}

pub(super) fn classify(t: &str) -> KeyKind {
    if USER_KEY_TYPES.contains(&t) {
        KeyKind::User
    } else if t == "ssh-dss" {
        KeyKind::Dsa
    } else if t.ends_with("-cert-v01@openssh.com")
        && (t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-"))
        && t.len() <= 64
    {
        KeyKind::Certificate
    } else {
        KeyKind::Unknown
    }
}

pub(super) fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `s` cut to `max` characters and escaped (`\n`, `\u{1b}`, ...), for a log line.
pub(super) fn excerpt(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).flat_map(char::escape_debug).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}
