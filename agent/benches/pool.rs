//! Lease pool benchmark against the fake engine proxy on loopback. Prints figures, asserts nothing.
//!
//! cargo bench -p longhorn-guard-agent --bench pool -- [--calls N] [--connect-calls N]
//!     [--soak N] [--concurrency C]
//!
//! 1. Pooled SnapshotList calls vs connect-per-call (a new tonic Channel per call, never reused,
//!    as longhorn-manager v1.7.2 does — but dropped after the call so the machine survives).
//! 2. Soak: N calls with ~30 % injected faults; fds, channels, tasks and RSS before / after.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fake_engine::{EngineSpec, FakeEngine, Fault, Method, SnapshotSpec};
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
    let mut parsed = Args {
        calls: 50_000,
        connect_calls: 5_000,
        soak: 200_000,
        concurrency: 16,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).and_then(|v| v.parse().ok());
        match (argv[i].as_str(), value) {
            ("--calls", Some(v)) => parsed.calls = v,
            ("--connect-calls", Some(v)) => parsed.connect_calls = v,
            ("--soak", Some(v)) => parsed.soak = v,
            ("--concurrency", Some(v)) => parsed.concurrency = v,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    parsed
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
    runtime.block_on(bench(args()))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let fake = FakeEngine::new();
    let address = "10.42.1.17:10010";
    fake.add_engine(EngineSpec {
        address: address.into(),
        engine_name: "pvc-1-e-0".into(),
        volume_name: "pvc-1".into(),
    });
    fake.set_snapshots(
        address,
        (0..8)
            .map(|i| SnapshotSpec {
                name: format!("snap-{i}"),
                user_created: true,
                size: 4096,
                ..SnapshotSpec::default()
            })
            .collect(),
    );
    let server = fake_engine::serve(fake.clone(), "127.0.0.1:0".parse()?).await?;
    let endpoint = server.local_addr.to_string();
    let target = EngineTarget {
        proxy_endpoint: endpoint.clone(),
        instance_manager: "im-bench".into(),
        node: "node-1".into(),
        engine_name: "pvc-1-e-0".into(),
        volume_name: "pvc-1".into(),
        engine_address: address.into(),
        data_engine: "v1".into(),
    };
    let config = PoolConfig {
        max_leases_per_endpoint: 32,
        max_channels_per_endpoint: 2,
        idle_timeout: Duration::from_millis(500),
        reap_interval: Duration::from_millis(100),
        breaker_failure_threshold: 64,
        breaker_cool_down: Duration::from_millis(20),
        ..PoolConfig::default()
    };
    let pool = LeasePool::new(config, Arc::new(PoolMetrics::new()))?;
    let client = EngineClient::new(pool.clone());
    let c = args.concurrency;
    println!(
        "machine: {} cores; concurrency {c}; fake engine on {endpoint}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("RSS at start: {:.1} MiB", rss_mib());

    // Warm-up.
    {
        let (client, target) = (client.clone(), target.clone());
        drive(1_000, c, move |_| {
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
    }

    // 1a. pooled
    let (pooled, pooled_failed) = {
        let (client, target) = (client.clone(), target.clone());
        drive(args.calls, c, move |_| {
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
        .await
    };
    let pooled_rate = args.calls as f64 / pooled.as_secs_f64();
    println!(
        "pooled:           {} calls in {:.2?} = {:.0} calls/s ({pooled_failed} failed); channels opened {}; RSS {:.1} MiB",
        args.calls,
        pooled,
        pooled_rate,
        pool.book().channels_created,
        rss_mib()
    );

    // 1b. connect per call
    let connections_before = fake.stats().total_connections;
    let (per_call, per_call_failed) = {
        let (endpoint, target) = (endpoint.clone(), target.clone());
        drive(args.connect_calls, c, move |_| {
            let (endpoint, request) = (endpoint.clone(), target.proxy_request());
            async move {
                let Ok(built) = Endpoint::from_shared(format!("http://{endpoint}")) else {
                    return false;
                };
                let Ok(channel) = built.connect().await else {
                    return false;
                };
                let mut request = tonic::Request::new(request);
                request.set_timeout(Duration::from_secs(5));
                // The channel is dropped (closed) when this returns.
                ProxyEngineServiceClient::new(channel)
                    .snapshot_list(request)
                    .await
                    .is_ok()
            }
        })
        .await
    };
    let per_call_rate = args.connect_calls as f64 / per_call.as_secs_f64();
    println!(
        "connect-per-call: {} calls in {:.2?} = {:.0} calls/s ({per_call_failed} failed); connections opened {}; RSS {:.1} MiB",
        args.connect_calls,
        per_call,
        per_call_rate,
        fake.stats().total_connections - connections_before,
        rss_mib()
    );
    println!(
        "ratio pooled / connect-per-call: {:.1}x",
        pooled_rate / per_call_rate
    );

    // 1c. connect per call exactly as longhorn-manager's NewEngineClientProxy: dial, health
    // check, then the call.
    let (per_call_health, _) = {
        let (endpoint, target) = (endpoint.clone(), target.clone());
        drive(args.connect_calls, c, move |_| {
            let (endpoint, request) = (endpoint.clone(), target.proxy_request());
            async move {
                let Ok(built) = Endpoint::from_shared(format!("http://{endpoint}")) else {
                    return false;
                };
                let Ok(channel) = built.connect().await else {
                    return false;
                };
                let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await;
                if health.is_err() {
                    return false;
                }
                ProxyEngineServiceClient::new(channel)
                    .snapshot_list(tonic::Request::new(request))
                    .await
                    .is_ok()
            }
        })
        .await
    };
    let per_call_health_rate = args.connect_calls as f64 / per_call_health.as_secs_f64();
    println!(
        "connect+health-check-per-call (longhorn-manager v1.7.2 pattern): {} calls in {:.2?} = {:.0} calls/s; ratio pooled / this: {:.1}x",
        args.connect_calls,
        per_call_health,
        per_call_health_rate,
        pooled_rate / per_call_health_rate
    );

    // Let the per-call connections and pooled channels close, then take the soak baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let handle = tokio::runtime::Handle::current().metrics();
    let fds0 = process_open_fds().unwrap_or(0);
    let tasks0 = handle.num_alive_tasks();
    let channels0 = pool.open_channels();
    let rss0 = rss_mib();

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
    let book = pool.book();
    println!(
        "soak before -> after (2 s settle): fds {fds0} -> {}, channels {channels0} -> {}, tasks {tasks0} -> {}, RSS {rss0:.1} -> {:.1} MiB (right after the soak {rss_peak:.1} MiB), leaked leases {}, leaked channels {}",
        process_open_fds().unwrap_or(0),
        pool.open_channels(),
        handle.num_alive_tasks(),
        rss_mib(),
        book.leaked_leases(),
        book.leaked_channels(),
    );
    pool.shutdown();
    server.shutdown().await;
    Ok(())
}
