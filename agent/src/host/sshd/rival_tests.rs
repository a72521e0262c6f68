//! The planner's decisions on configurations with another AuthorizedKeysCommand.

use std::collections::BTreeMap;

use super::*;
use crate::host::sshd::{BEGIN_MARK, directives, plan_disable, render, render_globals};

const DEBIAN_12: &str = include_str!("testdata/debian12_sshd_config");
const MAIN: &str = "/etc/ssh/sshd_config";
const DROPIN: &str = "/etc/ssh/sshd_config.d/60-guest-agent.conf";
const EARLY: &str = "/etc/ssh/sshd_config.d/00-guest-agent.conf";
const USERDB: &str = "/etc/ssh/sshd_config.d/20-systemd-userdb.conf";
const USERDB_TEXT: &str = "# sshd configuration snippet for systemd-userdbd\n\
    AuthorizedKeysCommand /usr/bin/userdbctl ssh-authorized-keys %u\n\
    AuthorizedKeysCommandUser root\n";

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
        self.0
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .rev()
            .cloned()
            .collect()
    }
}

fn places(dir: bool) -> Places<'static> {
    Places {
        main: Path::new(MAIN),
        ssh_dir: Path::new("/etc/ssh"),
        dropin: Path::new(DROPIN),
        early: Path::new(EARLY),
        dropin_dir_exists: dir,
    }
}

fn settings() -> SshdSettings {
    SshdSettings {
        trusted_ca_file: Some("/etc/ssh/guest-agent/trusted-ca.pub".into()),
        ignore_user_keys_group: Some("guest-agent-oslogin".into()),
        two_factor_group: None,
        two_factor_legacy: None,
        ..SshdSettings::default()
    }
}

fn userdb_chain() -> Chain {
    Chain {
        command: "/usr/bin/userdbctl ssh-authorized-keys %u".into(),
        user: "root".into(),
    }
}

/// The (keyword, value) sshd would use for `keyword` with `placed` written over `fs`.
fn winner(fs: &FakeFs, placed: &Placed, keyword: &str) -> Option<(String, bool)> {
    let ours = [Path::new(DROPIN), Path::new(EARLY)];
    let view = Overlay {
        base: fs,
        main_path: Path::new(MAIN),
        main: "",
        plan: Some(&placed.plan),
        ours: &ours,
    };
    flatten(Path::new(MAIN), Path::new("/etc/ssh"), &ours, &view)
        .into_iter()
        .find(|l| l.keyword == keyword && !l.in_match)
        .map(|l| (l.value, l.managed))
}

#[test]
fn without_another_command_nothing_changes() {
    let fs = FakeFs::new(&[(MAIN, DEBIAN_12)]);
    let placed = plan(DEBIAN_12, &fs, &places(true), &settings()).unwrap();
    assert_eq!(placed.layout, Layout::DropIn);
    assert_eq!(placed.rival, None);
    assert_eq!(placed.settings, settings());
    assert_eq!(placed.plan.main, DEBIAN_12);
    assert!(placed.plan.early.is_none());
    assert!(
        placed
            .plan
            .dropin
            .unwrap()
            .contains("AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f %t %k\nAuthorizedKeysCommandUser nobody\n")
    );
}

#[test]
fn systemd_userdbd_drop_in_is_chained_from_an_earlier_drop_in() {
    let fs = FakeFs::new(&[(MAIN, DEBIAN_12), (USERDB, USERDB_TEXT)]);
    let placed = plan(DEBIAN_12, &fs, &places(true), &settings()).unwrap();
    assert_eq!(placed.layout, Layout::EarlyDropIn);
    let rival = placed.rival.clone().unwrap();
    assert_eq!(rival.chain, userdb_chain());
    assert_eq!(rival.place, format!("{USERDB}:2"));
    assert_eq!(placed.plan.main, DEBIAN_12, "sshd_config untouched");
    assert!(placed.plan.dropin.is_none(), "the 60- file goes (migrated)");
    let early = placed.plan.early.clone().unwrap();
    assert!(
        early.contains(
            "AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f %t %k --chain-user root \
             -- /usr/bin/userdbctl ssh-authorized-keys %u\nAuthorizedKeysCommandUser root\n"
        ),
        "{early}"
    );
    assert!(early.contains("AuthorizedPrincipalsCommandUser nobody\n"));
    for k in OURS_FIRST {
        assert_eq!(winner(&fs, &placed, k).map(|w| w.1), Some(true), "{k}");
    }
    assert_eq!(placed.shadowed_principals, None);
}

#[test]
fn a_restart_finds_the_same_rival_behind_our_own_lines() {
    let fs = FakeFs::new(&[(MAIN, DEBIAN_12), (USERDB, USERDB_TEXT)]);
    let first = plan(DEBIAN_12, &fs, &places(true), &settings()).unwrap();
    let written = FakeFs::new(&[
        (MAIN, DEBIAN_12),
        (USERDB, USERDB_TEXT),
        (EARLY, first.plan.early.as_deref().unwrap()),
    ]);
    let again = plan(DEBIAN_12, &written, &places(true), &settings()).unwrap();
    assert_eq!(again, first);
    // An old agent's 60- file beside it changes nothing either: it is ours.
    let old = FakeFs::new(&[
        (MAIN, DEBIAN_12),
        (USERDB, USERDB_TEXT),
        (
            DROPIN,
            &crate::host::sshd::dropin_text(&settings()).unwrap(),
        ),
    ]);
    assert_eq!(
        plan(DEBIAN_12, &old, &places(true), &settings()).unwrap(),
        first
    );
}

#[test]
fn a_rival_with_our_user_keeps_ours_and_one_after_ours_stays_in_the_usual_drop_in() {
    let eic = "AuthorizedKeysCommand /usr/share/ec2-instance-connect/eic_run_authorized_keys %u %f\n\
               AuthorizedKeysCommandUser ec2-instance-connect\n";
    let fs = FakeFs::new(&[
        (MAIN, DEBIAN_12),
        ("/etc/ssh/sshd_config.d/90-ec2-instance-connect.conf", eic),
    ]);
    let placed = plan(DEBIAN_12, &fs, &places(true), &settings()).unwrap();
    assert_eq!(placed.layout, Layout::DropIn, "ours sorts first already");
    let dropin = placed.plan.dropin.unwrap();
    assert!(dropin.contains(
        "authorized-keys %u %f %t %k --chain-user ec2-instance-connect -- \
         /usr/share/ec2-instance-connect/eic_run_authorized_keys %u %f\nAuthorizedKeysCommandUser root\n"
    ));
    // Same user as ours: no root needed.
    let nobody = "AuthorizedKeysCommand /usr/local/bin/keys\nAuthorizedKeysCommandUser nobody\n";
    let fs = FakeFs::new(&[
        (MAIN, DEBIAN_12),
        ("/etc/ssh/sshd_config.d/10-x.conf", nobody),
    ]);
    let placed = plan(DEBIAN_12, &fs, &places(true), &settings()).unwrap();
    let d = directives(&placed.settings).unwrap();
    assert!(
        d.contains(&(
            "AuthorizedKeysCommand",
            "/usr/bin/guest-agent authorized-keys %u %f %t %k --chain-user nobody -- /usr/local/bin/keys"
                .into()
        ))
    );
    assert!(d.contains(&("AuthorizedKeysCommandUser", "nobody".into())));
}

#[test]
fn a_rival_in_the_main_config_before_the_include_gets_our_block_above_it() {
    // Google's agent's block at the top of sshd_config (its leftovers).
    let main = format!(
        "#### Google OS Login control. Do not edit this section. ####\n\
         AuthorizedKeysCommand /usr/bin/google_authorized_keys\n\
         AuthorizedKeysCommandUser root\n\
         AuthorizedPrincipalsCommand /usr/bin/google_authorized_principals %u %k\n\
         AuthorizedPrincipalsCommandUser root\n\
         #### End Google OS Login control section. ####\n{DEBIAN_12}"
    );
    let fs = FakeFs::new(&[(MAIN, &main)]);
    let placed = plan(&main, &fs, &places(true), &settings()).unwrap();
    assert_eq!(placed.layout, Layout::TopBlock);
    assert_eq!(
        placed.rival.as_ref().unwrap().chain.command,
        "/usr/bin/google_authorized_keys"
    );
    assert_eq!(placed.shadowed_principals, Some(format!("{MAIN}:4")));
    assert!(placed.plan.main.starts_with(&format!(
        "{BEGIN_MARK}\nAuthorizedPrincipalsCommand /usr/bin/guest-agent"
    )));
    assert!(placed.plan.dropin.is_none() && placed.plan.early.is_none());
    // The Match block is at the end, so it captures nothing of the operator's.
    assert!(placed.plan.main.ends_with(
        "Match Group guest-agent-oslogin\n    AuthorizedKeysFile none\n# END guest-agent\n"
    ));
    assert!(
        !render_globals(&placed.settings, false)
            .unwrap()
            .contains("Match")
    );
    // Off again: byte for byte.
    assert_eq!(
        plan_disable(&placed.plan.main, Path::new(MAIN))
            .unwrap()
            .main,
        main
    );
    // And planning again over what was written changes nothing.
    // (the rival's line is named where it is now, below our block).
    let written = FakeFs::new(&[(MAIN, &placed.plan.main)]);
    let again = plan(&placed.plan.main, &written, &places(true), &settings()).unwrap();
    assert_eq!(
        (&again.plan, &again.settings),
        (&placed.plan, &placed.settings)
    );
    assert_eq!(again.rival.unwrap().place, format!("{MAIN}:9"));
}

#[test]
fn a_drop_in_sorting_before_our_early_name_or_no_include_gets_a_top_block() {
    let fs = FakeFs::new(&[
        (MAIN, DEBIAN_12),
        ("/etc/ssh/sshd_config.d/0.conf", USERDB_TEXT),
    ]);
    let placed = plan(DEBIAN_12, &fs, &places(true), &settings()).unwrap();
    assert_eq!(placed.layout, Layout::TopBlock);
    // No Include: a block at the end wins over a rival after... nothing; one before it: top.
    let main = "Port 22\nAuthorizedKeysCommand /usr/bin/userdbctl ssh-authorized-keys %u\nAuthorizedKeysCommandUser root\n";
    let fs = FakeFs::new(&[(MAIN, main)]);
    let placed = plan(main, &fs, &places(false), &settings()).unwrap();
    assert_eq!(placed.layout, Layout::TopBlock);
    assert_eq!(placed.rival.unwrap().place, format!("{MAIN}:2"));
    let main = "Port 22\n";
    let fs = FakeFs::new(&[(MAIN, main)]);
    let placed = plan(main, &fs, &places(false), &settings()).unwrap();
    assert_eq!(placed.layout, Layout::MainBlock);
    assert_eq!(
        placed.plan.main,
        crate::host::sshd::append_block(main, &render(&settings(), false).unwrap())
    );
}

#[test]
fn what_is_not_a_rival_and_what_cannot_be_chained() {
    type Expect = fn(&Found) -> bool;
    let cases: [(&str, Expect); 6] = [
        (
            "AuthorizedKeysCommand none\nAuthorizedKeysCommandUser root\n",
            |f| *f == Found::Nothing,
        ),
        (
            "AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u\nAuthorizedKeysCommandUser root\n",
            |f| *f == Found::Nothing,
        ),
        ("AuthorizedKeysCommand /usr/bin/x %u\n", |f| {
            matches!(f, Found::Inert { .. })
        }),
        (
            "AuthorizedKeysCommand /usr/bin/x \"%u\"\nAuthorizedKeysCommandUser root\n",
            |f| matches!(f, Found::Unusable { .. }),
        ),
        (
            "AuthorizedKeysCommand x %u\nAuthorizedKeysCommandUser root\n",
            |f| matches!(f, Found::Unusable { .. }),
        ),
        (
            "Match User bob\n  AuthorizedKeysCommand /usr/bin/x\n  AuthorizedKeysCommandUser root\n",
            |f| *f == Found::Nothing,
        ),
    ];
    for (text, ok) in cases {
        let fs = FakeFs::new(&[
            (MAIN, DEBIAN_12),
            ("/etc/ssh/sshd_config.d/10-x.conf", text),
        ]);
        let ours = [Path::new(DROPIN), Path::new(EARLY)];
        let lines = flatten(Path::new(MAIN), Path::new("/etc/ssh"), &ours, &fs);
        let found = find(&lines, "/usr/bin/guest-agent");
        assert!(ok(&found), "{text}: {found:?}");
    }
    // An unusable one keeps OS Login off with the line named.
    let fs = FakeFs::new(&[
        (MAIN, DEBIAN_12),
        (
            "/etc/ssh/sshd_config.d/10-x.conf",
            "AuthorizedKeysCommand /usr/bin/x '%u'\nAuthorizedKeysCommandUser root\n",
        ),
    ]);
    let err = plan(DEBIAN_12, &fs, &places(true), &settings()).unwrap_err();
    assert!(
        err.to_string()
            .contains("/etc/ssh/sshd_config.d/10-x.conf:1"),
        "{err}"
    );
    // Blanks are normalised the way sshd -T prints the command.
    let fs = FakeFs::new(&[
        (MAIN, DEBIAN_12),
        (
            "/etc/ssh/sshd_config.d/10-x.conf",
            "AuthorizedKeysCommand=/usr/bin/x   %u\t%%\nAuthorizedKeysCommandUser root\n",
        ),
    ]);
    let placed = plan(DEBIAN_12, &fs, &places(true), &settings()).unwrap();
    assert_eq!(placed.rival.unwrap().chain.command, "/usr/bin/x %u %%");
}

#[test]
fn known_providers_are_named_by_their_program() {
    use super::provider;
    assert!(provider("/usr/bin/google_authorized_keys").is_some_and(|p| p.contains("Google")));
    assert!(
        provider("/usr/bin/google_authorized_keys_sk %u").is_some_and(|p| p.contains("takeover"))
    );
    assert_eq!(
        provider("/usr/share/ec2-instance-connect/eic_run_authorized_keys %u %f"),
        Some("AWS EC2 Instance Connect")
    );
    assert_eq!(
        provider("/usr/bin/userdbctl ssh-authorized-keys %u"),
        Some("systemd-userdbd")
    );
    assert_eq!(provider("/usr/local/bin/my-keys %u"), None);
}

/// A line running the agent's other program (an sshd_config written by hand, or by a version
/// that named `guest-agent` before `guest-agent-sshd` existed) is not another provider's: it
/// is never chained to ourselves.
#[test]
fn the_agents_other_program_is_ours_too() {
    for (program, helper, ours) in [
        ("/usr/bin/guest-agent", "/usr/bin/guest-agent-sshd", true),
        ("/usr/bin/guest-agent-sshd", "/usr/bin/guest-agent", true),
        (
            "/usr/bin/guest-agent-sshd",
            "/usr/bin/guest-agent-sshd",
            true,
        ),
        ("/srv/x/custom", "/srv/x/custom", true),
        ("/opt/bin/guest-agent", "/usr/bin/guest-agent-sshd", false),
        (
            "/usr/bin/guest-agent-other",
            "/usr/bin/guest-agent-sshd",
            false,
        ),
        ("/usr/bin/userdbctl", "/usr/bin/guest-agent-sshd", false),
    ] {
        assert_eq!(is_ours(program, helper), ours, "{program} vs {helper}");
    }
    let fs = FakeFs::new(&[
        (MAIN, DEBIAN_12),
        (
            "/etc/ssh/sshd_config.d/10-x.conf",
            "AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f\nAuthorizedKeysCommandUser root\n",
        ),
    ]);
    let ours = [Path::new(DROPIN), Path::new(EARLY)];
    let lines = flatten(Path::new(MAIN), Path::new("/etc/ssh"), &ours, &fs);
    assert_eq!(find(&lines, "/usr/bin/guest-agent-sshd"), Found::Nothing);
}
