//! What std's start-up did that the agent's programs need, for the two that skip it (`no_main`:
//! `guest-agent` and `guest-agent-sshd`, see `agent/src/main.rs` for why).

/// SIGPIPE ignored (a write to a closed socket or pipe is an `EPIPE` error, not the end of
/// the process), and descriptors 0, 1 and 2 open (on /dev/null when closed, so that a file
/// the process opens never becomes its stdout). Call first, before any other thread exists.
pub fn start_up() {
    // SAFETY: setting a signal's disposition to SIG_IGN before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    for fd in 0..=2 {
        // SAFETY: F_GETFD on a descriptor number only reads its flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a constant NUL-terminated path; the descriptor stays open for the
            // process's life (it is the lowest free one, `fd`).
            let opened = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if opened != fd {
                // SAFETY: abort() is always safe to call.
                unsafe { libc::abort() };
            }
        }
    }
}
