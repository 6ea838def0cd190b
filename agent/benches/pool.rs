//! Lease pool benchmark against the fake engine proxy on loopback. Prints figures, asserts nothing.
//!
//! cargo bench -p longhorn-guard-agent --bench pool -- [--calls N] [--connect-calls N]
//!     [--soak N] [--concurrency C]
//!
//! 1. Plaintext instance manager (Longhorn's default: no `longhorn-grpc-tls` Secret on the IM):
//!    pooled SnapshotList calls vs
//!    - the v1.7.2 pattern (primary baseline): per call, a new client exactly as
//!      `NewEngineClientProxy` builds it when the manager has Longhorn's TLS files: mTLS +
//!      health check (fails against the plaintext IM) → close → plaintext + health check → call
//!      → close;
//!    - plaintext connect + health check + call per call (the same without TLS files);
//!    - plain connect-per-call (dial, call, close: no health check, no TLS attempt).
//! 2. TLS instance manager (Longhorn's TLS files on both sides): pooled mTLS vs mTLS per call
//!    (TLS 1.3 handshake + health check + call, then close).
//!    Also the ceiling: one raw tonic channel shared by every caller, no pool (the pool's cost).
//! 3. Soak: N calls with ~30 % injected faults; fds, channels, tasks and RSS before / after.
//!
//! Per-call clients are dropped after their call so the machine survives (v1.7.2 leaked them).
//!
//! With `--rtt-ms 0.1,0.5,1` (and `--rtt-calls N`, `--rtt-connect-calls N`), instead: for each
//! round trip, the link emulator (`link-emulator`: half the RTT each way, the TCP handshake's
//! round trip included) between the agent and a fresh fake engine, and in one run per RTT:
//! pooled vs the raw shared channel vs the v1.7.2 pattern, clients closed and leaking, on a
//! plaintext instance manager, then pooled mTLS vs mTLS per call on a TLS one; the RTT achieved
//! through the emulator (ping-pong) is printed with each. Ends with a Markdown table; `--svg PATH`
//! also writes calls/s against RTT as a plot.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fake_engine::{
    EngineSpec, FakeEngine, FakeTls, Fault, LONGHORN_PEER_NAME, Method, SnapshotSpec,
};
use longhorn_guard_agent::connect::open_unpooled_channel;
use longhorn_guard_agent::metrics::{process_open_fds, process_resident_memory_bytes};
use longhorn_guard_agent::{EngineClient, EngineTarget, LeasePool, PoolConfig, PoolMetrics};
use longhorn_guard_proto::imrpc::proxy_engine_service_client::ProxyEngineServiceClient;
use tonic::transport::Endpoint;

struct Args {
    calls: usize,
    connect_calls: usize,
    soak: usize,
    concurrency: usize,
}

fn args() -> Args {
    Args {
        calls: common::flag("--calls").unwrap_or(50_000),
        connect_calls: common::flag("--connect-calls").unwrap_or(5_000),
        soak: common::flag("--soak").unwrap_or(200_000),
        concurrency: common::flag("--concurrency").unwrap_or(16),
    }
}

fn rss_mib() -> f64 {
    process_resident_memory_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

/// Runs `calls` invocations of `one` with `concurrency` workers; returns (elapsed, failures).
async fn drive<F, Fut>(calls: usize, concurrency: usize, one: F) -> (Duration, usize)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let one = Arc::new(one);
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (one, next, failures) = (Arc::clone(&one), Arc::clone(&next), Arc::clone(&failures));
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    return;
                }
                if !one(i).await {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    (started.elapsed(), failures.load(Ordering::Relaxed))
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match common::flag::<String>("--rtt-ms") {
        Some(list) => {
            let rtts = list
                .split(',')
                .map(|ms| {
                    ms.trim()
                        .parse::<f64>()
                        .ok()
                        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
                        .ok_or_else(|| {
                            anyhow::anyhow!("--rtt-ms {list}: {ms:?} is not milliseconds")
                        })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            runtime.block_on(bench_rtt(&rtts))
        }
        None => runtime.block_on(bench(args())),
    }
}

fn new_fake() -> FakeEngine {
    let fake = FakeEngine::new();
    fake.add_engine(EngineSpec {
        address: ENGINE_ADDRESS.into(),
        engine_name: "pvc-1-e-0".into(),
        volume_name: "pvc-1".into(),
    });
    fake.set_snapshots(
        ENGINE_ADDRESS,
        (0..8)
            .map(|i| SnapshotSpec {
                name: format!("snap-{i}"),
                user_created: true,
                size: 4096,
                ..SnapshotSpec::default()
            })
            .collect(),
    );
    fake
}

const ENGINE_ADDRESS: &str = "10.42.1.17:10010";

fn target_for(endpoint: &str) -> EngineTarget {
    EngineTarget {
        proxy_endpoint: endpoint.to_string(),
        instance_manager: "im-bench".into(),
        node: "node-1".into(),
        engine_name: "pvc-1-e-0".into(),
        volume_name: "pvc-1".into(),
        engine_address: ENGINE_ADDRESS.into(),
        data_engine: "v1".into(),
    }
}

/// Longhorn's `/tls-files/` (one CA, one certificate named `longhorn-backend.longhorn-system`
/// used by both sides, as the `longhorn-grpc-tls` Secret), in a fresh temp directory.
fn longhorn_tls_files() -> anyhow::Result<std::path::PathBuf> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("longhorn-guard-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert =
        CertificateParams::new(vec![LONGHORN_PEER_NAME.to_string()])?.signed_by(&key, &ca)?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(dir)
}

/// A fake engine served over TLS as an instance manager with Longhorn's files in `tls_dir`.
async fn tls_fake_engine(
    tls_dir: &std::path::Path,
) -> anyhow::Result<(FakeEngine, fake_engine::RunningServer)> {
    let fake = new_fake();
    let server = fake_engine::serve_tls(
        fake.clone(),
        "127.0.0.1:0".parse()?,
        &FakeTls::longhorn_dir(tls_dir),
    )
    .await?;
    Ok((fake, server))
}

/// Takes the clients the leaking baseline held (they close when the returned Vec is dropped).
fn take_leaked() -> Vec<tonic::transport::Channel> {
    LEAKED
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default()
}

fn bench_pool_config() -> PoolConfig {
    PoolConfig {
        max_leases_per_endpoint: 32,
        max_channels_per_endpoint: 2,
        idle_timeout: Duration::from_millis(500),
        reap_interval: Duration::from_millis(100),
        // Every call here asks for at most 5 s; the leak sweep flags a lease 1 s past its
        // deadline and a channel alive 6 s after the pool closed it.
        max_lease: Duration::from_secs(5),
        leak_grace: Duration::from_secs(1),
        breaker_failure_threshold: 64,
        breaker_cool_down: Duration::from_millis(20),
        ..PoolConfig::default()
    }
}

/// `calls` SnapshotList calls through `client`; returns calls/s and failures.
async fn run_pooled(
    client: &EngineClient,
    target: &EngineTarget,
    calls: usize,
    c: usize,
) -> (f64, usize) {
    let (client, target) = (client.clone(), target.clone());
    let (elapsed, failed) = drive(calls, c, move |_| {
        let (client, target) = (client.clone(), target.clone());
        async move {
            client
                .snapshot_list(
                    &target,
                    tokio::time::Instant::now() + Duration::from_secs(5),
                )
                .await
                .is_ok()
        }
    })
    .await;
    (calls as f64 / elapsed.as_secs_f64(), failed)
}

/// How a per-call client is opened.
#[derive(Clone, Copy)]
enum PerCall {
    /// `Endpoint::connect`, the call, close: no health check, no TLS attempt.
    PlainConnect,
    /// As longhorn-manager's `NewEngineClientProxy` with `config`'s TLS directory: mTLS + health
    /// check when TLS files are there, on failure plaintext + health check; then the call.
    LonghornManager,
    /// The same, and the client is never closed (v1.7.2's error paths): kept in `LEAKED` until
    /// the phase ends.
    LonghornManagerLeaking,
}

/// The clients the leaking baseline never closes (dropped after its phase).
static LEAKED: std::sync::Mutex<Vec<tonic::transport::Channel>> = std::sync::Mutex::new(Vec::new());

async fn run_per_call(
    mode: PerCall,
    endpoint: &str,
    config: &PoolConfig,
    target: &EngineTarget,
    calls: usize,
    c: usize,
) -> (f64, usize) {
    let (endpoint, config, request) =
        (endpoint.to_string(), config.clone(), target.proxy_request());
    let (elapsed, failed) = drive(calls, c, move |_| {
        let (endpoint, config, request) = (endpoint.clone(), config.clone(), request.clone());
        async move {
            let channel = match mode {
                PerCall::PlainConnect => {
                    let Ok(built) = Endpoint::from_shared(format!("http://{endpoint}")) else {
                        return false;
                    };
                    match built.connect().await {
                        Ok(channel) => channel,
                        Err(_) => return false,
                    }
                }
                PerCall::LonghornManager | PerCall::LonghornManagerLeaking => {
                    match open_unpooled_channel(&endpoint, &config).await {
                        Ok(dialed) => dialed.channel,
                        Err(_) => return false,
                    }
                }
            };
            if let (PerCall::LonghornManagerLeaking, Ok(mut leaked)) = (mode, LEAKED.lock()) {
                leaked.push(channel.clone());
            }
            // The channel is dropped (closed) when this returns.
            snapshot_list_on(channel, request).await
        }
    })
    .await;
    (calls as f64 / elapsed.as_secs_f64(), failed)
}

/// One SnapshotList through `channel` with a 5 s timeout; true when it succeeded.
async fn snapshot_list_on(
    channel: tonic::transport::Channel,
    request: longhorn_guard_proto::imrpc::ProxyEngineRequest,
) -> bool {
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(5));
    ProxyEngineServiceClient::new(channel)
        .snapshot_list(request)
        .await
        .is_ok()
}

/// The ceiling: one tonic channel dialled once and shared by every caller, no pool (no lease,
/// breaker, metrics or deadline bookkeeping). `pooled / this` is the pool's own cost.
async fn run_raw_reused(
    endpoint: &str,
    target: &EngineTarget,
    calls: usize,
    c: usize,
) -> (f64, usize) {
    let Ok(channel) = Endpoint::from_shared(format!("http://{endpoint}")) else {
        return (0.0, calls);
    };
    let Ok(channel) = channel.connect().await else {
        return (0.0, calls);
    };
    let request = target.proxy_request();
    let (elapsed, failed) = drive(calls, c, move |_| {
        let (channel, request) = (channel.clone(), request.clone());
        async move { snapshot_list_on(channel, request).await }
    })
    .await;
    (calls as f64 / elapsed.as_secs_f64(), failed)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let c = args.concurrency;
    let tls_dir = longhorn_tls_files()?;
    let fake = new_fake();
    let server = fake_engine::serve(fake.clone(), "127.0.0.1:0".parse()?).await?;
    let endpoint = server.local_addr.to_string();
    let target = target_for(&endpoint);
    let pool = LeasePool::new(bench_pool_config(), Arc::new(PoolMetrics::new()))?;
    let client = EngineClient::new(pool.clone());
    println!(
        "machine: {} cores; concurrency {c}; plaintext fake engine on {endpoint}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("RSS at start: {:.1} MiB", rss_mib());

    // Warm-up.
    run_pooled(&client, &target, 1_000, c).await;

    println!("--- plaintext instance manager (no longhorn-grpc-tls on the IM) ---");
    let (pooled_rate, failed) = run_pooled(&client, &target, args.calls, c).await;
    println!(
        "pooled:                                  {:>7} calls = {pooled_rate:>8.0} calls/s ({failed} failed); channels opened {}; RSS {:.1} MiB",
        args.calls,
        pool.book().channels_created,
        rss_mib()
    );
    let (raw_rate, failed) = run_raw_reused(&endpoint, &target, args.calls, c).await;
    println!(
        "raw tonic channel, reused, no pool:      {:>7} calls = {raw_rate:>8.0} calls/s ({failed} failed); pooled / raw: {:.2}x",
        args.calls,
        pooled_rate / raw_rate
    );
    let with_tls_files = PoolConfig {
        longhorn_tls_dir: Some(tls_dir.clone()),
        ..bench_pool_config()
    };
    let baselines = [
        (
            "v1.7.2 pattern (mTLS+health fails, plaintext+health, call)",
            PerCall::LonghornManager,
            &with_tls_files,
        ),
        (
            "plaintext connect+health+call per call",
            PerCall::LonghornManager,
            &bench_pool_config(),
        ),
        (
            "plain connect+call per call",
            PerCall::PlainConnect,
            &bench_pool_config(),
        ),
        // Last: the glibc heap it grows is not returned, so later RSS figures include it.
        (
            "v1.7.2 pattern, leaking (clients never closed, as on its error paths)",
            PerCall::LonghornManagerLeaking,
            &with_tls_files,
        ),
    ];
    for (name, mode, config) in baselines {
        let before = fake.stats().total_connections;
        let (rate, failed) =
            run_per_call(mode, &endpoint, config, &target, args.connect_calls, c).await;
        let leaked = take_leaked();
        let held = if leaked.is_empty() {
            String::new()
        } else {
            format!(
                "; clients held open {}, process fds {}",
                leaked.len(),
                process_open_fds().unwrap_or(0)
            )
        };
        println!(
            "{name}: {} calls = {rate:.0} calls/s ({failed} failed); connections opened {}; RSS {:.1} MiB{held}; ratio pooled / this: {:.1}x",
            args.connect_calls,
            fake.stats().total_connections - before,
            rss_mib(),
            pooled_rate / rate
        );
        drop(leaked);
    }

    println!("--- TLS instance manager (longhorn-grpc-tls on both sides) ---");
    let (tls_fake, tls_server) = tls_fake_engine(&tls_dir).await?;
    let tls_endpoint = tls_server.local_addr.to_string();
    let tls_target = target_for(&tls_endpoint);
    let tls_pool = LeasePool::new(with_tls_files.clone(), Arc::new(PoolMetrics::new()))?;
    let tls_client = EngineClient::new(tls_pool.clone());
    run_pooled(&tls_client, &tls_target, 1_000, c).await;
    let (tls_pooled_rate, failed) = run_pooled(&tls_client, &tls_target, args.calls, c).await;
    println!(
        "pooled mTLS:                             {:>7} calls = {tls_pooled_rate:>8.0} calls/s ({failed} failed); TLS handshakes {}; RSS {:.1} MiB",
        args.calls,
        tls_fake.stats().tls_connections,
        rss_mib()
    );
    let handshakes = tls_fake.stats().tls_connections;
    let (rate, failed) = run_per_call(
        PerCall::LonghornManager,
        &tls_endpoint,
        &with_tls_files,
        &tls_target,
        args.connect_calls,
        c,
    )
    .await;
    println!(
        "mTLS+health+call per call (v1.7.2 with TLS on the IM): {} calls = {rate:.0} calls/s ({failed} failed); TLS handshakes {}; RSS {:.1} MiB; ratio pooled mTLS / this: {:.1}x",
        args.connect_calls,
        tls_fake.stats().tls_connections - handshakes,
        rss_mib(),
        tls_pooled_rate / rate
    );
    tls_pool.shutdown();
    tls_server.shutdown().await;
    let _ = std::fs::remove_dir_all(&tls_dir);

    // Let the per-call connections and pooled channels close, then take the soak baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let handle = tokio::runtime::Handle::current().metrics();
    let fds0 = process_open_fds().unwrap_or(0);
    let tasks0 = handle.num_alive_tasks();
    let channels0 = pool.open_channels();
    let rss0 = rss_mib();
    let sweeps0 = pool.book().leak_sweeps;

    // 2. soak with ~30 % faults
    let p = |fault: Fault| Fault::Probabilistic {
        probability: 0.3,
        fault: Box::new(fault),
    };
    fake.set_fault(
        Method::SnapshotList,
        p(Fault::Error {
            code: tonic::Code::Internal,
            message: "BUG: cannot get snapshot info".into(),
        }),
    );
    fake.set_fault(Method::VolumeGet, p(Fault::Reset));
    fake.set_fault(
        Method::ServerVersionGet,
        p(Fault::RandomDelay {
            min: Duration::from_millis(1),
            max: Duration::from_millis(40),
        }),
    );
    let (soak, soak_failed) = {
        let (client, target) = (client.clone(), target.clone());
        drive(args.soak, c, move |i| {
            let (client, target) = (client.clone(), target.clone());
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
                let result = match i % 3 {
                    0 => client.snapshot_list(&target, deadline).await.map(drop),
                    1 => client.volume_get(&target, deadline).await.map(drop),
                    _ => client.server_version_get(&target, deadline).await.map(drop),
                };
                if let Err(status) = &result
                    && status.message().contains("circuit open")
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                result.is_ok()
            }
        })
        .await
    };
    fake.clear_faults();
    let rss_peak = rss_mib();
    let book = pool.book();
    println!(
        "soak: {} calls in {:.2?} = {:.0} calls/s, {soak_failed} failed ({:.1} %)",
        args.soak,
        soak,
        args.soak as f64 / soak.as_secs_f64(),
        100.0 * soak_failed as f64 / args.soak as f64
    );
    println!(
        "soak book: leases acquired {} released {} (ok {} error {} deadline {} cancelled {} panic {}), overflow {}, channels created {} closed {} (transport_error {})",
        book.leases_acquired,
        book.leases_released,
        book.released(longhorn_guard_agent::metrics::LeaseOutcome::Ok),
        book.released(longhorn_guard_agent::metrics::LeaseOutcome::Error),
        book.released(longhorn_guard_agent::metrics::LeaseOutcome::Deadline),
        book.released(longhorn_guard_agent::metrics::LeaseOutcome::Cancelled),
        book.released(longhorn_guard_agent::metrics::LeaseOutcome::Panic),
        book.lease_wait_overflow,
        book.channels_created,
        book.channels_closed,
        book.closed(longhorn_guard_agent::metrics::CloseReason::TransportError),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let book = pool.sweep_leaks();
    println!(
        "soak before -> after (2 s settle): fds {fds0} -> {}, channels {channels0} -> {}, tasks {tasks0} -> {}, RSS {rss0:.1} -> {:.1} MiB (right after the soak {rss_peak:.1} MiB)",
        process_open_fds().unwrap_or(0),
        pool.open_channels(),
        handle.num_alive_tasks(),
        rss_mib(),
    );
    println!(
        "soak leak sweep: {} sweeps during the soak and settle; found leaked: {} leases, {} channels (ever); at the end {} leaked leases, {} leaked channels, {} leases active, {} channels alive (pool-held {})",
        book.leak_sweeps - sweeps0,
        book.leaked_leases_detected,
        book.leaked_channels_detected,
        book.leaked_leases,
        book.leaked_channels,
        book.leases_active,
        pool.channels_alive(),
        pool.open_channels(),
    );
    pool.shutdown();
    server.shutdown().await;
    Ok(())
}

/// One RTT's figures (calls/s).
struct RttRow {
    rtt: Duration,
    measured_p50: Duration,
    pooled: f64,
    raw: f64,
    closed: f64,
    leaking: f64,
    pooled_tls: f64,
    per_call_tls: f64,
}

/// The pool bench with the link emulator between the agent and the fake engine, per RTT.
async fn bench_rtt(rtts: &[Duration]) -> anyhow::Result<()> {
    use link_emulator::{LinkConfig, LinkEmulator, probe};
    let calls: usize = common::flag("--rtt-calls").unwrap_or(20_000);
    let connect_calls: usize = common::flag("--rtt-connect-calls").unwrap_or(2_000);
    let c: usize = common::flag("--concurrency").unwrap_or(16);
    let tls_dir = longhorn_tls_files()?;
    let with_tls_files = PoolConfig {
        longhorn_tls_dir: Some(tls_dir.clone()),
        ..bench_pool_config()
    };
    let echo = probe::echo_server().await?;
    println!(
        "machine: {} cores, load {}; concurrency {c}; {calls} pooled / raw calls, {connect_calls} per-call calls",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let mut rows = Vec::new();
    for &rtt in rtts {
        let ms = rtt.as_secs_f64() * 1000.0;
        let link_config = LinkConfig::symmetric_rtt(rtt);
        let echo_link = LinkEmulator::start(echo.local_addr(), link_config.clone()).await?;
        let measured = probe::ping_pong(echo_link.local_addr(), 64, 50, 500).await?;
        drop(echo_link);
        println!(
            "=== configured RTT {ms:.2} ms; measured through the emulator: {} ===",
            measured.summary_ms()
        );

        let fake = new_fake();
        let server = fake_engine::serve(fake.clone(), "127.0.0.1:0".parse()?).await?;
        let link = LinkEmulator::start(server.local_addr, link_config.clone()).await?;
        let endpoint = link.local_addr().to_string();
        let target = target_for(&endpoint);
        let pool = LeasePool::new(bench_pool_config(), Arc::new(PoolMetrics::new()))?;
        let client = EngineClient::new(pool.clone());
        run_pooled(&client, &target, 500, c).await;
        let (pooled, failed) = run_pooled(&client, &target, calls, c).await;
        println!(
            "pooled:                          {pooled:>8.0} calls/s ({failed} failed); channels opened {}",
            pool.book().channels_created
        );
        let (raw, failed) = run_raw_reused(&endpoint, &target, calls, c).await;
        println!(
            "raw shared tonic channel:        {raw:>8.0} calls/s ({failed} failed); pooled / raw {:.2}x",
            pooled / raw
        );
        let mut per_call = Vec::new();
        for (name, mode) in [
            ("v1.7.2 pattern, clients closed: ", PerCall::LonghornManager),
            (
                "v1.7.2 pattern, leaking:        ",
                PerCall::LonghornManagerLeaking,
            ),
        ] {
            let before = fake.stats().total_connections;
            let (rate, failed) =
                run_per_call(mode, &endpoint, &with_tls_files, &target, connect_calls, c).await;
            let leaked = take_leaked();
            println!(
                "{name}{rate:>8.0} calls/s ({failed} failed); connections {}; clients held open {}; RSS {:.1} MiB; pooled / this {:.1}x",
                fake.stats().total_connections - before,
                leaked.len(),
                rss_mib(),
                pooled / rate
            );
            drop(leaked);
            per_call.push(rate);
        }
        pool.shutdown();
        drop(link);
        server.shutdown().await;

        let (tls_fake, tls_server) = tls_fake_engine(&tls_dir).await?;
        let tls_link = LinkEmulator::start(tls_server.local_addr, link_config).await?;
        let tls_endpoint = tls_link.local_addr().to_string();
        let tls_target = target_for(&tls_endpoint);
        let tls_pool = LeasePool::new(with_tls_files.clone(), Arc::new(PoolMetrics::new()))?;
        let tls_client = EngineClient::new(tls_pool.clone());
        run_pooled(&tls_client, &tls_target, 500, c).await;
        let (pooled_tls, failed) = run_pooled(&tls_client, &tls_target, calls, c).await;
        println!(
            "pooled mTLS (TLS IM):            {pooled_tls:>8.0} calls/s ({failed} failed); TLS handshakes {}",
            tls_fake.stats().tls_connections
        );
        let (per_call_tls, failed) = run_per_call(
            PerCall::LonghornManager,
            &tls_endpoint,
            &with_tls_files,
            &tls_target,
            connect_calls,
            c,
        )
        .await;
        println!(
            "mTLS+health+call per call:       {per_call_tls:>8.0} calls/s ({failed} failed); pooled mTLS / this {:.1}x",
            pooled_tls / per_call_tls
        );
        tls_pool.shutdown();
        drop(tls_link);
        tls_server.shutdown().await;
        rows.push(RttRow {
            rtt,
            measured_p50: measured.quantile(0.5),
            pooled,
            raw,
            closed: per_call[0],
            leaking: per_call[1],
            pooled_tls,
            per_call_tls,
        });
    }
    let _ = std::fs::remove_dir_all(&tls_dir);
    println!();
    println!(
        "| RTT configured (measured p50) | pooled | raw shared channel | pooled / raw | v1.7.2 closed | pooled / closed | v1.7.2 leaking | pooled / leaking | pooled mTLS, TLS IM | mTLS per call | pooled mTLS / per call |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {:.2} ms ({:.3} ms) | {:.0} | {:.0} | {:.2}x | {:.0} | **{:.1}x** | {:.0} | {:.1}x | {:.0} | {:.0} | {:.1}x |",
            r.rtt.as_secs_f64() * 1000.0,
            r.measured_p50.as_secs_f64() * 1000.0,
            r.pooled,
            r.raw,
            r.pooled / r.raw,
            r.closed,
            r.pooled / r.closed,
            r.leaking,
            r.pooled / r.leaking,
            r.pooled_tls,
            r.per_call_tls,
            r.pooled_tls / r.per_call_tls
        );
    }
    if let Some(path) = common::flag::<String>("--svg") {
        std::fs::write(&path, rtt_svg(&rows, c))
            .map_err(|e| anyhow::anyhow!("writing the plot {path}: {e}"))?;
        println!("plot written to {path}");
    }
    Ok(())
}

/// A plotted line: name, colour, value.
type Series = (&'static str, &'static str, fn(&RttRow) -> f64);

/// calls/s against RTT, one line per pattern, as a dependency-free SVG.
fn rtt_svg(rows: &[RttRow], callers: usize) -> String {
    let series: [Series; 6] = [
        ("pooled (plaintext IM)", "#1f77b4", |r| r.pooled),
        ("raw shared channel (plaintext IM)", "#17becf", |r| r.raw),
        ("v1.7.2 pattern, clients closed", "#d62728", |r| r.closed),
        ("v1.7.2 pattern, leaking", "#ff7f0e", |r| r.leaking),
        ("pooled mTLS (TLS IM)", "#2ca02c", |r| r.pooled_tls),
        ("mTLS per call (TLS IM)", "#9467bd", |r| r.per_call_tls),
    ];
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 250.0, 30.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let x_max = rows
        .iter()
        .map(|r| r.rtt.as_secs_f64() * 1000.0)
        .fold(0.0, f64::max)
        .max(0.1);
    let y_top = rows
        .iter()
        .flat_map(|r| series.iter().map(move |(_, _, f)| f(r)))
        .fold(0.0, f64::max);
    let step = 10f64.powf((y_top.max(1.0) / 5.0).log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * step)
        .find(|s| y_top / s <= 6.0)
        .unwrap_or(step * 10.0);
    let y_max = (y_top / step).ceil() * step;
    let x = |ms: f64| left + pw * ms / x_max;
    let y = |v: f64| top + ph * (1.0 - v / y_max);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\" font-size=\"14\">Agent pool through the link emulator: SnapshotList calls/s against RTT ({callers} callers)</text>\n"
    );
    let mut tick = 0.0;
    while tick <= y_max + step / 2.0 {
        svg += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick:.0}</text>\n",
            left + pw,
            left - 6.0,
            y(tick) + 4.0,
            y0 = y(tick)
        );
        tick += step;
    }
    for r in rows {
        let ms = r.rtt.as_secs_f64() * 1000.0;
        svg += &format!(
            "<line x1=\"{x0:.1}\" x2=\"{x0:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{x0:.1}\" y=\"{}\" text-anchor=\"middle\">{ms}</text>\n",
            top + ph,
            top + ph + 18.0,
            x0 = x(ms)
        );
    }
    svg += &format!(
        "<line x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{left}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">configured round trip (ms)</text>\n<text transform=\"translate(16 {}) rotate(-90)\" text-anchor=\"middle\">calls/s</text>\n",
        top + ph,
        left + pw,
        top + ph,
        top + ph,
        left + pw / 2.0,
        h - 10.0,
        top + ph / 2.0
    );
    for (i, (name, colour, value)) in series.iter().enumerate() {
        let points: Vec<String> = rows
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.rtt.as_secs_f64() * 1000.0), y(value(r))))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            svg += &format!("<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{colour}\"/>\n");
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        svg += &format!(
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            left + pw + 12.0,
            left + pw + 32.0,
            left + pw + 38.0,
            ly + 4.0
        );
    }
    svg + "</svg>\n"
}
