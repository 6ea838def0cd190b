//! The diagnosis rules, each made to fire on Longhorn-shaped objects.

use super::*;
use longhorn_types::shapes;
use serde_json::Value;

fn obj<K: serde::de::DeserializeOwned>(mut v: Value, status: Option<Value>, age_min: i64) -> K {
    let created = Timestamp::from_second(1_000_000 - age_min * 60).unwrap();
    v["metadata"]["creationTimestamp"] = Value::String(created.to_string());
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).unwrap()
}

fn backup(name: &str, vol: &str, snap: &str, state: &str, url: &str, age_min: i64) -> Backup {
    let mut status = shapes::backup_status(state, "node-1", vol, snap);
    status["url"] = Value::String(url.into());
    obj(
        shapes::backup("ns", name, vol, snap, Some("daily")),
        Some(status),
        age_min,
    )
}

fn state() -> ClusterState {
    let mut s = ClusterState {
        namespace: "ns".into(),
        ..Default::default()
    };
    for v in ["vol-1", "vol-2"] {
        s.volumes.insert(
            v.into(),
            obj(
                shapes::volume("ns", v, "node-1"),
                Some(shapes::volume_status("node-1")),
                100,
            ),
        );
    }
    s.snapshots.insert(
        "snap-ok".into(),
        obj(
            shapes::snapshot("ns", "snap-ok", "vol-1"),
            Some(shapes::snapshot_status("node-1", "")),
            10,
        ),
    );
    let mut removed = shapes::snapshot_status("node-1", "");
    removed["markRemoved"] = Value::Bool(true);
    s.snapshots.insert(
        "snap-removed".into(),
        obj(
            shapes::snapshot("ns", "snap-removed", "vol-1"),
            Some(removed),
            10,
        ),
    );
    let mut lost = shapes::snapshot_status("node-1", "");
    lost["error"] = Value::String(longhorn_types::SNAPSHOT_LOST_TRACK_ERROR.into());
    s.snapshots.insert(
        "snap-lost".into(),
        obj(shapes::snapshot("ns", "snap-lost", "vol-1"), Some(lost), 10),
    );
    s.snapshots.insert(
        "snap-vol2".into(),
        obj(
            shapes::snapshot("ns", "snap-vol2", "vol-2"),
            Some(shapes::snapshot_status("node-1", "")),
            10,
        ),
    );
    s.targets.insert(
        "default".into(),
        obj(
            shapes::backup_target("ns", "default", "s3://b@r/"),
            Some(shapes::backup_target_status("node-1", true)),
            100,
        ),
    );
    s
}

fn finding<'a>(r: &'a Report, name: &str) -> &'a BackupFinding {
    r.findings.iter().find(|f| f.name == name).unwrap()
}

#[test]
fn classifies_each_kind_of_stuck_backup() {
    let mut s = state();
    s.backups = vec![
        backup("b-missing", "vol-1", "snap-gone", "Pending", "", 60),
        backup("b-removed", "vol-1", "snap-removed", "Pending", "", 50),
        backup("b-lost", "vol-1", "snap-lost", "InProgress", "", 40),
        backup("b-other", "vol-1", "snap-vol2", "Pending", "", 30),
        backup("b-novol", "vol-9", "snap-gone", "", "", 20),
        backup("b-young", "vol-1", "snap-ok", "Pending", "", 1),
        backup("b-old", "vol-1", "snap-ok", "Pending", "", 30),
        backup("b-error-nourl", "vol-1", "snap-gone", "Error", "", 70),
        backup(
            "b-error-url",
            "vol-1",
            "snap-gone",
            "Error",
            "s3://b@r/?backup=b",
            70,
        ),
        backup(
            "b-pending-url",
            "vol-1",
            "snap-gone",
            "Pending",
            "s3://b@r/?backup=x",
            70,
        ),
        backup(
            "b-done",
            "vol-1",
            "snap-gone",
            "Completed",
            "s3://b@r/?backup=d",
            80,
        ),
        backup("b-sync", "vol-1", "", "", "", 80),
    ];
    let r = diagnose(
        &s,
        Timestamp::from_second(1_000_000).unwrap(),
        Duration::from_secs(15 * 60),
    );
    assert_eq!(r.total_backups, 12);
    assert!(
        r.findings.iter().all(|f| f.name != "b-done"),
        "Completed is not a finding"
    );
    assert_eq!(
        finding(&r, "b-missing").reasons,
        vec![StuckReason::SnapshotMissing]
    );
    assert_eq!(
        finding(&r, "b-removed").reasons,
        vec![StuckReason::SnapshotMarkedRemoved]
    );
    assert!(matches!(
        finding(&r, "b-lost").reasons[..],
        [StuckReason::SnapshotLostInEngine { .. }]
    ));
    assert_eq!(
        finding(&r, "b-other").reasons,
        vec![StuckReason::SnapshotOfOtherVolume {
            snapshot_volume: "vol-2".into()
        }]
    );
    assert!(
        finding(&r, "b-novol")
            .reasons
            .contains(&StuckReason::VolumeMissing)
    );
    assert!(!finding(&r, "b-young").needs_attention, "young and waiting");
    assert!(
        finding(&r, "b-old").needs_attention,
        "waiting past the threshold"
    );
    assert!(
        !finding(&r, "b-error-nourl").needs_attention,
        "Error is terminal"
    );

    let eligible: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.prune_eligible)
        .map(|f| f.name.as_str())
        .collect();
    let mut eligible = eligible;
    eligible.sort();
    assert_eq!(
        eligible,
        [
            "b-error-nourl",
            "b-lost",
            "b-missing",
            "b-novol",
            "b-removed"
        ]
    );
    assert_eq!(r.prune_eligible, 5);
    assert_eq!(r.findings[0].age_seconds, 80 * 60, "oldest first");
    assert_eq!(r.findings[0].name, "b-sync");
    assert!(
        !r.findings[0].prune_eligible,
        "a Backup synced from the target (no snapshot name) is never pruned"
    );
    assert_eq!(r.recurring_jobs.get("daily"), Some(&9), "non-terminal only");
    assert_eq!(r.backups_by_state.get("New"), Some(&2));
}

#[test]
fn unavailable_target_and_engine_snapshot_list_are_reasons() {
    let mut s = state();
    s.targets.clear();
    let mut es = shapes::engine_status("node-1", "im-1", "10.0.0.1", 10010);
    es["snapshots"] = serde_json::json!({ "other": { "name": "other" } });
    s.engines
        .push(obj(shapes::engine("ns", "vol-1", "node-1"), Some(es), 100));
    s.backups = vec![backup("b", "vol-1", "snap-ok", "Pending", "", 5)];
    let r = diagnose(
        &s,
        Timestamp::from_second(1_000_000).unwrap(),
        Duration::from_secs(900),
    );
    let f = finding(&r, "b");
    assert!(f.reasons.contains(&StuckReason::BackupTargetUnavailable {
        target: "default".into()
    }));
    // The Snapshot object is readyToUse and the engine's list lacks it: they agree.
    assert!(f.reasons.contains(&StuckReason::SnapshotLostInEngine {
        engine: "vol-1-e-0".into()
    }));
    assert!(f.needs_attention);
    assert!(
        !f.prune_eligible,
        "5 minutes old: younger than the threshold"
    );
    assert!(f.prune_hold.is_some());
    let r = diagnose(
        &s,
        Timestamp::from_second(1_000_000).unwrap(),
        Duration::from_secs(300),
    );
    assert!(finding(&r, "b").prune_eligible, "old enough at 5 minutes");
    assert_eq!(
        finding(&r, "b").evidence.engine_says,
        EngineSays::Lacks,
        "the evidence the re-check compares"
    );
}

/// The engine status lags: a list without the snapshot is not enough when the Snapshot
/// object is not readyToUse (being taken), and a snapshot the engine lists is not gone,
/// whatever the object says.
#[test]
fn engine_status_alone_never_makes_a_backup_eligible() {
    let mut s = state();
    let mut being_taken = shapes::snapshot_status("node-1", "");
    being_taken["readyToUse"] = Value::Bool(false);
    s.snapshots.insert(
        "snap-new".into(),
        obj(
            shapes::snapshot("ns", "snap-new", "vol-1"),
            Some(being_taken),
            0,
        ),
    );
    let mut es = shapes::engine_status("node-1", "im-1", "10.0.0.1", 10010);
    es["snapshots"] = serde_json::json!({
        "other": { "name": "other" },
        "snap-in-engine": { "name": "snap-in-engine" },
        "snap-lost": { "name": "snap-lost" },
    });
    s.engines
        .push(obj(shapes::engine("ns", "vol-1", "node-1"), Some(es), 100));
    s.backups = vec![
        backup("b-new", "vol-1", "snap-new", "InProgress", "", 60),
        backup(
            "b-object-gone",
            "vol-1",
            "snap-in-engine",
            "Pending",
            "",
            60,
        ),
        backup("b-lost-listed", "vol-1", "snap-lost", "Pending", "", 60),
        backup("b-other-volume", "vol-1", "snap-vol2", "Pending", "", 60),
    ];
    let r = diagnose(
        &s,
        Timestamp::from_second(1_000_000).unwrap(),
        Duration::ZERO,
    );
    let engine = "vol-1-e-0".to_string();
    assert_eq!(
        finding(&r, "b-new").reasons,
        vec![StuckReason::SnapshotNotInEngineYet {
            engine: engine.clone()
        }]
    );
    assert_eq!(
        finding(&r, "b-object-gone").reasons,
        vec![StuckReason::SnapshotStillInEngine {
            engine: engine.clone()
        }]
    );
    assert_eq!(
        finding(&r, "b-lost-listed").reasons,
        vec![StuckReason::SnapshotStillInEngine { engine }]
    );
    assert_eq!(
        finding(&r, "b-other-volume").reasons,
        vec![StuckReason::SnapshotOfOtherVolume {
            snapshot_volume: "vol-2".into()
        }]
    );
    assert_eq!(r.prune_eligible, 0, "{:#?}", r.findings);
}

#[test]
fn a_1_8_backup_is_checked_against_its_own_target() {
    use longhorn_types::Release;
    let mut s = state();
    s.targets.insert(
        "offsite".into(),
        obj(
            shapes::backup_target("ns", "offsite", "nfs://o:/b"),
            Some(shapes::backup_target_status("node-1", false)),
            100,
        ),
    );
    // Only status.backupTargetName names the target (a Backup written before the label).
    let mut b = shapes::backup_of(Release::V1_8, "ns", "b18", "vol-1", "snap-ok", "offsite");
    b["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("backup-target");
    let status = shapes::backup_status_of(
        Release::V1_8,
        "Pending",
        "node-1",
        "vol-1",
        "snap-ok",
        "offsite",
    );
    s.backups = vec![obj(b, Some(status), 5)];
    let r = diagnose(
        &s,
        Timestamp::from_second(1_000_000).unwrap(),
        Duration::from_secs(900),
    );
    assert_eq!(
        finding(&r, "b18").reasons,
        vec![StuckReason::BackupTargetUnavailable {
            target: "offsite".into()
        }]
    );
}

#[test]
fn volumes_with_backups_that_cannot_finish_are_listed_with_their_last_backup() {
    let mut s = state();
    if let Some(st) = s.volumes.get_mut("vol-1").and_then(|v| v.status.as_mut()) {
        st.last_backup_at = "2026-11-23T10:00:00Z".into();
    }
    s.backups = vec![
        backup("b-missing", "vol-1", "snap-gone", "Pending", "", 60),
        backup("b-removed", "vol-1", "snap-removed", "", "", 50),
        // Not: InProgress (its replica ends it), a snapshot that exists, terminal.
        backup("b-lost", "vol-1", "snap-lost", "InProgress", "", 40),
        backup("b-waiting", "vol-2", "snap-vol2", "Pending", "", 30),
        backup("b-error", "vol-2", "snap-gone", "Error", "", 70),
        backup("b-novol", "vol-9", "snap-gone", "Pending", "", 20),
    ];
    let r = diagnose(
        &s,
        Timestamp::from_second(1_000_000).unwrap(),
        Duration::from_secs(900),
    );
    let daily: std::collections::BTreeSet<String> = ["daily".to_string()].into();
    assert_eq!(
        r.doomed_volumes,
        vec![
            crate::DoomedVolume {
                volume: "vol-1".into(),
                backups: vec!["b-missing".into(), "b-removed".into()],
                oldest_age_seconds: 3600,
                last_backup_at: "2026-11-23T10:00:00Z".into(),
                recurring_jobs: daily.clone(),
            },
            crate::DoomedVolume {
                volume: "vol-9".into(),
                backups: vec!["b-novol".into()],
                oldest_age_seconds: 1200,
                last_backup_at: String::new(),
                recurring_jobs: daily,
            },
        ]
    );
    let text = crate::render::doctor_text(&r);
    assert!(
        text.contains("volumes with Backups that cannot finish (snapshot gone)"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("vol-9 "))
        .unwrap_or_default();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["vol-9", "1", "20m", "never", "daily"],
        "{text}"
    );
}
