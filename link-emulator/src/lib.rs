//! A userspace link emulator: a TCP proxy on loopback, in front of an upstream address, that adds
//! a one-way delay per direction, optional jitter and a bandwidth cap, as `tc qdisc ... netem`
//! would on a real interface (netem needs the `sch_netem` kernel module, absent here, and would
//! slow every process on the machine).
//!
//! - Bytes keep their order: a chunk's release time is `max(its own, the previous chunk's)`.
//! - A bandwidth cap adds serialization time (`len / rate`) after the previous chunk left.
//! - Half-close and resets cross the link in order, with the same delay: a FIN read from one side
//!   becomes a `shutdown(Write)` on the other; a reset becomes a reset (`SO_LINGER` 0, close).
//! - The TCP handshake is emulated: on loopback the client's `connect()` returns at once, so the
//!   client's first bytes are held one round trip (`to_upstream.delay + to_client.delay`), the
//!   time a real SYN / SYN-ACK exchange takes before a client can send.
//! - Memory is bounded: at most `queue_bytes` (plus one read buffer) wait per direction and
//!   connection; when full, the emulator stops reading and TCP backpressure reaches the sender.
//!
//! ```no_run
//! # async fn demo(upstream: std::net::SocketAddr) -> std::io::Result<()> {
//! use std::time::Duration;
//! let link = link_emulator::LinkEmulator::start(
//!     upstream,
//!     link_emulator::LinkConfig::symmetric_rtt(Duration::from_micros(500)),
//! )
//! .await?;
//! let address = link.local_addr(); // connect here instead of `upstream`
//! # let _ = address; Ok(()) }
//! ```
//! The emulator stops (listener and every connection) when dropped.

pub mod probe;
mod schedule;
mod timer;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

pub use schedule::{Direction, ReleaseSchedule};
use timer::PreciseTimer;

/// Largest chunk read at once.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Bookkeeping charged per queued chunk on top of its bytes, so many tiny chunks stay bounded too.
const CHUNK_OVERHEAD: usize = 64;

#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Client → upstream.
    pub to_upstream: Direction,
    /// Upstream → client.
    pub to_client: Direction,
    /// Hold the client's first bytes one round trip, as a real TCP handshake would.
    pub emulate_handshake: bool,
    /// Bytes that may wait in one direction of one connection before reading stops.
    pub queue_bytes: usize,
    /// Seed of the jitter; each connection and direction derives its own.
    pub seed: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            to_upstream: Direction::default(),
            to_client: Direction::default(),
            emulate_handshake: true,
            queue_bytes: 1024 * 1024,
            seed: 0x6c69_6e6b,
        }
    }
}

impl LinkConfig {
    /// Half of `rtt` each way, no jitter, no bandwidth cap.
    pub fn symmetric_rtt(rtt: Duration) -> Self {
        let one_way = Direction::delay(rtt / 2);
        Self {
            to_upstream: one_way,
            to_client: one_way,
            ..Self::default()
        }
    }

    /// The configured round trip (both one-way delays).
    pub fn rtt(&self) -> Duration {
        self.to_upstream.delay + self.to_client.delay
    }
}

/// Counters of one emulator.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    upstream_connect_failures: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
    resets_forwarded: AtomicU64,
    queued_bytes: AtomicUsize,
    peak_queued_bytes: AtomicUsize,
}

/// A snapshot of an emulator's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub connections: u64,
    pub upstream_connect_failures: u64,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
    pub resets_forwarded: u64,
    /// Bytes (with per-chunk overhead) waiting for release now, over all connections.
    pub queued_bytes: usize,
    /// The most that ever waited in one direction of one connection.
    pub peak_queued_bytes_per_direction: usize,
}

/// A running emulator; stops listening and drops every connection when dropped.
pub struct LinkEmulator {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    config: LinkConfig,
    counters: Arc<Counters>,
    accept_loop: JoinHandle<()>,
}

impl LinkEmulator {
    /// Listens on `127.0.0.1:0` in front of `upstream`.
    pub async fn start(upstream: SocketAddr, config: LinkConfig) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), upstream, config).await
    }

    /// Listens on `listen` (the binary's `--listen`) in front of `upstream`.
    pub async fn start_on(
        listen: SocketAddr,
        upstream: SocketAddr,
        config: LinkConfig,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let timer = PreciseTimer::start()?;
        let counters = Arc::new(Counters::default());
        let accept_loop = tokio::spawn(accept_loop(
            listener,
            upstream,
            config.clone(),
            timer,
            Arc::clone(&counters),
        ));
        Ok(Self {
            local_addr,
            upstream,
            config,
            counters,
            accept_loop,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    pub fn stats(&self) -> LinkStats {
        let c = &self.counters;
        LinkStats {
            connections: c.connections.load(Ordering::Relaxed),
            upstream_connect_failures: c.upstream_connect_failures.load(Ordering::Relaxed),
            bytes_to_upstream: c.bytes_to_upstream.load(Ordering::Relaxed),
            bytes_to_client: c.bytes_to_client.load(Ordering::Relaxed),
            resets_forwarded: c.resets_forwarded.load(Ordering::Relaxed),
            queued_bytes: c.queued_bytes.load(Ordering::Relaxed),
            peak_queued_bytes_per_direction: c.peak_queued_bytes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        // The accept loop owns the connections' JoinSet: aborting it aborts them all.
        self.accept_loop.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    config: LinkConfig,
    timer: PreciseTimer,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    let mut connection_number = 0u64;
    loop {
        let Ok((client, _peer)) = listener.accept().await else {
            // accept errors (EMFILE and the like) are transient: back off briefly
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let accepted = Instant::now();
        while connections.try_join_next().is_some() {}
        connection_number += 1;
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let seed = config
            .seed
            .wrapping_add(connection_number.wrapping_mul(0x9E37_79B9));
        connections.spawn(relay(
            client,
            accepted,
            upstream,
            config.clone(),
            seed,
            timer.clone(),
            Arc::clone(&counters),
        ));
    }
}

/// The link refused to carry on: a reset was forwarded, drop both sockets now.
struct ResetForwarded;

async fn relay(
    client: TcpStream,
    accepted: Instant,
    upstream: SocketAddr,
    config: LinkConfig,
    seed: u64,
    timer: PreciseTimer,
    counters: Arc<Counters>,
) {
    let server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(_) => {
            counters
                .upstream_connect_failures
                .fetch_add(1, Ordering::Relaxed);
            // the client sees its connection reset, as a refused connect would fail it
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut to_upstream = ReleaseSchedule::new(config.to_upstream, seed);
    let to_client = ReleaseSchedule::new(config.to_client, seed ^ 0x5555_5555_5555_5555);
    if config.emulate_handshake {
        to_upstream.hold_until(accepted + config.rtt());
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let forward = Pump {
        schedule: to_upstream,
        queue_bytes: config.queue_bytes,
        timer: timer.clone(),
        counters: Arc::clone(&counters),
        bytes: Side::ToUpstream,
    };
    let backward = Pump {
        schedule: to_client,
        queue_bytes: config.queue_bytes,
        timer,
        counters,
        bytes: Side::ToClient,
    };
    // A forwarded reset ends both directions at once (dropping every half closes both sockets).
    let _ = tokio::try_join!(
        forward.run(client_read, server_write),
        backward.run(server_read, client_write)
    );
}

#[derive(Clone, Copy)]
enum Side {
    ToUpstream,
    ToClient,
}

enum Segment {
    Data(Vec<u8>),
    Fin,
    Reset,
}

struct Timed {
    release: Instant,
    segment: Segment,
    _queued: Queued,
}

/// One chunk's share of the queue: its bytes stay counted (and its permit held) until dropped.
struct Queued {
    bytes: usize,
    _permit: tokio::sync::OwnedSemaphorePermit,
    direction: Arc<AtomicUsize>,
    counters: Arc<Counters>,
}

impl Queued {
    fn new(
        bytes: usize,
        permit: tokio::sync::OwnedSemaphorePermit,
        direction: Arc<AtomicUsize>,
        counters: Arc<Counters>,
    ) -> Self {
        let now = direction.fetch_add(bytes, Ordering::Relaxed) + bytes;
        counters.peak_queued_bytes.fetch_max(now, Ordering::Relaxed);
        counters.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        Self {
            bytes,
            _permit: permit,
            direction,
            counters,
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.direction.fetch_sub(self.bytes, Ordering::Relaxed);
        self.counters
            .queued_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

struct Pump {
    schedule: ReleaseSchedule,
    queue_bytes: usize,
    timer: PreciseTimer,
    counters: Arc<Counters>,
    bytes: Side,
}

impl Pump {
    async fn run(
        self,
        mut src: OwnedReadHalf,
        mut dst: OwnedWriteHalf,
    ) -> Result<(), ResetForwarded> {
        let Pump {
            mut schedule,
            queue_bytes,
            timer,
            counters,
            bytes,
        } = self;
        let per_read = CHUNK_BYTES + CHUNK_OVERHEAD;
        let budget = Arc::new(Semaphore::new(queue_bytes.max(per_read)));
        let direction_queued = Arc::new(AtomicUsize::new(0));
        let (queue, mut released) = mpsc::unbounded_channel::<Timed>();
        let reader_counters = Arc::clone(&counters);
        let reader = async move {
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                // Reserve a full read before reading: when the queue is full, reading stops.
                let Ok(mut permit) = Arc::clone(&budget)
                    .acquire_many_owned(per_read as u32)
                    .await
                else {
                    return;
                };
                let read = tokio::select! {
                    read = src.read(&mut buf) => read,
                    () = queue.closed() => return,
                };
                let arrived = Instant::now();
                let segment = match read {
                    Ok(0) => Segment::Fin,
                    Ok(n) => Segment::Data(buf[..n].to_vec()),
                    Err(_) => Segment::Reset,
                };
                let len = match &segment {
                    Segment::Data(data) => data.len(),
                    Segment::Fin | Segment::Reset => 0,
                };
                let queued = len + CHUNK_OVERHEAD;
                drop(permit.split(per_read - queued));
                let last = !matches!(segment, Segment::Data(_));
                let timed = Timed {
                    release: schedule.release_at(arrived, len),
                    segment,
                    _queued: Queued::new(
                        queued,
                        permit,
                        Arc::clone(&direction_queued),
                        Arc::clone(&reader_counters),
                    ),
                };
                if queue.send(timed).is_err() || last {
                    return;
                }
            }
        };
        let writer = async move {
            while let Some(timed) = released.recv().await {
                timer.sleep_until(timed.release).await;
                match timed.segment {
                    Segment::Data(data) => {
                        if dst.write_all(&data).await.is_err() {
                            // the far side is gone; its reader forwards that the other way
                            return Ok(());
                        }
                        let total = match bytes {
                            Side::ToUpstream => &counters.bytes_to_upstream,
                            Side::ToClient => &counters.bytes_to_client,
                        };
                        total.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    Segment::Fin => {
                        let _ = dst.shutdown().await;
                        return Ok(());
                    }
                    Segment::Reset => {
                        counters.resets_forwarded.fetch_add(1, Ordering::Relaxed);
                        let _ = dst.as_ref().set_zero_linger();
                        // no FIN on drop: the socket closes (with RST) when its read half goes
                        dst.forget();
                        return Err(ResetForwarded);
                    }
                }
            }
            Ok(())
        };
        tokio::join!(reader, writer).1
    }
}
