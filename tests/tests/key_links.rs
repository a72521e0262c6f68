//! Symlinked `~/.ssh/authorized_keys` and `~/.ssh` (issue 14 item 5), with a real sshd: a
//! dotfiles-style link inside the home is kept and written through; links out of the home (to
//! /etc/shadow, absolute and by `../../..`) are replaced by the user's own file, /etc/shadow
//! stays byte for byte; key logins work in every case, and again after a link is planted
//! anew. Needs root.

use std::time::{Duration, Instant};

use guest_agent_e2e::accounts::{KeysVm, keypair_of};
use guest_agent_e2e::require_root;

const USERS: [&str; 4] = ["stow", "stowdir", "escape", "climber"];

#[test]
fn symlinked_authorized_keys_are_followed_inside_the_home_and_replaced_when_they_leave_it() {
    if !require_root(
        "symlinked_authorized_keys_are_followed_inside_the_home_and_replaced_when_they_leave_it",
    ) {
        return;
    }
    let mut keys = None;
    let mut shadow = String::new();
    let t0 = Instant::now();
    let vm = KeysVm::start("keylinks", "", &[], |env| {
        let (own_key, own_pub) = keypair_of(env.dir(), "stow-own", "ed25519");
        env.vm().run(&format!(
            "set -e
             for u in {users}; do useradd -m -p '*' $u; done
             # GNU Stow: the file lives in ~/dotfiles, ~/.ssh/authorized_keys links to it.
             cd /home/stow && mkdir -p dotfiles/ssh .ssh && echo '{own_pub}' > dotfiles/ssh/authorized_keys
             ln -s ../dotfiles/ssh/authorized_keys .ssh/authorized_keys
             chmod 700 .ssh && chmod 600 dotfiles/ssh/authorized_keys && chown -hR stow: /home/stow
             # The whole ~/.ssh stowed.
             cd /home/stowdir && mkdir -p dotfiles/ssh && ln -s dotfiles/ssh .ssh && chown -hR stowdir: /home/stowdir
             # Out of the home: absolute, and by climbing.
             mkdir -m 700 /home/escape/.ssh && ln -s /etc/shadow /home/escape/.ssh/authorized_keys
             chown -hR escape: /home/escape/.ssh
             mkdir -m 700 /home/climber/.ssh && ln -s ../../../etc/shadow /home/climber/.ssh/authorized_keys
             chown -hR climber: /home/climber/.ssh",
            users = USERS.join(" "),
        ));
        shadow = env.vm().run("sha256sum /etc/shadow");
        let mut lines = Vec::new();
        let mut private = Vec::new();
        for u in USERS {
            let (k, p) = keypair_of(env.dir(), u, "ed25519");
            lines.push(format!("{u}:{p}"));
            private.push(k);
        }
        env.emulator()
            .set_attribute("instance", "ssh-keys", &lines.join("\n"));
        keys = Some((private, own_key));
    });
    let (private, own_key) = keys.unwrap();
    for (u, key) in USERS.iter().zip(&private) {
        assert!(
            vm.wait_login(key, u, true, Duration::from_secs(30))
                .is_some(),
            "{u} cannot log in with the metadata key:\n{}",
            vm.dump()
        );
    }
    // Dotfiles: the links stay, the block is in the target, the user's own key still works.
    assert!(
        vm.can_login(&own_key, "stow"),
        "stow's own key:\n{}",
        vm.dump()
    );
    vm.vm("test -L /home/stow/.ssh/authorized_keys && grep -q 'BEGIN guest-agent' /home/stow/dotfiles/ssh/authorized_keys");
    vm.vm("test -L /home/stowdir/.ssh && grep -q 'BEGIN guest-agent' /home/stowdir/dotfiles/ssh/authorized_keys");
    // Escapes: a regular file of the user's replaced each link; where it pointed is logged;
    // /etc/shadow is untouched and nothing of it was copied.
    for (u, target) in [
        ("escape", "/etc/shadow"),
        ("climber", "../../../etc/shadow"),
    ] {
        let ak = format!("/home/{u}/.ssh/authorized_keys");
        let stat = vm.vm(&format!("test ! -L {ak} && stat -c '%U %a' {ak}"));
        assert_eq!(stat.trim(), format!("{u} 600"));
        let text = vm.vm(&format!("cat {ak}"));
        assert!(!text.contains("root:"), "{u}: {text}");
        vm.env.agent().expect_line(
            t0,
            &["symbolic link the agent does not follow", u, target],
            Duration::from_secs(1),
        );
    }
    assert_eq!(
        vm.vm("sha256sum /etc/shadow"),
        shadow,
        "/etc/shadow changed"
    );

    // A link planted again is dealt with at the next check (every 2 s here): the key works
    // again, with no metadata change.
    let escape_key = &private[2];
    let t1 = Instant::now();
    vm.vm("ln -sfn /etc/shadow /home/escape/.ssh/authorized_keys && chown -h escape: /home/escape/.ssh/authorized_keys");
    assert!(
        vm.wait_login(escape_key, "escape", true, Duration::from_secs(30))
            .is_some(),
        "{}",
        vm.dump()
    );
    vm.env.agent().expect_line(
        t1,
        &["symbolic link the agent does not follow", "escape"],
        Duration::from_secs(1),
    );
    assert_eq!(
        vm.vm("sha256sum /etc/shadow"),
        shadow,
        "/etc/shadow changed"
    );
}
