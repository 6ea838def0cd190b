//! Admission latency with engine-truth verification on vs off, same process, same load.
//!
//! Two webhook states over the same index and policy (`engineCheck: enforce`, throttle off):
//! "off" has no agents configured, "on" asks a real in-process agent (gRPC over mutual TLS,
//! certificates from `longhorn_guard_certs`) which asks a fake engine proxy over its lease
//! pool. `/validate/backups` is driven in-process (`tower::ServiceExt::oneshot`, no HTTP
//! socket on the webhook side) so the difference is the engine check itself: one warm agent
//! channel, one `GetSnapshot`, one proxy `SnapshotList`.
//!
//! Sequential (one review at a time) and concurrent (8 at a time) phases, each alternating
//! off/on rounds. Prints p50/p99 per mode and the on/off ratios.
//! `cargo bench -p longhorn-guard-webhook --bench engine_truth`; `LHG_BENCH_REQUESTS`
//! (default 2000 per round and mode) overrides the load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::BodyExt as _;
use longhorn_guard_agent::{Agent, AgentConfig};
use longhorn_guard_certs::{Options, pki};
use longhorn_guard_testkit::admission::{Review, SERVICE_ACCOUNT_GROUPS};
use longhorn_guard_testkit::{admissible_backup_objects, typed_with_status};
use longhorn_guard_webhook::engine_truth::{AgentDiscovery, EngineTruth, EngineTruthConfig};
use longhorn_guard_webhook::index::IndexEvent;
use longhorn_guard_webhook::policy::EngineCheckMode;
use longhorn_guard_webhook::{AppState, Index, Metrics, NoSnapshotSource, Policy, router, tls};
use longhorn_types::{Engine, InstanceManager, shapes};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const NS: &str = "longhorn-system";
const LONGHORN_SA: &str = "system:serviceaccount:longhorn-system:longhorn-service-account";
const ENGINE_ADDRESS: &str = "10.42.1.17:10010";

fn review(n: u64) -> Vec<u8> {
    let name = format!("backup-{n:016x}");
    let object = shapes::backup(NS, &name, "vol-1", "snap-1", Some("daily"));
    let uid = format!("00000000-0000-0000-0000-{n:012x}");
    Review::new(NS, &uid, LONGHORN_SA, object)
        .groups(SERVICE_ACCOUNT_GROUPS)
        .create_options()
        .into_value()
        .to_string()
        .into_bytes()
}

/// One review through the router; returns its latency and whether it was allowed without
/// warnings.
async fn one(app: &axum::Router, n: u64) -> (Duration, bool) {
    let req = http::Request::post("/validate/backups")
        .header("content-type", "application/json")
        .body(Body::from(review(n)))
        .unwrap();
    let start = Instant::now();
    let resp = app.clone().oneshot(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let took = start.elapsed();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let clean = v["response"]["allowed"] == json!(true) && v["response"]["warnings"].is_null();
    (took, clean)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1000.0
}

static SEQ: AtomicU64 = AtomicU64::new(1);

async fn round(app: &axum::Router, n: usize, concurrency: usize) -> Vec<Duration> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let app = app.clone();
        let per = n / concurrency;
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(per);
            for _ in 0..per {
                let (took, clean) = one(&app, SEQ.fetch_add(1, Ordering::Relaxed)).await;
                assert!(clean, "every review must be allowed without warnings");
                out.push(took);
            }
            out
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    tls::install_crypto_provider();
    let n = longhorn_guard_testkit::test_env()
        .bench_requests
        .unwrap_or(2000);

    // PKI as the certs Job issues it.
    let dir = std::env::temp_dir().join(format!("lhg-bench-truth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let day = Duration::from_secs(86_400);
    let opts = Options::default();
    let ca = pki::new_ca("bench CA", day).unwrap();
    let agent_cert = pki::issue_leaf(&ca, &opts.agent_leaf(), day).unwrap();
    let client_cert = pki::issue_leaf(&ca, &opts.webhook_client_leaf(), day).unwrap();
    for (f, pem) in [
        ("ca.crt", &ca.cert_pem),
        ("agent.crt", &agent_cert.cert_pem),
        ("agent.key", &agent_cert.key_pem),
        ("client.crt", &client_cert.cert_pem),
        ("client.key", &client_cert.key_pem),
    ] {
        std::fs::write(dir.join(f), pem).unwrap();
    }

    // Fake engine proxy with the snapshot, and an agent in front of it.
    let fake = fake_engine::FakeEngine::new();
    fake.add_engine(fake_engine::EngineSpec {
        address: ENGINE_ADDRESS.into(),
        engine_name: "vol-1-e-0".into(),
        volume_name: "vol-1".into(),
    });
    fake.set_snapshots(
        ENGINE_ADDRESS,
        vec![fake_engine::SnapshotSpec {
            name: "snap-1".into(),
            user_created: true,
            created: "2026-11-24T10:00:00Z".into(),
            size: 4096,
            ..fake_engine::SnapshotSpec::default()
        }],
    );
    let fake_server = fake_engine::serve(fake.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut config = AgentConfig::new("node-1");
    config.server_cert = dir.join("agent.crt");
    config.server_key = dir.join("agent.key");
    config.client_ca = Some(dir.join("ca.crt"));
    config.engine_proxy_port = fake_server.local_addr.port();
    let agent = Agent::new(config).unwrap();
    let engine: Engine = typed_with_status(
        shapes::engine(NS, "vol-1", "node-1"),
        shapes::engine_status("node-1", "im-1", "10.42.1.17", 10010),
    )
    .unwrap();
    let im: InstanceManager = typed_with_status(
        shapes::instance_manager(NS, "im-1", "node-1"),
        shapes::instance_manager_status("node-1", "127.0.0.1"),
    )
    .unwrap();
    agent.index().apply_engine(&engine);
    agent.index().apply_instance_manager(&im);
    agent.index().mark_synced();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = grpc.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.serve(grpc, http, async move {
        let _ = stopped.await;
    }));

    // The webhook's index and policy, shared by both modes.
    let index = Arc::new(Index::default());
    let (volume, snapshot, target) = admissible_backup_objects(NS, "snap-1").unwrap();
    index.apply(IndexEvent::Upsert(volume));
    index.apply(IndexEvent::Upsert(snapshot));
    index.apply(IndexEvent::Upsert(target));
    index.apply(IndexEvent::Upsert(engine));
    let mut policy = serde_json::to_value(Policy {
        engine_check: EngineCheckMode::Enforce,
        ..Policy::default()
    })
    .unwrap();
    if let Some(t) = policy.get_mut("throttle") {
        t["enabled"] = json!(false);
    }
    let policy: Arc<Policy> = Arc::new(serde_json::from_value(policy).unwrap());

    let off = AppState::new(
        policy.clone(),
        index.clone(),
        Arc::new(Metrics::new()),
        Arc::new(NoSnapshotSource),
    );
    let on_metrics = Arc::new(Metrics::new());
    let on = AppState::new(
        policy,
        index,
        on_metrics.clone(),
        Arc::new(NoSnapshotSource),
    );
    let truth = EngineTruth::new(
        &EngineTruthConfig::new(
            dir.join("client.crt"),
            dir.join("client.key"),
            dir.join("ca.crt"),
            AgentDiscovery::Static(BTreeMap::from([(
                "node-1".to_string(),
                agent_addr.to_string(),
            )])),
        ),
        on_metrics.engine_checks.clone(),
    )
    .unwrap();
    on.engine_truth.set(Arc::new(truth)).unwrap();
    let (off_app, on_app) = (router(off), router(on.clone()));

    // Warm both (the "on" channel connects and handshakes here).
    round(&off_app, 200, 1).await;
    round(&on_app, 200, 1).await;

    println!("engine-truth verification: {n} reviews per round and mode, 3 rounds, alternating");
    for concurrency in [1usize, 8] {
        let (mut offs, mut ons) = (Vec::new(), Vec::new());
        let started = Instant::now();
        for _ in 0..3 {
            offs.extend(round(&off_app, n, concurrency).await);
            ons.extend(round(&on_app, n, concurrency).await);
        }
        let wall = started.elapsed();
        offs.sort_unstable();
        ons.sort_unstable();
        let (f50, f99) = (pct(&offs, 0.50), pct(&offs, 0.99));
        let (n50, n99) = (pct(&ons, 0.50), pct(&ons, 0.99));
        println!(
            "concurrency {concurrency}: off p50 {f50:.3} ms p99 {f99:.3} ms | on p50 {n50:.3} ms p99 {n99:.3} ms | on/off p50 {:.1}x p99 {:.1}x (+{:.3} ms p50)  [{} reviews, {:.1} s]",
            n50 / f50,
            n99 / f99,
            n50 - f50,
            offs.len() + ons.len(),
            wall.as_secs_f64()
        );
    }
    let text = on_metrics.encode(&on.index);
    let present = longhorn_guard_webhook::metrics::sum_samples(
        &text
            .lines()
            .filter(|l| l.contains("outcome=\"present\""))
            .collect::<Vec<_>>()
            .join("\n"),
        "longhorn_guard_webhook_engine_checks_total",
    );
    let opened = longhorn_guard_webhook::metrics::sum_samples(
        &text,
        "longhorn_guard_webhook_engine_check_agent_channels_opened_total",
    );
    println!(
        "engine checks answered present: {present}; agent channels opened: {opened}; proxy SnapshotList calls: {}",
        fake.stats()
            .calls_by_method
            .get("SnapshotList")
            .copied()
            .unwrap_or(0)
    );
    let _ = stop.send(());
    let _ = agent_task.await;
    fake_server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
