//! The `mds-emulator` program: state file, ready line, request log, clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn runs_serves_logs_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!(
        "mds-emu-bin-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("state.json");
    std::fs::write(
        &state,
        r#"{"tree":{"instance":{"attributes":{"enable-oslogin":"true"}}},
            "users":[{"email":"a@example.com","username":"a","uid":2000}],
            "ec2":{"enabled":true,"require_v2":true}}"#,
    )
    .expect("state");
    let sock = dir.join("ctl.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mds-emulator"))
        .args(["--listen", "127.0.0.1:0", "--log-requests", "--state"])
        .arg(&state)
        .arg("--control")
        .arg(format!("unix:{}", sock.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mds-emulator");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut all);
        let _ = etx.send(all);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ready line");
    assert!(
        line.starts_with("mds-emulator: serving metadata on 127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains(&format!("control on unix:{}", sock.display())),
        "{line}"
    );
    let addr = line
        .trim()
        .strip_prefix("mds-emulator: serving metadata on ")
        .and_then(|r| r.split(',').next())
        .expect("address")
        .to_owned();
    assert!(sock.exists());

    let answer = get(
        &addr,
        "/computeMetadata/v1/instance/attributes/enable-oslogin",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\ntrue"), "{answer}");
    let answer = get(&addr, "/computeMetadata/v1/oslogin/users?username=a");
    assert!(answer.contains("\"uid\":2000"), "{answer}");
    let answer = get(&addr, "/latest/meta-data/instance-id");
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "require_v2 from the state file: {answer}"
    );

    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    let log = erx.recv_timeout(Duration::from_secs(5)).expect("stderr");
    assert!(
        log.contains("GET /computeMetadata/v1/instance/attributes/enable-oslogin 200 "),
        "{log}"
    );
    assert!(
        log.contains("GET /computeMetadata/v1/oslogin/users?username=a 200 "),
        "{log}"
    );
    assert!(
        log.contains("GET /latest/meta-data/instance-id 401 "),
        "{log}"
    );
    assert!(!sock.exists(), "socket removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_a_bad_state_file() {
    let dir = std::env::temp_dir().join(format!(
        "mds-emu-bad-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("state.json");
    std::fs::write(&state, r#"{"users":[{"username":"x"}]}"#).expect("state");
    let out = Command::new(env!("CARGO_BIN_EXE_mds-emulator"))
        .args(["--listen", "127.0.0.1:0", "--control"])
        .arg(format!("unix:{}", dir.join("s").display()))
        .arg("--state")
        .arg(&state)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("state file"), "{err}");
    let help = Command::new(env!("CARGO_BIN_EXE_mds-emulator"))
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("network namespace") && help.contains("169.254.169.254"),
        "{help}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
