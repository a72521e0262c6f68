//! The metadata service: client (GCE and EC2 flavours), typed snapshot, and the watcher that
//! long-polls the whole tree.

mod backoff;
mod ec2;
mod gce;
mod http;
pub mod snapshot;
pub mod watcher;

use std::time::Duration;

pub use backoff::Backoff;
pub use ec2::Ec2Client;
pub use gce::GceClient;
pub(crate) use gce::query_escape;
pub use http::{Endpoint, Limits};
pub use snapshot::Snapshot;

/// Why a request to the metadata service did not give a usable answer. Every variant names the
/// URL; the messages say what it likely means.
#[derive(Debug, thiserror::Error)]
pub enum MdsError {
    #[error("cannot connect to {url}: {source} (is the metadata service reachable from this VM?)")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no connection to {url} within {after:?} (metadata service unreachable)")]
    ConnectTimeout { url: String, after: Duration },
    #[error("no complete answer from {url} within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("HTTP exchange with {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("cannot build a request for {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("{url}: no such key (404)")]
    NotFound { url: String },
    #[error("{url} answered {status}: {body_start:?}")]
    Status {
        url: String,
        status: u16,
        body_start: String,
    },
    #[error(
        "{url} answered without `Metadata-Flavor: Google`: something other than the metadata \
         service is on the path (a proxy or network filter?); its answer is ignored"
    )]
    NotMetadataServer { url: String },
    #[error("answer from {url} is larger than {limit} bytes (metadata.max_body_bytes)")]
    TooLarge { url: String, limit: usize },
    #[error("answer from {url} is not what was expected ({reason}): {body_start:?}")]
    Parse {
        url: String,
        reason: String,
        body_start: String,
    },
}

impl MdsError {
    /// A short stable name for the kind of failure: an outage is logged once per kind, not
    /// once per retry.
    pub fn kind(&self) -> &'static str {
        match self {
            MdsError::Connect { .. } => "connect",
            MdsError::ConnectTimeout { .. } => "connect-timeout",
            MdsError::Timeout { .. } => "timeout",
            MdsError::Http { .. } => "http",
            MdsError::Request { .. } => "request",
            MdsError::NotFound { .. } => "not-found",
            MdsError::Status { status, .. } => match status {
                429 => "status-429",
                400..=499 => "status-4xx",
                _ => "status-5xx",
            },
            MdsError::NotMetadataServer { .. } => "not-metadata-server",
            MdsError::TooLarge { .. } => "too-large",
            MdsError::Parse { .. } => "parse",
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, MdsError::NotFound { .. })
    }
}

/// The first bytes of a body, made safe to put in a log line.
pub(crate) fn body_start(body: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > MAX {
        out.push('…');
    }
    out
}

/// Settings shared by both flavours, taken from `[metadata]`.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub endpoint: Endpoint,
    pub limits: Limits,
    pub request_timeout: Duration,
}

impl ClientSettings {
    pub fn from_config(m: &crate::config::MetadataConfig) -> Result<Self, String> {
        Ok(ClientSettings {
            endpoint: Endpoint::parse(&m.base_url)?,
            limits: Limits {
                connect_timeout: m.connect_timeout(),
                max_body_bytes: m.max_body_bytes,
            },
            request_timeout: m.request_timeout(),
        })
    }
}
