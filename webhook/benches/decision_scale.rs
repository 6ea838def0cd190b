//! Decision latency against index size (issue #12: flat, p99 within 1.2x, from 1k to 500k
//! indexed objects). For each size a fresh `Index` is filled through its normal watch path
//! (`Init`, `InitApply` per object, `InitDone`) with objects shaped as Longhorn writes them,
//! all in ONE namespace as a Longhorn install has them: 45 % Backups (all Completed but a
//! fixed 20 in progress), 45 % Snapshots, 5 % Volumes on 10 nodes, 5 % Engines. Then the
//! review path minus HTTP runs sequentially on Backup CREATEs of existing snapshots:
//! `BackupRequest::from_object`, `decide` on an index view, and the throttle
//! (`throttle_decision`, default policy) as `/validate/backups` runs them. Reviews are dry
//! runs, so the throttle checks every limit but takes no slot and no token: the state is the
//! same for every iteration and every size.
//!
//! `cargo bench -p longhorn-guard-webhook --bench decision_scale`; `LHG_BENCH_DECISIONS`
//! (default 20,000 per round), `LHG_BENCH_ROUNDS` (default 5; the rounds cycle through the
//! sizes and the median round is reported: microsecond p99s on a shared machine move with
//! preemption), `LHG_BENCH_SIZES` (default `1000,10000,100000,500000`).
#![allow(clippy::unwrap_used)]

use longhorn_types::shapes::with_status;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::core::DynamicObject;
use longhorn_guard_webhook::index::IndexEvent;
use longhorn_guard_webhook::throttle::admission::throttle_decision;
use longhorn_guard_webhook::throttle::recurring_job_of;
use longhorn_guard_webhook::{
    AppState, BackupRequest, Index, Metrics, NoSnapshotSource, Policy, decide,
};
use longhorn_types::{Backup, BackupTarget, Engine, Snapshot, Volume, shapes};
use serde_json::Value;

const NS: &str = "longhorn-system";
const NODES: usize = 10;
const IN_FLIGHT: usize = 20;
const USER: &str = "system:serviceaccount:longhorn-system:longhorn-service-account";

/// Feeds one kind's initial list into the index, the way the watch does.
fn list<K>(index: &Index, objects: impl Iterator<Item = Value>)
where
    K: longhorn_guard_webhook::index::IndexedKind,
{
    index.apply::<K>(IndexEvent::RelistStart);
    for v in objects {
        index.apply::<K>(IndexEvent::Listed(serde_json::from_value(v).unwrap()));
    }
    index.apply::<K>(IndexEvent::RelistDone);
}

/// An index holding about `objects` entries (see the module docs for the mix).
fn fill(objects: usize) -> (Index, usize) {
    let volumes = (objects / 20).max(NODES);
    let snapshots = objects * 9 / 20;
    let backups = objects * 9 / 20;
    let index = Index::default();
    list::<Volume>(
        &index,
        (0..volumes).map(|v| {
            let node = format!("node-{}", v % NODES);
            with_status(
                shapes::volume(NS, &format!("vol-{v}"), &node),
                shapes::volume_status(&node),
            )
        }),
    );
    list::<Engine>(
        &index,
        (0..volumes).map(|v| {
            let node = format!("node-{}", v % NODES);
            with_status(
                shapes::engine(NS, &format!("vol-{v}"), &node),
                shapes::engine_status(&node, &format!("im-{node}"), "10.42.0.1", 10010),
            )
        }),
    );
    list::<Snapshot>(
        &index,
        (0..snapshots).map(|s| {
            with_status(
                shapes::snapshot(NS, &format!("snap-{s}"), &format!("vol-{}", s % volumes)),
                shapes::snapshot_status("node-0", ""),
            )
        }),
    );
    list::<Backup>(
        &index,
        (0..backups).map(|b| {
            let vol = format!("vol-{}", b % volumes);
            let snap = format!("snap-{b}");
            let state = if b < IN_FLIGHT {
                "InProgress"
            } else {
                "Completed"
            };
            with_status(
                shapes::backup(NS, &format!("backup-{b}"), &vol, &snap, Some("daily")),
                shapes::backup_status(state, "node-0", &vol, &snap),
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
    let held = index.counts().iter().map(|(_, n)| n).sum();
    (index, held)
}

/// A Backup CREATE of snapshot `s` (of volume `s % volumes`), as the object of a review.
fn request(s: usize, volumes: usize) -> DynamicObject {
    serde_json::from_value(shapes::backup(
        NS,
        &format!("new-backup-{s}"),
        &format!("vol-{}", s % volumes),
        &format!("snap-{s}"),
        Some("daily"),
    ))
    .unwrap()
}

/// One size: its filled index and the review requests.
struct Case {
    objects: usize,
    fill_s: f64,
    state: AppState,
    policy: Arc<Policy>,
    picks: Vec<DynamicObject>,
    /// p50 and p99 of each round.
    rounds: Vec<(f64, f64)>,
    /// Duration of each scrape-time refresh of the throttle figures (ms).
    scrapes: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

impl Case {
    fn new(objects: usize) -> Self {
        let t = Instant::now();
        let (index, held) = fill(objects);
        let fill_s = t.elapsed().as_secs_f64();
        let volumes = (objects / 20).max(NODES);
        let snapshots = objects * 9 / 20;
        let policy = Arc::new(Policy::default());
        let state = AppState::new(
            policy.clone(),
            Arc::new(index),
            Arc::new(Metrics::new()),
            Arc::new(NoSnapshotSource),
        );
        // Snapshots of volumes without a Backup in flight (the first IN_FLIGHT volumes have
        // one, and the per-volume cap is 1), spread over the whole table.
        let picks = (0..64)
            .map(|k| {
                let s = IN_FLIGHT + (k * (snapshots - IN_FLIGHT) / 64);
                let s = s + (volumes - s % volumes) % volumes + IN_FLIGHT + k % 7;
                request(s.min(snapshots - 1), volumes)
            })
            .collect();
        let case = Self {
            objects: held,
            fill_s,
            state,
            policy,
            picks,
            rounds: Vec::new(),
            scrapes: Vec::new(),
        };
        for i in 0..1000 {
            case.review(i);
        }
        case
    }

    /// One review as `/validate/backups` runs it, minus HTTP; its duration.
    fn review(&self, i: usize) -> Duration {
        let obj = &self.picks[i % self.picks.len()];
        let groups = ["system:serviceaccounts".to_string()];
        let t = Instant::now();
        let backup = BackupRequest::from_object(obj, Some(NS), USER, &groups).unwrap();
        let d = decide(&self.policy, &self.state.index.view(), &backup);
        let d = throttle_decision(
            self.state.throttle_inputs(),
            &self.policy,
            &backup,
            "uid",
            recurring_job_of(obj),
            true,
            d,
        );
        let took = t.elapsed();
        assert_eq!(d.label(), "allowed", "{d:?}");
        took
    }

    fn round(&mut self, decisions: usize) {
        let mut us: Vec<f64> = (0..decisions)
            .map(|i| self.review(i).as_secs_f64() * 1e6)
            .collect();
        us.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| us[((us.len() as f64 * p) as usize).min(us.len() - 1)];
        self.rounds.push((pct(0.50), pct(0.99)));
        // A /metrics scrape recomputes the Backup figures over the whole index (read lock).
        let t = Instant::now();
        self.state.refresh_throttle_metrics();
        self.scrapes.push(t.elapsed().as_secs_f64() * 1e3);
    }
}

fn main() {
    let env = longhorn_guard_testkit::test_env();
    let decisions = env.bench_decisions.unwrap_or(20_000);
    let rounds = env.bench_rounds.unwrap_or(5);
    let sizes = env
        .bench_sizes
        .clone()
        .unwrap_or_else(|| vec![1000, 10_000, 100_000, 500_000]);
    let mut cases: Vec<Case> = sizes.into_iter().map(Case::new).collect();
    // Rounds go through every size in turn, so a burst of load on the shared machine hits
    // them alike.
    for _ in 0..rounds {
        for case in cases.iter_mut() {
            case.round(decisions);
        }
    }
    println!(
        "decision (from_object + decide + throttle, dry run, default policy), {rounds} rounds of {decisions} sequential reviews per size, sizes interleaved; median of the rounds:"
    );
    let mut base: Option<f64> = None;
    for r in &cases {
        let p50 = median(r.rounds.iter().map(|r| r.0).collect());
        let p99 = median(r.rounds.iter().map(|r| r.1).collect());
        let b = *base.get_or_insert(p99);
        let each: Vec<String> = r.rounds.iter().map(|r| format!("{:.1}", r.1)).collect();
        println!(
            "  {:>7} objects (filled in {:5.1} s): p50 {:6.1} us  p99 {:6.1} us (rounds: {})  p99 vs first size {:5.2}x",
            r.objects,
            r.fill_s,
            p50,
            p99,
            each.join(" / "),
            p99 / b
        );
    }
    println!("  (goal: p99 within 1.2x of the first size)");
    println!("scrape-time throttle figures (/metrics), median of the rounds:");
    for r in &cases {
        println!(
            "  {:>7} objects: {:8.2} ms",
            r.objects,
            median(r.scrapes.clone())
        );
    }
}
