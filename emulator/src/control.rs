//! The control interface: plain HTTP/1.1 with JSON bodies on its own TCP or Unix listener,
//! mapping each route onto an [`Emulator`] method. See the README for the route list.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::{
    CertRequest, Ec2Settings, Fault, GroupSpec, KeySpec, RawFactor, Scope, TwoFactor, UserSpec,
};
use crate::http::{parse_query, percent_decode};
use crate::state::Emulator;
use crate::tokens::DEFAULT_LIFETIME_SECS;

/// Largest control request body.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Either kind of listener the control interface runs on.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Serves control connections until `shutdown` changes (or its sender goes away).
pub(crate) async fn serve(listener: Listener, emu: Emulator, mut shutdown: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok(Stream::Tcp(s)) => {
                conns.spawn(connection(s, emu.clone()));
            }
            Ok(Stream::Unix(s)) => {
                conns.spawn(connection(s, emu.clone()));
            }
            Err(e) => {
                eprintln!("mds-emulator: control accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    conns.abort_all();
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<Stream> {
    match l {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
    }
}

async fn connection<I>(io: I, emu: Emulator)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let emu = emu.clone();
        async move { Ok::<_, Infallible>(route(&emu, req).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// A status and a JSON body, made into an HTTP response at the end.
struct Answer {
    status: StatusCode,
    body: Value,
}

fn to_http(a: Answer) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(a.body.to_string())));
    *resp.status_mut() = a.status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn reply(status: StatusCode, v: &Value) -> Answer {
    Answer {
        status,
        body: v.clone(),
    }
}

fn ok(v: &Value) -> Answer {
    reply(StatusCode::OK, v)
}

fn done() -> Answer {
    ok(&json!({ "ok": true }))
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Answer {
    reply(status, &json!({ "error": msg.to_string() }))
}

fn found(yes: bool, what: &str) -> Answer {
    if yes {
        done()
    } else {
        error(StatusCode::NOT_FOUND, format!("no such {what}"))
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

#[derive(Deserialize)]
struct Roles {
    login: bool,
    admin: bool,
}

#[derive(Deserialize)]
struct KeyRef {
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFactors {
    factors: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthzenAnswer {
    approve: bool,
}

/// Checks each factor of a `two-factor` body, naming the one at fault
/// (`factors[1].secret: not valid base32: ...`).
fn factors(body: &[u8]) -> Result<Vec<TwoFactor>, Answer> {
    let set: SetFactors = parse(body)?;
    set.factors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let raw: RawFactor = serde_json::from_value(v)
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("factors[{i}]: {e}")))?;
            TwoFactor::try_from(raw).map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("factors[{i}].{}: {}", e.field, e.message),
                )
            })
        })
        .collect()
}

#[derive(Deserialize)]
struct RawResponse {
    query: String,
    status: u16,
    body: String,
}

#[derive(Deserialize)]
struct Rotate {
    #[serde(default = "default_lifetime")]
    expires_in: u64,
}

fn default_lifetime() -> u64 {
    DEFAULT_LIFETIME_SECS
}

async fn route(emu: &Emulator, req: Request<Incoming>) -> Response<Full<Bytes>> {
    to_http(answer(emu, req).await)
}

async fn answer(emu: &Emulator, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let raw_path = req.uri().path().to_owned();
    let params = parse_query(req.uri().query().unwrap_or(""));
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
    };
    let segs: Vec<String> = raw_path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match dispatch(emu, &method, &segs, &params, &body) {
        Ok(a) | Err(a) => a,
    }
}

fn dispatch(
    emu: &Emulator,
    method: &Method,
    segs: &[&str],
    params: &[(String, String)],
    body: &[u8],
) -> Result<Answer, Answer> {
    let scope = |s: &str| {
        s.parse::<Scope>()
            .map_err(|e| error(StatusCode::BAD_REQUEST, e))
    };
    let m = method.as_str();
    Ok(match (m, segs) {
        ("GET", ["tree"]) => ok(&emu.tree()),
        ("PUT", ["tree"]) => {
            let tree: Value = parse(body)?;
            if !tree.is_object() {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "the tree must be a JSON object",
                ));
            }
            emu.set_tree(tree);
            ok(&json!({ "etag": emu.etag() }))
        }
        ("GET", ["etag"]) => ok(&json!({ "etag": emu.etag() })),
        ("PUT", ["attributes", s, key @ ..]) if !key.is_empty() => {
            let value = String::from_utf8(body.to_vec())
                .map_err(|_| error(StatusCode::BAD_REQUEST, "value must be UTF-8"))?;
            emu.set_attribute(scope(s)?, &key.join("/"), &value);
            ok(&json!({ "etag": emu.etag() }))
        }
        ("DELETE", ["attributes", s, key @ ..]) if !key.is_empty() => {
            emu.remove_attribute(scope(s)?, &key.join("/"));
            ok(&json!({ "etag": emu.etag() }))
        }
        ("GET", ["faults"]) => ok(&json!(emu.faults())),
        ("POST", ["faults"]) => {
            emu.add_fault(parse::<Fault>(body)?);
            done()
        }
        ("DELETE", ["faults"]) => {
            emu.clear_faults();
            done()
        }
        ("GET", ["requests"]) => {
            let prefix = params
                .iter()
                .find(|(k, _)| k == "path_prefix")
                .map_or("", |(_, v)| v.as_str());
            let reqs: Vec<_> = emu
                .requests()
                .into_iter()
                .filter(|r| r.path.starts_with(prefix))
                .collect();
            ok(&json!({ "count": reqs.len(), "requests": reqs }))
        }
        ("DELETE", ["requests"]) => {
            emu.clear_requests();
            done()
        }
        ("POST", ["oslogin", "users"]) => {
            emu.upsert_user(parse::<UserSpec>(body)?);
            done()
        }
        ("DELETE", ["oslogin", "users", name]) => found(emu.remove_user(name), "user"),
        ("PUT", ["oslogin", "users", name, "roles"]) => {
            let r: Roles = parse(body)?;
            found(emu.set_roles(name, r.login, r.admin), "user")
        }
        ("POST", ["oslogin", "users", name, "keys"]) => {
            let k: KeySpec = parse(body)?;
            found(emu.add_key(name, &k.key, k.expiration_usec), "user")
        }
        ("DELETE", ["oslogin", "users", name, "keys"]) => {
            let k: KeyRef = parse(body)?;
            found(emu.remove_key(name, &k.key), "user or key")
        }
        ("POST", ["oslogin", "users", name, "two-factor"]) => {
            let f = factors(body)?;
            found(emu.set_two_factor(name, f), "user")
        }
        ("POST", ["oslogin", "users", name, "authzen"]) => {
            let a: AuthzenAnswer = parse(body)?;
            found(emu.decide_authzen(name, a.approve), "user")
        }
        ("POST", ["oslogin", "groups"]) => {
            emu.upsert_group(parse::<GroupSpec>(body)?);
            done()
        }
        ("DELETE", ["oslogin", "groups", name]) => found(emu.remove_group(name), "group"),
        ("PUT", ["oslogin", "raw"]) => {
            let r: RawResponse = parse(body)?;
            emu.set_raw_user_response(&r.query, r.status, r.body);
            done()
        }
        ("POST", ["ca", "rotate"]) => ok(&json!({ "public_key": emu.rotate_ca() })),
        ("GET", ["ca"]) => ok(&json!({ "public_keys": emu.ca_public_keys() })),
        ("POST", ["ca", "sign"]) => {
            let r: CertRequest = parse(body)?;
            let cert = emu
                .sign_certificate(r)
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
            ok(&json!({ "certificate": cert }))
        }
        ("POST", ["tokens", account, "rotate"]) => {
            let r: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
                Rotate {
                    expires_in: DEFAULT_LIFETIME_SECS,
                }
            } else {
                parse(body)?
            };
            ok(&json!({ "token": emu.rotate_token(account, r.expires_in) }))
        }
        ("GET", ["tokens", account]) => match emu.token(account) {
            Some(t) => ok(&json!({ "token": t })),
            None => error(StatusCode::NOT_FOUND, "no such account"),
        },
        ("GET", ["ec2"]) => ok(&json!(emu.ec2())),
        ("PUT", ["ec2"]) => {
            let s: Ec2Settings = parse(body)?;
            emu.set_ec2(s.enabled, s.require_v2);
            done()
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route {m} /{}", segs.join("/")),
        ),
    })
}
