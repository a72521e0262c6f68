//! The GCE flavour: `/computeMetadata/v1/`, `Metadata-Flavor: Google` sent and its echo
//! required.

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::http::{Answer, exchange, exchange_with_body};
use super::{ClientSettings, MdsError, body_start};

const PREFIX: &str = "/computeMetadata/v1/";
const FLAVOR: &str = "Metadata-Flavor";

/// A client of the GCE-flavour metadata service.
#[derive(Debug, Clone)]
pub struct GceClient {
    settings: ClientSettings,
}

/// The whole tree as the service answered it, with its version.
#[derive(Debug)]
pub struct Tree {
    pub json: serde_json::Value,
    pub etag: String,
}

impl GceClient {
    pub fn new(settings: ClientSettings) -> Self {
        GceClient { settings }
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The same client with another deadline for ordinary requests.
    pub fn with_timeout(&self, request_timeout: Duration) -> GceClient {
        let mut settings = self.settings.clone();
        settings.request_timeout = request_timeout;
        GceClient { settings }
    }

    /// GETs `PREFIX + path_and_query` and returns the body of a 200 answer that echoed the
    /// flavor header, with its ETag. `extra_wait` is added to the request deadline (long polls).
    async fn get(
        &self,
        path_and_query: &str,
        extra_wait: Duration,
    ) -> Result<(Bytes, Option<String>), MdsError> {
        let s = &self.settings;
        let full = format!("{PREFIX}{path_and_query}");
        let answer: Answer = exchange(
            &s.endpoint,
            s.limits,
            hyper::Method::GET,
            &full,
            &[(FLAVOR, "Google")],
            s.request_timeout + extra_wait,
        )
        .await?;
        let url = || s.endpoint.url(&full);
        // The echo is checked first: a non-metadata answer's status means nothing.
        if answer.header(FLAVOR) != Some("Google") {
            return Err(MdsError::NotMetadataServer { url: url() });
        }
        match answer.status {
            200 => {
                let etag = answer.header("etag").map(str::to_owned);
                Ok((answer.body, etag))
            }
            404 => Err(MdsError::NotFound { url: url() }),
            status => Err(MdsError::Status {
                url: url(),
                status,
                body_start: body_start(&answer.body),
            }),
        }
    }

    /// POSTs the JSON document `body` to `PREFIX + path` (OS Login's two-step calls) and
    /// parses the JSON answer. The service answers a refusal with a 4xx status and a JSON body
    /// too (`rejectionReason`): such an answer is returned as `Ok` with its status, so that the
    /// caller can show the reason; 5xx, a missing flavor echo, or a body that is not JSON is an
    /// error.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, serde_json::Value), MdsError> {
        let s = &self.settings;
        let full = format!("{PREFIX}{path}");
        let answer: Answer = exchange_with_body(
            &s.endpoint,
            s.limits,
            hyper::Method::POST,
            &full,
            &[(FLAVOR, "Google"), ("Content-Type", "application/json")],
            Some(Bytes::from(body.to_string())),
            s.request_timeout,
        )
        .await?;
        let url = || s.endpoint.url(&full);
        if answer.header(FLAVOR) != Some("Google") {
            return Err(MdsError::NotMetadataServer { url: url() });
        }
        if answer.status == 404 {
            return Err(MdsError::NotFound { url: url() });
        }
        if !(200..500).contains(&answer.status) {
            return Err(MdsError::Status {
                url: url(),
                status: answer.status,
                body_start: body_start(&answer.body),
            });
        }
        let json = serde_json::from_slice(&answer.body).map_err(|e| MdsError::Parse {
            url: url(),
            reason: e.to_string(),
            body_start: body_start(&answer.body),
        })?;
        Ok((answer.status, json))
    }

    /// One key's value as text (`instance/attributes/ssh-keys`, `instance/id`, ...).
    pub async fn get_text(&self, path: &str) -> Result<String, MdsError> {
        let (body, _) = self.get(path, Duration::ZERO).await?;
        String::from_utf8(body.to_vec()).map_err(|_| MdsError::Parse {
            url: self.settings.endpoint.url(&format!("{PREFIX}{path}")),
            reason: "not UTF-8".into(),
            body_start: body_start(&body),
        })
    }

    /// A JSON answer (`oslogin/users?username=...`, `instance/service-accounts/default/token`).
    pub async fn get_json<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, MdsError> {
        let (body, _) = self.get(path_and_query, Duration::ZERO).await?;
        serde_json::from_slice(&body).map_err(|e| MdsError::Parse {
            url: self
                .settings
                .endpoint
                .url(&format!("{PREFIX}{path_and_query}")),
            reason: e.to_string(),
            body_start: body_start(&body),
        })
    }

    /// The whole tree. With `wait = Some((last_etag, timeout_sec))` the service holds the
    /// request until the tree differs from `last_etag` or `timeout_sec` passes; the client's
    /// deadline is `timeout_sec` plus the ordinary request deadline.
    pub async fn tree(&self, wait: Option<(&str, u64)>) -> Result<Tree, MdsError> {
        let (query, extra) = match wait {
            Some((etag, secs)) => (
                format!(
                    "?recursive=true&alt=json&wait_for_change=true&last_etag={}&timeout_sec={secs}",
                    query_escape(etag)
                ),
                Duration::from_secs(secs),
            ),
            None => ("?recursive=true&alt=json".to_owned(), Duration::ZERO),
        };
        let (body, etag) = self.get(&query, extra).await?;
        let url = || self.settings.endpoint.url(&format!("{PREFIX}{query}"));
        let json = serde_json::from_slice(&body).map_err(|e| MdsError::Parse {
            url: url(),
            reason: e.to_string(),
            body_start: body_start(&body),
        })?;
        let etag = etag.ok_or_else(|| MdsError::Parse {
            url: url(),
            reason: "no ETag header".into(),
            body_start: String::new(),
        })?;
        Ok(Tree { json, etag })
    }
}

/// Percent-escapes everything but unreserved characters (an ETag is opaque to us).
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_escaped() {
        assert_eq!(query_escape("abc-123"), "abc-123");
        assert_eq!(query_escape("a b&c=\"d\""), "a%20b%26c%3D%22d%22");
    }
}
