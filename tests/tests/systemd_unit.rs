//! The systemd unit: `systemd-analyze verify` clean, and the security exposure printed and
//! kept below 4.0. Run in the VM (a private /run, and /usr/bin with the agent in an overlay, as
//! the package will install it). Needs root.

use guest_agent_e2e::{TestEnv, require_root};

#[test]
fn the_unit_verifies_and_its_exposure_stays_below_four() {
    if !require_root("the_unit_verifies_and_its_exposure_stays_below_four") {
        return;
    }
    let env = TestEnv::new("unit");
    let unit =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/guest-agent.service");
    let d = env.dir().join("usrbin");
    let out = env.vm().sh(&format!(
        "set -e; mkdir -p {d}/up {d}/work /run/systemd; cp {agent} {d}/up/guest-agent
         mount -t overlay overlay -o lowerdir=/usr/bin,upperdir={d}/up,workdir={d}/work /usr/bin
         systemd-analyze verify --man=no {unit} 2>&1; echo verify-exit=$?
         systemd-analyze security --offline=true {unit} 2>&1 | tail -1",
        d = d.display(),
        agent = guest_agent_e2e::vm::AGENT,
        unit = unit.display()
    ));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(text.contains("verify-exit=0"), "{text}");
    let verify: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("verify-exit"))
        .collect();
    assert!(
        verify.iter().all(|l| l.trim().is_empty()),
        "systemd-analyze verify warned: {verify:?}"
    );
    let exposure: f64 = text
        .split("exposure level for guest-agent.service:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure in {text}"));
    eprintln!("systemd-analyze security exposure: {exposure}");
    assert!(exposure < 4.0, "exposure {exposure}");
}
