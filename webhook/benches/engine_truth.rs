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
//!
//! With `--rtt-ms 0.1,0.5,1` (and `--rtt-reviews N`, default 1000 per phase), instead: the two
//! network paths of a review that loopback hides, each through the link emulator
//! (`link-emulator/`, a symmetric delay per direction) at each RTT, sequential and 8 at a time:
//! the engine check (webhook → agent gRPC over mutual TLS; the emulator sits between the
//! webhook's agent client and the agent) and the live GET on an index miss (webhook →
//! kube-apiserver, the real one of `LHG_TEST_KUBECONFIG`, reached through the emulator). For
//! each: review latency p50/p99 as a share of the 250 ms engine-check budget, and the fallback
//! rate (engine checks that ended without a definite answer; live GETs that failed or reviews
//! that hit their deadline). Without `LHG_TEST_KUBECONFIG` the live GET rows are skipped, said so.
//! Each path is first measured straight over loopback in the same run: the baseline of the
//! `p50 / loopback p50` ratios.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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

fn review(ns: &str, snapshot: &str, n: u64) -> Vec<u8> {
    let name = format!("backup-{n:016x}");
    let object = shapes::backup(ns, &name, "vol-1", snapshot, Some("daily"));
    let uid = format!("00000000-0000-0000-0000-{n:012x}");
    Review::new(ns, &uid, LONGHORN_SA, object)
        .groups(SERVICE_ACCOUNT_GROUPS)
        .create_options()
        .into_value()
        .to_string()
        .into_bytes()
}

/// One review of a Backup of `snapshot` in `ns` through the router; returns its latency and
/// whether it was allowed without warnings.
async fn one(app: &axum::Router, ns: &str, snapshot: &str, n: u64) -> (Duration, bool) {
    let req = http::Request::post("/validate/backups")
        .header("content-type", "application/json")
        .body(Body::from(review(ns, snapshot, n)))
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

/// `n` reviews, `concurrency` at a time: their latencies and how many were not allowed cleanly
/// (denied, or allowed with a warning: the engine check or the lookup fell back).
async fn round(app: &axum::Router, n: usize, concurrency: usize) -> (Vec<Duration>, usize) {
    round_of(app, NS, "snap-1", n, concurrency).await
}

/// [`round`] for Backups of `snapshot` in `ns`.
async fn round_of(
    app: &axum::Router,
    ns: &str,
    snapshot: &str,
    n: usize,
    concurrency: usize,
) -> (Vec<Duration>, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let app = app.clone();
        let (ns, snapshot) = (ns.to_string(), snapshot.to_string());
        let per = n / concurrency;
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(per);
            let mut unclean = 0;
            for _ in 0..per {
                let k = SEQ.fetch_add(1, Ordering::Relaxed);
                let (took, clean) = one(&app, &ns, &snapshot, k).await;
                unclean += usize::from(!clean);
                out.push(took);
            }
            (out, unclean)
        });
    }
    let mut all = Vec::with_capacity(n);
    let mut unclean = 0;
    while let Some(r) = tasks.join_next().await {
        let (out, u) = r.unwrap();
        all.extend(out);
        unclean += u;
    }
    (all, unclean)
}

/// [`round`], every review required to be allowed without warnings.
async fn clean_round(app: &axum::Router, n: usize, concurrency: usize) -> Vec<Duration> {
    let (all, unclean) = round(app, n, concurrency).await;
    assert_eq!(unclean, 0, "every review must be allowed without warnings");
    all
}

/// The PKI, the fake engine proxy with `snap-1` of `vol-1`, and a real agent in front of it.
struct Rig {
    dir: std::path::PathBuf,
    fake: fake_engine::FakeEngine,
    fake_server: fake_engine::RunningServer,
    agent_addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    agent_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    engine: Engine,
}

impl Rig {
    async fn start() -> Self {
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
        Self {
            dir,
            fake,
            fake_server,
            agent_addr,
            stop,
            agent_task,
            engine,
        }
    }

    /// The webhook's index for `ns` with the Backup's volume, target and engine, and its
    /// snapshot `snap-1` unless `with_snapshot` is false (then every review is an index miss).
    fn index(&self, with_snapshot: bool) -> Arc<Index> {
        let index = Arc::new(Index::default());
        let (volume, snapshot, target) = admissible_backup_objects(NS, "snap-1").unwrap();
        index.apply(IndexEvent::Upsert(volume));
        if with_snapshot {
            index.apply(IndexEvent::Upsert(snapshot));
        }
        index.apply(IndexEvent::Upsert(target));
        index.apply(IndexEvent::Upsert(self.engine.clone()));
        index
    }

    /// A webhook state asking the agent at `agent` (the agent itself, or an emulated link to it).
    fn engine_checked(
        &self,
        policy: Arc<Policy>,
        index: Arc<Index>,
        agent: std::net::SocketAddr,
    ) -> AppState {
        let metrics = Arc::new(Metrics::new());
        let state = AppState::new(policy, index, metrics.clone(), Arc::new(NoSnapshotSource));
        let truth = EngineTruth::new(
            &EngineTruthConfig::new(
                self.dir.join("client.crt"),
                self.dir.join("client.key"),
                self.dir.join("ca.crt"),
                AgentDiscovery::Static(BTreeMap::from([("node-1".to_string(), agent.to_string())])),
            ),
            metrics.engine_checks.clone(),
        )
        .unwrap();
        state.engine_truth.set(Arc::new(truth)).unwrap();
        state
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.agent_task.await;
        self.fake_server.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `engineCheck: enforce`, throttle off.
fn bench_policy() -> Arc<Policy> {
    let mut policy = serde_json::to_value(Policy {
        engine_check: EngineCheckMode::Enforce,
        ..Policy::default()
    })
    .unwrap();
    if let Some(t) = policy.get_mut("throttle") {
        t["enabled"] = json!(false);
    }
    Arc::new(serde_json::from_value(policy).unwrap())
}

fn sum(text: &str, metric: &str, label: Option<&str>) -> f64 {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| label.is_none_or(|x| l.contains(x)))
        .collect();
    longhorn_guard_webhook::metrics::sum_samples(&lines.join("\n"), metric) as f64
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    tls::install_crypto_provider();
    if let Some(list) = common::flag::<String>("--rtt-ms") {
        let rtts: Vec<Duration> = list
            .split(',')
            .map(|ms| {
                let ms: f64 = ms
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("--rtt-ms {list}: {ms:?} is not milliseconds"));
                Duration::from_secs_f64(ms / 1000.0)
            })
            .collect();
        rtt::bench(&rtts).await;
        return;
    }
    let n = longhorn_guard_testkit::test_env()
        .bench_requests
        .unwrap_or(2000);
    let rig = Rig::start().await;

    // The webhook's index and policy, shared by both modes.
    let index = rig.index(true);
    let policy = bench_policy();
    let off = AppState::new(
        policy.clone(),
        index.clone(),
        Arc::new(Metrics::new()),
        Arc::new(NoSnapshotSource),
    );
    let on = rig.engine_checked(policy, index, rig.agent_addr);
    let (off_app, on_app) = (router(off), router(on.clone()));

    // Warm both (the "on" channel connects and handshakes here).
    clean_round(&off_app, 200, 1).await;
    clean_round(&on_app, 200, 1).await;

    println!("engine-truth verification: {n} reviews per round and mode, 3 rounds, alternating");
    for concurrency in [1usize, 8] {
        let (mut offs, mut ons) = (Vec::new(), Vec::new());
        let started = Instant::now();
        for _ in 0..3 {
            offs.extend(clean_round(&off_app, n, concurrency).await);
            ons.extend(clean_round(&on_app, n, concurrency).await);
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
    let text = on.metrics.encode(&on.index);
    let present = sum(
        &text,
        "longhorn_guard_webhook_engine_checks_total",
        Some("outcome=\"present\""),
    );
    let opened = sum(
        &text,
        "longhorn_guard_webhook_engine_check_agent_channels_opened_total",
        None,
    );
    println!(
        "engine checks answered present: {present}; agent channels opened: {opened}; proxy SnapshotList calls: {}",
        rig.fake
            .stats()
            .calls_by_method
            .get("SnapshotList")
            .copied()
            .unwrap_or(0)
    );
    rig.stop().await;
}

/// The `--rtt-ms` mode: the engine check and the live GET through emulated links.
mod rtt {
    use super::*;
    use link_emulator::{LinkConfig, LinkEmulator, probe};
    use longhorn_guard_testkit::TestCluster;
    use longhorn_guard_webhook::policy::DEFAULT_BUDGET_MS;
    use longhorn_guard_webhook::snapshot_source::ApiSnapshotSource;

    const ENGINE_PATH: &str = "engine check (webhook → agent gRPC)";
    const LIVE_GET_PATH: &str = "live GET on an index miss (webhook → kube-apiserver)";

    /// One phase's figures.
    struct Row {
        path: &'static str,
        /// `None`: straight over loopback.
        rtt: Option<Duration>,
        measured_p50: Option<Duration>,
        concurrency: usize,
        p50_ms: f64,
        p99_ms: f64,
        /// Share of reviews that fell back (see the module doc).
        fallback: f64,
        reviews: usize,
    }

    fn budget_share(ms: f64) -> f64 {
        100.0 * ms / DEFAULT_BUDGET_MS as f64
    }

    /// Warm-up, then `n` reviews of Backups of `snapshot` in `ns`: p50, p99 (ms), how many fell
    /// back, how many were sent.
    async fn phase(
        app: &axum::Router,
        (ns, snapshot): (&str, &str),
        n: usize,
        concurrency: usize,
    ) -> (f64, f64, usize, usize) {
        round_of(app, ns, snapshot, 50.max(concurrency), concurrency).await; // channel, handshake
        let (mut all, unclean) = round_of(app, ns, snapshot, n, concurrency).await;
        all.sort_unstable();
        (pct(&all, 0.50), pct(&all, 0.99), unclean, all.len())
    }

    pub async fn bench(rtts: &[Duration]) {
        let n: usize = common::flag("--rtt-reviews").unwrap_or(1000);
        println!(
            "machine: {} cores, load {}; {n} reviews per phase; budget {DEFAULT_BUDGET_MS} ms",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        let rig = Rig::start().await;
        let cluster = match longhorn_guard_testkit::test_env().kubeconfig {
            Some(_) => Some(live_fixture().await),
            None => {
                println!("LHG_TEST_KUBECONFIG not set: the live GET rows are skipped");
                None
            }
        };
        let echo = probe::echo_server().await.unwrap();
        let mut rows = Vec::new();
        // `None` first: straight over loopback, the baseline of every ratio.
        for rtt in std::iter::once(None).chain(rtts.iter().copied().map(Some)) {
            let config = rtt.map(LinkConfig::symmetric_rtt);
            let measured = match &config {
                Some(config) => {
                    let echo_link = LinkEmulator::start(echo.local_addr(), config.clone())
                        .await
                        .unwrap();
                    let trips = probe::ping_pong(echo_link.local_addr(), 64, 50, 500)
                        .await
                        .unwrap();
                    Some(trips.quantile(0.5))
                }
                None => None,
            };
            // An emulated link in front of `upstream` (kept while it is used), or `upstream`.
            let link_to = |upstream: std::net::SocketAddr| {
                let config = config.clone();
                async move {
                    match config {
                        Some(c) => {
                            let link = LinkEmulator::start(upstream, c).await.unwrap();
                            (link.local_addr(), Some(link))
                        }
                        None => (upstream, None),
                    }
                }
            };

            // Engine check: webhook → (emulated link →) agent.
            let (agent, link) = link_to(rig.agent_addr).await;
            let state = rig.engine_checked(bench_policy(), rig.index(true), agent);
            let app = router(state.clone());
            for concurrency in [1usize, 8] {
                let before = checks(&state);
                let (p50, p99, _, reviews) = phase(&app, (NS, "snap-1"), n, concurrency).await;
                let after = checks(&state);
                let total = after.0 - before.0;
                let definite = after.1 - before.1;
                rows.push(Row {
                    path: ENGINE_PATH,
                    rtt,
                    measured_p50: measured,
                    concurrency,
                    p50_ms: p50,
                    p99_ms: p99,
                    fallback: if total > 0.0 {
                        1.0 - definite / total
                    } else {
                        1.0
                    },
                    reviews,
                });
            }
            drop(link);

            // Live GET: webhook → (emulated link →) kube-apiserver, on an index miss.
            if let Some((cluster, ns)) = &cluster {
                let api = cluster.api_url();
                let upstream = api
                    .trim_start_matches("https://")
                    .trim_end_matches('/')
                    .parse()
                    .unwrap();
                let (api_addr, link) = link_to(upstream).await;
                let client = cluster.client_via(&format!("https://{api_addr}")).unwrap();
                let index = live_index(ns);
                let state = AppState::new(
                    bench_policy(),
                    index,
                    Arc::new(Metrics::new()),
                    Arc::new(ApiSnapshotSource::new(client)),
                );
                let app = router(state);
                for concurrency in [1usize, 8] {
                    let (p50, p99, unclean, reviews) =
                        phase(&app, (ns, "snap-live"), n, concurrency).await;
                    rows.push(Row {
                        path: LIVE_GET_PATH,
                        rtt,
                        measured_p50: measured,
                        concurrency,
                        p50_ms: p50,
                        p99_ms: p99,
                        fallback: unclean as f64 / reviews.max(1) as f64,
                        reviews,
                    });
                }
                drop(link);
            }
        }
        println!();
        println!(
            "| path | RTT configured (measured p50) | concurrency | review p50 | p99 | p50 / loopback p50 | share of the 250 ms budget p50 / p99 | fallback rate | reviews |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            let baseline = rows
                .iter()
                .find(|b| b.rtt.is_none() && b.path == r.path && b.concurrency == r.concurrency)
                .map_or(f64::NAN, |b| b.p50_ms);
            let link = match (r.rtt, r.measured_p50) {
                (Some(rtt), Some(m)) => format!(
                    "{:.2} ms ({:.3} ms)",
                    rtt.as_secs_f64() * 1000.0,
                    m.as_secs_f64() * 1000.0
                ),
                _ => "loopback, no emulator".to_string(),
            };
            println!(
                "| {} | {link} | {} | {:.2} ms | {:.2} ms | {:.2}x | {:.1} % / {:.1} % | {:.2} % | {} |",
                r.path,
                r.concurrency,
                r.p50_ms,
                r.p99_ms,
                r.p50_ms / baseline,
                budget_share(r.p50_ms),
                budget_share(r.p99_ms),
                100.0 * r.fallback,
                r.reviews
            );
        }
        rig.stop().await;
    }

    /// `(engine checks, definite answers)` so far.
    fn checks(state: &AppState) -> (f64, f64) {
        let text = state.metrics.encode(&state.index);
        let metric = "longhorn_guard_webhook_engine_checks_total";
        let definite = ["present", "absent", "removed"]
            .iter()
            .map(|o| sum(&text, metric, Some(&format!("outcome=\"{o}\""))))
            .sum();
        (sum(&text, metric, None), definite)
    }

    /// A fresh namespace of the test cluster holding the ready Snapshot `snap-live`.
    async fn live_fixture() -> (TestCluster, String) {
        let cluster = TestCluster::connect().await.unwrap();
        let ns = cluster.namespace("bench-live-get").await.unwrap();
        cluster
            .create_with_status::<longhorn_types::Snapshot>(
                &ns,
                shapes::snapshot(&ns, "snap-live", "vol-1"),
                shapes::snapshot_status("node-1", ""),
            )
            .await
            .unwrap();
        (cluster, ns)
    }

    /// The webhook's index for `ns`: the volume and the target, not the snapshot.
    fn live_index(ns: &str) -> Arc<Index> {
        let index = Arc::new(Index::default());
        let (volume, _, target) = admissible_backup_objects(ns, "snap-live").unwrap();
        index.apply(IndexEvent::Upsert(volume));
        index.apply(IndexEvent::Upsert(target));
        index
    }
}
