//! The packages' removal script (`packaging/scripts/postrm`, the deb's postrm and the rpm's
//! %postun) run for real against a copy of this machine's /etc in a private mount namespace
//! (issue 13, item 16). Root; nothing reaches the host's /etc.
//!
//! Each run: `cp -a /etc` into a temporary directory, the fixtures written there, then inside
//! `unshare -m` that copy bound over /etc (and a prepared /var/lib, a tmpfs on /run), and
//! `sh postrm remove` with an `invoke-rc.d` stub first in PATH that records the sshd reload.
//! The results are read from the copy afterwards.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use guest_agent_e2e::packages::workspace;
use guest_agent_e2e::require_root;

const BEGIN: &str = "# BEGIN guest-agent (managed; do not edit)";
const END: &str = "# END guest-agent";
const DROPIN: &str = "etc/ssh/sshd_config.d/60-guest-agent.conf";
/// The drop-in's name when another AuthorizedKeysCommand's drop-in sorts before the usual one.
const EARLY_DROPIN: &str = "etc/ssh/sshd_config.d/00-guest-agent.conf";
const RIVAL_DROPIN: &str = "etc/ssh/sshd_config.d/20-systemd-userdb.conf";
const RIVAL_TEXT: &str = "AuthorizedKeysCommand /usr/bin/userdbctl ssh-authorized-keys %u\nAuthorizedKeysCommandUser root\n";

/// A copy of /etc (and an empty /var/lib, a stub directory) to run the script against.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::Builder::new()
            .prefix("ga-postrm-")
            .tempdir()
            .expect("tempdir");
        for d in ["etc", "varlib/guest-agent", "stub"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        let out = Command::new("cp")
            .args(["-a", "/etc/."])
            .arg(dir.path().join("etc"))
            .output()
            .expect("cp");
        assert!(out.status.success(), "cp -a /etc: {out:?}");
        let stub = dir.path().join("stub/invoke-rc.d");
        let calls = dir.path().join("reloads");
        std::fs::write(
            &stub,
            format!("#!/bin/sh\necho \"$*\" >> {}\n", calls.display()),
        )
        .expect("stub");
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Root { dir }
    }

    /// A path in the copy, `rel` relative to its /: `etc/...` or `varlib/...`.
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str, mode: u32) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).expect("mkdir");
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, text).expect("write fixture");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Makes `rel` a symbolic link to `target` (as written: relative or absolute in the VM).
    fn link(&self, rel: &str, target: &str) {
        let p = self.path(rel);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, &p).expect("symlink");
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn reloads(&self) -> String {
        std::fs::read_to_string(self.path("reloads")).unwrap_or_default()
    }

    /// `sh postrm remove` with the copy as /etc.
    fn postrm_remove(&self) -> Output {
        let script = workspace().join("packaging/scripts/postrm");
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(
                r#"set -e
mount --bind "$1/etc" /etc
mount --bind "$1/varlib" /var/lib
mount -t tmpfs -o mode=755 tmpfs /run
PATH="$1/stub:$PATH" exec sh "$2" remove"#,
            )
            .arg("sh")
            .arg(self.dir.path())
            .arg(&script)
            .output()
            .expect("unshare");
        assert!(
            out.status.success(),
            "postrm remove failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

fn block(body: &str) -> String {
    format!("{BEGIN}\n{body}{END}\n")
}

fn is_link_to(p: &Path, target: &str) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
        && std::fs::read_link(p).is_ok_and(|t| t == Path::new(target))
}

/// The attack (an operator's layout, really): sshd_config and nsswitch.conf are symbolic links
/// to files kept elsewhere (configuration management, an image's read-mostly layer). `sed -i`
/// writes a new regular file over the link, so removing the package cut /etc off from the
/// real file: the link was gone and the operator's later edits of the real file no longer
/// applied, while the real file still had our block and `guestagent` (pointing at a binary and
/// a module that were gone). Now the file the link points at is edited, in place of the link,
/// keeping its mode.
#[test]
fn postrm_edits_the_file_a_symlinked_sshd_config_or_nsswitch_conf_points_at() {
    if !require_root("postrm_edits_the_file_a_symlinked_sshd_config_or_nsswitch_conf_points_at") {
        return;
    }
    let root = Root::new();
    let operator_before = "Port 22\nInclude /etc/ssh/sshd_config.d/*.conf\n";
    let operator_after = "\nPasswordAuthentication no\n";
    root.write(
        "etc/ssh/managed/sshd_config",
        &format!(
            "{operator_before}{}{operator_after}",
            block("AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f %t %k\n")
        ),
        0o600,
    );
    root.link("etc/ssh/sshd_config", "managed/sshd_config");
    root.write(DROPIN, "AuthorizedKeysCommandUser nobody\n", 0o644);
    root.write(EARLY_DROPIN, "AuthorizedKeysCommandUser root\n", 0o644);
    root.write(RIVAL_DROPIN, RIVAL_TEXT, 0o644);
    root.write(
        "etc/alt/nsswitch.conf",
        "passwd:         files guestagent systemd\ngroup:          files guestagent\n\
         shadow:         files\nnetgroup: files guestagent # added by guest-agent\n",
        0o640,
    );
    root.link("etc/nsswitch.conf", "/etc/alt/nsswitch.conf");
    root.write(
        "varlib/guest-agent/oslogin-state.json",
        "{\n  \"nsswitch_added\": [\n    \"passwd\",\n    \"group\"\n  ]\n}\n",
        0o600,
    );

    let out = root.postrm_remove();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "no warning expected: {stderr}");

    assert!(
        is_link_to(&root.path("etc/ssh/sshd_config"), "managed/sshd_config"),
        "/etc/ssh/sshd_config is still the operator's link"
    );
    assert_eq!(
        root.read("etc/ssh/managed/sshd_config"),
        format!("{operator_before}{operator_after}"),
        "the linked file lost exactly the block"
    );
    let mode = |rel: &str| {
        std::fs::metadata(root.path(rel))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("etc/ssh/managed/sshd_config"), 0o600);
    assert!(
        is_link_to(&root.path("etc/nsswitch.conf"), "/etc/alt/nsswitch.conf"),
        "/etc/nsswitch.conf is still the operator's link"
    );
    assert_eq!(
        root.read("etc/alt/nsswitch.conf"),
        "passwd:         files systemd\ngroup:          files\nshadow:         files\n"
    );
    assert_eq!(mode("etc/alt/nsswitch.conf"), 0o640);
    assert!(!root.path(DROPIN).exists(), "the drop-in is removed");
    assert!(
        !root.path(EARLY_DROPIN).exists(),
        "the early drop-in is removed"
    );
    assert_eq!(
        root.read(RIVAL_DROPIN),
        RIVAL_TEXT,
        "another provider's drop-in stays"
    );
    assert_eq!(root.reloads(), "ssh reload\n", "sshd reloaded once");
}

/// The attack: a `BEGIN guest-agent` line whose `END` line is missing (an operator deleted the
/// block's end by hand, an editor's merge, a half-copied config), with a complete block or a
/// stray `END` line elsewhere in the file. The old check only asked whether both markers
/// appeared somewhere, then ran `sed '/BEGIN/,/END/d'`: a range that finds no END after its
/// BEGIN deletes to the end of the file, so the operator's lines after the marker (here a
/// `Match` block and `PasswordAuthentication no`) were deleted with it. Now a file whose
/// markers do not pair up (each BEGIN followed by its END before the next BEGIN) is left
/// exactly as it is, with a warning naming it; the rest of the removal goes on.
#[test]
fn postrm_leaves_an_sshd_config_with_an_unmatched_marker_untouched_and_says_so() {
    if !require_root("postrm_leaves_an_sshd_config_with_an_unmatched_marker_untouched_and_says_so")
    {
        return;
    }
    let tail = "Match User bob\n    PasswordAuthentication no\n";
    let cases = [
        (
            "a complete block, then a BEGIN without END",
            format!(
                "Port 22\n{}{BEGIN}\nAuthorizedKeysCommandUser nobody\n{tail}",
                block("AuthorizedKeysCommand /usr/bin/guest-agent authorized-keys %u %f %t %k\n")
            ),
        ),
        (
            "a stray END, then a BEGIN without END",
            format!("{END}\nPort 22\n{BEGIN}\nAuthorizedKeysCommandUser nobody\n{tail}"),
        ),
        (
            "a BEGIN inside a block",
            format!("Port 22\n{BEGIN}\nX yes\n{BEGIN}\n{tail}{END}\n"),
        ),
        ("a BEGIN alone", format!("Port 22\n{BEGIN}\n{tail}")),
    ];
    for (what, text) in cases {
        let root = Root::new();
        root.write("etc/ssh/sshd_config", &text, 0o644);
        root.write(DROPIN, "AuthorizedKeysCommandUser nobody\n", 0o644);
        let out = root.postrm_remove();
        assert_eq!(
            root.read("etc/ssh/sshd_config"),
            text,
            "{what}: sshd_config changed"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("/etc/ssh/sshd_config") && stderr.contains("left unchanged"),
            "{what}: a warning naming the file: {stderr:?}"
        );
        assert!(
            !root.path(DROPIN).exists(),
            "{what}: the rest of the removal went on"
        );
        assert_eq!(
            root.reloads(),
            "ssh reload\n",
            "{what}: sshd reloaded for the drop-in"
        );
    }
}
