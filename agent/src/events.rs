//! The daemon's important events, in one place: each call site is one line
//! (`events::emit(Event::...)`), and what an event does is decided here: one short line on the
//! serial console ([`crate::host::console`]) and what `guest-agent status` reports
//! ([`crate::status`]).
//!
//! What goes to the console is for whoever reads a VM's serial port output (the cloud's
//! "serial port output" page, when nobody can log in): start and READY, the metadata service
//! lost and back, OS Login on and off, each refused login with the user and the reason, users
//! created and removed, sshd's configuration rejected and rolled back, sudo rules changed.
//! Never a key, a token, an attribute's value or user-data: events carry names, counts and
//! reasons only, and every line is made safe ([`safe`]: no control characters, bounded).
//!
//! The console is rate limited ([`Limiter`]): a flood of refused logins is summarised once a
//! minute (`guest-agent: 57 more refused logins in the last minute`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::host::console::Console;
use crate::oslogin::service::lock;

/// Every console line starts with this.
pub const PREFIX: &str = "guest-agent: ";
/// Longest console line (bytes, the prefix included; the newline not).
pub const MAX_LINE: usize = 200;
/// Names listed in one "users created/removed" line; the rest are counted.
const MAX_NAMES: usize = 8;

/// Something worth a line on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Starting {
        version: &'static str,
    },
    /// READY=1 sent to systemd; `how` says why now.
    Ready {
        how: &'static str,
    },
    /// The first failure of an outage (`kind`: the error's kind, e.g. `timeout`).
    MetadataLost {
        kind: &'static str,
    },
    MetadataBack {
        outage: Duration,
    },
    OsLogin {
        on: bool,
    },
    LoginRefused {
        user: String,
        reason: String,
    },
    UsersCreated(Vec<String>),
    /// No longer in metadata: managed keys and groups taken, account kept.
    UsersReleased(Vec<String>),
    UsersDeleted(Vec<String>),
    SshdRolledBack {
        reason: String,
    },
    SudoChanged {
        file: String,
    },
    /// A takeover from Google's guest agent finished (`changes` files changed, `adopted` users).
    TookOver {
        changes: usize,
        adopted: usize,
        kept: usize,
    },
}

/// What a console line is rate limited under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    RefusedLogin,
    Other,
}

impl Event {
    pub fn class(&self) -> Class {
        match self {
            Event::LoginRefused { .. } => Class::RefusedLogin,
            _ => Class::Other,
        }
    }

    /// The console line, without the newline: safe to print and at most [`MAX_LINE`] bytes.
    pub fn line(&self) -> String {
        let names = |what: &str, names: &[String]| {
            let shown: Vec<&str> = names.iter().take(MAX_NAMES).map(String::as_str).collect();
            let more = names.len().saturating_sub(MAX_NAMES);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(
                "{} {what}: {}{tail}",
                count(names.len(), "user"),
                shown.join(", ")
            )
        };
        let body = match self {
            Event::Starting { version } => format!("starting (version {version})"),
            Event::Ready { how } => format!("READY ({how})"),
            Event::MetadataLost { kind } => {
                format!("metadata service lost ({kind}); keeping the last good metadata")
            }
            Event::MetadataBack { outage } => {
                format!("metadata service back after {:.1}s", outage.as_secs_f64())
            }
            Event::OsLogin { on: true } => "OS Login on".into(),
            Event::OsLogin { on: false } => "OS Login off".into(),
            Event::LoginRefused { user, reason } => format!("{user}: refused: {reason}"),
            Event::UsersCreated(n) => names("created", n),
            Event::UsersReleased(n) => names("removed (keys and sudo taken, account kept)", n),
            Event::UsersDeleted(n) => names("deleted", n),
            Event::SshdRolledBack { reason } => {
                format!("sshd config rejected and rolled back: {reason}")
            }
            Event::SudoChanged { file } => format!("sudo rules changed ({file})"),
            Event::TookOver {
                changes,
                adopted,
                kept,
            } => format!(
                "took over from Google's guest agent: {changes} changes, {adopted} user{} adopted, \
                 {kept} kept (see takeover.json)",
                if *adopted == 1 { "" } else { "s" }
            ),
        };
        safe(&format!("{PREFIX}{body}"))
    }
}

/// "1 user", "3 users".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// One printable line: control characters (a newline, an escape sequence that would move the
/// console's cursor) become `?`, and it is cut to [`MAX_LINE`] bytes on a character boundary
/// (ending in `...` when cut).
pub fn safe(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.len() <= MAX_LINE {
        return clean;
    }
    let mut end = MAX_LINE - 3;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &clean[..end])
}

/// Console lines of one class let through in one [`WINDOW`]; the rest are counted and
/// summarised when it ends.
pub fn budget(class: Class) -> u32 {
    match class {
        Class::RefusedLogin => 5,
        Class::Other => 20,
    }
}

/// The rate limiter's period.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The summary of `n` lines of `class` left out in the last window.
pub fn summary(class: Class, n: u32) -> String {
    match class {
        Class::RefusedLogin => format!(
            "{PREFIX}{n} more refused login{} in the last minute",
            if n == 1 { "" } else { "s" }
        ),
        Class::Other => format!(
            "{PREFIX}{n} more event{} in the last minute",
            if n == 1 { "" } else { "s" }
        ),
    }
}

/// Rate limiting of console lines, pure (the caller passes the clock): per class, a window
/// starts at its first line, lets [`budget`] lines through, counts the rest, and when it ends
/// gives one [`summary`] line for what it left out.
#[derive(Debug, Default)]
pub struct Limiter {
    windows: HashMap<Class, Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    passed: u32,
    suppressed: u32,
}

impl Limiter {
    /// Whether a line of `class` may be written at `now`.
    pub fn offer(&mut self, class: Class, now: Instant) -> bool {
        let w = self.windows.entry(class).or_insert(Window {
            started: now,
            passed: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.started) >= WINDOW && w.suppressed == 0 {
            // An ended window with nothing left out: a fresh one starts with this line.
            *w = Window {
                started: now,
                passed: 0,
                suppressed: 0,
            };
        }
        if w.passed < budget(class) {
            w.passed += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    /// The summaries of windows that ended by `now` (each window's once); those windows are
    /// forgotten, so the next line of their class starts a new one.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        let mut classes: Vec<Class> = self.windows.keys().copied().collect();
        classes.sort_by_key(|c| *c as u8);
        for class in classes {
            let w = self.windows[&class];
            if now.saturating_duration_since(w.started) >= WINDOW {
                if w.suppressed > 0 {
                    out.push(summary(class, w.suppressed));
                }
                self.windows.remove(&class);
            }
        }
        out
    }

    /// When [`Limiter::due`] next has a summary to give (`None`: nothing left out).
    pub fn next_due(&self) -> Option<Instant> {
        self.windows
            .values()
            .filter(|w| w.suppressed > 0)
            .map(|w| w.started + WINDOW)
            .min()
    }
}

/// One login decision, for `guest-agent status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecord {
    pub user: String,
    pub allowed: bool,
    pub reason: String,
    pub at: SystemTime,
}

/// Login decisions kept for `status`.
pub const LOGINS_KEPT: usize = 20;
/// The runs sshd makes for one connection (a key offered, then signed; several keys) are one
/// login: decisions of one connection within this period are recorded (and printed) once.
const SAME_LOGIN: Duration = Duration::from_secs(60);

/// What the daemon knows now, as events and its parts report it (read by [`crate::status`]).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub started: Option<SystemTime>,
    pub ready: Option<SystemTime>,
    pub metadata_answered: Option<SystemTime>,
    /// Since when the metadata service fails, and how.
    pub outage: Option<(SystemTime, String)>,
    pub oslogin: Option<bool>,
    /// Where `enable-oslogin` came from (`project attribute enable-oslogin = true`).
    pub oslogin_why: String,
    pub directory_synced: Option<SystemTime>,
    pub directory_users: Option<usize>,
    pub managed_users: Option<usize>,
    pub logins: VecDeque<LoginRecord>,
    /// Recent logins by connection (see [`SAME_LOGIN`]), bounded.
    pub recent: HashMap<String, Instant>,
}

impl Facts {
    /// Records a decision; false when it repeats one of the same connection (not recorded).
    pub fn login(&mut self, record: LoginRecord, connection: Option<&str>, now: Instant) -> bool {
        if let Some(c) = connection.filter(|c| !c.is_empty()) {
            if self.recent.len() > 1024 {
                self.recent
                    .retain(|_, at| now.saturating_duration_since(*at) < SAME_LOGIN);
            }
            let key = format!("{c} {} {}", record.user, record.allowed);
            match self.recent.get(&key) {
                Some(at) if now.saturating_duration_since(*at) < SAME_LOGIN => return false,
                _ => {
                    self.recent.insert(key, now);
                }
            }
        }
        if self.logins.len() >= LOGINS_KEPT {
            self.logins.pop_front();
        }
        self.logins.push_back(record);
        true
    }
}

static FACTS: OnceLock<Mutex<Facts>> = OnceLock::new();
static CONSOLE: OnceLock<Console> = OnceLock::new();

fn facts_cell() -> &'static Mutex<Facts> {
    FACTS.get_or_init(|| Mutex::new(Facts::default()))
}

/// A copy of what is known now.
pub fn facts() -> Facts {
    lock(facts_cell()).clone()
}

/// Updates the facts.
pub fn note(f: impl FnOnce(&mut Facts)) {
    f(&mut lock(facts_cell()));
}

/// Opens the console at `path` (`""`: none) for the rest of the process; call once, at start.
pub fn start_console(path: &str) {
    if path.is_empty() {
        return;
    }
    if let Some(c) = Console::open(std::path::Path::new(path)) {
        let _ = CONSOLE.set(c);
    }
}

/// The console, when one is open.
pub fn console() -> Option<&'static Console> {
    CONSOLE.get()
}

/// Reports `event`: a console line (queued; never blocks) and what `status` tells.
pub fn emit(event: Event) {
    let now = SystemTime::now();
    match &event {
        Event::Starting { .. } => note(|f| f.started = Some(now)),
        Event::Ready { .. } => note(|f| f.ready = Some(now)),
        _ => {}
    }
    if let Some(c) = console() {
        c.send(event.class(), event.line());
    }
}

/// A login decision from the daemon (allowed, or refused with `reason`): recorded for
/// `status` and, refused, printed; the runs of one `connection` count once.
pub fn login(user: &str, allowed: bool, reason: &str, connection: Option<&str>) {
    let record = LoginRecord {
        user: safe(user),
        allowed,
        reason: safe(reason),
        at: SystemTime::now(),
    };
    let new = lock(facts_cell()).login(record, connection, Instant::now());
    if new && !allowed {
        emit(Event::LoginRefused {
            user: user.to_owned(),
            reason: reason.to_owned(),
        });
    }
}

/// The metadata service answered.
pub fn metadata_answered() {
    note(|f| {
        f.metadata_answered = Some(SystemTime::now());
        f.outage = None;
    });
}

/// The metadata service failed with `kind`; the first failure of an outage prints a line.
pub fn metadata_failed(kind: &'static str, error: &str) {
    let first = {
        let mut f = lock(facts_cell());
        let first = f.outage.is_none();
        if first {
            f.outage = Some((SystemTime::now(), safe(error)));
        }
        first
    };
    if first {
        emit(Event::MetadataLost { kind });
    }
}

/// OS Login is `on` (`why`: where the attribute came from); prints a line when that changed
/// (and not for "off" at start, which is nothing new).
pub fn oslogin(on: bool, why: String) {
    let before = {
        let mut f = lock(facts_cell());
        f.oslogin_why = why;
        f.oslogin.replace(on)
    };
    if before != Some(on) && (on || before.is_some()) {
        emit(Event::OsLogin { on });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_short_prefixed_and_safe() {
        let refused = Event::LoginRefused {
            user: "bob".into(),
            reason: "login role not granted".into(),
        };
        assert_eq!(
            refused.line(),
            "guest-agent: bob: refused: login role not granted"
        );
        assert_eq!(refused.class(), Class::RefusedLogin);
        assert_eq!(
            Event::MetadataBack {
                outage: Duration::from_millis(12_340)
            }
            .line(),
            "guest-agent: metadata service back after 12.3s"
        );
        assert_eq!(
            Event::OsLogin { on: false }.line(),
            "guest-agent: OS Login off"
        );
        assert_eq!(
            Event::UsersCreated(vec!["alice".into()]).line(),
            "guest-agent: 1 user created: alice"
        );
        let many: Vec<String> = (0..1000).map(|i| format!("user{i}")).collect();
        let line = Event::UsersDeleted(many).line();
        assert!(line.starts_with("guest-agent: 1000 users deleted: user0, user1,"));
        assert!(line.ends_with("user7 and 992 more"), "{line}");
        // A reason from a tool's output cannot forge a second line or move the cursor.
        let evil = Event::SshdRolledBack {
            reason: format!("bad\nguest-agent: alice: allowed\x1b[2J{}", "x".repeat(500)),
        }
        .line();
        assert!(!evil.chars().any(char::is_control), "{evil:?}");
        assert!(evil.len() <= MAX_LINE && evil.ends_with("..."));
        assert!(evil.starts_with("guest-agent: sshd config rejected and rolled back: bad?"));
        assert_eq!(safe(&"é".repeat(150)).len(), MAX_LINE - 1);
    }

    #[test]
    fn a_flood_of_refused_logins_is_summarised_once_a_minute() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        let passed = (0..62)
            .filter(|i| l.offer(Class::RefusedLogin, t0 + Duration::from_millis(*i)))
            .count();
        assert_eq!(passed, 5);
        // Other events have their own budget.
        assert!(l.offer(Class::Other, t0));
        assert!(l.due(t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(l.next_due(), Some(t0 + WINDOW));
        assert_eq!(
            l.due(t0 + WINDOW),
            vec!["guest-agent: 57 more refused logins in the last minute".to_string()]
        );
        assert!(
            l.due(t0 + WINDOW * 2).is_empty(),
            "each window's summary once"
        );
        assert_eq!(l.next_due(), None);
        // A new minute: the budget again.
        let t1 = t0 + WINDOW * 3;
        assert!((0..5).all(|_| l.offer(Class::RefusedLogin, t1)));
        assert!(!l.offer(Class::RefusedLogin, t1));
        assert_eq!(
            l.due(t1 + WINDOW),
            vec!["guest-agent: 1 more refused login in the last minute".to_string()]
        );
    }

    #[test]
    fn a_window_with_nothing_left_out_says_nothing_and_restarts() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        for i in 0..5 {
            assert!(l.offer(Class::RefusedLogin, t0 + Duration::from_secs(i)));
        }
        // 61 s later, without a call to due in between: a fresh window.
        assert!(l.offer(Class::RefusedLogin, t0 + Duration::from_secs(61)));
        assert!(l.due(t0 + Duration::from_secs(62)).is_empty());
    }

    #[test]
    fn the_runs_of_one_connection_are_one_login_and_only_20_are_kept() {
        let t0 = Instant::now();
        let mut f = Facts::default();
        let rec = |user: &str, allowed| LoginRecord {
            user: user.into(),
            allowed,
            reason: String::new(),
            at: SystemTime::UNIX_EPOCH,
        };
        assert!(f.login(rec("bob", false), Some("42:7"), t0));
        assert!(!f.login(rec("bob", false), Some("42:7"), t0 + Duration::from_secs(1)));
        assert!(f.login(rec("bob", false), Some("43:7"), t0));
        assert!(f.login(rec("bob", false), None, t0));
        assert!(f.login(rec("bob", false), None, t0));
        assert!(f.login(
            rec("bob", false),
            Some("42:7"),
            t0 + SAME_LOGIN + Duration::from_secs(1)
        ));
        for i in 0..30 {
            f.login(rec(&format!("u{i}"), true), None, t0);
        }
        assert_eq!(f.logins.len(), LOGINS_KEPT);
        assert_eq!(f.logins.front().map(|r| r.user.as_str()), Some("u10"));
        assert_eq!(f.logins.back().map(|r| r.user.as_str()), Some("u29"));
    }
}
