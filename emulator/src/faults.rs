//! Fault injection: which fault a request meets, and the canned answers some faults give.
//! How a fault changes the delivery of an answer (drop, truncate, dribble, hang) is in
//! `server.rs`, which owns the connection.

use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::Value;

use crate::api::{Fault, FaultKind};
use crate::http::Response;

/// Finds the first fault matching `path`, counts the use, and removes it when used up.
pub(crate) fn take(faults: &mut Vec<Fault>, path: &str) -> Option<FaultKind> {
    let i = faults
        .iter()
        .position(|f| path.starts_with(&f.path_prefix))?;
    let kind = faults[i].kind.clone();
    if let Some(count) = faults[i].count.as_mut() {
        *count = count.saturating_sub(1);
        if *count == 0 {
            faults.remove(i);
        }
    }
    Some(kind)
}

/// `Status{code}`: an HTML error page, flavor echoed.
pub(crate) fn status_page(code: u16) -> Response {
    Response::new(
        code,
        "text/html; charset=UTF-8",
        format!("<html><body>Error {code}</body></html>"),
    )
    .with_header("Metadata-Flavor", "Google")
}

/// `Oversize{bytes}`: valid JSON of exactly `bytes` bytes.
pub(crate) fn oversize(bytes: usize) -> Response {
    const FRAME: usize = r#"{"pad":""}"#.len();
    let body = if bytes >= FRAME {
        format!(r#"{{"pad":"{}"}}"#, "x".repeat(bytes - FRAME))
    } else if bytes == 0 {
        String::new()
    } else {
        // Leading whitespace before a number is still valid JSON.
        format!("{}0", " ".repeat(bytes - 1))
    };
    Response::new(200, "application/json", body).with_header("Metadata-Flavor", "Google")
}

/// `NonJson`: what a captive portal or network filter answers.
pub(crate) fn non_json() -> Response {
    Response::new(
        200,
        "text/html; charset=UTF-8",
        "<html><head><title>Filtered</title></head><body>This is not the metadata service.</body></html>",
    )
    .with_header("Metadata-Flavor", "Google")
}

/// `WrongShape`: JSON, but not a tree.
pub(crate) fn wrong_shape() -> Response {
    Response::new(200, "application/json", r#"["not","a","tree"]"#)
        .with_header("Metadata-Flavor", "Google")
        .with_header("ETag", crate::tree::short_hash(b"wrong-shape"))
}

/// A random etag for `EtagChurn`.
pub(crate) fn random_etag() -> String {
    (0..16)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
        .collect()
}

/// Accepts `"kind"` nested (`{"kind":{"kind":"hang"}}`) or flattened (`{"kind":"hang"}`).
impl<'de> Deserialize<'de> for Fault {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = serde_json::Map::deserialize(d)?;
        let path_prefix = match map.remove("path_prefix") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "path_prefix must be a string, not {other}"
                )));
            }
        };
        let count = match map.remove("count") {
            None | Some(Value::Null) => None,
            Some(v) => Some(u32::deserialize(v).map_err(D::Error::custom)?),
        };
        let kind = match map.get("kind") {
            Some(Value::Object(_)) => map.remove("kind").unwrap_or(Value::Null),
            Some(_) => Value::Object(map),
            None => return Err(D::Error::missing_field("kind")),
        };
        let kind = FaultKind::deserialize(kind).map_err(D::Error::custom)?;
        Ok(Fault {
            path_prefix,
            kind,
            count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms() {
        let nested: Fault = serde_json::from_str(
            r#"{"path_prefix":"/a","kind":{"kind":"status","code":503},"count":2}"#,
        )
        .expect("nested");
        let flat: Fault =
            serde_json::from_str(r#"{"path_prefix":"/a","kind":"status","code":503,"count":2}"#)
                .expect("flat");
        assert_eq!(nested, flat);
        assert_eq!(nested.kind, FaultKind::Status { code: 503 });
        let back: Fault =
            serde_json::from_str(&serde_json::to_string(&nested).expect("ser")).expect("de");
        assert_eq!(back, nested);
        let hang: Fault = serde_json::from_str(r#"{"kind":"hang"}"#).expect("hang");
        assert_eq!(hang.path_prefix, "");
        assert_eq!(hang.count, None);
        let v = serde_json::to_value(FaultKind::SlowBody { bytes_per_sec: 10 }).expect("ser");
        assert_eq!(
            v,
            serde_json::json!({"kind":"slow_body","bytes_per_sec":10})
        );
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Fault>(r#"{"path_prefix":"/"}"#).is_err());
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"status"}"#).is_err());
    }

    #[test]
    fn first_match_wins_and_counts_down() {
        let mut faults = vec![
            Fault {
                path_prefix: "/computeMetadata/v1/oslogin/".into(),
                kind: FaultKind::Drop,
                count: Some(2),
            },
            Fault {
                path_prefix: "/".into(),
                kind: FaultKind::Hang,
                count: None,
            },
        ];
        assert_eq!(
            take(&mut faults, "/computeMetadata/v1/oslogin/users"),
            Some(FaultKind::Drop)
        );
        assert_eq!(take(&mut faults, "/latest/"), Some(FaultKind::Hang));
        assert_eq!(
            take(&mut faults, "/computeMetadata/v1/oslogin/users"),
            Some(FaultKind::Drop)
        );
        assert_eq!(
            take(&mut faults, "/computeMetadata/v1/oslogin/users"),
            Some(FaultKind::Hang)
        );
        assert_eq!(faults.len(), 1);
        faults.clear();
        assert_eq!(take(&mut faults, "/"), None);
    }

    #[test]
    fn oversize_is_exact_json() {
        for n in [0, 1, 5, 10, 11, 4096] {
            let r = oversize(n);
            assert_eq!(r.body.len(), n);
            if n > 0 {
                serde_json::from_slice::<Value>(&r.body).expect("valid json");
            }
        }
    }
}
