//! The data types of the public API. The control interface carries every one of them as JSON,
//! so they all derive `Serialize`/`Deserialize` (snake_case field names).

use serde::{Deserialize, Serialize};

/// Which attribute map a metadata attribute lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `instance.attributes`
    Instance,
    /// `project.attributes`
    Project,
}

impl Scope {
    /// The top-level key of the tree this scope lives under.
    pub fn tree_key(self) -> &'static str {
        match self {
            Scope::Instance => "instance",
            Scope::Project => "project",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "instance" => Ok(Scope::Instance),
            "project" => Ok(Scope::Project),
            other => Err(format!(
                "unknown scope {other:?} (expected instance or project)"
            )),
        }
    }
}

/// A fault injected into the metadata listener.
///
/// Applies to requests whose path starts with `path_prefix` (an empty prefix matches all).
/// JSON: `{"path_prefix":"/computeMetadata/v1/","kind":{"kind":"status","code":500},"count":2}`;
/// the flattened form `{"path_prefix":"/","kind":"status","code":500}` is accepted too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// Request paths (without query) starting with this are affected.
    pub path_prefix: String,
    /// What happens to them.
    pub kind: FaultKind,
    /// Applies to this many requests, then removes itself; `None` = until cleared.
    pub count: Option<u32>,
}

/// What a [`Fault`] does to a matching request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer this status with an HTML body, flavor header echoed.
    Status { code: u16 },
    /// Wait this long, then answer normally.
    Delay { ms: u64 },
    /// Never answer until faults are cleared (or the client leaves, or one hour passes).
    Hang,
    /// Close the connection without any response.
    Drop,
    /// Send the headers with the full Content-Length, half of the body, then close.
    Truncate,
    /// A 200 with a valid JSON body of exactly this many bytes.
    Oversize { bytes: usize },
    /// A 200 with an HTML body (flavor echoed).
    NonJson,
    /// The normal answer without the `Metadata-Flavor` header.
    NoFlavor,
    /// A 200 with flavor and JSON of the wrong shape (`["not","a","tree"]`).
    WrongShape,
    /// The normal answer, its body dribbled at this rate.
    SlowBody { bytes_per_sec: u64 },
    /// The normal answer with a fresh random ETag; `wait_for_change` answers at once.
    EtagChurn,
}

/// One request seen by the metadata listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub method: String,
    /// Path without the query, percent-decoded.
    pub path: String,
    /// Raw query string (without `?`), empty if none.
    pub query: String,
    /// Milliseconds since the emulator started, when the request arrived.
    pub at_ms: u64,
    /// Whether `Metadata-Flavor: Google` was sent.
    pub flavor_header: bool,
    /// Status answered; 0 if no response was sent (hang, drop, client gone).
    pub status: u16,
}

/// An SSH public key registered to an OS Login user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpec {
    /// `ssh-ed25519 AAAA... comment`
    pub key: String,
    /// Expiry in microseconds since the epoch; served as `expirationTimeUsec`.
    #[serde(default)]
    pub expiration_usec: Option<i64>,
}

/// An OS Login user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    pub email: String,
    pub username: String,
    pub uid: u32,
    /// Defaults to the uid.
    #[serde(default)]
    pub gid: Option<u32>,
    /// Defaults to `/home/<username>`.
    #[serde(default)]
    pub home: Option<String>,
    /// Defaults to `/bin/bash`.
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// The login role (`policy=login`). Defaults to true in JSON.
    #[serde(default = "default_true")]
    pub login: bool,
    /// The administrator role (`policy=adminLogin`). Defaults to false.
    #[serde(default)]
    pub admin: bool,
    /// Security keys (`sk-ssh-ed25519@openssh.com AAAA...` lines), served as `securityKeys`
    /// only when the profile is asked with `view=securityKey`.
    #[serde(default)]
    pub security_keys: Vec<String>,
    /// Two-step verification factors, in the order `sessions/start` offers them (none: the
    /// start answers `NO_AVAILABLE_CHALLENGES`). JSON: `"two_factor":[{"type":"TOTP",...}]`.
    #[serde(default)]
    pub two_factor: Vec<TwoFactor>,
}

fn default_true() -> bool {
    true
}

/// A two-step verification factor of an OS Login user, one challenge of
/// `oslogin/authenticate/sessions/start`.
///
/// JSON (the `type` is the challenge type the metadata service names):
/// `{"type":"TOTP","secret":"<base32>"}`,
/// `{"type":"AUTHZEN","decision":"approve"|"deny"|"pending","after_ms":0}`,
/// `{"type":"IDV_PREREGISTERED_PHONE","code":"123456"}`,
/// `{"type":"SECURITY_KEY_OTP","code":"..."}`. Deserializing checks it: a bad base32 secret,
/// an unknown type, a missing or an unused field is an error naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "SCREAMING_SNAKE_CASE",
    try_from = "RawFactor"
)]
pub enum TwoFactor {
    /// An authenticator app: RFC 6238 codes of this base32 secret.
    Totp { secret: String },
    /// A prompt on the user's phone, decided `after_ms` after the RESPOND arrives, or (for
    /// `pending`) only by the control call `POST /oslogin/users/NAME/authzen`.
    Authzen {
        decision: AuthzenDecision,
        after_ms: u64,
    },
    /// A code sent by SMS to the user's phone (when the challenge is started).
    IdvPreregisteredPhone { code: String },
    /// A one-time code from a security key.
    SecurityKeyOtp { code: String },
}

impl TwoFactor {
    /// The `challengeType` the metadata service names this factor by.
    pub fn challenge_type(&self) -> &'static str {
        match self {
            TwoFactor::Totp { .. } => "TOTP",
            TwoFactor::Authzen { .. } => "AUTHZEN",
            TwoFactor::IdvPreregisteredPhone { .. } => "IDV_PREREGISTERED_PHONE",
            TwoFactor::SecurityKeyOtp { .. } => "SECURITY_KEY_OTP",
        }
    }
}

/// How an `AUTHZEN` phone prompt is decided when no control call decides it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthzenDecision {
    Approve,
    Deny,
    /// Never by itself: the prompt waits for a control call (or times out).
    Pending,
}

/// Why a [`TwoFactor`] was refused: `field` is the JSON field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FactorError {
    pub field: &'static str,
    pub message: String,
}

/// A [`TwoFactor`] as JSON gives it, before it is checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFactor {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decision: Option<String>,
    #[serde(default)]
    pub after_ms: Option<u64>,
}

impl TryFrom<RawFactor> for TwoFactor {
    type Error = FactorError;

    fn try_from(raw: RawFactor) -> Result<Self, FactorError> {
        let err = |field, message: String| FactorError { field, message };
        let kind = raw.kind.as_str();
        let unused = |field: &'static str, present: bool| {
            if present {
                Err(err(field, format!("not used by {kind}")))
            } else {
                Ok(())
            }
        };
        let code = |code: Option<String>| match code {
            None => Err(err("code", format!("required for {kind}"))),
            Some(c) if c.trim().is_empty() => Err(err("code", "must not be empty".into())),
            Some(c) => Ok(c),
        };
        match kind {
            "TOTP" => {
                unused("code", raw.code.is_some())?;
                unused("decision", raw.decision.is_some())?;
                unused("after_ms", raw.after_ms.is_some())?;
                let secret = raw
                    .secret
                    .ok_or_else(|| err("secret", "required for TOTP".into()))?;
                crate::oslogin::totp::decode_base32(&secret)
                    .map_err(|e| err("secret", format!("not valid base32: {e}")))?;
                Ok(TwoFactor::Totp { secret })
            }
            "AUTHZEN" => {
                unused("secret", raw.secret.is_some())?;
                unused("code", raw.code.is_some())?;
                let decision = match raw.decision.as_deref() {
                    Some("approve") => AuthzenDecision::Approve,
                    Some("deny") => AuthzenDecision::Deny,
                    Some("pending") => AuthzenDecision::Pending,
                    other => {
                        return Err(err(
                            "decision",
                            format!("{other:?}: expected \"approve\", \"deny\" or \"pending\""),
                        ));
                    }
                };
                Ok(TwoFactor::Authzen {
                    decision,
                    after_ms: raw.after_ms.unwrap_or(0),
                })
            }
            "IDV_PREREGISTERED_PHONE" | "SECURITY_KEY_OTP" => {
                unused("secret", raw.secret.is_some())?;
                unused("decision", raw.decision.is_some())?;
                unused("after_ms", raw.after_ms.is_some())?;
                let code = code(raw.code)?;
                Ok(if kind == "SECURITY_KEY_OTP" {
                    TwoFactor::SecurityKeyOtp { code }
                } else {
                    TwoFactor::IdvPreregisteredPhone { code }
                })
            }
            other => Err(err(
                "type",
                format!(
                    "unknown factor type {other:?} (expected TOTP, AUTHZEN, \
                     IDV_PREREGISTERED_PHONE or SECURITY_KEY_OTP)"
                ),
            )),
        }
    }
}

/// An OS Login POSIX group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub name: String,
    pub gid: u32,
    /// Usernames.
    #[serde(default)]
    pub members: Vec<String>,
}

/// A request to sign an OpenSSH user certificate with the emulator's CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRequest {
    /// Must be a known OS Login user: principal = username, key id = email.
    pub username: String,
    /// `ssh-ed25519 AAAA...` line.
    pub public_key: String,
    /// Default 3600.
    #[serde(default = "default_validity")]
    pub validity_secs: u64,
    /// Certificate is valid from now + this (negative for already-expired certificates).
    #[serde(default)]
    pub valid_after_offset_secs: i64,
}

fn default_validity() -> u64 {
    3600
}

impl CertRequest {
    /// A one-hour certificate valid from now.
    pub fn new(username: impl Into<String>, public_key: impl Into<String>) -> Self {
        CertRequest {
            username: username.into(),
            public_key: public_key.into(),
            validity_secs: default_validity(),
            valid_after_offset_secs: 0,
        }
    }
}

/// EC2-flavour settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ec2Settings {
    /// When false, everything under `/latest/` answers 400.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// When true, GETs without a session token answer 401 (IMDSv2 only).
    #[serde(default)]
    pub require_v2: bool,
}

impl Default for Ec2Settings {
    fn default() -> Self {
        Ec2Settings {
            enabled: true,
            require_v2: false,
        }
    }
}

/// The state the emulator starts with (the `--state` file). Every part is optional.
///
/// `tree` is merged deeply onto the default tree (objects merge key by key, anything else
/// replaces), so a state file may give just `{"tree":{"instance":{"attributes":{...}}}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialState {
    #[serde(default)]
    pub tree: Option<serde_json::Value>,
    #[serde(default)]
    pub users: Vec<UserSpec>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    #[serde(default)]
    pub ec2: Option<Ec2Settings>,
}
