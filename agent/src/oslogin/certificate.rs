//! OpenSSH user certificates as sshd hands them to AuthorizedPrincipalsCommand (`%k`: the
//! base64 blob): who they name, when they are valid, and the identity extension OS Login
//! issuers put in them (`fingerprint@google.com=<id>`, a flag extension whose name carries the
//! id; a `fingerprint@google.com` extension with the id as its data is read too).
//!
//! The certificate's fields are read here from the wire format (PROTOCOL.certkeys) rather than
//! with `ssh_key::Certificate`, which refuses certificates valid "forever" (valid_before =
//! 2^64-1) that OpenSSH accepts, as some of the reference vectors are. Signatures are not
//! checked here: sshd checks them against TrustedUserCAKeys before it runs the command.

use ssh_key::{HashAlg, PublicKey};

/// What the agent needs from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
    /// The OS Login id to pass to `authorize` as `fingerprint`.
    pub fingerprint: Option<String>,
    /// SHA256 fingerprint of the signing CA key.
    pub ca_fingerprint: String,
    /// The signing CA key as an OpenSSH line (`TYPE BASE64`), to find it in a CA list.
    pub ca_key: String,
}

const EXTENSION: &str = "fingerprint@google.com";

/// A reader of the SSH wire format.
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated certificate".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Result<String, String> {
        String::from_utf8(self.string()?.to_vec())
            .map_err(|_| "a text field is not UTF-8".to_string())
    }
}

/// How many wire strings/mpints the public key of a certificate type holds (after the nonce).
fn key_fields(cert_type: &str) -> Option<usize> {
    Some(match cert_type {
        "ssh-ed25519-cert-v01@openssh.com" => 1,
        "ssh-rsa-cert-v01@openssh.com" => 2,
        "ssh-dss-cert-v01@openssh.com" => 4,
        t if t.starts_with("ecdsa-sha2-") && t.ends_with("-cert-v01@openssh.com") => 2,
        "sk-ssh-ed25519-cert-v01@openssh.com" => 2,
        "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com" => 3,
        _ => return None,
    })
}

/// Parses a base64 certificate blob (sshd's `%k`; a whole `TYPE BASE64 [COMMENT]` line is
/// accepted too). Errors say what is wrong (never echo the blob).
pub fn parse(text: &str) -> Result<CertInfo, String> {
    use base64::Engine as _;
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or("");
    let b64 = if first.contains("-cert-v01@") {
        words.next().unwrap_or("")
    } else {
        first
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "not base64".to_string())?;
    let mut w = Wire(&bytes);
    let cert_type = w.text()?;
    let fields = key_fields(&cert_type)
        .ok_or_else(|| format!("not an OpenSSH certificate (type {cert_type:?})"))?;
    w.string()?; // nonce
    for _ in 0..fields {
        w.string()?;
    }
    let _serial = w.u64()?;
    if w.u32()? != 1 {
        return Err("a host certificate, not a user certificate".into());
    }
    let key_id = w.text()?;
    let mut principals = Vec::new();
    let mut list = Wire(w.string()?);
    while !list.0.is_empty() {
        principals.push(list.text()?);
    }
    let valid_after = w.u64()?;
    let valid_before = w.u64()?;
    w.string()?; // critical options
    let mut fingerprint = None;
    let mut ext = Wire(w.string()?);
    while !ext.0.is_empty() {
        let name = ext.text()?;
        let data = ext.string()?;
        let from_name = name
            .strip_prefix(EXTENSION)
            .and_then(|r| r.strip_prefix('='))
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let from_data = (name == EXTENSION)
            .then(|| Wire(data).text().ok())
            .flatten()
            .filter(|v| !v.is_empty());
        fingerprint = fingerprint.or(from_name).or(from_data);
    }
    w.string()?; // reserved
    let ca = w.string()?;
    let ca = PublicKey::from_bytes(ca).map_err(|e| format!("unreadable signing key ({e})"))?;
    let ca_fingerprint = ca.fingerprint(HashAlg::Sha256).to_string();
    let ca_key = ca
        .to_openssh()
        .map_err(|e| format!("unreadable signing key ({e})"))?;
    Ok(CertInfo {
        key_id,
        principals,
        valid_after,
        valid_before,
        fingerprint: fingerprint
            .filter(|f| f.len() <= 256 && f.bytes().all(|b| b.is_ascii_graphic())),
        ca_fingerprint,
        ca_key,
    })
}

impl CertInfo {
    pub fn is_valid_at(&self, now_unix: u64) -> bool {
        self.valid_after <= now_unix && now_unix < self.valid_before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/oslogin/certs")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The reference implementation's certificate vectors: VALID_* carry the fingerprint
    /// extension, INVALID_* are plain keys (NON_CERT) or certificates without it (NO_FP).
    #[test]
    fn reference_certificates_parse_as_their_names_say() {
        for kind in ["DSA", "ECDSA", "ED25519", "RSA"] {
            for variant in ["SINGLE_EXT", "MULTI_EXT"] {
                let c = parse(&fixture(&format!("VALID_{kind}_{variant}.txt")))
                    .unwrap_or_else(|e| panic!("{kind} {variant}: {e}"));
                assert_eq!(
                    c.fingerprint.as_deref(),
                    Some("b86db4ca-09fd-429e-b121-a12799614032"),
                    "{kind} {variant}"
                );
                assert!(c.ca_fingerprint.starts_with("SHA256:"));
                let ca = PublicKey::from_openssh(&c.ca_key).unwrap();
                assert_eq!(
                    ca.fingerprint(HashAlg::Sha256).to_string(),
                    c.ca_fingerprint
                );
            }
            let e = parse(&fixture(&format!("INVALID_{kind}_NON_CERT.txt"))).unwrap_err();
            assert!(e.contains("not an OpenSSH certificate"), "{kind}: {e}");
            let c = parse(&fixture(&format!("INVALID_{kind}_NO_FP.txt"))).unwrap();
            assert_eq!(c.fingerprint, None, "{kind}");
        }
        let c = parse(&fixture("VALID_RSA_MULTI_EQUAL_EXT.txt")).unwrap();
        assert_eq!(
            c.fingerprint.as_deref(),
            Some("b86db4ca-09fd-429e-b121-a12799614032")
        );
        assert!(parse("!!!").is_err());
    }
}
