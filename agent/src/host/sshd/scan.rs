//! The configuration as sshd reads it: sshd_config and its `Include`d files flattened in
//! sshd's order (pure: the file system is a trait). sshd takes the FIRST value of most
//! keywords, so this order says which line wins: `doctor` names it, and the planner of
//! [`super::rival`] uses it to find another AuthorizedKeysCommand and to place ours first.

use std::path::{Path, PathBuf};

use super::{BEGIN_MARK, END_MARK, include_covers};

/// sshd refuses deeper `Include` nesting than this (READCONF_MAX_DEPTH).
const MAX_DEPTH: usize = 16;

/// One active line of the configuration, in the order sshd reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLine {
    pub file: PathBuf,
    /// 1-based.
    pub number: usize,
    /// Lower case.
    pub keyword: String,
    pub value: String,
    /// Inside a `Match` block (other than `Match all`): applies to some connections only.
    pub in_match: bool,
    /// Written by the agent (its drop-in, or its marked block in the main config).
    pub managed: bool,
}

impl ConfigLine {
    /// `FILE:LINE`, as people and editors want it.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.number)
    }
}

/// What the scan reads: files and directory listings.
pub trait ConfigFs {
    fn read(&self, path: &Path) -> Option<String>;
    /// The entries of `dir` (full paths), any order.
    fn list(&self, dir: &Path) -> Vec<PathBuf>;
}

/// The real file system.
pub struct RealFs;

impl ConfigFs for RealFs {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read(path)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    fn list(&self, dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

/// Keyword and value of an active line (sshd allows `Keyword value` and `Keyword=value`).
fn split(line: &str) -> Option<(String, String)> {
    crate::host::sshd::keyword(line).map(|(k, v)| (k, v.trim_end().to_owned()))
}

/// The files an `Include` argument names, in the order sshd reads them (glob(3) sorts).
/// Wildcards are honoured in the last path component (what distributions use).
fn include_targets(arg: &str, ssh_dir: &Path, fs: &dyn ConfigFs) -> Vec<PathBuf> {
    let arg = arg.trim_matches('"');
    let pattern = if arg.starts_with('/') {
        PathBuf::from(arg)
    } else {
        ssh_dir.join(arg)
    };
    if !arg.contains(['*', '?', '[']) {
        return vec![pattern];
    }
    let Some(dir) = pattern.parent() else {
        return Vec::new();
    };
    let include = format!("Include {}\n", pattern.display());
    let mut hits: Vec<PathBuf> = fs
        .list(dir)
        .into_iter()
        .filter(|p| include_covers(&include, ssh_dir, p))
        .collect();
    hits.sort();
    hits
}

/// Every active line of `main` and the files it includes, in sshd's reading order.
/// `ours` are the agent's drop-ins (their lines are marked `managed`).
pub fn flatten(main: &Path, ssh_dir: &Path, ours: &[&Path], fs: &dyn ConfigFs) -> Vec<ConfigLine> {
    let mut out = Vec::new();
    walk(main, ssh_dir, ours, fs, false, 0, &mut out);
    out
}

fn walk(
    file: &Path,
    ssh_dir: &Path,
    ours: &[&Path],
    fs: &dyn ConfigFs,
    inherited_match: bool,
    depth: usize,
    out: &mut Vec<ConfigLine>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(text) = fs.read(file) else { return };
    let whole_file_ours = ours.contains(&file);
    let mut in_block = false;
    let mut in_match = inherited_match;
    for (i, raw) in text.lines().enumerate() {
        let bare = raw.trim_end();
        if bare == BEGIN_MARK {
            in_block = true;
            continue;
        }
        if bare == END_MARK {
            in_block = false;
            continue;
        }
        let Some((keyword, value)) = split(raw) else {
            continue;
        };
        if keyword == "match" {
            in_match = !value.eq_ignore_ascii_case("all");
        }
        out.push(ConfigLine {
            file: file.to_path_buf(),
            number: i + 1,
            keyword: keyword.clone(),
            value: value.clone(),
            in_match,
            managed: whole_file_ours || in_block,
        });
        if keyword == "include" {
            for arg in value.split_whitespace() {
                for target in include_targets(arg, ssh_dir, fs) {
                    // A Match inside an included file ends with that file.
                    walk(&target, ssh_dir, ours, fs, in_match, depth + 1, out);
                }
            }
        }
    }
}
