//! The block the agent owns in `~/.ssh/authorized_keys`, as pure text functions.
//!
//! The block is the lines between [`BEGIN`] and [`END`] (marker lines match when they equal the
//! marker once surrounding blanks and a CR are ignored). Every other line (the user's own keys,
//! comments, blank lines, CRLF endings, a missing final newline) is kept byte for byte and in
//! place.
//!
//! A damaged file is read with one rule, scanning top to bottom: a `BEGIN` opens a region, an
//! `END` closes it; region lines and every marker line are ours. So a `BEGIN` with no `END`
//! after it makes everything to the end of the file ours (a key revoked in metadata must not
//! survive because a marker was deleted); an `END` with no open region is a lone marker and only
//! that line is dropped (the lines before it stay: we cannot tell where a block began, and they
//! may be the user's); a `BEGIN` inside a region is dropped with it; several blocks are all
//! ours. [`render`] drops all of it and writes one clean block where the first marker was (or
//! at the end of the file when there is none).
//!
//! Adoption from Google's guest agent, which writes each key it manages as a line
//! `# Added by Google` followed by the key line: outside our block, such a pair is removed when
//! the same key (type and base64; options and comment may differ) is in the block we write, and
//! kept otherwise (the key is not lost when metadata no longer has it; a user may remove it). A
//! single line ending with `# Added by Google` (the comment form) whose key we write is removed
//! the same way. Pairs are read on the lines outside our regions, so removing one can make the
//! line before it and the line after it a pair (as if removal were repeated until nothing
//! changes); this keeps [`render`] idempotent. After a takeover from Google's agent
//! ([`GoogleLines::DropAll`], `guest-agent takeover`) every such pair goes, listed or not: the
//! listed keys are in our block, and a key metadata no longer lists must stop working, as it
//! would have under Google's agent.

use std::collections::HashSet;

use super::entry::key_identity;

pub const BEGIN: &str =
    "# BEGIN guest-agent managed keys (do not edit: the agent rewrites this block)";
pub const END: &str = "# END guest-agent managed keys";
/// What Google's guest agent writes on the line before each key it manages.
pub const GOOGLE_MARKER: &str = "# Added by Google";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Not ours: kept byte for byte.
    Outside,
    /// Inside one of our regions.
    Managed,
    /// A BEGIN or END line.
    Marker,
}

struct Line<'a> {
    /// With its line ending, if it has one.
    raw: &'a str,
    /// Without the line ending (LF or CRLF).
    text: &'a str,
    role: Role,
}

fn lines(existing: &str) -> Vec<Line<'_>> {
    let mut open = false;
    existing
        .split_inclusive('\n')
        .map(|raw| {
            let text = raw.strip_suffix('\n').unwrap_or(raw);
            let text = text.strip_suffix('\r').unwrap_or(text);
            let bare = text.trim_matches([' ', '\t']);
            let role = if bare == BEGIN {
                open = true;
                Role::Marker
            } else if bare == END {
                open = false;
                Role::Marker
            } else if open {
                Role::Managed
            } else {
                Role::Outside
            };
            Line { raw, text, role }
        })
        .collect()
}

/// The lines of our block(s) now (without line endings, blank lines skipped), per the damaged
/// file rule above.
pub fn managed(existing: &str) -> Vec<String> {
    lines(existing)
        .into_iter()
        .filter(|l| l.role == Role::Managed && !l.text.trim().is_empty())
        .map(|l| l.text.to_owned())
        .collect()
}

/// What happens to Google's `# Added by Google` key lines outside our block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GoogleLines {
    /// A pair goes when its key is in the block we write; the others stay (before a takeover
    /// from Google's agent: a key metadata no longer lists is not ours to remove).
    #[default]
    KeepUnlisted,
    /// Every pair goes (after `guest-agent takeover`: we are the agent that wrote them now,
    /// and the keys metadata still lists are in the block we write, in the same file write).
    DropAll,
}

/// The file with our block holding exactly `keys` (in that order), everything else kept. An
/// empty `keys` removes the block and its markers (a file that held only our block becomes
/// empty); a file without our markers is then returned unchanged. Keys are lines without line
/// endings: an entry holding a CR or LF, or only blanks, is skipped (it cannot be one line).
pub fn render(existing: &str, keys: &[String]) -> String {
    render_with(existing, keys, GoogleLines::KeepUnlisted)
}

/// [`render`], with Google's key lines treated as `google` says.
pub fn render_with(existing: &str, keys: &[String], google: GoogleLines) -> String {
    let keys: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|k| !k.contains(['\n', '\r']) && !k.trim().is_empty())
        .collect();
    let lines = lines(existing);
    let first_marker = lines.iter().position(|l| l.role == Role::Marker);
    let drop_all = google == GoogleLines::DropAll;
    if keys.is_empty() && first_marker.is_none() && !(drop_all && existing.contains(GOOGLE_MARKER))
    {
        return existing.to_owned();
    }
    let ours: HashSet<(&str, &str)> = keys.iter().filter_map(|k| key_identity(k)).collect();

    // Outside lines kept, after adoption (a stack: removing a pair joins its neighbours).
    let mut kept: Vec<usize> = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        if l.role != Role::Outside {
            continue;
        }
        let identity = key_identity(l.text);
        let is_ours = identity.is_some_and(|id| drop_all || ours.contains(&id));
        if is_ours && l.text.trim_end().ends_with(GOOGLE_MARKER) {
            continue;
        }
        if is_ours
            && kept
                .last()
                .is_some_and(|&p| lines[p].text.trim() == GOOGLE_MARKER)
        {
            kept.pop();
            continue;
        }
        kept.push(i);
    }

    let mut block = String::new();
    if !keys.is_empty() {
        block.push_str(BEGIN);
        block.push('\n');
        for k in &keys {
            block.push_str(k);
            block.push('\n');
        }
        block.push_str(END);
        block.push('\n');
    }
    let mut out = String::with_capacity(existing.len() + block.len());
    let mut placed = false;
    for i in kept {
        if !placed && first_marker.is_some_and(|m| m < i) {
            out.push_str(&block);
            placed = true;
        }
        out.push_str(lines[i].raw);
    }
    if !placed && !block.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&block);
    }
    out
}

#[cfg(test)]
#[path = "authorized_keys_tests.rs"]
mod tests;
