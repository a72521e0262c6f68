//! Unit tests of TOTP codes and base32 secrets.

use super::*;

/// `12345678901234567890` (ASCII), the RFC 6238 SHA1 secret, in base32.
const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

fn code_at(unix: u64) -> String {
    totp_code(RFC_SECRET, unix).expect("code")
}

#[test]
fn rfc6238_sha1_vectors() {
    assert_eq!(
        decode_base32(RFC_SECRET).expect("base32"),
        b"12345678901234567890"
    );
    for (t, code) in [
        (59, "287082"),
        (1_111_111_109, "081804"),
        (1_111_111_111, "050471"),
        (1_234_567_890, "005924"),
        (2_000_000_000, "279037"),
    ] {
        assert_eq!(code_at(t), code, "t={t}");
    }
}

#[test]
fn base32_is_lenient_but_checked() {
    let want = b"12345678901234567890".to_vec();
    for s in [
        "gezdgnbvgy3tqojqgezdgnbvgy3tqojq",
        "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ",
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ====",
    ] {
        assert_eq!(decode_base32(s).expect(s), want, "{s}");
    }
    // RFC 4648 section 10 vectors, padding optional.
    assert_eq!(decode_base32("MZXW6YQ=").expect("foob"), b"foob");
    assert_eq!(decode_base32("MZXW6YTBOI").expect("foobar"), b"foobar");
    assert_eq!(
        decode_base32("GEZ1"),
        Err(Base32Error::BadChar { ch: '1', pos: 3 })
    );
    assert!(matches!(
        decode_base32("MZ0W"),
        Err(Base32Error::BadChar { ch: '0', .. })
    ));
    assert_eq!(decode_base32("MZ=XW"), Err(Base32Error::BadPadding));
    assert_eq!(decode_base32(" = "), Err(Base32Error::Empty));
    assert_eq!(decode_base32("MZXW6Y"), Err(Base32Error::BadLength(6)));
    assert!(totp_code("not base32!", 0).is_err());
}

#[test]
fn window_is_one_step_either_side() {
    let key = decode_base32(RFC_SECRET).expect("key");
    let t = 1_111_111_111;
    let step = t / 30;
    assert_eq!(matching_step(&key, &code_at(t), t), Some(step));
    assert_eq!(matching_step(&key, &code_at(t - 30), t), Some(step - 1));
    assert_eq!(matching_step(&key, &code_at(t + 30), t), Some(step + 1));
    assert_eq!(
        matching_step(&key, &format!(" {} ", code_at(t)), t),
        Some(step)
    );
    assert_eq!(matching_step(&key, &code_at(t - 60), t), None);
    assert_eq!(matching_step(&key, &code_at(t + 60), t), None);
    assert_eq!(matching_step(&key, "12345", t), None);
    assert_eq!(matching_step(&key, "abcdef", t), None);
}
