//! Settling the throttle's reservations against an index of 100k Backups (issue 17 §6). On
//! every admission, under the throttle's one mutex, each reservation is checked against the
//! index ("has the watch delivered the Backup it stands for?"). A `generateName` reservation
//! used to scan every Backup of the namespace for a name with its prefix
//! (`Reservation::seen_by_scan`, kept as the baseline); it now looks its generated names up in
//! a grouping the index keeps by generateName base and snapshot (`KindTable::generated_from`).
//! Both run here, in the same process on the same index, in alternating rounds.
//!
//! The index: `LHG_BENCH_BACKUPS` Backups (default 100,000) in ONE namespace, as Longhorn keeps
//! them: named ones (recurring jobs and CSI name their Backups) and 1 % generated from
//! `generateName: backup-`. Outstanding: `LHG_BENCH_RESERVATIONS` (default 32, the storm's
//! concurrency) `generateName` reservations whose Backups the watch has not delivered yet, so
//! none settles and every round sees the same state. Each round settles them
//! `LHG_BENCH_SETTLES` times (default 200) with one lookup, then with the other;
//! `LHG_BENCH_ROUNDS` rounds (default 5), median reported.
//!
//! `cargo bench -p longhorn-guard-webhook --bench reservations`
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use longhorn_guard_webhook::Index;
use longhorn_guard_webhook::index::IndexEvent;
use longhorn_guard_webhook::index::IndexView;
use longhorn_guard_webhook::throttle::reservations::{Reservation, ReservationKey, Reservations};
use longhorn_types::shapes::with_status;
use longhorn_types::{Backup, shapes};

const NS: &str = "longhorn-system";
const VOLUMES: usize = 1_000;
/// Every 100th Backup has a generated name.
const GENERATED_EVERY: usize = 100;

/// `backups` Backups through the index's list path (see the module docs for the mix).
fn fill(backups: usize) -> Index {
    let index = Index::default();
    index.apply::<Backup>(IndexEvent::RelistStart);
    for b in 0..backups {
        let vol = format!("vol-{}", b % VOLUMES);
        let snap = format!("snap-{b}");
        let mut obj = if b % GENERATED_EVERY == 0 {
            let mut obj = shapes::backup(
                NS,
                &format!("backup-{:05x}", b / GENERATED_EVERY),
                &vol,
                &snap,
                None,
            );
            obj["metadata"]["generateName"] = "backup-".into();
            obj
        } else {
            shapes::backup(NS, &format!("backup-{b}-daily"), &vol, &snap, Some("daily"))
        };
        obj = with_status(
            obj,
            shapes::backup_status("Completed", "node-0", &vol, &snap),
        );
        index.apply::<Backup>(IndexEvent::Listed(serde_json::from_value(obj).unwrap()));
    }
    index.apply::<Backup>(IndexEvent::RelistDone);
    index
}

/// `n` reservations of `generateName: backup-` CREATEs the watch has not delivered.
fn outstanding(n: usize) -> Reservations {
    let mut reservations = Reservations::default();
    for i in 0..n {
        reservations.add(Reservation {
            namespace: NS.into(),
            key: ReservationKey::Uid {
                uid: format!("uid-{i}"),
                generate_name: "backup-".into(),
            },
            volume: Some(format!("vol-{}", i % VOLUMES).into()),
            node: None,
            snapshot: format!("snap-new-{i}").into(),
            at: Instant::now(),
            at_unix: 0,
        });
    }
    reservations
}

/// Settles `reservations` `settles` times; the time per settle.
fn settle_each(
    reservations: &mut Reservations,
    view: &IndexView<'_>,
    settles: usize,
    is_seen: fn(&Reservation, &IndexView<'_>) -> bool,
) -> Duration {
    let held = reservations.len();
    let t = Instant::now();
    for _ in 0..settles {
        let (seen, expired) =
            reservations.settle_by(view, Instant::now(), Duration::from_secs(3600), is_seen);
        assert_eq!((seen, expired), (0, 0));
    }
    let took = t.elapsed() / u32::try_from(settles).unwrap();
    assert_eq!(reservations.len(), held);
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let env = longhorn_guard_testkit::test_env();
    let backups = env.bench_backups.unwrap_or(100_000);
    let held = env.bench_reservations.unwrap_or(32);
    let settles = env.bench_settles.unwrap_or(200);
    let rounds = env.bench_rounds.unwrap_or(5);
    let t = Instant::now();
    let index = fill(backups);
    let fill_s = t.elapsed().as_secs_f64();
    let view = index.view();

    // Both lookups agree: a delivered generated Backup is seen by each, the outstanding ones
    // by neither.
    let probe = |snapshot: &str| Reservation {
        snapshot: snapshot.into(),
        ..outstanding(1).in_namespace(NS).next().unwrap().clone()
    };
    let delivered = probe(&format!("snap-{}", GENERATED_EVERY * 7));
    assert!(delivered.seen(&view) && delivered.seen_by_scan(&view));
    let pending = probe("snap-new-0");
    assert!(!pending.seen(&view) && !pending.seen_by_scan(&view));

    let mut reservations = outstanding(held);
    let (mut scan, mut indexed) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        scan.push(settle_each(
            &mut reservations,
            &view,
            settles,
            Reservation::seen_by_scan,
        ));
        indexed.push(settle_each(
            &mut reservations,
            &view,
            settles,
            Reservation::seen,
        ));
    }
    let (scan_m, indexed_m) = (median(scan.clone()), median(indexed.clone()));
    let us = |d: &Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
    println!(
        "settling {held} outstanding generateName reservations against {} Backups in one namespace (filled in {fill_s:.1} s), {rounds} rounds of {settles} settles each way, alternating:",
        view.data().backups.len()
    );
    println!(
        "  before (scan of the namespace per reservation): {:>10} us per settle (rounds: {})",
        us(&scan_m),
        scan.iter().map(us).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  after  (index lookup of generated names):       {:>10} us per settle (rounds: {})",
        us(&indexed_m),
        indexed.iter().map(us).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  before / after: {:.0}x  (per admission, under the throttle's mutex)",
        scan_m.as_secs_f64() / indexed_m.as_secs_f64().max(1e-9)
    );
}
