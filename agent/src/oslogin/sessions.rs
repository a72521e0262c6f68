//! Ending the sessions of a revoked user (`oslogin.end_revoked_sessions`, off by default).
//!
//! A revoked role refuses the next login; this reaches what is already running. Every tick,
//! with the option on and OS Login enabled:
//! - gather: the OS Login users who run something on the VM (a /proc scan by real,
//!   effective and login uid, and logind's users when logind runs), i.e. uids of the
//!   daemon's directory that it serves (`admit`): never a local account, so never a
//!   metadata-keys user, never root;
//! - plan ([`next_step`]): for each such user, the login role's latest answer when it is
//!   younger than `session_check_secs` (whoever asked: a login a moment ago costs nothing),
//!   else one authorize through the same [`super::authorize::Authorizer`] (single flight with
//!   a concurrent login), at most once per `session_check_secs` per user even while the
//!   service fails; the same for adminLogin for users whose sudo rule exists. No OS Login
//!   user running anything: no request at all;
//! - execute ([`login_outcome`], [`admin_outcome`]): a denied login role ends everything the
//!   user runs (`host::procs`) and removes the sudo rule; a denied admin role removes the
//!   sudo rule at once and ends the user's root processes started through sudo. An outage
//!   (no answer) ends nobody, inside the grace period or not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::authorize::{Decision, Policy};
use super::decision::{self, Verdict};
use super::service::{OsLogin, lock};
use crate::host::procs::{self, ProcPaths, Reach};

/// How long SIGTERM is given before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// An OS Login user who runs something on the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    pub uid: u32,
    pub name: String,
    pub email: String,
    /// The user is in the sudoers drop-in (its admin role is checked too).
    pub sudo_rule: bool,
}

/// What the check does about one (user, policy) this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An answer younger than the period exists (a login's, or the last check's): use it.
    Use(Decision),
    /// Ask the service.
    Ask,
    /// Asked less than a period ago and got no answer: wait for the period.
    Wait,
}

/// The policies checked for `a`: the login role, and the admin role while a sudo rule exists.
pub fn policies(a: &Active) -> &'static [Policy] {
    if a.sudo_rule {
        &[Policy::Login, Policy::AdminLogin]
    } else {
        &[Policy::Login]
    }
}

/// The step for one (user, policy): `latest` is the latest answer (any caller), `asked` when
/// this check last asked (answered or not). At most one request per `every`.
pub fn next_step(
    latest: Option<&(Instant, Decision)>,
    asked: Option<Instant>,
    now: Instant,
    every: Duration,
) -> Step {
    let young = |at: Instant| now.saturating_duration_since(at) < every;
    match latest {
        Some((at, d)) if young(*at) => Step::Use(d.clone()),
        _ if asked.is_some_and(young) => Step::Wait,
        _ => Step::Ask,
    }
}

/// What the login role's answer means for a user's running processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Keep,
    /// Denied: end everything the user runs.
    End(String),
    /// The service did not answer: nobody is ended (`by_grace`: within the grace period).
    Outage {
        by_grace: bool,
        why: String,
    },
}

/// [`decision::login_verdict`] applied to running sessions: only a denial ends them.
pub fn login_outcome(login: &Decision, within_grace: bool) -> Outcome {
    match decision::login_verdict(login, within_grace) {
        Verdict::Allow { by_grace: false } => Outcome::Keep,
        Verdict::Allow { by_grace: true } => Outcome::Outage {
            by_grace: true,
            why: match login {
                Decision::Unavailable(why) => why.clone(),
                _ => String::new(),
            },
        },
        Verdict::Deny(why) => Outcome::End(why),
        Verdict::Unavailable(why) => Outcome::Outage {
            by_grace: false,
            why,
        },
    }
}

/// Whether the admin role's answer removes the sudo rule (and the root processes): only a
/// denial does; an outage leaves the rule as it is (as at login).
pub fn admin_outcome(admin: &Decision) -> bool {
    matches!(admin, Decision::Denied)
}

/// The tick between two looks at the process table: a fifth of the period, 1 to 5 s (a
/// revocation is acted on within the period plus one tick).
pub fn tick(every: Duration) -> Duration {
    (every / 5).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// When this check last asked, by (uid, policy).
type Asked = HashMap<(u32, Policy), Instant>;

impl OsLogin {
    /// The session check loop (see the module); runs for the daemon's life, idle (no scan,
    /// no request) while the option or OS Login is off.
    pub async fn watch_sessions(self: Arc<Self>) {
        let mut asked = Asked::new();
        loop {
            let every = Duration::from_secs(self.config().oslogin.session_check_secs);
            tokio::time::sleep(tick(every)).await;
            if !self.config().oslogin.end_revoked_sessions || !self.is_enabled() {
                asked.clear();
                lock(&self.demoted).clear();
                continue;
            }
            self.check_sessions(&mut asked, every).await;
        }
    }

    /// The OS Login users who run something now (gather).
    async fn active_users(&self) -> Vec<Active> {
        let uids = tokio::task::spawn_blocking(|| {
            let paths = ProcPaths::default();
            let mut uids = procs::active_uids(&procs::scan(&paths.proc));
            uids.extend(procs::logind_uids(&paths));
            uids
        })
        .await
        .unwrap_or_default();
        let floor = self.config().oslogin.min_id;
        let candidates: Vec<_> = {
            let d = lock(&self.directory);
            uids.into_iter()
                .filter(|&u| u >= floor && u != 0)
                .filter_map(|u| d.user_by_uid(u))
                .collect()
        };
        let admins = {
            let mut a = lock(&self.admins).clone();
            a.extend(lock(&self.inherited_admins).iter().cloned());
            a
        };
        candidates
            .into_iter()
            .filter_map(|u| self.admit(&u, true).ok())
            .map(|u| Active {
                uid: u.uid,
                sudo_rule: admins.contains(&u.username),
                name: u.username.clone(),
                email: u.email.clone(),
            })
            .collect()
    }

    /// One check of every active OS Login user (plan, then execute).
    async fn check_sessions(self: &Arc<Self>, asked: &mut Asked, every: Duration) {
        let active = self.active_users().await;
        asked.retain(|(uid, _), _| active.iter().any(|a| a.uid == *uid));
        let now = Instant::now();
        let mut asks = tokio::task::JoinSet::new();
        let mut answers: Vec<(Active, Policy, Decision)> = Vec::new();
        for a in &active {
            for &policy in policies(a) {
                let latest = self.authorizer.latest(&a.email, policy);
                match next_step(
                    latest.as_ref(),
                    asked.get(&(a.uid, policy)).copied(),
                    now,
                    every,
                ) {
                    Step::Use(d) => answers.push((a.clone(), policy, d)),
                    Step::Wait => {}
                    Step::Ask => {
                        asked.insert((a.uid, policy), now);
                        let me = self.clone();
                        let a = a.clone();
                        asks.spawn(async move {
                            let d = me.ask_for_session(&a.email, policy).await;
                            (a, policy, d)
                        });
                    }
                }
            }
        }
        answers.extend(asks.join_all().await);
        let grace = Duration::from_secs(self.config().oslogin.grace_period_secs);
        let mut ends = tokio::task::JoinSet::new();
        for (a, policy, d) in answers {
            match policy {
                Policy::Login => {
                    let within = self.authorizer.within_grace(&a.email, Policy::Login, grace);
                    match login_outcome(&d, within) {
                        Outcome::Keep => {}
                        Outcome::Outage { by_grace, why } => {
                            tracing::warn!(user = %a.name, uid = a.uid, email = %a.email, by_grace, error = %why,
                                "session check: metadata service unavailable; nothing ended");
                        }
                        Outcome::End(why) => {
                            // Everything the user runs goes, its root processes included.
                            self.update_admin(&a.name, &Decision::Denied).await;
                            lock(&self.demoted).remove(&a.name);
                            ends.spawn(end_processes(a, Reach::Everything, why));
                        }
                    }
                }
                Policy::AdminLogin => {
                    if admin_outcome(&d) {
                        tracing::info!(user = %a.name, uid = a.uid, email = %a.email,
                            "session check: admin role not granted; removing the sudo rule");
                        self.update_admin(&a.name, &Decision::Denied).await;
                    }
                }
            }
        }
        // Sudo rules removed since the last tick (here or at a login): their root processes.
        let demoted: Vec<String> = std::mem::take(&mut *lock(&self.demoted))
            .into_iter()
            .collect();
        for name in demoted {
            let Some(u) = lock(&self.directory).user(&name) else {
                continue;
            };
            let a = Active {
                uid: u.uid,
                name: u.username.clone(),
                email: u.email.clone(),
                sudo_rule: false,
            };
            ends.spawn(end_processes(
                a,
                Reach::Privileged,
                "admin role not granted".into(),
            ));
        }
        ends.join_all().await;
    }

    async fn ask_for_session(&self, email: &str, policy: Policy) -> Decision {
        let o = self.config().oslogin.clone();
        let client = match self.client() {
            Ok(c) => c.with_timeout(Duration::from_millis(o.authorize_timeout_ms)),
            Err(e) => return Decision::Unavailable(e),
        };
        let reuse = Duration::from_secs(o.decision_reuse_secs);
        self.authorizer
            .decide(&client, email, policy, None, None, reuse)
            .await
    }
}

/// Ends `a`'s processes (`reach`) in a blocking thread and logs one line with the count.
async fn end_processes(a: Active, reach: Reach, why: String) {
    let uid = a.uid;
    let ended = tokio::task::spawn_blocking(move || {
        procs::end(&ProcPaths::default(), uid, reach, TERM_GRACE, true)
    })
    .await
    .unwrap_or_default();
    match reach {
        Reach::Everything => tracing::warn!(
            user = %a.name, uid, email = %a.email, reason = %why,
            processes = ended.processes, killed = ended.killed, left = ended.left,
            "ended the processes of a revoked OS Login user"
        ),
        Reach::Privileged if ended.processes > 0 || ended.left > 0 => tracing::warn!(
            user = %a.name, uid, email = %a.email, reason = %why,
            processes = ended.processes, killed = ended.killed, left = ended.left,
            "ended the root processes a demoted OS Login admin started through sudo"
        ),
        Reach::Privileged => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(30);

    fn user(sudo_rule: bool) -> Active {
        Active {
            uid: 5000,
            name: "alice".into(),
            email: "alice@example.com".into(),
            sudo_rule,
        }
    }

    #[test]
    fn a_fresh_answer_is_used_without_a_request() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        // A login 10 s ago: the user who just logged in is not asked again.
        let fresh = (t0, Decision::Allowed);
        assert_eq!(
            next_step(Some(&fresh), None, now, EVERY),
            Step::Use(Decision::Allowed)
        );
        // A login refused 10 s ago (the role is gone): acted on at once, still no request.
        let refused = (t0, Decision::Denied);
        assert_eq!(
            next_step(Some(&refused), Some(t0), now, EVERY),
            Step::Use(Decision::Denied)
        );
    }

    #[test]
    fn one_request_per_user_per_period() {
        let t0 = Instant::now();
        // Nothing known: ask.
        assert_eq!(next_step(None, None, t0, EVERY), Step::Ask);
        // An answer a period old: ask again.
        let old = (t0, Decision::Allowed);
        assert_eq!(
            next_step(Some(&old), Some(t0), t0 + EVERY, EVERY),
            Step::Ask
        );
        // Asked during an outage (no answer recorded): not again before the period ends.
        let during = t0 + Duration::from_secs(1);
        for later in [1, 10, 29] {
            assert_eq!(
                next_step(
                    None,
                    Some(during),
                    during + Duration::from_secs(later),
                    EVERY
                ),
                Step::Wait,
                "{later}"
            );
        }
        assert_eq!(
            next_step(None, Some(during), during + EVERY, EVERY),
            Step::Ask
        );
        // Over an hour of ticks, at most one request per period.
        let tick = tick(EVERY);
        let (mut asked, mut latest, mut requests) = (None, None, 0);
        let mut now = t0;
        while now < t0 + Duration::from_secs(3600) {
            if next_step(latest.as_ref(), asked, now, EVERY) == Step::Ask {
                requests += 1;
                asked = Some(now);
                latest = Some((now, Decision::Allowed));
            }
            now += tick;
        }
        assert_eq!(requests, 3600 / 30);
    }

    #[test]
    fn the_admin_role_is_asked_only_while_a_sudo_rule_exists() {
        assert_eq!(policies(&user(false)), &[Policy::Login]);
        assert_eq!(policies(&user(true)), &[Policy::Login, Policy::AdminLogin]);
    }

    #[test]
    fn only_a_denial_ends_sessions_an_outage_never() {
        assert_eq!(login_outcome(&Decision::Allowed, false), Outcome::Keep);
        assert!(matches!(
            login_outcome(&Decision::Denied, true),
            Outcome::End(_)
        ));
        let down = Decision::Unavailable("503".into());
        for within in [false, true] {
            assert_eq!(
                login_outcome(&down, within),
                Outcome::Outage {
                    by_grace: within,
                    why: "503".into()
                },
                "an outage ends nobody, in the grace period ({within}) or not"
            );
        }
        assert!(admin_outcome(&Decision::Denied));
        assert!(!admin_outcome(&Decision::Allowed));
        assert!(
            !admin_outcome(&down),
            "an outage keeps the sudo rule as it is"
        );
    }

    #[test]
    fn the_tick_is_a_fifth_of_the_period_within_1_to_5_seconds() {
        assert_eq!(tick(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(tick(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(tick(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(tick(Duration::from_secs(3600)), Duration::from_secs(5));
    }
}
