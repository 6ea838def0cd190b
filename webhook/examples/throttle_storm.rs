//! Benchmark: the storm of the v1.7.2 incident through the validating endpoint, in process
//! (the axum router driven with `tower::ServiceExt::oneshot`, AdmissionReview JSON in and
//! out, no sockets, no API server), with the throttle on (default policy) and off, in the same
//! process. Admitted Backups enter the index at once (an instant watch) and a simulated
//! controller completes each after `RUN_TIME`.
//!
//! `cargo run --release -p longhorn-guard-webhook --example throttle_storm`
//! Size: `LHG_BENCH_STORM_BACKUPS` (default 4422), `LHG_BENCH_STORM_VOLUMES` (default 300).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use longhorn_types::shapes::with_status;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures::StreamExt;
use http_body_util::BodyExt;
use longhorn_guard_webhook::index::IndexEvent;
use longhorn_guard_webhook::{AppState, Index, Metrics, NoSnapshotSource, Policy, router};
use longhorn_types::{Backup, BackupTarget, Engine, Snapshot, Volume, shapes};
use serde_json::{Value, json};
use tower::ServiceExt;

const NS: &str = "longhorn-system";
const NODES: usize = 6;
const CONCURRENCY: usize = 32;
const RUN_TIME: Duration = Duration::from_millis(20);

fn index(total: usize, volumes: usize) -> Arc<Index> {
    let idx = Arc::new(Index::default());
    for v in 0..volumes {
        let (vol, node) = (format!("vol-{v}"), format!("node-{}", v % NODES));
        idx.apply(IndexEvent::Upsert(
            serde_json::from_value::<Volume>(with_status(
                shapes::volume(NS, &vol, &node),
                shapes::volume_status(&node),
            ))
            .unwrap(),
        ));
        idx.apply(IndexEvent::Upsert(
            serde_json::from_value::<Engine>(shapes::engine(NS, &vol, &node)).unwrap(),
        ));
    }
    for i in (0..total).filter(|i| i % 10 >= 3) {
        let vol = format!("vol-{}", i % volumes);
        idx.apply(IndexEvent::Upsert(
            serde_json::from_value::<Snapshot>(with_status(
                shapes::snapshot(NS, &format!("snap-{i}"), &vol),
                shapes::snapshot_status("node-0", ""),
            ))
            .unwrap(),
        ));
    }
    idx.apply(IndexEvent::Upsert(
        serde_json::from_value::<BackupTarget>(with_status(
            shapes::backup_target(NS, "default", "s3://bk@us-east-1/"),
            shapes::backup_target_status("node-0", true),
        ))
        .unwrap(),
    ));
    idx
}

fn review(i: usize, volumes: usize) -> (Value, Value) {
    let vol = format!("vol-{}", i % volumes);
    let snap = if i % 10 < 3 {
        format!("gone-{i}")
    } else {
        format!("snap-{i}")
    };
    let obj = shapes::backup(NS, &format!("bk-{i}"), &vol, &snap, Some("storm"));
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{i}"),
            "kind": {"group": "longhorn.io", "version": "v1beta2", "kind": "Backup"},
            "resource": {"group": "longhorn.io", "version": "v1beta2", "resource": "backups"},
            "namespace": NS,
            "name": format!("bk-{i}"),
            "operation": "CREATE",
            "userInfo": {"username": format!("system:serviceaccount:{NS}:longhorn-service-account")},
            "object": obj,
            "oldObject": null,
            "dryRun": false,
        }
    });
    (body, obj)
}

struct Run {
    latencies: Vec<Duration>,
    wall: Duration,
    allowed: usize,
    throttled: usize,
}

async fn run(policy: Policy, total: usize, volumes: usize) -> Run {
    let idx = index(total, volumes);
    let state = AppState::new(
        Arc::new(policy),
        idx.clone(),
        Arc::new(Metrics::new()),
        Arc::new(NoSnapshotSource),
    );
    let app = router(state);
    let allowed = Arc::new(AtomicUsize::new(0));
    let throttled = Arc::new(AtomicUsize::new(0));
    // The controller: completes admitted Backups after RUN_TIME.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Value)>();
    let ctl_idx = idx.clone();
    let controller = tokio::spawn(async move {
        while let Some((at, obj)) = rx.recv().await {
            tokio::time::sleep_until((at + RUN_TIME).into()).await;
            let done = with_status(obj, shapes::backup_status("Completed", "node-0", "", ""));
            ctl_idx.apply(IndexEvent::Upsert(
                serde_json::from_value::<Backup>(done).unwrap(),
            ));
        }
    });
    let bodies: Vec<(Vec<u8>, Value)> = (0..total)
        .map(|i| {
            let (b, o) = review(i, volumes);
            (serde_json::to_vec(&b).unwrap(), o)
        })
        .collect();
    let start = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(bodies)
        .map(|(body, obj)| {
            let app = app.clone();
            let idx = idx.clone();
            let tx = tx.clone();
            let allowed = allowed.clone();
            let throttled = throttled.clone();
            async move {
                let t = Instant::now();
                let req = http::Request::post("/validate/backups")
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap();
                let resp = app.oneshot(req).await.unwrap();
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                let elapsed = t.elapsed();
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                if v["response"]["allowed"].as_bool() == Some(true) {
                    allowed.fetch_add(1, Ordering::Relaxed);
                    // The watch delivers the new Backup (New) at once.
                    let created = with_status(obj.clone(), shapes::backup_status("", "", "", ""));
                    idx.apply(IndexEvent::Upsert(
                        serde_json::from_value::<Backup>(created).unwrap(),
                    ));
                    let _ = tx.send((Instant::now(), obj));
                } else if v["response"]["status"]["code"].as_u64() == Some(429) {
                    throttled.fetch_add(1, Ordering::Relaxed);
                }
                elapsed
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let wall = start.elapsed();
    drop(tx);
    controller.abort();
    Run {
        latencies,
        wall,
        allowed: allowed.load(Ordering::Relaxed),
        throttled: throttled.load(Ordering::Relaxed),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = longhorn_guard_testkit::test_env();
    let total = env.bench_storm_backups.unwrap_or(4422);
    let volumes = env.bench_storm_volumes.unwrap_or(300);
    let mut unthrottled = Policy::default();
    unthrottled.throttle.enabled = false;
    println!(
        "{total} AdmissionReviews (30 % of missing snapshots), {volumes} volumes on {NODES} nodes, {CONCURRENCY} concurrent, completion after {RUN_TIME:?}"
    );
    println!("| run | reviews/s | p50 | p99 | max | allowed | throttled (429) |");
    println!("|---|---|---|---|---|---|---|");
    for round in 0..2 {
        for (name, policy) in [
            ("throttle off", unthrottled.clone()),
            ("throttle on (defaults)", Policy::default()),
        ] {
            let mut r = run(policy, total, volumes).await;
            r.latencies.sort();
            if round == 0 {
                continue; // warm-up
            }
            println!(
                "| {name} | {:.0} | {:.0} µs | {:.0} µs | {:.0} µs | {} | {} |",
                total as f64 / r.wall.as_secs_f64(),
                pct(&r.latencies, 0.5).as_secs_f64() * 1e6,
                pct(&r.latencies, 0.99).as_secs_f64() * 1e6,
                r.latencies.last().unwrap().as_secs_f64() * 1e6,
                r.allowed,
                r.throttled
            );
        }
    }
}
