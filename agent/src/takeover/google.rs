//! What Google's guest agent (and Yandex's fork, which keeps the names) leaves in files, read
//! and removed as pure text functions. The facts are from the protocol reference, section 7.
//!
//! - Config files (`sshd_config`, `/etc/pam.d/sshd`, `/etc/security/group.conf`): a block
//!   from a line holding [`BLOCK_START`] to a line holding [`BLOCK_END`] is Google's, and so
//!   is a line holding [`LINE_MARKER`] together with the line after it (older versions marked
//!   single lines). [`strip_marked`] removes exactly those lines; every other line is kept byte
//!   for byte (line endings and a missing final newline included).
//! - `nsswitch.conf`: the words `cache_oslogin` and `oslogin` on the `passwd:` and `group:`
//!   lines ([`strip_nsswitch`]).
//! - `/var/lib/google/google_users`: one name a line, the users its agent *created* (it adds a
//!   name only when it ran `useradd` for it; users who existed are only put in
//!   `google-sudoers`), [`parse_users`].
//! - Accounts it created: `useradd -m -s /bin/bash -p * NAME` (its default `useradd_cmd`), so
//!   the shadow password field of such an account is exactly `*` ([`made_by_google`]).

use crate::host::passwd::PasswdEntry;
use guest_agent_wire::names::is_valid_name;

pub const BLOCK_START: &str = "#### Google OS Login control. Do not edit this section. ####";
pub const BLOCK_END: &str = "#### End Google OS Login control section. ####";
pub const LINE_MARKER: &str = "# Added by Google Compute Engine OS Login.";
/// The sudo group of its metadata users.
pub const SUDO_GROUP: &str = "google-sudoers";
/// Words Google's agent appends to the `passwd:` and `group:` lines.
pub const NSS_MODULES: [&str; 2] = ["cache_oslogin", "oslogin"];

/// `text` without Google's blocks and marked lines, and how many lines went. A block whose end
/// marker is missing runs to the end of the file (as Google's own filter reads it).
pub fn strip_marked(text: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut removed = 0;
    let (mut in_block, mut next_is_marked) = (false, false);
    for raw in text.split_inclusive('\n') {
        let line = raw.trim_end_matches(['\n', '\r']);
        if in_block {
            removed += 1;
            if line.contains(BLOCK_END) {
                in_block = false;
            }
        } else if line.contains(BLOCK_START) {
            in_block = true;
            removed += 1;
        } else if line.contains(LINE_MARKER) {
            next_is_marked = true;
            removed += 1;
        } else if next_is_marked {
            next_is_marked = false;
            removed += 1;
        } else if line.contains(BLOCK_END) {
            // A lone end marker: Google's own filter drops it too.
            removed += 1;
        } else {
            out.push_str(raw);
        }
    }
    (out, removed)
}

/// Whether `text` holds anything [`strip_marked`] would remove.
pub fn has_marked(text: &str) -> bool {
    strip_marked(text).1 > 0
}

/// `nsswitch.conf` without Google's modules on the `passwd:` and `group:` lines (other
/// databases, spacing between the other words, comments and line endings kept).
pub fn strip_nsswitch(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for raw in text.split_inclusive('\n') {
        let body = raw.trim_end_matches(['\n', '\r']);
        let ending = &raw[body.len()..];
        let db = body.split(':').next().unwrap_or("").trim();
        if !(db == "passwd" || db == "group") || !body.contains(':') {
            out.push_str(raw);
            continue;
        }
        let (head, rest) = body.split_once(':').unwrap_or((body, ""));
        let (sources, comment) = match rest.find('#') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !sources.split_whitespace().any(|w| NSS_MODULES.contains(&w)) {
            out.push_str(raw);
            continue;
        }
        let kept: Vec<&str> = sources
            .split_whitespace()
            .filter(|w| !NSS_MODULES.contains(w))
            .collect();
        out.push_str(head);
        out.push(':');
        if !kept.is_empty() {
            out.push(' ');
            out.push_str(&kept.join(" "));
        }
        if !comment.is_empty() {
            out.push(' ');
            out.push_str(comment);
        }
        out.push_str(ending);
    }
    out
}

/// Whether `nsswitch.conf` names Google's modules on `passwd:` or `group:`.
pub fn has_nsswitch(text: &str) -> bool {
    strip_nsswitch(text) != text
}

/// The names in `google_users` (blank lines skipped; a name that is not a valid user name is
/// skipped too: it cannot be an account).
pub fn parse_users(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && is_valid_name(n))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The password field of `name` in `/etc/shadow` text.
pub fn shadow_password<'a>(shadow: &'a str, name: &str) -> Option<&'a str> {
    shadow.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.next().unwrap_or(""))
    })
}

/// Whether the account `e` (listed in `google_users`) was made by Google's agent, so that the
/// deprovision rules may one day delete it: `Ok` when its shadow password is exactly `*`
/// (what Google's `useradd -p *` leaves; an administrator's `useradd` leaves `!`, `adduser`
/// a hash or `!`, and `passwd` a hash), its uid is in login.defs' range for people and its
/// home is not `/` or empty. Otherwise the reason: the account is then still managed (keys,
/// sudo group) but never deleted by us. A name listed there that an administrator also made
/// is how Google's agent once deleted real users; when in doubt the account is kept.
pub fn made_by_google(
    e: &PasswdEntry,
    shadow_pw: Option<&str>,
    (min, max): (u32, u32),
) -> Result<(), String> {
    if e.uid < min || e.uid > max {
        return Err(format!(
            "its uid {} is outside login.defs' UID_MIN..UID_MAX ({min}..{max})",
            e.uid
        ));
    }
    if e.home.is_empty() || e.home == "/" {
        return Err("it has no home of its own".into());
    }
    match shadow_pw {
        Some("*") => Ok(()),
        Some(other) => Err(format!(
            "its password field is {} rather than Google's `*`: someone else made or changed it",
            describe_password(other)
        )),
        None => Err("it has no /etc/shadow entry".into()),
    }
}

/// A password field described without showing a hash.
fn describe_password(p: &str) -> &'static str {
    match p {
        "" => "empty",
        "!" | "!!" | "!*" => "a lock (`!`)",
        p if p.starts_with('!') => "a locked password",
        p if p.starts_with('$') => "a password hash",
        _ => "something else",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSHD: &str = "#### Google OS Login control. Do not edit this section. ####\n\
TrustedUserCAKeys /etc/ssh/oslogin_trustedca.pub\n\
AuthorizedKeysCommand /usr/bin/google_authorized_keys\n\
AuthorizedKeysCommandUser root\n\
#### End Google OS Login control section. ####\n\
Include /etc/ssh/sshd_config.d/*.conf\r\n\
PasswordAuthentication no\n\
#### Google OS Login control. Do not edit this section. ####\n\
Include /var/google-users.d/*\n\
#### End Google OS Login control section. ####\n";

    #[test]
    fn both_sshd_blocks_go_and_every_other_line_stays_byte_for_byte() {
        let (out, removed) = strip_marked(SSHD);
        assert_eq!(
            out,
            "Include /etc/ssh/sshd_config.d/*.conf\r\nPasswordAuthentication no\n"
        );
        assert_eq!(removed, 8);
        assert!(has_marked(SSHD));
        assert!(!has_marked(&out));
        assert_eq!(strip_marked(&out).0, out, "idempotent");
    }

    #[test]
    fn a_marked_line_goes_with_the_line_after_it_and_a_final_line_without_newline_stays() {
        let pam = "# Added by Google Compute Engine OS Login.\nauth [success=done perm_denied=die default=ignore] pam_oslogin_login.so\n@include common-auth\nsession optional pam_motd.so";
        let (out, removed) = strip_marked(pam);
        assert_eq!(out, "@include common-auth\nsession optional pam_motd.so");
        assert_eq!(removed, 2);
    }

    #[test]
    fn an_unterminated_block_runs_to_the_end() {
        let (out, _) = strip_marked(&format!("a\n{BLOCK_START}\nb\nc\n"));
        assert_eq!(out, "a\n");
    }

    #[test]
    fn nsswitch_loses_googles_words_on_passwd_and_group_only() {
        let text = "# comment oslogin\npasswd:         files systemd cache_oslogin oslogin\ngroup:  files cache_oslogin oslogin guestagent # note\nshadow:         files\nnetgroup: oslogin\n";
        let out = strip_nsswitch(text);
        assert_eq!(
            out,
            "# comment oslogin\npasswd: files systemd\ngroup: files guestagent # note\nshadow:         files\nnetgroup: oslogin\n"
        );
        assert!(has_nsswitch(text));
        assert!(!has_nsswitch(&out));
        let clean = "passwd: files systemd\n";
        assert_eq!(
            strip_nsswitch(clean),
            clean,
            "untouched lines stay byte for byte"
        );
    }

    #[test]
    fn google_users_names_are_trimmed_deduplicated_and_checked() {
        assert_eq!(
            parse_users("alice\n\n bob \nalice\nbad name\n-x\n"),
            vec!["alice", "bob"]
        );
    }

    fn user(uid: u32, home: &str) -> PasswdEntry {
        PasswdEntry {
            name: "alice".into(),
            uid,
            gid: uid,
            home: home.into(),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn only_an_account_with_googles_star_password_in_the_people_range_is_adopted_for_deletion() {
        let range = (1000, 60000);
        assert_eq!(
            made_by_google(&user(1001, "/home/alice"), Some("*"), range),
            Ok(())
        );
        let admin = made_by_google(&user(1001, "/home/alice"), Some("!"), range).unwrap_err();
        assert!(admin.contains("a lock"), "{admin}");
        let hash =
            made_by_google(&user(1001, "/home/alice"), Some("$y$j9T$abc$def"), range).unwrap_err();
        assert!(
            hash.contains("a password hash") && !hash.contains("abc"),
            "{hash}"
        );
        assert!(made_by_google(&user(999, "/home/alice"), Some("*"), range).is_err());
        assert!(made_by_google(&user(1001, "/"), Some("*"), range).is_err());
        assert!(made_by_google(&user(1001, "/home/alice"), None, range).is_err());
    }

    #[test]
    fn shadow_password_is_the_second_field_of_the_named_line() {
        let shadow = "root:$y$x:1::::::\nalice:*:19000:0:99999:7:::\n";
        assert_eq!(shadow_password(shadow, "alice"), Some("*"));
        assert_eq!(shadow_password(shadow, "ali"), None);
    }
}
