//! [`Emulator`]: the shared state handle. Tests, the control interface and the metadata
//! listener all go through it; every method takes a short lock and never awaits under it.
//! Changes to the tree bump a `watch` channel that wakes long polls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::Context as _;
use serde_json::Value;
use tokio::sync::watch;

use crate::api::{
    CertRequest, Ec2Settings, Fault, FaultKind, GroupSpec, InitialState, RequestRecord, Scope,
    TwoFactor, UserSpec,
};
use crate::ca::{Ca, CertFields, random_id};
use crate::http::Request;
use crate::oslogin::Directory;
use crate::tokens::Tokens;
use crate::tree;

/// Oldest request records are dropped beyond this many.
const MAX_RECORDS: usize = 100_000;

/// Everything behind the lock.
#[derive(Debug)]
pub(crate) struct Inner {
    pub tree: Value,
    pub faults: Vec<Fault>,
    requests: Vec<(u64, RequestRecord)>,
    next_request_id: u64,
    pub directory: Directory,
    pub ca: Ca,
    pub tokens: Tokens,
    pub ec2: Ec2Settings,
    /// EC2 IMDSv2 session tokens and when they expire.
    pub ec2_sessions: HashMap<String, Instant>,
}

impl Inner {
    /// The key tokens are stored under: the account's email when the tree knows it.
    pub fn canonical_account(&self, name: &str) -> String {
        let node = tree::lookup(&self.tree, &["instance", "serviceAccounts", name]);
        node.and_then(|n| n.value.get("email"))
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_owned()
    }

    /// Whether the tree has a service account of that name (or email).
    pub fn has_account(&self, name: &str) -> bool {
        tree::lookup(&self.tree, &["instance", "serviceAccounts", name]).is_some()
    }
}

struct Shared {
    inner: Mutex<Inner>,
    tree_version: watch::Sender<u64>,
    faults_cleared: watch::Sender<u64>,
    /// Bumped by every phone-prompt decision made over the control interface.
    authzen_decided: watch::Sender<u64>,
    started: Instant,
    log_requests: AtomicBool,
}

/// A cheap, cloneable handle on the emulator's state.
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").finish_non_exhaustive()
    }
}

impl Emulator {
    /// State without listeners (what [`crate::start`] serves).
    pub fn new(initial: InitialState) -> Self {
        let mut t = tree::default_tree();
        if let Some(over) = initial.tree {
            tree::merge(&mut t, over);
        }
        let mut directory = Directory::default();
        for u in initial.users {
            directory.upsert_user(u);
        }
        for g in initial.groups {
            directory.upsert_group(g);
        }
        let mut inner = Inner {
            tree: t,
            faults: Vec::new(),
            requests: Vec::new(),
            next_request_id: 0,
            directory,
            ca: Ca::new(),
            tokens: Tokens::default(),
            ec2: initial.ec2.unwrap_or_default(),
            ec2_sessions: HashMap::new(),
        };
        let default = inner.canonical_account("default");
        inner.tokens.current(&default);
        Emulator {
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                tree_version: watch::channel(0).0,
                faults_cleared: watch::channel(0).0,
                authzen_decided: watch::channel(0).0,
                started: Instant::now(),
                log_requests: AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock cannot leave the data half-updated in a way that matters here.
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump_tree(&self) {
        self.shared
            .tree_version
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that sees every tree change made after this call.
    pub(crate) fn subscribe_tree(&self) -> watch::Receiver<u64> {
        self.shared.tree_version.subscribe()
    }

    /// A receiver that sees every `clear_faults` made after this call.
    pub(crate) fn subscribe_clears(&self) -> watch::Receiver<u64> {
        self.shared.faults_cleared.subscribe()
    }

    /// A receiver that sees every [`Self::decide_authzen`] made after this call.
    pub(crate) fn subscribe_authzen(&self) -> watch::Receiver<u64> {
        self.shared.authzen_decided.subscribe()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.shared.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records an arriving request; returns its id for [`Self::record_finish`].
    pub(crate) fn record_start(&self, req: &Request) -> u64 {
        let record = RequestRecord {
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            at_ms: self.now_ms(),
            flavor_header: req
                .header("metadata-flavor")
                .is_some_and(|v| v.eq_ignore_ascii_case("google")),
            status: 0,
        };
        let mut inner = self.lock();
        let id = inner.next_request_id;
        inner.next_request_id += 1;
        if inner.requests.len() >= MAX_RECORDS {
            inner.requests.remove(0);
        }
        inner.requests.push((id, record));
        id
    }

    /// Notes the status sent for request `id` (and logs it when asked to).
    pub(crate) fn record_finish(&self, id: u64, status: u16) {
        let now = self.now_ms();
        let mut inner = self.lock();
        let Ok(i) = inner.requests.binary_search_by_key(&id, |(id, _)| *id) else {
            return;
        };
        let rec = &mut inner.requests[i].1;
        rec.status = status;
        if self.shared.log_requests.load(Ordering::Relaxed) {
            let q = if rec.query.is_empty() { "" } else { "?" };
            eprintln!(
                "{} {}{q}{} {} {}ms",
                rec.method,
                rec.path,
                rec.query,
                status,
                now.saturating_sub(rec.at_ms)
            );
        }
    }

    /// The fault a request to `path` meets, if any (counted).
    pub(crate) fn take_fault(&self, path: &str) -> Option<FaultKind> {
        crate::faults::take(&mut self.lock().faults, path)
    }

    /// Print one line per finished metadata request to stderr.
    pub fn set_log_requests(&self, on: bool) {
        self.shared.log_requests.store(on, Ordering::Relaxed);
    }

    // ---- tree ----

    pub fn set_attribute(&self, scope: Scope, key: &str, value: &str) {
        if tree::set_attribute(&mut self.lock().tree, scope, key, value) {
            self.bump_tree();
        }
    }

    pub fn remove_attribute(&self, scope: Scope, key: &str) {
        if tree::remove_attribute(&mut self.lock().tree, scope, key) {
            self.bump_tree();
        }
    }

    /// The whole tree, as `?recursive=true&alt=json` answers it.
    pub fn tree(&self) -> Value {
        self.lock().tree.clone()
    }

    /// Replaces the whole tree (no merge).
    pub fn set_tree(&self, new: Value) {
        let changed = {
            let mut inner = self.lock();
            let changed = tree::canonical(&inner.tree) != tree::canonical(&new);
            inner.tree = new;
            changed
        };
        if changed {
            self.bump_tree();
        }
    }

    /// Etag of the whole tree.
    pub fn etag(&self) -> String {
        tree::etag(Some(&self.lock().tree))
    }

    // ---- faults and requests ----

    /// Adds a fault after the existing ones (the first match wins). `count: Some(0)` is a no-op.
    pub fn add_fault(&self, fault: Fault) {
        if fault.count != Some(0) {
            self.lock().faults.push(fault);
        }
    }

    /// Removes every fault and releases hung requests.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
        self.shared
            .faults_cleared
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.lock().faults.clone()
    }

    /// Every metadata request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock()
            .requests
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    // ---- OS Login ----

    /// Adds or replaces (by username) an OS Login user.
    pub fn upsert_user(&self, user: UserSpec) {
        self.lock().directory.upsert_user(user);
    }

    pub fn remove_user(&self, username: &str) -> bool {
        self.lock().directory.remove_user(username)
    }

    pub fn set_roles(&self, username: &str, login: bool, admin: bool) -> bool {
        self.lock().directory.set_roles(username, login, admin)
    }

    pub fn add_key(&self, username: &str, key: &str, expiration_usec: Option<i64>) -> bool {
        self.lock()
            .directory
            .add_key(username, key, expiration_usec)
    }

    pub fn remove_key(&self, username: &str, key: &str) -> bool {
        self.lock().directory.remove_key(username, key)
    }

    pub fn upsert_group(&self, group: GroupSpec) {
        self.lock().directory.upsert_group(group);
    }

    pub fn remove_group(&self, name: &str) -> bool {
        self.lock().directory.remove_group(name)
    }

    /// Replaces the user's two-step verification factors (empty: none, so
    /// `sessions/start` answers `NO_AVAILABLE_CHALLENGES`); false if the user is unknown.
    pub fn set_two_factor(&self, username: &str, factors: Vec<TwoFactor>) -> bool {
        self.lock().directory.set_two_factor(username, factors)
    }

    /// Approves or denies the user's `AUTHZEN` phone prompt: the one a `RESPOND` waits for,
    /// or else the next one (a decision decides one prompt). False if the user is unknown.
    pub fn decide_authzen(&self, username: &str, approve: bool) -> bool {
        let known = self.lock().directory.decide_authzen(username, approve);
        if known {
            self.shared
                .authzen_decided
                .send_modify(|v| *v = v.wrapping_add(1));
        }
        known
    }

    /// `oslogin/users?<query>` will answer exactly `status` and `body`.
    pub fn set_raw_user_response(&self, query: &str, status: u16, body: String) {
        self.lock().directory.set_raw(query, status, body);
    }

    // ---- CA ----

    /// Replaces the CA key (the old one is no longer served); returns the new public key line.
    pub fn rotate_ca(&self) -> String {
        let mut inner = self.lock();
        inner.ca = Ca::new();
        inner.ca.public_line()
    }

    pub fn ca_public_keys(&self) -> Vec<String> {
        vec![self.lock().ca.public_line()]
    }

    /// Signs a user certificate for a known OS Login user; its `fingerprint@google.com` id is
    /// remembered so `authorize?fingerprint=<id>` succeeds for that user.
    pub fn sign_certificate(&self, req: CertRequest) -> anyhow::Result<String> {
        let mut inner = self.lock();
        let email = inner
            .directory
            .user(&req.username)
            .map(|u| u.email.clone())
            .with_context(|| format!("no OS Login user {:?}", req.username))?;
        let id = random_id();
        let line = inner.ca.sign(&CertFields {
            username: &req.username,
            email: &email,
            public_key: &req.public_key,
            validity_secs: req.validity_secs,
            valid_after_offset_secs: req.valid_after_offset_secs,
            fingerprint_id: &id,
        })?;
        inner.directory.remember_cert(id, &req.username);
        Ok(line)
    }

    // ---- tokens and EC2 ----

    /// Replaces the access token of `account` (`default` or an email) with one living
    /// `expires_in_secs`; returns it.
    pub fn rotate_token(&self, account: &str, expires_in_secs: u64) -> String {
        let mut inner = self.lock();
        let key = inner.canonical_account(account);
        inner.tokens.rotate(&key, expires_in_secs)
    }

    /// The current access token of `account`, renewed if expired; `None` for an account
    /// neither in the tree nor rotated by hand.
    pub fn token(&self, account: &str) -> Option<String> {
        let mut inner = self.lock();
        let key = inner.canonical_account(account);
        if inner.has_account(account) || inner.tokens.peek(&key).is_some() {
            Some(inner.tokens.current(&key).0)
        } else {
            None
        }
    }

    pub fn set_ec2(&self, enabled: bool, require_v2: bool) {
        self.lock().ec2 = Ec2Settings {
            enabled,
            require_v2,
        };
    }

    pub fn ec2(&self) -> Ec2Settings {
        self.lock().ec2
    }
}
