//! The metadata emulator as a process in a namespace, and a client for its control socket
//! (a Unix socket, so the test in the host namespace can reach it).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::netns::Netns;
use crate::process::Proc;

pub struct Emulator {
    pub proc: Proc,
    control: PathBuf,
}

/// One answer from the control interface.
#[derive(Debug)]
pub struct ControlAnswer {
    pub status: u16,
    pub body: String,
}

impl ControlAnswer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("control answer not JSON ({e}): {}", self.body))
    }
}

impl Emulator {
    /// Starts `mds-emulator` on 169.254.169.254:80 inside `ns`, control on `dir/control.sock`,
    /// optionally with a state file, and waits until it says it is serving.
    pub fn start(ns: &Netns, dir: &Path, state: Option<&Value>) -> Emulator {
        let control = dir.join("control.sock");
        let mut cmd = ns.command(&crate::bins::emulator());
        cmd.arg("--listen").arg("169.254.169.254:80");
        cmd.arg("--control")
            .arg(format!("unix:{}", control.display()));
        cmd.arg("--log-requests");
        if let Some(state) = state {
            let path = dir.join("emulator-state.json");
            std::fs::write(&path, serde_json::to_vec_pretty(state).expect("json"))
                .expect("write state");
            cmd.arg("--state").arg(path);
        }
        let proc = Proc::spawn("mds-emulator", cmd);
        proc.expect_line(
            Instant::now() - Duration::from_secs(60),
            &["serving metadata"],
            Duration::from_secs(30),
        );
        Emulator { proc, control }
    }

    /// One request to the control interface.
    pub fn control(&self, method: &str, path: &str, body: Option<&str>) -> ControlAnswer {
        control_at(&self.control, method, path, body)
    }

    /// The control interface's Unix socket (another process may drive the emulator through
    /// it with [`control_at`]).
    pub fn control_socket(&self) -> &Path {
        &self.control
    }

    /// Like [`Emulator::control`], panicking unless the status is 2xx.
    pub fn ok(&self, method: &str, path: &str, body: Option<&str>) -> ControlAnswer {
        let a = self.control(method, path, body);
        assert!(
            (200..300).contains(&a.status),
            "{method} {path}: {} {}",
            a.status,
            a.body
        );
        a
    }

    /// Has the emulator's current CA sign `public` (an OpenSSH public key line) for
    /// `username`, valid from `valid_after_offset_secs` from now for an hour, and writes the
    /// certificate where ssh looks for it next to the private key `key` (`KEY-cert.pub`).
    /// Returns that path.
    pub fn sign_into(
        &self,
        username: &str,
        public: &str,
        valid_after_offset_secs: i64,
        key: &std::path::Path,
    ) -> std::path::PathBuf {
        let body = serde_json::json!({"username": username, "public_key": public,
            "validity_secs": 3600, "valid_after_offset_secs": valid_after_offset_secs});
        let answer = self.ok("POST", "/ca/sign", Some(&body.to_string())).json();
        let cert = answer["certificate"].as_str().expect("certificate");
        let path = std::path::PathBuf::from(format!("{}-cert.pub", key.display()));
        std::fs::write(&path, format!("{cert}\n")).expect("write certificate");
        path
    }

    pub fn set_attribute(&self, scope: &str, key: &str, value: &str) {
        self.ok("PUT", &format!("/attributes/{scope}/{key}"), Some(value));
    }

    pub fn add_fault(&self, fault: Value) {
        self.ok("POST", "/faults", Some(&fault.to_string()));
    }

    pub fn clear_faults(&self) {
        self.ok("DELETE", "/faults", None);
    }

    /// Replaces OS Login user `name`'s two-step verification factors. `factors` is the JSON
    /// list the control interface takes (`[]` for none), e.g.
    /// `json!([{"type":"TOTP","secret":"JBSWY3DPEHPK3PXP"},
    /// {"type":"AUTHZEN","decision":"pending","after_ms":0},
    /// {"type":"IDV_PREREGISTERED_PHONE","code":"123456"}])`.
    pub fn set_two_factor(&self, name: &str, factors: Value) {
        let body = json!({ "factors": factors }).to_string();
        self.ok(
            "POST",
            &format!("/oslogin/users/{name}/two-factor"),
            Some(&body),
        );
    }

    /// Approves or denies `name`'s `AUTHZEN` phone prompt: the one a login waits on, or else
    /// the next one.
    pub fn decide_authzen(&self, name: &str, approve: bool) {
        let body = json!({ "approve": approve }).to_string();
        self.ok(
            "POST",
            &format!("/oslogin/users/{name}/authzen"),
            Some(&body),
        );
    }

    pub fn clear_requests(&self) {
        self.ok("DELETE", "/requests", None);
    }

    /// Requests the emulator received (method, path, query, status...), oldest first.
    pub fn requests(&self) -> Vec<Value> {
        let a = self.ok("GET", "/requests", None).json();
        a["requests"].as_array().cloned().unwrap_or_default()
    }

    /// How many requests the emulator saw with `param` (`key=value`) among their query's
    /// parameters.
    pub fn requests_with_param(&self, param: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r["query"]
                    .as_str()
                    .is_some_and(|q| q.split('&').any(|p| p == param))
            })
            .count()
    }

    /// Requests for the whole tree (the watcher's).
    pub fn tree_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r["path"] == json!("/computeMetadata/v1/")
                    && r["query"]
                        .as_str()
                        .is_some_and(|q| q.contains("recursive=true"))
            })
            .collect()
    }
}

/// One request to the control interface listening on the Unix socket `socket`.
pub fn control_at(socket: &Path, method: &str, path: &str, body: Option<&str>) -> ControlAnswer {
    let mut s =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: emulator\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write control request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read control answer");
    parse_http(&raw)
        .unwrap_or_else(|| panic!("bad control answer: {}", String::from_utf8_lossy(&raw)))
}

/// Parses an HTTP/1.1 answer with a Content-Length or chunked body.
fn parse_http(raw: &[u8]) -> Option<ControlAnswer> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..eol]).ok()?.trim(), 16).ok()?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some(ControlAnswer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
