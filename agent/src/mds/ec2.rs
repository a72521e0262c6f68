//! The EC2 flavour (`/latest/`), which Yandex serves too for tokens and user-data.
//!
//! IMDSv2: a session token from `PUT /latest/api/token` is sent on every GET, reused until a
//! tenth of its lifetime is left, and acquired again when the service answers 401. IMDSv1 (no
//! token) is used only when the operator allows it and the token endpoint refuses.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use super::http::exchange;
use super::{ClientSettings, MdsError, body_start};

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";

#[derive(Debug)]
struct Session {
    token: String,
    renew_at: Instant,
}

/// A client of the EC2-flavour metadata service.
#[derive(Debug)]
pub struct Ec2Client {
    settings: ClientSettings,
    ttl: Duration,
    v1_fallback: bool,
    session: Mutex<Option<Session>>,
}

impl Ec2Client {
    pub fn new(settings: ClientSettings, ttl: Duration, v1_fallback: bool) -> Self {
        Ec2Client {
            settings,
            ttl,
            v1_fallback,
            session: Mutex::new(None),
        }
    }

    /// A session token: the cached one while fresh, else a new one. `None` means IMDSv1
    /// (allowed by configuration, and the token endpoint refused).
    async fn session_token(&self) -> Result<Option<String>, MdsError> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.as_ref().filter(|s| Instant::now() < s.renew_at) {
            return Ok(Some(s.token.clone()));
        }
        let s = &self.settings;
        let ttl = self.ttl.as_secs().to_string();
        let answer = exchange(
            &s.endpoint,
            s.limits,
            hyper::Method::PUT,
            TOKEN_PATH,
            &[(TTL_HEADER, ttl.as_str())],
            s.request_timeout,
        )
        .await?;
        let url = || s.endpoint.url(TOKEN_PATH);
        match answer.status {
            200 => {}
            400 | 403 | 404 | 405 if self.v1_fallback => {
                tracing::debug!(status = answer.status, "IMDSv2 token refused; using IMDSv1");
                return Ok(None);
            }
            status => {
                return Err(MdsError::Status {
                    url: url(),
                    status,
                    body_start: body_start(&answer.body),
                });
            }
        }
        let token = String::from_utf8(answer.body.to_vec())
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| MdsError::Parse {
                url: url(),
                reason: "session token is empty or not printable ASCII".into(),
                body_start: String::new(), // never log a token
            })?;
        *session = Some(Session {
            token: token.clone(),
            renew_at: Instant::now() + self.ttl - self.ttl / 10,
        });
        Ok(Some(token))
    }

    async fn get_once(&self, path: &str, token: Option<&str>) -> Result<(u16, Bytes), MdsError> {
        let s = &self.settings;
        let headers: Vec<(&str, &str)> = token.map(|t| (TOKEN_HEADER, t)).into_iter().collect();
        let answer = exchange(
            &s.endpoint,
            s.limits,
            hyper::Method::GET,
            path,
            &headers,
            s.request_timeout,
        )
        .await?;
        Ok((answer.status, answer.body))
    }

    /// GETs `/latest/<path>` and returns the body of a 200 answer.
    pub async fn get(&self, path: &str) -> Result<Bytes, MdsError> {
        let full = format!("/latest/{path}");
        let token = self.session_token().await?;
        let (mut status, mut body) = self.get_once(&full, token.as_deref()).await?;
        if status == 401 && token.is_some() {
            // The session ended on the service's side (restart, expiry): one new session.
            *self.session.lock().await = None;
            let token = self.session_token().await?;
            (status, body) = self.get_once(&full, token.as_deref()).await?;
        }
        let url = || self.settings.endpoint.url(&full);
        match status {
            200 => Ok(body),
            404 => Err(MdsError::NotFound { url: url() }),
            status => Err(MdsError::Status {
                url: url(),
                status,
                body_start: body_start(&body),
            }),
        }
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, MdsError> {
        let body = self.get(path).await?;
        serde_json::from_slice(&body).map_err(|e| MdsError::Parse {
            url: self.settings.endpoint.url(&format!("/latest/{path}")),
            reason: e.to_string(),
            body_start: String::new(), // EC2 JSON answers carry credentials: never log them
        })
    }
}
