//! `fake-engine`: runs a [`fake_engine::FakeEngine`] on a loopback address until SIGINT/SIGTERM.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::Parser;
use fake_engine::{EngineSpec, FakeEngine, SnapshotSpec, serve};
use tracing_subscriber::EnvFilter;

/// A scriptable stand-in for Longhorn's instance-manager engine proxy (imrpc.ProxyEngineService).
#[derive(Parser, Debug)]
#[command(name = "fake-engine", version)]
struct Args {
    /// Loopback address to listen on (127.0.0.0/8 only).
    #[arg(long, default_value = "127.0.0.1:8501")]
    listen: SocketAddr,
    /// An engine reachable through the proxy: ADDRESS,ENGINE,VOLUME (repeatable).
    #[arg(long = "engine", value_name = "ADDRESS,ENGINE,VOLUME")]
    engines: Vec<String>,
    /// A snapshot of an engine's chain, oldest first: ADDRESS,NAME (repeatable).
    #[arg(long = "snapshot", value_name = "ADDRESS,NAME")]
    snapshots: Vec<String>,
}

fn parse_engine(s: &str) -> anyhow::Result<EngineSpec> {
    let parts: Vec<&str> = s.split(',').collect();
    let [address, engine_name, volume_name] = parts.as_slice() else {
        bail!("--engine {s:?}: expected ADDRESS,ENGINE,VOLUME");
    };
    Ok(EngineSpec {
        address: address.to_string(),
        engine_name: engine_name.to_string(),
        volume_name: volume_name.to_string(),
    })
}

fn parse_snapshot(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once(',') {
        Some((address, name)) if !address.is_empty() && !name.is_empty() && !name.contains(',') => {
            Ok((address.to_string(), name.to_string()))
        }
        _ => bail!("--snapshot {s:?}: expected ADDRESS,NAME"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let engine = FakeEngine::new();
    for spec in &args.engines {
        let spec = parse_engine(spec)?;
        tracing::info!(address = %spec.address, engine = %spec.engine_name, volume = %spec.volume_name, "engine added");
        engine.add_engine(spec);
    }
    for s in &args.snapshots {
        let (address, name) = parse_snapshot(s)?;
        if engine.replica_address(&address).is_none() {
            bail!("--snapshot {s:?}: no --engine with address {address}");
        }
        tracing::info!(%address, snapshot = %name, "snapshot added");
        engine.add_snapshot(
            &address,
            SnapshotSpec {
                name,
                user_created: true,
                ..Default::default()
            },
        );
    }
    let server = serve(engine, args.listen).await?;
    println!("fake-engine listening on {}", server.local_addr);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot wait for SIGINT")?,
        _ = term.recv() => {}
    }
    tracing::info!("signal received, shutting down");
    server.shutdown().await;
    Ok(())
}
