//! Service-account tokens: both formats, rotation, refusal, never logged or written. Root.

use std::time::{Duration, Instant};

use guest_agent_e2e::{AgentOptions, TestEnv, require_root};
use serde_json::json;

fn env_with_agent(tag: &str, config: &str, setup: impl FnOnce(&TestEnv)) -> TestEnv {
    let mut env = TestEnv::with_emulator(tag, None);
    setup(&env);
    let t0 = Instant::now();
    env.start_agent(AgentOptions {
        config: config.into(),
        ..Default::default()
    });
    env.wait_ready(t0, Duration::from_secs(30));
    env
}

fn emulator_token(env: &TestEnv) -> String {
    let a = env.emulator().ok("GET", "/tokens/default", None).json();
    a["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{a}"))
        .to_owned()
}

/// `guest-agent token ARGS` inside the VM: (exit code, stdout, stderr).
fn token(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let out = env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .arg("token")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_token(env: &TestEnv, want: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (code, out, err) = token(env, &[]);
        if code == 0 && out.trim() == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "token never became the emulator's: {code} {out} {err}\n{}",
            env.agent().dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The token appears in no log line and in no file the agent wrote.
fn assert_never_leaked(env: &TestEnv, secret: &str) {
    assert!(
        !env.agent().lines().iter().any(|l| l.contains(secret)),
        "token in the agent's log"
    );
    let found = env.vm().sh(&format!(
        "grep -rl -- '{secret}' /var/lib/guest-agent /run/guest-agent /etc 2>/dev/null"
    ));
    assert!(
        found.stdout.is_empty(),
        "token written to {}",
        String::from_utf8_lossy(&found.stdout)
    );
}

#[test]
fn tokens_in_the_gce_format_with_rotation_before_expiry() {
    if !require_root("tokens_in_the_gce_format_with_rotation_before_expiry") {
        return;
    }
    let env = env_with_agent("tokgce", "[tokens]\nflavor = \"gce\"\n", |env| {
        // A short lifetime, so the refresh (at two thirds of it) happens during the test.
        env.emulator().ok(
            "POST",
            "/tokens/default/rotate",
            Some(r#"{"expires_in": 9}"#),
        );
    });
    let first = emulator_token(&env);
    wait_token(&env, &first, Duration::from_secs(30));
    let (code, json_out, _) = token(&env, &["--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(json_out.trim()).unwrap();
    assert_eq!(v["access_token"], json!(first));
    assert!(v["expires_in"].as_u64().unwrap() <= 9);
    assert_eq!(
        token(&env, &["--format", "header"]).1.trim(),
        format!("Authorization: Bearer {first}")
    );
    // The emulator rotates; the agent picks the new token up before the old one expires:
    // asked again and again until the new one comes, it always has a token to give (the old
    // one until its refresh, at two thirds of its 9 s), never a refusal in between.
    let rotated_at = Instant::now();
    env.emulator().ok(
        "POST",
        "/tokens/default/rotate",
        Some(r#"{"expires_in": 3599}"#),
    );
    let second = emulator_token(&env);
    assert_ne!(first, second);
    loop {
        let (code, out, err) = token(&env, &[]);
        if code == 0 && out.trim() == second {
            break;
        }
        assert!(
            code == 0 && out.trim() == first,
            "no valid token served before the new one came: {code} {out} {err}\n{}",
            env.agent().dump()
        );
        assert!(
            rotated_at.elapsed() < Duration::from_secs(60),
            "the new token never came\n{}",
            env.agent().dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "new token served {:?} after the rotation",
        rotated_at.elapsed()
    );
    assert_never_leaked(&env, &first);
    assert_never_leaked(&env, &second);
}

#[test]
fn tokens_in_the_ec2_format_with_imdsv2() {
    if !require_root("tokens_in_the_ec2_format_with_imdsv2") {
        return;
    }
    let env = env_with_agent("tokec2", "[tokens]\nflavor = \"ec2\"\n", |env| {
        env.emulator().ok(
            "PUT",
            "/ec2",
            Some(r#"{"enabled": true, "require_v2": true}"#),
        );
    });
    let want = emulator_token(&env);
    wait_token(&env, &want, Duration::from_secs(30));
    let puts = env
        .emulator()
        .requests()
        .into_iter()
        .filter(|r| r["method"] == json!("PUT") && r["path"] == json!("/latest/api/token"))
        .count();
    assert!(puts >= 1, "an IMDSv2 session was used");
    assert_never_leaked(&env, &want);
}

#[test]
fn tokens_are_refused_to_others_with_a_clear_error() {
    if !require_root("tokens_are_refused_to_others_with_a_clear_error") {
        return;
    }
    let env = env_with_agent("tokdeny", "", |_| {});
    let want = emulator_token(&env);
    wait_token(&env, &want, Duration::from_secs(30));
    let out = env
        .vm()
        .command("setpriv")
        .args([
            "--reuid=54321",
            "--regid=54321",
            "--clear-groups",
            guest_agent_e2e::vm::AGENT,
            "token",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guest-agent-token"), "names the group: {err}");
    // A member of the group may.
    env.vm().run("groupadd -g 4321 guest-agent-token");
    let out = env
        .vm()
        .command("setpriv")
        .args([
            "--reuid=54321",
            "--regid=54321",
            "--groups=4321",
            guest_agent_e2e::vm::AGENT,
            "token",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        want,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn identity_names_the_service_account_and_the_instance() {
    if !require_root("identity_names_the_service_account_and_the_instance") {
        return;
    }
    let env = env_with_agent("ident", "", |_| {});
    let out = env
        .vm()
        .command(guest_agent_e2e::vm::AGENT)
        .args(["identity", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tree = env.emulator().ok("GET", "/tree", None).json();
    assert_eq!(
        v["email"],
        tree["instance"]["serviceAccounts"]["default"]["email"]
    );
    assert_eq!(v["name"], tree["instance"]["name"]);
    assert_eq!(v["zone"], tree["instance"]["zone"]);
    assert_eq!(
        v["instance_id"].as_str().unwrap(),
        tree["instance"]["id"].to_string().trim_matches('"')
    );
    assert!(!v["scopes"].as_array().unwrap().is_empty());
}

/// The token-group attacker (Perl, as root in the VM, dropping to the ids it is given). Modes:
/// - `handoff UID GROUPS`: as UID with supplementary GROUPS ("-": none), connect, fork a child
///   that keeps the socket, exit; the child waits until the connecting process is reaped
///   (/proc/PID gone), then asks for a token. Prints `proc_gone 1` and `answer WORD`.
/// - `recycle OUTSIDER MEMBER TOKGID`: a process A of OUTSIDER (no other group) connects,
///   forks a child H that keeps the socket, and exits; A is reaped and its PID given to a new
///   process B of MEMBER with TOKGID (`ns_last_pid`: run it in a PID namespace of its own).
///   Then H asks for a token. Prints `recycled 1` (B had A's PID, checked), `tries N`,
///   `answer WORD`.
const TOKEN_CLIENT: &str = r##"
use strict; use warnings; use POSIX (); use Socket; use IO::Socket::UNIX; use IO::Handle;
$SIG{PIPE} = 'IGNORE'; $| = 1;
my $SOCK = '/run/guest-agent/agent.sock';
my ($mode, @a) = @ARGV;
sub become {
    my ($uid, $gid, @groups) = @_;
    $) = join(' ', $gid, @groups ? @groups : ($gid));
    $( = $gid;
    POSIX::setuid($uid) or die "setuid $uid: $!";
}
sub ask_token { my ($s) = @_; print $s "token default raw\n"; my $l = <$s>; return defined $l ? (split / /, $l)[0] =~ s/\s+$//r : 'CLOSED' }
if ($mode eq 'handoff') {
    my ($uid, $groups) = @a;
    my @g = $groups eq '-' ? () : split /,/, $groups;
    become($uid, $uid, @g);
    my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $SOCK) or die "connect: $!";
    my $parent = $$;
    my $pid = fork() // die "fork: $!";
    exit 0 if $pid; # the connecting process is gone; the shell that ran it reaps it
    for (1 .. 3000) { last unless -e "/proc/$parent"; select(undef, undef, undef, 0.01) }
    print "proc_gone ", (-e "/proc/$parent" ? 0 : 1), "\n";
    print "answer ", ask_token($s), "\n";
    print "done 1\n";
    POSIX::_exit(0);
} elsif ($mode eq 'recycle') {
    my ($outsider, $member, $tokgid) = @a;
    for my $try (1 .. 200) {
        pipe(my $go_r, my $go_w) or die; pipe(my $ans_r, my $ans_w) or die;
        $ans_w->autoflush(1); $go_w->autoflush(1);
        my $a = fork() // die "fork: $!";
        if ($a == 0) {
            become($outsider, $outsider);
            my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $SOCK) or POSIX::_exit(3);
            my $h = fork() // POSIX::_exit(4);
            if ($h == 0) {
                close $go_w; close $ans_r;
                my $go = <$go_r>;
                print $ans_w ($go && $go eq "go\n" ? ask_token($s) : 'SKIPPED'), "\n";
                POSIX::_exit(0);
            }
            POSIX::_exit(0);
        }
        close $go_r; close $ans_w;
        waitpid($a, 0);
        die "the outsider could not connect ($?)" if $? != 0;
        open(my $f, '>', '/proc/sys/kernel/ns_last_pid') or die "ns_last_pid: $!";
        print $f $a - 1; close $f;
        my $b = fork() // die "fork: $!";
        if ($b == 0) { become($member, $member, $tokgid); sleep 60; POSIX::_exit(0) }
        if ($b != $a) { kill 9, $b; waitpid($b, 0); close $go_w; <$ans_r>; next }
        # B holds A's PID; wait until it runs as the member with the token group.
        for (1 .. 3000) {
            open(my $st, '<', "/proc/$b/status") or last;
            my $t = do { local $/; <$st> };
            last if $t =~ /^Uid:\s+$member\s/m && $t =~ /^Groups:.*\b$tokgid\b/m;
            select(undef, undef, undef, 0.01);
        }
        print $go_w "go\n";
        my $answer = <$ans_r>; chomp $answer;
        kill 9, $b; waitpid($b, 0);
        print "recycled 1\ntries $try\nanswer $answer\ndone 1\n";
        exit 0;
    }
    print "recycled 0\ndone 1\n";
}
"##;

/// The `KEY VALUE` lines a client printed.
fn client_said(out: &std::process::Output) -> std::collections::BTreeMap<String, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("done 1"),
        "the client did not finish ({}): {text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The attack (issue 13, item 7): the token check looked at `/proc/PID/status` of the PID
/// SO_PEERCRED gave, read when the request came, not at connect. A process outside the token
/// group connects, hands the socket to a child and exits; once its PID belongs to a process
/// of a member of the group, the child asks, and the daemon judged the member's groups: the
/// outsider got the token. (PIDs are recycled for real here: the daemon runs as PID 1 of a PID
/// namespace of its own, where the attacker, root there for the setup only, sets `ns_last_pid`
/// so that the member's process gets the outsider's PID; the daemon's own /proc is that
/// namespace's.) The reverse failed too: a member whose connecting process had exited was
/// refused (no /proc entry left). Now the groups are the connection's (SO_PEERGROUPS with
/// SO_PEERCRED, taken at accept): the outsider is refused whatever has its PID by now, and the
/// member is served after its connecting process is gone.
#[test]
fn a_token_goes_by_the_groups_the_peer_connected_with_not_by_what_its_pid_names_later() {
    if !require_root(
        "a_token_goes_by_the_groups_the_peer_connected_with_not_by_what_its_pid_names_later",
    ) {
        return;
    }
    const OUTSIDER: u32 = 54_321;
    const MEMBER: u32 = 54_322;
    const TOKGID: u32 = 4321;
    let mut env = TestEnv::with_emulator("tokpid", None);
    env.vm()
        .run(&format!("groupadd -g {TOKGID} guest-agent-token"));
    let client = env.dir().join("token-client.pl");
    std::fs::write(&client, TOKEN_CLIENT).expect("write client");
    env.vm().run(&format!(
        "cp {} /srv/token-client.pl && chmod 644 /srv/token-client.pl",
        client.display()
    ));
    // The daemon as PID 1 of its own PID namespace, with that namespace's /proc (in a mount
    // namespace inside the VM's: the files it writes are the VM's). Killing `unshare` (the
    // test's process) kills it, and with it every process in the namespace.
    env.write_config("");
    let notify = guest_agent_e2e::notify::NotifySocket::bind(env.dir());
    let mut cmd = env.vm().command("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(guest_agent_e2e::vm::AGENT)
        .arg("--config")
        .arg(env.config_path())
        .arg("run")
        .env("NOTIFY_SOCKET", notify.path())
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM");
    env.notify = Some(notify);
    let t0 = Instant::now();
    env.agent = Some(guest_agent_e2e::process::Proc::spawn("guest-agent", cmd));
    env.wait_ready(t0, Duration::from_secs(30));
    let want = emulator_token(&env);
    wait_token(&env, &want, Duration::from_secs(30));
    let unshare = env.agent().pid();
    let daemon: i32 = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
        .expect("unshare's children")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the daemon's pid");
    // Inside the daemon's PID and mount namespaces.
    let in_daemon_ns = |args: &[&str]| {
        std::process::Command::new("nsenter")
            .args(["-t", &daemon.to_string(), "-p", "-m", "--"])
            .args(args)
            .output()
            .expect("nsenter")
    };
    let perl = ["perl", "/srv/token-client.pl"];

    // A member whose connecting process is gone before it asks: served.
    let out = in_daemon_ns(&[
        "sh",
        "-c",
        &format!("perl /srv/token-client.pl handoff {MEMBER} {TOKGID}; true"),
    ]);
    let said = client_said(&out);
    assert_eq!(said["proc_gone"], "1", "{said:?}");
    assert_eq!(said["answer"], "OK", "the member is served: {said:?}");
    // The same from outside the group: refused.
    let out = in_daemon_ns(&[
        "sh",
        "-c",
        &format!("perl /srv/token-client.pl handoff {OUTSIDER} -; true"),
    ]);
    let said = client_said(&out);
    assert_eq!(said["proc_gone"], "1", "{said:?}");
    assert_eq!(said["answer"], "DENIED", "{said:?}");
    // The outsider's PID recycled to a member's process before the outsider's child asks.
    let mut args = perl.to_vec();
    let ids = [OUTSIDER.to_string(), MEMBER.to_string(), TOKGID.to_string()];
    args.push("recycle");
    args.extend(ids.iter().map(String::as_str));
    let out = in_daemon_ns(&args);
    let said = client_said(&out);
    assert_eq!(said["recycled"], "1", "the PID was recycled: {said:?}");
    eprintln!("PID recycled after {} tries", said["tries"]);
    assert_eq!(
        said["answer"],
        "DENIED",
        "the outsider is refused although its PID is a member's now: {said:?}\n{}",
        env.agent().dump()
    );
    assert_never_leaked(&env, &want);
}
