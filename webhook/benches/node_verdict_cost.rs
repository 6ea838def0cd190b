//! The added cost of the node-verdict lookup on the admission path (issue #19: p99 within
//! 1.05x of today's decision) at 1,000 nodes. One index (10,000 Volumes spread over 1,000
//! nodes, their Engines, 10,000 ready Snapshots, 10,000 Completed Backups, the `default`
//! target) and one verdict table filled from 1,000 verdict Leases as the agents write them
//! (10 nodes `leaking`, the rest `healthy`). The review path minus HTTP runs sequentially on
//! Backup CREATEs of volumes on healthy nodes (admitted either way, so both variants do the same
//! work but the lookup): `BackupRequest::from_object`, the decision, the throttle (dry runs:
//! no slot, no token taken), as `/validate/backups` runs them.
//!
//! - baseline: `decide` (today's decision, no verdicts);
//! - with verdicts: `decide_with_nodes` (the decision, then the verdict of the volume's node
//!   from a read-locked view of the table, judged at the wall clock).
//!
//! Rounds alternate baseline, with-verdicts and baseline again (ABA'…) so all see the same
//! machine; the median round's p50/p99 of each is reported, the ratio B/A, and A'/A: the
//! machine's own noise on that ratio. A last line checks the lookup acts:
//! a Backup of a leaking node is denied.
//!
//! `cargo bench -p longhorn-guard-webhook --bench node_verdict_cost`; `LHG_BENCH_DECISIONS`
//! (default 20,000 per round and variant), `LHG_BENCH_ROUNDS` (default 7).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::core::DynamicObject;
use longhorn_guard_webhook::decision::decide_with_nodes;
use longhorn_guard_webhook::index::{IndexEvent, IndexedKind};
use longhorn_guard_webhook::node_verdicts::NodeVerdicts;
use longhorn_guard_webhook::throttle::admission::throttle_decision;
use longhorn_guard_webhook::{
    AppState, BackupRequest, Decision, Index, Metrics, NoSnapshotSource, Policy, decide,
};
use longhorn_types::shapes::{self, with_status};
use longhorn_types::{Backup, BackupTarget, Engine, Snapshot, Volume};
use node_verdict::lease::{labels, lease_name};
use node_verdict::{Evidence, Published, Verdict};
use serde_json::{Value, json};

const NS: &str = "longhorn-system";
const NODES: usize = 1000;
const VOLUMES: usize = 10_000;
const LEAKING: usize = 10;
const USER: &str = "system:serviceaccount:longhorn-system:longhorn-service-account";

fn list<K: IndexedKind>(index: &Index, objects: impl Iterator<Item = Value>) {
    index.apply::<K>(IndexEvent::RelistStart);
    for v in objects {
        index.apply::<K>(IndexEvent::Listed(serde_json::from_value(v).unwrap()));
    }
    index.apply::<K>(IndexEvent::RelistDone);
}

fn node_of(volume: usize) -> String {
    format!("node-{}", volume % NODES)
}

fn fill() -> Index {
    let index = Index::default();
    list::<Volume>(
        &index,
        (0..VOLUMES).map(|v| {
            let node = node_of(v);
            with_status(
                shapes::volume(NS, &format!("vol-{v}"), &node),
                shapes::volume_status(&node),
            )
        }),
    );
    list::<Engine>(
        &index,
        (0..VOLUMES).map(|v| {
            let node = node_of(v);
            with_status(
                shapes::engine(NS, &format!("vol-{v}"), &node),
                shapes::engine_status(&node, &format!("im-{node}"), "10.42.0.1", 10010),
            )
        }),
    );
    list::<Snapshot>(
        &index,
        (0..VOLUMES).map(|v| {
            with_status(
                shapes::snapshot(NS, &format!("snap-{v}"), &format!("vol-{v}")),
                shapes::snapshot_status(&node_of(v), ""),
            )
        }),
    );
    list::<Backup>(
        &index,
        (0..VOLUMES).map(|v| {
            let (vol, snap) = (format!("vol-{v}"), format!("snap-{v}"));
            with_status(
                shapes::backup(NS, &format!("backup-{v}"), &vol, &snap, Some("daily")),
                shapes::backup_status("Completed", &node_of(v), &vol, &snap),
            )
        }),
    );
    list::<BackupTarget>(
        &index,
        std::iter::once(with_status(
            shapes::backup_target(NS, "default", "s3://b@r/"),
            shapes::backup_target_status("node-0", true),
        )),
    );
    index
}

/// 1,000 verdict Leases as the agents write them: nodes 0..LEAKING leaking, the rest healthy.
fn verdicts() -> NodeVerdicts {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let leases: Vec<Lease> = (0..NODES)
        .map(|n| {
            let node = format!("node-{n}");
            let verdict = if n < LEAKING {
                Verdict::Leaking
            } else {
                Verdict::Healthy
            };
            let annotations = Published {
                node: node.clone(),
                verdict,
                evidence: Evidence {
                    connections: 3120,
                    connections_per_minute: 412.0,
                    since: now.clone(),
                    reason: "bench".into(),
                    ..Evidence::default()
                },
            }
            .annotations();
            serde_json::from_value(json!({
                "metadata": {"name": lease_name(&node), "namespace": "longhorn-guard",
                             "labels": labels(), "annotations": annotations},
                "spec": {"holderIdentity": format!("agent-{node}"), "leaseDurationSeconds": 3600,
                         "renewTime": now},
            }))
            .unwrap()
        })
        .collect();
    let v = NodeVerdicts::default();
    v.relist_start();
    let (_, unreadable) = v.replace(&leases);
    assert!(unreadable.is_empty(), "{unreadable:?}");
    v
}

fn request(volume: usize) -> DynamicObject {
    serde_json::from_value(shapes::backup(
        NS,
        &format!("new-backup-{volume}"),
        &format!("vol-{volume}"),
        &format!("snap-{volume}"),
        Some("daily"),
    ))
    .unwrap()
}

struct Bench {
    state: AppState,
    policy: Arc<Policy>,
    verdicts: NodeVerdicts,
    picks: Vec<DynamicObject>,
}

impl Bench {
    fn review(&self, obj: &DynamicObject, with_verdicts: bool) -> (Duration, Decision) {
        let groups = ["system:serviceaccounts".to_string()];
        let t = Instant::now();
        let backup = BackupRequest::from_object(obj, Some(NS), USER, &groups).unwrap();
        let view = self.state.index.view();
        let d = if with_verdicts {
            decide_with_nodes(&self.policy, &view, &self.verdicts.view(), &backup).0
        } else {
            decide(&self.policy, &view, &backup)
        };
        drop(view);
        let d = throttle_decision(
            self.state.throttle_inputs(),
            &self.policy,
            &backup,
            "uid",
            backup.recurring_job.clone(),
            true,
            d,
        );
        (t.elapsed(), std::hint::black_box(d))
    }

    /// p50 and p99 (µs) of `n` reviews.
    fn round(&self, n: usize, with_verdicts: bool) -> (f64, f64) {
        let mut times: Vec<f64> = (0..n)
            .map(|i| {
                let obj = &self.picks[i % self.picks.len()];
                self.review(obj, with_verdicts).0.as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        (times[n / 2], times[n * 99 / 100])
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let env = longhorn_guard_testkit::test_env();
    let n = env.bench_decisions.unwrap_or(20_000);
    let rounds = env.bench_rounds.unwrap_or(7);
    let policy = Arc::new(Policy::default());
    let state = AppState::new(
        policy.clone(),
        Arc::new(fill()),
        Arc::new(Metrics::new()),
        Arc::new(NoSnapshotSource),
    );
    // Volumes on healthy nodes, spread over the table.
    let picks = (0..64)
        .map(|k| request(LEAKING + k * (VOLUMES / 64) % (NODES - LEAKING) + NODES * (k % 9)))
        .collect();
    let bench = Bench {
        state,
        policy,
        verdicts: verdicts(),
        picks,
    };
    for obj in &bench.picks {
        let (_, d) = bench.review(obj, true);
        assert_eq!(d.label(), "allowed", "a healthy node's Backup: {d:?}");
    }
    let (_, on_leaking) = bench.review(&request(3), true);
    for i in 0..2000 {
        bench.review(&bench.picks[i % 64], i % 2 == 0);
    }
    // A second baseline in every round (A B A'): what the machine's noise alone does to the
    // ratio (A'/A), next to what the lookup does (B/A).
    let (mut base, mut with, mut again) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        base.push(bench.round(n, false));
        with.push(bench.round(n, true));
        again.push(bench.round(n, false));
    }
    let p = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(v.iter().map(f).collect());
    let (b50, b99) = (p(&base, |r| r.0), p(&base, |r| r.1));
    let (w50, w99) = (p(&with, |r| r.0), p(&with, |r| r.1));
    println!(
        "node verdict lookup on the admission path: {NODES} nodes ({LEAKING} leaking), {VOLUMES} volumes, {n} reviews x {rounds} rounds (median round)"
    );
    println!("  baseline (decide, no verdicts):  p50 {b50:.2} us  p99 {b99:.2} us");
    println!("  with verdicts (decide_with_nodes): p50 {w50:.2} us  p99 {w99:.2} us");
    println!(
        "  ratio with/baseline: p50 {:.3}x  p99 {:.3}x  (goal p99 <= 1.05x)",
        w50 / b50,
        w99 / b99
    );
    let (a50, a99) = (p(&again, |r| r.0), p(&again, |r| r.1));
    println!(
        "  noise: baseline again / baseline: p50 {:.3}x  p99 {:.3}x",
        a50 / b50,
        a99 / b99
    );
    println!(
        "  a Backup of a leaking node: {} ({})",
        on_leaking.label(),
        on_leaking.reason().map_or("-", |r| r.as_str())
    );
}
