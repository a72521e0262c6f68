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
    pub oslogin: OsLoginConfig,
    pub accounts: AccountsConfig,
    pub tokens: TokensConfig,
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
            watch_timeout_secs: 120,
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
    /// The serial console event lines go to (`""`: none). A missing device is no error.
    /// Read at start (a change needs a restart).
    pub console: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            startup_deadline_secs: 10,
            log_level: "info".into(),
            console: "/dev/ttyS0".into(),
        }
    }
}

/// `[oslogin]`: OS Login (used when the `enable-oslogin` attribute is true).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OsLoginConfig {
    /// Lowest uid and gid served; profiles below it are refused.
    pub min_id: u32,
    /// Full directory sync period (users, groups, members), plus one at start and on demand.
    pub sync_interval_secs: u64,
    /// Page size asked for when listing users and groups.
    pub page_size: u32,
    /// How long "no such user/group" from the service is remembered.
    pub negative_cache_secs: u64,
    /// Deadline for one authorize request at login (the helper's own deadline is 4.5 s).
    pub authorize_timeout_ms: u64,
    /// How long a login decision may be reused for another login of the same user and key.
    /// 0: every login asks the service (the two runs sshd makes for one connection share one
    /// decision all the same).
    pub decision_reuse_secs: u64,
    /// When the service cannot be reached at login, allow users whose last positive decision
    /// is younger than this. 0: fail closed.
    pub grace_period_secs: u64,
    /// End everything an OS Login user runs on the VM (sessions, background jobs, root
    /// shells through sudo) when the login role is found revoked, and the root processes
    /// started through sudo when the admin role is (`oslogin::sessions`). Off: a revoked
    /// user is refused at the next login only.
    pub end_revoked_sessions: bool,
    /// With `end_revoked_sessions`: how often each OS Login user who has processes on the VM
    /// is authorized again (one request per such user per period, shared with logins).
    pub session_check_secs: u64,
    /// A group every OS Login user is a member of (served by the NSS module), used by the
    /// sshd `Match Group` that makes sshd ignore their own `~/.ssh/authorized_keys`.
    pub users_group: String,
    pub users_group_gid: u32,
    /// Make sshd ignore OS Login users' own `~/.ssh/authorized_keys` (access follows roles).
    pub ignore_user_keys: bool,
    /// The `guest-agent` binary. sshd runs `guest-agent-sshd` from the same directory when it
    /// is there (the small program that asks the daemon and hands everything else to this
    /// binary: see [`OsLoginConfig::sshd_program`]), else this binary itself; the program's
    /// path and every parent must be root-owned and not group/world-writable.
    pub helper_path: String,
    /// AuthorizedKeysCommandUser.
    pub command_user: String,
    /// Create the home directory (from /etc/skel) at the first authorized login.
    pub create_home: bool,
    /// Where OS Login homes may be. A profile's `homeDirectory` is used when it is normalised
    /// (no `.` or `..`) and lies strictly below one of these; otherwise the user gets
    /// `FIRST/NAME` (logged once). A directory administrator must not be able to hand a user
    /// a directory of the system (`/etc/systemd/system/ssh.service.d`).
    pub home_bases: Vec<String>,
    /// The file sshd's `TrustedUserCAKeys` points at (the CAs that sign OS Login
    /// certificates), a regular file replaced atomically.
    pub ca_file: String,
    /// How often the CA keys are fetched (`oslogin/certificates`): a rotation reaches the file
    /// within this.
    pub ca_refresh_secs: u64,
    /// When fetching fails, the last good CA keys stay trusted this long (counted from the
    /// last successful fetch, the file's mtime across restarts), then the file is emptied.
    pub ca_max_stale_secs: u64,
    /// Lookups that go to the metadata service on behalf of unprivileged processes (names
    /// neither in the directory nor known missing), all uids together: a burst of this many,
    /// refilled at `unprivileged_lookups_per_minute`. Each uid also has its own smaller budget
    /// (socket.rs), but uids are cheap (a user namespace maps 65,536 subordinate ones), so
    /// only this cap bounds what local users can make the daemon ask. Root, the
    /// AuthorizedKeysCommandUser (sshd's logins) and the daemon's own syncs are not counted.
    pub unprivileged_lookup_burst: u32,
    pub unprivileged_lookups_per_minute: u32,
    /// Deadline of one two-step verification call to the metadata service (start, continue);
    /// the PAM module's own deadline per exchange with the daemon is 5 s.
    pub two_factor_timeout_ms: u64,
    /// sshd's PAM stack, where the two-step lines go while `enable-oslogin-2fa` is on.
    pub pam_file: String,
    /// The PAM module those lines name: a bare name (found in the system's security
    /// directory, where the package installs it) or an absolute path.
    pub pam_module: String,
}

impl Default for OsLoginConfig {
    fn default() -> Self {
        OsLoginConfig {
            min_id: 1000,
            sync_interval_secs: 3600,
            page_size: 1000,
            negative_cache_secs: 30,
            authorize_timeout_ms: 2000,
            decision_reuse_secs: 0,
            grace_period_secs: 0,
            end_revoked_sessions: false,
            session_check_secs: 30,
            users_group: "guest-agent-oslogin".into(),
            users_group_gid: 4_000_000_000,
            ignore_user_keys: true,
            helper_path: "/usr/bin/guest-agent".into(),
            command_user: "nobody".into(),
            create_home: true,
            home_bases: vec!["/home".into()],
            ca_file: "/etc/ssh/guest-agent/trusted-ca.pub".into(),
            ca_refresh_secs: 600,
            ca_max_stale_secs: 3600,
            unprivileged_lookup_burst: 100,
            unprivileged_lookups_per_minute: 600,
            two_factor_timeout_ms: 3000,
            pam_file: "/etc/pam.d/sshd".into(),
            pam_module: "pam_guestagent.so".into(),
        }
    }
}

/// `[accounts]`: users and keys from the `ssh-keys` metadata (used while OS Login is off).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// Manage metadata users at all.
    pub enabled: bool,
    /// Accept `root:` lines.
    pub allow_root: bool,
    /// The group that gives metadata users passwordless sudo (created when missing).
    pub sudo_group: String,
    /// Further groups every metadata user is put in (they must exist).
    pub extra_groups: Vec<String>,
    /// `keep`: a user removed from metadata loses the managed keys and the groups, the account
    /// and home stay. `delete`: accounts the agent created are deleted too (home kept).
    pub deprovision: String,
    /// How often the managed files are compared with what they should be (self-healing).
    pub check_interval_secs: u64,
    /// While cloud-init is provisioning this boot (`/run/cloud-init/status.json` without
    /// `result.json`), wait up to this long before touching accounts, so the two never race on
    /// the same account. 0: do not wait.
    pub cloud_init_wait_secs: u64,
    /// Create each user with this command instead of the batch (`newusers` + `chpasswd -e`
    /// for all new users at once): an absolute program and its arguments, `{user}` replaced by
    /// the name, as the incumbents' `useradd_cmd`. The password field is set to `*` afterwards
    /// either way. Empty: the batch.
    pub useradd_cmd: String,
    /// Delete an account (`deprovision = "delete"`), `{user}` replaced by the name.
    pub userdel_cmd: String,
    /// `auto`: the daemon takes over from Google's guest agent once, when it finds its traces
    /// (see [`crate::takeover`]); `off`: only `guest-agent takeover` does.
    pub takeover: String,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            enabled: true,
            allow_root: false,
            sudo_group: "guest-agent-sudoers".into(),
            extra_groups: Vec::new(),
            deprovision: "keep".into(),
            check_interval_secs: 30,
            cloud_init_wait_secs: 120,
            useradd_cmd: String::new(),
            userdel_cmd: "/usr/sbin/userdel {user}".into(),
            takeover: "auto".into(),
        }
    }
}

/// `[tokens]`: service-account tokens kept fresh for local tools (`guest-agent token`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    pub enabled: bool,
    /// Service accounts to keep a token for.
    pub accounts: Vec<String>,
    /// `gce`, `ec2`, or `auto` (GCE first, EC2 when the GCE endpoint does not serve tokens).
    pub flavor: String,
    /// Members of this group may read tokens (root always may).
    pub group: String,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            enabled: true,
            accounts: vec!["default".into()],
            flavor: "auto".into(),
            group: "guest-agent-token".into(),
        }
    }
}

/// The small program sshd runs for every offered key (`helper/`), next to the agent binary.
pub const SSHD_PROGRAM: &str = "guest-agent-sshd";

impl OsLoginConfig {
    /// The program sshd_config names as AuthorizedKeysCommand and AuthorizedPrincipalsCommand:
    /// [`SSHD_PROGRAM`] next to `helper_path` when that is a file (it costs a third less per
    /// run than the agent binary, issue 15), else `helper_path` (an agent binary copied on its
    /// own still serves sshd). Reads the file system (one `stat`): it is what is installed.
    pub fn sshd_program(&self) -> String {
        let small = std::path::Path::new(&self.helper_path).with_file_name(SSHD_PROGRAM);
        if small.is_file() {
            small.display().to_string()
        } else {
            self.helper_path.clone()
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
        let bases = &self.oslogin.home_bases;
        if bases.is_empty()
            || bases.iter().any(|b| {
                !b.starts_with('/')
                    || b.split('/').any(|p| p == "." || p == "..")
                    || b.contains([':', '\n', '\0'])
            })
        {
            return invalid(
                "oslogin.home_bases",
                &format!("{bases:?}"),
                "must be a non-empty list of absolute paths without . or .. (e.g. [\"/home\"])",
            );
        }
        if !(1024..=(256 << 20)).contains(&m.max_body_bytes) {
            return invalid(
                "metadata.max_body_bytes",
                &m.max_body_bytes,
                "must be between 1024 and 268435456",
            );
        }
        let o = &self.oslogin;
        let oranges: [(&'static str, u64, u64, u64); 10] = [
            ("oslogin.min_id", o.min_id.into(), 1, 4_294_967_294),
            (
                "oslogin.sync_interval_secs",
                o.sync_interval_secs,
                10,
                86_400,
            ),
            ("oslogin.page_size", o.page_size.into(), 1, 10_000),
            (
                "oslogin.negative_cache_secs",
                o.negative_cache_secs,
                0,
                3600,
            ),
            (
                "oslogin.authorize_timeout_ms",
                o.authorize_timeout_ms,
                100,
                4000,
            ),
            ("oslogin.decision_reuse_secs", o.decision_reuse_secs, 0, 300),
            ("oslogin.session_check_secs", o.session_check_secs, 1, 3600),
            (
                "oslogin.two_factor_timeout_ms",
                o.two_factor_timeout_ms,
                100,
                4500,
            ),
            (
                "oslogin.unprivileged_lookup_burst",
                o.unprivileged_lookup_burst.into(),
                1,
                100_000,
            ),
            (
                "oslogin.unprivileged_lookups_per_minute",
                o.unprivileged_lookups_per_minute.into(),
                1,
                600_000,
            ),
        ];
        for (key, value, lo, hi) in oranges {
            if !(lo..=hi).contains(&value) {
                return invalid(key, &value, &format!("must be between {lo} and {hi}"));
            }
        }
        if o.grace_period_secs > 7 * 86_400 {
            return invalid(
                "oslogin.grace_period_secs",
                &o.grace_period_secs,
                "must be at most 604800 (a week)",
            );
        }
        if !guest_agent_wire::names::is_valid_name(&o.users_group) {
            return invalid(
                "oslogin.users_group",
                &format!("{:?}", o.users_group),
                "must be a valid group name",
            );
        }
        if o.users_group_gid < o.min_id || o.users_group_gid == u32::MAX {
            return invalid(
                "oslogin.users_group_gid",
                &o.users_group_gid,
                "must be at least oslogin.min_id and below 4294967295",
            );
        }
        if !o.helper_path.starts_with('/') || o.helper_path.contains(char::is_whitespace) {
            return invalid(
                "oslogin.helper_path",
                &format!("{:?}", o.helper_path),
                "must be an absolute path without blanks",
            );
        }
        if !o.pam_file.starts_with('/') || o.pam_file.contains(char::is_whitespace) {
            return invalid(
                "oslogin.pam_file",
                &format!("{:?}", o.pam_file),
                "must be an absolute path without blanks",
            );
        }
        if o.pam_module.is_empty()
            || !o.pam_module.ends_with(".so")
            || o.pam_module
                .contains(|c: char| c.is_whitespace() || c.is_control() || "[]#".contains(c))
            || (o.pam_module.contains('/') && !o.pam_module.starts_with('/'))
        {
            return invalid(
                "oslogin.pam_module",
                &format!("{:?}", o.pam_module),
                "must be a module file name ending in .so (pam_guestagent.so) or an absolute path, without blanks, brackets or '#'",
            );
        }
        if !o.ca_file.starts_with('/') || o.ca_file.contains(char::is_whitespace) {
            return invalid(
                "oslogin.ca_file",
                &format!("{:?}", o.ca_file),
                "must be an absolute path without blanks",
            );
        }
        if !(1..=3600).contains(&o.ca_refresh_secs) {
            return invalid(
                "oslogin.ca_refresh_secs",
                &o.ca_refresh_secs,
                "must be between 1 and 3600",
            );
        }
        if !(60..=7 * 86_400).contains(&o.ca_max_stale_secs) {
            return invalid(
                "oslogin.ca_max_stale_secs",
                &o.ca_max_stale_secs,
                "must be between 60 and 604800",
            );
        }
        if !guest_agent_wire::names::is_valid_name(&o.command_user) {
            return invalid(
                "oslogin.command_user",
                &format!("{:?}", o.command_user),
                "must be a valid user name",
            );
        }
        let a = &self.accounts;
        for (key, name) in std::iter::once(("accounts.sudo_group", &a.sudo_group))
            .chain(a.extra_groups.iter().map(|g| ("accounts.extra_groups", g)))
        {
            if !guest_agent_wire::names::is_valid_name(name) {
                return invalid(key, &format!("{name:?}"), "must be a valid group name");
            }
        }
        if !matches!(a.deprovision.as_str(), "keep" | "delete") {
            return invalid(
                "accounts.deprovision",
                &format!("{:?}", a.deprovision),
                "must be \"keep\" or \"delete\"",
            );
        }
        if !matches!(a.takeover.as_str(), "auto" | "off") {
            return invalid(
                "accounts.takeover",
                &format!("{:?}", a.takeover),
                "must be \"auto\" or \"off\"",
            );
        }
        for (key, template) in [
            ("accounts.useradd_cmd", &a.useradd_cmd),
            ("accounts.userdel_cmd", &a.userdel_cmd),
        ] {
            let empty_ok = key == "accounts.useradd_cmd" && template.is_empty();
            if !empty_ok && (!template.starts_with('/') || !template.contains("{user}")) {
                return invalid(
                    key,
                    &format!("{template:?}"),
                    "must start with an absolute program path and contain {user}",
                );
            }
        }
        if a.cloud_init_wait_secs > 3600 {
            return invalid(
                "accounts.cloud_init_wait_secs",
                &a.cloud_init_wait_secs,
                "must be between 0 and 3600",
            );
        }
        if !(1..=3600).contains(&a.check_interval_secs) {
            return invalid(
                "accounts.check_interval_secs",
                &a.check_interval_secs,
                "must be between 1 and 3600",
            );
        }
        let t = &self.tokens;
        if !matches!(t.flavor.as_str(), "auto" | "gce" | "ec2") {
            return invalid(
                "tokens.flavor",
                &format!("{:?}", t.flavor),
                "must be \"auto\", \"gce\" or \"ec2\"",
            );
        }
        if !guest_agent_wire::names::is_valid_name(&t.group) {
            return invalid(
                "tokens.group",
                &format!("{:?}", t.group),
                "must be a valid group name",
            );
        }
        for a in &t.accounts {
            if a.is_empty()
                || a.len() > 256
                || !a
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"@.-_".contains(&b))
            {
                return invalid(
                    "tokens.accounts",
                    &format!("{a:?}"),
                    "must be a service-account name or email",
                );
            }
        }
        let d = &self.daemon;
        if !(1..=600).contains(&d.startup_deadline_secs) {
            return invalid(
                "daemon.startup_deadline_secs",
                &d.startup_deadline_secs,
                "must be between 1 and 600",
            );
        }
        if !d.console.is_empty()
            && (!d.console.starts_with('/') || d.console.chars().any(char::is_control))
        {
            return invalid(
                "daemon.console",
                &format!("{:?}", d.console),
                "must be an absolute device path such as \"/dev/ttyS0\", or \"\" for none",
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

    /// sshd runs `guest-agent-sshd` beside the agent binary when it is installed there, and
    /// the agent binary itself when it is not.
    #[test]
    fn sshd_runs_the_small_program_when_it_is_beside_the_agent() {
        let dir = std::env::temp_dir().join(format!("ga-sshd-program-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let agent = dir.join("guest-agent");
        std::fs::write(&agent, b"").unwrap();
        let o = OsLoginConfig {
            helper_path: agent.display().to_string(),
            ..Default::default()
        };
        assert_eq!(o.sshd_program(), o.helper_path);
        let small = dir.join(SSHD_PROGRAM);
        std::fs::write(&small, b"").unwrap();
        assert_eq!(o.sshd_program(), small.display().to_string());
        // A directory of that name is not the program.
        std::fs::remove_file(&small).unwrap();
        std::fs::create_dir(&small).unwrap();
        assert_eq!(o.sshd_program(), o.helper_path);
        std::fs::remove_dir_all(&dir).unwrap();
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
            ("[daemon]\nconsole = \"ttyS0\"", "daemon.console"),
            (
                "[oslogin]\nsession_check_secs = 0",
                "oslogin.session_check_secs",
            ),
            (
                "[oslogin]\nsession_check_secs = 3601",
                "oslogin.session_check_secs",
            ),
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
    fn ending_revoked_sessions_is_opt_in() {
        let d = Config::default();
        assert!(!d.oslogin.end_revoked_sessions);
        assert_eq!(d.oslogin.session_check_secs, 30);
        let c = parse("[oslogin]\nend_revoked_sessions = true\nsession_check_secs = 2").unwrap();
        assert!(c.oslogin.end_revoked_sessions);
        assert_eq!(c.oslogin.session_check_secs, 2);
    }

    #[test]
    fn missing_default_file_means_defaults_but_missing_explicit_file_is_an_error() {
        let p = Path::new("/nonexistent/guest-agent.toml");
        assert_eq!(Config::load(p, false).unwrap(), Config::default());
        let e = Config::load(p, true).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/guest-agent.toml"), "{e}");
    }
}
