//! The GCE flavour: everything under `/computeMetadata/v1/` (the tree with its long polls,
//! service-account tokens, and OS Login, which lives in `oslogin/`).

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::{Instant, timeout_at};

use crate::http::{Request, Response};
use crate::oslogin::twofactor::{self, Now};
use crate::state::Emulator;
use crate::tree::{self, Node};

/// Path prefix of the GCE flavour.
pub const PREFIX: &str = "/computeMetadata/v1";
/// Longest a `wait_for_change` request is held.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Answers a GCE-flavour request. `churn` (the `EtagChurn` fault) makes etags random and
/// long polls answer at once.
pub(crate) async fn handle(emu: &Emulator, req: &Request, churn: bool) -> Response {
    let mut resp = answer(emu, req, churn).await;
    if churn || resp.header("ETag").is_none() {
        let etag = if churn {
            crate::faults::random_etag()
        } else {
            tree::short_hash(&resp.body)
        };
        resp.set_header("ETag", etag);
    }
    resp.with_header("Metadata-Flavor", "Google")
}

async fn answer(emu: &Emulator, req: &Request, churn: bool) -> Response {
    if req.header("x-forwarded-for").is_some() {
        return Response::text(403, "Request denied: X-Forwarded-For header present.\n");
    }
    if !req
        .header("metadata-flavor")
        .is_some_and(|v| v.eq_ignore_ascii_case("google"))
    {
        return Response::text(403, "Missing Metadata-Flavor:Google header.\n");
    }
    let Some(rel) = req.path.strip_prefix(PREFIX) else {
        return not_found();
    };
    if !rel.is_empty() && !rel.starts_with('/') {
        return not_found();
    }
    let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    // Two-step verification is the only POST; everything else is a GET.
    let post = matches!(
        segs.as_slice(),
        ["oslogin", "authenticate", "sessions", "start"]
            | ["oslogin", "authenticate", "sessions", _, "continue"]
    );
    if req.method != if post { "POST" } else { "GET" } {
        return Response::text(405, "Method not allowed.\n");
    }
    match segs.as_slice() {
        ["oslogin", "authenticate", "sessions", "start"] => emu
            .lock()
            .directory
            .start_session(&req.body, Now::current()),
        ["oslogin", "authenticate", "sessions", id, "continue"] => {
            twofactor::continue_session(emu, id, &req.body).await
        }
        ["oslogin", endpoint] => {
            let inner = emu.lock();
            let ca = [inner.ca.public_line()];
            inner.directory.answer(endpoint, &req.params, &ca)
        }
        ["oslogin", ..] => not_found(),
        ["instance", sa, account, "token"] if tree::camel(sa) == "serviceAccounts" => {
            token(emu, account)
        }
        _ => tree_answer(emu, req, &segs, churn).await,
    }
}

fn not_found() -> Response {
    Response::text(404, "Not Found\n")
}

fn token(emu: &Emulator, account: &str) -> Response {
    let mut inner = emu.lock();
    if !inner.has_account(account) {
        return not_found();
    }
    let key = inner.canonical_account(account);
    let (token, expires_in) = inner.tokens.current(&key);
    Response::json(
        200,
        &json!({ "access_token": token, "expires_in": expires_in, "token_type": "Bearer" }),
    )
}

fn flag(req: &Request, name: &str) -> bool {
    req.param(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Serves a node of the tree, holding the request first when it is a long poll whose
/// `last_etag` is still current.
async fn tree_answer(emu: &Emulator, req: &Request, segs: &[&str], churn: bool) -> Response {
    let wait = flag(req, "wait_for_change") && !churn;
    let last = req
        .param("last_etag")
        .filter(|e| !e.is_empty() && *e != "NONE");
    let timeout = match req.param("timeout_sec") {
        None | Some("") => MAX_WAIT,
        Some(t) => match t.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs).min(MAX_WAIT),
            Err(_) => return Response::text(400, "Invalid timeout_sec.\n"),
        },
    };
    let deadline = Instant::now() + timeout;
    // Subscribe before looking, so a change between the look and the wait is not missed.
    let mut changes = emu.subscribe_tree();
    loop {
        let (resp, etag) = {
            let inner = emu.lock();
            let node = tree::lookup(&inner.tree, segs);
            let etag = tree::etag(node.map(|n| n.value));
            (render(node, req), etag)
        };
        let hold = wait && last.is_some_and(|l| l == etag);
        if !hold {
            return resp.with_header("ETag", etag);
        }
        match timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out (or the state is gone): answer with the current value.
            Ok(Err(_)) | Err(_) => return resp.with_header("ETag", etag),
        }
    }
}

fn render(node: Option<Node<'_>>, req: &Request) -> Response {
    let Some(node) = node else {
        return not_found();
    };
    let alt_json = req.param("alt") == Some("json");
    let recursive = flag(req, "recursive");
    if node.is_dir() {
        if recursive {
            return Response::json(200, node.value);
        }
        let listing = node.listing();
        if alt_json {
            return Response::json(200, &Value::from(listing));
        }
        let text: String = listing.into_iter().map(|l| l + "\n").collect();
        return Response::text(200, text);
    }
    if alt_json {
        Response::json(200, node.value)
    } else {
        Response::text(200, node.text())
    }
}
