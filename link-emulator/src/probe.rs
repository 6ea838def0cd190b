//! Measuring the emulator itself: a loopback echo server, a plain copying proxy (the baseline
//! for the emulator's own overhead) and a ping-pong that times round trips.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A loopback server task that stops (with its connections) when dropped.
pub struct LoopbackServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl LoopbackServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<F, Fut>(handle: F) -> std::io::Result<LoopbackServer>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            while connections.try_join_next().is_some() {}
            connections.spawn(handle(stream));
        }
    });
    Ok(LoopbackServer { local_addr, task })
}

/// Echoes every byte back until the client closes.
pub async fn echo_server() -> std::io::Result<LoopbackServer> {
    serve(|mut stream| async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// A plain proxy (`copy_bidirectional`, no delay, no queue): the baseline the emulator's own
/// overhead is measured against.
pub async fn plain_proxy(upstream: SocketAddr) -> std::io::Result<LoopbackServer> {
    serve(move |mut client| async move {
        if let Ok(mut server) = TcpStream::connect(upstream).await {
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
    })
    .await
}

/// Round trips of `payload` bytes on one connection to an echo service at `address`: `samples`
/// timed after `warm_up` untimed ones (the first pays the emulated handshake).
pub async fn ping_pong(
    address: SocketAddr,
    payload: usize,
    warm_up: usize,
    samples: usize,
) -> std::io::Result<RoundTrips> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let out = vec![0x5au8; payload.max(1)];
    let mut back = vec![0u8; out.len()];
    let mut times = Vec::with_capacity(samples);
    for i in 0..warm_up + samples {
        let started = Instant::now();
        stream.write_all(&out).await?;
        stream.read_exact(&mut back).await?;
        if i >= warm_up {
            times.push(started.elapsed());
        }
    }
    Ok(RoundTrips::new(times))
}

/// Sorted round-trip times.
#[derive(Clone, Debug)]
pub struct RoundTrips {
    sorted: Vec<Duration>,
}

impl RoundTrips {
    pub fn new(mut times: Vec<Duration>) -> Self {
        times.sort();
        Self { sorted: times }
    }

    /// The `q` quantile (0.0–1.0); zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((self.sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.sorted[rank.min(self.sorted.len() - 1)]
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// `p50 / p90 / p99` in milliseconds, for a report line.
    pub fn summary_ms(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "p50 {:.3} / p90 {:.3} / p99 {:.3} ms",
            ms(self.quantile(0.5)),
            ms(self.quantile(0.9)),
            ms(self.quantile(0.99))
        )
    }
}
