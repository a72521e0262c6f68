//! The EC2 flavour under `/latest/`: IMDSv2 session tokens, a few meta-data keys, IAM
//! credentials (the GCE default token) and user-data.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::http::{Request, Response};
use crate::state::{Emulator, Inner};
use crate::tokens::random_token;

/// Path prefix of the EC2 flavour.
pub const PREFIX: &str = "/latest";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const MAX_TTL: u64 = 21600;

fn text(status: u16, body: impl Into<String>) -> Response {
    Response::new(status, "text/plain", body.into())
}

/// Answers an EC2-flavour request.
pub(crate) fn handle(emu: &Emulator, req: &Request) -> Response {
    let mut inner = emu.lock();
    if !inner.ec2.enabled {
        return text(400, "The EC2 metadata endpoint is disabled.\n");
    }
    let Some(rel) = req.path.strip_prefix(PREFIX) else {
        return text(404, "Not Found\n");
    };
    if req.method == "PUT" {
        return if rel == "/api/token" {
            new_session(&mut inner, req)
        } else {
            text(405, "Method Not Allowed\n")
        };
    }
    if req.method != "GET" {
        return text(405, "Method Not Allowed\n");
    }
    let now = Instant::now();
    inner.ec2_sessions.retain(|_, exp| *exp > now);
    match req.header(TOKEN_HEADER) {
        Some(t) if !inner.ec2_sessions.contains_key(t) => {
            return text(401, "Unauthorized\n");
        }
        None if inner.ec2.require_v2 => return text(401, "Unauthorized\n"),
        _ => {}
    }
    serve(&mut inner, rel)
}

fn new_session(inner: &mut Inner, req: &Request) -> Response {
    let ttl = req
        .header(TTL_HEADER)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|t| (1..=MAX_TTL).contains(t));
    let Some(ttl) = ttl else {
        return text(
            400,
            "Missing or invalid X-aws-ec2-metadata-token-ttl-seconds (1..=21600).\n",
        );
    };
    let now = Instant::now();
    inner.ec2_sessions.retain(|_, exp| *exp > now);
    let token = random_token();
    inner
        .ec2_sessions
        .insert(token.clone(), now + Duration::from_secs(ttl));
    text(200, token).with_header("X-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())
}

fn instance_str(inner: &Inner, key: &str) -> String {
    match inner.tree.get("instance").and_then(|i| i.get(key)) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn serve(inner: &mut Inner, rel: &str) -> Response {
    match rel.trim_end_matches('/') {
        "" => text(200, "meta-data/\nuser-data"),
        "/meta-data" => text(200, "hostname\ninstance-id\nlocal-hostname\niam/"),
        "/meta-data/instance-id" => text(200, instance_str(inner, "id")),
        "/meta-data/hostname" | "/meta-data/local-hostname" => {
            text(200, instance_str(inner, "hostname"))
        }
        "/meta-data/iam" => text(200, "security-credentials/"),
        "/meta-data/iam/security-credentials" => text(200, "default"),
        "/meta-data/iam/security-credentials/default" => {
            if !inner.has_account("default") {
                return text(404, "Not Found\n");
            }
            let key = inner.canonical_account("default");
            let (token, left) = inner.tokens.current(&key);
            let expires = SystemTime::now() + Duration::from_secs(left);
            Response::json(
                200,
                &json!({ "Code": "Success", "Expiration": rfc3339(expires), "Token": token }),
            )
        }
        "/user-data" => {
            let data = inner
                .tree
                .get("instance")
                .and_then(|i| i.get("attributes"))
                .and_then(|a| a.get("user-data"))
                .and_then(Value::as_str);
            match data {
                Some(d) => Response::new(200, "application/octet-stream", d.to_owned()),
                None => text(404, "Not Found\n"),
            }
        }
        _ => text(404, "Not Found\n"),
    }
}

/// `2026-06-28T04:43:32+00:00`
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86400).unwrap_or(0);
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00+00:00");
        assert_eq!(at(1_782_621_812), "2026-06-28T04:43:32+00:00");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59+00:00");
    }
}
