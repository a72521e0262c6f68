//! One HTTP/1.1 exchange with the metadata service, bounded in time and size.
//!
//! Deliberately small: one connection per request (the daemon makes about one request a
//! minute), never a proxy (the `*_proxy` variables are not read, on purpose: a proxy in front
//! of the metadata service caused 403 storms for the incumbent), a connect deadline, a deadline
//! on the whole exchange, and a cap on the body that is enforced while reading.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::MdsError;
use crate::task::AbortOnDrop;

/// Where the metadata service is: plain `http://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses `http://HOST[:PORT][/]`. Anything else (https, a path, user info) is refused:
    /// the metadata service is plain HTTP on a link-local address.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("must start with http:// (the metadata service speaks plain HTTP)")?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '@', '?', '#', ' ']) {
            return Err("must be http://HOST[:PORT] with no path".into());
        }
        if authority.matches(':').count() > 1 && !authority.starts_with('[') {
            return Err("an IPv6 address must be in brackets: http://[ADDR]:PORT".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => {
                (h, p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("must name a host".into());
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `http://authority` + `path_and_query`, for messages.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.authority(), path_and_query)
    }
}

/// Limits that apply to every exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub max_body_bytes: usize,
}

/// An answer, whatever its status.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Makes one request and reads the whole answer within `deadline`.
pub async fn exchange(
    endpoint: &Endpoint,
    limits: Limits,
    method: hyper::Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    deadline: Duration,
) -> Result<Answer, MdsError> {
    exchange_with_body(
        endpoint,
        limits,
        method,
        path_and_query,
        headers,
        None,
        deadline,
    )
    .await
}

/// [`exchange`] with a request body (`POST` of a JSON document: OS Login's two-step calls).
pub async fn exchange_with_body(
    endpoint: &Endpoint,
    limits: Limits,
    method: hyper::Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
    deadline: Duration,
) -> Result<Answer, MdsError> {
    let url = || endpoint.url(path_and_query);
    let work = async {
        let stream = tokio::time::timeout(
            limits.connect_timeout,
            TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
        )
        .await
        .map_err(|_| MdsError::ConnectTimeout {
            url: url(),
            after: limits.connect_timeout,
        })?
        .map_err(|source| MdsError::Connect { url: url(), source })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| MdsError::Http { url: url(), source })?;
        // The connection task lives exactly as long as this exchange.
        let conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, endpoint.authority())
            .header(
                hyper::header::USER_AGENT,
                concat!("guest-agent/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            None => Either::Left(Empty::<Bytes>::new()),
            Some(b) => Either::Right(Full::new(b)),
        };
        let request = request.body(body).map_err(|e| MdsError::Request {
            url: url(),
            reason: e.to_string(),
        })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| MdsError::Http { url: url(), source })?;
        let (parts, mut body) = response.into_parts();
        let declared = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
            return Err(MdsError::TooLarge {
                url: url(),
                limit: limits.max_body_bytes,
            });
        }
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| MdsError::Http { url: url(), source })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limits.max_body_bytes {
                    return Err(MdsError::TooLarge {
                        url: url(),
                        limit: limits.max_body_bytes,
                    });
                }
                buf.extend_from_slice(&data);
            }
        }
        drop(conn);
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: buf.freeze(),
        })
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| MdsError::Timeout {
            url: url(),
            after: deadline,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parsing() {
        let e = Endpoint::parse("http://169.254.169.254").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("169.254.169.254", 80));
        assert_eq!(e.url("/x"), "http://169.254.169.254/x");
        let e = Endpoint::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 8080));
        assert_eq!(e.url("/x"), "http://127.0.0.1:8080/x");
        let e = Endpoint::parse("http://[::1]:81").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 81));
        for bad in [
            "https://x",
            "http://",
            "http://x/path",
            "http://u@x",
            "x",
            "http://x:99999",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
