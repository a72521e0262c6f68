//! A uniquely named network namespace with 169.254.169.254 on its loopback device.

use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add/del` and the unmount of an empty /run/netns must not interleave.
static LOCK: Mutex<()> = Mutex::new(());

pub struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates `ga-<tag>-<pid>-<n>` with lo up and 169.254.169.254/32 on it.
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let name = format!("ga-{tag}-{}-{n}", std::process::id());
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        ip(&["netns", "add", &name]).expect("ip netns add");
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]).expect("lo up");
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "lo",
        ])
        .expect("addr add");
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME` + `argv`: the command runs with the namespace's network.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: {e}");
        }
        // `ip netns add` mounts /run/netns on the host; leave nothing behind once it is empty.
        let empty = std::fs::read_dir("/run/netns")
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if empty {
            let _ = Command::new("umount").arg("/run/netns").status();
        }
    }
}
