//! A tiny HTTP client for the tests: one request per connection (`Connection: close`), raw
//! bytes, so faults that break HTTP can be observed as they are.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use guest_agent_emulator::{ControlListen, EmulatorOptions, InitialState, Running, start};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

pub const V1: &str = "/computeMetadata/v1";
pub const FLAVOR: (&str, &str) = ("Metadata-Flavor", "Google");
/// No test request may take longer than this.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn etag(&self) -> String {
        self.header("etag").expect("ETag header").to_owned()
    }
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }
}

/// Parses a raw answer; `None` if there is no complete head.
pub fn parse(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Resp {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: Vec<u8>) -> Vec<u8> {
    s.write_all(&req).await.expect("write request");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await; // a reset after a drop is fine
    out
}

pub fn build(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: metadata.google.internal\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends one request and returns the raw bytes answered until the server closed.
pub async fn raw(addr: SocketAddr, req: Vec<u8>) -> Vec<u8> {
    let s = TcpStream::connect(addr).await.expect("connect");
    tokio::time::timeout(CLIENT_DEADLINE, exchange(s, req))
        .await
        .expect("answer within the client deadline")
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let bytes = raw(addr, build(method, path, headers, body)).await;
    parse(&bytes).unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&bytes)))
}

/// GET with `Metadata-Flavor: Google`.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[FLAVOR], b"").await
}

/// One control request over a Unix socket.
pub async fn unix(path: &Path, method: &str, route: &str, body: &str) -> (u16, Value) {
    let s = UnixStream::connect(path).await.expect("connect control");
    let bytes = tokio::time::timeout(
        CLIENT_DEADLINE,
        exchange(
            s,
            build(
                method,
                route,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            ),
        ),
    )
    .await
    .expect("control answers");
    let resp = parse(&bytes).expect("control HTTP answer");
    let body = dechunk(&resp);
    (
        resp.status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// Control answers have a Content-Length; be tolerant of chunked ones anyway.
fn dechunk(resp: &Resp) -> Vec<u8> {
    if resp.header("transfer-encoding") != Some("chunked") {
        return resp.body.clone();
    }
    let mut out = Vec::new();
    let mut rest = resp.body.as_slice();
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let len =
            usize::from_str_radix(String::from_utf8_lossy(&rest[..pos]).trim(), 16).unwrap_or(0);
        if len == 0 {
            break;
        }
        out.extend_from_slice(&rest[pos + 2..pos + 2 + len]);
        rest = &rest[pos + 2 + len + 2..];
    }
    out
}

pub async fn start_with(initial: InitialState, control: Option<ControlListen>) -> Running {
    start(EmulatorOptions {
        metadata_listen: vec!["127.0.0.1:0".parse().expect("addr")],
        control,
        initial,
    })
    .await
    .expect("emulator starts")
}

pub async fn start_default() -> (Running, SocketAddr) {
    let r = start_with(InitialState::default(), None).await;
    let addr = r.metadata_addrs()[0];
    (r, addr)
}

/// Waits until the emulator has recorded at least `n` requests (it records one as it arrives),
/// so a test acts on a request known to be there rather than after a sleep.
pub async fn wait_recorded(emu: &guest_agent_emulator::Emulator, n: usize) {
    let t0 = std::time::Instant::now();
    while emu.requests().len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} of {n} requests recorded",
            emu.requests().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
