//! Time-based one-time passwords (RFC 6238) as authenticator apps make them: HMAC-SHA1 (the
//! RustCrypto `hmac` and `sha1` crates), 30-second steps from the Unix epoch, 6 digits, and the
//! shared secret written in base32.
//!
//! Base32 (RFC 4648, the `A-Z2-7` alphabet) is decoded here by hand rather than with a crate:
//! it is twenty lines, and authenticator secrets need leniencies a strict decoder refuses
//! (lower case, optional `=` padding, spaces between groups).

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Length of a time step, in seconds.
pub const STEP_SECS: u64 = 30;
/// Digits in a code.
pub const DIGITS: usize = 6;
/// Steps either side of the current one whose codes are still accepted (clock drift).
pub const WINDOW: u64 = 1;

/// Why a base32 secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Base32Error {
    #[error("the secret is empty")]
    Empty,
    #[error("{ch:?} (at {pos}) is not a base32 character (A-Z, 2-7)")]
    BadChar { ch: char, pos: usize },
    #[error("padding '=' may only end the secret")]
    BadPadding,
    #[error("{0} base32 characters cannot encode whole bytes")]
    BadLength(usize),
}

/// Decodes RFC 4648 base32: case-insensitive, spaces ignored, `=` padding optional (but only
/// at the end). Bits left over after the last whole byte are ignored.
pub fn decode_base32(s: &str) -> Result<Vec<u8>, Base32Error> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits, mut chars, mut padded) = (0u32, 0u32, 0usize, false);
    for (pos, ch) in s.chars().enumerate() {
        let value = match ch.to_ascii_uppercase() {
            ' ' => continue,
            '=' => {
                padded = true;
                continue;
            }
            c @ 'A'..='Z' => u32::from(c) - u32::from('A'),
            c @ '2'..='7' => u32::from(c) - u32::from('2') + 26,
            _ => return Err(Base32Error::BadChar { ch, pos }),
        };
        if padded {
            return Err(Base32Error::BadPadding);
        }
        acc = (acc << 5 | value) & 0xffff;
        bits += 5;
        chars += 1;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    if chars == 0 {
        return Err(Base32Error::Empty);
    }
    // 1, 3 or 6 characters in the last group of 8 leave a partial byte of 5 bits or more.
    if matches!(chars % 8, 1 | 3 | 6) {
        return Err(Base32Error::BadLength(chars));
    }
    Ok(out)
}

/// The time step `unix_time` falls in.
pub fn step_of(unix_time: u64) -> u64 {
    unix_time / STEP_SECS
}

/// The code for time step `step` with the raw key `key` (RFC 4226 dynamic truncation).
pub fn code_at_step(key: &[u8], step: u64) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(&step.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash[hash.len() - 1] & 0x0f);
    let binary = u32::from_be_bytes([
        hash[offset] & 0x7f,
        hash[offset + 1],
        hash[offset + 2],
        hash[offset + 3],
    ]);
    format!(
        "{:0width$}",
        binary % 10u32.pow(DIGITS as u32),
        width = DIGITS
    )
}

/// The 6-digit code an authenticator app shows at `unix_time` for `secret_base32`.
pub fn totp_code(secret_base32: &str, unix_time: u64) -> Result<String, Base32Error> {
    let key = decode_base32(secret_base32)?;
    Ok(code_at_step(&key, step_of(unix_time)))
}

/// The step whose code `credential` is, if it is one within [`WINDOW`] steps of `unix_time`
/// (surrounding whitespace ignored). The current step is tried first.
pub fn matching_step(key: &[u8], credential: &str, unix_time: u64) -> Option<u64> {
    let credential = credential.trim();
    if credential.len() != DIGITS || !credential.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_of(unix_time);
    let mut steps = vec![now];
    for d in 1..=WINDOW {
        steps.extend(now.checked_sub(d));
        steps.extend(now.checked_add(d));
    }
    steps
        .into_iter()
        .find(|&s| code_at_step(key, s) == credential)
}

#[cfg(test)]
#[path = "totp_tests.rs"]
mod tests;
