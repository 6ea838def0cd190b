//! Longhorn's keepalive enforcement (`MinTime: 10s`, `PermitWithoutStream: true`), checked on the
//! wire with a hand-written HTTP/2 client: a client pinging too often is answered, then sent
//! GOAWAY ENHANCE_YOUR_CALM "too_many_pings", then the connection is closed.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use fake_engine::{FakeEngine, KeepalivePolicy, serve};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        kind,
        flags,
        0,
        0,
        0,
        0,
    ];
    f.extend_from_slice(payload);
    f
}

/// Reads frames until the server closes the connection (EOF or reset).
async fn read_frames(
    mut r: impl AsyncRead + Unpin,
    seen: tokio::sync::mpsc::UnboundedSender<u8>,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let mut header = [0u8; 9];
        if r.read_exact(&mut header).await.is_err() {
            return frames;
        }
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0; len];
        if r.read_exact(&mut payload).await.is_err() {
            return frames;
        }
        let _ = seen.send(header[3]);
        frames.push(Frame {
            kind: header[3],
            flags: header[4],
            payload,
        });
    }
}

/// Opens an HTTP/2 connection on `io`, then sends a PING every `every` (at most `max` of them)
/// until the server closes the connection or `acks` PING ACKs have come back. Returns every
/// frame the server sent.
async fn ping_until_closed(
    io: impl AsyncRead + AsyncWrite + Send + 'static,
    every: Duration,
    max: u64,
    acks: usize,
) -> Vec<Frame> {
    let (r, mut w) = tokio::io::split(io);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(read_frames(r, seen_tx));
    w.write_all(PREFACE).await.unwrap();
    w.write_all(&frame(SETTINGS, 0, &[])).await.unwrap();
    let mut acked = 0;
    for i in 0..max {
        if w.write_all(&frame(PING, 0, &i.to_be_bytes()))
            .await
            .is_err()
        {
            break;
        }
        let _ = w.flush().await;
        let next = tokio::time::Instant::now() + every;
        while let Ok(Some(kind)) = tokio::time::timeout_at(next, seen.recv()).await {
            if kind == PING {
                acked += 1;
            }
        }
        if reader.is_finished() || acked >= acks {
            break;
        }
    }
    // Done: close our side (the server closes its own on that).
    let _ = w.shutdown().await;
    drop(w);
    timeout(Duration::from_secs(10), reader)
        .await
        .expect("the server neither closed the connection nor was left by the client")
        .unwrap()
}

fn assert_told_too_many_pings(frames: &[Frame]) {
    let goaway = frames
        .iter()
        .position(|f| f.kind == GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY in {frames:?}"));
    let g = &frames[goaway].payload;
    assert_eq!(&g[0..4], &[0, 0, 0, 0], "last stream id");
    assert_eq!(&g[4..8], &[0, 0, 0, 0xb], "error code ENHANCE_YOUR_CALM");
    assert_eq!(&g[8..], b"too_many_pings", "debug data");
    // Pings 1..4 answered (the fourth is the third strike), then GOAWAY, then nothing: closed.
    let acks = frames[..goaway]
        .iter()
        .filter(|f| f.kind == PING && f.flags & ACK != 0)
        .count();
    assert_eq!(acks, 4, "{frames:?}");
    assert_eq!(
        goaway,
        frames.len() - 1,
        "frames after the GOAWAY: {frames:?}"
    );
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pinging_every_100ms_is_told_too_many_pings_and_closed() {
    let fake = FakeEngine::new();
    let server = serve(fake.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let frames = ping_until_closed(
        connect(server.local_addr).await,
        Duration::from_millis(100),
        20,
        usize::MAX,
    )
    .await;
    assert_told_too_many_pings(&frames);
    let stats = fake.stats();
    assert_eq!(stats.too_many_pings_goaways, 1);
    assert_eq!(stats.pings_received, 4);
    let conns = fake.connections();
    assert_eq!(conns.len(), 1);
    assert!(
        conns[0].told_too_many_pings && conns[0].pings_received == 4,
        "{conns:?}"
    );
    server.shutdown().await;
}

/// A client pinging every `every` under `policy` gets `acks` PING ACKs and never a GOAWAY.
async fn assert_left_alone(policy: Option<KeepalivePolicy>, every: Duration, acks: usize) {
    let fake = FakeEngine::new();
    fake.set_keepalive_policy(policy);
    let server = serve(fake.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let frames = ping_until_closed(connect(server.local_addr).await, every, 20, acks).await;
    let got = frames
        .iter()
        .filter(|f| f.kind == PING && f.flags & ACK != 0)
        .count();
    assert_eq!(got, acks, "{frames:?}");
    assert!(frames.iter().all(|f| f.kind != GOAWAY), "{frames:?}");
    assert_eq!(fake.stats().too_many_pings_goaways, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_is_left_alone_without_a_policy() {
    assert_left_alone(None, Duration::from_millis(100), 8).await;
}

/// A slower client within a scaled-down policy: pings 300 ms apart under `MinTime` 100 ms are
/// never strikes (the real 10 s policy is exercised by the agent's keepalive test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_slower_than_min_time_are_never_strikes() {
    let policy = KeepalivePolicy {
        min_time: Duration::from_millis(100),
    };
    assert_left_alone(Some(policy), Duration::from_millis(300), 6).await;
}
