//! The trusted-CA file sshd's `TrustedUserCAKeys` reads: the keys of `oslogin/certificates`,
//! one per line, in a regular file replaced atomically (root 0644). Unlike the incumbents'
//! FIFO, sshd never blocks on it, and logins do not wait on the metadata service for it.
//!
//! Fetched every `oslogin.ca_refresh_secs` (600 s) while OS Login is on, and at once when a
//! login offers a certificate whose CA the file does not hold ([`refresh_for`]: sshd runs the
//! keys command with such a certificate after its own CA check failed): a rotation is seen at
//! its first use rather than by polling often. Those on-demand fetches are single flight and
//! at most one per [`ON_DEMAND_EVERY`], so a client offering certificates of a foreign CA
//! costs the service almost nothing. A failed fetch keeps the last
//! good keys for at most `oslogin.ca_max_stale_secs` after the last success (the file's mtime
//! counts across restarts), then empties the file: a CA that may have been revoked is not
//! trusted forever. An explicit empty list empties it at once. Invalid keys are skipped.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ssh_key::PublicKey;

use super::service::OsLogin;
use crate::host::files;

/// The file's content from an `oslogin/certificates` answer; `Err` when the answer has the
/// wrong shape (then nothing changes). Only an object is an answer: `{}` (proto3 JSON leaves
/// an empty list out) empties the file, anything else (`[...]`, a string) is garbage.
pub fn content(answer: &serde_json::Value) -> Result<(String, usize), String> {
    if !answer.is_object() {
        return Err("the certificates answer is not a JSON object".into());
    }
    let list = match answer.get("trustedCertificateAuthorities") {
        None | Some(serde_json::Value::Null) => return Ok((String::new(), 0)),
        Some(serde_json::Value::Array(l)) => l,
        Some(_) => return Err("trustedCertificateAuthorities is not an array".into()),
    };
    let mut out = String::new();
    let mut skipped = 0;
    for ca in list {
        let key = ca
            .get("publicKey")
            .and_then(|k| k.as_str())
            .map(str::trim)
            .unwrap_or("");
        match PublicKey::from_openssh(key) {
            Ok(parsed) if !key.contains(['\n', '\r']) => {
                let line = parsed.to_openssh().unwrap_or_else(|_| key.to_owned());
                out.push_str(&line);
                out.push('\n');
            }
            _ => skipped += 1,
        }
    }
    Ok((out, skipped))
}

fn age(path: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    SystemTime::now().duration_since(modified).ok()
}

fn write(path: &Path, text: &str) -> Result<bool, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    files::write_atomic(path, text.as_bytes(), 0o644, None).map_err(|e| e.to_string())
}

/// Makes sure the file exists (empty at first), so sshd finds it from the start. Never
/// replaces a file that is there: a refresh running at the same moment may have just written
/// the keys (an exists-then-write here once emptied them again, for a whole refresh period).
pub fn ensure_exists(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

/// At most one on-demand fetch (a certificate of an unknown CA) in this period.
pub const ON_DEMAND_EVERY: Duration = Duration::from_secs(10);

/// The line of `list` (a trusted-CA file's text) holding the key `ca` (an OpenSSH public key
/// line, as [`super::certificate::CertInfo::ca_key`]): the same key data, whatever the
/// comments. `None`: the CA is not in the list.
pub fn find_ca<'a>(list: &'a str, ca: &str) -> Option<&'a str> {
    let ca = PublicKey::from_openssh(ca).ok()?;
    list.lines()
        .map(str::trim)
        .find(|line| PublicKey::from_openssh(line).is_ok_and(|k| k.key_data() == ca.key_data()))
}

/// Whether an on-demand fetch may go out now: none went out yet, or the last one went out
/// `every` ago or more.
pub fn may_fetch_now(last: Option<Instant>, now: Instant, every: Duration) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= every)
}

/// For a certificate signed by `ca` (an OpenSSH key line) that the file does not hold: fetch
/// the CA keys now (unless one fetch went out less than [`ON_DEMAND_EVERY`] ago), rewrite the
/// file, and return the line of the fresh file that holds `ca` (`None`: unknown even now).
/// Single flight: a caller that finds a fetch under way waits for it and reads its result.
pub async fn refresh_for(service: &OsLogin, ca: &str, ca_fingerprint: &str) -> Option<String> {
    let cfg = service.config();
    let path = Path::new(&cfg.oslogin.ca_file).to_owned();
    {
        let mut last = service.ca_on_demand().lock().await;
        let now = Instant::now();
        if may_fetch_now(*last, now, ON_DEMAND_EVERY) {
            *last = Some(now);
            tracing::info!(
                ca = ca_fingerprint,
                "a certificate's CA is not in the trusted-CA file: fetching the CA keys now"
            );
            // The login waits for this: the authorize deadline, not the long request one.
            refresh_with(
                service,
                Some(Duration::from_millis(cfg.oslogin.authorize_timeout_ms)),
            )
            .await;
        } else {
            tracing::info!(
                ca = ca_fingerprint,
                "a certificate's CA is not in the trusted-CA file; the CA keys were fetched less than {}s ago, not again",
                ON_DEMAND_EVERY.as_secs()
            );
        }
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    find_ca(&text, ca).map(str::to_owned)
}

/// One refresh: fetch, then write or age out.
pub async fn refresh(service: &OsLogin) {
    refresh_with(service, None).await;
}

/// [`refresh`] with the request's deadline (`None`: `metadata.request_timeout_ms`).
async fn refresh_with(service: &OsLogin, timeout: Option<Duration>) {
    let cfg = service.config();
    let o = &cfg.oslogin;
    let path = Path::new(&o.ca_file).to_owned();
    let fetched = match service.client() {
        Ok(c) => {
            let c = match timeout {
                Some(t) => c.with_timeout(t),
                None => c,
            };
            c.get_json::<serde_json::Value>("oslogin/certificates")
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e),
    };
    let result = fetched.and_then(|answer| content(&answer));
    let path2 = path.clone();
    let max = Duration::from_secs(o.ca_max_stale_secs);
    let outcome = tokio::task::spawn_blocking(move || -> Result<String, String> {
        match result {
            Ok((text, skipped)) => {
                if skipped > 0 {
                    tracing::warn!(
                        skipped,
                        "trusted CA keys that are not valid public keys were skipped"
                    );
                }
                // Rewritten even when unchanged, so the mtime records the last good fetch.
                let changed = write_touching(&path2, &text)?;
                Ok(if changed {
                    format!("updated ({} keys)", text.lines().count())
                } else {
                    String::new()
                })
            }
            Err(why) => match age(&path2) {
                Some(a)
                    if a > max
                        && std::fs::metadata(&path2)
                            .map(|m| m.len() > 0)
                            .unwrap_or(false) =>
                {
                    write(&path2, "")?;
                    Err(format!(
                        "{why}; the CA keys are older than the limit and were removed from {}",
                        path2.display()
                    ))
                }
                _ => Err(format!("{why}; keeping the last good CA keys")),
            },
        }
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match outcome {
        Ok(msg) if !msg.is_empty() => {
            tracing::info!(path = %path.display(), "trusted CA file {msg}")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "trusted CA keys not refreshed")
        }
    }
}

/// Writes `text`; when the content is already right, only refreshes the mtime.
fn write_touching(path: &Path, text: &str) -> Result<bool, String> {
    let changed = write(path, text)?;
    if !changed {
        let now = nix::sys::time::TimeSpec::from(std::time::Duration::from_secs(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ));
        let _ = nix::sys::stat::utimensat(
            None,
            path,
            &now,
            &now,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(changed)
}

/// Runs until dropped: a refresh every `ca_refresh_secs` while OS Login is on, and at once
/// when OS Login is turned on (the file must not stay empty until the next period).
pub async fn run(service: Arc<OsLogin>) {
    loop {
        let cfg = service.config();
        if service.is_enabled() {
            refresh(&service).await;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(cfg.oslogin.ca_refresh_secs)) => {}
            () = service.ca_requested().notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_ca_is_found_by_its_key_whatever_the_comment() {
        const OTHER: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmNYYQ0ZIpxnoSJqEh9GRm5wbcF2ZUWE8NfpVH7ERPj";
        let blob = KEY.split_whitespace().nth(1).unwrap();
        let list = format!("{OTHER} old\n{KEY}\n");
        assert_eq!(
            find_ca(&list, &format!("ssh-ed25519 {blob}")),
            Some(KEY),
            "the signing key, without a comment, is the file's line"
        );
        assert_eq!(find_ca(&format!("{OTHER}\n"), KEY), None);
        assert_eq!(find_ca("", KEY), None);
        assert_eq!(find_ca(&list, "garbage"), None);
        // Same base64 prefix is not the same key: the key data is compared.
        assert_eq!(find_ca("ssh-ed25519 junk\n", KEY), None);
    }

    #[test]
    fn on_demand_fetches_are_spaced_by_the_period() {
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        assert!(may_fetch_now(None, t0, every));
        assert!(!may_fetch_now(Some(t0), t0, every));
        assert!(!may_fetch_now(Some(t0), t0 + Duration::from_secs(9), every));
        assert!(may_fetch_now(Some(t0), t0 + every, every));
        // A clock that does not move forward (the last fetch "in the future") is no fetch.
        assert!(!may_fetch_now(Some(t0 + every), t0, every));
    }

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ca";

    #[test]
    fn the_file_holds_the_valid_keys_and_an_empty_list_empties_it() {
        let (text, skipped) = content(&json!({"trustedCertificateAuthorities": [{"publicKey": KEY}, {"publicKey": "junk"}, {}]})).unwrap();
        assert_eq!(text, format!("{KEY}\n"));
        assert_eq!(skipped, 2);
        assert_eq!(
            content(&json!({"trustedCertificateAuthorities": []}))
                .unwrap()
                .0,
            ""
        );
        assert_eq!(content(&json!({})).unwrap().0, "");
        assert!(content(&json!({"trustedCertificateAuthorities": "x"})).is_err());
        // Not an object: garbage, not an empty list (the fault matrix's wrong-shaped answer
        // emptied the file and refused every certificate login).
        assert!(content(&json!(["not", "a", "tree"])).is_err());
        assert!(content(&json!("x")).is_err());
        assert!(content(&json!(null)).is_err());
    }
}
