//! Where a value in sshd's effective configuration comes from.
//!
//! sshd takes the FIRST value of most keywords, so a line above the `Include` in sshd_config,
//! or in a drop-in that sorts before ours, silently shadows what the agent wrote. This module
//! flattens sshd_config and its `Include`d files in the order sshd reads them (pure: the
//! file system is a trait), then compares `sshd -T` with what the agent wants and names the
//! file and line that won.

use std::path::Path;

pub use crate::host::sshd::scan::{ConfigFs, ConfigLine, RealFs, flatten};

/// The value `sshd -T` prints for `keyword` (lower case), if any.
pub fn effective_value<'a>(effective: &'a str, keyword: &str) -> Option<&'a str> {
    let key = keyword.to_ascii_lowercase();
    effective
        .lines()
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' '))
}

/// A directive that is not in effect as the agent wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// As the agent writes it (`AuthorizedKeysCommand`).
    pub keyword: String,
    pub expected: String,
    /// What `sshd -T` shows (`None`: not shown at all).
    pub found: Option<String>,
    /// The first line outside any `Match` that sets the keyword: the one sshd uses.
    pub winner: Option<ConfigLine>,
    /// The agent's own line for it, if present.
    pub ours: Option<ConfigLine>,
    /// Lines inside `Match` blocks that set it (they apply to matching connections).
    pub in_match: Vec<ConfigLine>,
    /// An earlier `AuthorizedKeysCommand` that hides a later `AuthorizedPrincipalsCommand`
    /// (OpenSSH before 9.4, upstream bug 3574).
    pub hidden_by_keys_command: Option<ConfigLine>,
}

impl Mismatch {
    /// One line: what is wrong and where.
    pub fn finding(&self) -> String {
        let found = self.found.as_deref().unwrap_or("(not set)");
        match (&self.winner, &self.hidden_by_keys_command) {
            (_, Some(keys)) => format!(
                "{} is `{found}`: the AuthorizedKeysCommand at {} comes before the agent's \
                 AuthorizedPrincipalsCommand, and OpenSSH before 9.4 then drops it",
                self.keyword,
                keys.place()
            ),
            (Some(w), _) if !w.managed => format!(
                "line order wrong: {} sets `{} {}` before the agent's line{}; sshd uses the \
                 first value",
                w.place(),
                self.keyword,
                w.value,
                self.ours
                    .as_ref()
                    .map(|o| format!(" ({})", o.place()))
                    .unwrap_or_default()
            ),
            _ if !self.in_match.is_empty() => format!(
                "{} is `{found}` for this connection: a Match block at {} sets it",
                self.keyword,
                self.in_match[0].place()
            ),
            _ if self.ours.is_none() => format!(
                "{} is `{found}`, not `{}`: the agent's sshd directives are missing",
                self.keyword, self.expected
            ),
            _ => format!(
                "{} is `{found}`, not `{}` as the agent wrote",
                self.keyword, self.expected
            ),
        }
    }

    /// The line to blame, when another line than the agent's is the cause.
    pub fn culprit(&self) -> Option<&ConfigLine> {
        self.hidden_by_keys_command
            .as_ref()
            .or(self.winner.as_ref().filter(|w| !w.managed))
            .or(self.in_match.first())
    }

    /// What to do about it.
    pub fn fix(&self, dropin: &Path) -> String {
        match (&self.winner, &self.hidden_by_keys_command) {
            (_, Some(keys)) => format!(
                "remove the AuthorizedKeysCommand line at {} (the agent writes both commands, \
                 principals first), then `sshd -t` and reload sshd",
                keys.place()
            ),
            (Some(w), _) if !w.managed => format!(
                "remove or comment out line {} of {} (or move it below the agent's {}), then \
                 `sshd -t` and reload sshd",
                w.number,
                w.file.display(),
                self.ours
                    .as_ref()
                    .map(|o| o.place())
                    .unwrap_or_else(|| dropin.display().to_string())
            ),
            _ if !self.in_match.is_empty() => format!(
                "remove `{}` from the Match block at {}, then reload sshd",
                self.keyword,
                self.in_match[0].place()
            ),
            _ if self.ours.is_none() => format!(
                "the agent writes {} (or a marked block at the end of sshd_config) when OS Login \
                 is on: check that the daemon runs and read its log (`journalctl -u guest-agent`)",
                dropin.display()
            ),
            _ => "restart the agent so it rewrites its sshd directives, and reload sshd".into(),
        }
    }
}

/// Compares `sshd -T` output with the agent's directives `expected` (keyword as written,
/// value), explaining every difference from the scanned `lines`.
pub fn mismatches(
    effective: &str,
    expected: &[(&str, String)],
    lines: &[ConfigLine],
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for (keyword, value) in expected {
        let key = keyword.to_ascii_lowercase();
        let found = effective_value(effective, &key);
        if found == Some(value.as_str()) {
            continue;
        }
        let setting = |l: &&ConfigLine| l.keyword == key;
        let winner = lines.iter().filter(setting).find(|l| !l.in_match).cloned();
        let ours = lines.iter().filter(setting).find(|l| l.managed).cloned();
        let in_match: Vec<ConfigLine> = lines
            .iter()
            .filter(setting)
            .filter(|l| l.in_match && !l.managed)
            .cloned()
            .collect();
        // Bug 3574: any AuthorizedKeysCommand before the principals command drops it.
        let hidden_by_keys_command = (key == "authorizedprincipalscommand"
            && found.is_none_or(|f| f == "none"))
        .then(|| {
            let first_principals = lines.iter().position(|l| l.keyword == key)?;
            lines[..first_principals]
                .iter()
                .find(|l| l.keyword == "authorizedkeyscommand" && !l.in_match)
                .cloned()
        })
        .flatten();
        out.push(Mismatch {
            keyword: (*keyword).to_owned(),
            expected: value.clone(),
            found: found.map(str::to_owned),
            winner,
            ours,
            in_match,
            hidden_by_keys_command,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use crate::host::sshd::{BEGIN_MARK, END_MARK};

    use super::*;

    struct FakeFs(BTreeMap<PathBuf, String>);

    impl FakeFs {
        fn new(files: &[(&str, &str)]) -> FakeFs {
            FakeFs(
                files
                    .iter()
                    .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                    .collect(),
            )
        }
    }

    impl ConfigFs for FakeFs {
        fn read(&self, path: &Path) -> Option<String> {
            self.0.get(path).cloned()
        }
        fn list(&self, dir: &Path) -> Vec<PathBuf> {
            // Reverse order on purpose: the scan must sort.
            self.0
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .rev()
                .cloned()
                .collect()
        }
    }

    const MAIN: &str = "/etc/ssh/sshd_config";
    const DROPIN: &str = "/etc/ssh/sshd_config.d/60-guest-agent.conf";
    const OURS: &str = "# Managed by guest-agent\n\
        AuthorizedPrincipalsCommand /usr/bin/guest-agent authorized-principals %u %k\n\
        AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f\n\
        AuthorizedKeysCommandUser nobody\n\
        Match Group guest-agent-oslogin\n    AuthorizedKeysFile none\n";

    fn expected() -> Vec<(&'static str, String)> {
        vec![
            (
                "AuthorizedPrincipalsCommand",
                "/usr/bin/guest-agent authorized-principals %u %k".into(),
            ),
            (
                "AuthorizedKeysCommand",
                "/usr/bin/guest-agent authorized-keys %u %f".into(),
            ),
            ("AuthorizedKeysCommandUser", "nobody".into()),
        ]
    }

    fn scan(fs: &FakeFs) -> Vec<ConfigLine> {
        flatten(
            Path::new(MAIN),
            Path::new("/etc/ssh"),
            &[Path::new(DROPIN)],
            fs,
        )
    }

    #[test]
    fn flattens_in_sshd_order_with_sorted_dropins_and_match_scopes() {
        let fs = FakeFs::new(&[
            (
                MAIN,
                "Port 22\nInclude /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication=no\n\
                 Match User bob\n  X11Forwarding yes\nMatch all\nBanner none\n",
            ),
            ("/etc/ssh/sshd_config.d/10-a.conf", "Match User x\nA 1\n"),
            (DROPIN, OURS),
            ("/etc/ssh/sshd_config.d/.hidden.conf", "Hidden 1\n"),
            ("/etc/ssh/sshd_config.d/notes.txt", "Txt 1\n"),
        ]);
        let lines = scan(&fs);
        let summary: Vec<(String, usize, bool, bool)> = lines
            .iter()
            .map(|l| (l.keyword.clone(), l.number, l.in_match, l.managed))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("port".into(), 1, false, false),
                ("include".into(), 2, false, false),
                ("match".into(), 1, true, false),
                ("a".into(), 2, true, false),
                ("authorizedprincipalscommand".into(), 2, false, true),
                ("authorizedkeyscommand".into(), 3, false, true),
                ("authorizedkeyscommanduser".into(), 4, false, true),
                ("match".into(), 5, true, true),
                ("authorizedkeysfile".into(), 6, true, true),
                ("passwordauthentication".into(), 3, false, false),
                ("match".into(), 4, true, false),
                ("x11forwarding".into(), 5, true, false),
                ("match".into(), 6, false, false),
                ("banner".into(), 7, false, false),
            ]
        );
        assert_eq!(lines[9].value, "no");
    }

    #[test]
    fn include_loops_end() {
        let fs = FakeFs::new(&[(MAIN, "Include sshd_config\nPort 22\n")]);
        assert!(scan(&fs).len() > 10);
    }

    #[test]
    fn a_line_above_the_include_is_named_as_the_winner() {
        let fs = FakeFs::new(&[
            (
                MAIN,
                "AuthorizedKeysCommand /bin/false\nInclude /etc/ssh/sshd_config.d/*.conf\n",
            ),
            (DROPIN, OURS),
        ]);
        let effective = "authorizedprincipalscommand none\nauthorizedkeyscommand /bin/false\n\
                         authorizedkeyscommanduser nobody\n";
        let m = mismatches(effective, &expected(), &scan(&fs));
        assert_eq!(m.len(), 2, "{m:?}");
        // The principals command is hidden by the earlier keys command (bug 3574).
        assert_eq!(m[0].keyword, "AuthorizedPrincipalsCommand");
        assert_eq!(
            m[0].hidden_by_keys_command.as_ref().map(|l| l.number),
            Some(1)
        );
        assert!(m[0].finding().contains("/etc/ssh/sshd_config:1"));
        let keys = &m[1];
        assert_eq!(keys.keyword, "AuthorizedKeysCommand");
        assert_eq!(keys.found.as_deref(), Some("/bin/false"));
        let w = keys.winner.as_ref().unwrap();
        assert_eq!((w.file.as_path(), w.number), (Path::new(MAIN), 1));
        assert_eq!(keys.ours.as_ref().map(|o| o.number), Some(3));
        let finding = keys.finding();
        assert!(
            finding.starts_with(
                "line order wrong: /etc/ssh/sshd_config:1 sets `AuthorizedKeysCommand /bin/false`"
            ),
            "{finding}"
        );
        assert!(
            keys.fix(Path::new(DROPIN))
                .starts_with("remove or comment out line 1 of /etc/ssh/sshd_config"),
        );
    }

    #[test]
    fn an_earlier_dropin_is_named() {
        let fs = FakeFs::new(&[
            (MAIN, "Include /etc/ssh/sshd_config.d/*.conf\n"),
            (
                "/etc/ssh/sshd_config.d/10-other.conf",
                "AuthorizedKeysCommandUser root\n",
            ),
            (DROPIN, OURS),
        ]);
        let effective = "authorizedprincipalscommand /usr/bin/guest-agent authorized-principals %u %k\n\
                         authorizedkeyscommand /usr/bin/guest-agent authorized-keys %u %f\n\
                         authorizedkeyscommanduser root\n";
        let m = mismatches(effective, &expected(), &scan(&fs));
        assert_eq!(m.len(), 1);
        assert!(
            m[0].finding().contains(
                "/etc/ssh/sshd_config.d/10-other.conf:1 sets `AuthorizedKeysCommandUser root`"
            ),
            "{}",
            m[0].finding()
        );
    }

    #[test]
    fn all_in_effect_means_no_mismatch_and_missing_directives_say_so() {
        let fs = FakeFs::new(&[
            (MAIN, "Include /etc/ssh/sshd_config.d/*.conf\n"),
            (DROPIN, OURS),
        ]);
        let good = "authorizedprincipalscommand /usr/bin/guest-agent authorized-principals %u %k\n\
                    authorizedkeyscommand /usr/bin/guest-agent authorized-keys %u %f\n\
                    authorizedkeyscommanduser nobody\n";
        assert!(mismatches(good, &expected(), &scan(&fs)).is_empty());
        let bare = FakeFs::new(&[(MAIN, "Port 22\n")]);
        let m = mismatches("authorizedkeyscommand none\n", &expected(), &scan(&bare));
        assert_eq!(m.len(), 3);
        assert!(m[1].finding().contains("missing"), "{}", m[1].finding());
    }

    #[test]
    fn a_marked_block_in_the_main_config_is_ours_and_match_lines_are_reported() {
        let main = format!(
            "Match User alice\n  AuthorizedKeysCommand /bin/true\n{BEGIN_MARK}\nMatch all\n\
             AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f\n{END_MARK}\n"
        );
        let fs = FakeFs::new(&[(MAIN, &main)]);
        let lines = scan(&fs);
        let ours = lines
            .iter()
            .find(|l| l.keyword == "authorizedkeyscommand" && l.managed)
            .unwrap();
        assert_eq!((ours.number, ours.in_match), (5, false));
        let m = mismatches(
            "authorizedkeyscommand /bin/true\n",
            &expected()[1..2],
            &lines,
        );
        assert_eq!(m.len(), 1);
        assert!(
            m[0].finding()
                .contains("a Match block at /etc/ssh/sshd_config:2"),
            "{}",
            m[0].finding()
        );
    }
}
