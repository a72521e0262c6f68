//! Tests of the pure part: rendering, Include coverage, block edits, plans.

use super::*;

const DEBIAN_12: &str = include_str!("testdata/debian12_sshd_config");

fn full() -> SshdSettings {
    SshdSettings {
        trusted_ca_file: Some("/etc/ssh/guest-agent-ca.pub".into()),
        ignore_user_keys_group: Some("oslogin-users".into()),
        two_factor_group: None,
        two_factor_legacy: None,
        ..SshdSettings::default()
    }
}

#[test]
fn renders_principals_first_and_match_last() {
    let text = render(&full(), false).unwrap();
    assert_eq!(
        text,
        "AuthorizedPrincipalsCommand /usr/bin/guest-agent authorized-principals %u %k\n\
         AuthorizedPrincipalsCommandUser nobody\n\
         AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f %t %k\n\
         AuthorizedKeysCommandUser nobody\n\
         TrustedUserCAKeys /etc/ssh/guest-agent-ca.pub\n\
         Match Group oslogin-users\n    AuthorizedKeysFile none\n"
    );
    let after_match = render(&SshdSettings::default(), true).unwrap();
    assert!(after_match.starts_with("Match all\nAuthorizedPrincipalsCommand "));
    assert!(!after_match.contains("Group"));
}

#[test]
fn refuses_settings_sshd_would_misread() {
    let cases = [
        SshdSettings {
            keys_command: "guest-agent authorized-keys %u".into(),
            ..SshdSettings::default()
        },
        SshdSettings {
            principals_command: "/usr/bin/x \"%u\"".into(),
            ..SshdSettings::default()
        },
        SshdSettings {
            keys_command: "/usr/bin/x %u\nPermitRootLogin yes".into(),
            ..SshdSettings::default()
        },
        SshdSettings {
            command_user: "root nobody".into(),
            ..SshdSettings::default()
        },
        SshdSettings {
            trusted_ca_file: Some("relative/ca.pub".into()),
            ..SshdSettings::default()
        },
        SshdSettings {
            ignore_user_keys_group: Some("Bad Group".into()),
            two_factor_group: None,
            two_factor_legacy: None,
            ..SshdSettings::default()
        },
    ];
    for s in cases {
        let err = render(&s, false).unwrap_err();
        assert!(matches!(err, SshdError::Setting { .. }), "{err}");
    }
    // Runs of blanks are normalised the way sshd -T prints them.
    let s = SshdSettings {
        keys_command: "/usr/bin/x   %u\t%f".into(),
        ..SshdSettings::default()
    };
    assert!(
        render(&s, false)
            .unwrap()
            .contains("AuthorizedKeysCommand /usr/bin/x %u %f\n")
    );
}

#[test]
fn include_coverage() {
    let etc = Path::new("/etc/ssh");
    let dropin = Path::new("/etc/ssh/sshd_config.d/60-guest-agent.conf");
    assert!(include_covers(DEBIAN_12, etc, dropin));
    let yes = [
        "Include /etc/ssh/sshd_config.d/*.conf",
        "include sshd_config.d/*",
        "Include=/etc/ssh/sshd_config.d/[0-9]?-*.conf",
        "  Include /x/y.conf \"/etc/ssh/sshd_config.d/*.conf\"",
    ];
    for text in yes {
        assert!(include_covers(text, etc, dropin), "{text}");
    }
    let no = [
        "#Include /etc/ssh/sshd_config.d/*.conf",
        "Include /etc/ssh/sshd_config.d/*.cfg",
        "Include /etc/ssh/sshd_config.d/[!6]*.conf",
        "Include /etc/ssh/*.conf",
        "Match User x\nInclude /etc/ssh/sshd_config.d/*.conf",
        "",
    ];
    for text in no {
        assert!(!include_covers(text, etc, dropin), "{text}");
    }
    // A wildcard does not match a leading dot (our temporary files).
    let temp = Path::new("/etc/ssh/sshd_config.d/.60-guest-agent.conf.tmp-1.conf");
    assert!(!include_covers(DEBIAN_12, etc, temp));
}

#[test]
fn block_round_trips_byte_for_byte() {
    let path = Path::new("/etc/ssh/sshd_config");
    let body = render(&full(), false).unwrap();
    for text in ["", "Port 22\n", "Port 22", "Port 22\n\n", DEBIAN_12] {
        let with = append_block(text, &body);
        assert!(
            with.contains(BEGIN_MARK)
                && with.ends_with(&format!("{END_MARK}\n"))
                    == (text.is_empty() || text.ends_with('\n'))
        );
        assert_eq!(strip_block(&with, path).unwrap(), text, "{text:?}");
        // Re-appending after a strip gives the same text again (idempotent enable).
        let again = append_block(&strip_block(&with, path).unwrap(), &body);
        assert_eq!(again, with);
    }
    // Lines an operator adds after our block survive its removal.
    let with = format!("{}PermitRootLogin no\n", append_block("Port 22\n", &body));
    assert_eq!(
        strip_block(&with, path).unwrap(),
        "Port 22\nPermitRootLogin no\n"
    );
}

#[test]
fn broken_markers_are_refused() {
    let path = Path::new("/etc/ssh/sshd_config");
    for text in [
        format!("{BEGIN_MARK}\nPort 22\n"),
        format!("Port 22\n{END_MARK}\n"),
        format!("{BEGIN_MARK}\n{BEGIN_MARK}\n{END_MARK}\n"),
    ] {
        let err = strip_block(&text, path).unwrap_err();
        assert!(err.to_string().contains("/etc/ssh/sshd_config"), "{err}");
    }
}

#[test]
fn plans() {
    let main_path = Path::new("/etc/ssh/sshd_config");
    let etc = Path::new("/etc/ssh");
    let dropin = Path::new("/etc/ssh/sshd_config.d/60-guest-agent.conf");
    let s = full();

    let (layout, plan) = plan_enable(DEBIAN_12, main_path, &s, etc, dropin, true).unwrap();
    assert_eq!(layout, Layout::DropIn);
    assert_eq!(plan.main, DEBIAN_12);
    assert!(plan.dropin.unwrap().starts_with("# Managed by guest-agent"));

    // No drop-in directory: a block at the end of the main config.
    let (layout, plan) = plan_enable(DEBIAN_12, main_path, &s, etc, dropin, false).unwrap();
    assert_eq!(layout, Layout::MainBlock);
    assert!(plan.main.starts_with(DEBIAN_12) && plan.dropin.is_none());
    assert!(
        !plan.main.contains("Match all"),
        "Debian's example Match is commented out"
    );

    // An operator's Match before us: our block starts with `Match all`.
    let main = "Port 22\nMatch User anoncvs\n\tX11Forwarding no";
    let (_, plan) = plan_enable(main, main_path, &s, etc, dropin, true).unwrap();
    assert!(
        plan.main
            .starts_with(&format!("{main}\n{BEGIN_MARK}\nMatch all\n"))
    );
    assert_eq!(plan_disable(&plan.main, main_path).unwrap().main, main);

    // Moving from a block to the drop-in removes the block (Include added since).
    let old = append_block(
        "Include /etc/ssh/sshd_config.d/*.conf\n",
        &render(&s, false).unwrap(),
    );
    let (layout, plan) = plan_enable(&old, main_path, &s, etc, dropin, true).unwrap();
    assert_eq!(layout, Layout::DropIn);
    assert_eq!(plan.main, "Include /etc/ssh/sshd_config.d/*.conf\n");
}

#[test]
fn two_step_verification_adds_its_match_and_on_an_old_sshd_the_global_it_needs() {
    let mut s = full();
    s.two_factor_group = Some("oslogin-users".into());
    let text = render(&s, false).unwrap();
    assert!(text.ends_with(
        "Match Group oslogin-users\n    AuthorizedKeysFile none\n\
         Match Group oslogin-users User *,!sa_*\n    AuthenticationMethods publickey,keyboard-interactive\n    KbdInteractiveAuthentication yes\n"
    ), "{text}");
    assert!(!text.contains("ChallengeResponseAuthentication"));
    s.two_factor_legacy = Some(LegacyKbdInt {
        keep_others_off: false,
    });
    let text = render(&s, false).unwrap();
    assert!(
        text.contains("AuthorizedKeysCommandUser nobody\nChallengeResponseAuthentication yes\n"),
        "{text}"
    );
    assert!(!text.contains("Match all"));
    s.two_factor_legacy = Some(LegacyKbdInt {
        keep_others_off: true,
    });
    let text = render(&s, false).unwrap();
    assert!(text.ends_with("KbdInteractiveAuthentication yes\nMatch all\n    AuthenticationMethods publickey gssapi-with-mic hostbased\n"), "{text}");
    // Without two-step verification the legacy setting writes nothing.
    s.two_factor_group = None;
    assert_eq!(render(&s, false).unwrap(), render(&full(), false).unwrap());
}

#[test]
fn the_operators_challenge_response_is_the_first_global_line_not_ours() {
    let line = |kw: &str, v: &str, in_match: bool, managed: bool| scan::ConfigLine {
        file: "/etc/ssh/sshd_config".into(),
        number: 1,
        keyword: kw.into(),
        value: v.into(),
        in_match,
        managed,
    };
    assert!(operator_challenge_response(&[]), "OpenSSH's default");
    assert!(!operator_challenge_response(&[
        line("challengeresponseauthentication", "yes", false, true),
        line("challengeresponseauthentication", "yes", true, false),
        line("challengeresponseauthentication", "no", false, false),
        line("challengeresponseauthentication", "yes", false, false),
    ]));
}
