//! Name rules shared by every part of the agent.

/// The longest user or group name the agent accepts, in bytes (POSIX portable, and what
/// `useradd` on Debian accepts by default).
pub const MAX_NAME_LEN: usize = 32;

/// Whether `name` is a user or group name the agent will create, serve or accept from metadata:
/// `^[a-z_][a-z0-9_.-]{0,31}$`.
///
/// Upper case, a leading digit, dash or dot, and anything outside ASCII are refused: they either
/// break shell tools (`useradd` refuses a leading dash), collide with numeric ids, or let a name
/// look like another one.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    if bytes.len() > MAX_NAME_LEN || !(first.is_ascii_lowercase() || first == b'_') {
        return false;
    }
    rest.iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_portable_names() {
        for name in ["alice", "_svc", "a", "bob.smith", "x-1_2", &"a".repeat(32)] {
            assert!(is_valid_name(name), "{name} should be valid");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for name in [
            "",
            "Alice",
            "1abc",
            "-rf",
            ".hidden",
            "../x",
            "a b",
            "a:b",
            "ä",
            "a\n",
            &"a".repeat(33),
        ] {
            assert!(!is_valid_name(name), "{name:?} should be refused");
        }
    }
}
