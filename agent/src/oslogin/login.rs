//! sshd's AuthorizedKeysCommand and AuthorizedPrincipalsCommand in the daemon: gathers what
//! `super::decision` decides from (the admitted user, the authorization answers, the clock) and
//! carries out the side effects of a positive decision (home directory, sudo rule for admins).
//!
//! Side effects wait for proof: sshd runs the command once when the client offers a key (the
//! query, which anyone who knows the public key can make) and once when the client sends the
//! signature. A grant (the home, the sudo rule) is carried out only at the second run of one
//! connection for one key; a removal (a denied admin role) at any run. When the connection
//! cannot be identified, every run counts as the second (effects as before). A client that
//! signs without querying first gets its home at its next login.
//!
//! A certificate sshd hands the keys command (`%t %k`: sshd does that when the certificate's
//! CA is not in TrustedUserCAKeys) whose CA the trusted-CA file does not hold makes the daemon
//! fetch the CA keys at once (`trusted_ca::refresh_for`: single flight, at most one fetch per
//! 10 s); when the fresh list holds the CA, the certificate gets the checks of the principals
//! command (same functions) and, allowed, the answer `cert-authority,principals="USER" CA`,
//! so the login made right after a CA rotation succeeds at its first attempt.
//!
//! A key sshd offers that the profile does not list triggers one refresh of that profile (a
//! key registered since the last sync), at most once per user per [`REFRESH_EVERY`]: offering
//! many unknown keys costs the service nothing more.

use std::sync::Arc;
use std::time::Duration;

use ssh_key::{HashAlg, PublicKey};

use guest_agent_wire::proto::{Answer, OfferedCert};

use super::authorize::{Decision, Policy};
use super::decision::{self, Verdict};
use super::profile::OsUser;
use super::service::{OsLogin, lock, now_usec};
use crate::events;
use crate::mds::query_escape;
use crate::oslogin::directory::Miss;

/// The SHA256 fingerprint sshd prints (`SHA256:base64`), for a key line.
pub fn fingerprint(line: &str) -> Option<String> {
    let key = PublicKey::from_openssh(line).ok()?;
    Some(key.fingerprint(HashAlg::Sha256).to_string())
}

/// At most one profile refresh per user for an unknown key in this period.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How long the first run of a connection for a key waits for the second.
const PASS_WINDOW: Duration = Duration::from_secs(60);
/// Bound on remembered runs and refreshes (pruned of old ones past this).
const MAX_REMEMBERED: usize = 4096;

/// Remembered instants by key, bounded.
#[derive(Debug, Default)]
pub struct Seen(std::collections::HashMap<String, std::time::Instant>);

impl Seen {
    /// Whether `key` was noted less than `window` ago; notes it now when not.
    pub fn check_and_note(&mut self, key: String, window: Duration) -> bool {
        let now = std::time::Instant::now();
        if self.0.len() > MAX_REMEMBERED {
            self.0.retain(|_, at| now.duration_since(*at) < window);
            if self.0.len() > MAX_REMEMBERED {
                self.0.clear();
            }
        }
        match self.0.get(&key) {
            Some(at) if now.duration_since(*at) < window => true,
            _ => {
                self.0.insert(key, now);
                false
            }
        }
    }
}

fn valid_keys(user: &OsUser) -> Vec<String> {
    let now = now_usec();
    user.keys
        .iter()
        .filter(|k| k.is_valid_at(now))
        .map(|k| k.line.clone())
        .collect()
}

impl OsLogin {
    /// Whether this run is the second of `connection` for `key` (see the module's comment).
    fn proven(&self, connection: Option<&str>, key: &str) -> bool {
        match connection.filter(|c| !c.is_empty()) {
            None => true,
            Some(c) => lock(&self.passes).check_and_note(format!("{c} {key}"), PASS_WINDOW),
        }
    }

    /// The live decision for a login of `name` (with a certificate's OS Login id when
    /// `cert_id` is given): the login role now (or the grace period), the admin role's sudo
    /// rule, the home at the first login (those two only when `proven`). `Ok` carries the
    /// user and whether it is an admin.
    async fn decide_login(
        &self,
        name: &str,
        cert_id: Option<&str>,
        connection: Option<&str>,
        proven: bool,
    ) -> Result<(Arc<OsUser>, bool), Answer> {
        if !self.is_enabled() {
            tracing::info!(decision = "none", reason = "OS Login is off");
            return Err(Answer::NotFound);
        }
        if let Some(why) = self.two_factor_blocked()
            && !super::two_factor::is_service_account(name)
        {
            let why = format!("two-step verification is required but cannot be enforced: {why}");
            tracing::warn!(decision = "deny", reason = %why);
            events::login(name, false, &why, connection);
            return Err(Answer::Denied(why));
        }
        let user = self.user(name).await.inspect_err(|answer| {
            tracing::info!(decision = "deny", reason = "no such OS Login user", answer = ?answer);
            // NotFound: not ours to refuse (a local user, another provider's).
            if let Answer::Denied(why) = answer {
                events::login(name, false, why, connection);
            }
        })?;
        let cfg = self.config();
        let o = &cfg.oslogin;
        let client = self
            .client()
            .map_err(Answer::Unavailable)?
            .with_timeout(Duration::from_millis(o.authorize_timeout_ms));
        let reuse = Duration::from_secs(o.decision_reuse_secs);
        let (login, admin) = tokio::join!(
            self.authorizer.decide(
                &client,
                &user.email,
                Policy::Login,
                cert_id,
                connection,
                reuse
            ),
            self.authorizer.decide(
                &client,
                &user.email,
                Policy::AdminLogin,
                cert_id,
                connection,
                reuse
            ),
        );
        let grace = Duration::from_secs(o.grace_period_secs);
        let within_grace = self
            .authorizer
            .within_grace(&user.email, Policy::Login, grace);
        match decision::login_verdict(&login, within_grace) {
            Verdict::Allow { by_grace: false } => {
                events::login(name, true, "login role granted", connection);
            }
            Verdict::Allow { by_grace: true } => {
                tracing::warn!(email = %user.email, decision = "allow", reason = "grace period", error = ?login,
                    "metadata service unavailable; allowed by the grace period");
                events::login(
                    name,
                    true,
                    "grace period (metadata service unavailable)",
                    connection,
                );
            }
            Verdict::Deny(why) => {
                tracing::info!(email = %user.email, decision = "deny", reason = %why);
                events::login(name, false, &why, connection);
                self.update_admin(&user.username, &Decision::Denied).await;
                return Err(Answer::Denied(why));
            }
            Verdict::Unavailable(why) => {
                tracing::warn!(email = %user.email, decision = "deny", reason = "metadata service unavailable", error = %why);
                events::login(name, false, "metadata service unavailable", connection);
                return Err(Answer::Unavailable(why));
            }
        }
        // A grant waits for the signature run; a removal does not.
        if proven || !matches!(admin, Decision::Allowed) {
            self.update_admin(&user.username, &admin).await;
        }
        if o.create_home && proven {
            self.ensure_home(&user).await;
        }
        if !proven {
            tracing::debug!("first run of this connection for this key: no side effects yet");
        }
        Ok((user, matches!(admin, Decision::Allowed)))
    }

    /// The PAM account hook's decision for `name`: the login role, from this connection's
    /// key check when it made one less than a minute ago (no request), else asked now.
    /// `NotFound`: not an OS Login user (not ours).
    pub(super) async fn decide_account(
        &self,
        name: &str,
        connections: &[&str],
    ) -> Result<(), Answer> {
        let user = self.user(name).await?;
        let cfg = self.config();
        let o = &cfg.oslogin;
        let reused = connections
            .iter()
            .find_map(|c| self.authorizer.of_connection(&user.email, Policy::Login, c));
        let connection = connections.first().copied();
        let login = match reused {
            Some(d) => {
                tracing::debug!(
                    user = name,
                    "account check: this connection's decision reused"
                );
                d
            }
            None => {
                let client = self
                    .client()
                    .map_err(Answer::Unavailable)?
                    .with_timeout(Duration::from_millis(o.authorize_timeout_ms));
                let reuse = Duration::from_secs(o.decision_reuse_secs);
                self.authorizer
                    .decide(&client, &user.email, Policy::Login, None, connection, reuse)
                    .await
            }
        };
        let grace = Duration::from_secs(o.grace_period_secs);
        let within_grace = self
            .authorizer
            .within_grace(&user.email, Policy::Login, grace);
        match decision::login_verdict(&login, within_grace) {
            Verdict::Allow { .. } => Ok(()),
            Verdict::Deny(why) => {
                tracing::info!(user = name, email = %user.email, decision = "deny", reason = %why, "account check refused");
                events::login(name, false, &why, connection);
                Err(Answer::Denied(why))
            }
            Verdict::Unavailable(why) => {
                tracing::warn!(user = name, email = %user.email, decision = "deny", reason = "metadata service unavailable", error = %why, "account check refused");
                Err(Answer::Unavailable(why))
            }
        }
    }

    /// Keys for `name` if the login role is granted now. `fingerprint` (sshd's `%f`) lets the
    /// daemon notice a key registered since the last sync; `connection` lets the two runs of
    /// one login share one decision.
    pub async fn authorized_keys(
        &self,
        name: &str,
        fingerprint: Option<&str>,
        certificate: Option<&OfferedCert>,
        connection: Option<&str>,
    ) -> Answer {
        if let Some(cert) = certificate {
            return self.certificate_keys(name, &cert.blob, connection).await;
        }
        let span = tracing::info_span!(
            "login",
            user = name,
            fingerprint = fingerprint.unwrap_or("-")
        );
        let _enter = span.enter();
        let proven = self.proven(connection, fingerprint.unwrap_or(""));
        let (mut user, admin) = match self.decide_login(name, None, connection, proven).await {
            Ok(u) => u,
            Err(a) => return a,
        };
        if self.security_keys() {
            // Security-key mode: the profile's security keys, asked live, and nothing else (a
            // profile without any gets no key: an ordinary key must not open it).
            return match self.security_keys_of(name).await {
                Ok(keys) => {
                    tracing::info!(email = %user.email, decision = "allow", keys = keys.len(), admin, mode = "security keys", "login authorized");
                    Answer::Ok(keys)
                }
                Err(Answer::NotFound) => Answer::Denied("no security-key profile".into()),
                Err(a) => a,
            };
        }
        let mut keys = valid_keys(&user);
        // A key registered since the last sync: refresh this one profile (budgeted per user).
        if let Some(fp) = fingerprint
            && !keys
                .iter()
                .any(|k| self::fingerprint(k).as_deref() == Some(fp))
        {
            let budget_left =
                !lock(&self.refreshes).check_and_note(user.username.clone(), REFRESH_EVERY);
            let query = format!("username={}", query_escape(name));
            if !budget_left {
                tracing::debug!("unknown key: this profile was refreshed moments ago");
            } else if let Ok(fresh) = self
                .fetch_user(&query, Miss::UserName(name.to_owned()))
                .await
                && fresh.username == user.username
                && let Ok(fresh) = self.admit(&fresh, true)
            {
                user = fresh;
                keys = valid_keys(&user);
            }
        }
        tracing::info!(email = %user.email, decision = "allow", keys = keys.len(), admin, "login authorized");
        Answer::Ok(keys)
    }

    /// The principal (the user's own name) for a certificate login of `name`, if the
    /// certificate carries an OS Login id, is within its validity, names `name` among its
    /// principals, and `authorize?policy=login&fingerprint=ID` succeeds now. sshd has already
    /// checked the CA signature against TrustedUserCAKeys.
    pub async fn authorized_principals(
        &self,
        name: &str,
        cert: &str,
        connection: Option<&str>,
    ) -> Answer {
        let span = tracing::info_span!("login", user = name, method = "certificate");
        let _enter = span.enter();
        let info = match self.certificate_checks(name, cert, connection) {
            Ok(i) => i,
            Err(a) => return a,
        };
        match self.certificate_login(name, cert, &info, connection).await {
            Ok(user) => Answer::Ok(vec![user.username.clone()]),
            Err(a) => a,
        }
    }

    /// The keys command for a certificate (`%t %k`), which sshd runs when the certificate's
    /// CA is not in TrustedUserCAKeys: nothing when the file holds that CA (the principals
    /// command made the decision); else the CA keys fetched now, and when the fresh list
    /// holds the CA, the principals command's checks and decision, answered with one
    /// `cert-authority,principals="USER" CA-KEY` line. `NotFound` for a user that is not an
    /// OS Login user (not ours: a chained command may know the certificate).
    pub async fn certificate_keys(
        &self,
        name: &str,
        cert: &str,
        connection: Option<&str>,
    ) -> Answer {
        let span = tracing::info_span!("login", user = name, method = "certificate, keys command");
        let _enter = span.enter();
        if !self.is_enabled() {
            return Answer::NotFound;
        }
        if let Err(a) = self.user(name).await {
            return a;
        }
        let info = match self.certificate_checks(name, cert, connection) {
            Ok(i) => i,
            Err(a) => return a,
        };
        let path = self.config().oslogin.ca_file.clone();
        let known = std::fs::read_to_string(&path).unwrap_or_default();
        if super::trusted_ca::find_ca(&known, &info.ca_key).is_some() {
            tracing::debug!(ca = %info.ca_fingerprint, "the certificate's CA is trusted already: the principals command decided");
            return Answer::Ok(Vec::new());
        }
        let Some(ca_line) =
            super::trusted_ca::refresh_for(self, &info.ca_key, &info.ca_fingerprint).await
        else {
            let why =
                "the certificate's CA is not a trusted OS Login CA (not in oslogin/certificates)";
            tracing::info!(decision = "deny", reason = why, ca = %info.ca_fingerprint, key_id = %info.key_id, "certificate refused");
            events::login(name, false, why, connection);
            return Answer::Denied(why.into());
        };
        match self.certificate_login(name, cert, &info, connection).await {
            Ok(user) => {
                tracing::info!(ca = %info.ca_fingerprint, "certificate of a CA fetched just now: answered as a cert-authority line");
                Answer::Ok(vec![cert_authority_line(&user.username, &ca_line)])
            }
            Err(a) => a,
        }
    }

    /// What is checked before anything is asked: certificates accepted at all (not in
    /// security-key mode), and readable.
    fn certificate_checks(
        &self,
        name: &str,
        cert: &str,
        connection: Option<&str>,
    ) -> Result<super::certificate::CertInfo, Answer> {
        if self.is_enabled() && self.security_keys() {
            // As Google's agent: in security-key mode no certificate is offered or accepted
            // (a certificate would open the account without the security key).
            let why = "security-key mode (enable-oslogin-sk): certificates are not accepted";
            tracing::info!(decision = "deny", reason = why, "certificate refused");
            events::login(name, false, why, connection);
            return Err(Answer::Denied(why.into()));
        }
        super::certificate::parse(cert).map_err(|why| {
            tracing::info!(decision = "deny", reason = %why, "certificate refused");
            let why = format!("certificate unreadable: {why}");
            events::login(name, false, &why, connection);
            Answer::Denied(why)
        })
    }

    /// The certificate's OS Login id, validity and principals, then the live decision with
    /// that id (`decide_login`).
    async fn certificate_login(
        &self,
        name: &str,
        cert: &str,
        info: &super::certificate::CertInfo,
        connection: Option<&str>,
    ) -> Result<Arc<OsUser>, Answer> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id = match decision::certificate_id(info, name, now) {
            Ok(id) => id,
            Err(why) => {
                tracing::info!(decision = "deny", reason = why, key_id = %info.key_id, ca = %info.ca_fingerprint, "certificate refused");
                events::login(name, false, why, connection);
                return Err(Answer::Denied(why.to_owned()));
            }
        };
        // The keys command and the principals command get the same `%k`: the two runs of one
        // connection count as one pass whichever command makes each.
        let proven = self.proven(connection, &format!("cert {}", fingerprint_of_text(cert)));
        let (user, admin) = self
            .decide_login(name, Some(id), connection, proven)
            .await?;
        tracing::info!(email = %user.email, decision = "allow", key_id = %info.key_id, admin, "certificate login authorized");
        Ok(user)
    }

    /// Adds or removes the sudo rule for `user` from an adminLogin decision (unchanged when
    /// the service could not answer).
    pub(super) async fn update_admin(&self, user: &str, decision: &Decision) {
        let changed = {
            let mut admins = lock(&self.admins);
            let mut inherited = lock(&self.inherited_admins);
            match decision {
                // Confirmed: an inherited rule becomes this run's.
                Decision::Allowed => {
                    inherited.remove(user);
                    admins.insert(user.to_owned())
                }
                // A rule an earlier run wrote goes too, though this run never granted it.
                Decision::Denied => inherited.remove(user) | admins.remove(user),
                Decision::Unavailable(_) => false,
            }
        };
        if changed && *decision == Decision::Denied {
            lock(&self.demoted).insert(user.to_owned());
        }
        if changed {
            self.write_sudoers().await;
        }
    }

    async fn ensure_home(&self, user: &OsUser) {
        let owned = user.clone();
        let skel = self.paths.skel.clone();
        let result =
            tokio::task::spawn_blocking(move || super::effects::ensure_home(&owned, &skel)).await;
        match result {
            Ok(Ok(super::effects::Home::Created)) => tracing::info!("home directory created"),
            Ok(Ok(super::effects::Home::Exists)) => {}
            Ok(Ok(super::effects::Home::TakenBy(owner))) => {
                // Not adopted: from now on the user is served BASE/NAME (logged by `admit`).
                tracing::warn!(home = %user.home, owner, "the profile's home exists and belongs to another account; not used");
                lock(&self.homes_taken).insert(user.username.clone());
                self.request_full_rebuild();
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot create the home directory"),
            Err(e) => tracing::warn!(error = %e, "home directory task failed"),
        }
    }
}

/// The authorized_keys line that lets a certificate of `ca_line`'s CA in as `user` (and only
/// as `user`: sshd checks the certificate names it).
pub fn cert_authority_line(user: &str, ca_line: &str) -> String {
    format!("cert-authority,principals=\"{user}\" {ca_line}")
}

/// A short stable tag for a certificate's text (the two runs of a connection send the same).
fn fingerprint_of_text(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Used by tests and the helper: the same rule for a user outside the daemon.
pub fn keys_of(user: &Arc<OsUser>) -> Vec<String> {
    valid_keys(user)
}
