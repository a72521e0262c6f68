//! Tests of the managed block in authorized_keys.

use super::*;
use crate::accounts::test_keys::*;

fn k(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|s| (*s).to_owned()).collect()
}

fn block(keys: &[&str]) -> String {
    let mut s = format!("{BEGIN}\n");
    for key in keys {
        s.push_str(key);
        s.push('\n');
    }
    s.push_str(END);
    s.push('\n');
    s
}

/// Renders and checks idempotence on the way.
fn r(existing: &str, keys: &[&str]) -> String {
    let once = render(existing, &k(keys));
    assert_eq!(
        render(&once, &k(keys)),
        once,
        "not idempotent on {existing:?}"
    );
    assert_eq!(
        managed(&once),
        keys.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
    once
}

#[test]
fn no_block_and_no_keys_is_left_alone_byte_for_byte() {
    for existing in [
        "",
        "\n",
        "ssh-ed25519 AAAA mine",
        "ssh-ed25519 AAAA mine\r\n# note\r\n\r\n",
        "# Added by Google\nssh-ed25519 AAAA x\n",
    ] {
        assert_eq!(r(existing, &[]), existing);
    }
}

#[test]
fn a_block_is_appended_when_there_is_none() {
    assert_eq!(r("", &[A]), block(&[A]));
    assert_eq!(r("mine\n", &[A, B]), format!("mine\n{}", block(&[A, B])));
    assert_eq!(r("mine", &[A]), format!("mine\n{}", block(&[A])));
    assert_eq!(
        r("mine\r\n\r\n", &[A]),
        format!("mine\r\n\r\n{}", block(&[A]))
    );
}

#[test]
fn the_block_is_rewritten_in_place_and_the_rest_kept() {
    let existing = format!(
        "# my keys\r\n{C} me@home\r\n\n{BEGIN}  \n{A}\n{END}\r\n{R} after\r\ntrailing without newline"
    );
    let got = r(&existing, &[B]);
    assert_eq!(
        got,
        format!(
            "# my keys\r\n{C} me@home\r\n\n{}{R} after\r\ntrailing without newline",
            block(&[B])
        )
    );
    assert_eq!(managed(&existing), [A]);
}

#[test]
fn no_keys_removes_the_block_and_its_markers() {
    assert_eq!(r(&block(&[A, B]), &[]), "");
    let existing = format!("mine\n{}theirs", block(&[A]));
    assert_eq!(r(&existing, &[]), "mine\ntheirs");
}

#[test]
fn damaged_blocks() {
    // BEGIN without END: everything after it is ours.
    let existing = format!("mine\n{BEGIN}\n{A}\n{B}\n");
    assert_eq!(managed(&existing), [A, B]);
    assert_eq!(r(&existing, &[C]), format!("mine\n{}", block(&[C])));
    assert_eq!(r(&existing, &[]), "mine\n");

    // END without BEGIN: only the marker goes; the block goes where it was.
    let existing = format!("mine\n{A}\n{END}\nalso mine\n");
    assert_eq!(managed(&existing), Vec::<String>::new());
    assert_eq!(
        r(&existing, &[C]),
        format!("mine\n{A}\n{}also mine\n", block(&[C]))
    );
    assert_eq!(r(&existing, &[]), format!("mine\n{A}\nalso mine\n"));

    // Two blocks, a nested BEGIN, a lone END: one clean block where the first began.
    let existing = format!(
        "one\n{BEGIN}\n{A}\n{BEGIN}\n{B}\n{END}\ntwo\n{END}\nthree\n{BEGIN}\n{C}\n{END}\nfour"
    );
    assert_eq!(managed(&existing), [A, B, C]);
    assert_eq!(
        r(&existing, &[R]),
        format!("one\n{}two\nthree\nfour", block(&[R]))
    );
    assert_eq!(r(&existing, &[]), "one\ntwo\nthree\nfour");

    // Markers with blanks around them and CRLF endings are still ours.
    let existing = format!("x\r\n  {BEGIN}\t\r\n{A}\r\n{END} \r\n");
    assert_eq!(managed(&existing), [A]);
    assert_eq!(r(&existing, &[A]), format!("x\r\n{}", block(&[A])));
}

#[test]
fn google_managed_keys_are_adopted_not_duplicated() {
    let ga = format!(
        "{A} google-ssh {{\"userName\":\"a@example.com\",\"expireOn\":\"2030-01-01T00:00:00+0000\"}}"
    );
    let existing = format!(
        "{C} my own\n{GOOGLE_MARKER}\n{ga}\n{GOOGLE_MARKER}\n{B} still in google's hands\n"
    );
    // A is now ours (with other options and comment): its pair goes. B is not: its pair stays.
    let got = r(&existing, &[&format!("no-pty {A} alice")]);
    assert_eq!(
        got,
        format!(
            "{C} my own\n{GOOGLE_MARKER}\n{B} still in google's hands\n{}",
            block(&[&format!("no-pty {A} alice")])
        )
    );
    // Both ours: nothing of Google's is left, the user's own line is kept.
    let got = r(&existing, &[A, B]);
    assert_eq!(got, format!("{C} my own\n{}", block(&[A, B])));
    // No keys of ours: Google's lines stay.
    assert_eq!(r(&existing, &[]), existing);
    // The one-line form.
    let existing = format!("{A} x # Added by Google\n{B} mine\n");
    assert_eq!(r(&existing, &[A]), format!("{B} mine\n{}", block(&[A])));
    // A user's own copy of a key we manage (no Google mark) is theirs: kept.
    let existing = format!("{A} mine\n");
    assert_eq!(r(&existing, &[A]), format!("{A} mine\n{}", block(&[A])));
    // A marker not directly followed by our key stays.
    let existing = format!("{GOOGLE_MARKER}\n\n{A}\n");
    assert_eq!(
        r(&existing, &[A]),
        format!("{GOOGLE_MARKER}\n\n{A}\n{}", block(&[A]))
    );
}

#[test]
fn adoption_repeats_until_nothing_changes() {
    // Removing the inner pair makes the outer marker and B a pair: both go, in one render.
    let existing = format!("{GOOGLE_MARKER}\n{GOOGLE_MARKER}\n{A}\n{B}\nend\n");
    assert_eq!(r(&existing, &[A, B]), format!("end\n{}", block(&[A, B])));
    // Pairs are read across our (damaged) regions, so a second render finds nothing new.
    let existing = format!("{BEGIN}\n{END}\n{GOOGLE_MARKER}\n{BEGIN}\n{END}\n{A}\n");
    assert_eq!(r(&existing, &[A]), block(&[A]));
}

#[test]
fn idempotent_on_assorted_files() {
    let files = [
        String::new(),
        "mine".into(),
        format!("{GOOGLE_MARKER}\n{A}\n{BEGIN}\n{B}\n"),
        format!("{END}\n{END}\n{BEGIN}\n{BEGIN}\n"),
        format!("a\r\n{BEGIN}\r\n{C}\r\n{END}\r\nb"),
        format!("{GOOGLE_MARKER}\n{BEGIN}\n{END}\n{A}\n{GOOGLE_MARKER}"),
    ];
    let sets: [&[&str]; 4] = [&[], &[A], &[A, B], &[C, R, A]];
    for f in &files {
        for keys in sets {
            r(f, keys);
        }
    }
}

#[test]
fn keys_that_are_not_one_line_are_skipped() {
    let keys = k(&[A, "x\ncommand=\"evil\" ssh-ed25519 AAAA", "  ", B, "y\r"]);
    assert_eq!(render("", &keys), block(&[A, B]));
}

#[test]
fn after_a_takeover_every_google_pair_goes_and_the_users_own_lines_stay() {
    use super::{GoogleLines, render_with};
    let listed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIListedListedListedListedListedListed alice";
    let revoked = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRevokedRevokedRevokedRevokedRevoked alice";
    let own = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwnOwnOwnOwnOwnOwnOwnOwnOwnOwnOwnOwn mine";
    let file = format!(
        "# Added by Google\n{listed}\n# Added by Google\n{revoked}\n{own}\n{revoked} # Added by Google\n"
    );
    let keep = super::render(&file, &[listed.to_owned()]);
    assert!(
        keep.contains(revoked),
        "before a takeover an unlisted pair stays"
    );
    let out = render_with(&file, &[listed.to_owned()], GoogleLines::DropAll);
    assert!(!out.contains(revoked), "{out}");
    assert!(!out.contains("# Added by Google"), "{out}");
    assert!(out.starts_with(&format!("{own}\n")), "{out}");
    assert!(out.contains(listed), "the listed key is in our block");
    assert_eq!(
        render_with(&out, &[listed.to_owned()], GoogleLines::DropAll),
        out,
        "idempotent"
    );
    // A user who left metadata (no keys to write): Google's lines still go, theirs stay.
    let gone = render_with(&file, &[], GoogleLines::DropAll);
    assert_eq!(gone, format!("{own}\n"));
}
