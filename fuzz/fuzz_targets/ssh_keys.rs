//! The metadata `ssh-keys` attribute: any text gives keys and refusals, never a panic.
//! Invariants: at most one result per line; an accepted key's authorized_keys line is one
//! line without control characters, no longer than its source line, names a valid user, and
//! parses again (as `USER:LINE`) to the very same key; a refusal's log line is one line.
#![no_main]

use guest_agent::accounts::keys::{Source, key_identity, parse_ssh_keys, split_entry};
use guest_agent_wire::names::is_valid_name;
use libfuzzer_sys::fuzz_target;

/// 2026-01-01T00:00:00Z, as in the unit tests.
const NOW: i64 = 1_767_225_600;

fuzz_target!(|data: &[u8]| {
    // The attribute arrives as a JSON string: always UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first byte picks allow_root, so both settings get exercised.
    let allow_root = data.first().is_some_and(|b| b & 1 == 1);
    let (keys, rejected) = parse_ssh_keys(text, Source::Instance, NOW, allow_root);
    let lines = text.split('\n').count();
    assert!(keys.len() + rejected.len() <= lines);

    for r in &rejected {
        assert!(r.line >= 1 && r.line <= lines);
        let shown = r.to_string();
        assert!(!shown.contains(['\n', '\r', '\0']), "{shown:?}");
    }
    for k in &keys {
        assert!(is_valid_name(&k.user));
        assert!(allow_root || k.user != "root");
        assert!(!k.line.chars().any(|c| c.is_control() && c != '\t'));
        assert!(k.line.len() <= text.len());
        assert!(k.fingerprint.starts_with("SHA256:"));
        assert!(k.expires_unix.is_none_or(|at| at > NOW));
        assert!(key_identity(&k.line).is_some(), "{:?}", k.line);
        let e = split_entry(&k.line).expect("an accepted line splits");
        assert!(k.line.contains(e.base64));
        // Round trip: the rebuilt line is accepted again, unchanged.
        let again = format!("{}:{}", k.user, k.line);
        let (keys2, rejected2) = parse_ssh_keys(&again, Source::Instance, NOW, allow_root);
        assert!(rejected2.is_empty(), "{again:?}: {rejected2:?}");
        assert_eq!(keys2.as_slice(), std::slice::from_ref(k));
    }
});
