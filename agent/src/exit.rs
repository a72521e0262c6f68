//! A command's exit status, as a number the binary's own `main` can hand to
//! [`std::process::exit`]. The binary has no Rust `main` (see `src/main.rs`: std's start-up is
//! skipped to make every sshd helper run cheaper), and std's `ExitCode` gives no way to read
//! its number back on stable Rust.

/// Exit status of a command: 0 success, anything else a failure (see each command's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode(u8);

impl ExitCode {
    pub const SUCCESS: Self = Self(0);
    pub const FAILURE: Self = Self(1);

    /// The number the process exits with.
    pub fn code(self) -> u8 {
        self.0
    }
}

impl From<u8> for ExitCode {
    fn from(code: u8) -> Self {
        Self(code)
    }
}
