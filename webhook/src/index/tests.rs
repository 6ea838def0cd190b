#![allow(clippy::unwrap_used)]

use crate::index::IndexEvent;
use longhorn_types::{Backup, BackupState, Engine, Snapshot, Volume, shapes};
use serde_json::json;

use super::*;

fn snap(ns: &str, name: &str, volume: &str) -> Snapshot {
    serde_json::from_value(shapes::snapshot(ns, name, volume)).unwrap()
}

#[test]
fn relist_replaces_a_kind_atomically() {
    let idx = Index::default();
    idx.apply::<Snapshot>(IndexEvent::RelistStart);
    idx.apply(IndexEvent::Listed(snap("a", "s1", "v1")));
    idx.apply(IndexEvent::Listed(snap("a", "s2", "v1")));
    // Not visible before InitDone, and not synced.
    assert!(idx.view().data().snapshots.is_empty());
    assert!(!idx.synced(Kind::Snapshot));
    idx.apply::<Snapshot>(IndexEvent::RelistDone);
    assert!(idx.synced(Kind::Snapshot));
    assert_eq!(idx.view().data().len(Kind::Snapshot), 2);
    assert!(!idx.all_synced(), "other kinds have not listed yet");

    // A relist that no longer has s1 drops it only at InitDone; the old table serves until then.
    assert_eq!(
        idx.apply::<Snapshot>(IndexEvent::RelistStart),
        Applied::RelistStarted { restart: true }
    );
    idx.apply(IndexEvent::Listed(snap("a", "s2", "v1")));
    idx.apply(IndexEvent::Listed(snap("b", "s3", "v2")));
    assert!(idx.view().data().snapshots.get("a", "s1").is_some());
    idx.apply::<Snapshot>(IndexEvent::RelistDone);
    let view = idx.view();
    assert!(view.data().snapshots.get("a", "s1").is_none());
    assert_eq!(view.data().len(Kind::Snapshot), 2);
    assert_eq!(
        view.snapshot("b", "s3"),
        SnapshotLookup::Indexed(SnapshotFacts {
            volume: Some("v2".into()),
            ..Default::default()
        })
    );
}

#[test]
fn apply_updates_and_delete_removes() {
    let idx = Index::default();
    idx.apply(IndexEvent::Upsert(snap("a", "s1", "v1")));
    let mut obj = shapes::snapshot("a", "s1", "v1");
    obj["status"] = json!({"markRemoved": true});
    idx.apply(IndexEvent::Upsert(
        serde_json::from_value::<Snapshot>(obj).unwrap(),
    ));
    assert_eq!(idx.view().data().len(Kind::Snapshot), 1);
    match idx.view().snapshot("a", "s1") {
        SnapshotLookup::Indexed(f) => assert!(f.mark_removed),
        other => panic!("{other:?}"),
    }
    idx.apply(IndexEvent::Delete(snap("a", "s1", "v1")));
    assert_eq!(idx.view().snapshot("a", "s1"), SnapshotLookup::NotIndexed);
    assert_eq!(idx.view().data().len(Kind::Snapshot), 0);
}

#[test]
fn backups_keep_volume_snapshot_state_and_time() {
    let idx = Index::default();
    let mut obj = shapes::backup("a", "b1", "v1", "s1", Some("daily"));
    obj["metadata"]["creationTimestamp"] = json!("2026-11-24T10:00:00Z");
    obj["status"] = shapes::backup_status("Pending", "node-1", "v1", "s1");
    idx.apply(IndexEvent::Upsert(
        serde_json::from_value::<Backup>(obj).unwrap(),
    ));
    let view = idx.view();
    let b = view.backup("a", "b1").unwrap();
    assert_eq!(b.volume.as_deref(), Some("v1"));
    assert_eq!(b.snapshot.as_deref(), Some("s1"));
    assert_eq!(b.state(), BackupState::Pending);
    assert_eq!(b.created_unix, 1_795_514_400);
}

#[test]
fn volume_node_falls_back_to_the_active_engine() {
    let idx = Index::default();
    let mut vol = shapes::volume("a", "v1", "");
    vol["spec"]["nodeID"] = json!("");
    idx.apply(IndexEvent::Upsert(
        serde_json::from_value::<Volume>(vol).unwrap(),
    ));
    idx.apply(IndexEvent::Upsert(
        serde_json::from_value::<Engine>(shapes::engine("a", "v1", "node-7")).unwrap(),
    ));
    assert_eq!(idx.view().volume_node("a", "v1"), Some("node-7"));
    idx.apply(IndexEvent::Upsert(
        serde_json::from_value::<Volume>(shapes::volume("a", "v1", "node-3")).unwrap(),
    ));
    assert_eq!(idx.view().volume_node("a", "v1"), Some("node-3"));
}

#[test]
fn strings_are_shared_and_released() {
    let idx = Index::default();
    for i in 0..1000 {
        idx.apply(IndexEvent::Upsert(snap(
            "ns",
            &format!("s{i}"),
            "vol-shared",
        )));
    }
    {
        let view = idx.view();
        // ns + vol-shared + 1000 names.
        assert_eq!(view.data().interned_strings(), 1002);
    }
    // A relist with nothing in it drops every entry and purges the strings.
    idx.apply::<Snapshot>(IndexEvent::RelistStart);
    idx.apply::<Snapshot>(IndexEvent::RelistDone);
    assert_eq!(idx.view().data().interned_strings(), 0);
}

#[test]
fn last_event_age_and_restart_counting() {
    let idx = Index::default();
    assert_eq!(idx.last_event_age_seconds(Kind::Volume), None);
    assert_eq!(
        idx.apply::<Volume>(IndexEvent::RelistStart),
        Applied::RelistStarted { restart: false }
    );
    // Init comes before the list request: it is no news from the API server.
    assert_eq!(idx.last_event_age_seconds(Kind::Volume), None);
    // The list failed and the watcher retries: the same relist, not a restart.
    assert_eq!(
        idx.apply::<Volume>(IndexEvent::RelistStart),
        Applied::RelistStarted { restart: false }
    );
    idx.apply::<Volume>(IndexEvent::RelistDone);
    assert!(idx.last_event_age_seconds(Kind::Volume).is_some());
    assert_eq!(
        idx.apply::<Volume>(IndexEvent::RelistStart),
        Applied::RelistStarted { restart: true }
    );
    assert_eq!(
        idx.apply::<Volume>(IndexEvent::RelistStart),
        Applied::RelistStarted { restart: false }
    );
}

fn list_all(idx: &Index) {
    idx.apply::<Snapshot>(IndexEvent::RelistStart);
    idx.apply::<Snapshot>(IndexEvent::RelistDone);
    idx.apply::<Volume>(IndexEvent::RelistStart);
    idx.apply::<Volume>(IndexEvent::RelistDone);
    idx.apply::<Engine>(IndexEvent::RelistStart);
    idx.apply::<Engine>(IndexEvent::RelistDone);
    idx.apply::<Backup>(IndexEvent::RelistStart);
    idx.apply::<Backup>(IndexEvent::RelistDone);
    idx.apply::<longhorn_types::BackupTarget>(IndexEvent::RelistStart);
    idx.apply::<longhorn_types::BackupTarget>(IndexEvent::RelistDone);
}

#[test]
fn a_relist_untrusts_the_kind_until_it_is_done() {
    let idx = Index::default();
    assert!(!idx.all_trusted());
    list_all(&idx);
    assert!(idx.all_trusted());
    idx.apply(IndexEvent::Upsert(snap("a", "s1", "v1")));
    // A relist (e.g. after 410 Gone): the old table still answers, but is not trusted.
    idx.apply::<Snapshot>(IndexEvent::RelistStart);
    assert_eq!(
        idx.trust(Kind::Snapshot),
        Trust::Listing { failing_ms: None }
    );
    assert!(!idx.all_trusted());
    assert!(idx.trust(Kind::Volume).is_trusted());
    assert!(idx.view().data().snapshots.get("a", "s1").is_some());
    idx.apply::<Snapshot>(IndexEvent::RelistDone);
    assert!(idx.all_trusted());
    assert!(idx.view().data().snapshots.get("a", "s1").is_none());
}

#[test]
fn a_watch_failing_past_the_bound_untrusts_the_kind_until_news_arrives() {
    let idx = Index::default();
    list_all(&idx);
    idx.set_staleness(std::time::Duration::from_secs(3600));
    idx.watch_failed(Kind::Engine);
    idx.watch_failed(Kind::Engine);
    assert!(matches!(
        idx.trust(Kind::Engine),
        Trust::Trusted {
            failing_ms: Some(_)
        }
    ));
    assert!(idx.all_trusted(), "within the bound");
    let left = idx.until_stale(Kind::Engine).unwrap();
    assert!(left > std::time::Duration::from_secs(3590), "{left:?}");
    assert_eq!(idx.until_stale(Kind::Volume), None, "not failing");

    // The bound shrinks (policy reload) below the time already failed.
    idx.set_staleness(std::time::Duration::from_millis(1));
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(matches!(idx.trust(Kind::Engine), Trust::Stale { .. }));
    assert!(!idx.all_trusted());
    assert_eq!(
        idx.until_stale(Kind::Engine),
        Some(std::time::Duration::ZERO)
    );

    // The watch task then relists: failures of the list keep the clock running, the
    // relist's objects and InitDone end it.
    idx.apply::<Engine>(IndexEvent::RelistStart);
    idx.watch_failed(Kind::Engine);
    assert!(matches!(
        idx.trust(Kind::Engine),
        Trust::Listing { failing_ms: Some(f) } if f >= 1
    ));
    assert_eq!(
        idx.until_stale(Kind::Engine),
        None,
        "listing: nothing to time"
    );
    idx.apply(IndexEvent::Listed(
        serde_json::from_value::<Engine>(shapes::engine("a", "v1", "node-7")).unwrap(),
    ));
    idx.apply::<Engine>(IndexEvent::RelistDone);
    assert_eq!(idx.trust(Kind::Engine), Trust::Trusted { failing_ms: None });
    assert!(idx.all_trusted());

    // A watch event ends a failure run too (the watch resumed and delivered news).
    idx.watch_failed(Kind::Snapshot);
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(!idx.all_trusted());
    idx.apply(IndexEvent::Upsert(snap("a", "s2", "v1")));
    assert!(idx.all_trusted());
}

/// A generated name is recognised from `generateName` (cut to the 58 characters the API
/// server keeps) + 5 characters, and nothing else; the flag costs no memory per Backup.
#[test]
fn generated_names_are_recognised_exactly() {
    assert!(is_generated_from("backup-x7k2q", "backup-"));
    assert!(
        !is_generated_from("backup-by-hand", "backup-"),
        "not 5 more"
    );
    assert!(!is_generated_from("other-x7k2q", "backup-"));
    assert!(!is_generated_from("x7k2q", ""));
    let long = "b".repeat(70);
    assert_eq!(generated_base(&long).len(), MAX_GENERATED_BASE);
    assert!(is_generated_from(&format!("{}abcde", &long[..58]), &long));
    // Cut on a character boundary, never inside one.
    let wide = "é".repeat(40);
    assert_eq!(generated_base(&wide).len(), 58);
    #[cfg(target_pointer_width = "64")]
    assert_eq!(std::mem::size_of::<BackupEntry>(), 48);
}
