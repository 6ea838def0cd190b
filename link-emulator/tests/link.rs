//! The emulator over real loopback sockets: order under jitter, the bandwidth cap, half-close,
//! resets, bounded queues, delay applied, loopback only. Timing checks are lower bounds only
//! (the emulator must never deliver early); nothing asserts that it is fast.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use link_emulator::probe::{echo_server, ping_pong};
use link_emulator::{Direction, LinkConfig, LinkEmulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WAIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: not done within {WAIT:?}"),
    }
}

/// A loopback upstream that accepts one connection and runs `serve` on it.
async fn serve_one<F, Fut, T>(
    serve: F,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<T>>)>
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<T>> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        serve(stream).await
    });
    Ok((upstream, server))
}

fn jittery(delay_us: u64, jitter_us: u64) -> Direction {
    Direction {
        delay: Duration::from_micros(delay_us),
        jitter: Duration::from_micros(jitter_us),
        bandwidth_bytes_per_sec: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_larger_than_the_gaps_between_writes_never_reorders_bytes() -> TestResult {
    let echo = echo_server().await?;
    let config = LinkConfig {
        to_upstream: jittery(500, 500),
        to_client: jittery(300, 300),
        ..LinkConfig::default()
    };
    let link = LinkEmulator::start(echo.local_addr(), config).await?;
    let stream = TcpStream::connect(link.local_addr()).await?;
    stream.set_nodelay(true)?;
    let (mut read, mut write) = stream.into_split();
    // 4,000 numbered records written one by one, far closer together than the jitter
    let records = 4_000u32;
    let writer = tokio::spawn(async move {
        for i in 0..records {
            write.write_all(&i.to_be_bytes()).await?;
            if i % 8 == 0 {
                tokio::task::yield_now().await;
            }
        }
        write.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut echoed = Vec::new();
    within("reading the echo", read.read_to_end(&mut echoed)).await?;
    within("writing", writer).await??;
    let got: Vec<u32> = echoed
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        got,
        (0..records).collect::<Vec<_>>(),
        "bytes reordered or lost"
    );
    let stats = link.stats();
    assert_eq!(stats.bytes_to_upstream, u64::from(records) * 4);
    assert_eq!(stats.bytes_to_client, u64::from(records) * 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_takes_at_least_its_size_over_the_bandwidth() -> TestResult {
    // upstream counts bytes to EOF, then answers with the count
    let (upstream, sink) = serve_one(|mut stream| async move {
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await?;
        stream.write_all(&(all.len() as u64).to_be_bytes()).await?;
        Ok(all)
    })
    .await?;
    let rate = 400_000u64; // bytes per second
    let config = LinkConfig {
        to_upstream: Direction {
            bandwidth_bytes_per_sec: Some(rate),
            ..Direction::default()
        },
        ..LinkConfig::default()
    };
    let link = LinkEmulator::start(upstream, config).await?;
    let size = 200_000usize;
    let sent: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let mut stream = TcpStream::connect(link.local_addr()).await?;
    stream.write_all(&sent).await?;
    stream.shutdown().await?;
    let mut count = [0u8; 8];
    within("the count", stream.read_exact(&mut count)).await?;
    let elapsed = started.elapsed();
    let received = within("the sink", sink).await??;
    assert_eq!(u64::from_be_bytes(count), size as u64);
    assert!(received == sent, "bytes changed on the way");
    let floor = Duration::from_secs_f64(size as f64 / rate as f64);
    assert!(
        elapsed >= floor,
        "{size} bytes at {rate} B/s arrived in {elapsed:?}, faster than the cap allows ({floor:?})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_crosses_the_link_in_both_directions() -> TestResult {
    let (upstream, server) = serve_one(|mut stream| async move {
        // reads the request to EOF: only possible if the client's FIN crossed the link
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await?;
        // still able to answer on its own half, then closes it
        stream.write_all(b"answer to ").await?;
        stream.write_all(&request).await?;
        stream.shutdown().await?;
        Ok(request)
    })
    .await?;
    let link = LinkEmulator::start(
        upstream,
        LinkConfig::symmetric_rtt(Duration::from_micros(400)),
    )
    .await?;
    let mut stream = TcpStream::connect(link.local_addr()).await?;
    stream.write_all(b"the request").await?;
    stream.shutdown().await?; // half-close: the client keeps reading
    let mut answer = Vec::new();
    within("reading the answer to EOF", stream.read_to_end(&mut answer)).await?;
    assert_eq!(answer, b"answer to the request");
    assert_eq!(within("server", server).await??, b"the request");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_half_close_first_leaves_the_client_able_to_send() -> TestResult {
    let (upstream, server) = serve_one(|mut stream| async move {
        stream.write_all(b"banner").await?;
        stream.shutdown().await?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await?;
        Ok(rest)
    })
    .await?;
    let link = LinkEmulator::start(
        upstream,
        LinkConfig::symmetric_rtt(Duration::from_micros(200)),
    )
    .await?;
    let mut stream = TcpStream::connect(link.local_addr()).await?;
    let mut banner = Vec::new();
    within("banner to EOF", stream.read_to_end(&mut banner)).await?;
    assert_eq!(banner, b"banner");
    stream.write_all(b"after the server's FIN").await?;
    stream.shutdown().await?;
    assert_eq!(within("server", server).await??, b"after the server's FIN");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_reaches_the_client_as_a_reset() -> TestResult {
    let (upstream, server) = serve_one(|mut stream| async move {
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).await?;
        stream.set_zero_linger()?;
        drop(stream); // RST
        Ok(())
    })
    .await?;
    let link = LinkEmulator::start(
        upstream,
        LinkConfig::symmetric_rtt(Duration::from_micros(200)),
    )
    .await?;
    let mut stream = TcpStream::connect(link.local_addr()).await?;
    stream.write_all(b"hello").await?;
    within("server", server).await??;
    let mut buf = [0u8; 16];
    let read = within("client read", stream.read(&mut buf)).await;
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("client read {n} bytes (EOF if 0) instead of a reset"),
    }
    assert_eq!(link.stats().resets_forwarded, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_reaches_the_upstream_as_a_reset() -> TestResult {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    let link = LinkEmulator::start(
        upstream,
        LinkConfig::symmetric_rtt(Duration::from_micros(200)),
    )
    .await?;
    let mut client = TcpStream::connect(link.local_addr()).await?;
    let (mut server, _) = within("accept", listener.accept()).await?;
    client.write_all(b"x").await?;
    let mut one = [0u8; 1];
    within("first byte", server.read_exact(&mut one)).await?;
    client.set_zero_linger()?;
    drop(client);
    let mut buf = [0u8; 16];
    match within("server read", server.read(&mut buf)).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("server read {n} bytes (EOF if 0) instead of a reset"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_resets_the_client() -> TestResult {
    // a port with nothing listening: bind, note it, close
    let closed: SocketAddr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let link = LinkEmulator::start(closed, LinkConfig::default()).await?;
    // the reset can come so fast that connect() itself reports it
    let read = match TcpStream::connect(link.local_addr()).await {
        Ok(mut stream) => {
            let mut buf = [0u8; 1];
            within("client read", stream.read(&mut buf)).await
        }
        Err(e) => Err(e),
    };
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    assert_eq!(link.stats().upstream_connect_failures, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_bounds_the_queue_and_loses_nothing() -> TestResult {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    let queue_bytes = 64 * 1024;
    let config = LinkConfig {
        queue_bytes,
        ..LinkConfig::symmetric_rtt(Duration::from_micros(200))
    };
    let link = LinkEmulator::start(upstream, config).await?;
    let size = 48 * 1024 * 1024; // far beyond the kernel's socket buffers + the queue
    let sent: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    let expected = sent.clone();
    let mut client = TcpStream::connect(link.local_addr()).await?;
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await?;
        client.shutdown().await?;
        Ok::<_, std::io::Error>(client)
    });
    let (mut server, _) = within("accept", listener.accept()).await?;
    // the server does not read: wait until the emulator's queue is full
    within("queue filling up", async {
        while link.stats().queued_bytes + link_emulator::CHUNK_BYTES < queue_bytes {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        !writer.is_finished(),
        "all {size} bytes were taken while nobody read"
    );
    let mut received = Vec::with_capacity(size);
    within("reading everything", server.read_to_end(&mut received)).await?;
    within("writer", writer).await??;
    assert!(
        received == expected,
        "bytes lost or changed under backpressure"
    );
    let peak = link.stats().peak_queued_bytes_per_direction;
    assert!(
        peak <= queue_bytes + link_emulator::CHUNK_BYTES + 64,
        "{peak} bytes queued in one direction, bound {queue_bytes}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_take_at_least_the_configured_rtt_and_the_handshake_one_more() -> TestResult {
    let echo = echo_server().await?;
    let rtt = Duration::from_micros(600);
    let link = LinkEmulator::start(echo.local_addr(), LinkConfig::symmetric_rtt(rtt)).await?;
    // first exchange on a new connection: handshake RTT + the exchange's RTT
    let started = Instant::now();
    let mut stream = TcpStream::connect(link.local_addr()).await?;
    stream.write_all(b"p").await?;
    let mut one = [0u8; 1];
    within("first echo", stream.read_exact(&mut one)).await?;
    assert!(
        started.elapsed() >= 2 * rtt,
        "first exchange {:?}",
        started.elapsed()
    );
    // later ones: at least one RTT each (the fastest of 50)
    let trips = within("ping-pong", ping_pong(link.local_addr(), 1, 5, 50)).await?;
    assert!(
        trips.quantile(0.0) >= rtt,
        "fastest round trip {:?}",
        trips.quantile(0.0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_listens_on_loopback_and_stops_on_drop() -> TestResult {
    let echo = echo_server().await?;
    assert!(echo.local_addr().ip().is_loopback());
    let plain = link_emulator::probe::plain_proxy(echo.local_addr()).await?;
    assert!(plain.local_addr().ip().is_loopback());
    let link = LinkEmulator::start(echo.local_addr(), LinkConfig::default()).await?;
    let address = link.local_addr();
    assert!(address.ip().is_loopback(), "{address}");
    let mut open = TcpStream::connect(address).await?;
    open.write_all(b"x").await?;
    let mut one = [0u8; 1];
    within("echo", open.read_exact(&mut one)).await?;
    drop(link);
    // the open connection is closed and the port refuses new ones
    let mut buf = [0u8; 1];
    let read = within("read after drop", open.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    within("refused after drop", async {
        while TcpStream::connect(address).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    Ok(())
}

#[test]
fn the_binary_names_a_bad_flag_value_and_exits_non_zero() -> TestResult {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_link-emulator"))
        .args(["--upstream", "127.0.0.1:9", "--rtt-ms=-1"])
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--rtt-ms -1"), "{stderr}");
    Ok(())
}
