//! Throughput and latency of `/validate/backups` against a floor: a minimal axum + rustls
//! server that parses the AdmissionReview and echoes its uid with `allowed: true`. Both are
//! driven by the same `h2load` run (HTTP/2 over TLS, same connections and streams), one
//! after the other, in this process. Prints req/s, p50 and p99 and the ratios.
//!
//! `cargo bench -p longhorn-guard-webhook --bench webhook_vs_floor` (needs `h2load` from
//! Debian's `nghttp2-client`). `LHG_BENCH_REQUESTS`, `LHG_BENCH_CLIENTS`, `LHG_BENCH_STREAMS`
//! override the load.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use longhorn_guard_testkit::admissible_backup_objects;
use longhorn_guard_testkit::admission::{Review, SERVICE_ACCOUNT_GROUPS};
use longhorn_guard_webhook::index::IndexEvent;
use longhorn_guard_webhook::{AppState, Index, Metrics, NoSnapshotSource, Policy, router, tls};
use longhorn_types::shapes;

const NS: &str = "longhorn-system";

struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: String,
}

fn h2load(url: &str, body: &std::path::Path, log: &std::path::Path) -> Run {
    let env = longhorn_guard_testkit::test_env();
    let n = env.bench_requests.unwrap_or(50_000);
    let c = env.bench_clients.unwrap_or(16);
    let m = env.bench_streams.unwrap_or(4);
    let _ = std::fs::remove_file(log);
    let out = Command::new("h2load")
        .args([
            "-n",
            &n.to_string(),
            "-c",
            &c.to_string(),
            "-m",
            &m.to_string(),
            "-t",
            "1",
        ])
        .args(["-H", "content-type: application/json", "-d"])
        .arg(body)
        .arg(format!("--log-file={}", log.display()))
        .arg(url)
        .output()
        .expect("h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read h2load output:\n{text}"));
    let failed = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_default()
        .to_string();
    let mut us: Vec<u64> = std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    us.sort_unstable();
    let pct = |p: f64| us[((us.len() as f64 * p) as usize).min(us.len() - 1)] as f64 / 1000.0;
    Run {
        rps,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        failed,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    tls::install_crypto_provider();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let config = tls::server_config_from_pem(
        ck.cert.pem().as_bytes(),
        ck.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();

    // The webhook with an index holding the Backup's Snapshot, Volume and target: the
    // common path (an index hit, every check run). The same review is sent every time, so
    // it is a dry run: the throttle checks every limit but takes no slot (otherwise every
    // review after the first would be a 429 for the volume's cap and a duplicate).
    let policy = Arc::new(Policy::default());
    let index = Arc::new(Index::default());
    let (volume, snapshot, target) = admissible_backup_objects(NS, "snap-1").unwrap();
    index.apply(IndexEvent::Upsert(volume));
    index.apply(IndexEvent::Upsert(snapshot));
    index.apply(IndexEvent::Upsert(target));
    let state = AppState::new(
        policy,
        index,
        Arc::new(Metrics::new()),
        Arc::new(NoSnapshotSource),
    );
    let (webhook_addr, h1) = common::serve(router(state.clone()), config.clone()).await;
    let (floor_app, _) = common::floor_router();
    let (floor_addr, h2) = common::serve(floor_app, config).await;

    let dir = std::env::temp_dir().join(format!("lhg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = dir.join("review.json");
    let review = Review::new(
        NS,
        "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
        "system:serviceaccount:longhorn-system:longhorn-service-account",
        shapes::backup(
            NS,
            "backup-1a2b3c4d5e6f7a8b",
            "vol-1",
            "snap-1",
            Some("daily"),
        ),
    )
    .groups(SERVICE_ACCOUNT_GROUPS)
    .dry_run(true)
    .create_options()
    .into_value();
    std::fs::write(&body, review.to_string()).unwrap();

    // Warm both, then measure floor, webhook, floor, webhook and keep the best of each
    // (the machine is shared and noisy).
    let log = dir.join("h2load.log");
    let run = |addr: SocketAddr| {
        let body = body.clone();
        let log = log.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                h2load(&format!("https://{addr}/validate/backups"), &body, &log)
            })
            .await
            .unwrap()
        }
    };
    let _ = run(floor_addr).await;
    let _ = run(webhook_addr).await;
    let mut best_floor: Option<Run> = None;
    let mut best_hook: Option<Run> = None;
    for _ in 0..2 {
        let f = run(floor_addr).await;
        println!(
            "floor:   {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms  ({})",
            f.rps, f.p50_ms, f.p99_ms, f.failed
        );
        if best_floor.as_ref().is_none_or(|b| f.rps > b.rps) {
            best_floor = Some(f);
        }
        let w = run(webhook_addr).await;
        println!(
            "webhook: {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms  ({})",
            w.rps, w.p50_ms, w.p99_ms, w.failed
        );
        if best_hook.as_ref().is_none_or(|b| w.rps > b.rps) {
            best_hook = Some(w);
        }
    }
    let (f, w) = (best_floor.unwrap(), best_hook.unwrap());
    println!(
        "best of 2: webhook/floor req/s = {:.2} (goal >= 0.8), p50 ratio = {:.2}, p99 ratio = {:.2} (goal <= 1.5)",
        w.rps / f.rps,
        w.p50_ms / f.p50_ms,
        w.p99_ms / f.p99_ms
    );
    let text = state.metrics.encode(&state.index);
    let allowed = longhorn_guard_webhook::metrics::sum_samples(
        &text
            .lines()
            .filter(|l| l.contains("decision=\"allowed\""))
            .collect::<Vec<_>>()
            .join("\n"),
        "longhorn_guard_webhook_reviews_total",
    );
    let total =
        longhorn_guard_webhook::metrics::sum_samples(&text, "longhorn_guard_webhook_reviews_total");
    println!("webhook reviews counted as allowed: {allowed} of {total}");
    assert_eq!(
        allowed, total,
        "the webhook path measured is not the allowed one"
    );
    h1.shutdown();
    h2.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
