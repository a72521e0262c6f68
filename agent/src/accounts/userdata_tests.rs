//! Tests of cloud-init user-data reading.

use super::*;

fn users(text: &str) -> Vec<CloudUser> {
    parse_user_data(text)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .users
}

fn skipped(text: &str) -> Vec<SkippedEntry> {
    parse_user_data(text)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .skipped
}

fn error(text: &str) -> String {
    match parse_user_data(text) {
        Ok(u) => panic!("{text:?} was read: {u:?}"),
        Err(e) => e,
    }
}

#[test]
fn yandex_style_user_data() {
    let text = "#cloud-config
datasource:
  Ec2:
    strict_id: false
ssh_pwauth: no
users:
  - name: yc-user
    sudo: ALL=(ALL) NOPASSWD:ALL
    shell: /bin/bash
    ssh_authorized_keys:
      - ssh-ed25519 AAAAC3Nza one@laptop
      - \"ssh-rsa AAAAB3Nza two\"
";
    let got = users(text);
    assert_eq!(
        got,
        [CloudUser {
            name: "yc-user".into(),
            line: 7,
            ssh_authorized_keys: vec![
                CloudKey {
                    line: 11,
                    key: "ssh-ed25519 AAAAC3Nza one@laptop".into()
                },
                CloudKey {
                    line: 12,
                    key: "ssh-rsa AAAAB3Nza two".into()
                },
            ],
            sudo: true,
            groups: vec![],
        }]
    );
}

#[test]
fn other_kinds_of_user_data_are_not_read() {
    for text in [
        "",
        "#!/bin/sh\necho hello\n",
        "Content-Type: multipart/mixed; boundary=\"==B==\"\nMIME-Version: 1.0\n\n--==B==\n",
        "#cloud-config-archive\n- type: text/cloud-config\n",
        "## template: jinja\n#cloud-config\nusers: [{name: a}]\n",
        " #cloud-config\nusers: [{name: a}]\n",
        "#cloud-config\n",
        "#cloud-config\n# only comments\n",
        "#cloud-config\nusers:\n",
        "#cloud-config\nusers: default\n",
        "#cloud-config\nusers: [default]\n",
        "#cloud-config\nusers:\n  - default\n  - bob\n",
        "#cloud-config\npackages: [htop]\n",
    ] {
        assert_eq!(users(text), [], "{text:?}");
    }
    // A BOM, a CR and trailing blanks on the first line are fine.
    let got = users("\u{feff}#cloud-config \r\nusers: [{name: a}]\r\n");
    assert_eq!(got[0].name, "a");
}

#[test]
fn sudo_values() {
    for (value, sudo) in [
        ("ALL=(ALL) NOPASSWD:ALL", true),
        ("['ALL=(ALL) NOPASSWD:ALL']", true),
        ("true", true),
        ("\"no\"", true),
        ("false", false),
        ("False", false),
        ("\"false\"", false),
        ("'FALSE'", false),
        ("no", false),
        ("off", false),
        ("~", false),
        ("null", false),
        ("", false),
        ("''", false),
        ("[]", false),
    ] {
        let got = users(&format!(
            "#cloud-config\nusers:\n  - name: a\n    sudo: {value}\n"
        ));
        assert_eq!(got[0].sudo, sudo, "sudo: {value}");
    }
    assert!(!users("#cloud-config\nusers:\n  - name: a\n")[0].sudo);
}

#[test]
fn groups_and_key_spellings() {
    let got = users(
        "#cloud-config
users:
  - name: a
    groups: ' docker, adm,, video '
    ssh-authorized-keys: ssh-ed25519 AAAA one
    ssh_authorized_keys: [ssh-ed25519 BBBB two]
  - name: b
    groups: [wheel, ' x ']
  - {name: c, groups: ~, ssh_authorized_keys: ~}
",
    );
    assert_eq!(got[0].groups, ["docker", "adm", "video"]);
    let keys: Vec<&str> = got[0]
        .ssh_authorized_keys
        .iter()
        .map(|k| k.key.as_str())
        .collect();
    assert_eq!(keys, ["ssh-ed25519 BBBB two", "ssh-ed25519 AAAA one"]);
    assert_eq!(got[1].groups, ["wheel", "x"]);
    assert_eq!(got[2].groups, Vec::<String>::new());
    assert_eq!(got[2].ssh_authorized_keys, []);
}

#[test]
fn anchors_and_aliases_work() {
    let got = users(
        "#cloud-config
keys: &k [ssh-ed25519 AAAA shared]
users:
  - {name: a, sudo: &s 'ALL=(ALL) ALL', ssh_authorized_keys: *k}
  - {name: b, sudo: *s, ssh_authorized_keys: *k}
",
    );
    assert!(
        got.iter()
            .all(|u| u.sudo && u.ssh_authorized_keys.len() == 1)
    );
    // A key reached through an alias reports the line it is written on.
    assert_eq!(got[1].ssh_authorized_keys[0].line, 2);
}

#[test]
fn structure_errors_name_the_place() {
    for (text, want) in [
        (
            "#cloud-config\nusers:\n  - name: [x\n",
            "user-data: bad YAML at line 4 column 1",
        ),
        (
            "#cloud-config\nusers:\n\t- name: a\n",
            "user-data: bad YAML at line 3 column 2: tabs disallowed",
        ),
        (
            "#cloud-config\n- a\n- b\n",
            "is a list, not a mapping (line 2)",
        ),
        (
            "#cloud-config\nusers: {a: {}}\n",
            "`users` (line 2) is a mapping",
        ),
        (
            "#cloud-config\nusers: []\n---\nusers: []\n",
            "more than one YAML document (the second starts at line 3)",
        ),
        ("#cloud-config\nusers: *nope\n", "bad YAML"),
    ] {
        let e = error(text);
        assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
        assert!(e.starts_with("user-data"), "{e}");
    }
}

/// Real `#cloud-config` files list `- default` (cloud-init's own default user) and
/// `- snapuser: ...` entries next to named users; one such entry used to reject the whole
/// user-data ("users[0] (line 7) has no name"), so no cloud-init user got keys. Each is now
/// skipped with its index and line, and the users around it are read.
#[test]
fn entries_that_are_not_named_users_are_skipped_and_the_others_read() {
    let text = "#cloud-config
users:
  - default
  - snapuser: joe@example.com
  - name: alice
    ssh_authorized_keys: [ssh-ed25519 AAAA one]
  - sudo: true
  - bob
  - name: {a: b}
  - name: ~
  - name: carol
    ssh_authorized_keys:
      - [nested]
  - name: dave
    ssh_authorized_keys: {k: v}
  - name: erin
    groups: {k: v}
  - name: frank
    groups: [[x]]
  - ~
  - [x]
  - name: gina
";
    let parsed = parse_user_data(text).unwrap();
    let names: Vec<&str> = parsed.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice", "gina"]);
    assert_eq!(parsed.users[0].line, 5);
    let got: Vec<(usize, usize, Option<&str>, &str)> = parsed
        .skipped
        .iter()
        .map(|e| (e.index, e.line, e.name.as_deref(), e.reason.as_str()))
        .collect();
    let want: [(usize, usize, Option<&str>, &str); 12] = [
        (
            0,
            3,
            None,
            "users[0] is `default`, cloud-init's own default user",
        ),
        (
            1,
            4,
            None,
            "users[1] (line 4) has no `name` (a mapping of `snapuser`:...)",
        ),
        (
            3,
            7,
            None,
            "users[3] (line 7) has no `name` (a mapping of `sudo`:...)",
        ),
        (
            4,
            8,
            None,
            "users[4] is the bare name `bob`, which carries no keys",
        ),
        (
            5,
            9,
            None,
            "users[5].name (line 9) is a mapping, not a name",
        ),
        (6, 10, None, "users[6].name (line 10) is null, not a name"),
        (
            7,
            11,
            Some("carol"),
            "users[7].ssh_authorized_keys (line 13) holds a list (line 13), not a key",
        ),
        (
            8,
            14,
            Some("dave"),
            "users[8].ssh_authorized_keys (line 15) is a mapping",
        ),
        (
            9,
            16,
            Some("erin"),
            "users[9].groups (line 17) is a mapping",
        ),
        (
            10,
            18,
            Some("frank"),
            "users[10].groups (line 19) holds a list",
        ),
        (11, 20, None, "users[11] is null, not a user"),
        (12, 21, None, "users[12] is a list, not a user"),
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want.iter()) {
        assert_eq!((g.0, g.1, g.2), (w.0, w.1, w.2), "{g:?}");
        assert!(g.3.starts_with(w.3), "got {:?}, want {:?}", g.3, w.3);
        assert!(g.3.ends_with("skipped"), "{g:?}");
    }
    // A name that is not printable is escaped in the report.
    let odd = skipped("#cloud-config\nusers:\n  - \"a\\x1bb\"\n");
    assert!(!odd[0].reason.chars().any(char::is_control), "{odd:?}");
}

#[test]
fn the_last_of_a_repeated_key_wins() {
    let got = users("#cloud-config\nusers: [{name: a}]\nusers: [{name: b}]\n");
    assert_eq!(got[0].name, "b");
}

#[test]
fn hostile_documents_are_bounded() {
    // Billion laughs: each level doubles ten times.
    let mut text = String::from("#cloud-config\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    text.push_str("users: [{name: a}]\n");
    assert!(error(&text).contains("more than 100000 YAML nodes"));

    // Deep nesting, in block and flow style.
    let mut block = String::from("#cloud-config\n");
    for depth in 0..100 {
        block.push_str(&format!("{}k:\n", "  ".repeat(depth)));
    }
    assert!(
        error(&block).contains("nested deeper than 64 levels"),
        "{}",
        error(&block)
    );
    let flow = format!(
        "#cloud-config\nusers: {}{}\n",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert!(error(&flow).starts_with("user-data"));

    let big = format!("#cloud-config\n#{}\n", "x".repeat(MAX_USER_DATA));
    assert!(error(&big).contains("over the 1048576-byte limit"));
}
