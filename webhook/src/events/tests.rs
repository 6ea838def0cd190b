use super::*;
use crate::policy::throttle::RateLimit;

fn policy() -> EventsPolicy {
    EventsPolicy {
        aggregate_window_seconds: 10,
        series_idle_seconds: 60,
        writes: RateLimit::new(60.0, 5),
        max_series: 50,
        ..EventsPolicy::default()
    }
}

/// The policy, a start instant, and an aggregator with a full bucket.
fn start(p: EventsPolicy) -> (EventsPolicy, Instant, Aggregator) {
    let t0 = Instant::now();
    let agg = Aggregator::new(&p, t0);
    (p, t0, agg)
}

fn key(volume: &str, reason: Reason) -> SeriesKey {
    SeriesKey {
        namespace: "longhorn-system".to_string(),
        volume: volume.to_string(),
        reason,
    }
}

/// One `throttled` refusal on each of vol-0..vol-`volumes`.
fn throttled_on(agg: &mut Aggregator, p: &EventsPolicy, volumes: usize, now: Instant) {
    for v in 0..volumes {
        observe(agg, p, key(&format!("vol-{v}"), Reason::Throttled), now);
    }
}

fn observe(agg: &mut Aggregator, p: &EventsPolicy, k: SeriesKey, now: Instant) -> bool {
    agg.observe(
        p,
        k,
        Some("uid".into()),
        "note".into(),
        now,
        Timestamp::now(),
    )
}

/// Plans and marks every planned write done (as the API server would answer).
fn write_ok(
    agg: &mut Aggregator,
    p: &EventsPolicy,
    now: Instant,
    flush: bool,
) -> Vec<PlannedWrite> {
    let planned = agg.plan(p, now, flush);
    for w in &planned {
        let name = w
            .patch
            .clone()
            .unwrap_or_else(|| format!("{}.event", w.key.volume));
        agg.written(w, Ok(name));
    }
    planned
}

#[test]
fn a_storm_within_one_window_is_one_create_per_series_then_one_patch_with_the_count() {
    let (p, t0, mut agg) = start(policy());
    let volumes = ["vol-a", "vol-b", "vol-c", "vol-d"];
    let mut writes = Vec::new();
    for i in 0..4_000u32 {
        let now = t0 + Duration::from_millis(u64::from(i));
        assert!(observe(
            &mut agg,
            &p,
            key(volumes[i as usize % 4], Reason::SnapshotMissing),
            now
        ));
        writes.extend(write_ok(&mut agg, &p, now, false));
    }
    // 4,000 refusals in 4 s (< the 10 s window): one create per volume, no patch yet.
    assert_eq!(writes.len(), 4, "{writes:?}");
    assert!(writes.iter().all(|w| w.patch.is_none() && w.count == 1));
    let next = agg
        .next_wake(&p, t0 + Duration::from_secs(4))
        .expect("counts pending");
    assert_eq!(next, t0 + Duration::from_secs(10));
    assert!(write_ok(&mut agg, &p, next - Duration::from_millis(1), false).is_empty());
    // vol-b..d were created 1..3 ms after vol-a: all due 3 ms later.
    let patches = write_ok(&mut agg, &p, next + Duration::from_millis(3), false);
    assert_eq!(patches.len(), 4);
    assert!(patches.iter().all(|w| w.patch.is_some()));
    assert_eq!(patches.iter().map(|w| w.count).sum::<i32>(), 4_000);
    assert!(!agg.pending());
    assert_eq!(agg.next_wake(&p, next + Duration::from_millis(3)), None);
}

#[test]
fn the_write_bucket_caps_writes_across_all_series() {
    let (p, t0, mut agg) = start(policy());
    throttled_on(&mut agg, &p, 20, t0);
    assert_eq!(write_ok(&mut agg, &p, t0, false).len(), 5, "burst 5");
    assert_eq!(write_ok(&mut agg, &p, t0, false).len(), 0, "bucket empty");
    // 60 per minute: one more token a second.
    assert_eq!(agg.next_wake(&p, t0), Some(t0 + Duration::from_secs(1)));
    assert_eq!(
        write_ok(&mut agg, &p, t0 + Duration::from_secs(1), false).len(),
        1
    );
}

#[test]
fn series_past_the_limit_are_refused_and_distinct_reasons_are_distinct_series() {
    let (p, t0, mut agg) = start(EventsPolicy {
        max_series: 2,
        ..policy()
    });
    assert!(observe(
        &mut agg,
        &p,
        key("vol-a", Reason::SnapshotMissing),
        t0
    ));
    assert!(observe(&mut agg, &p, key("vol-a", Reason::Throttled), t0));
    assert!(!observe(
        &mut agg,
        &p,
        key("vol-b", Reason::SnapshotMissing),
        t0
    ));
    // An existing series still counts.
    assert!(observe(
        &mut agg,
        &p,
        key("vol-a", Reason::SnapshotMissing),
        t0
    ));
    assert_eq!(agg.series.len(), 2);
}

#[test]
fn an_idle_series_ends_and_the_next_refusal_creates_a_new_event() {
    let (p, t0, mut agg) = start(policy());
    observe(&mut agg, &p, key("vol-a", Reason::SnapshotLost), t0);
    assert_eq!(write_ok(&mut agg, &p, t0, false).len(), 1);
    agg.expire(&p, t0 + Duration::from_secs(59));
    assert_eq!(agg.series.len(), 1, "not idle long enough");
    agg.expire(&p, t0 + Duration::from_secs(60));
    assert!(agg.series.is_empty());
    let later = t0 + Duration::from_secs(61);
    observe(&mut agg, &p, key("vol-a", Reason::SnapshotLost), later);
    let w = write_ok(&mut agg, &p, later, false);
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].patch.as_deref(), w[0].count), (None, 1));
}

#[test]
fn an_unwritten_count_keeps_its_series_alive_until_tried() {
    let (p, t0, mut agg) = start(policy());
    observe(&mut agg, &p, key("vol-a", Reason::SnapshotLost), t0);
    agg.expire(&p, t0 + Duration::from_secs(120));
    assert_eq!(agg.series.len(), 1, "count never written nor tried");
    let planned = agg.plan(&p, t0 + Duration::from_secs(120), false);
    agg.written(&planned[0], Err(false));
    agg.expire(&p, t0 + Duration::from_secs(120));
    assert!(agg.series.is_empty(), "tried (and failed): the series ends");
}

#[test]
fn a_failed_write_is_retried_next_window_and_a_vanished_event_is_created_again() {
    let (p, t0, mut agg) = start(policy());
    observe(&mut agg, &p, key("vol-a", Reason::SnapshotMissing), t0);
    let first = agg.plan(&p, t0, false);
    agg.written(&first[0], Err(false));
    assert!(agg.plan(&p, t0 + Duration::from_secs(9), false).is_empty());
    let retry = write_ok(&mut agg, &p, t0 + Duration::from_secs(10), false);
    assert_eq!(retry.len(), 1);
    assert!(retry[0].patch.is_none(), "never created: a create");
    // The Event is deleted (events expire after an hour): the patch fails with NotFound.
    observe(
        &mut agg,
        &p,
        key("vol-a", Reason::SnapshotMissing),
        t0 + Duration::from_secs(11),
    );
    let patch = agg.plan(&p, t0 + Duration::from_secs(20), false);
    assert!(patch[0].patch.is_some());
    agg.written(&patch[0], Err(true));
    let recreate = agg.plan(&p, t0 + Duration::from_secs(20), false);
    assert_eq!(recreate.len(), 1);
    assert_eq!((recreate[0].patch.as_deref(), recreate[0].count), (None, 2));
}

#[test]
fn flush_ignores_the_window_but_not_the_bucket() {
    let (p, t0, mut agg) = start(policy());
    throttled_on(&mut agg, &p, 3, t0);
    assert_eq!(write_ok(&mut agg, &p, t0, false).len(), 3);
    throttled_on(&mut agg, &p, 3, t0);
    assert!(agg.plan(&p, t0, false).is_empty(), "within the window");
    let flushed = write_ok(&mut agg, &p, t0, true);
    assert_eq!(flushed.len(), 2, "the bucket had 2 tokens left");
    assert!(agg.pending());
}

#[test]
fn event_reason_is_pascal_case_and_the_note_fits_the_api() {
    assert_eq!(
        event_reason(Reason::SnapshotOtherVolume),
        "SnapshotOtherVolume"
    );
    assert_eq!(event_reason(Reason::Throttled), "Throttled");
    let r = Refusal {
        namespace: "ns".into(),
        backup: "Backup \"b\"".into(),
        snapshot: "s".into(),
        volume_label: None,
        reason: Reason::SnapshotMissing,
        message: "é".repeat(2_000),
        requester: "system:serviceaccount:longhorn-system:job".into(),
    };
    let note = event_note(&r);
    assert!(
        note.len() <= longhorn_guard_runtime::event_note::MAX_EVENT_NOTE_BYTES,
        "{}",
        note.len()
    );
    assert!(note.starts_with(
        "Backup \"b\" (snapshot \"s\") refused for system:serviceaccount:longhorn-system:job: é"
    ));
    assert!(note.ends_with("..."));
}

#[test]
fn the_policy_refuses_bounds_that_would_make_events_unbounded_or_stuck() {
    assert!(EventsPolicy::default().validate().is_ok());
    for bad in [
        EventsPolicy {
            aggregate_window_seconds: 0,
            ..EventsPolicy::default()
        },
        EventsPolicy {
            series_idle_seconds: 1,
            ..EventsPolicy::default()
        },
        EventsPolicy {
            writes: RateLimit::OFF,
            ..EventsPolicy::default()
        },
        EventsPolicy {
            queue_capacity: 0,
            ..EventsPolicy::default()
        },
        EventsPolicy {
            max_series: 0,
            ..EventsPolicy::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

#[test]
fn a_full_queue_drops_refusals_and_counts_them_without_waiting() {
    let (tx, _rx) = mpsc::channel(2);
    let sink = EventSink {
        tx,
        metrics: EventMetrics::default(),
    };
    let refusal = Refusal {
        namespace: "ns".into(),
        backup: "Backup \"b\"".into(),
        snapshot: "s".into(),
        volume_label: Some("vol-a".into()),
        reason: Reason::Throttled,
        message: "throttled".into(),
        requester: "job".into(),
    };
    // Nobody reads: the first two wait in the queue, the other three are dropped at once.
    for _ in 0..5 {
        sink.record(refusal.clone());
    }
    let dropped = sink
        .metrics
        .refusals
        .get_or_create(&RefusalLabels {
            outcome: "queue_full",
        })
        .get();
    assert_eq!(dropped, 3);
}
