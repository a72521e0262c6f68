//! A deliberately small HTTP/1.1 reader and response type for the metadata listener.
//!
//! The metadata listener speaks HTTP by hand (instead of through hyper) because its faults
//! need the raw connection: dropping it without an answer, sending half a body, dribbling a
//! body, and noticing that a client holding a long poll went away. Metadata clients send tiny
//! requests (a request line, a few headers, at most a small body), which is all this handles.

use std::fmt::Write as _;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// Percent-decoded path, without the query.
    pub path: String,
    /// Raw query string without the `?`.
    pub query: String,
    /// Decoded query parameters, in order.
    pub params: Vec<(String, String)>,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub keep_alive: bool,
}

impl Request {
    /// First header of that (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// First query parameter of that name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head or body too large")]
    TooLarge,
    #[error("connection closed in the middle of a request")]
    Truncated,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one request from `r`, using `buf` for bytes already read (pipelining keeps the rest
/// there). `Ok(None)` means the peer closed the connection between requests.
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Request>, ReadError> {
    let head_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::TooLarge);
        }
        if r.read_buf(buf).await? == 0 {
            return if buf.iter().all(u8::is_ascii_whitespace) {
                Ok(None)
            } else {
                Err(ReadError::Truncated)
            };
        }
    };
    let mut req = parse_head(&String::from_utf8_lossy(&buf[..head_end]))?;
    if req.header("transfer-encoding").is_some() {
        return Err(ReadError::Malformed(
            "chunked request bodies are not supported".into(),
        ));
    }
    let body_len = match req.header("content-length") {
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| ReadError::Malformed(format!("bad Content-Length {v:?}")))?,
        None => 0,
    };
    if body_len > MAX_BODY {
        return Err(ReadError::TooLarge);
    }
    while buf.len() < head_end + body_len {
        if r.read_buf(buf).await? == 0 {
            return Err(ReadError::Truncated);
        }
    }
    req.body = buf[head_end..head_end + body_len].to_vec();
    buf.drain(..head_end + body_len);
    Ok(Some(req))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &str) -> Result<Request, ReadError> {
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed(format!("bad request line {line:?}")));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        other => return Err(ReadError::Malformed(format!("bad version {other:?}"))),
    };
    let mut headers = Vec::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| ReadError::Malformed(format!("bad header line {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    // Absolute form (`GET http://169.254.169.254/x`), as proxies send it.
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    if !target.starts_with('/') {
        return Err(ReadError::Malformed(format!("bad target {target:?}")));
    }
    let (raw_path, query) = target.split_once('?').unwrap_or((target, ""));
    let conn = headers
        .iter()
        .find(|(k, _)| k == "connection")
        .map(|(_, v)| v.to_ascii_lowercase())
        .unwrap_or_default();
    let keep_alive = if http11 {
        !conn.contains("close")
    } else {
        conn.contains("keep-alive")
    };
    Ok(Request {
        method: method.to_owned(),
        path: percent_decode(raw_path, false),
        query: query.to_owned(),
        params: parse_query(query),
        headers,
        body: Vec::new(),
        keep_alive,
    })
}

/// Decodes `%XX` escapes (and `+` as a space in query strings).
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits and decodes a query string.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// A text answer (GCE labels text `application/text`).
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "application/text", body.into())
    }

    pub fn json(status: u16, v: &serde_json::Value) -> Self {
        Self::new(status, "application/json", v.to_string())
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_header(name, value);
        self
    }

    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.remove_header(name);
        self.headers.push((name.to_owned(), value.into()));
    }

    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Status line and headers (with Content-Length and Connection), ending in a blank line.
    pub fn head(&self, keep_alive: bool) -> Vec<u8> {
        let mut s = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            let _ = write!(s, "{k}: {v}\r\n");
        }
        let _ = write!(s, "Content-Length: {}\r\n", self.body.len());
        s.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        s.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_pipelined_requests() {
        let raw = b"GET /computeMetadata/v1/instance/attributes/a%2Db?alt=json&x=a%40b+c HTTP/1.1\r\nHost: x\r\nMetadata-Flavor: Google\r\n\r\nPUT /latest/api/token HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc";
        let mut r: &[u8] = raw;
        let mut buf = Vec::new();
        let a = read_request(&mut r, &mut buf)
            .await
            .expect("ok")
            .expect("some");
        assert_eq!(a.method, "GET");
        assert_eq!(a.path, "/computeMetadata/v1/instance/attributes/a-b");
        assert_eq!(a.query, "alt=json&x=a%40b+c");
        assert_eq!(a.param("x"), Some("a@b c"));
        assert_eq!(a.header("METADATA-FLAVOR"), Some("Google"));
        assert!(a.keep_alive);
        let b = read_request(&mut r, &mut buf)
            .await
            .expect("ok")
            .expect("some");
        assert_eq!(b.method, "PUT");
        assert_eq!(b.body, b"abc");
        assert!(!b.keep_alive);
        assert!(read_request(&mut r, &mut buf).await.expect("ok").is_none());
    }

    #[tokio::test]
    async fn rejects_garbage() {
        for raw in [
            &b"GET\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x",
        ] {
            let mut r: &[u8] = raw;
            let mut buf = Vec::new();
            assert!(read_request(&mut r, &mut buf).await.is_err(), "{raw:?}");
        }
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2", false), "a%2");
        assert_eq!(percent_decode("%zz%41", false), "%zzA");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(
            parse_query("a=1&&b&c=%2B"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "".into()),
                ("c".into(), "+".into())
            ]
        );
    }
}
