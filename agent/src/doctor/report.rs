//! Rendering: plain text for people (one line per check, then what to do), JSON for scripts.

use serde_json::{Value, json};

use super::checks::{Check, Status};

/// Whether nothing failed (warnings do not count).
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// `{"ok": bool, "checks": [{"id", "status", "summary", "fix", "details"}]}`.
pub fn json(checks: &[Check]) -> Value {
    json!({
        "ok": passed(checks),
        "checks": checks.iter().map(|c| json!({
            "id": c.id,
            "status": c.status.as_str(),
            "summary": c.summary,
            "fix": c.fix,
            "details": Value::Object(c.details.clone()),
        })).collect::<Vec<_>>(),
    })
}

fn label(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok  ",
        Status::Warn => "WARN",
        Status::Fail => "FAIL",
        Status::Skip => "skip",
    }
}

/// The text report.
pub fn text(checks: &[Check], user: Option<&str>) -> String {
    let mut out = String::new();
    out.push_str(&match user {
        Some(u) => format!("guest-agent doctor: can {u} log in?\n\n"),
        None => "guest-agent doctor\n\n".to_owned(),
    });
    let width = checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
    for c in checks {
        out.push_str(&format!(
            "{}  {:width$}  {}\n",
            label(c.status),
            c.id,
            c.summary
        ));
    }
    let todo: Vec<&Check> = checks
        .iter()
        .filter(|c| matches!(c.status, Status::Fail | Status::Warn) && c.fix.is_some())
        .collect();
    if !todo.is_empty() {
        out.push_str("\nWhat to do:\n");
        for c in todo {
            out.push_str(&format!(
                "  {} ({}): {}\n",
                c.id,
                c.status.as_str(),
                c.fix.as_deref().unwrap_or("")
            ));
        }
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "\n{} failed, {} warning(s), {} ok, {} skipped\n",
        count(Status::Fail),
        count(Status::Warn),
        count(Status::Ok),
        count(Status::Skip)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Check> {
        vec![
            Check::ok("metadata", "answered in 3 ms").detail("latency_ms", 3),
            Check::warn("daemon", "not running", "start it"),
            Check::fail("keys", "all 1 keys expired", "add a key"),
            Check::skip("certificate", "no --cert FILE given"),
        ]
    }

    #[test]
    fn json_has_the_stable_shape() {
        let v = json(&sample());
        assert_eq!(v["ok"], json!(false));
        let checks = v["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 4);
        assert_eq!(
            checks[0],
            json!({"id": "metadata", "status": "ok", "summary": "answered in 3 ms", "fix": null, "details": {"latency_ms": 3}})
        );
        assert_eq!(checks[2]["status"], json!("fail"));
        assert_eq!(checks[2]["fix"], json!("add a key"));
        assert_eq!(
            json(&sample()[..2])["ok"],
            json!(true),
            "a warning is not a failure"
        );
    }

    #[test]
    fn text_lists_checks_then_fixes() {
        let t = text(&sample(), Some("alice"));
        assert!(t.starts_with("guest-agent doctor: can alice log in?\n"));
        assert!(t.contains("\nok    metadata     answered in 3 ms\n"), "{t}");
        assert!(
            t.contains("\nFAIL  keys         all 1 keys expired\n"),
            "{t}"
        );
        assert!(t.contains("What to do:\n  daemon (warn): start it\n  keys (fail): add a key\n"));
        assert!(t.ends_with("1 failed, 1 warning(s), 1 ok, 1 skipped\n"));
    }
}
