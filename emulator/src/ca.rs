//! The emulator's SSH certificate authority: an ed25519 key made at start and on rotation,
//! which signs OpenSSH user certificates shaped like the ones OS Login issues.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rand_core::{OsRng, RngCore};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::private::Ed25519Keypair;
use ssh_key::{PrivateKey, PublicKey};

/// Comment on the CA public key line.
pub const CA_COMMENT: &str = "emulator-ca";
/// Certificate extension carrying the id that `authorize?fingerprint=` accepts.
pub const FINGERPRINT_EXTENSION: &str = "fingerprint@google.com";
/// OpenSSH's default user-certificate extensions.
const DEFAULT_EXTENSIONS: [&str; 5] = [
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
];

/// Why a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot parse public key {0:?}: {1}")]
    BadKey(String, ssh_key::Error),
    #[error("bad validity window: {0}")]
    BadValidity(String),
    #[error("signing failed: {0}")]
    Sign(ssh_key::Error),
}

/// What goes into a certificate.
pub(crate) struct CertFields<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub public_key: &'a str,
    pub validity_secs: u64,
    pub valid_after_offset_secs: i64,
    /// Value of the `fingerprint@google.com=<id>` extension.
    pub fingerprint_id: &'a str,
}

pub(crate) struct Ca {
    key: PrivateKey,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ca({})", self.public_line())
    }
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if OsRng.try_fill_bytes(&mut out).is_err() {
        // getrandom failing is next to impossible on Linux; an emulator may fall back.
        fastrand::fill(&mut out);
    }
    out
}

/// A random UUID-looking id (version 4 layout), like Google's certificate ids.
pub(crate) fn random_id() -> String {
    let mut b: [u8; 16] = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl Ca {
    pub fn new() -> Self {
        let seed: [u8; 32] = random_bytes();
        Ca {
            key: PrivateKey::from(Ed25519Keypair::from_seed(&seed)),
        }
    }

    /// `ssh-ed25519 AAAA... emulator-ca`
    pub fn public_line(&self) -> String {
        let mut public = self.key.public_key().clone();
        public.set_comment(CA_COMMENT);
        // Encoding an ed25519 public key cannot fail; stay total anyway.
        public.to_openssh().unwrap_or_default()
    }

    /// Signs a user certificate; returns its OpenSSH line.
    pub fn sign(&self, f: &CertFields<'_>) -> Result<String, CaError> {
        let subject = PublicKey::from_openssh(f.public_key.trim())
            .map_err(|e| CaError::BadKey(f.public_key.to_owned(), e))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let after = i64::try_from(now)
            .ok()
            .and_then(|n| n.checked_add(f.valid_after_offset_secs))
            .and_then(|a| u64::try_from(a).ok())
            .ok_or_else(|| CaError::BadValidity("valid_after before the epoch".into()))?;
        let before = after
            .checked_add(f.validity_secs)
            .ok_or_else(|| CaError::BadValidity("validity_secs too large".into()))?;
        let nonce: [u8; 16] = random_bytes();
        let serial = u64::from_le_bytes(random_bytes());
        let mut b = Builder::new(nonce.to_vec(), subject.key_data().clone(), after, before)
            .map_err(|e| CaError::BadValidity(e.to_string()))?;
        b.serial(serial)
            .and_then(|b| b.cert_type(CertType::User))
            .and_then(|b| b.key_id(f.email))
            .and_then(|b| b.valid_principal(f.username))
            .and_then(|b| b.comment(f.email))
            .map_err(CaError::Sign)?;
        let mut exts: BTreeMap<String, ()> = DEFAULT_EXTENSIONS
            .iter()
            .map(|e| ((*e).to_owned(), ()))
            .collect();
        // Google puts the id in the extension *name*, with empty data.
        exts.insert(format!("{FINGERPRINT_EXTENSION}={}", f.fingerprint_id), ());
        for name in exts.into_keys() {
            b.extension(name, "").map_err(CaError::Sign)?;
        }
        let cert = b.sign(&self.key).map_err(CaError::Sign)?;
        cert.to_openssh().map_err(CaError::Sign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const SUBJECT: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF4L0VOIKPsgyixLsvaOb9bSCVR+jOtGhOaKMA+dHIHw test";

    fn fields<'a>(offset: i64, id: &'a str) -> CertFields<'a> {
        CertFields {
            username: "alice",
            email: "alice@example.com",
            public_key: SUBJECT,
            validity_secs: 3600,
            valid_after_offset_secs: offset,
            fingerprint_id: id,
        }
    }

    #[test]
    fn ids_look_like_uuids() {
        let id = random_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, random_id());
    }

    #[test]
    fn signs_parseable_certificates() {
        let ca = Ca::new();
        assert!(ca.public_line().starts_with("ssh-ed25519 AAAA"));
        assert!(ca.public_line().ends_with(" emulator-ca"));
        let line = ca.sign(&fields(0, "id-1")).expect("signed");
        assert!(line.starts_with("ssh-ed25519-cert-v01@openssh.com AAAA"));
        let cert = ssh_key::Certificate::from_openssh(&line).expect("parse");
        assert_eq!(cert.valid_principals(), ["alice".to_owned()]);
        assert_eq!(cert.key_id(), "alice@example.com");
        assert!(
            cert.extensions()
                .contains_key("fingerprint@google.com=id-1")
        );
        assert_eq!(cert.valid_before() - cert.valid_after(), 3600);
        let ca_fp = PublicKey::from_openssh(&ca.public_line())
            .expect("ca key")
            .fingerprint(Default::default());
        cert.validate(&[ca_fp])
            .expect("valid now, signed by the CA");
        // Already expired certificates can be made too.
        let old = ca.sign(&fields(-7200, "id-2")).expect("signed");
        let old = ssh_key::Certificate::from_openssh(&old).expect("parse");
        assert!(old.validate(&[ca_fp]).is_err());
        assert!(
            ca.sign(&CertFields {
                public_key: "ssh-ed25519 not-base64",
                ..fields(0, "x")
            })
            .is_err()
        );
    }

    #[test]
    fn ssh_keygen_reads_certificates() {
        if Command::new("ssh-keygen").arg("-?").output().is_err() {
            eprintln!("ssh-keygen not on PATH; skipping");
            return;
        }
        let ca = Ca::new();
        let line = ca.sign(&fields(0, "abc-123")).expect("signed");
        let dir = std::env::temp_dir().join(format!("emu-ca-test-{}", random_id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("id-cert.pub");
        std::fs::write(&path, format!("{line}\n")).expect("write");
        let out = Command::new("ssh-keygen")
            .arg("-L")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("run ssh-keygen");
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ssh-keygen failed: {text}");
        assert!(text.contains("user certificate"), "{text}");
        assert!(text.contains("Key ID: \"alice@example.com\""), "{text}");
        let principals = text
            .split("Principals:")
            .nth(1)
            .and_then(|s| s.lines().nth(1))
            .map(str::trim);
        assert_eq!(principals, Some("alice"), "{text}");
        assert!(text.contains("fingerprint@google.com=abc-123"), "{text}");
        assert!(text.contains("permit-pty"), "{text}");
    }
}
