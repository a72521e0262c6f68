//! Symbolic links in a user's `~/.ssh` (dotfile managers such as GNU Stow make
//! `~/.ssh/authorized_keys -> ../dotfiles/ssh/authorized_keys`), as pure path arithmetic.
//!
//! The rule: a link is followed when it resolves inside the home, as the user, to a directory
//! (and file) of the user's; then the managed block is written into the target and the link
//! stays. Otherwise (it leaves the home, dangles outside it, loops, or ends at something that
//! is not the user's) the link itself is replaced by a regular file (or directory) holding the
//! user's own lines and the managed block. The resolution itself is the kernel's
//! (`openat2(RESOLVE_BENEATH)` from the home's descriptor, under the user's credentials, see
//! `accounts::apply`); this module only turns a link's text into the path to hand it.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Links followed one after another before the chain counts as leaving the home (the kernel
/// allows 40; a dotfile setup needs one or two).
pub const MAX_HOPS: usize = 8;

/// The target of a link found in the directory `dir` (relative to `home`, "" for the home
/// itself) as a path relative to `home`, for resolving beneath it: a relative target is
/// `dir/target` (the kernel resolves `..` and further links, refusing any step above the
/// home); an absolute target inside the home (`/home/alice/dotfiles/...`) loses the home's
/// prefix; any other absolute target leaves the home (`None`).
pub fn beneath(home: &Path, dir: &Path, target: &Path) -> Option<PathBuf> {
    if target.as_os_str().is_empty() {
        return None;
    }
    if target.is_absolute() {
        // Lexically: `..` in an absolute target could climb out after the prefix.
        let rest = target.strip_prefix(home).ok()?;
        if rest
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return None;
        }
        return Some(rest.to_path_buf());
    }
    Some(dir.join(target))
}

/// `rel` split into the directory to open beneath the home and the final name in it. `None`
/// when the last component is not a name (`..`, `.`, empty): such a target is a directory,
/// never the file.
pub fn split(rel: &Path) -> Option<(PathBuf, OsString)> {
    match rel.components().next_back()? {
        Component::Normal(name) => {
            let dir = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            Some((dir, name.to_os_string()))
        }
        _ => None,
    }
}

/// The user's own lines from a file a replaced link pointed at (read as the user, decoded
/// lossily): text only. Binary content (NUL bytes, bytes that were not UTF-8) keeps nothing.
pub fn own_lines(text: &str) -> Option<&str> {
    (!text.contains(['\0', '\u{FFFD}'])).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn relative_targets_are_joined_to_the_links_directory() {
        let home = p("/home/alice");
        assert_eq!(
            beneath(home, p(".ssh"), p("../dotfiles/ssh/authorized_keys")),
            Some(PathBuf::from(".ssh/../dotfiles/ssh/authorized_keys"))
        );
        assert_eq!(
            beneath(home, p(""), p("dotfiles/ssh")),
            Some(PathBuf::from("dotfiles/ssh"))
        );
        // Climbing out is left to the kernel, which refuses it beneath the home.
        assert_eq!(
            beneath(home, p(".ssh"), p("../../../etc/shadow")),
            Some(PathBuf::from(".ssh/../../../etc/shadow"))
        );
        assert_eq!(beneath(home, p(".ssh"), p("")), None);
    }

    #[test]
    fn absolute_targets_count_only_inside_the_home() {
        let home = p("/home/alice");
        assert_eq!(
            beneath(home, p(".ssh"), p("/home/alice/dotfiles/ak")),
            Some(PathBuf::from("dotfiles/ak"))
        );
        assert_eq!(beneath(home, p(".ssh"), p("/etc/shadow")), None);
        assert_eq!(beneath(home, p(".ssh"), p("/home/alicex/ak")), None);
        assert_eq!(beneath(home, p(".ssh"), p("/home/alice/../bob/ak")), None);
        assert_eq!(beneath(home, p(".ssh"), p("/home/bob/.ssh/ak")), None);
    }

    #[test]
    fn a_target_ends_in_a_name_or_is_no_file() {
        assert_eq!(
            split(p(".ssh/../dotfiles/ssh/authorized_keys")),
            Some((
                PathBuf::from(".ssh/../dotfiles/ssh"),
                OsString::from("authorized_keys")
            ))
        );
        assert_eq!(split(p("ak")), Some((PathBuf::new(), OsString::from("ak"))));
        assert_eq!(split(p(".ssh/..")), None);
        assert_eq!(split(p("")), None);
    }

    #[test]
    fn only_text_is_kept_from_a_replaced_target() {
        assert_eq!(
            own_lines("ssh-ed25519 AAAA me\n"),
            Some("ssh-ed25519 AAAA me\n")
        );
        assert_eq!(own_lines(""), Some(""));
        assert_eq!(own_lines("\0\0\0"), None);
        assert_eq!(own_lines(&String::from_utf8_lossy(&[0xff, 0xfe])), None);
    }
}
