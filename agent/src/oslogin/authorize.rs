//! Live login decisions: `oslogin/authorize?email=E&policy=login|adminLogin[&fingerprint=F]`.
//!
//! - Every login asks the service (revoking a role cuts access at the next login), except that
//!   the runs sshd makes for one SSH connection (it runs AuthorizedKeysCommand once for the key
//!   query and once for the signature) share the decision: they carry the same connection id.
//! - Concurrent identical checks share one request (single flight).
//! - `decision_reuse_secs` (default 0) lets an operator reuse a decision across logins.
//! - When the service cannot answer, the decision is "unavailable": the caller fails closed
//!   unless the user's last positive decision is younger than the grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::profile::parse_authorized;
use crate::mds::{GceClient, MdsError, query_escape};

/// How long the runs of one SSH connection share a decision.
const CONNECTION_REUSE: Duration = Duration::from_secs(60);
/// Bound on remembered decisions (pruned of expired ones past this).
const MAX_REMEMBERED: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    Login,
    AdminLogin,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Login => "login",
            Policy::AdminLogin => "adminLogin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
    /// The service did not give an answer (down, slow, garbled): the reason.
    Unavailable(String),
}

type Question = (String, Policy, Option<String>);
/// (email, policy, connection id) -> when and what was decided.
type ByConnection = HashMap<(String, Policy, String), (Instant, Decision)>;

#[derive(Default)]
pub struct Authorizer {
    inflight: Mutex<HashMap<Question, Arc<OnceCell<Decision>>>>,
    /// Decisions by (question, scope): scope is a connection id, or "" for cross-login reuse.
    recent: Mutex<HashMap<(Question, String), (Instant, Decision)>>,
    last_allowed: Mutex<HashMap<(String, Policy), Instant>>,
    /// The last decision of (email, policy) made for a connection, whatever certificate id
    /// it carried: the PAM account hook of that connection reuses it ([`Self::of_connection`]).
    by_connection: Mutex<ByConnection>,
    /// The latest answer about (email, policy) from any caller: without a certificate id,
    /// or a grant with one (a certificate's refusal may be about the certificate, not the
    /// role). The session check reuses it ([`Self::latest`]).
    latest: Mutex<HashMap<(String, Policy), (Instant, Decision)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Authorizer {
    /// Decides `policy` for `email` (with the certificate `fingerprint` when given).
    pub async fn decide(
        &self,
        client: &GceClient,
        email: &str,
        policy: Policy,
        fingerprint: Option<&str>,
        connection: Option<&str>,
        reuse: Duration,
    ) -> Decision {
        let question: Question = (email.to_owned(), policy, fingerprint.map(str::to_owned));
        let now = Instant::now();
        {
            let recent = lock(&self.recent);
            // The connection's own scope only with a connection id: without one, the 60 s of
            // CONNECTION_REUSE must not stretch the operator's cross-login window.
            let connection = connection.filter(|c| !c.is_empty());
            let scopes = [(connection, CONNECTION_REUSE), (Some(""), reuse)];
            for (scope, window) in scopes {
                let Some(scope) = scope else { continue };
                if window.is_zero() {
                    continue;
                }
                if let Some((at, d)) = recent.get(&(question.clone(), scope.to_owned()))
                    && now.duration_since(*at) < window
                    && !matches!(d, Decision::Unavailable(_))
                {
                    tracing::debug!(email, policy = policy.as_str(), "decision reused");
                    return d.clone();
                }
            }
        }
        let cell = lock(&self.inflight)
            .entry(question.clone())
            .or_default()
            .clone();
        let decision = cell
            .get_or_init(|| ask(client, email, policy, fingerprint))
            .await
            .clone();
        {
            let mut inflight = lock(&self.inflight);
            if inflight
                .get(&question)
                .is_some_and(|c| Arc::ptr_eq(c, &cell))
            {
                inflight.remove(&question);
            }
        }
        if !matches!(decision, Decision::Unavailable(_)) {
            let mut recent = lock(&self.recent);
            if recent.len() > MAX_REMEMBERED {
                let horizon = CONNECTION_REUSE.max(reuse);
                recent.retain(|_, (at, _)| now.duration_since(*at) < horizon);
            }
            if let Some(c) = connection.filter(|c| !c.is_empty()) {
                recent.insert((question.clone(), c.to_owned()), (now, decision.clone()));
                let mut by = lock(&self.by_connection);
                if by.len() > MAX_REMEMBERED {
                    by.retain(|_, (at, _)| now.duration_since(*at) < CONNECTION_REUSE);
                }
                by.insert(
                    (email.to_owned(), policy, c.to_owned()),
                    (now, decision.clone()),
                );
            }
            if !reuse.is_zero() {
                recent.insert((question.clone(), String::new()), (now, decision.clone()));
            }
        }
        if !matches!(decision, Decision::Unavailable(_))
            && (fingerprint.is_none() || decision == Decision::Allowed)
        {
            let mut latest = lock(&self.latest);
            if latest.len() > MAX_REMEMBERED {
                latest.retain(|_, (at, _)| now.duration_since(*at) < CONNECTION_REUSE.max(reuse));
            }
            latest.insert((email.to_owned(), policy), (now, decision.clone()));
        }
        match decision {
            Decision::Allowed => {
                lock(&self.last_allowed).insert((email.to_owned(), policy), now);
            }
            Decision::Denied => {
                lock(&self.last_allowed).remove(&(email.to_owned(), policy));
            }
            Decision::Unavailable(_) => {}
        }
        decision
    }

    /// The decision of `policy` for `email` that the key or principals check of `connection`
    /// made less than a minute ago (with or without a certificate id), if any.
    pub fn of_connection(&self, email: &str, policy: Policy, connection: &str) -> Option<Decision> {
        if connection.is_empty() {
            return None;
        }
        let by = lock(&self.by_connection);
        let (at, d) = by.get(&(email.to_owned(), policy, connection.to_owned()))?;
        (at.elapsed() < CONNECTION_REUSE).then(|| d.clone())
    }

    /// The latest answer about `policy` for `email` (see the field) and when it came.
    pub fn latest(&self, email: &str, policy: Policy) -> Option<(Instant, Decision)> {
        lock(&self.latest).get(&(email.to_owned(), policy)).cloned()
    }

    /// Whether `email` was last allowed `policy` less than `grace` ago.
    pub fn within_grace(&self, email: &str, policy: Policy, grace: Duration) -> bool {
        !grace.is_zero()
            && lock(&self.last_allowed)
                .get(&(email.to_owned(), policy))
                .is_some_and(|at| at.elapsed() < grace)
    }
}

/// One authorize request.
pub async fn ask(
    client: &GceClient,
    email: &str,
    policy: Policy,
    fingerprint: Option<&str>,
) -> Decision {
    let mut path = format!(
        "oslogin/authorize?email={}&policy={}",
        query_escape(email),
        policy.as_str()
    );
    if let Some(f) = fingerprint {
        path.push_str(&format!("&fingerprint={}", query_escape(f)));
    }
    match client.get_json::<serde_json::Value>(&path).await {
        Ok(v) if parse_authorized(&v) => Decision::Allowed,
        Ok(_) => Decision::Denied,
        Err(MdsError::NotFound { .. }) => Decision::Denied,
        Err(MdsError::Status { status, .. }) if (400..500).contains(&status) && status != 429 => {
            Decision::Denied
        }
        Err(e) => Decision::Unavailable(e.to_string()),
    }
}
