//! Users learned on a miss go to the delta file, not into a rewrite of the whole directory
//! cache (issue 15, item 1): a directory synced, users added to the emulator after the sync,
//! looked up through glibc (`getent`, `id`) in the VM, and then, by behaviour: the daemon
//! wrote them to `directory.delta`, the main cache file was not rewritten, repeated lookups are
//! answered by the module from the delta (no request at the emulator, no socket request in the
//! daemon's log), and a new user's first ssh login right after works. Needs root.

use std::time::{Duration, Instant};

use guest_agent_e2e::oslogin::{OsLoginVm, keypair, user};
use guest_agent_e2e::require_root;
use guest_agent_wire::cache::{CACHE_PATH, Cache, DELTA_PATH};
use serde_json::{Value, json};

const SYNCED: usize = 2_000;
const ADDED: usize = 50;
const FIRST_UID: u32 = 300_000;

fn name(i: usize) -> String {
    format!("dir{i:05}")
}

fn added(i: usize) -> String {
    format!("late{i:03}")
}

/// The emulator's directory at the start: `SYNCED` users sharing one key.
fn state(key: &str) -> Value {
    let users: Vec<Value> = (0..SYNCED)
        .map(|i| user(&name(i), FIRST_UID + i as u32, key, true, false))
        .collect();
    json!({ "users": users })
}

/// A file's bytes inside the VM (None when it is not there).
fn read_bytes(vm: &OsLoginVm, path: &str) -> Option<Vec<u8>> {
    let out = vm.env.vm().command("cat").arg(path).output().ok()?;
    out.status.success().then_some(out.stdout)
}

/// (inode, mtime with nanoseconds) of a file in the VM.
fn stamp(vm: &OsLoginVm, path: &str) -> String {
    vm.env
        .vm()
        .run(&format!("stat -c '%i %.9Y' {path}"))
        .trim()
        .to_owned()
}

/// `getent passwd NAME` until it answers (30 s at most: the first lookup goes to the daemon,
/// which a loaded machine may answer past the module's 90 ms deadline; the daemon keeps the
/// answer, so a retry finds it). Returns the answer and how many lookups it took.
fn getent_found(vm: &OsLoginVm, key: &str) -> (i32, String, u32) {
    let t0 = Instant::now();
    let mut tries = 1;
    loop {
        let (code, out) = vm.vm_run("getent", &["passwd", key]);
        if code == 0 || t0.elapsed() > Duration::from_secs(30) {
            return (code, out, tries);
        }
        tries += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The daemon's socket request lines since `since` for `verb` (the daemon logs the verb, not
/// the name asked).
fn socket_requests(vm: &OsLoginVm, since: Instant, verb: &str) -> usize {
    let needle = format!("verb=\"{verb}\"");
    vm.env
        .agent()
        .lines_since(since, &["socket request", &needle])
        .len()
}

#[test]
fn users_learned_after_the_sync_go_to_the_delta_and_the_cache_is_not_rebuilt() {
    if !require_root("users_learned_after_the_sync_go_to_the_delta_and_the_cache_is_not_rebuilt") {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let (key, public) = keypair(scratch.path(), "shared");
    let started = Instant::now();
    let mut vm = OsLoginVm::start_with(
        "delta",
        // No periodic sync during the test: every rewrite of the main file would be ours.
        "sync_interval_secs = 3600\n",
        Some(&state(&public)),
        &[("RUST_LOG", "info,guest_agent::socket=debug")],
        |_| {},
    );
    let sync_lines = |vm: &OsLoginVm| {
        vm.env
            .agent()
            .lines_since(started, &["OS Login directory synced"])
            .len()
    };
    // The baseline once the sync's cache file is written (the daemon logs it).
    vm.env.agent().expect_line(
        started,
        &["directory cache written"],
        Duration::from_secs(600),
    );
    let syncs = sync_lines(&vm);
    let main_before = stamp(&vm, CACHE_PATH);
    let main = Cache::parse(&read_bytes(&vm, CACHE_PATH).expect("main cache"))
        .map(|c| (c.user_count(), c.generated_at_unix(), c.users_gid()));
    let (main_users, generated_at, users_gid) = main.expect("main cache parses");
    assert!(main_users >= SYNCED, "{main_users} users in the cache");
    assert!(
        read_bytes(&vm, DELTA_PATH).is_none(),
        "no delta after a sync"
    );

    // Users added after the sync, each looked up once: the daemon answers (and learns them).
    let emu = vm.env.emulator();
    for i in 0..ADDED {
        let u = user(
            &added(i),
            FIRST_UID + 100_000 + i as u32,
            &public,
            true,
            false,
        );
        emu.ok("POST", "/oslogin/users", Some(&u.to_string()));
    }
    let first = Instant::now();
    let mut retried = 0;
    for i in 0..ADDED {
        let (code, out, tries) = getent_found(&vm, &added(i));
        assert_eq!(code, 0, "{}: {out}", added(i));
        assert!(out.starts_with(&format!("{}:*:", added(i))), "{out}");
        retried += tries - 1;
    }
    eprintln!("{ADDED} first lookups, {retried} retried");
    // The daemon's log is read as it comes (a busy machine delivers its lines late): wait for
    // them, with a 10x margin, instead of counting at once.
    let logged = Instant::now();
    while socket_requests(&vm, first, "getpwnam") < ADDED
        && logged.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        socket_requests(&vm, first, "getpwnam") >= ADDED,
        "each first lookup went to the daemon (and its log shows socket requests): {} lines",
        socket_requests(&vm, first, "getpwnam")
    );

    // The daemon writes them to the delta (debounced): it holds exactly the learned users.
    let t0 = Instant::now();
    let delta = loop {
        let held = read_bytes(&vm, DELTA_PATH).and_then(|b| {
            let c = Cache::parse(&b).ok()?;
            (0..ADDED)
                .all(|i| c.user_by_name(added(i).as_bytes()).is_some())
                .then(|| (c.user_count(), c.users_gid(), b.len()))
        });
        if let Some(h) = held {
            break h;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the delta never held the {ADDED} users\n{}",
            vm.env.agent().dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("delta: {} users, {} bytes", delta.0, delta.2);
    assert_eq!(delta.0, ADDED, "only the learned users are in the delta");
    assert!(users_gid.is_some());
    assert_eq!(
        delta.1, users_gid,
        "the delta's header names the users group"
    );
    let mode = vm.env.vm().run(&format!("stat -c '%a %u' {DELTA_PATH}"));
    assert_eq!(mode.trim(), "644 0");

    // Repeated lookups: answered by the module from the delta.
    emu.clear_requests();
    let again = Instant::now();
    for i in 0..ADDED {
        for _ in 0..3 {
            let (code, out) = vm.vm_run("getent", &["passwd", &added(i)]);
            assert_eq!(code, 0, "{}: {out}", added(i));
        }
        let (code, out) = vm.vm_run("id", &[&added(i)]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("(guest-agent-oslogin)"), "{out}");
        assert!(
            out.contains(&format!(
                "gid={}({})",
                FIRST_UID + 100_000 + i as u32,
                added(i)
            )),
            "the personal group from the delta: {out}"
        );
    }
    for i in 0..ADDED {
        let n = added(i);
        assert_eq!(
            emu.requests_with_param(&format!("username={n}")),
            0,
            "{n} asked of the emulator again"
        );
    }
    // Nothing else looks users up in the VM meanwhile: no socket request at all.
    for verb in ["getpwnam", "getpwuid", "initgroups", "getgrnam", "getgrgid"] {
        assert_eq!(
            socket_requests(&vm, again, verb),
            0,
            "{verb} reached the daemon: the delta did not answer\n{}",
            vm.env
                .agent()
                .lines_since(again, &["socket request"])
                .join("\n")
        );
    }
    assert_eq!(
        stamp(&vm, CACHE_PATH),
        main_before,
        "the main cache file was rewritten"
    );
    let now = Cache::parse(&read_bytes(&vm, CACHE_PATH).unwrap()).map(|c| c.generated_at_unix());
    assert_eq!(now.ok(), Some(generated_at));
    assert_eq!(sync_lines(&vm), syncs, "no sync ran meanwhile");

    // A new user's first ssh login right after.
    let (fresh_key, fresh_pub) = keypair(scratch.path(), "fresh");
    emu.ok(
        "POST",
        "/oslogin/users",
        Some(&user("fresh", FIRST_UID + 200_000, &fresh_pub, true, false).to_string()),
    );
    let out = vm.ssh(&fresh_key, "fresh", "id -un");
    assert!(
        out.status.success(),
        "fresh: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.sshd().dump()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fresh\n");
    // And one of the learned users logs in too (from the delta).
    let out = vm.ssh(&key, &added(7), "id -un");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stamp(&vm, CACHE_PATH), main_before);
    vm.sshd = None;
}

/// Issue 15's CI check at scale: 100,000 users synced (generated in the emulator), then 200
/// users added after the sync, each looked up a first time (answered by the daemon) and then
/// again every 10 ms for 1 s, in long-running processes (20 at once, 10 users each; a process
/// sees the delta at its module's next recheck, and asks the daemon until then): every
/// repeated lookup answers the user (0 failures), the main cache file is never rewritten, the
/// delta holds the 200, and a new user's first ssh login right after succeeds. Before the
/// delta, every learned user rebuilt the 21 MB file and 53 of 200 lookups failed. A first
/// lookup that misses the module's 90 ms deadline on a loaded machine is retried (counted in
/// the log; the daemon keeps the answer): the first answer's latency is `bench-report`'s.
#[test]
fn at_100000_users_lookups_of_users_added_after_the_sync_never_fail() {
    if !require_root("at_100000_users_lookups_of_users_added_after_the_sync_never_fail") {
        return;
    }
    const USERS: usize = 100_000;
    const NEW: usize = 200;
    const WORKERS: usize = 20;
    let scratch = tempfile::tempdir().expect("tempdir");
    let (_, public) = keypair(scratch.path(), "shared");
    let users: Vec<Value> = (0..USERS)
        .map(|i| {
            let n = format!("big{i:06}");
            json!({"email": format!("{n}@example.com"), "username": n,
                   "uid": FIRST_UID + i as u32,
                   "keys": [{"key": public, "expiration_usec": null}],
                   "login": true, "admin": false})
        })
        .collect();
    let started = Instant::now();
    let vm = OsLoginVm::start_with(
        "delta100k",
        "sync_interval_secs = 3600\n",
        Some(&json!({ "users": users })),
        &[],
        |_| {},
    );
    let users_field = format!("users={USERS}");
    // The daemon writes the cache file, then logs the sync.
    vm.env.agent().expect_line(
        started,
        &["OS Login directory synced", &users_field],
        Duration::from_secs(600),
    );
    vm.env.agent().expect_line(
        started,
        &["directory cache written", &users_field],
        Duration::from_secs(60),
    );
    let main_before = stamp(&vm, CACHE_PATH);
    let new_uid = FIRST_UID + USERS as u32 + 1000;
    let emu = vm.env.emulator();
    for i in 0..NEW {
        let u = user(
            &format!("new{i:03}"),
            new_uid + i as u32,
            &public,
            true,
            false,
        );
        emu.ok("POST", "/oslogin/users", Some(&u.to_string()));
    }
    let perl = r#"use Time::HiRes qw(usleep time);
        my ($ok, $fail, $retried, @why) = (0, 0, 0);
        for my $n (@ARGV) {
          my @p = getpwnam($n); my $t0 = time;
          while (!@p || $p[0] ne $n) {
            if (time - $t0 > 30) { $fail++; push @why, "never $n"; last }
            $retried++; usleep(200000); @p = getpwnam($n);
          }
          my $end = time + 1;
          while (time < $end) {
            usleep(10000); my @q = getpwnam($n);
            if (@q && $q[0] eq $n && $q[2] == $p[2]) { $ok++ } else { $fail++; push @why, $n }
          }
        }
        print "RESULT $ok $fail $retried @why[0..4]\n";"#;
    let mut script = String::new();
    for w in 0..WORKERS {
        let names: Vec<String> = (0..NEW)
            .filter(|i| i % WORKERS == w)
            .map(|i| format!("new{i:03}"))
            .collect();
        script.push_str(&format!("perl -e \"$GA_SCRIPT\" {} &\n", names.join(" ")));
    }
    script.push_str("wait\n");
    let out = vm
        .env
        .vm()
        .command("sh")
        .args(["-c", &script])
        .env("GA_SCRIPT", perl)
        .output()
        .expect("perl lookups");
    let text = String::from_utf8_lossy(&out.stdout);
    let results: Vec<Vec<&str>> = text
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        results.len(),
        WORKERS,
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = |k: usize| -> u64 { results.iter().map(|r| r[k].parse::<u64>().unwrap()).sum() };
    let (ok, failed, retried) = (sum(0), sum(1), sum(2));
    eprintln!(
        "{NEW} users added after the sync: {ok} repeated lookups answered, {failed} failed, {retried} first lookups retried"
    );
    assert_eq!(failed, 0, "lookups failed: {text}");
    assert!(ok >= NEW as u64 * 10, "too few lookups ran: {ok}");
    // The daemon learned them into the delta; the 100,000-user file was never rewritten.
    let t0 = Instant::now();
    loop {
        let held = read_bytes(&vm, DELTA_PATH)
            .and_then(|b| Cache::parse(&b).ok().map(|c| c.user_count()))
            .unwrap_or(0);
        if held == NEW {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the delta holds {held} users"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        stamp(&vm, CACHE_PATH),
        main_before,
        "the main cache file was rewritten"
    );
    // A new user's first ssh login right after the directory grew.
    let (fresh_key, fresh_pub) = keypair(scratch.path(), "fresh");
    emu.ok(
        "POST",
        "/oslogin/users",
        Some(&user("fresh", new_uid + 5000, &fresh_pub, true, false).to_string()),
    );
    let out = vm.ssh(&fresh_key, "fresh", "id -un");
    assert!(
        out.status.success(),
        "fresh: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.sshd().dump()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fresh\n");
    assert_eq!(stamp(&vm, CACHE_PATH), main_before);
}
