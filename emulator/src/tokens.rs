//! Service-account access tokens: random strings with a lifetime, renewed when they expire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lifetime of a token nobody rotated (what GCE answers as `expires_in` when fresh).
pub const DEFAULT_LIFETIME_SECS: u64 = 3599;

const MAX_LIFETIME_SECS: u64 = 10 * 365 * 86400;

#[derive(Debug, Clone)]
struct Token {
    value: String,
    lifetime_secs: u64,
    expires: Instant,
}

/// Tokens by account (the account's email when the tree knows it).
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    by_account: HashMap<String, Token>,
}

/// A fresh `emu.<32 random alphanumerics>`.
pub(crate) fn random_token() -> String {
    let mut s = String::from("emu.");
    s.extend((0..32).map(|_| fastrand::alphanumeric()));
    s
}

impl Tokens {
    /// The current token of `account` and its remaining seconds; an expired (or missing)
    /// token is replaced by a new one with the same lifetime (or the default).
    pub fn current(&mut self, account: &str) -> (String, u64) {
        let now = Instant::now();
        let lifetime = match self.by_account.get(account) {
            Some(t) if t.expires > now => {
                return (t.value.clone(), t.expires.duration_since(now).as_secs());
            }
            Some(t) => t.lifetime_secs,
            None => DEFAULT_LIFETIME_SECS,
        };
        let value = self.rotate(account, lifetime);
        (value, lifetime)
    }

    /// The current token without creating or renewing one.
    pub fn peek(&self, account: &str) -> Option<String> {
        self.by_account.get(account).map(|t| t.value.clone())
    }

    /// Replaces the token of `account` with a new one living `lifetime_secs`.
    pub fn rotate(&mut self, account: &str, lifetime_secs: u64) -> String {
        let value = random_token();
        // Capped at ten years so the addition cannot overflow.
        let expires = Instant::now() + Duration::from_secs(lifetime_secs.min(MAX_LIFETIME_SECS));
        self.by_account.insert(
            account.to_owned(),
            Token {
                value: value.clone(),
                lifetime_secs,
                expires,
            },
        );
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_and_rotates() {
        let mut t = Tokens::default();
        let (a, left) = t.current("sa");
        assert!(a.starts_with("emu.") && a.len() == 36);
        assert!((DEFAULT_LIFETIME_SECS - 1..=DEFAULT_LIFETIME_SECS).contains(&left));
        assert_eq!(t.current("sa").0, a);
        let b = t.rotate("sa", 0);
        assert_ne!(a, b);
        assert_eq!(t.peek("sa"), Some(b.clone()));
        // Expired: a new one with the same (zero) lifetime.
        let (c, left) = t.current("sa");
        assert_ne!(b, c);
        assert_eq!(left, 0);
        assert_eq!(t.peek("other"), None);
    }
}
