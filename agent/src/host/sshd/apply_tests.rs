//! Tests against the real sshd (Debian's 9.2p1 here). Each runs sshd through a wrapper that
//! gives it a private mount namespace with a tmpfs on /run (sshd insists on /run/sshd) and
//! the test's own /etc/passwd and /etc/group (so `Match Group` can be checked with `-C`), and
//! points it at a config in a temp dir with its own host key. Skipped loudly without sshd,
//! unshare or root.

use super::*;
use crate::host::files::tests::{TempDir, is_root};
use crate::host::sshd::{BEGIN_MARK, Layout};

const DEBIAN_12: &str = include_str!("testdata/debian12_sshd_config");
const GROUP: &str = "oslogin-users";

struct Env {
    tmp: TempDir,
    paths: SshdPaths,
}

fn env(main: impl FnOnce(&Path) -> String) -> Option<Env> {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() || !Path::new("/usr/bin/unshare").exists() || !is_root() {
        eprintln!("SKIPPED: needs /usr/sbin/sshd, /usr/bin/unshare and root");
        return None;
    }
    let tmp = TempDir::new("sshd");
    let dir = tmp.0.clone();
    let key = dir.join("hk");
    let out = command::run(
        Path::new("/usr/bin/ssh-keygen"),
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            &key.to_string_lossy(),
        ],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.status.success(), "{}", out.message());
    std::fs::create_dir(dir.join("sshd_config.d")).unwrap();
    let mut passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd.push_str("gauser:x:54321:54321::/nonexistent:/bin/sh\n");
    passwd.push_str("plain:x:54322:54322::/nonexistent:/bin/sh\n");
    passwd.push_str("anoncvs:x:54323:54323::/nonexistent:/bin/sh\n");
    let mut group = std::fs::read_to_string("/etc/group").unwrap();
    group.push_str(&format!("{GROUP}:x:54400:gauser\n"));
    std::fs::write(dir.join("passwd"), passwd).unwrap();
    std::fs::write(dir.join("group"), group).unwrap();
    let wrapper = dir.join("sshd");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /usr/bin/unshare -m --propagation private /bin/sh -c '\
             mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd && \
             mount --bind \"$0/passwd\" /etc/passwd && mount --bind \"$0/group\" /etc/group && \
             exec /usr/sbin/sshd \"$@\"' {} \"$@\"\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dir.join("sshd_config"), main(&dir)).unwrap();
    let paths = SshdPaths {
        main_config: dir.join("sshd_config"),
        dropin: dir.join("sshd_config.d/60-guest-agent.conf"),
        early_dropin: dir.join("sshd_config.d/00-guest-agent.conf"),
        ssh_dir: dir.clone(),
        sshd: wrapper,
        privsep_dir: None,
        reload: ReloadTarget {
            systemd_marker: dir.join("no-systemd"),
            pid_file: dir.join("sshd.pid"),
            ..ReloadTarget::sshd()
        },
        timeout: Duration::from_secs(10),
    };
    Some(Env { tmp, paths })
}

/// Debian's default config, its Include pointed at the temp drop-in dir, plus our host key.
fn debian(dir: &Path) -> String {
    DEBIAN_12.replace(
        "Include /etc/ssh/sshd_config.d/*.conf\n",
        &format!(
            "Include {}/sshd_config.d/*.conf\nHostKey {}/hk\n",
            dir.display(),
            dir.display()
        ),
    )
}

fn settings() -> SshdSettings {
    SshdSettings {
        trusted_ca_file: Some("/etc/ssh/guest-agent-ca.pub".into()),
        ignore_user_keys_group: Some(GROUP.into()),
        two_factor_group: None,
        two_factor_legacy: None,
        ..SshdSettings::default()
    }
}

/// `sshd -T` (for the connection `user`, when given), as lines.
fn effective_for(env: &Env, user: Option<&str>) -> Vec<String> {
    let mut args = vec!["-T".to_string()];
    if let Some(user) = user {
        args.extend(["-C".into(), format!("user={user},host=h,addr=127.0.0.1")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sshd(&env.paths, &args).unwrap();
    assert!(out.status.success(), "{}", out.message());
    out.stdout.lines().map(String::from).collect()
}

fn has(lines: &[String], line: &str) -> bool {
    lines.iter().any(|l| l == line)
}

#[test]
fn debian_default_uses_the_dropin_and_round_trips() {
    let Some(env) = env(debian) else { return };
    let before = std::fs::read(&env.paths.main_config).unwrap();
    let report = enable(&env.paths, &settings()).unwrap();
    assert_eq!(report.layout, Some(Layout::DropIn));
    assert_eq!(report.changed, std::slice::from_ref(&env.paths.dropin));
    assert_eq!(
        report.reloaded,
        Some(Reloaded::NotRunning),
        "no pid file: not running"
    );
    assert_eq!(std::fs::read(&env.paths.main_config).unwrap(), before);

    // The bug 3574 check: the principals command comes out of the effective config.
    let global = effective_for(&env, None);
    let principals = "authorizedprincipalscommand /usr/bin/guest-agent authorized-principals %u %k";
    assert!(has(&global, principals), "{global:?}");
    assert!(has(
        &global,
        "authorizedkeyscommand /usr/bin/guest-agent authorized-keys %u %f %t %k"
    ));
    assert!(has(
        &global,
        "trustedusercakeys /etc/ssh/guest-agent-ca.pub"
    ));

    // The Match Group block applies to members only, and the main config's directives after
    // the Include still apply to members (the Match ends with the drop-in).
    let member = effective_for(&env, Some("gauser"));
    assert!(has(&member, "authorizedkeysfile none"), "{member:?}");
    assert!(has(&member, "x11forwarding yes") && has(&member, "kbdinteractiveauthentication no"));
    assert!(has(&member, principals));
    let other = effective_for(&env, Some("plain"));
    assert!(has(
        &other,
        "authorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2"
    ));

    let again = enable(&env.paths, &settings()).unwrap();
    assert!(
        again.changed.is_empty() && again.reloaded.is_none(),
        "{again:?}"
    );

    let off = disable(&env.paths).unwrap();
    assert_eq!(off.changed, std::slice::from_ref(&env.paths.dropin));
    assert_eq!(std::fs::read(&env.paths.main_config).unwrap(), before);
    assert_eq!(
        std::fs::read_dir(env.tmp.join("sshd_config.d"))
            .unwrap()
            .count(),
        0
    );
    assert!(!has(&effective_for(&env, None), principals));
}

#[test]
fn config_without_include_gets_a_block_and_round_trips() {
    let main = |dir: &Path| {
        format!(
            "HostKey {}/hk\nPasswordAuthentication no\nMatch User anoncvs\n\tPermitTTY no",
            dir.display()
        )
    };
    let Some(env) = env(main) else { return };
    let before = std::fs::read(&env.paths.main_config).unwrap();
    let report = enable(&env.paths, &settings()).unwrap();
    assert_eq!(report.layout, Some(Layout::MainBlock));
    assert_eq!(report.changed, std::slice::from_ref(&env.paths.main_config));
    let text = std::fs::read_to_string(&env.paths.main_config).unwrap();
    assert!(
        text.contains(&format!("PermitTTY no\n{BEGIN_MARK}\nMatch all\n")),
        "{text}"
    );

    let global = effective_for(&env, None);
    assert!(has(
        &global,
        "authorizedprincipalscommand /usr/bin/guest-agent authorized-principals %u %k"
    ));
    let cvs = effective_for(&env, Some("anoncvs"));
    assert!(has(&cvs, "permittty no") && has(&cvs, "authorizedkeyscommanduser nobody"));
    let member = effective_for(&env, Some("gauser"));
    assert!(has(&member, "authorizedkeysfile none") && has(&member, "passwordauthentication no"));
    assert!(
        has(&member, "permittty yes"),
        "the anoncvs block stays anoncvs's"
    );

    disable(&env.paths).unwrap();
    assert_eq!(std::fs::read(&env.paths.main_config).unwrap(), before);
}

#[test]
fn rejected_change_is_undone_exactly() {
    let Some(env) = env(debian) else { return };
    let before = std::fs::read(&env.paths.main_config).unwrap();
    std::fs::write(&env.paths.dropin, "# an older version\n").unwrap();
    std::fs::write(
        env.tmp.join("sshd_config.d/10-broken.conf"),
        "NoSuchDirective yes\n",
    )
    .unwrap();
    let err = enable(&env.paths, &settings()).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, SshdError::Invalid { .. }), "{message}");
    assert!(
        message.contains("60-guest-agent.conf") && message.contains("NoSuchDirective"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(&env.paths.dropin).unwrap(),
        "# an older version\n"
    );
    assert_eq!(std::fs::read(&env.paths.main_config).unwrap(), before);
    let names = std::fs::read_dir(env.tmp.join("sshd_config.d"))
        .unwrap()
        .count();
    assert_eq!(names, 2, "no temporary file left");
}

#[test]
fn directives_set_earlier_are_reported_and_undone() {
    let Some(env) = env(debian) else { return };
    let other = env.tmp.join("sshd_config.d/10-other.conf");
    // Not one of the lines the agent places first (an operator's CA): refused, undone.
    std::fs::write(&other, "TrustedUserCAKeys /etc/ssh/other-ca.pub\n").unwrap();
    let err = enable(&env.paths, &settings()).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, SshdError::NotInEffect { .. }), "{message}");
    assert!(
        message.contains("`TrustedUserCAKeys /etc/ssh/other-ca.pub`"),
        "{message}"
    );
    assert!(!env.paths.dropin.exists() && !env.paths.early_dropin.exists());
    // A lone AuthorizedKeysCommandUser earlier is overtaken by the early drop-in.
    std::fs::write(&other, "AuthorizedKeysCommandUser root\n").unwrap();
    let report = enable(&env.paths, &settings()).unwrap();
    assert_eq!(report.layout, Some(Layout::EarlyDropIn));
    assert_eq!(report.chained, None);
    assert!(has(
        &effective_for(&env, None),
        "authorizedkeyscommanduser nobody"
    ));
}

/// systemd-userdbd's drop-in sorts before ours: the agent moves its drop-in before it (the
/// 60- file goes), chains its command with root as the user, and off again leaves the
/// rival's file as it was and in effect.
#[test]
fn another_keys_command_in_an_earlier_drop_in_is_chained_and_comes_back() {
    let Some(env) = env(debian) else { return };
    let plain = enable(&env.paths, &settings()).unwrap();
    assert_eq!(plain.layout, Some(Layout::DropIn));
    assert!(env.paths.dropin.exists());
    let userdb = env.tmp.join("sshd_config.d/20-systemd-userdb.conf");
    let text = "AuthorizedKeysCommand /usr/bin/userdbctl ssh-authorized-keys %u\n\
                AuthorizedKeysCommandUser root\n";
    std::fs::write(&userdb, text).unwrap();
    let main_before = std::fs::read(&env.paths.main_config).unwrap();
    let report = enable(&env.paths, &settings()).unwrap();
    assert_eq!(report.layout, Some(Layout::EarlyDropIn));
    let chained = report.chained.unwrap();
    assert_eq!(
        chained.chain.command,
        "/usr/bin/userdbctl ssh-authorized-keys %u"
    );
    assert_eq!(chained.chain.user, "root");
    assert!(!env.paths.dropin.exists(), "the 60- file was migrated");
    assert!(env.paths.early_dropin.exists());
    let on = effective_for(&env, None);
    assert!(
        has(
            &on,
            "authorizedkeyscommand /usr/bin/guest-agent authorized-keys %u %f %t %k --chain-user root -- /usr/bin/userdbctl ssh-authorized-keys %u"
        ),
        "{on:?}"
    );
    assert!(has(&on, "authorizedkeyscommanduser root"));
    assert!(has(&on, "authorizedprincipalscommanduser nobody"));
    assert!(has(
        &on,
        "authorizedprincipalscommand /usr/bin/guest-agent authorized-principals %u %k"
    ));
    // Again: nothing to do.
    assert!(enable(&env.paths, &settings()).unwrap().changed.is_empty());
    let report = disable(&env.paths).unwrap();
    assert_eq!(
        report.keys_command_after.as_deref(),
        Some("/usr/bin/userdbctl ssh-authorized-keys %u")
    );
    assert!(!env.paths.dropin.exists() && !env.paths.early_dropin.exists());
    assert_eq!(std::fs::read_to_string(&userdb).unwrap(), text);
    assert_eq!(std::fs::read(&env.paths.main_config).unwrap(), main_before);
    let off = effective_for(&env, None);
    assert!(has(
        &off,
        "authorizedkeyscommand /usr/bin/userdbctl ssh-authorized-keys %u"
    ));
    assert!(has(&off, "authorizedkeyscommanduser root"));
}

/// Another keys command above the Include in sshd_config: our block goes above it.
#[test]
fn another_keys_command_above_the_include_gets_our_block_above_it() {
    let main = |dir: &Path| {
        format!(
            "AuthorizedKeysCommand /usr/bin/google_authorized_keys\nAuthorizedKeysCommandUser root\n{}",
            debian(dir)
        )
    };
    let Some(env) = env(main) else { return };
    let before = std::fs::read(&env.paths.main_config).unwrap();
    let report = enable(&env.paths, &settings()).unwrap();
    assert_eq!(report.layout, Some(Layout::TopBlock));
    let on = effective_for(&env, None);
    assert!(
        has(
            &on,
            "authorizedkeyscommand /usr/bin/guest-agent authorized-keys %u %f %t %k --chain-user root -- /usr/bin/google_authorized_keys"
        ),
        "{on:?}"
    );
    assert!(has(
        &on,
        "authorizedprincipalscommand /usr/bin/guest-agent authorized-principals %u %k"
    ));
    // The Match block at the end still applies to OS Login users only.
    assert!(has(
        &effective_for(&env, Some("gauser")),
        "authorizedkeysfile none"
    ));
    assert!(!has(
        &effective_for(&env, Some("plain")),
        "authorizedkeysfile none"
    ));
    disable(&env.paths).unwrap();
    assert_eq!(std::fs::read(&env.paths.main_config).unwrap(), before);
    assert!(has(
        &effective_for(&env, None),
        "authorizedkeyscommand /usr/bin/google_authorized_keys"
    ));
}

#[test]
fn keys_command_first_loses_the_principals_command_on_this_sshd() {
    let Some(env) = env(debian) else { return };
    let wrong_order = "AuthorizedKeysCommand /usr/bin/k %u\nAuthorizedKeysCommandUser nobody\n\
                       AuthorizedPrincipalsCommand /usr/bin/p %u\nAuthorizedPrincipalsCommandUser nobody\n";
    std::fs::write(&env.paths.dropin, wrong_order).unwrap();
    let out = sshd(&env.paths, &["-T"]).unwrap();
    let expected = [("AuthorizedPrincipalsCommand", "/usr/bin/p %u".to_string())];
    let version = sshd(&env.paths, &["-V"]).unwrap().message();
    match check_in_effect(&out.stdout, &expected, &env.paths.dropin) {
        Err(SshdError::NotInEffect { found, .. }) => assert_eq!(found, "none"),
        other => eprintln!("{version}: bug 3574 not present ({other:?})"),
    }
}

/// A symlinked sshd_config (config managers do this): our block goes into the file it points
/// at, the link stays a link, and disabling gives the target back byte for byte.
#[test]
fn a_symlinked_main_config_is_edited_where_it_points() {
    let main = |dir: &Path| format!("HostKey {}/hk\nPasswordAuthentication no\n", dir.display());
    let Some(env) = env(main) else { return };
    let target = env.paths.main_config.with_file_name("sshd_config.managed");
    std::fs::rename(&env.paths.main_config, &target).unwrap();
    std::os::unix::fs::symlink("sshd_config.managed", &env.paths.main_config).unwrap();
    let before = std::fs::read(&target).unwrap();
    let report = enable(&env.paths, &settings()).unwrap();
    assert_eq!(report.layout, Some(Layout::MainBlock));
    let is_link = || {
        std::fs::symlink_metadata(&env.paths.main_config)
            .unwrap()
            .file_type()
            .is_symlink()
    };
    assert!(is_link(), "the link was replaced by a file");
    assert!(
        std::fs::read_to_string(&target)
            .unwrap()
            .contains(BEGIN_MARK)
    );
    assert!(has(
        &effective_for(&env, None),
        "authorizedkeyscommand /usr/bin/guest-agent authorized-keys %u %f %t %k"
    ));
    disable(&env.paths).unwrap();
    assert!(is_link());
    assert_eq!(std::fs::read(&target).unwrap(), before);
}

#[test]
fn without_sshd_disable_is_nothing_to_undo_and_enable_names_the_missing_config() {
    // An image without openssh-server: no sshd_config, no sshd binary (never run).
    let tmp = TempDir::new("nosshd");
    let paths = SshdPaths {
        main_config: tmp.join("sshd_config"),
        dropin: tmp.join("sshd_config.d/60-guest-agent.conf"),
        early_dropin: tmp.join("sshd_config.d/00-guest-agent.conf"),
        ssh_dir: tmp.0.clone(),
        sshd: tmp.join("no-sshd"),
        privsep_dir: None,
        reload: ReloadTarget {
            systemd_marker: tmp.join("no-systemd"),
            pid_file: tmp.join("sshd.pid"),
            ..ReloadTarget::sshd()
        },
        timeout: Duration::from_secs(10),
    };
    let report = disable(&paths).unwrap();
    assert!(report.changed.is_empty() && report.reloaded.is_none());
    // A drop-in left behind (sshd removed with its config) goes; nothing is run.
    std::fs::create_dir(tmp.join("sshd_config.d")).unwrap();
    std::fs::write(&paths.dropin, "AuthorizedKeysCommand x\n").unwrap();
    std::fs::write(&paths.early_dropin, "AuthorizedKeysCommand x\n").unwrap();
    let report = disable(&paths).unwrap();
    assert_eq!(
        report.changed,
        [paths.dropin.clone(), paths.early_dropin.clone()]
    );
    assert!(!paths.dropin.exists() && !paths.early_dropin.exists());
    assert!(report.reloaded.is_none());
    let err = enable(&paths, &settings()).unwrap_err();
    assert!(
        matches!(err, SshdError::MissingConfig { .. })
            && err.to_string().contains("openssh-server"),
        "{err}"
    );
}
