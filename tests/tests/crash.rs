//! Crash safety: the daemon is killed with SIGKILL at random moments while it works, 100 times,
//! and after every kill each file it owns must be a complete old or new version; then a
//! restarted daemon must converge. Needs root.
//!
//! Two VMs, because metadata keys and OS Login are exclusive in the agent and each owns
//! different files:
//!
//! - a metadata-keys VM (50 kills): `ssh-keys` alternates between version A (users u000..u199,
//!   key A) and B (u020..u219, key B), so every change creates or releases 20 users, rewrites
//!   200 `authorized_keys` and the sudo group's members. Files: /etc/passwd, shadow, group,
//!   gshadow, every managed `authorized_keys`, the sudoers drop-in, state.json.
//! - an OS Login VM (50 kills): 200 OS Login users (directory versions A and B, 20 users
//!   swapped, synced with SIGUSR1), CA rotations with `ca_refresh_secs = 1`, and OS Login
//!   toggled off and on, which is what writes nsswitch.conf, the sshd drop-in,
//!   oslogin-state.json and creates/removes the directory cache and the CA file.
//!
//! A kill happens 0-300 ms after the daemon started (interrupting its catch-up pass) or after
//! a change was triggered, from a seeded RNG: the seed is printed, `CRASH_SEED=N` replays it.
//! The daemon is stopped (SIGSTOP) first so that its children (gpasswd, userdel, visudo,
//! sshd -t) can be listed; then SIGKILL, and the children, which a real crash also leaves
//! running, are waited for before the files are checked.
//!
//! "Old or new" for the account files, which are four files written one after the other: each
//! file is complete and well formed (every line has its fields, names are unique, lines the
//! agent does not own are byte for byte as before), every agent-made entry has exactly the
//! shape the agent writes, and across the files an interrupted pass is visible only in the
//! agent's write order (group, gshadow, shadow, passwd): a user in passwd always has its
//! shadow, group and gshadow lines; a group, gshadow or shadow line without its passwd line
//! is an orphan of an interrupted pass, and the next start must complete it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use guest_agent_e2e::accounts::{TEST_CONFIG, keypair_of};
use guest_agent_e2e::oslogin::keypair;
use guest_agent_e2e::{AgentOptions, TestEnv, require_root};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const BEGIN: &str = "# BEGIN guest-agent managed keys (do not edit: the agent rewrites this block)";
const END: &str = "# END guest-agent managed keys";
const KILLS_PER_VM: usize = 50;
const SUDO_GROUP: &str = "guest-agent-sudoers";

/// splitmix64: small, seedable, good enough to pick delays.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: CRASH_SEED={seed} (set it to replay this run)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn delay(&mut self) -> Duration {
        Duration::from_millis(self.below(301))
    }
}

// ---------------------------------------------------------------------------------------------
// Killing the daemon

/// (pid, ppid) of every process.
fn process_table() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold blanks and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

fn descendants(root: i32) -> Vec<i32> {
    let table = process_table();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            table
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// SIGKILLs the daemon at this moment (frozen first, so its children can be listed), then
/// waits for the children it left running. Returns how many there were.
fn kill9(env: &mut TestEnv) -> usize {
    let mut agent = env.agent.take().expect("agent running");
    let pid = agent.pid();
    let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
    let children = descendants(pid);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    assert!(
        agent.wait_exit(Duration::from_secs(10)).is_some(),
        "the agent survived SIGKILL"
    );
    let t0 = Instant::now();
    while children.iter().any(|c| alive(*c)) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "children of the killed agent still running: {children:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Keep the old output for failure messages.
    env.agent = None;
    drop(agent);
    children.len()
}

/// (Re)starts the daemon (a fresh NOTIFY_SOCKET each time).
fn start(env: &mut TestEnv, config: &str) -> Instant {
    env.notify = None;
    let _ = std::fs::remove_file(env.dir().join("notify.sock"));
    let t0 = Instant::now();
    env.start_agent(AgentOptions {
        config: config.to_owned(),
        ..Default::default()
    });
    t0
}

fn wait_ready(env: &mut TestEnv, t0: Instant) {
    env.wait_ready(t0, Duration::from_secs(60));
}

// ---------------------------------------------------------------------------------------------
// Reading the VM

fn read_bytes(env: &TestEnv, path: &str) -> Option<Vec<u8>> {
    let out = env.vm().command("cat").arg(path).output().ok()?;
    out.status.success().then_some(out.stdout)
}

fn read(env: &TestEnv, path: &str) -> Option<String> {
    read_bytes(env, path).map(|b| String::from_utf8(b).expect("UTF-8"))
}

/// (exit code, stdout + stderr) of a script in the VM.
fn sh(env: &TestEnv, script: &str) -> (i32, String) {
    let out = env.vm().sh(script);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every file and tool output a check needs, read with one process in the VM (the machine is
/// small and shared: one `nsenter` instead of twenty per kill).
struct Snap {
    files: BTreeMap<String, Option<String>>,
    /// tool -> (exit code, output)
    tools: BTreeMap<String, (i32, String)>,
}

const SNAP_FILES: &[&str] = &[
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/gshadow",
    "/etc/ssh/sshd_config",
    "/etc/nsswitch.conf",
    DROPIN,
    CA_FILE,
    "/var/lib/guest-agent/state.json",
    "/var/lib/guest-agent/oslogin-state.json",
];

impl Snap {
    fn take(env: &TestEnv, tools: &[(&str, &str)]) -> Snap {
        let mut script = String::new();
        for f in SNAP_FILES {
            script.push_str(&format!(
                "if [ -e {f} ]; then printf 'F{f}\\0'; cat {f}; else printf 'M{f}\\0'; fi; printf '\\0'\n"
            ));
        }
        for (name, cmd) in tools {
            script.push_str(&format!(
                "out=$( ( {cmd} ) 2>&1; rc=$?; echo x; exit $rc ); printf 'T{name}\\0%s\\n%s\\0' \"$?\" \"$out\"\n"
            ));
        }
        let out = env.vm().sh(&script);
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        let mut parts = text.split('\0');
        let mut snap = Snap {
            files: BTreeMap::new(),
            tools: BTreeMap::new(),
        };
        while let (Some(head), Some(body)) = (parts.next(), parts.next()) {
            let (kind, name) = head.split_at(1.min(head.len()));
            match kind {
                "F" => {
                    snap.files.insert(name.into(), Some(body.into()));
                }
                "M" => {
                    snap.files.insert(name.into(), None);
                }
                "T" => {
                    // The output ends with an `x` that kept $( ) from eating its newlines.
                    let (code, out) = body.split_once('\n').unwrap_or((body, ""));
                    let out = out.strip_suffix('x').unwrap_or(out);
                    snap.tools
                        .insert(name.into(), (code.parse().unwrap_or(-1), out.into()));
                }
                _ => panic!("bad snapshot part {head:?}: {text}"),
            }
        }
        snap
    }

    fn file(&self, path: &str) -> Option<&str> {
        self.files
            .get(path)
            .unwrap_or_else(|| panic!("{path} not in the snapshot"))
            .as_deref()
    }

    fn tool(&self, name: &str) -> &(i32, String) {
        self.tools
            .get(name)
            .unwrap_or_else(|| panic!("{name} not in the snapshot"))
    }
}

/// Temporary files the agent's writers leave when killed between create and rename.
const TEMP_GLOBS: &str = "/etc/.*.tmp-* /etc/sudoers.d/.*.tmp-* /etc/ssh/.*.tmp-* \
     /etc/ssh/sshd_config.d/.*.tmp-* /etc/ssh/guest-agent/.*.tmp-* /var/lib/guest-agent/.*.tmp-* \
     /home/.*.guest-agent-* /home/*/.ssh/.*.tmp-*";

fn temp_script() -> String {
    format!("for f in {TEMP_GLOBS}; do [ -e \"$f\" ] && echo \"$f\"; done; true")
}

fn snap_temp_files(snap: &Snap) -> Vec<String> {
    snap.tool("temp").1.lines().map(str::to_owned).collect()
}

fn temp_files(env: &TestEnv) -> Vec<String> {
    let (_, out) = sh(
        env,
        &format!("for f in {TEMP_GLOBS}; do [ -e \"$f\" ] && echo \"$f\"; done; true"),
    );
    out.lines().map(str::to_owned).collect()
}

/// Temporary files that a reader would pick up: sudo reads names without a dot, sshd's
/// `Include sshd_config.d/*.conf` names ending in `.conf`.
fn harmful_temp(files: &[String]) -> Vec<String> {
    files
        .iter()
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or("");
            (f.starts_with("/etc/sudoers.d/") && !name.contains('.'))
                || (f.starts_with("/etc/ssh/sshd_config.d/") && name.ends_with(".conf"))
        })
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The account files

#[derive(Clone)]
struct AccountFiles {
    passwd: String,
    shadow: String,
    group: String,
    gshadow: String,
}

impl AccountFiles {
    fn read(env: &TestEnv) -> AccountFiles {
        AccountFiles::of(&Snap::take(env, &[]))
    }

    fn of(snap: &Snap) -> AccountFiles {
        let r = |p| {
            snap.file(p)
                .unwrap_or_else(|| panic!("{p} missing"))
                .to_owned()
        };
        AccountFiles {
            passwd: r("/etc/passwd"),
            shadow: r("/etc/shadow"),
            group: r("/etc/group"),
            gshadow: r("/etc/gshadow"),
        }
    }
}

/// name -> fields of a colon file; every line must have `fields` fields and a unique name.
fn parse_colon(
    what: &str,
    text: &str,
    fields: usize,
) -> Result<BTreeMap<String, Vec<String>>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(format!("{what}: no final newline (truncated?)"));
    }
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<String> = line.split(':').map(str::to_owned).collect();
        if f.len() != fields || f[0].is_empty() {
            return Err(format!("{what}:{}: malformed line {line:?}", n + 1));
        }
        if out.insert(f[0].clone(), f).is_some() {
            return Err(format!("{what}:{}: duplicate name in {line:?}", n + 1));
        }
    }
    Ok(out)
}

/// What the account files hold of the managed users.
#[derive(Debug, Default)]
struct AccountsView {
    /// Managed users with a passwd line, and their uid.
    users: BTreeMap<String, u32>,
    /// Names with a group, gshadow or shadow line but no passwd line (an interrupted pass).
    orphans: BTreeSet<String>,
    /// Members of the sudo group.
    sudo: BTreeSet<String>,
}

/// Checks the four files against the rules in the module documentation.
fn check_accounts(
    base: &AccountFiles,
    now: &AccountFiles,
    universe: &BTreeSet<String>,
) -> Result<AccountsView, String> {
    let files = [
        ("passwd", &base.passwd, &now.passwd, 7),
        ("shadow", &base.shadow, &now.shadow, 9),
        ("group", &base.group, &now.group, 4),
        ("gshadow", &base.gshadow, &now.gshadow, 4),
    ];
    let mut parsed = Vec::new();
    for (what, old, new, fields) in files {
        let old = parse_colon(what, old, fields)?;
        let new = parse_colon(what, new, fields)?;
        for (name, f) in &old {
            if name != SUDO_GROUP && new.get(name) != Some(f) {
                return Err(format!(
                    "{what}: line of {name} (not the agent's) changed or lost: {:?}",
                    new.get(name)
                ));
            }
        }
        for name in new.keys() {
            if !old.contains_key(name) && !universe.contains(name) && name != SUDO_GROUP {
                return Err(format!("{what}: unexpected new entry {name}"));
            }
        }
        parsed.push(new);
    }
    let [passwd, shadow, group, gshadow]: [BTreeMap<String, Vec<String>>; 4] =
        parsed.try_into().expect("four files");
    let mut view = AccountsView::default();
    for name in universe {
        let (p, s, g, gs) = (
            passwd.get(name),
            shadow.get(name),
            group.get(name),
            gshadow.get(name),
        );
        // The agent's write order: group, gshadow, shadow, passwd.
        let order_ok = (p.is_none() || s.is_some())
            && (s.is_none() || gs.is_some())
            && (gs.is_none() || g.is_some());
        if !order_ok {
            return Err(format!(
                "{name}: entries not in write order: passwd {p:?} shadow {s:?} group {g:?} gshadow {gs:?}"
            ));
        }
        if let Some(g) = g {
            let id: u32 = g[2]
                .parse()
                .map_err(|_| format!("group {name}: bad gid {g:?}"))?;
            if g[1] != "x" || !g[3].is_empty() {
                return Err(format!("group {name}: not the agent's shape: {g:?}"));
            }
            if let Some(p) = p {
                let want = [
                    name.as_str(),
                    "x",
                    &id.to_string(),
                    &id.to_string(),
                    "",
                    &format!("/home/{name}"),
                    "/bin/bash",
                ];
                if p.iter().map(String::as_str).ne(want.iter().copied()) {
                    return Err(format!("passwd {name}: {p:?}, want {want:?}"));
                }
                view.users.insert(name.clone(), id);
            } else {
                view.orphans.insert(name.clone());
            }
        }
        if let Some(s) = s
            && (s[1] != "*"
                || s[2].parse::<u64>().is_err()
                || s[3..] != ["0", "99999", "7", "", "", ""])
        {
            return Err(format!("shadow {name}: not the agent's shape: {s:?}"));
        }
        if let Some(gs) = gs
            && gs[1..] != ["!", "", ""]
        {
            return Err(format!("gshadow {name}: not the agent's shape: {gs:?}"));
        }
    }
    let ids: BTreeSet<u32> = view.users.values().copied().collect();
    if ids.len() != view.users.len() {
        return Err(format!("two managed users share a uid: {:?}", view.users));
    }
    if let Some(g) = group.get(SUDO_GROUP) {
        let members: BTreeSet<String> = g[3]
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        let gs = gshadow
            .get(SUDO_GROUP)
            .ok_or("the sudo group has no gshadow line")?;
        let gs_members: BTreeSet<String> = gs[3]
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        if members != gs_members {
            return Err(format!(
                "sudo group members differ between group and gshadow: {members:?} / {gs_members:?}"
            ));
        }
        if let Some(m) = members.iter().find(|m| !universe.contains(*m)) {
            return Err(format!("unexpected sudo group member {m}"));
        }
        view.sudo = members;
    }
    Ok(view)
}

/// `pwck -r -q` and `grpck -r`: exit 0, or complaints only about `allowed` names.
fn check_pwck(snap: &Snap, allowed: &BTreeSet<String>) -> Result<(), String> {
    for tool in ["pwck", "grpck"] {
        let (code, out) = snap.tool(tool).clone();
        if code == 0 {
            continue;
        }
        // With orphan entries (a pass killed between its writes), the tools also print lines
        // naming no entry: the problem's kind and their closing line. Every line naming an
        // entry must still name an allowed one.
        let generic = [
            "no matching password file entry in /etc/passwd",
            "no matching group file entry in /etc/group",
            // A kill between the group and gshadow writes (the agent's order: group, gshadow,
            // shadow, passwd): grpck names the group on the next line.
            "no matching group file entry in /etc/gshadow",
            "pwck: no changes",
            "grpck: no changes",
        ];
        let unexplained: Vec<&str> = out
            .lines()
            .filter(|l| allowed.is_empty() || !generic.contains(&l.trim()))
            .filter(|l| {
                !allowed.iter().any(|n| {
                    l.contains(&format!("'{n}'"))
                        || l.contains(&format!(" {n} "))
                        || l.ends_with(&format!(" {n}?"))
                        || l.contains(&format!("{n}:"))
                })
            })
            .filter(|l| !l.trim().is_empty())
            .collect();
        if !unexplained.is_empty() {
            return Err(format!("{tool} exit {code}: {out}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The metadata-keys VM

struct KeysVersion {
    users: BTreeSet<String>,
    key: String,
}

impl KeysVersion {
    fn ssh_keys(&self) -> String {
        self.users
            .iter()
            .map(|u| format!("{u}:{}\n", self.key))
            .collect()
    }

    fn authorized_keys(&self) -> String {
        format!("{BEGIN}\n{}\n{END}\n", self.key)
    }
}

/// Every managed authorized_keys is empty or exactly version A's or B's; returns
/// user -> 'A' / 'B' / '0' (empty) / '-' (no file).
const KEYS_SCRIPT: &str = "for d in /home/*/; do u=$(basename \"$d\"); f=\"$d.ssh/authorized_keys\"; \
         if [ -f \"$f\" ]; then echo \"==> $u $(stat -c '%a %U' \"$f\")\"; cat \"$f\"; \
         else echo \"==> $u -\"; fi; done";

fn check_keys_files(
    snap: &Snap,
    universe: &BTreeSet<String>,
    a: &KeysVersion,
    b: &KeysVersion,
) -> Result<BTreeMap<String, char>, String> {
    let out = &snap.tool("keys").1;
    let mut files: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.split_inclusive('\n') {
        if let Some(head) = line.strip_prefix("==> ") {
            let mut w = head.trim_end().splitn(2, ' ');
            let user = w.next().unwrap_or("").to_owned();
            let meta = w.next().unwrap_or("").to_owned();
            files.insert(user.clone(), (meta, String::new()));
            current = Some(user);
        } else if let Some(u) = &current {
            files.get_mut(u).expect("current").1.push_str(line);
        }
    }
    let mut out = BTreeMap::new();
    for (user, (meta, text)) in files {
        if !universe.contains(&user) {
            continue;
        }
        let state = if meta == "-" {
            '-'
        } else if meta != format!("600 {user}") {
            return Err(format!("{user}: authorized_keys mode/owner {meta}"));
        } else if text.is_empty() {
            '0'
        } else if text == a.authorized_keys() {
            'A'
        } else if text == b.authorized_keys() {
            'B'
        } else {
            return Err(format!(
                "{user}: authorized_keys is neither A nor B:\n{text}"
            ));
        };
        out.insert(user, state);
    }
    Ok(out)
}

fn sudoers_script(path: &str) -> String {
    format!("if [ -e {path} ]; then visudo -c -f {path}; fi; visudo -c")
}

fn check_sudoers(snap: &Snap) -> Result<(), String> {
    let (code, out) = snap.tool("visudo");
    if *code != 0 {
        return Err(format!("visudo: {out}"));
    }
    Ok(())
}

fn check_json(snap: &Snap, path: &str) -> Result<Option<Value>, String> {
    match snap.file(path) {
        None => Ok(None),
        Some(text) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| format!("{path} does not parse ({e}): {text:?}")),
    }
}

fn check_keys_vm(
    env: &TestEnv,
    base: &AccountFiles,
    universe: &BTreeSet<String>,
    a: &KeysVersion,
    b: &KeysVersion,
    sshd_config: &str,
    nsswitch: &str,
) -> Result<(AccountsView, BTreeMap<String, char>), String> {
    let temp = temp_script();
    let sudoers = sudoers_script("/etc/sudoers.d/guest-agent-sudoers");
    let snap = Snap::take(
        env,
        &[
            ("pwck", "pwck -r -q"),
            ("grpck", "grpck -r"),
            ("keys", KEYS_SCRIPT),
            ("visudo", &sudoers),
            ("temp", &temp),
        ],
    );
    let view = check_accounts(base, &AccountFiles::of(&snap), universe)?;
    check_pwck(&snap, &view.orphans)?;
    let keys = check_keys_files(&snap, universe, a, b)?;
    check_sudoers(&snap)?;
    if let Some(state) = check_json(&snap, "/var/lib/guest-agent/state.json")? {
        for field in ["created", "managed"] {
            if !state[field].is_array() {
                return Err(format!("state.json without {field}: {state}"));
            }
        }
    }
    if snap.file("/etc/ssh/sshd_config") != Some(sshd_config) {
        return Err("sshd_config changed with OS Login off".into());
    }
    if snap.file("/etc/nsswitch.conf") != Some(nsswitch) {
        return Err("nsswitch.conf changed with OS Login off".into());
    }
    let harmful = harmful_temp(&snap_temp_files(&snap));
    if !harmful.is_empty() {
        return Err(format!(
            "temporary files a reader would pick up: {harmful:?}"
        ));
    }
    Ok((view, keys))
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("{prefix}{i:03}")).collect()
}

#[test]
fn metadata_keys_survive_fifty_kills_during_reconciles_of_200_users() {
    if !require_root("metadata_keys_survive_fifty_kills_during_reconciles_of_200_users") {
        return;
    }
    let t_test = Instant::now();
    let mut rng = Rng::new("crash/metadata-keys");
    let mut env = TestEnv::with_emulator("crash-keys", None);
    let (key_a, pub_a) = keypair_of(env.dir(), "key-a", "ed25519");
    let (key_b, pub_b) = keypair_of(env.dir(), "key-b", "ed25519");
    let a = KeysVersion {
        users: names("u", 0..200),
        key: pub_a,
    };
    let b = KeysVersion {
        users: names("u", 20..220),
        key: pub_b,
    };
    let universe: BTreeSet<String> = a.users.union(&b.users).cloned().collect();
    let base = AccountFiles::read(&env);
    let sshd_config = read(&env, "/etc/ssh/sshd_config").expect("sshd_config");
    let nsswitch = read(&env, "/etc/nsswitch.conf").expect("nsswitch.conf");
    let config = format!("{TEST_CONFIG}check_interval_secs = 2\n");
    let emu_set = |env: &TestEnv, v: &KeysVersion| {
        env.emulator()
            .set_attribute("instance", "ssh-keys", &v.ssh_keys())
    };
    emu_set(&env, &a);
    let mut on_b = false;
    let (mut children, mut max_orphans, mut temps_seen) = (0, 0, BTreeSet::new());
    let mut seen_states: BTreeMap<char, usize> = BTreeMap::new();
    for i in 0..KILLS_PER_VM {
        let t0 = start(&mut env, &config);
        // The first kills land in the first pass (200 users created); then half after a start,
        // half after a change.
        let what = if i < 4 || rng.below(2) == 0 {
            let d = rng.delay();
            std::thread::sleep(d);
            format!("{d:?} after start")
        } else {
            wait_ready(&mut env, t0);
            on_b = !on_b;
            emu_set(&env, if on_b { &b } else { &a });
            let d = rng.delay();
            std::thread::sleep(d);
            format!("{d:?} after switching to {}", if on_b { "B" } else { "A" })
        };
        let dump = env.agent().dump();
        children += kill9(&mut env);
        match check_keys_vm(&env, &base, &universe, &a, &b, &sshd_config, &nsswitch) {
            Ok((view, keys)) => {
                max_orphans = max_orphans.max(view.orphans.len());
                for s in keys.values() {
                    *seen_states.entry(*s).or_default() += 1;
                }
                eprintln!(
                    "kill {i:2}: {what}: {} users, {} orphan entries, {} sudoers, keys {:?}",
                    view.users.len(),
                    view.orphans.len(),
                    view.sudo.len(),
                    keys.values()
                        .fold(BTreeMap::<char, usize>::new(), |mut m, c| {
                            *m.entry(*c).or_default() += 1;
                            m
                        })
                );
            }
            Err(e) => panic!("kill {i} ({what}): {e}\n{dump}"),
        }
        temps_seen.extend(temp_files(&env));
    }
    let left = temp_files(&env);
    // Converges: the last version everywhere, one login with its key, sudo.
    let (fin, fin_key) = if on_b { (&b, &key_b) } else { (&a, &key_a) };
    let t0 = start(&mut env, &config);
    wait_ready(&mut env, t0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (view, keys) = loop {
        let r = check_keys_vm(&env, &base, &universe, &a, &b, &sshd_config, &nsswitch);
        let done = r.as_ref().ok().and_then(|(view, keys)| {
            let want = if on_b { 'B' } else { 'A' };
            let converged = fin.users.iter().all(|u| view.users.contains_key(u))
                && view.orphans.is_empty()
                && view.sudo == fin.users
                && universe.iter().all(|u| {
                    let s = keys.get(u).copied().unwrap_or('-');
                    if fin.users.contains(u) {
                        s == want
                    } else {
                        s == '0' || s == '-'
                    }
                });
            converged.then_some(())
        });
        if done.is_some() {
            break r.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no convergence to {} within 120 s: {:?}\n{}",
            if on_b { "B" } else { "A" },
            r.map(|(v, k)| (
                v,
                k.into_iter()
                    .filter(|(_, c)| *c != if on_b { 'B' } else { 'A' })
                    .collect::<Vec<_>>()
            )),
            env.agent().dump()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let (code, out) = sh(&env, "pwck -r -q && grpck -r");
    assert_eq!(code, 0, "pwck/grpck after convergence: {out}");
    let state = check_json(&Snap::take(&env, &[]), "/var/lib/guest-agent/state.json")
        .unwrap()
        .expect("state.json");
    let managed: BTreeSet<String> = state["managed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(&managed, &fin.users, "state.json managed users");
    let homes = sh(
        &env,
        "for u in $(cut -d: -f1 /etc/passwd | grep '^u[0-9][0-9][0-9]$'); do \
         [ \"$(stat -c %U /home/$u 2>/dev/null)\" = \"$u\" ] || echo \"$u: home missing or not owned\"; done",
    )
    .1;
    assert!(homes.is_empty(), "homes: {homes}\n{}", env.agent().dump());
    let sshd = guest_agent_e2e::vm::start_sshd(env.vm(), &[]);
    for user in [fin.users.first().unwrap(), fin.users.last().unwrap()] {
        let out =
            guest_agent_e2e::vm::ssh(&env.ns, fin_key, user, "id -un; sudo -n true && echo sudo");
        assert!(
            out.status.success(),
            "login as {user}: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            env.agent().dump(),
            sshd.dump()
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{user}\nsudo\n")
        );
    }
    let other_key = if on_b { &key_a } else { &key_b };
    let out = guest_agent_e2e::vm::ssh(&env.ns, other_key, "u100", "true");
    assert!(!out.status.success(), "the other version's key still works");
    let after_restart = temp_files(&env);
    eprintln!(
        "crash/metadata-keys: {KILLS_PER_VM} kills, {children} children left running by them, \
         at most {max_orphans} orphan account entries after a kill, authorized_keys states seen \
         {seen_states:?}; {} temporary files seen over the run, {} left after the last kill, {} \
         still there after the converged restart: {after_restart:?}; {} users; {:.1}s",
        temps_seen.len(),
        left.len(),
        after_restart.len(),
        view.users.len(),
        t_test.elapsed().as_secs_f32()
    );
    let _ = keys;
}

// ---------------------------------------------------------------------------------------------
// The OS Login VM

const CA_FILE: &str = "/etc/ssh/guest-agent/trusted-ca.pub";
const DROPIN: &str = "/etc/ssh/sshd_config.d/60-guest-agent.conf";
const CACHE: &str = "/var/lib/guest-agent/directory.cache";

fn oslogin_user(name: &str, uid: u32, key: &str) -> Value {
    json!({"email": format!("{name}@example.com"), "username": name, "uid": uid, "gid": uid,
           "keys": [{"key": key, "expiration_usec": null}], "login": true, "admin": false})
}

fn blob(key: &str) -> String {
    key.split_whitespace().nth(1).unwrap_or("").to_owned()
}

/// What the OS Login files hold after a kill (printed with `{:?}`).
#[derive(Debug)]
#[allow(dead_code)]
struct OsLoginView {
    nsswitch_edited: bool,
    dropin: bool,
    ca_keys: usize,
    cache_users: Option<usize>,
}

#[allow(clippy::too_many_arguments)]
fn check_oslogin_vm(
    env: &TestEnv,
    base: &AccountFiles,
    nsswitch: &str,
    sshd_config: &str,
    dropin_seen: &mut Option<String>,
    served: &BTreeSet<String>,
    universe: &BTreeSet<String>,
) -> Result<OsLoginView, String> {
    let temp = temp_script();
    let sudoers = sudoers_script("/etc/sudoers.d/guest-agent-oslogin");
    let snap = Snap::take(
        env,
        &[
            ("sshd", "/usr/sbin/sshd -t -f /etc/ssh/sshd_config"),
            ("cache", &format!("[ -e {CACHE} ] && base64 -w0 {CACHE}")),
            ("visudo", &sudoers),
            ("temp", &temp),
        ],
    );
    // nsswitch.conf: the original, or it with guestagent on both passwd and group lines.
    let ns = snap
        .file("/etc/nsswitch.conf")
        .ok_or("nsswitch.conf missing")?;
    let nsswitch_edited = ns != nsswitch;
    if nsswitch_edited {
        let ok = ns.replace(" guestagent", "") == nsswitch
            && ["passwd:", "group:"].iter().all(|db| {
                ns.lines()
                    .any(|l| l.starts_with(db) && l.split_whitespace().any(|w| w == "guestagent"))
            });
        if !ok {
            return Err(format!("nsswitch.conf neither original nor edited:\n{ns}"));
        }
    }
    // sshd: the main config untouched, the drop-in absent or always the same, sshd -t passes.
    if snap.file("/etc/ssh/sshd_config") != Some(sshd_config) {
        return Err("sshd_config changed (the drop-in layout never edits it)".into());
    }
    let dropin = snap.file(DROPIN).map(str::to_owned);
    if let Some(d) = &dropin {
        match dropin_seen {
            Some(seen) if seen != d => {
                return Err(format!(
                    "drop-in differs from before:\n{d}\nbefore:\n{seen}"
                ));
            }
            Some(_) => {}
            None => {
                if !d.contains("AuthorizedKeysCommand ") || !d.ends_with('\n') {
                    return Err(format!("drop-in incomplete:\n{d}"));
                }
                *dropin_seen = Some(d.clone());
            }
        }
    }
    let (code, out) = snap.tool("sshd");
    if *code != 0 {
        return Err(format!("sshd -t: {out}"));
    }
    // The CA file: absent, empty, or exactly one CA key served so far.
    let ca_keys = match snap.file(CA_FILE) {
        None | Some("") => 0,
        Some(text) => {
            let lines: Vec<&str> = text.lines().collect();
            if !text.ends_with('\n') || lines.len() != 1 || !served.contains(&blob(lines[0])) {
                return Err(format!("CA file is not one served CA key: {text:?}"));
            }
            1
        }
    };
    // The directory cache opens and validates.
    let cache = snap.tool("cache");
    let cache_users = match cache.0 {
        0 => {
            let bytes = base64(&cache.1);
            let cache = guest_agent_wire::cache::Cache::parse(&bytes)
                .map_err(|e| format!("directory cache does not parse: {e}"))?;
            cache
                .validate_all()
                .map_err(|e| format!("directory cache does not validate: {e}"))?;
            Some(cache.user_count())
        }
        _ => None,
    };
    check_json(&snap, "/var/lib/guest-agent/oslogin-state.json")?;
    check_json(&snap, "/var/lib/guest-agent/state.json")?;
    check_sudoers(&snap)?;
    // OS Login users never reach the account files.
    let view = check_accounts(base, &AccountFiles::of(&snap), universe)?;
    if !view.users.is_empty() || !view.orphans.is_empty() {
        return Err(format!("OS Login users in the account files: {view:?}"));
    }
    let harmful = harmful_temp(&snap_temp_files(&snap));
    if !harmful.is_empty() {
        return Err(format!(
            "temporary files a reader would pick up: {harmful:?}"
        ));
    }
    Ok(OsLoginView {
        nsswitch_edited,
        dropin: dropin.is_some(),
        ca_keys,
        cache_users,
    })
}

/// Standard base64 (what `base64 -w0` prints).
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let n = chunk.iter().fold(0u32, |n, c| {
            n << 6 | u32::from(if *c == b'=' { 0 } else { value(*c) })
        });
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    out
}

fn ca_key(env: &TestEnv) -> String {
    env.emulator().ok("GET", "/ca", None).json()["public_keys"][0]
        .as_str()
        .expect("CA key")
        .to_owned()
}

#[test]
fn oslogin_files_survive_fifty_kills_during_syncs_rotations_and_toggles() {
    if !require_root("oslogin_files_survive_fifty_kills_during_syncs_rotations_and_toggles") {
        return;
    }
    let t_test = Instant::now();
    let mut rng = Rng::new("crash/oslogin");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keypair(dir.path(), "oslogin-user");
    let version_a = names("o", 0..200);
    let version_b: BTreeSet<String> = names("o", 20..200)
        .union(&names("p", 0..20))
        .cloned()
        .collect();
    let uid_of = |name: &str| -> u32 {
        let n: u32 = name[1..].parse().expect("number");
        if name.starts_with('o') {
            300_000 + n
        } else {
            310_000 + n
        }
    };
    let users: Vec<Value> = version_a
        .iter()
        .map(|n| oslogin_user(n, uid_of(n), &public))
        .collect();
    let mut env = TestEnv::with_emulator("crash-osl", Some(&json!({"users": users})));
    env.emulator()
        .set_attribute("project", "enable-oslogin", "TRUE");
    let universe: BTreeSet<String> = version_a.union(&version_b).cloned().collect();
    let base = AccountFiles::read(&env);
    let nsswitch = read(&env, "/etc/nsswitch.conf").expect("nsswitch.conf");
    let sshd_config = read(&env, "/etc/ssh/sshd_config").expect("sshd_config");
    let config = format!(
        "[metadata]\nwatch_timeout_secs = 5\n[oslogin]\nhelper_path = \"{}\"\nca_refresh_secs = 1\n",
        guest_agent_e2e::vm::AGENT
    );
    let mut served: BTreeSet<String> = [blob(&ca_key(&env))].into();
    let mut dropin_seen = None;
    let (mut on, mut on_b) = (true, false);
    let (mut rotations, mut toggles, mut swaps, mut children) = (0, 0, 0, 0);
    let mut temps_seen = BTreeSet::new();
    for i in 0..KILLS_PER_VM {
        let t0 = start(&mut env, &config);
        let what = if i < 2 || rng.below(3) == 0 {
            let d = rng.delay();
            std::thread::sleep(d);
            format!("{d:?} after start")
        } else {
            wait_ready(&mut env, t0);
            // With OS Login off there is nothing to rotate or sync: it comes on again.
            let action = match if on { rng.below(5) } else { 2 } {
                0 | 1 => {
                    let k = env.emulator().ok("POST", "/ca/rotate", None).json()["public_key"]
                        .as_str()
                        .expect("new CA")
                        .to_owned();
                    served.insert(blob(&k));
                    rotations += 1;
                    "a CA rotation".to_string()
                }
                2 | 3 => {
                    on = !on;
                    env.emulator().set_attribute(
                        "project",
                        "enable-oslogin",
                        if on { "TRUE" } else { "FALSE" },
                    );
                    toggles += 1;
                    format!("OS Login {}", if on { "on" } else { "off" })
                }
                _ => {
                    let (from, to) = if on_b {
                        (&version_b, &version_a)
                    } else {
                        (&version_a, &version_b)
                    };
                    for gone in from.difference(to) {
                        env.emulator()
                            .ok("DELETE", &format!("/oslogin/users/{gone}"), None);
                    }
                    for new in to.difference(from) {
                        env.emulator().ok(
                            "POST",
                            "/oslogin/users",
                            Some(&oslogin_user(new, uid_of(new), &public).to_string()),
                        );
                    }
                    on_b = !on_b;
                    env.agent().signal(Signal::SIGUSR1);
                    swaps += 1;
                    format!("directory {} and SIGUSR1", if on_b { "B" } else { "A" })
                }
            };
            let d = rng.delay();
            std::thread::sleep(d);
            format!("{d:?} after {action}")
        };
        let dump = env.agent().dump();
        children += kill9(&mut env);
        match check_oslogin_vm(
            &env,
            &base,
            &nsswitch,
            &sshd_config,
            &mut dropin_seen,
            &served,
            &universe,
        ) {
            Ok(v) => eprintln!("kill {i:2}: {what}: {v:?}"),
            Err(e) => panic!("kill {i} ({what}): {e}\n{dump}"),
        }
        temps_seen.extend(temp_files(&env));
    }
    let left = temp_files(&env);

    // Converges, off then on: off gives back nsswitch.conf and sshd's files as they were and
    // removes the cache and the CA file; on brings them back with the last directory and CA.
    let wait = |env: &TestEnv, what: &str, ok: &dyn Fn(&TestEnv) -> bool| {
        let t0 = Instant::now();
        while !ok(env) {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no convergence ({what}) within 120 s\n{}",
                env.agent().dump()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    env.emulator()
        .set_attribute("project", "enable-oslogin", "FALSE");
    let t0 = start(&mut env, &config);
    wait_ready(&mut env, t0);
    wait(&env, "OS Login off", &|env| {
        read(env, "/etc/nsswitch.conf").as_deref() == Some(nsswitch.as_str())
            && read(env, DROPIN).is_none()
            && read_bytes(env, CACHE).is_none()
            && read(env, CA_FILE).is_none()
    });
    env.emulator()
        .set_attribute("project", "enable-oslogin", "TRUE");
    let fin = if on_b { &version_b } else { &version_a };
    let current_ca = blob(&ca_key(&env));
    wait(&env, "OS Login on", &|env| {
        let cache_ok = read_bytes(env, CACHE).is_some_and(|bytes| {
            guest_agent_wire::cache::Cache::parse(&bytes).is_ok_and(|c| {
                c.validate_all().is_ok()
                    && fin.iter().all(|u| c.user_by_name(u.as_bytes()).is_some())
                    && universe
                        .difference(fin)
                        .all(|u| c.user_by_name(u.as_bytes()).is_none())
            })
        });
        cache_ok
            && read(env, "/etc/nsswitch.conf").is_some_and(|n| n != nsswitch)
            && read(env, DROPIN).is_some()
            && read(env, CA_FILE).is_some_and(|c| blob(&c) == current_ca)
    });
    check_oslogin_vm(
        &env,
        &base,
        &nsswitch,
        &sshd_config,
        &mut dropin_seen,
        &served,
        &universe,
    )
    .unwrap_or_else(|e| panic!("after convergence: {e}\n{}", env.agent().dump()));
    let sample = fin.iter().next_back().unwrap();
    let (code, out) = sh(&env, &format!("getent passwd {sample}"));
    assert_eq!(code, 0, "getent passwd {sample}: {out}");
    let sshd = guest_agent_e2e::vm::start_sshd(env.vm(), &[]);
    let out = guest_agent_e2e::vm::ssh(&env.ns, Path::new(&key), sample, "id -un");
    assert!(
        out.status.success(),
        "login as {sample}: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.agent().dump(),
        sshd.dump()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sample.as_str());
    let after_restart = temp_files(&env);
    eprintln!(
        "crash/oslogin: {KILLS_PER_VM} kills ({rotations} after CA rotations, {toggles} after \
         OS Login toggles, {swaps} after directory swaps), {children} children left running by \
         them, {} CA keys served; {} temporary files seen over the run, {} left after the last \
         kill, {} still there after the converged restart: {after_restart:?}; {:.1}s",
        served.len(),
        temps_seen.len(),
        left.len(),
        after_restart.len(),
        t_test.elapsed().as_secs_f32()
    );
}
