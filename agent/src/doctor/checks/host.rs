//! nsswitch.conf and the NSS module, the trusted-CA file, a user certificate.

use super::{Check, Context, human, utc};
use crate::doctor::perms::Kind;
use crate::host::nsswitch::{DEFAULT_DBS, DEFAULT_MODULE, enable};

const NSSWITCH: &str = "/etc/nsswitch.conf";

/// Databases whose line has `[NOTFOUND=return]` (or `[!UNAVAIL=return]`-like actions that end
/// the lookup) before the module, which then is never asked.
pub fn shadowed_dbs(text: &str, module: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let active = line.split('#').next().unwrap_or("");
        let Some((db, services)) = active.split_once(':') else {
            continue;
        };
        let db = db.trim();
        if !DEFAULT_DBS.contains(&db) {
            continue;
        }
        let services = services.to_ascii_lowercase();
        let Some(at) = services.split_whitespace().position(|w| w == module) else {
            continue;
        };
        let before: String = services
            .split_whitespace()
            .take(at)
            .collect::<Vec<_>>()
            .join(" ");
        if before.contains("notfound=return") {
            out.push(db.to_owned());
        }
    }
    out
}

pub fn nsswitch(cx: &Context) -> Check {
    if !cx.oslogin.on {
        return Check::skip("nsswitch", "OS Login is off: the NSS module is not needed");
    }
    let text = match &cx.facts.nsswitch {
        Ok(t) => t,
        Err(why) => {
            return Check::fail(
                "nsswitch",
                format!("cannot read {NSSWITCH}: {why}"),
                format!("restore {NSSWITCH} (`passwd: files {DEFAULT_MODULE}`)"),
            );
        }
    };
    let missing = match enable(text, DEFAULT_MODULE, &DEFAULT_DBS) {
        Ok((_, added)) => added,
        Err(e) => {
            return Check::fail(
                "nsswitch",
                format!("{NSSWITCH}: {e}"),
                format!("fix the line, then list `files {DEFAULT_MODULE}` on it"),
            );
        }
    };
    if !missing.is_empty() {
        let dbs = missing.join(" and ");
        let s = if missing.len() > 1 { "s" } else { "" };
        return Check::fail(
            "nsswitch",
            format!(
                "{NSSWITCH}: `{DEFAULT_MODULE}` is missing from the {dbs} line{s}: OS Login \
                 users and groups do not resolve"
            ),
            format!(
                "add `{DEFAULT_MODULE}` after `files` on the {dbs} line(s) (e.g. `passwd: files \
                 {DEFAULT_MODULE}`), or restart the agent, which adds it"
            ),
        )
        .detail("missing", missing);
    }
    let module = match &cx.facts.nss_module {
        Ok(path) => path.clone(),
        Err(why) => {
            return Check::fail(
                "nsswitch",
                format!("libnss_{DEFAULT_MODULE}.so.2 cannot be loaded: {why}"),
                "reinstall the guest-agent package (the module goes to the system library \
                 directory, /usr/lib/x86_64-linux-gnu on Debian) and run ldconfig",
            );
        }
    };
    let shadowed = shadowed_dbs(text, DEFAULT_MODULE);
    if !shadowed.is_empty() {
        return Check::warn(
            "nsswitch",
            format!(
                "{NSSWITCH}: [NOTFOUND=return] before `{DEFAULT_MODULE}` on the {} line: the \
                 module is never asked",
                shadowed.join(" and ")
            ),
            format!("remove [NOTFOUND=return] before {DEFAULT_MODULE}"),
        );
    }
    Check::ok(
        "nsswitch",
        format!(
            "{NSSWITCH} lists `{DEFAULT_MODULE}` for passwd and group; the module loads from \
             {module}"
        ),
    )
    .detail("module", module)
}

pub fn ca_file(cx: &Context) -> Check {
    let ca = &cx.facts.ca;
    let o = &cx.config.oslogin;
    let path = ca.path.display();
    if !cx.oslogin.on {
        return Check::skip(
            "ca-file",
            format!("OS Login is off: sshd is not told to trust {path}"),
        );
    }
    let daemon_hint = "the agent writes it while OS Login is on: check the metadata and daemon \
                       checks";
    let stat = match &ca.stat {
        Ok(s) => s,
        Err(why) => {
            return Check::fail(
                "ca-file",
                format!("{path}: {why}: sshd's TrustedUserCAKeys is missing"),
                daemon_hint,
            );
        }
    };
    if stat.kind != Kind::File {
        return Check::fail(
            "ca-file",
            format!("{path} is not a regular file (sshd may block reading a FIFO)"),
            format!("remove {path}; the agent writes a regular file in its place"),
        );
    }
    let age = ca.age.map(|a| a.as_secs()).unwrap_or(0);
    let details = |c: Check| {
        c.detail("path", path.to_string())
            .detail("keys", ca.fingerprints.len() as u64)
            .detail("age_secs", age)
            .detail("max_stale_secs", o.ca_max_stale_secs)
    };
    if ca.fingerprints.is_empty() {
        return details(Check::fail(
            "ca-file",
            format!(
                "{path} holds no CA keys ({} bytes): certificate logins fail",
                ca.size
            ),
            daemon_hint,
        ));
    }
    if age > o.ca_max_stale_secs {
        return details(Check::fail(
            "ca-file",
            format!(
                "{path} was last refreshed {} ago, longer than oslogin.ca_max_stale_secs ({}): \
                 the agent has not fetched oslogin/certificates since",
                human(age),
                human(o.ca_max_stale_secs)
            ),
            format!(
                "check the metadata and daemon checks; a running agent rewrites {path} every \
                 oslogin.ca_refresh_secs ({}s)",
                o.ca_refresh_secs
            ),
        ));
    }
    let few_periods = o.ca_refresh_secs.saturating_mul(3).saturating_add(10);
    let check = if age > few_periods {
        Check::warn(
            "ca-file",
            format!(
                "{path} was last refreshed {} ago (refresh every {}s): the agent's fetches are \
                 failing",
                human(age),
                o.ca_refresh_secs
            ),
            "check the metadata and daemon checks and the agent's log",
        )
    } else if ca.bad_lines > 0 {
        Check::warn(
            "ca-file",
            format!("{path} has {} lines that are not public keys", ca.bad_lines),
            format!("remove them, or delete {path} and let the agent rewrite it"),
        )
    } else {
        Check::ok(
            "ca-file",
            format!(
                "{path}: {} CA key(s), refreshed {} ago",
                ca.fingerprints.len(),
                human(age)
            ),
        )
    };
    details(check)
}

/// Why a certificate will not log `user` in at `now`, each with the fix (pure).
pub fn certificate_problems(
    cert: &crate::oslogin::certificate::CertInfo,
    now: i64,
    user: Option<&str>,
    trusted: &[String],
    need_oslogin_id: bool,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let now_u = now.max(0) as u64;
    let renew = "get a new certificate (`gcloud compute ssh` or your OS Login client signs one \
                 for an hour)";
    if now_u < cert.valid_after {
        out.push((
            format!(
                "not valid before {} (in {}): the VM's clock or the issuer's is off",
                utc(cert.valid_after as i64),
                human(cert.valid_after - now_u)
            ),
            "check the VM's clock (`timedatectl`, chrony) and retry".to_owned(),
        ));
    } else if now_u >= cert.valid_before {
        out.push((
            format!(
                "expired at {} ({} ago)",
                utc(i64::try_from(cert.valid_before).unwrap_or(i64::MAX)),
                human(now_u - cert.valid_before)
            ),
            renew.to_owned(),
        ));
    }
    if let Some(u) = user
        && !cert.principals.iter().any(|p| p == u)
    {
        out.push((
            format!("does not name {u} among its principals"),
            format!("log in as one of its principals, or get a certificate for {u}"),
        ));
    }
    if need_oslogin_id && cert.fingerprint.is_none() {
        out.push((
            "carries no OS Login id (extension fingerprint@google.com): the principals command \
             refuses it"
                .to_owned(),
            renew.to_owned(),
        ));
    }
    if !trusted.contains(&cert.ca_fingerprint) {
        out.push((
            format!(
                "is signed by CA {}, which is not in the trusted-CA file",
                cert.ca_fingerprint
            ),
            "use a certificate from the OS Login CA, or wait for the agent to fetch a rotated CA \
             (see ca-file)"
                .to_owned(),
        ));
    }
    out
}

pub fn certificate(cx: &Context) -> Check {
    let Some((path, parsed)) = &cx.facts.cert else {
        return Check::skip("certificate", "no --cert FILE given");
    };
    let path = path.display().to_string();
    let cert = match parsed {
        Ok(c) => c,
        Err(why) => {
            return Check::fail(
                "certificate",
                format!("{path}: {why}"),
                "pass the OpenSSH certificate (the KEY-cert.pub file), not the key",
            );
        }
    };
    let problems = certificate_problems(
        cert,
        cx.facts.now_unix,
        cx.facts.user.as_deref(),
        &cx.facts.ca.fingerprints,
        cx.oslogin.on,
    );
    let window = format!(
        "valid {} to {}",
        utc(cert.valid_after as i64),
        utc(i64::try_from(cert.valid_before).unwrap_or(i64::MAX))
    );
    let check = match problems.first() {
        None => Check::ok(
            "certificate",
            format!(
                "{path}: key id {:?}, principals {}, {window}, signed by a trusted CA",
                cert.key_id,
                cert.principals.join(",")
            ),
        ),
        Some((what, fix)) => Check::fail(
            "certificate",
            format!("{path} (key id {:?}) {what}", cert.key_id),
            fix.clone(),
        ),
    };
    check
        .detail("key_id", cert.key_id.clone())
        .detail("principals", cert.principals.clone())
        .detail("valid_after", cert.valid_after)
        .detail("valid_before", cert.valid_before)
        .detail("ca", cert.ca_fingerprint.clone())
        .detail("oslogin_id", cert.fingerprint.is_some())
        .detail(
            "problems",
            problems.into_iter().map(|(w, _)| w).collect::<Vec<_>>(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oslogin::certificate::CertInfo;

    #[test]
    fn notfound_return_before_the_module_is_found() {
        let text = "passwd: files [NOTFOUND=return] guestagent\ngroup: files guestagent # x\n";
        assert_eq!(shadowed_dbs(text, "guestagent"), vec!["passwd"]);
        assert!(
            shadowed_dbs("passwd: files guestagent [NOTFOUND=return]\n", "guestagent").is_empty()
        );
    }

    #[test]
    fn certificate_validity_principals_and_ca() {
        let cert = CertInfo {
            key_id: "alice@example.com".into(),
            principals: vec!["alice".into()],
            valid_after: 1000,
            valid_before: 4600,
            fingerprint: Some("id".into()),
            ca_fingerprint: "SHA256:ca".into(),
            ca_key: String::new(),
        };
        let trusted = vec!["SHA256:ca".to_owned()];
        assert!(certificate_problems(&cert, 1000, Some("alice"), &trusted, true).is_empty());
        let p = certificate_problems(&cert, 4600, Some("alice"), &trusted, true);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].0
                .starts_with("expired at 1970-01-01 01:16:40 UTC (0s ago)"),
            "{p:?}"
        );
        let p = certificate_problems(&cert, 400, Some("alice"), &trusted, true);
        assert!(
            p[0].0.contains("not valid before") && p[0].0.contains("in 10m 0s"),
            "{p:?}"
        );
        let p = certificate_problems(&cert, 2000, Some("bob"), &[], true);
        assert_eq!(p.len(), 2);
        assert!(p[0].0.contains("does not name bob"));
        assert!(p[1].0.contains("not in the trusted-CA file"));
        let no_id = CertInfo {
            fingerprint: None,
            ..cert
        };
        assert_eq!(
            certificate_problems(&no_id, 2000, None, &trusted, true).len(),
            1
        );
        assert!(certificate_problems(&no_id, 2000, None, &trusted, false).is_empty());
    }
}
