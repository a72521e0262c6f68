//! The local socket protocol between the daemon and its clients (the NSS module, the helpers
//! sshd runs, `guest-agent token`).
//!
//! Line based and bounded, so the NSS module can speak it with no parser beyond splitting:
//!
//! ```text
//! request:  @VERSION VERB ARG...\n             (one line, at most MAX_REQUEST bytes)
//! answer:   OK COUNT\n LINE\n ... (COUNT lines)  the result; COUNT <= MAX_ANSWER_LINES
//!           NOTFOUND\n                          no such user/group/key (a definite answer)
//!           UNAVAIL REASON\n                    the daemon cannot tell now (metadata service down)
//!           DENIED REASON\n                     the asker may not ask this (peer credentials)
//!           ERR REASON\n                        malformed request
//! ```
//! **Versions.** Every request names the protocol version it is written in (`@1 getpwnam
//! alice`); a line without one is version 1 (what clients before versions sent: an NSS module
//! loaded by a long-running process before an upgrade still sends that). The answer is in the
//! request's version. A daemon answers every version from [`MIN_PROTOCOL_VERSION`] to
//! [`PROTOCOL_VERSION`]; any other is answered `ERR unsupported protocol version N: this daemon
//! speaks A to B` (see [`unsupported_version`] and [`daemon_speaks`]), never guessed at. A
//! client that meets that error from an older daemon (between a package upgrade's unpack and
//! the daemon's restart) either asks again in the daemon's newest version when it speaks it
//! (the NSS module: it cannot decide alone) or decides alone as when the daemon is down (the
//! sshd helpers). The build flag `next-version` (tests only) makes this [`PROTOCOL_VERSION`] 2.
//!
//! Arguments never contain blanks or control characters (names, numbers, fingerprints and
//! base64 are checked by [`Request::parse`]). Answer lines carry passwd(5)/group(5)-style
//! records for lookups and authorized_keys lines for the key helpers.

/// Default path of the daemon's socket.
pub const SOCKET_PATH: &str = "/run/guest-agent/agent.sock";
/// Longest request line, newline included (a certificate in base64 fits).
pub const MAX_REQUEST: usize = 16 * 1024;
/// Longest answer line, newline included.
pub const MAX_LINE: usize = 16 * 1024;
/// Most lines in one OK answer.
pub const MAX_ANSWER_LINES: usize = 4096;
/// The protocol version this code speaks (writes in its requests).
#[cfg(not(feature = "next-version"))]
pub const PROTOCOL_VERSION: u32 = 1;
#[cfg(feature = "next-version")]
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest version a daemon of this code answers (and a client may fall back to).
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// [`Request::parse`]'s error for a line in a version this code does not speak.
pub const UNSUPPORTED_VERSION: ProtoError = ProtoError("unsupported protocol version");

/// The reason of the `ERR` answer to a request in `version`, which this daemon does not speak.
pub fn unsupported_version(version: u32) -> String {
    format!(
        "unsupported protocol version {version}: this daemon speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
    )
}

/// From the reason of an `ERR` answer made by [`unsupported_version`]: the newest version that
/// daemon speaks.
pub fn daemon_speaks(reason: &str) -> Option<u32> {
    let (_, range) = reason
        .strip_prefix("unsupported protocol version ")?
        .split_once(": this daemon speaks ")?;
    let (_, newest) = range.split_once(" to ")?;
    newest.parse().ok()
}

/// The version a request line is written in (1 without a `@N` prefix) and the rest of it.
pub fn split_version(line: &str) -> Result<(u32, &str), ProtoError> {
    let Some(rest) = line.strip_prefix('@') else {
        return Ok((1, line));
    };
    let (v, body) = rest.split_once(' ').unwrap_or((rest, ""));
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtoError("bad protocol version"));
    }
    let v: u32 = v.parse().map_err(|_| ProtoError("bad protocol version"))?;
    Ok((v, body))
}

/// A certificate sshd offered to the keys command: its type (`%t`, e.g.
/// `ssh-ed25519-cert-v01@openssh.com`) and its base64 blob (`%k`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedCert {
    pub key_type: String,
    pub blob: String,
}

impl OfferedCert {
    /// sshd's `%t %k` when they name a certificate (`*-cert-v01@openssh.com`); `None` for a
    /// plain key, or for tokens sshd left unexpanded or empty.
    pub fn from_tokens(key_type: &str, blob: &str) -> Option<OfferedCert> {
        let ok = |s: &str| is_arg(s) && s != "-";
        (key_type.ends_with("-cert-v01@openssh.com") && ok(key_type) && ok(blob)).then(|| {
            OfferedCert {
                key_type: key_type.to_owned(),
                blob: blob.to_owned(),
            }
        })
    }
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// passwd entry by name / uid.
    UserByName(String),
    UserByUid(u32),
    /// group entry by name / gid.
    GroupByName(String),
    GroupByGid(u32),
    /// Supplementary gids of a user (initgroups).
    GroupsOfUser(String),
    /// sshd's AuthorizedKeysCommand: keys of `user`, after a live login authorization.
    /// `fingerprint` is sshd's `%f` when known. `certificate` is sshd's `%t %k` when the key
    /// offered is a certificate (sshd runs the command for one whose CA its
    /// TrustedUserCAKeys does not hold): line `authorized-keys USER FP TYPE BASE64`; a plain
    /// key is sent in the two-argument form (`authorized-keys USER FP`), which every daemon
    /// version reads.
    AuthorizedKeys {
        user: String,
        fingerprint: Option<String>,
        certificate: Option<OfferedCert>,
    },
    /// sshd's AuthorizedPrincipalsCommand: `cert` is the base64 certificate (`%k`).
    AuthorizedPrincipals {
        user: String,
        cert: String,
    },
    /// A service-account token: `account` and output format.
    Token {
        account: String,
        format: String,
    },
    /// What the daemon knows now (`guest-agent status`): one JSON line, shaped for the
    /// asker (root sees users' names and login decisions, others only their own).
    Status,
    /// The PAM module's `auth` hook: start OS Login two-step verification for `user`.
    /// Answers: `NOTFOUND` (not ours: 2FA off, not an OS Login user, an `sa_` account: the
    /// rest of the PAM stack decides), `OK` with [`TwoFactorLine`]s (`session ID` first, then
    /// one `challenge ...` per offered challenge), `DENIED`/`UNAVAIL REASON` (refuse, show it).
    TwoFactorStart {
        user: String,
    },
    /// The PAM module's next step in the session `session` the start opened: answer or start
    /// (`action`) challenge `challenge`; `credential` is what the user typed, hex-encoded (so
    /// that no blank or control character reaches the line), `-` for none. Answers: `OK` with
    /// `authenticated`, or `pending` + `challenge` lines (a challenge started), or `DENIED`.
    TwoFactorContinue {
        user: String,
        session: String,
        challenge: u32,
        action: TwoFactorAction,
        credential: Option<String>,
    },
    /// The PAM module's `account` hook: is `user`'s login role granted now (reusing the
    /// decision this SSH connection's key check made). `OK 0` yes, `NOTFOUND` not ours,
    /// `DENIED`/`UNAVAIL REASON` no.
    PamAccount {
        user: String,
    },
}

/// What the PAM module asks of one challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwoFactorAction {
    /// Send the user's answer (`RESPOND`).
    Respond,
    /// Start a challenge that was only proposed (`START_ALTERNATE`).
    StartAlternate,
}

impl TwoFactorAction {
    pub fn as_arg(self) -> &'static str {
        match self {
            TwoFactorAction::Respond => "respond",
            TwoFactorAction::StartAlternate => "start-alternate",
        }
    }
}

/// Longest credential a user may type (hex-encoded it is twice this).
pub const MAX_CREDENTIAL: usize = 256;
/// Most challenges one session may offer.
pub const MAX_CHALLENGES: usize = 16;

/// A line of a two-step answer (`OK` lines of [`Request::TwoFactorStart`] and
/// [`Request::TwoFactorContinue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwoFactorLine {
    /// `session ID`
    Session(String),
    /// `challenge ID TYPE STATUS` (TYPE as the service names it, e.g. `TOTP`; STATUS `READY`
    /// or `PROPOSED`).
    Challenge { id: u32, kind: String, ready: bool },
    /// `authenticated`
    Authenticated,
    /// `pending`: a challenge was started; the `challenge` lines that follow say which.
    Pending,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:=/+".contains(&b))
}

impl TwoFactorLine {
    pub fn encode(&self) -> String {
        match self {
            TwoFactorLine::Session(s) => format!("session {s}"),
            TwoFactorLine::Challenge { id, kind, ready } => format!(
                "challenge {id} {kind} {}",
                if *ready { "READY" } else { "PROPOSED" }
            ),
            TwoFactorLine::Authenticated => "authenticated".into(),
            TwoFactorLine::Pending => "pending".into(),
        }
    }

    pub fn parse(line: &str) -> Result<TwoFactorLine, ProtoError> {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["session", s] if is_token(s) => Ok(TwoFactorLine::Session(s.to_string())),
            ["challenge", id, kind, status] if is_token(kind) => Ok(TwoFactorLine::Challenge {
                id: self::id(id)?,
                kind: kind.to_string(),
                ready: match *status {
                    "READY" => true,
                    "PROPOSED" => false,
                    _ => return Err(ProtoError("bad challenge status")),
                },
            }),
            ["authenticated"] => Ok(TwoFactorLine::Authenticated),
            ["pending"] => Ok(TwoFactorLine::Pending),
            _ => Err(ProtoError("bad two-step line")),
        }
    }
}

/// Whether `s` is a session id the protocol carries (the service's, checked by the daemon).
pub fn is_session_id(s: &str) -> bool {
    is_token(s)
}

/// `bytes` as lowercase hex (a credential on the request line).
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lowercase or uppercase hex; `None` when it is not hex.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why a request line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError(pub &'static str);

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

fn is_arg(s: &str) -> bool {
    !s.is_empty() && s.len() < MAX_REQUEST && s.bytes().all(|b| b.is_ascii_graphic())
}

fn name(s: &str) -> Result<String, ProtoError> {
    if crate::names::is_valid_name(s) {
        Ok(s.to_owned())
    } else {
        Err(ProtoError("invalid name"))
    }
}

fn id(s: &str) -> Result<u32, ProtoError> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtoError("invalid id"));
    }
    s.parse().map_err(|_| ProtoError("invalid id"))
}

impl Request {
    /// The request line in this code's [`PROTOCOL_VERSION`], without the newline.
    pub fn encode(&self) -> String {
        self.encode_as(PROTOCOL_VERSION)
    }

    /// The request line in protocol `version`, without the newline.
    pub fn encode_as(&self, version: u32) -> String {
        format!("@{version} {}", self.body())
    }

    fn body(&self) -> String {
        match self {
            Request::UserByName(n) => format!("getpwnam {n}"),
            Request::UserByUid(u) => format!("getpwuid {u}"),
            Request::GroupByName(n) => format!("getgrnam {n}"),
            Request::GroupByGid(g) => format!("getgrgid {g}"),
            Request::GroupsOfUser(n) => format!("initgroups {n}"),
            Request::AuthorizedKeys {
                user,
                fingerprint,
                certificate,
            } => {
                let fp = fingerprint.as_deref().unwrap_or("-");
                match certificate {
                    None => format!("authorized-keys {user} {fp}"),
                    Some(c) => format!("authorized-keys {user} {fp} {} {}", c.key_type, c.blob),
                }
            }
            Request::AuthorizedPrincipals { user, cert } => {
                format!("authorized-principals {user} {cert}")
            }
            Request::Token { account, format } => format!("token {account} {format}"),
            Request::Status => "status".into(),
            Request::TwoFactorStart { user } => format!("2fa-start {user}"),
            Request::TwoFactorContinue {
                user,
                session,
                challenge,
                action,
                credential,
            } => format!(
                "2fa-continue {user} {session} {challenge} {} {}",
                action.as_arg(),
                credential.as_deref().unwrap_or("-")
            ),
            Request::PamAccount { user } => format!("pam-account {user}"),
        }
    }

    /// Parses a request line (the newline already removed) in any version this code speaks;
    /// another version is [`UNSUPPORTED_VERSION`] (see [`split_version`] for which).
    pub fn parse(line: &str) -> Result<Request, ProtoError> {
        if line.len() >= MAX_REQUEST {
            return Err(ProtoError("request too long"));
        }
        let (version, line) = split_version(line)?;
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(UNSUPPORTED_VERSION);
        }
        let mut parts = line.split(' ');
        let verb = parts.next().unwrap_or("");
        let args: Vec<&str> = parts.collect();
        if !args.iter().all(|a| is_arg(a)) {
            return Err(ProtoError("bad argument"));
        }
        let request = match (verb, args.as_slice()) {
            ("getpwnam", [n]) => Request::UserByName(name(n)?),
            ("getpwuid", [u]) => Request::UserByUid(id(u)?),
            ("getgrnam", [n]) => Request::GroupByName(name(n)?),
            ("getgrgid", [g]) => Request::GroupByGid(id(g)?),
            ("initgroups", [n]) => Request::GroupsOfUser(name(n)?),
            ("authorized-keys", [u, f]) => Request::AuthorizedKeys {
                user: name(u)?,
                fingerprint: (*f != "-").then(|| f.to_string()),
                certificate: None,
            },
            ("authorized-keys", [u, f, t, k]) => Request::AuthorizedKeys {
                user: name(u)?,
                fingerprint: (*f != "-").then(|| f.to_string()),
                certificate: Some(
                    OfferedCert::from_tokens(t, k)
                        .ok_or(ProtoError("the key offered is not a certificate"))?,
                ),
            },
            ("authorized-principals", [u, c]) => Request::AuthorizedPrincipals {
                user: name(u)?,
                cert: c.to_string(),
            },
            ("token", [a, f]) => Request::Token {
                account: a.to_string(),
                format: f.to_string(),
            },
            ("status", []) => Request::Status,
            ("2fa-start", [u]) => Request::TwoFactorStart { user: name(u)? },
            ("2fa-continue", [u, s, c, a, cred]) => Request::TwoFactorContinue {
                user: name(u)?,
                session: if is_token(s) {
                    s.to_string()
                } else {
                    return Err(ProtoError("invalid session id"));
                },
                challenge: id(c)?,
                action: match *a {
                    "respond" => TwoFactorAction::Respond,
                    "start-alternate" => TwoFactorAction::StartAlternate,
                    _ => return Err(ProtoError("invalid two-step action")),
                },
                credential: match *cred {
                    "-" => None,
                    c if c.len() <= 2 * MAX_CREDENTIAL && hex_decode(c).is_some() => {
                        Some(c.to_ascii_lowercase())
                    }
                    _ => return Err(ProtoError("invalid credential")),
                },
            },
            ("pam-account", [u]) => Request::PamAccount { user: name(u)? },
            _ => return Err(ProtoError("unknown request")),
        };
        Ok(request)
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok(Vec<String>),
    NotFound,
    Unavailable(String),
    Denied(String),
    Error(String),
}

/// Replaces anything that would break the framing of a reason.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Answer {
    /// The whole answer, newlines included. Lines that would break the framing (newlines,
    /// over-long) are dropped rather than sent, and the count says what was sent.
    pub fn encode(&self) -> String {
        match self {
            Answer::Ok(lines) => {
                let ok: Vec<&String> = lines
                    .iter()
                    .filter(|l| l.len() < MAX_LINE && !l.contains(['\n', '\r']))
                    .take(MAX_ANSWER_LINES)
                    .collect();
                let mut out = format!("OK {}\n", ok.len());
                for l in ok {
                    out.push_str(l);
                    out.push('\n');
                }
                out
            }
            Answer::NotFound => "NOTFOUND\n".into(),
            Answer::Unavailable(r) => format!("UNAVAIL {}\n", one_line(r)),
            Answer::Denied(r) => format!("DENIED {}\n", one_line(r)),
            Answer::Error(r) => format!("ERR {}\n", one_line(r)),
        }
    }

    /// Parses the first line of an answer; for `OK`, returns how many lines follow.
    pub fn parse_head(line: &str) -> Result<Head, ProtoError> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "OK" => {
                let n: usize = rest.parse().map_err(|_| ProtoError("bad count"))?;
                if n > MAX_ANSWER_LINES {
                    return Err(ProtoError("too many lines"));
                }
                Ok(Head::Ok(n))
            }
            "NOTFOUND" => Ok(Head::Other(Answer::NotFound)),
            "UNAVAIL" => Ok(Head::Other(Answer::Unavailable(rest.to_owned()))),
            "DENIED" => Ok(Head::Other(Answer::Denied(rest.to_owned()))),
            "ERR" => Ok(Head::Other(Answer::Error(rest.to_owned()))),
            _ => Err(ProtoError("bad answer")),
        }
    }
}

/// The first line of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// This many lines follow.
    Ok(usize),
    /// A complete answer without lines.
    Other(Answer),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_factor_lines_round_trip_and_bad_ones_are_refused() {
        for l in [
            TwoFactorLine::Session("abc-1".into()),
            TwoFactorLine::Challenge {
                id: 3,
                kind: "TOTP".into(),
                ready: true,
            },
            TwoFactorLine::Challenge {
                id: 4,
                kind: "AUTHZEN".into(),
                ready: false,
            },
            TwoFactorLine::Authenticated,
            TwoFactorLine::Pending,
        ] {
            assert_eq!(TwoFactorLine::parse(&l.encode()), Ok(l.clone()));
        }
        for bad in [
            "",
            "session",
            "session a b",
            "challenge x TOTP READY",
            "challenge 1 TOTP DONE",
            "challenge 1 TO\tTP READY",
            "authenticated now",
        ] {
            assert!(TwoFactorLine::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            hex_decode(&hex_encode(b"\x00 a\xff")),
            Some(b"\x00 a\xff".to_vec())
        );
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
        for bad in [
            "2fa-continue alice s 1 respond 12345",
            "2fa-continue alice s 1 shout -",
            "2fa-continue alice s x respond -",
            "2fa-continue alice s;rm 1 respond -",
            "2fa-start",
            "pam-account",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
        let long = "a".repeat(2 * MAX_CREDENTIAL + 2);
        assert!(Request::parse(&format!("2fa-continue alice s 1 respond {long}")).is_err());
    }

    #[test]
    fn the_keys_request_reads_both_shapes() {
        // The line an older helper (or a configuration written before `%t %k`) sends.
        assert_eq!(
            Request::parse("authorized-keys alice SHA256:abc"),
            Ok(Request::AuthorizedKeys {
                user: "alice".into(),
                fingerprint: Some("SHA256:abc".into()),
                certificate: None,
            })
        );
        assert_eq!(
            Request::parse("@1 authorized-keys alice - ssh-rsa-cert-v01@openssh.com AAAAB3"),
            Ok(Request::AuthorizedKeys {
                user: "alice".into(),
                fingerprint: None,
                certificate: Some(OfferedCert {
                    key_type: "ssh-rsa-cert-v01@openssh.com".into(),
                    blob: "AAAAB3".into(),
                }),
            })
        );
        // A plain key is never sent in the four-argument form.
        assert!(Request::parse("authorized-keys alice fp ssh-ed25519 AAAA").is_err());
        assert!(
            Request::parse("authorized-keys alice fp ssh-ed25519-cert-v01@openssh.com").is_err()
        );
        assert_eq!(OfferedCert::from_tokens("ssh-ed25519", "AAAA"), None);
        assert_eq!(
            OfferedCert::from_tokens("ssh-ed25519-cert-v01@openssh.com", "-"),
            None
        );
        assert_eq!(OfferedCert::from_tokens("%t", "%k"), None);
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::UserByName("alice".into()),
            Request::UserByUid(200001),
            Request::GroupByName("demo".into()),
            Request::GroupByGid(123452),
            Request::GroupsOfUser("alice".into()),
            Request::AuthorizedKeys {
                user: "alice".into(),
                fingerprint: Some("SHA256:abc+/=".into()),
                certificate: None,
            },
            Request::AuthorizedKeys {
                user: "bob".into(),
                fingerprint: None,
                certificate: None,
            },
            Request::AuthorizedKeys {
                user: "carol".into(),
                fingerprint: Some("SHA256:abc".into()),
                certificate: Some(OfferedCert {
                    key_type: "ssh-ed25519-cert-v01@openssh.com".into(),
                    blob: "AAAAIHNzaC1lZDI1NTE5LWNlcnQ=".into(),
                }),
            },
            Request::AuthorizedPrincipals {
                user: "alice".into(),
                cert: "AAAAB3Nz".into(),
            },
            Request::Token {
                account: "default".into(),
                format: "json".into(),
            },
            Request::Status,
            Request::TwoFactorStart {
                user: "alice".into(),
            },
            Request::TwoFactorContinue {
                user: "alice".into(),
                session: "s-1:AbC=".into(),
                challenge: 2,
                action: TwoFactorAction::Respond,
                credential: Some(hex_encode(b"123 456")),
            },
            Request::TwoFactorContinue {
                user: "alice".into(),
                session: "s1".into(),
                challenge: 1,
                action: TwoFactorAction::StartAlternate,
                credential: None,
            },
            Request::PamAccount {
                user: "alice".into(),
            },
        ] {
            assert_eq!(Request::parse(&r.encode()), Ok(r.clone()), "{r:?}");
            // Version 1 without the prefix, as clients before versions wrote it.
            let legacy = r.encode_as(1);
            let legacy = legacy.strip_prefix("@1 ").unwrap_or(&legacy);
            assert_eq!(Request::parse(legacy), Ok(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn versions_are_named_and_checked() {
        let r = Request::UserByName("alice".into());
        assert_eq!(r.encode(), format!("@{PROTOCOL_VERSION} getpwnam alice"));
        for v in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION {
            assert_eq!(Request::parse(&r.encode_as(v)), Ok(r.clone()));
        }
        for v in [0, PROTOCOL_VERSION + 1, 999_999_999] {
            assert_eq!(Request::parse(&r.encode_as(v)), Err(UNSUPPORTED_VERSION));
            assert_eq!(split_version(&r.encode_as(v)), Ok((v, "getpwnam alice")));
        }
        for bad in [
            "@ getpwnam alice",
            "@x1 getpwnam alice",
            "@1234567890 getpwnam a",
            "@",
        ] {
            assert_eq!(
                Request::parse(bad),
                Err(ProtoError("bad protocol version")),
                "{bad}"
            );
        }
        assert_eq!(Request::parse("@1"), Err(ProtoError("unknown request")));
        // The error a daemon gives names its range, and a client reads the newest back.
        let reason = unsupported_version(PROTOCOL_VERSION + 1);
        assert_eq!(
            reason,
            format!(
                "unsupported protocol version {}: this daemon speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                PROTOCOL_VERSION + 1
            )
        );
        assert_eq!(daemon_speaks(&reason), Some(PROTOCOL_VERSION));
        assert_eq!(daemon_speaks("unknown request"), None);
    }

    #[test]
    fn bad_requests_are_refused() {
        for line in [
            "",
            "getpwnam",
            "getpwnam ../etc",
            "getpwnam a b",
            "getpwuid -1",
            "getpwuid 99999999999",
            "getpwuid 1x",
            "getpwnam  alice",
            "nope x",
            "getpwnam Alice",
            "token a\tb c",
            "authorized-keys alice",
            "status now",
            &format!("authorized-principals alice {}", "A".repeat(MAX_REQUEST)),
        ] {
            assert!(Request::parse(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn answers_frame_safely() {
        let a = Answer::Ok(vec!["alice:x:1:1::/h:/bin/sh".into(), "bad\nline".into()]);
        assert_eq!(a.encode(), "OK 1\nalice:x:1:1::/h:/bin/sh\n");
        assert_eq!(
            Answer::Unavailable("down\nnow".into()).encode(),
            "UNAVAIL down now\n"
        );
        assert_eq!(Answer::parse_head("OK 3"), Ok(Head::Ok(3)));
        assert_eq!(
            Answer::parse_head("NOTFOUND"),
            Ok(Head::Other(Answer::NotFound))
        );
        assert_eq!(
            Answer::parse_head("DENIED no"),
            Ok(Head::Other(Answer::Denied("no".into())))
        );
        assert!(Answer::parse_head("OK 99999").is_err());
        assert!(Answer::parse_head("WHAT").is_err());
    }
}
