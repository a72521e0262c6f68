//! The daemon's local socket: the NSS module, the helpers sshd runs and `guest-agent token`
//! ask here (protocol: `guest_agent_wire::proto`).
//!
//! Anyone may look users and groups up (what `getent` shows anyway). Login questions
//! (authorized keys, principals) are answered only to root and to the configured
//! AuthorizedKeysCommandUser, checked with SO_PEERCRED. Every connection is bounded: one
//! request line of at most `MAX_REQUEST` bytes, read within 5 s, at most 256 connections at
//! once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use guest_agent_wire::proto::{Answer, MAX_REQUEST, Request};

use crate::oslogin::directory::Miss;
use crate::oslogin::service::OsLogin;

const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 256;

/// What answers requests.
pub struct Handler {
    pub oslogin: Arc<OsLogin>,
    pub tokens: Arc<crate::tokens::TokenKeeper>,
}

/// Whether process `pid` has group `gid` (primary or supplementary), from /proc.
fn process_in_group(pid: i32, gid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status.lines().any(|l| {
        let ids = |prefix: &str| {
            l.strip_prefix(prefix)
                .map(|rest| rest.split_whitespace().any(|g| g.parse() == Ok(gid)))
        };
        ids("Gid:").or_else(|| ids("Groups:")).unwrap_or(false)
    })
}

/// Who is asking (from SO_PEERCRED).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

impl Handler {
    fn may_ask_logins(&self, peer: Peer) -> bool {
        if peer.uid == 0 {
            return true;
        }
        let user = self.oslogin.config().oslogin.command_user.clone();
        matches!(nix::unistd::User::from_name(&user), Ok(Some(u)) if u.uid.as_raw() == peer.uid)
    }

    /// A token for root and members of `tokens.group` only.
    fn token(&self, account: &str, format: &str, peer: Peer) -> Answer {
        let cfg = self.oslogin.config();
        let t = &cfg.tokens;
        let allowed = peer.uid == 0 || {
            let groups = crate::host::passwd::parse_group(&crate::host::passwd::read(
                std::path::Path::new("/etc/group"),
            ));
            let gid = groups.iter().find(|g| g.name == t.group).map(|g| g.gid);
            matches!((gid, peer.pid), (Some(gid), Some(pid)) if process_in_group(pid, gid))
        };
        if !allowed {
            tracing::warn!(uid = peer.uid, pid = peer.pid, %account, "refused a token to a process outside the token group");
            return Answer::Denied(format!(
                "tokens are for root and members of the group {}",
                t.group
            ));
        }
        if !t.enabled || !t.accounts.iter().any(|a| a == account) {
            return Answer::NotFound;
        }
        match self.tokens.get(account) {
            Some(token) => match token.format(format) {
                Some(line) => Answer::Ok(vec![line]),
                None => Answer::Error("format must be raw, json or header".into()),
            },
            None => Answer::Unavailable(
                "no valid token yet (the metadata service has not given one)".into(),
            ),
        }
    }

    pub async fn answer(&self, request: Request, peer: Peer) -> Answer {
        match request {
            Request::UserByName(n) => self.oslogin.user_by_name(&n).await,
            Request::UserByUid(u) => self.oslogin.user_by_uid(u).await,
            Request::GroupByName(n) => self.oslogin.group(Miss::GroupName(n)).await,
            Request::GroupByGid(g) => self.oslogin.group(Miss::Gid(g)).await,
            Request::GroupsOfUser(n) => self.oslogin.groups_of(&n).await,
            Request::AuthorizedKeys { .. } | Request::AuthorizedPrincipals { .. } => {
                if !self.may_ask_logins(peer) {
                    tracing::warn!(
                        uid = peer.uid,
                        pid = peer.pid,
                        "refused a login question from an unprivileged process"
                    );
                    return Answer::Denied(
                        "only root and the AuthorizedKeysCommandUser may ask".into(),
                    );
                }
                let connection = peer.pid.and_then(ssh_connection);
                let connection = connection.as_deref();
                match request {
                    Request::AuthorizedKeys { user, fingerprint } => {
                        self.oslogin
                            .authorized_keys(&user, fingerprint.as_deref(), connection)
                            .await
                    }
                    Request::AuthorizedPrincipals { user, cert } => {
                        self.oslogin
                            .authorized_principals(&user, &cert, connection)
                            .await
                    }
                    _ => Answer::Error("unexpected request".into()),
                }
            }
            Request::Token { account, format } => self.token(&account, &format, peer),
        }
    }
}

/// Identifies the SSH connection a helper runs for: sshd runs AuthorizedKeysCommand from the
/// connection's own privileged process, once for the key query and once for the signature,
/// so the helper's parent (its pid and start time, against pid reuse) names the login. Read
/// by the daemon from /proc, not taken from the helper.
fn ssh_connection(helper_pid: i32) -> Option<String> {
    // /proc/PID/stat: "pid (comm) state ppid ... starttime(22nd field) ..."; comm may hold
    // blanks and parentheses, so fields are counted after the last ')'.
    fn fields(pid: i32) -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        Some(rest.split_whitespace().map(str::to_owned).collect())
    }
    let ppid: i32 = fields(helper_pid)?.get(1)?.parse().ok()?;
    let start = fields(ppid)?.get(19)?.clone();
    Some(format!("{ppid}:{start}"))
}

/// Binds the socket (0666 in a 0755 root-owned directory; a stale socket is replaced).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; remove it", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Serves until the task is dropped.
pub async fn serve(listener: UnixListener, handler: Arc<Handler>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream); // overloaded: the client sees a closed connection and moves on
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, &handler).await {
                tracing::debug!(error = %e, "socket connection ended badly");
            }
        });
    }
}

async fn connection(stream: UnixStream, handler: &Handler) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer {
        uid: cred.uid(),
        pid: cred.pid(),
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()), // slow client: dropped
    }
    let answer = match line.strip_suffix('\n').map(Request::parse) {
        Some(Ok(request)) => handler.answer(request, peer).await,
        Some(Err(e)) => Answer::Error(e.to_string()),
        None => Answer::Error("request too long or not terminated".into()),
    };
    tracing::debug!(uid = peer.uid, request = line.trim_end(), answer = ?answer, "socket request");
    write.write_all(answer.encode().as_bytes()).await?;
    write.shutdown().await
}
