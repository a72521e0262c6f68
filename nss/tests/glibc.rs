//! The module loaded by the real glibc: `getent` and `id` in a private mount namespace where
//! nsswitch.conf names `guestagent`, the library sits in an overlay on the library directory
//! and the cache file in an overlay on /var/lib. Needs root; nothing reaches the host.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use guest_agent_wire::cache::{CacheBuilder, GroupEntry, UserEntry};

const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";

/// A temporary directory, removed on drop (also when the test fails).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cache() -> Vec<u8> {
    let mut b = CacheBuilder::new(1000, 1);
    b.add_user(UserEntry {
        name: "ga-nss-test".into(),
        uid: 4_200_001,
        gid: 4_200_001,
        gecos: "GA Test".into(),
        home: "/home/ga-nss-test".into(),
        shell: "/bin/sh".into(),
        groups: vec![4_200_002, 4_200_003],
    });
    for (name, gid, members) in [
        ("ga-nss-test", 4_200_001, vec![]),
        ("ga-nss-grp", 4_200_002, vec!["ga-nss-test".to_string()]),
        ("ga-nss-grp2", 4_200_003, vec!["ga-nss-test".to_string()]),
    ] {
        b.add_group(GroupEntry {
            name: name.into(),
            gid,
            members,
        });
    }
    b.build()
}

const SCRIPT: &str = r#"
set -e
T="$1"; LIB_DIR="$2"
mount -t tmpfs -o mode=0755 tmpfs "$T/m"
mkdir -p "$T/m/lib-up" "$T/m/lib-work" "$T/m/var-up/guest-agent" "$T/m/var-work"
install -m 0644 "$T/libnss_guestagent.so" "$T/m/lib-up/libnss_guestagent.so.2"
install -m 0644 "$T/directory.cache" "$T/m/var-up/guest-agent/directory.cache"
mount -t overlay overlay -o "lowerdir=$LIB_DIR,upperdir=$T/m/lib-up,workdir=$T/m/lib-work" "$LIB_DIR"
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$T/m/var-up,workdir=$T/m/var-work" /var/lib
mount --bind "$T/nsswitch.conf" /etc/nsswitch.conf
set +e
echo "== pwnam"; getent passwd ga-nss-test
echo "== pwuid"; getent passwd 4200001
echo "== grnam"; getent group ga-nss-grp
echo "== grgid"; getent group 4200003
echo "== id"; id ga-nss-test
echo "== enum"; getent passwd | grep '^ga-nss'
echo "== genum"; getent group | grep '^ga-nss' | sort
echo "== missing"; getent passwd ga-nss-nobody; echo "exit $?"
echo "== root"; getent passwd root
echo "== end"
"#;

/// The lines between `== section` and the next marker.
fn section<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|l| *l != format!("== {name}"))
        .skip(1)
        .take_while(|l| !l.starts_with("== "))
        .collect()
}

#[test]
fn glibc_resolves_users_and_groups_through_the_module() {
    const TEST: &str = "glibc_resolves_users_and_groups_through_the_module";
    if unsafe { libc::geteuid() } != 0 {
        return common::skip(TEST, "needs root (mount namespace, overlays)");
    }
    let Some(lib) = common::library() else {
        return common::skip(TEST, "libnss_guestagent.so not built");
    };
    if !Path::new(LIB_DIR).is_dir() {
        return common::skip(TEST, "no /usr/lib/x86_64-linux-gnu (not Debian x86_64)");
    }
    let nsswitch_before = std::fs::read("/etc/nsswitch.conf").ok();
    let host_cache = Path::new("/var/lib/guest-agent/directory.cache");
    let host_cache_before = std::fs::read(host_cache).ok();
    let dir = TempDir(std::env::temp_dir().join(format!("ga-nss-glibc-{}", std::process::id())));
    std::fs::create_dir_all(dir.0.join("m")).unwrap();
    std::fs::copy(&lib, dir.0.join("libnss_guestagent.so")).unwrap();
    std::fs::write(dir.0.join("directory.cache"), cache()).unwrap();
    std::fs::write(
        dir.0.join("nsswitch.conf"),
        "passwd: files guestagent\ngroup: files guestagent\nshadow: files\n",
    )
    .unwrap();

    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", SCRIPT, "sh"])
        .arg(&dir.0)
        .arg(LIB_DIR)
        .env("GUEST_AGENT_NSS_NO_SOCKET", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("== end"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = "ga-nss-test:*:4200001:4200001:GA Test:/home/ga-nss-test:/bin/sh";
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(section(&stdout, "pwnam"), [line], "{ctx}");
    assert_eq!(section(&stdout, "pwuid"), [line], "{ctx}");
    assert_eq!(
        section(&stdout, "grnam"),
        ["ga-nss-grp:x:4200002:ga-nss-test"],
        "{ctx}"
    );
    assert_eq!(
        section(&stdout, "grgid"),
        ["ga-nss-grp2:x:4200003:ga-nss-test"],
        "{ctx}"
    );
    assert_eq!(
        section(&stdout, "id"),
        ["uid=4200001(ga-nss-test) gid=4200001(ga-nss-test) \
          groups=4200001(ga-nss-test),4200002(ga-nss-grp),4200003(ga-nss-grp2)"],
        "{ctx}"
    );
    assert_eq!(section(&stdout, "enum"), [line], "{ctx}");
    assert_eq!(
        section(&stdout, "genum"),
        [
            "ga-nss-grp2:x:4200003:ga-nss-test",
            "ga-nss-grp:x:4200002:ga-nss-test",
            "ga-nss-test:x:4200001:"
        ],
        "{ctx}"
    );
    assert_eq!(section(&stdout, "missing"), ["exit 2"], "{ctx}");
    assert_eq!(section(&stdout, "root").len(), 1, "{ctx}");

    // Nothing reached the host.
    assert_eq!(std::fs::read("/etc/nsswitch.conf").ok(), nsswitch_before);
    assert!(!Path::new(LIB_DIR).join("libnss_guestagent.so.2").exists());
    assert_eq!(std::fs::read(host_cache).ok(), host_cache_before);
}
