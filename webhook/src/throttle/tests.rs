#![allow(clippy::unwrap_used)]

use longhorn_types::shapes::with_status;
use std::time::{Duration, Instant};

use crate::index::IndexEvent;
use longhorn_types::{Backup, Engine, Snapshot, Volume, shapes};
use serde_json::json;

use super::token_bucket::{Buckets, TokenBucket};
use super::*;
use crate::index::Index;
use crate::policy::throttle::{RateLimit, RecurringAction, RecurringJobRule, ThrottlePolicy};
use crate::policy::{Mode, Policy};
use crate::policy::{PolicyCell, PolicyFileWatch, ReloadOutcome};

const NS: &str = "lh-ns";
const T0: i64 = 1_800_000_000;
const LONGHORN_SA: &str = "system:serviceaccount:lh-ns:longhorn-service-account";

fn now() -> Now {
    Now {
        at: Instant::now(),
        unix: T0,
    }
}

fn rfc3339(unix: i64) -> String {
    jiff_like(unix)
}

/// Formats a unix time as RFC 3339 (UTC) without a date library.
fn jiff_like(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// vol-1..vol-4: vol-1, vol-2 on node-1 (vol-2's Volume says node-9 but its active engine
/// is on node-1), vol-3, vol-4 on node-2. Snapshots snap-<vol>-<n> for n in 0..5.
fn index() -> Index {
    let idx = Index::default();
    for (v, node) in [
        ("vol-1", "node-1"),
        ("vol-2", "node-9"),
        ("vol-3", "node-2"),
        ("vol-4", "node-2"),
    ] {
        let vol: Volume = serde_json::from_value(with_status(
            shapes::volume(NS, v, node),
            shapes::volume_status(node),
        ))
        .unwrap();
        idx.apply(IndexEvent::Upsert(vol));
        for n in 0..5 {
            let s: Snapshot = serde_json::from_value(with_status(
                shapes::snapshot(NS, &format!("snap-{v}-{n}"), v),
                shapes::snapshot_status(node, ""),
            ))
            .unwrap();
            idx.apply(IndexEvent::Upsert(s));
        }
    }
    let e: Engine = serde_json::from_value(shapes::engine(NS, "vol-2", "node-1")).unwrap();
    idx.apply(IndexEvent::Upsert(e));
    idx
}

/// Puts a Backup into the index: `state` as Longhorn writes it, created `age` seconds
/// before T0.
fn backup_in(idx: &Index, name: &str, volume: &str, snapshot: &str, state: &str, age: i64) {
    apply_backup(idx, backup_obj(name, volume, snapshot, state, age));
}

/// [`backup_in`] of a Backup whose name the API server generated: `generate_name` (cut to 58
/// characters) + `suffix` (5 characters).
fn generated_backup_in(
    idx: &Index,
    generate_name: &str,
    suffix: &str,
    (volume, snapshot, state): (&str, &str, &str),
) {
    let name = format!("{}{suffix}", crate::index::generated_base(generate_name));
    let mut obj = backup_obj(&name, volume, snapshot, state, 1);
    obj["metadata"]["generateName"] = json!(generate_name);
    apply_backup(idx, obj);
}

fn backup_obj(
    name: &str,
    volume: &str,
    snapshot: &str,
    state: &str,
    age: i64,
) -> serde_json::Value {
    let mut obj = shapes::backup(NS, name, volume, snapshot, None);
    obj["metadata"]["creationTimestamp"] = json!(rfc3339(T0 - age));
    with_status(
        obj,
        shapes::backup_status(state, "node-1", volume, snapshot),
    )
}

fn apply_backup(idx: &Index, obj: serde_json::Value) {
    let b: Backup = serde_json::from_value(obj).unwrap();
    idx.apply(IndexEvent::Upsert(b));
}

fn req(name: &str, volume: &str, snapshot: &str) -> ThrottleRequest {
    ThrottleRequest {
        uid: format!("uid-{name}"),
        namespace: NS.into(),
        name: name.into(),
        snapshot: snapshot.into(),
        volume: Some(volume.into()),
        username: LONGHORN_SA.into(),
        ..ThrottleRequest::default()
    }
}

fn no_rates() -> ThrottlePolicy {
    ThrottlePolicy {
        cluster_rate: RateLimit::OFF,
        recurring_job_rate: RateLimit::OFF,
        user_rate: RateLimit::OFF,
        ..ThrottlePolicy::default()
    }
}

fn denied(o: &ThrottleOutcome) -> &ThrottleDenial {
    match o {
        ThrottleOutcome::Denied(d) => d,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn allowed(o: &ThrottleOutcome) -> &Vec<String> {
    match o {
        ThrottleOutcome::Allowed { warnings, .. } => warnings,
        other => panic!("expected allowed, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// token bucket
// ---------------------------------------------------------------------------------------

#[test]
fn token_bucket_bursts_then_refills_at_the_rate() {
    let limit = RateLimit::new(60.0, 3); // one per second
    let t0 = Instant::now();
    let mut b = TokenBucket::new(&limit, t0);
    for _ in 0..3 {
        assert!(b.try_take(&limit, t0).is_ok());
    }
    let wait = b.try_take(&limit, t0).unwrap_err();
    assert_eq!(wait, Duration::from_secs(1));
    // Half a second later: still empty, half a second to wait.
    let wait = b
        .try_take(&limit, t0 + Duration::from_millis(500))
        .unwrap_err();
    assert_eq!(wait, Duration::from_millis(500));
    assert!(b.try_take(&limit, t0 + Duration::from_secs(1)).is_ok());
    // A long pause refills to the burst, not beyond.
    b.refill(&limit, t0 + Duration::from_secs(3600));
    assert_eq!(b.tokens(), 3.0);
    // A reload with a smaller burst clamps at once.
    let smaller = RateLimit::new(60.0, 1);
    b.refill(&smaller, t0 + Duration::from_secs(3600));
    assert_eq!(b.tokens(), 1.0);
    // Time going backwards (another caller's older `now`) adds nothing.
    b.refill(&limit, t0);
    assert_eq!(b.tokens(), 1.0);
}

#[test]
fn full_buckets_are_forgotten() {
    let limit = RateLimit::new(60.0, 2);
    let t0 = Instant::now();
    let mut buckets: Buckets<String> = Buckets::default();
    buckets.get(&"alice".to_string(), &limit, t0).take();
    buckets.get(&"bob".to_string(), &limit, t0);
    buckets.sweep(&limit, t0);
    assert_eq!(buckets.len(), 1, "bob's untouched bucket is full: dropped");
    buckets.sweep(&limit, t0 + Duration::from_secs(1));
    assert!(buckets.is_empty());
}

// ---------------------------------------------------------------------------------------
// caps, reservations, duplicates
// ---------------------------------------------------------------------------------------

#[test]
fn volume_cap_counts_reservations_until_the_watch_delivers() {
    let idx = index();
    let t = Throttle::new();
    let p = no_rates();
    let n = now();
    let first = t.admit(&p, &idx.view(), &req("b-1", "vol-1", "snap-vol-1-0"), n);
    allowed(&first);
    assert_eq!(t.reservations(), 1);
    // Not yet in the index: the reservation holds the slot.
    let second = t.admit(&p, &idx.view(), &req("b-2", "vol-1", "snap-vol-1-1"), n);
    let d = denied(&second);
    assert_eq!(d.scope, Scope::Volume);
    assert_eq!(d.code, 429);
    assert!(
        d.message
            .contains("volume \"vol-1\" has 1 Backup(s) in flight, the limit is 1"),
        "{}",
        d.message
    );
    assert!(d.message.contains("b-1 (admitted, 0s)"), "{}", d.message);
    assert!(d.message.contains("Retry after about 30s"), "{}", d.message);
    // The watch delivers b-1 (New): the reservation is dropped, the index counts it once.
    backup_in(&idx, "b-1", "vol-1", "snap-vol-1-0", "", 5);
    let third = t.admit(&p, &idx.view(), &req("b-3", "vol-1", "snap-vol-1-2"), n);
    assert!(denied(&third).message.contains("has 1 Backup(s)"));
    assert_eq!(t.reservations(), 0);
    // b-1 completes: the slot is free.
    backup_in(&idx, "b-1", "vol-1", "snap-vol-1-0", "Completed", 5);
    allowed(&t.admit(&p, &idx.view(), &req("b-4", "vol-1", "snap-vol-1-3"), n));
}

#[test]
fn reservations_expire_after_the_timeout() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        reservation_timeout_seconds: 30,
        ..no_rates()
    };
    let n = now();
    allowed(&t.admit(&p, &idx.view(), &req("b-1", "vol-1", "snap-vol-1-0"), n));
    denied(&t.admit(
        &p,
        &idx.view(),
        &req("b-2", "vol-1", "snap-vol-1-1"),
        n.after(Duration::from_secs(29)),
    ));
    // The create never happened (another webhook denied it): after 30 s the slot is free.
    allowed(&t.admit(
        &p,
        &idx.view(),
        &req("b-3", "vol-1", "snap-vol-1-2"),
        n.after(Duration::from_secs(30)),
    ));
}

#[test]
fn generate_name_reservations_match_by_prefix_and_snapshot() {
    let idx = index();
    let t = Throttle::new();
    let p = no_rates();
    let n = now();
    let mut r = req("", "vol-1", "snap-vol-1-0");
    r.generate_name = "backup-".into();
    allowed(&t.admit(&p, &idx.view(), &r, n));
    assert_eq!(t.reservations(), 1);
    // Another generated Backup of another snapshot, and a Backup named (not generated) with
    // the prefix and the snapshot: neither is the one admitted.
    generated_backup_in(
        &idx,
        "backup-",
        "zzzzz",
        ("vol-3", "snap-vol-3-0", "Completed"),
    );
    backup_in(
        &idx,
        "backup-by-hand",
        "vol-1",
        "snap-vol-1-0",
        "Completed",
        1,
    );
    let o = t.admit(&p, &idx.view(), &req("x", "vol-1", "snap-vol-1-1"), n);
    assert!(
        denied(&o).message.contains("backup-<generated> (admitted"),
        "{o:?}"
    );
    generated_backup_in(
        &idx,
        "backup-",
        "x7k2q",
        ("vol-1", "snap-vol-1-0", "Pending"),
    );
    denied(&t.admit(&p, &idx.view(), &req("y", "vol-1", "snap-vol-1-1"), n));
    assert_eq!(
        t.reservations(),
        0,
        "matched and dropped once the generated name was seen"
    );
}

/// The index lookup of generated names finds what the former scan of the namespace found,
/// and also the names generated from a `generateName` longer than the 58 characters the API
/// server keeps (the scan's prefix test missed those: their reservation was held until its
/// timeout). A generated name leaves the lookup when its Backup is deleted or relisted away.
#[test]
fn generated_names_are_found_by_the_index_as_by_the_scan() {
    use super::reservations::{Reservation, ReservationKey};
    let idx = index();
    let long = format!("nightly-{}-", "v".repeat(60));
    let reservation = |generate_name: &str, snapshot: &str| Reservation {
        namespace: NS.into(),
        key: ReservationKey::Uid {
            uid: format!("uid-{generate_name}-{snapshot}"),
            generate_name: generate_name.into(),
        },
        volume: Some("vol-1".into()),
        node: None,
        snapshot: snapshot.into(),
        at: Instant::now(),
        at_unix: T0,
    };
    for (i, prefix) in ["backup-", "backup-b-", "recurring-"].iter().enumerate() {
        for n in 0..3 {
            generated_backup_in(
                &idx,
                prefix,
                &format!("q{i}{n}zz"),
                ("vol-1", &format!("snap-vol-1-{n}"), "Pending"),
            );
        }
    }
    generated_backup_in(&idx, &long, "abcde", ("vol-1", "snap-vol-1-4", "Pending"));
    let view = idx.view();
    for prefix in ["backup-", "backup-b-", "recurring-", "other-"] {
        for n in 0..5 {
            let r = reservation(prefix, &format!("snap-vol-1-{n}"));
            let found = prefix != "other-" && n < 3;
            assert_eq!(r.seen(&view), found, "{prefix} snap-vol-1-{n}");
            // "backup-" is a prefix of "backup-b-": the scan also met those, same answer.
            assert_eq!(r.seen_by_scan(&view), found, "{prefix} snap-vol-1-{n}");
        }
    }
    let r = reservation(&long, "snap-vol-1-4");
    assert!(
        r.seen(&view),
        "generated from a generateName cut to 58 characters"
    );
    assert!(!r.seen_by_scan(&view), "the scan's prefix test misses it");
    drop(view);

    let gone = format!("{}q10zz", "backup-b-");
    let mut obj = backup_obj(&gone, "vol-1", "snap-vol-1-0", "Pending", 1);
    obj["metadata"]["generateName"] = json!("backup-b-");
    idx.apply(IndexEvent::Delete(
        serde_json::from_value::<Backup>(obj).unwrap(),
    ));
    assert!(!reservation("backup-b-", "snap-vol-1-0").seen(&idx.view()));
    assert!(reservation("backup-b-", "snap-vol-1-1").seen(&idx.view()));
    idx.apply::<Backup>(IndexEvent::RelistStart);
    idx.apply::<Backup>(IndexEvent::RelistDone);
    assert!(!reservation("backup-", "snap-vol-1-1").seen(&idx.view()));
}

#[test]
fn node_cap_uses_the_active_engine_node() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        max_in_flight_per_volume: 5,
        max_in_flight_per_node: 2,
        ..no_rates()
    };
    let n = now();
    // vol-2's Volume says node-9 but its active engine runs on node-1.
    backup_in(&idx, "a", "vol-1", "snap-vol-1-0", "InProgress", 100);
    backup_in(&idx, "b", "vol-2", "snap-vol-2-0", "Pending", 50);
    let d = t.admit(&p, &idx.view(), &req("c", "vol-1", "snap-vol-1-1"), n);
    let d = denied(&d);
    assert_eq!(d.scope, Scope::Node);
    assert!(
        d.message
            .contains("node \"node-1\" has 2 Backup(s) in flight, the limit is 2"),
        "{}",
        d.message
    );
    assert!(
        d.message
            .contains("Oldest in flight: a (InProgress, 1m40s), b (Pending, 50s)"),
        "{}",
        d.message
    );
    // node-2 is free.
    allowed(&t.admit(&p, &idx.view(), &req("d", "vol-3", "snap-vol-3-0"), n));
}

#[test]
fn cluster_cap_lists_at_most_three_oldest_and_counts_unknown_states() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        max_in_flight_per_volume: 10,
        max_in_flight_per_node: 10,
        max_in_flight_per_cluster: 4,
        ..no_rates()
    };
    let n = now();
    backup_in(&idx, "old", "vol-1", "snap-vol-1-0", "Pending", 4000);
    backup_in(&idx, "new", "vol-1", "snap-vol-1-1", "", 10);
    backup_in(&idx, "weird", "vol-3", "snap-vol-3-0", "Paused", 20);
    backup_in(&idx, "mid", "vol-3", "snap-vol-3-1", "InProgress", 30);
    // Terminal ones never count, Deleting (1.8+) included; nor do synced ones (no snapshot).
    for (i, s) in ["Completed", "Error", "Unknown", "Deleting"]
        .iter()
        .enumerate()
    {
        backup_in(
            &idx,
            &format!("done-{i}"),
            "vol-4",
            &format!("snap-vol-4-{i}"),
            s,
            10,
        );
    }
    backup_in(&idx, "synced", "vol-4", "", "", 10);
    let o = t.admit(&p, &idx.view(), &req("z", "vol-4", "snap-vol-4-4"), n);
    let d = denied(&o);
    assert_eq!(d.scope, Scope::Cluster);
    assert!(
        d.message
            .contains("has 4 Backup(s) in flight, the limit is 4"),
        "{}",
        d.message
    );
    assert!(
        d.message.contains(
            "Oldest in flight: old (Pending, 1h06m) [stuck: over 15m00s], mid (InProgress, 30s), weird (unknown-state, 20s)."
        ),
        "{}",
        d.message
    );
    assert!(!d.message.contains("new ("), "{}", d.message);
}

#[test]
fn stuck_holders_are_named_with_the_way_out() {
    let idx = index();
    let t = Throttle::new();
    let p = no_rates();
    let n = now();
    backup_in(&idx, "stuck-1", "vol-1", "snap-vol-1-0", "Pending", 3600);
    let d = t.admit(&p, &idx.view(), &req("b", "vol-1", "snap-vol-1-1"), n);
    let m = &denied(&d).message;
    assert!(
        m.contains("stuck-1 (Pending, 1h00m) [stuck: over 15m00s]"),
        "{m}"
    );
    assert!(
        m.contains("Backup \"stuck-1\" looks stuck: it has been Pending for 1h00m"),
        "{m}"
    );
    assert!(m.contains("`longhorn-guard prune`"), "{m}");
    assert!(m.contains("`kubectl -n lh-ns delete backups.longhorn.io stuck-1` after checking it has no backup URL"), "{m}");

    // A young Backup whose snapshot is gone is called stuck too.
    backup_in(&idx, "orphan", "vol-3", "snap-deleted", "Pending", 60);
    let d = t.admit(&p, &idx.view(), &req("c", "vol-3", "snap-vol-3-1"), n);
    let m = &denied(&d).message;
    assert!(
        m.contains("orphan (Pending, 1m00s) [snapshot \"snap-deleted\" is gone]"),
        "{m}"
    );
    assert!(
        m.contains("its snapshot \"snap-deleted\" is gone, so Longhorn will keep it Pending"),
        "{m}"
    );
}

#[test]
fn a_backup_that_cannot_finish_holds_its_volume_slot_only_until_stuck_after() {
    let idx = index();
    let p = ThrottlePolicy {
        max_in_flight_per_node: 2,
        ..no_rates()
    };
    let n = now();
    let judge = |name: &str, vol: &str, snap: &str| {
        // A fresh throttle each time: no reservation of an earlier call counts.
        Throttle::new().admit(&p, &idx.view(), &req(name, vol, snap), n)
    };
    // vol-1's Backup lost its snapshot a minute after it was created: it holds the slot.
    backup_in(&idx, "doomed", "vol-1", "snap-deleted", "Pending", 60);
    let d = judge("next", "vol-1", "snap-vol-1-1");
    let m = &denied(&d).message;
    assert_eq!(denied(&d).scope, Scope::Volume, "{m}");
    assert!(
        m.contains("it holds the volume's slot until it is 15m00s old (throttle.stuckAfterSeconds), then the volume's Backups are admitted again"),
        "{m}"
    );
    // Once it is stuckAfterSeconds old, it holds vol-1's slot no more: the next Backup of an
    // existing snapshot is admitted, with a warning naming the Backup that cannot finish.
    backup_in(&idx, "doomed", "vol-1", "snap-deleted", "Pending", 15 * 60);
    let o = judge("next", "vol-1", "snap-vol-1-1");
    let w = allowed(&o).join("\n");
    assert!(
        w.contains("volume \"vol-1\" has 1 Backup(s) that cannot finish, their snapshot gone: doomed (Pending, 15m00s, snapshot \"snap-deleted\")"),
        "{w}"
    );
    assert!(w.contains("`longhorn-guard prune -n lh-ns`"), "{w}");
    // The same for a snapshot marked removed, lost in the engine, and a New Backup.
    for (i, (state, status)) in [
        (
            "Pending",
            json!({ "markRemoved": true, "readyToUse": false }),
        ),
        (
            "",
            json!({ "error": longhorn_types::SNAPSHOT_LOST_TRACK_ERROR, "readyToUse": false }),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut st = shapes::snapshot_status("node-2", "");
        if let (Some(st), Some(extra)) = (st.as_object_mut(), status.as_object()) {
            st.extend(extra.clone());
        }
        let snap: Snapshot = serde_json::from_value(with_status(
            shapes::snapshot(NS, &format!("snap-vol-3-{i}"), "vol-3"),
            st,
        ))
        .unwrap();
        idx.apply(IndexEvent::Upsert(snap));
        backup_in(
            &idx,
            &format!("gone-{i}"),
            "vol-3",
            &format!("snap-vol-3-{i}"),
            state,
            3600,
        );
        allowed(&judge(&format!("after-{i}"), "vol-3", "snap-vol-3-4"));
        backup_in(
            &idx,
            &format!("gone-{i}"),
            "vol-3",
            &format!("snap-vol-3-{i}"),
            "Completed",
            3600,
        );
    }
    // Still held: an old Backup whose snapshot exists, and an InProgress one (its replica is
    // sending data: it ends either way).
    backup_in(&idx, "slow", "vol-4", "snap-vol-4-0", "Pending", 3600);
    assert_eq!(
        denied(&judge("x", "vol-4", "snap-vol-4-1")).scope,
        Scope::Volume
    );
    backup_in(&idx, "slow", "vol-4", "snap-vol-4-0", "Completed", 3600);
    backup_in(&idx, "sending", "vol-4", "snap-gone-4", "InProgress", 3600);
    assert_eq!(
        denied(&judge("x", "vol-4", "snap-vol-4-1")).scope,
        Scope::Volume
    );
    // It keeps counting for its node: vol-1 and vol-2 are on node-1 (cap 2).
    backup_in(&idx, "b2", "vol-2", "snap-vol-2-0", "Pending", 10);
    let d = judge("next", "vol-1", "snap-vol-1-1");
    assert_eq!(denied(&d).scope, Scope::Node, "{}", denied(&d).message);
    // The freed slot goes to one Backup only: an admitted one holds it again.
    backup_in(&idx, "b2", "vol-2", "snap-vol-2-0", "Completed", 10);
    let t = Throttle::new();
    allowed(&t.admit(&p, &idx.view(), &req("first", "vol-1", "snap-vol-1-1"), n));
    let d = t.admit(&p, &idx.view(), &req("second", "vol-1", "snap-vol-1-2"), n);
    assert_eq!(denied(&d).scope, Scope::Volume);
}

/// The incident's retry loop against the rule: every ~30 s something asks for a Backup of
/// vol-1 (of a snapshot that exists), and each admitted one loses its snapshot right after
/// admission. In an hour, vol-1 gains one Backup that cannot finish per stuckAfterSeconds.
#[test]
fn snapshots_vanishing_after_admission_add_one_stuck_backup_per_stuck_after() {
    let idx = index();
    let p = no_rates();
    let mut admitted = Vec::new();
    for t in (0..3600).step_by(30) {
        let n = Now {
            at: Instant::now(),
            unix: T0 + t,
        };
        let name = format!("retry-{t}");
        let o = Throttle::new().admit(&p, &idx.view(), &req(&name, "vol-1", "snap-vol-1-1"), n);
        if matches!(o, ThrottleOutcome::Allowed { .. }) {
            // The watch delivers it, Pending, its snapshot already gone.
            backup_in(
                &idx,
                &name,
                "vol-1",
                &format!("vanished-{t}"),
                "Pending",
                -t,
            );
            admitted.push(t);
        }
    }
    assert_eq!(admitted, [0, 900, 1800, 2700]);
}

#[test]
fn duplicates_are_denied_first() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        max_in_flight_per_volume: 5,
        ..no_rates()
    };
    let n = now();
    backup_in(&idx, "first", "vol-1", "snap-vol-1-0", "InProgress", 10);
    let o = t.admit(&p, &idx.view(), &req("again", "vol-1", "snap-vol-1-0"), n);
    let d = denied(&o);
    assert_eq!(d.scope, Scope::Duplicate);
    assert!(
        d.message.contains(
            "Snapshot \"snap-vol-1-0\" already has a Backup in flight: \"first\" (InProgress, 10s)"
        ),
        "{}",
        d.message
    );
    // Once it completed, backing the snapshot up again is fine.
    backup_in(&idx, "first", "vol-1", "snap-vol-1-0", "Completed", 10);
    allowed(&t.admit(&p, &idx.view(), &req("again", "vol-1", "snap-vol-1-0"), n));
    // Off by policy.
    let off = ThrottlePolicy {
        deny_duplicates: false,
        ..p
    };
    allowed(&t.admit(&off, &idx.view(), &req("third", "vol-1", "snap-vol-1-0"), n));
}

#[test]
fn empty_snapshot_name_is_never_throttled_nor_counted() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        max_in_flight_per_cluster: 1,
        ..no_rates()
    };
    let n = now();
    for i in 0..5 {
        assert_eq!(
            t.admit(&p, &idx.view(), &req(&format!("sync-{i}"), "vol-1", ""), n),
            ThrottleOutcome::Skipped
        );
    }
    assert_eq!(t.reservations(), 0);
    allowed(&t.admit(&p, &idx.view(), &req("real", "vol-1", "snap-vol-1-0"), n));
}

#[test]
fn dry_runs_take_no_slot_and_no_token() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        cluster_rate: RateLimit::new(1.0, 1),
        ..no_rates()
    };
    let n = now();
    let mut r = req("b-1", "vol-1", "snap-vol-1-0");
    r.dry_run = true;
    allowed(&t.admit(&p, &idx.view(), &r, n));
    allowed(&t.admit(&p, &idx.view(), &r, n));
    assert_eq!(t.reservations(), 0);
    assert_eq!(t.cluster_tokens(&p, NS, n.at), 1.0);
}

// ---------------------------------------------------------------------------------------
// rates
// ---------------------------------------------------------------------------------------

#[test]
fn cluster_rate_denies_with_the_exact_wait() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        max_in_flight_per_volume: 0,
        max_in_flight_per_node: 0,
        max_in_flight_per_cluster: 0,
        cluster_rate: RateLimit::new(6.0, 2), // one per 10 s
        ..no_rates()
    };
    let n = now();
    allowed(&t.admit(&p, &idx.view(), &req("a", "vol-1", "snap-vol-1-0"), n));
    allowed(&t.admit(&p, &idx.view(), &req("b", "vol-1", "snap-vol-1-1"), n));
    let o = t.admit(&p, &idx.view(), &req("c", "vol-1", "snap-vol-1-2"), n);
    let d = denied(&o);
    assert_eq!(d.scope, Scope::ClusterRate);
    assert_eq!(d.retry_after_seconds, 10);
    assert!(
        d.message
            .contains("above 6/min with a burst of 2 (throttle.clusterRate); 0 of 2 tokens left"),
        "{}",
        d.message
    );
    assert!(d.message.contains("Retry after 10s."), "{}", d.message);
    // A denial takes no token: 10 s later exactly one more passes.
    allowed(&t.admit(
        &p,
        &idx.view(),
        &req("c", "vol-1", "snap-vol-1-2"),
        n.after(Duration::from_secs(10)),
    ));
    denied(&t.admit(
        &p,
        &idx.view(),
        &req("d", "vol-1", "snap-vol-1-3"),
        n.after(Duration::from_secs(10)),
    ));
}

#[test]
fn user_rate_applies_per_user_and_the_cluster_rate_to_everyone() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        max_in_flight_per_volume: 0,
        max_in_flight_per_node: 0,
        max_in_flight_per_cluster: 0,
        user_rate: RateLimit::new(1.0, 1),
        cluster_rate: RateLimit::new(1.0, 3),
        ..no_rates()
    };
    let n = now();
    let as_user = |name: &str, user: &str, snap: &str| {
        let mut r = req(name, "vol-1", snap);
        r.username = user.into();
        r
    };
    allowed(&t.admit(&p, &idx.view(), &as_user("a", "alice", "snap-vol-1-0"), n));
    let o = t.admit(&p, &idx.view(), &as_user("b", "alice", "snap-vol-1-1"), n);
    assert_eq!(denied(&o).scope, Scope::UserRate);
    assert!(denied(&o).message.contains("user \"alice\""));
    allowed(&t.admit(&p, &idx.view(), &as_user("c", "bob", "snap-vol-1-2"), n));
    allowed(&t.admit(&p, &idx.view(), &as_user("d", "carol", "snap-vol-1-3"), n));
    // The cluster bucket (3) is empty now, whoever asks.
    let o = t.admit(&p, &idx.view(), &as_user("e", "dave", "snap-vol-1-4"), n);
    assert_eq!(denied(&o).scope, Scope::ClusterRate);
}

#[test]
fn recurring_jobs_get_warnings_on_rates_and_denials_on_caps_by_default() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        recurring_job_rate: RateLimit::new(1.0, 1),
        ..no_rates()
    };
    let n = now();
    let job = |name: &str, vol: &str, snap: &str| {
        let mut r = req(name, vol, snap);
        r.recurring_job = Some("daily".into());
        r
    };
    allowed(&t.admit(&p, &idx.view(), &job("a", "vol-1", "snap-vol-1-0"), n));
    let o = t.admit(&p, &idx.view(), &job("b", "vol-3", "snap-vol-3-0"), n);
    match &o {
        ThrottleOutcome::Allowed {
            warnings, warned, ..
        } => {
            assert_eq!(*warned, Some(Scope::RecurringJobRate));
            assert!(
                warnings[0].starts_with("recurring-job rule, would deny:"),
                "{warnings:?}"
            );
            assert!(
                warnings[0].contains("recurring job \"daily\""),
                "{warnings:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The volume cap still denies, and says what the denial costs.
    let o = t.admit(&p, &idx.view(), &job("c", "vol-1", "snap-vol-1-1"), n);
    let d = denied(&o);
    assert_eq!(d.scope, Scope::Volume);
    assert!(d.message.contains("recurring job \"daily\": the job pod exits and its CronJob retries it with a new snapshot"), "{}", d.message);
    // With rates: deny, the job bucket denies.
    let strict = ThrottlePolicy {
        recurring_jobs: RecurringJobRule {
            rates: RecurringAction::Deny,
            ..RecurringJobRule::default()
        },
        ..p.clone()
    };
    let o = t.admit(&strict, &idx.view(), &job("d", "vol-4", "snap-vol-4-0"), n);
    assert_eq!(denied(&o).scope, Scope::RecurringJobRate);
}

// ---------------------------------------------------------------------------------------
// exemptions, warn-only, warnings
// ---------------------------------------------------------------------------------------

#[test]
fn exemptions_bypass_but_still_count() {
    let idx = index();
    let t = Throttle::new();
    let mut p = no_rates();
    p.exemptions
        .labels
        .insert("backup.example.com/urgent".into(), "*".into());
    p.exemptions.users.push("admin".into());
    p.exemptions.service_accounts.push("*:backup-bot".into());
    p.exemptions.groups.push("ops".into());
    let n = now();
    allowed(&t.admit(&p, &idx.view(), &req("a", "vol-1", "snap-vol-1-0"), n));
    let mut by_label = req("b", "vol-1", "snap-vol-1-1");
    by_label
        .labels
        .insert("backup.example.com/urgent".into(), "yes".into());
    let mut by_user = req("c", "vol-1", "snap-vol-1-2");
    by_user.username = "admin".into();
    let mut by_sa = req("d", "vol-1", "snap-vol-1-3");
    by_sa.username = "system:serviceaccount:tools:backup-bot".into();
    let mut by_group = req("e", "vol-1", "snap-vol-1-4");
    by_group.username = "someone".into();
    by_group.groups = vec!["ops".into()];
    for r in [&by_label, &by_user, &by_sa, &by_group] {
        match t.admit(&p, &idx.view(), r, n) {
            ThrottleOutcome::Allowed {
                exempt: true,
                reserved: true,
                ..
            } => {}
            other => panic!("{} should be exempt: {other:?}", r.name),
        }
    }
    // They hold slots like everyone else: the volume is at 5 in flight now.
    let o = t.admit(&p, &idx.view(), &req("f", "vol-1", "snap-vol-2-0"), n);
    assert!(
        denied(&o).message.contains("has 5 Backup(s) in flight"),
        "{o:?}"
    );
    // A wrong SA namespace does not match `ns:name`.
    let mut exact = no_rates();
    exact
        .exemptions
        .service_accounts
        .push("tools:backup-bot".into());
    let mut other_ns = req("g", "vol-1", "snap-vol-1-1");
    other_ns.username = "system:serviceaccount:else:backup-bot".into();
    assert!(!is_exempt(&exact.exemptions, &other_ns));
}

#[test]
fn warn_only_allows_with_the_denial_as_warning_and_still_reserves() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        mode: Mode::WarnOnly,
        ..no_rates()
    };
    let n = now();
    allowed(&t.admit(&p, &idx.view(), &req("a", "vol-1", "snap-vol-1-0"), n));
    match t.admit(&p, &idx.view(), &req("b", "vol-1", "snap-vol-1-1"), n) {
        ThrottleOutcome::Allowed {
            warnings,
            warned: Some(Scope::Volume),
            reserved: true,
            ..
        } => {
            assert!(
                warnings[0].starts_with(
                    "throttle warn-only mode, would deny: longhorn-guard throttled Backup \"b\""
                ),
                "{warnings:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.reservations(), 2);
}

#[test]
fn rate_warning_when_80_percent_of_the_burst_is_used() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        cluster_rate: RateLimit::new(1.0, 5),
        max_in_flight_per_volume: 0,
        max_in_flight_per_node: 0,
        ..no_rates()
    };
    let n = now();
    for i in 0..4 {
        let w = allowed(&t.admit(
            &p,
            &idx.view(),
            &req(&format!("r{i}"), "vol-1", &format!("snap-vol-1-{i}")),
            n,
        ))
        .clone();
        if i < 3 {
            assert!(w.is_empty(), "{i}: {w:?}");
        } else {
            assert_eq!(w, vec!["longhorn-guard: namespace \"lh-ns\" creation rate burst nearly used (1 of 5 tokens left at 1/min) [rate_cluster]".to_string()]);
        }
    }
}

#[test]
fn cap_warning_at_80_percent_of_node() {
    let idx = index();
    let t = Throttle::new();
    let p = ThrottlePolicy {
        max_in_flight_per_volume: 5,
        max_in_flight_per_node: 5,
        ..no_rates()
    };
    let n = now();
    for i in 0..3 {
        allowed(&t.admit(
            &p,
            &idx.view(),
            &req(&format!("a{i}"), "vol-3", &format!("snap-vol-3-{i}")),
            n,
        ));
    }
    let w = allowed(&t.admit(&p, &idx.view(), &req("a3", "vol-4", "snap-vol-4-0"), n)).clone();
    assert_eq!(
        w,
        vec!["longhorn-guard: node \"node-2\" now has 4 of 5 Backups in flight; further Backups will be throttled (429) at the limit".to_string()]
    );
}

// ---------------------------------------------------------------------------------------
// policy parsing and hot reload
// ---------------------------------------------------------------------------------------

#[test]
fn throttle_policy_parse_errors_name_the_field() {
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Wrapper {
        throttle: ThrottlePolicy,
    }
    let e =
        serde_yaml::from_str::<Wrapper>("throttle:\n  maxInFlightPerVolume: lots\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("throttle.maxInFlightPerVolume: invalid type: string \"lots\""),
        "{e}"
    );
    let e = serde_yaml::from_str::<Wrapper>("throttle:\n  clusterRate:\n    perMinut: 5\n")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("throttle.clusterRate: unknown field `perMinut`"),
        "{e}"
    );
    let e = serde_yaml::from_str::<Wrapper>("throttle:\n  recurringJobs:\n    rates: maybe\n")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("throttle.recurringJobs.rates: unknown variant `maybe`"),
        "{e}"
    );
    let bad = ThrottlePolicy {
        user_rate: RateLimit::new(10.0, 0),
        ..ThrottlePolicy::default()
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        "throttle.userRate.burst must be >= 1 when throttle.userRate.perMinute is 10 (set perMinute: 0 to turn the limit off)"
    );
    let bad = ThrottlePolicy {
        cluster_rate: RateLimit::new(-1.0, 3),
        ..ThrottlePolicy::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .starts_with("throttle.clusterRate.perMinute must be")
    );
    assert!(ThrottlePolicy::default().validate().is_ok());
}

fn temp_file(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "lhg-throttle-{tag}-{}-{:08x}.yaml",
        std::process::id(),
        rand_u32()
    ))
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

#[test]
fn hot_reload_applies_good_files_and_keeps_the_last_good_one() {
    let path = temp_file("reload");
    std::fs::write(&path, "mode: enforce\n").unwrap();
    let initial = Policy::load(&path).unwrap();
    let cell = PolicyCell::new(std::sync::Arc::new(initial));
    let mut watch = PolicyFileWatch::new(path.clone(), Some(b"mode: enforce\n"));
    assert_eq!(watch.poll(&cell), ReloadOutcome::Unchanged);
    assert_eq!(cell.generation(), 1);

    std::fs::write(&path, "mode: warn-only\n").unwrap();
    assert_eq!(watch.poll(&cell), ReloadOutcome::Reloaded { generation: 2 });
    assert_eq!(cell.get().mode, Mode::WarnOnly);
    assert_eq!(watch.poll(&cell), ReloadOutcome::Unchanged);

    // An invalid file: rejected once, with the file and the field named; generation 2 stays.
    std::fs::write(&path, "mode: warn-only\ndeadlineMs: soon\n").unwrap();
    match watch.poll(&cell) {
        ReloadOutcome::Rejected { error } => {
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(
                error.contains("deadlineMs: invalid type: string \"soon\""),
                "{error}"
            );
            assert!(error.ends_with("keeping policy generation 2"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        watch.poll(&cell),
        ReloadOutcome::Unchanged,
        "reported once per content"
    );
    assert_eq!(cell.get().mode, Mode::WarnOnly);
    assert_eq!(cell.generation(), 2);

    // A validation error names the field too.
    std::fs::write(&path, "deadlineMs: 0\n").unwrap();
    match watch.poll(&cell) {
        ReloadOutcome::Rejected { error } => {
            assert!(error.contains("deadlineMs must be > 0"), "{error}")
        }
        other => panic!("{other:?}"),
    }

    // The file disappears (ConfigMap update in progress): reported once, policy kept.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(watch.poll(&cell), ReloadOutcome::Rejected { .. }));
    assert_eq!(watch.poll(&cell), ReloadOutcome::Unchanged);

    // Fixed: applied.
    std::fs::write(&path, "mode: enforce\n").unwrap();
    assert_eq!(watch.poll(&cell), ReloadOutcome::Reloaded { generation: 3 });
    assert_eq!(cell.get().mode, Mode::Enforce);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn figures_count_states_nodes_and_the_oldest_non_terminal() {
    let idx = index();
    backup_in(&idx, "a", "vol-1", "snap-vol-1-0", "Pending", 600);
    backup_in(&idx, "b", "vol-2", "snap-vol-2-0", "InProgress", 60);
    backup_in(&idx, "c", "vol-3", "snap-vol-3-0", "", 6);
    backup_in(&idx, "d", "vol-3", "snap-vol-3-1", "Completed", 6000);
    backup_in(&idx, "e", "vol-4", "", "", 60000);
    let f = inflight::figures(&idx.view(), [NS], T0);
    assert_eq!(f.by_state["Pending"], 1);
    assert_eq!(f.by_state["New"], 2);
    assert_eq!(f.by_state["Completed"], 1);
    assert_eq!(f.in_flight, 3);
    assert_eq!(f.in_flight_by_node["node-1"], 2);
    assert_eq!(f.in_flight_by_node["node-2"], 1);
    // The synced Backup "e" (no snapshot) is non-terminal and counts for the age alert.
    assert_eq!(f.oldest_non_terminal_age_seconds, 60000.0);
    assert!(f.doomed_by_volume.is_empty(), "{:?}", f.doomed_by_volume);
}

#[test]
fn figures_count_backups_that_cannot_finish_by_volume() {
    let idx = index();
    // vol-1 last completed a Backup a day ago; vol-3 never did.
    let mut st = shapes::volume_status("node-1");
    st["lastBackup"] = json!("backup-old");
    st["lastBackupAt"] = json!(rfc3339(T0 - 86_400));
    let vol: Volume =
        serde_json::from_value(with_status(shapes::volume(NS, "vol-1", "node-1"), st)).unwrap();
    idx.apply(IndexEvent::Upsert(vol));
    backup_in(&idx, "a", "vol-1", "snap-gone-a", "Pending", 600);
    backup_in(&idx, "b", "vol-1", "snap-gone-b", "", 60);
    backup_in(&idx, "c", "vol-3", "snap-gone-c", "Pending", 7200);
    // Not counted: a snapshot that exists, InProgress, terminal.
    backup_in(&idx, "d", "vol-3", "snap-vol-3-0", "Pending", 9000);
    backup_in(&idx, "e", "vol-4", "snap-gone-e", "InProgress", 60);
    backup_in(&idx, "f", "vol-4", "snap-gone-f", "Error", 60);
    let f = inflight::figures(&idx.view(), [NS], T0);
    let key = |v: &str| (NS.to_string(), v.to_string());
    assert_eq!(f.doomed_by_volume.len(), 2, "{:?}", f.doomed_by_volume);
    let v1 = &f.doomed_by_volume[&key("vol-1")];
    assert_eq!((v1.backups, v1.last_backup_age_seconds), (2, 86_400.0));
    let v3 = &f.doomed_by_volume[&key("vol-3")];
    assert_eq!((v3.backups, v3.last_backup_age_seconds), (1, 7200.0));
    assert_eq!(f.in_flight, 5);
}

#[test]
fn age_formats() {
    assert_eq!(age(5), "5s");
    assert_eq!(age(125), "2m05s");
    assert_eq!(age(7300), "2h01m");
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
}

// ---------------------------------------------------------------------------------------
// counts from a Backup watch that cannot be trusted
// ---------------------------------------------------------------------------------------

#[test]
fn untrusted_counts_skip_the_caps_with_a_warning_and_rates_still_apply() {
    let idx = index();
    let t = Throttle::new();
    let n = now();
    // A Backup the stale index still holds in flight (it may have completed long ago).
    backup_in(&idx, "b-old", "vol-1", "snap-vol-1-0", "InProgress", 600);
    let trusted = req("b-1", "vol-1", "snap-vol-1-1");
    assert_eq!(
        denied(&t.admit(&no_rates(), &idx.view(), &trusted, n)).scope,
        Scope::Volume
    );
    let stale = ThrottleRequest {
        counts_untrusted: Some("the webhook's Backup watch has failed for 40.0 s".into()),
        ..trusted.clone()
    };
    let warnings = allowed(&t.admit(&no_rates(), &idx.view(), &stale, n)).clone();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("in-flight caps and duplicates not checked")
                && w.contains("failed for 40.0 s")),
        "{warnings:?}"
    );
    // Rates do not depend on the watch: an exhausted user rate still denies.
    let one_per_hour = ThrottlePolicy {
        user_rate: RateLimit {
            per_minute: 1.0 / 60.0,
            burst: 1,
        },
        ..no_rates()
    };
    let t = Throttle::new();
    allowed(&t.admit(&one_per_hour, &idx.view(), &stale, n));
    let again = ThrottleRequest {
        uid: "uid-b-2".into(),
        name: "b-2".into(),
        ..stale
    };
    assert_eq!(
        denied(&t.admit(&one_per_hour, &idx.view(), &again, n)).scope,
        Scope::UserRate
    );
}

#[test]
fn an_unlisted_backup_watch_fails_the_throttle_per_on_deadline() {
    use crate::decision::{BackupRequest, Decision, Reason};
    use crate::policy::FailMode;
    use crate::throttle::admission::{ThrottleInputs, throttle_decision};
    // `Index::default()` has listed nothing: no kind is trusted.
    let idx = Index::default();
    let t = Throttle::new();
    let metrics = ThrottleMetrics::default();
    let backup = BackupRequest {
        namespace: NS.into(),
        name: "b-1".into(),
        snapshot: "snap-vol-1-0".into(),
        ..BackupRequest::default()
    };
    let decide = |on_deadline| {
        let policy = Policy {
            on_deadline,
            ..Policy::default()
        };
        let inputs = ThrottleInputs {
            throttle: &t,
            index: &idx,
            metrics: &metrics,
        };
        let base = Decision::Allow {
            reason: Reason::Checked,
            warnings: Vec::new(),
        };
        throttle_decision(inputs, &policy, &backup, "uid-1", None, true, base)
    };
    match decide(FailMode::Closed) {
        Decision::Deny(d) => {
            assert_eq!((d.reason, d.code), (Reason::LookupFailed, 503));
            assert!(d.message.contains("still listing Backups"), "{}", d.message);
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    match decide(FailMode::Open) {
        Decision::Allow { warnings, .. } => assert!(
            warnings.iter().any(|w| w.contains("not checked")),
            "{warnings:?}"
        ),
        other => panic!("expected allowed with a warning, got {other:?}"),
    }
}
