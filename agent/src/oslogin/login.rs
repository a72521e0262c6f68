//! The login decision for sshd's AuthorizedKeysCommand: who the user is, whether the login
//! role is granted now, which keys are valid, and the side effects of a positive decision
//! (home directory, sudo rule for admins).

use std::sync::Arc;
use std::time::Duration;

use ssh_key::{HashAlg, PublicKey};

use guest_agent_wire::proto::Answer;

use super::authorize::{Decision, Policy};
use super::profile::OsUser;
use super::service::{OsLogin, lock, now_usec};
use crate::mds::query_escape;
use crate::oslogin::directory::Miss;

/// The SHA256 fingerprint sshd prints (`SHA256:base64`), for a key line.
pub fn fingerprint(line: &str) -> Option<String> {
    let key = PublicKey::from_openssh(line).ok()?;
    Some(key.fingerprint(HashAlg::Sha256).to_string())
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
    /// The live decision for a login of `name` (with a certificate's OS Login id when
    /// `cert_id` is given): the login role now (or the grace period), the admin role's sudo
    /// rule, the home at the first login. `Ok` carries the user and whether it is an admin.
    async fn decide_login(
        &self,
        name: &str,
        cert_id: Option<&str>,
        connection: Option<&str>,
    ) -> Result<(Arc<OsUser>, bool), Answer> {
        if !self.is_enabled() {
            tracing::info!(decision = "none", reason = "OS Login is off");
            return Err(Answer::NotFound);
        }
        let user = self.user(name).await.inspect_err(|answer| {
            tracing::info!(decision = "deny", reason = "no such OS Login user", answer = ?answer);
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
        match &login {
            Decision::Allowed => {}
            Decision::Denied => {
                tracing::info!(email = %user.email, decision = "deny", reason = "login role not granted");
                self.update_admin(&user.username, &Decision::Denied).await;
                return Err(Answer::Denied("login role not granted".into()));
            }
            Decision::Unavailable(why)
                if self
                    .authorizer
                    .within_grace(&user.email, Policy::Login, grace) =>
            {
                tracing::warn!(email = %user.email, decision = "allow", reason = "grace period", error = %why,
                    "metadata service unavailable; allowed by the grace period");
            }
            Decision::Unavailable(why) => {
                tracing::warn!(email = %user.email, decision = "deny", reason = "metadata service unavailable", error = %why);
                return Err(Answer::Unavailable(why.clone()));
            }
        }
        self.update_admin(&user.username, &admin).await;
        if o.create_home {
            self.ensure_home(&user).await;
        }
        Ok((user, matches!(admin, Decision::Allowed)))
    }

    /// Keys for `name` if the login role is granted now. `fingerprint` (sshd's `%f`) lets the
    /// daemon notice a key registered since the last sync; `connection` lets the two runs of
    /// one login share one decision.
    pub async fn authorized_keys(
        &self,
        name: &str,
        fingerprint: Option<&str>,
        connection: Option<&str>,
    ) -> Answer {
        let span = tracing::info_span!(
            "login",
            user = name,
            fingerprint = fingerprint.unwrap_or("-")
        );
        let _enter = span.enter();
        let (mut user, admin) = match self.decide_login(name, None, connection).await {
            Ok(u) => u,
            Err(a) => return a,
        };
        let mut keys = valid_keys(&user);
        // A key registered since the last sync: refresh this one profile.
        if let Some(fp) = fingerprint
            && !keys
                .iter()
                .any(|k| self::fingerprint(k).as_deref() == Some(fp))
        {
            let query = format!("username={}", query_escape(name));
            if let Ok(fresh) = self
                .fetch_user(&query, Miss::UserName(name.to_owned()))
                .await
                && fresh.username == user.username
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
        let info = match super::certificate::parse(cert) {
            Ok(i) => i,
            Err(why) => {
                tracing::info!(decision = "deny", reason = %why, "certificate refused");
                return Answer::Denied(format!("certificate unreadable: {why}"));
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let refuse = |why: &str| {
            tracing::info!(decision = "deny", reason = why, key_id = %info.key_id, ca = %info.ca_fingerprint, "certificate refused");
            Answer::Denied(why.to_owned())
        };
        let Some(id) = info.fingerprint.as_deref() else {
            return refuse("the certificate carries no OS Login id (fingerprint@google.com)");
        };
        if !info.is_valid_at(now) {
            return refuse("the certificate is outside its validity period");
        }
        if !info.principals.iter().any(|p| p == name) {
            return refuse("the certificate does not name this user");
        }
        match self.decide_login(name, Some(id), connection).await {
            Ok((user, admin)) => {
                tracing::info!(email = %user.email, decision = "allow", key_id = %info.key_id, admin, "certificate login authorized");
                Answer::Ok(vec![user.username.clone()])
            }
            Err(a) => a,
        }
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
        if changed {
            self.write_sudoers().await;
        }
    }

    async fn ensure_home(&self, user: &OsUser) {
        let user = user.clone();
        let skel = self.paths.skel.clone();
        let result =
            tokio::task::spawn_blocking(move || super::effects::ensure_home(&user, &skel)).await;
        match result {
            Ok(Ok(true)) => tracing::info!("home directory created"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot create the home directory"),
            Err(e) => tracing::warn!(error = %e, "home directory task failed"),
        }
    }
}

/// Used by tests and the helper: the same rule for a user outside the daemon.
pub fn keys_of(user: &Arc<OsUser>) -> Vec<String> {
    valid_keys(user)
}
