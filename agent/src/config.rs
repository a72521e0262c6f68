//! The daemon's configuration: `/etc/guest-agent/config.toml`.
//!
//! Every key has a default, so an absent file (at the default path) means "all defaults".
//! Unknown keys and out-of-range values are refused with the key named, because a typo that is
//! silently ignored is a setting the operator believes in but does not have.
//! The README's "Configuration" section lists every key; keep the two in step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the daemon reads its configuration unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/guest-agent/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}; fix the path or the file's permissions")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config {path}: {key} = {value}: {rule}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        rule: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub metadata: MetadataConfig,
    pub daemon: DaemonConfig,
}

/// `[metadata]`: how the agent talks to the metadata service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// Base URL of the metadata service. Change it only for tests: the real one is link-local.
    pub base_url: String,
    /// Deadline for establishing a TCP connection.
    pub connect_timeout_ms: u64,
    /// Deadline for a whole ordinary request (connect, send, read the body).
    pub request_timeout_ms: u64,
    /// `timeout_sec` of the whole-tree long poll; the client's own deadline is this plus
    /// `request_timeout_ms`.
    pub watch_timeout_secs: u64,
    /// Largest answer body accepted.
    pub max_body_bytes: usize,
    /// Retry delays after a failed request grow from `backoff_min_ms` to `backoff_max_ms`,
    /// with full jitter, and start again after a success.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// EC2 flavour: lifetime asked for an IMDSv2 session token.
    pub ec2_session_ttl_secs: u64,
    /// EC2 flavour: fall back to IMDSv1 (no session token) when the token endpoint refuses.
    pub ec2_imdsv1_fallback: bool,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            base_url: "http://169.254.169.254".into(),
            connect_timeout_ms: 1000,
            request_timeout_ms: 10_000,
            watch_timeout_secs: 60,
            max_body_bytes: 4 << 20,
            backoff_min_ms: 500,
            backoff_max_ms: 30_000,
            ec2_session_ttl_secs: 21_600,
            ec2_imdsv1_fallback: false,
        }
    }
}

/// `[daemon]`: the daemon's own lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Tell systemd READY=1 after this long even when the metadata service has not answered,
    /// so that sshd (ordered after the agent) never waits on it for long.
    pub startup_deadline_secs: u64,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive list such
    /// as `info,guest_agent::mds=debug`). `RUST_LOG` in the environment wins over it.
    pub log_level: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            startup_deadline_secs: 10,
            log_level: "info".into(),
        }
    }
}

impl MetadataConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

impl Config {
    /// Reads and validates the file at `path`. With `required == false` a missing file means
    /// the defaults (the packaged default path need not exist).
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses and validates `text`; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: &dyn std::fmt::Display, rule: &str| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                value: value.to_string(),
                rule: rule.to_string(),
            })
        };
        let m = &self.metadata;
        if let Err(why) = crate::mds::Endpoint::parse(&m.base_url) {
            return invalid("metadata.base_url", &format!("{:?}", m.base_url), &why);
        }
        let ranges: [(&'static str, u64, u64, u64); 6] = [
            (
                "metadata.connect_timeout_ms",
                m.connect_timeout_ms,
                10,
                60_000,
            ),
            (
                "metadata.request_timeout_ms",
                m.request_timeout_ms,
                100,
                300_000,
            ),
            ("metadata.watch_timeout_secs", m.watch_timeout_secs, 1, 3600),
            ("metadata.backoff_min_ms", m.backoff_min_ms, 10, 600_000),
            ("metadata.backoff_max_ms", m.backoff_max_ms, 10, 3_600_000),
            (
                "metadata.ec2_session_ttl_secs",
                m.ec2_session_ttl_secs,
                60,
                21_600,
            ),
        ];
        for (key, value, lo, hi) in ranges {
            if !(lo..=hi).contains(&value) {
                return invalid(key, &value, &format!("must be between {lo} and {hi}"));
            }
        }
        if m.backoff_min_ms > m.backoff_max_ms {
            return invalid(
                "metadata.backoff_min_ms",
                &m.backoff_min_ms,
                "must not exceed metadata.backoff_max_ms",
            );
        }
        if !(1024..=(256 << 20)).contains(&m.max_body_bytes) {
            return invalid(
                "metadata.max_body_bytes",
                &m.max_body_bytes,
                "must be between 1024 and 268435456",
            );
        }
        let d = &self.daemon;
        if !(1..=600).contains(&d.startup_deadline_secs) {
            return invalid(
                "daemon.startup_deadline_secs",
                &d.startup_deadline_secs,
                "must be between 1 and 600",
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&d.log_level) {
            return invalid(
                "daemon.log_level",
                &format!("{:?}", d.log_level),
                &format!("not a log filter ({e}); use error, warn, info, debug or trace"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/guest-agent/config.toml"), text)
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn reads_every_section() {
        let c = parse(
            "[metadata]\nbase_url = \"http://127.0.0.1:8080\"\nwatch_timeout_secs = 5\n\
             [daemon]\nstartup_deadline_secs = 3\nlog_level = \"debug\"\n",
        )
        .unwrap();
        assert_eq!(c.metadata.base_url, "http://127.0.0.1:8080");
        assert_eq!(c.metadata.watch_timeout_secs, 5);
        assert_eq!(c.metadata.request_timeout_ms, 10_000);
        assert_eq!(c.daemon.startup_deadline_secs, 3);
        assert_eq!(c.daemon.log_level, "debug");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[metadata]\nwatch_timeout = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("watch_timeout"), "{e}");
        assert!(e.contains("/etc/guest-agent/config.toml"), "{e}");
        let e = parse("[metdata]\n").unwrap_err().to_string();
        assert!(e.contains("metdata"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            (
                "[metadata]\nwatch_timeout_secs = 0",
                "metadata.watch_timeout_secs",
            ),
            ("[metadata]\nbase_url = \"https://x\"", "metadata.base_url"),
            (
                "[metadata]\nbackoff_min_ms = 5000\nbackoff_max_ms = 1000",
                "metadata.backoff_min_ms",
            ),
            (
                "[daemon]\nstartup_deadline_secs = 0",
                "daemon.startup_deadline_secs",
            ),
            ("[daemon]\nlog_level = \"loud=[\"", "daemon.log_level"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = parse("[metadata]\nwatch_timeout_secs = \"5\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("watch_timeout_secs"), "{e}");
    }

    #[test]
    fn missing_default_file_means_defaults_but_missing_explicit_file_is_an_error() {
        let p = Path::new("/nonexistent/guest-agent.toml");
        assert_eq!(Config::load(p, false).unwrap(), Config::default());
        let e = Config::load(p, true).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/guest-agent.toml"), "{e}");
    }
}
