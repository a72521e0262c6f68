//! Tests of cloud-init user-data reading.

use super::*;

fn users(text: &str) -> Vec<CloudUser> {
    parse_user_data(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
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
            "#cloud-config\nusers:\n  - default\n  - sudo: true\n",
            "users[1] (line 4) has no `name`",
        ),
        (
            "#cloud-config\nusers:\n  - name: {a: b}\n",
            "users[0].name (line 3) is a mapping, not a name",
        ),
        (
            "#cloud-config\nusers:\n  - name: ~\n",
            "users[0].name (line 3) is null",
        ),
        (
            "#cloud-config\nusers:\n  - name: a\n    ssh_authorized_keys:\n      - [nested]\n",
            "users[0].ssh_authorized_keys (line 5) holds a list (line 5), not a key",
        ),
        (
            "#cloud-config\nusers:\n  - name: a\n    ssh_authorized_keys: {k: v}\n",
            "users[0].ssh_authorized_keys (line 4) is a mapping",
        ),
        (
            "#cloud-config\nusers:\n  - name: a\n    groups: {k: v}\n",
            "users[0].groups (line 4) is a mapping",
        ),
        (
            "#cloud-config\nusers:\n  - name: a\n    groups: [[x]]\n",
            "users[0].groups (line 4) holds a list",
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
