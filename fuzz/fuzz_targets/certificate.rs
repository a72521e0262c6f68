//! OpenSSH user certificates as sshd hands them to AuthorizedPrincipalsCommand. Each input is
//! tried twice: as the raw certificate blob (base64-encoded here, as sshd's `%k`, and as a
//! whole `TYPE BASE64` line) and, when UTF-8, as the text itself. Never a panic. Invariants:
//! what is read is bounded by the blob (principals, key id), the OS Login id is at most 256
//! printable ASCII bytes, and the CA fingerprint is a SHA256 one.
#![no_main]

use base64::Engine as _;
use guest_agent::oslogin::certificate::{CertInfo, parse};
use libfuzzer_sys::fuzz_target;

fn check(c: &CertInfo, blob_len: usize) {
    // Every principal costs at least its 4-byte length in the blob.
    assert!(c.principals.len() * 4 <= blob_len);
    assert!(c.key_id.len() <= blob_len);
    assert!(c.principals.iter().map(String::len).sum::<usize>() <= blob_len);
    if let Some(f) = &c.fingerprint {
        assert!(!f.is_empty() && f.len() <= 256 && f.bytes().all(|b| b.is_ascii_graphic()));
    }
    assert!(c.ca_fingerprint.starts_with("SHA256:"));
    let _ = c.is_valid_at(c.valid_after);
}

fuzz_target!(|data: &[u8]| {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    if let Ok(c) = parse(&b64) {
        check(&c, data.len());
        let line = format!("ssh-ed25519-cert-v01@openssh.com {b64} comment");
        assert_eq!(parse(&line), Ok(c));
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(c) = parse(text)
    {
        check(&c, data.len());
    }
});
