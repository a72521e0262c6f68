//! `mds-emulator`: the metadata-service emulator as a program.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use guest_agent_emulator::{ControlListen, EmulatorOptions, InitialState, start};
use tokio::signal::unix::{SignalKind, signal};

/// Emulates the cloud metadata service (GCE flavour with OS Login, EC2 flavour) for tests and
/// for trying images without a cloud.
///
/// Run it ONLY inside a network namespace where 169.254.169.254 is on loopback, never on a
/// real host network:
///
///   ip netns add mds; ip -n mds link set lo up;
///   ip -n mds addr add 169.254.169.254/32 dev lo;
///   ip netns exec mds mds-emulator --state state.json
#[derive(Debug, Parser)]
#[command(name = "mds-emulator", version, verbatim_doc_comment)]
struct Args {
    /// Metadata listen address (repeatable).
    #[arg(
        long = "listen",
        value_name = "ADDR",
        default_value = "169.254.169.254:80"
    )]
    listen: Vec<SocketAddr>,

    /// Control interface: ADDR:PORT or unix:PATH.
    #[arg(
        long,
        value_name = "ADDR|unix:PATH",
        default_value = "unix:/run/mds-emulator.sock"
    )]
    control: ControlListen,

    /// Initial state (JSON: {"tree":{..},"users":[..],"groups":[..],"ec2":{..}}, all optional).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,

    /// Log one line per metadata request to stderr: METHOD PATH?QUERY STATUS MS.
    #[arg(long)]
    log_requests: bool,
}

fn load_state(path: Option<&PathBuf>) -> anyhow::Result<InitialState> {
    let Some(path) = path else {
        return Ok(InitialState::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read state file {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("state file {} is not valid", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let initial = load_state(args.state.as_ref())?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let running = start(EmulatorOptions {
        metadata_listen: args.listen,
        control: Some(args.control),
        initial,
    })
    .await?;
    running.state().set_log_requests(args.log_requests);
    let addrs: Vec<String> = running
        .metadata_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let control = running
        .control_addr()
        .map_or_else(|| "none".to_owned(), |c| c.to_string());
    println!(
        "mds-emulator: serving metadata on {}, control on {control}",
        addrs.join(", ")
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    running.shutdown().await;
    Ok(())
}
