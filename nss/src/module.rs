//! The module's logic, free of fixed paths so tests can run it against a temporary cache file
//! and socket: cache first (a lock, a clock read, a hash-table probe), then the delta file,
//! the daemon's socket on a miss of both, enumeration from the cache only.
//!
//! The delta (`cache::delta_path`) holds the users the daemon learned on a miss since its last
//! full build of the cache file (the daemon rebuilds the whole file only at a sync). It is
//! read like the cache file (same recheck interval, same root-owner rule, same version check:
//! a delta of another format is ignored and the daemon asked), after it: the main file wins
//! where both answer. Enumeration stays on the main file: a user learned on a miss is listed
//! from the next sync on. The delta has no file of an older format beside it: a module of an
//! older release ignores the delta and asks the daemon on a miss, which is what it did before
//! the delta existed, so nothing changes for it.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::sync::{Mutex, MutexGuard};

use guest_agent_wire::cache::{CACHE_PATH, Cache, Passwd};
use guest_agent_wire::proto::{Request, SOCKET_PATH};
use guest_agent_wire::records::{GroupRecord, PasswdRecord, is_valid_name_bytes, parse_id};
use libc::{gid_t, group, passwd};

use crate::client::{self, Reply};
use crate::fill::{self, Arena, Erange, GidList, Push, PwData};
use crate::mapping::{Mapping, Source};

/// Ids below this are refused from the socket when there is no cache to say otherwise.
pub const DEFAULT_FLOOR: u32 = 1000;
/// The environment variable that keeps the module off the socket (the daemon sets it).
pub const NO_SOCKET_VAR: &CStr = c"GUEST_AGENT_NSS_NO_SOCKET";

unsafe extern "C" {
    /// glibc's getenv that returns null in a process running with AT_SECURE (setuid, setgid,
    /// file capabilities); the libc crate does not declare it for Linux.
    fn secure_getenv(name: *const libc::c_char) -> *mut libc::c_char;
}

/// What an NSS function reports (the exported layer turns it into a status and errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    NotFound,
    Unavail,
    /// Buffer too small: TRYAGAIN with ERANGE.
    Erange,
    /// Out of memory: TRYAGAIN with ENOMEM.
    NoMem,
}

impl From<Result<(), Erange>> for Status {
    fn from(r: Result<(), Erange>) -> Status {
        match r {
            Ok(()) => Status::Success,
            Err(Erange) => Status::Erange,
        }
    }
}

struct State {
    map: Mapping,
    /// The delta file (see the module doc).
    delta: Mapping,
    pw_pos: usize,
    gr_pos: usize,
    learned: Learned,
}

/// How long this process remembers that the daemon served a user (see [`Learned`]).
const LEARNED_MS: u64 = 60_000;
/// How many such users it remembers (the oldest is forgotten first).
const LEARNED_MAX: usize = 8;

/// The users this process learned from the daemon's socket (names the cache did not hold yet),
/// with when: every user the daemon serves is a member of the OS Login users group, and sshd's
/// `Match Group` for that group (`AuthorizedKeysFile none`: the user's own key files are not
/// read) must not fail open when the daemon answers the `getpwnam` of a new user and then
/// misses the deadline of the `initgroups` that follows it in the same process (issue 13, item
/// 17). For such a user, an unanswered initgroups still gives the users group's gid, read from
/// the cache's header. Bounded: [`LEARNED_MAX`] names, each for [`LEARNED_MS`].
#[derive(Default)]
struct Learned(Vec<(String, u64)>);

impl Learned {
    fn note(&mut self, name: &str, now_ms: u64) {
        self.0.retain(|(n, _)| n != name);
        if self.0.len() >= LEARNED_MAX {
            self.0.remove(0);
        }
        self.0.push((name.to_owned(), now_ms));
    }

    fn knows(&self, name: &str, now_ms: u64) -> bool {
        self.0
            .iter()
            .any(|(n, at)| n == name && now_ms.saturating_sub(*at) < LEARNED_MS)
    }
}

/// One configuration of the module: the exported functions use [`Module::system`].
pub struct Module {
    cache_path: CString,
    /// The file of this module's cache format beside it (read when `cache_path` does not open).
    compat_path: CString,
    /// The delta file beside it (users learned since the last full build).
    delta_path: CString,
    socket_path: CString,
    no_socket_var: CString,
    recheck_ms: u64,
    require_root_owner: bool,
    state: Mutex<State>,
}

/// A lookup key.
#[derive(Clone, Copy)]
enum Key<'a> {
    Name(&'a str),
    Id(u32),
}

/// Test builds only (`--features planted-panic`; the shipped module has no such code, and the
/// packages test checks that its file does not hold the name): looking the user or group
/// `planted-panic` up panics here, with the state lock held, so a test sees what a real bug
/// would do to the caller: the export answers UNAVAIL, the process lives on, and the next
/// lookup in it works (the poisoned lock is taken over).
#[cfg(feature = "planted-panic")]
#[allow(clippy::panic)]
fn planted_panic(key: Key<'_>) {
    if matches!(key, Key::Name("planted-panic")) {
        panic!("planted panic (a test build of the module)");
    }
}

fn pw_data<'a>(p: &Passwd<'a>) -> PwData<'a> {
    PwData {
        name: p.name,
        uid: p.uid,
        gid: p.gid,
        gecos: p.gecos,
        home: p.home,
        shell: p.shell,
    }
}

fn user_in<'a>(c: &Cache<'a>, key: Key<'_>) -> Option<Passwd<'a>> {
    match key {
        Key::Name(n) => c.user_by_name(n.as_bytes()),
        Key::Id(u) => c.user_by_uid(u),
    }
}

fn group_in<'a>(c: &Cache<'a>, key: Key<'_>) -> Option<guest_agent_wire::cache::Group<'a>> {
    match key {
        Key::Name(n) => c.group_by_name(n.as_bytes()),
        Key::Id(g) => c.group_by_gid(g),
    }
}

/// A name as asked: valid per the name rule, else the lookup is NOTFOUND at once.
fn valid_name(name: &[u8]) -> Option<&str> {
    if !is_valid_name_bytes(name) {
        return None;
    }
    std::str::from_utf8(name).ok()
}

impl Module {
    /// The installed module: the daemon's cache file and socket.
    pub fn system() -> Module {
        Module::new(CACHE_PATH, SOCKET_PATH, NO_SOCKET_VAR, 1000, true)
    }

    /// A module reading `cache_path`, asking `socket_path`, kept off the socket by the
    /// environment variable `no_socket_var`, looking at the file again every `recheck_ms`.
    pub fn new(
        cache_path: &str,
        socket_path: &str,
        no_socket_var: &CStr,
        recheck_ms: u64,
        require_root_owner: bool,
    ) -> Module {
        let c = |s: &str| CString::new(s).unwrap_or_default();
        Module {
            cache_path: c(cache_path),
            compat_path: c(&guest_agent_wire::cache::compat_path(
                cache_path,
                guest_agent_wire::cache::VERSION,
            )),
            delta_path: c(&guest_agent_wire::cache::delta_path(cache_path)),
            socket_path: c(socket_path),
            no_socket_var: no_socket_var.to_owned(),
            recheck_ms,
            require_root_owner,
            state: Mutex::new(State {
                map: Mapping::new(),
                delta: Mapping::new(),
                pw_pos: 0,
                gr_pos: 0,
                learned: Learned::default(),
            }),
        }
    }

    /// The state, refreshed (the file looked at again when due).
    fn state(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.map.refresh(&Source {
            path: &self.cache_path,
            compat_path: Some(&self.compat_path),
            recheck_ms: self.recheck_ms,
            require_root_owner: self.require_root_owner,
        });
        st.delta.refresh(&Source {
            path: &self.delta_path,
            compat_path: None,
            recheck_ms: self.recheck_ms,
            require_root_owner: self.require_root_owner,
        });
        st
    }

    /// The daemon sets the variable for itself. Read with `secure_getenv`: in a setuid or
    /// otherwise privileged program (AT_SECURE) the caller's environment is not trusted, so a
    /// user cannot turn the socket off for `sudo`, `su` or `passwd` (glibc 2.17 and later).
    fn socket_disabled(&self) -> bool {
        // SAFETY: a NUL-terminated name; the result is only compared with null.
        unsafe { !secure_getenv(self.no_socket_var.as_ptr()).is_null() }
    }

    /// Runs `f` on the lines of the daemon's answer to `request` (or of this thread's
    /// remembered answer, when glibc retries after ERANGE).
    fn ask(&self, request: &Request, f: impl FnOnce(&[String]) -> Status) -> Status {
        let key = request.encode();
        let (lines, fresh) = match client::recall(&key) {
            Some(lines) => (lines, false),
            None => match client::ask(&self.socket_path, request, client::DEADLINE) {
                Reply::Lines(lines) => (lines, true),
                Reply::NotFound => return Status::NotFound,
                Reply::Unavail | Reply::OlderDaemon(_) => return Status::Unavail,
            },
        };
        let status = f(&lines);
        if status == Status::Erange {
            if fresh {
                client::remember(&key, lines);
            }
        } else {
            client::forget();
        }
        status
    }

    /// The floor for socket answers, or the status of a miss that does not go to the socket:
    /// an id below the floor (never served, so not worth a question) or the env guard.
    fn miss(&self, floor: Option<u32>, key: Key<'_>) -> Result<u32, Status> {
        if let Key::Id(id) = key
            && id < floor.unwrap_or(DEFAULT_FLOOR)
        {
            return Err(Status::NotFound);
        }
        if self.socket_disabled() {
            // Cache only: a cache that opens and does not serve the name is a definite answer.
            return Err(if floor.is_some() {
                Status::NotFound
            } else {
                Status::Unavail
            });
        }
        Ok(floor.unwrap_or(DEFAULT_FLOOR).max(1))
    }

    fn getpw(&self, key: Key<'_>, out: &mut MaybeUninit<passwd>, arena: &mut Arena) -> Status {
        let floor = {
            let st = self.state();
            #[cfg(feature = "planted-panic")]
            planted_panic(key);
            let (cache, delta) = (st.map.cache(), st.delta.cache());
            let hit = cache
                .and_then(|c| user_in(c, key))
                .or_else(|| delta.and_then(|c| user_in(c, key)));
            if let Some(p) = hit {
                return fill::passwd(&pw_data(&p), out, arena).into();
            }
            cache.or(delta).map(Cache::min_id)
        };
        let floor = match self.miss(floor, key) {
            Ok(f) => f,
            Err(s) => return s,
        };
        let request = match key {
            Key::Name(n) => Request::UserByName(n.to_owned()),
            Key::Id(u) => Request::UserByUid(u),
        };
        let mut served = None;
        let status = self.ask(&request, |lines| match lines {
            [] => Status::NotFound,
            [line] => match PasswdRecord::parse(line) {
                Ok(r) => {
                    let asked = match key {
                        Key::Name(n) => r.name == n,
                        Key::Id(u) => r.uid == u,
                    };
                    if !asked || r.uid < floor || r.gid < floor {
                        return Status::NotFound;
                    }
                    served = Some(r.name.to_owned());
                    let d = PwData {
                        name: r.name.as_bytes(),
                        uid: r.uid,
                        gid: r.gid,
                        gecos: r.gecos.as_bytes(),
                        home: r.home.as_bytes(),
                        shell: r.shell.as_bytes(),
                    };
                    fill::passwd(&d, out, arena).into()
                }
                Err(_) => Status::Unavail,
            },
            _ => Status::Unavail,
        });
        if let Some(name) = served {
            self.state()
                .learned
                .note(&name, crate::mapping::coarse_ms());
        }
        status
    }

    fn getgr(&self, key: Key<'_>, out: &mut MaybeUninit<group>, arena: &mut Arena) -> Status {
        let floor = {
            let st = self.state();
            #[cfg(feature = "planted-panic")]
            planted_panic(key);
            let (cache, delta) = (st.map.cache(), st.delta.cache());
            let hit = cache
                .and_then(|c| group_in(c, key))
                .or_else(|| delta.and_then(|c| group_in(c, key)));
            if let Some(g) = hit {
                return fill::group(g.name, g.gid, g.members(), g.member_count(), out, arena)
                    .into();
            }
            cache.or(delta).map(Cache::min_id)
        };
        let floor = match self.miss(floor, key) {
            Ok(f) => f,
            Err(s) => return s,
        };
        let request = match key {
            Key::Name(n) => Request::GroupByName(n.to_owned()),
            Key::Id(g) => Request::GroupByGid(g),
        };
        self.ask(&request, |lines| match lines {
            [] => Status::NotFound,
            [line] => match GroupRecord::parse(line) {
                Ok(r) => {
                    let asked = match key {
                        Key::Name(n) => r.name == n,
                        Key::Id(g) => r.gid == g,
                    };
                    if !asked || r.gid < floor {
                        return Status::NotFound;
                    }
                    let members = r.members().map(str::as_bytes);
                    fill::group(
                        r.name.as_bytes(),
                        r.gid,
                        members,
                        r.member_count(),
                        out,
                        arena,
                    )
                    .into()
                }
                Err(_) => Status::Unavail,
            },
            _ => Status::Unavail,
        })
    }

    pub fn getpwnam(
        &self,
        name: &[u8],
        out: &mut MaybeUninit<passwd>,
        arena: &mut Arena,
    ) -> Status {
        match valid_name(name) {
            Some(n) => self.getpw(Key::Name(n), out, arena),
            None => Status::NotFound,
        }
    }

    pub fn getpwuid(&self, uid: u32, out: &mut MaybeUninit<passwd>, arena: &mut Arena) -> Status {
        self.getpw(Key::Id(uid), out, arena)
    }

    pub fn getgrnam(&self, name: &[u8], out: &mut MaybeUninit<group>, arena: &mut Arena) -> Status {
        match valid_name(name) {
            Some(n) => self.getgr(Key::Name(n), out, arena),
            None => Status::NotFound,
        }
    }

    pub fn getgrgid(&self, gid: u32, out: &mut MaybeUninit<group>, arena: &mut Arena) -> Status {
        self.getgr(Key::Id(gid), out, arena)
    }

    pub fn setpwent(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).pw_pos = 0;
    }

    pub fn setgrent(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).gr_pos = 0;
    }

    /// The next user of the enumeration (cache only; entries a corrupt file cannot serve are
    /// skipped); the position only moves on success, so glibc's retry after ERANGE gets the
    /// same entry.
    pub fn getpwent(&self, out: &mut MaybeUninit<passwd>, arena: &mut Arena) -> Status {
        let mut st = self.state();
        let found = st.map.cache().and_then(|c| {
            (st.pw_pos..c.user_count()).find_map(|pos| c.user_at(pos).map(|p| (pos, p)))
        });
        let Some((pos, p)) = found else {
            return Status::NotFound;
        };
        let status: Status = fill::passwd(&pw_data(&p), out, arena).into();
        if status == Status::Success {
            st.pw_pos = pos + 1;
        }
        status
    }

    /// The next group of the enumeration (cache only, as users).
    pub fn getgrent(&self, out: &mut MaybeUninit<group>, arena: &mut Arena) -> Status {
        let mut st = self.state();
        let found = st.map.cache().and_then(|c| {
            (st.gr_pos..c.group_count()).find_map(|pos| c.group_at(pos).map(|g| (pos, g)))
        });
        let Some((pos, g)) = found else {
            return Status::NotFound;
        };
        let status: Status =
            fill::group(g.name, g.gid, g.members(), g.member_count(), out, arena).into();
        if status == Status::Success {
            st.gr_pos = pos + 1;
        }
        status
    }

    /// Appends the supplementary gids of `user` (except `skip`) to `list`.
    pub fn initgroups(&self, user: &[u8], skip: gid_t, list: &mut GidList) -> Status {
        let Some(name) = valid_name(user) else {
            return Status::NotFound;
        };
        let push_all = |list: &mut GidList, gids: &mut dyn Iterator<Item = u32>| {
            for gid in gids.filter(|&g| g != skip) {
                match list.push(gid) {
                    Push::Done => {}
                    Push::Full => break,
                    Push::NoMem => return Status::NoMem,
                }
            }
            Status::Success
        };
        let floor = {
            let st = self.state();
            let (cache, delta) = (st.map.cache(), st.delta.cache());
            let key = Key::Name(name);
            let hit = cache
                .and_then(|c| user_in(c, key))
                .or_else(|| delta.and_then(|c| user_in(c, key)));
            if let Some(p) = hit {
                return push_all(list, &mut p.groups());
            }
            cache.or(delta).map(Cache::min_id)
        };
        let floor = match self.miss(floor, Key::Name(name)) {
            Ok(f) => f,
            Err(s) => return s,
        };
        let request = Request::GroupsOfUser(name.to_owned());
        let status = self.ask(&request, |lines| {
            let mut gids = Vec::with_capacity(lines.len());
            for line in lines {
                match parse_id(line) {
                    Some(g) if g >= floor => gids.push(g),
                    Some(_) => {}
                    None => return Status::Unavail,
                }
            }
            push_all(list, &mut gids.into_iter())
        });
        if status != Status::Unavail {
            return status;
        }
        // The daemon served this user to this process and cannot say its groups now: at least
        // the users group, so the sshd rule that depends on it holds (see [`Learned`]).
        let users_gid = {
            let st = self.state();
            let gid = (st.map.cache().and_then(Cache::users_gid))
                .or_else(|| st.delta.cache().and_then(Cache::users_gid));
            gid.filter(|_| st.learned.knows(name, crate::mapping::coarse_ms()))
        };
        match users_gid {
            Some(gid) => push_all(list, &mut std::iter::once(gid)),
            None => Status::Unavail,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests;
