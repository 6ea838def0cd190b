//! `link-emulator --upstream 127.0.0.1:10010 --rtt-ms 0.5`: a delaying TCP proxy in front of one
//! address until interrupted (Ctrl-C).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use link_emulator::{Direction, LinkConfig, LinkEmulator};

#[derive(Parser)]
#[command(about = "Loopback TCP proxy adding delay, jitter and a bandwidth cap per direction")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address to forward to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Round trip added, split evenly between the two directions (milliseconds, fractional).
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
    /// Jitter of each one-way delay, ± milliseconds (never reorders bytes).
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Bandwidth cap per direction in bytes per second (0: none).
    #[arg(long, default_value_t = 0)]
    bandwidth_bytes_per_sec: u64,
    /// Do not hold the client's first bytes one round trip (the TCP handshake).
    #[arg(long)]
    no_handshake: bool,
}

fn millis(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value / 1000.0)
        .map_err(|e| anyhow::anyhow!("--{flag} {value}: not a duration in milliseconds: {e}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let one_way = Direction {
        delay: millis(args.rtt_ms, "rtt-ms")? / 2,
        jitter: millis(args.jitter_ms, "jitter-ms")?,
        bandwidth_bytes_per_sec: (args.bandwidth_bytes_per_sec > 0)
            .then_some(args.bandwidth_bytes_per_sec),
    };
    let config = LinkConfig {
        to_upstream: one_way,
        to_client: one_way,
        emulate_handshake: !args.no_handshake,
        ..LinkConfig::default()
    };
    let link = LinkEmulator::start_on(args.listen, args.upstream, config)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {} for {}: {e}", args.listen, args.upstream))?;
    println!(
        "{} -> {} (rtt {} ms)",
        link.local_addr(),
        args.upstream,
        args.rtt_ms
    );
    tokio::signal::ctrl_c().await?;
    println!("{:?}", link.stats());
    Ok(())
}
