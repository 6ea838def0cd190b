//! The emulator measured against itself and a plain proxy, in one run. Prints figures, asserts
//! nothing.
//!
//! cargo bench -p link-emulator --bench link_overhead -- [--samples N] [--bulk-mib N]
//!
//! 1. Round trips (1-byte ping-pong on one connection, after a warm-up) to a loopback echo
//!    server: direct; through a plain `copy_bidirectional` proxy; through the emulator at 0
//!    delay (its own overhead); through the emulator at 0.1, 0.5 and 1 ms configured RTT
//!    (achieved vs configured).
//! 2. Bulk: N MiB echoed through the plain proxy and through the emulator at 0 delay.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use link_emulator::probe::{LoopbackServer, echo_server, ping_pong, plain_proxy};
use link_emulator::{LinkConfig, LinkEmulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn flag<T: std::str::FromStr>(name: &str) -> Option<T> {
    let argv: Vec<String> = std::env::args().collect();
    argv.windows(2)
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].parse().ok())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Echoes `mib` MiB through `address`; MiB/s.
async fn bulk(address: SocketAddr, mib: usize) -> anyhow::Result<f64> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (mut read, mut write) = stream.into_split();
    let total = mib * 1024 * 1024;
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let block = vec![7u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            write.write_all(&block).await?;
            sent += block.len();
        }
        write.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    loop {
        let n = read.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        received += n;
    }
    writer.await??;
    anyhow::ensure!(received == total, "echoed {received} of {total} bytes");
    Ok(mib as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let samples: usize = flag("--samples").unwrap_or(2_000);
    let bulk_mib: usize = flag("--bulk-mib").unwrap_or(256);
    let echo = echo_server().await?;
    let plain: LoopbackServer = plain_proxy(echo.local_addr()).await?;
    let zero = LinkEmulator::start(echo.local_addr(), LinkConfig::default()).await?;
    println!(
        "1-byte ping-pong, {samples} samples after 100 warm-up, one connection (load: {})",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let direct = ping_pong(echo.local_addr(), 1, 100, samples).await?;
    println!("direct to the echo server:       {}", direct.summary_ms());
    let through_plain = ping_pong(plain.local_addr(), 1, 100, samples).await?;
    println!(
        "plain proxy (copy_bidirectional): {}",
        through_plain.summary_ms()
    );
    let through_zero = ping_pong(zero.local_addr(), 1, 100, samples).await?;
    println!(
        "emulator, 0 delay:               {}; overhead vs plain proxy p50 {:+.3} ms",
        through_zero.summary_ms(),
        ms(through_zero.quantile(0.5)) - ms(through_plain.quantile(0.5))
    );
    for rtt_ms in [0.1, 0.5, 1.0] {
        let rtt = Duration::from_secs_f64(rtt_ms / 1000.0);
        let link = LinkEmulator::start(echo.local_addr(), LinkConfig::symmetric_rtt(rtt)).await?;
        let trips = ping_pong(link.local_addr(), 1, 100, samples).await?;
        println!(
            "emulator, configured RTT {rtt_ms:.1} ms: {}; p50 - configured {:+.3} ms, p50 - (configured + plain proxy p50) {:+.3} ms",
            trips.summary_ms(),
            ms(trips.quantile(0.5)) - rtt_ms,
            ms(trips.quantile(0.5)) - rtt_ms - ms(through_plain.quantile(0.5))
        );
    }
    let plain_rate = bulk(plain.local_addr(), bulk_mib).await?;
    let zero_rate = bulk(zero.local_addr(), bulk_mib).await?;
    println!(
        "bulk echo {bulk_mib} MiB: plain proxy {plain_rate:.0} MiB/s, emulator at 0 delay {zero_rate:.0} MiB/s ({:.2}x)",
        zero_rate / plain_rate
    );
    Ok(())
}
