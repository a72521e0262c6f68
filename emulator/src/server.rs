//! The metadata listener: accepts connections, reads requests, records them, applies faults
//! and writes answers by hand, so that a fault can drop, truncate or dribble a response and a
//! held request (long poll, hang) ends as soon as its client goes away.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

use crate::api::FaultKind;
use crate::http::{MAX_BODY, MAX_HEAD, ReadError, Request, Response, read_request};
use crate::state::Emulator;
use crate::{ec2, faults, gce};

/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest a `Hang` or `Delay` fault holds a request.
const MAX_HOLD: Duration = Duration::from_secs(3600);

/// How an answer goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Whole,
    /// Full Content-Length, half the body, then close.
    Truncate,
    /// The body at this many bytes per second.
    Slow(u64),
}

enum Outcome {
    Send(Response, Delivery),
    /// Close without answering.
    Drop,
}

/// Accepts metadata connections until `shutdown` changes (or its sender goes away).
pub(crate) async fn serve(
    listener: TcpListener,
    emu: Emulator,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, emu.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    eprintln!("mds-emulator: accept failed: {e}");
                    sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
}

async fn connection(mut stream: TcpStream, emu: Emulator) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let req = match timeout(IDLE_TIMEOUT, read_request(&mut stream, &mut buf)).await {
            Ok(Ok(Some(req))) => req,
            Ok(Ok(None) | Err(ReadError::Io(_) | ReadError::Truncated)) | Err(_) => return,
            Ok(Err(e)) => {
                let status = if matches!(e, ReadError::TooLarge) {
                    413
                } else {
                    400
                };
                let resp = Response::text(status, format!("{e}\n"));
                let _ = write_whole(&mut stream, &resp, false).await;
                return;
            }
        };
        let id = emu.record_start(&req);
        let outcome = {
            let fut = respond(&emu, &req);
            tokio::pin!(fut);
            // Keep reading while the answer is being made: EOF means the client left.
            loop {
                tokio::select! {
                    outcome = &mut fut => break Some(outcome),
                    read = stream.read_buf(&mut buf) => match read {
                        Ok(0) | Err(_) => break None,
                        Ok(_) if buf.len() > MAX_HEAD + MAX_BODY => break None,
                        Ok(_) => {}
                    },
                }
            }
        };
        let Some(Outcome::Send(resp, delivery)) = outcome else {
            // Client gone, or a Drop fault: close without a word (status stays 0).
            let _ = stream.shutdown().await;
            return;
        };
        let keep_alive = req.keep_alive && delivery != Delivery::Truncate;
        let sent = match delivery {
            Delivery::Whole => write_whole(&mut stream, &resp, keep_alive).await,
            Delivery::Truncate => write_truncated(&mut stream, &resp).await,
            Delivery::Slow(rate) => write_slowly(&mut stream, &resp, keep_alive, rate).await,
        };
        emu.record_finish(id, resp.status);
        if sent.is_err() || !keep_alive {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Decides the answer to one request: faults first, then the flavour's handler.
async fn respond(emu: &Emulator, req: &Request) -> Outcome {
    // Subscribe before taking the fault so a clear right after is not missed by a hang.
    let mut clears = emu.subscribe_clears();
    let Some(fault) = emu.take_fault(&req.path) else {
        return Outcome::Send(normal(emu, req, false).await, Delivery::Whole);
    };
    let whole = |r| Outcome::Send(r, Delivery::Whole);
    match fault {
        FaultKind::Status { code } => whole(faults::status_page(code)),
        FaultKind::Delay { ms } => {
            sleep(Duration::from_millis(ms).min(MAX_HOLD)).await;
            whole(normal(emu, req, false).await)
        }
        FaultKind::Hang => {
            let _ = timeout(MAX_HOLD, clears.changed()).await;
            whole(normal(emu, req, false).await)
        }
        FaultKind::Drop => Outcome::Drop,
        FaultKind::Truncate => Outcome::Send(normal(emu, req, false).await, Delivery::Truncate),
        FaultKind::Oversize { bytes } => whole(faults::oversize(bytes)),
        FaultKind::NonJson => whole(faults::non_json()),
        FaultKind::NoFlavor => {
            let mut resp = normal(emu, req, false).await;
            resp.remove_header("Metadata-Flavor");
            whole(resp)
        }
        FaultKind::WrongShape => whole(faults::wrong_shape()),
        FaultKind::SlowBody { bytes_per_sec } => Outcome::Send(
            normal(emu, req, false).await,
            Delivery::Slow(bytes_per_sec.max(1)),
        ),
        FaultKind::EtagChurn => whole(normal(emu, req, true).await),
    }
}

/// The answer without faults.
async fn normal(emu: &Emulator, req: &Request, churn: bool) -> Response {
    let p = req.path.as_str();
    let under = |prefix: &str| {
        p.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if under(gce::PREFIX) {
        gce::handle(emu, req, churn).await
    } else if under(ec2::PREFIX) {
        ec2::handle(emu, req)
    } else if p == "/" {
        Response::text(200, "computeMetadata/\n").with_header("Metadata-Flavor", "Google")
    } else {
        Response::text(404, "Not Found\n")
    }
}

async fn write_whole(
    stream: &mut TcpStream,
    resp: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut out = resp.head(keep_alive);
    out.extend_from_slice(&resp.body);
    stream.write_all(&out).await?;
    stream.flush().await
}

async fn write_truncated(stream: &mut TcpStream, resp: &Response) -> std::io::Result<()> {
    let mut out = resp.head(false);
    out.extend_from_slice(&resp.body[..resp.body.len() / 2]);
    stream.write_all(&out).await?;
    stream.flush().await
}

async fn write_slowly(
    stream: &mut TcpStream,
    resp: &Response,
    keep_alive: bool,
    bytes_per_sec: u64,
) -> std::io::Result<()> {
    stream.write_all(&resp.head(keep_alive)).await?;
    stream.flush().await?;
    // About ten writes a second, at least one byte each.
    let chunk = usize::try_from((bytes_per_sec / 10).max(1)).unwrap_or(usize::MAX);
    let pause = Duration::from_secs_f64(chunk as f64 / bytes_per_sec as f64);
    for piece in resp.body.chunks(chunk) {
        sleep(pause).await;
        stream.write_all(piece).await?;
        stream.flush().await?;
    }
    Ok(())
}
