//! `prune` must never delete a Backup that can still complete: against the real
//! kube-apiserver, with Engine objects whose `status.snapshots` lags or changes.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use kube::Api;
use longhorn_guard_stuck_backups::{
    DoctorOptions, PruneOptions, StuckReason, delete_planned, doctor, plan, prune,
};
use longhorn_guard_testkit::TestCluster;
use longhorn_types::{Backup, Engine, Snapshot, shapes};
use serde_json::{Value, json};

const ENGINE: &str = "vol-1-e-0";

/// `Engine.status` of vol-1's engine listing exactly `snapshots` (plus `volume-head`).
fn engine_status(snapshots: &[&str]) -> Value {
    let mut status = shapes::engine_status("node-1", "im-1", "10.0.0.1", 10010);
    let mut list = json!({ "volume-head": { "name": "volume-head", "removed": false } });
    for s in snapshots {
        list[*s] = json!({ "name": s, "removed": false, "usercreated": true });
    }
    status["snapshots"] = list;
    status
}

/// A Snapshot status: `ready` or being taken, optionally lost by the engine.
fn snapshot_status(ready: bool, lost: bool) -> Value {
    let mut status = shapes::snapshot_status("node-1", "");
    status["readyToUse"] = Value::Bool(ready && !lost);
    if lost {
        status["error"] = Value::String(longhorn_types::SNAPSHOT_LOST_TRACK_ERROR.into());
    }
    status
}

/// Target, volume vol-1 and its Engine listing `engine_lists`.
async fn seed_volume(cluster: &TestCluster, ns: &str, engine_lists: &[&str]) {
    common::target_and_volume(cluster, ns).await;
    cluster
        .create_longhorn_object(
            ns,
            shapes::engine(ns, "vol-1", "node-1"),
            Some(engine_status(engine_lists)),
        )
        .await
        .unwrap();
}

async fn backup(cluster: &TestCluster, ns: &str, name: &str, snapshot: &str, state: &str) {
    cluster
        .create_longhorn_object(
            ns,
            shapes::backup(ns, name, "vol-1", snapshot, Some("daily-backup")),
            Some(shapes::backup_status(state, "node-1", "vol-1", snapshot)),
        )
        .await
        .unwrap();
}

async fn snapshot(cluster: &TestCluster, ns: &str, name: &str, ready: bool, lost: bool) {
    cluster
        .create_longhorn_object(
            ns,
            shapes::snapshot(ns, name, "vol-1"),
            Some(snapshot_status(ready, lost)),
        )
        .await
        .unwrap();
}

/// Volume vol-1 (its Engine listing `engine_lists`) and two InProgress Backups created a
/// moment ago: `backup-running` of a snapshot taken through its Snapshot object (it exists,
/// not readyToUse yet) and `backup-ui` of one taken through the engine (the UI path: no
/// Snapshot object yet).
async fn seed_just_created(cluster: &TestCluster, ns: &str, engine_lists: &[&str]) {
    seed_volume(cluster, ns, engine_lists).await;
    snapshot(cluster, ns, "snap-being-taken", false, false).await;
    backup(
        cluster,
        ns,
        "backup-running",
        "snap-being-taken",
        "InProgress",
    )
    .await;
    backup(cluster, ns, "backup-ui", "snap-not-synced", "InProgress").await;
}

async fn exists(cluster: &TestCluster, ns: &str, name: &str) -> bool {
    Api::<Backup>::namespaced(cluster.client(), ns)
        .get_opt(name)
        .await
        .unwrap()
        .is_some()
}

fn options(ns: &str, dir: &std::path::Path, stuck_after: Duration) -> PruneOptions {
    PruneOptions {
        doctor: DoctorOptions {
            namespace: ns.to_string(),
            stuck_after,
        },
        yes: true,
        restore_file: dir.join(format!("restore-{}.yaml", stuck_after.as_secs())),
        deletes_per_second: 100.0,
    }
}

fn temp_dir(ns: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lhg-prune-safety-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Issue 17 §2: an InProgress Backup created a moment ago, whose snapshot the engine status
/// does not list yet, is never pruned: not while younger than the stuck threshold, and not
/// on the engine status' word while the Snapshot object is not readyToUse.
#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_just_created_in_progress_backup_whose_snapshot_is_not_yet_in_the_engine_status_is_never_pruned()
 {
    let cluster = TestCluster::connect().await.unwrap();
    let ns = cluster.namespace("prune-young").await.unwrap();
    // The engine's last synced list predates both snapshots.
    seed_just_created(&cluster, &ns, &["snap-older"]).await;
    let dir = temp_dir(&ns);

    // The default threshold: both are too young to judge.
    let default = options(&ns, &dir, DoctorOptions::default().stuck_after);
    let out = prune(cluster.client(), &default).await.unwrap();
    assert!(out.planned.is_empty(), "{:?}", out.planned);
    assert!(out.deleted.is_empty(), "{:?}", out.deleted);

    // Even with no age guard at all, the engine status alone does not make the Backup of a
    // snapshot being taken eligible.
    let no_age_guard = options(&ns, &dir, Duration::ZERO);
    let out = prune(cluster.client(), &no_age_guard).await.unwrap();
    assert!(
        !out.deleted.iter().any(|n| n == "backup-running"),
        "deleted a running Backup: {:?}",
        out.deleted
    );
    assert!(exists(&cluster, &ns, "backup-running").await);
    // Without the age guard nothing protects the UI path's Backup: that is what the
    // threshold is for.
    assert_eq!(out.deleted, ["backup-ui"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What doctor says about those two Backups: why neither may be pruned.
#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn doctor_says_why_a_young_backup_or_a_snapshot_being_taken_is_not_removable() {
    let cluster = TestCluster::connect().await.unwrap();
    let ns = cluster.namespace("doctor-young").await.unwrap();
    seed_just_created(&cluster, &ns, &["snap-older", "snap-in-engine"]).await;
    // No Snapshot object, but the engine lists the snapshot: Longhorn may sync it back.
    backup(
        &cluster,
        &ns,
        "backup-object-gone",
        "snap-in-engine",
        "Pending",
    )
    .await;
    let options = DoctorOptions {
        namespace: ns.clone(),
        stuck_after: Duration::ZERO,
    };
    let report = doctor(cluster.client(), &options).await.unwrap();
    let finding = |name: &str| report.findings.iter().find(|f| f.name == name).unwrap();
    assert_eq!(
        finding("backup-running").reasons,
        vec![StuckReason::SnapshotNotInEngineYet {
            engine: ENGINE.into()
        }]
    );
    assert!(!finding("backup-running").prune_eligible);
    assert_eq!(
        finding("backup-object-gone").reasons,
        vec![StuckReason::SnapshotStillInEngine {
            engine: ENGINE.into()
        }]
    );
    assert!(!finding("backup-object-gone").prune_eligible);
    assert!(finding("backup-ui").prune_eligible, "old enough at 0 s");

    let default = doctor(
        cluster.client(),
        &DoctorOptions {
            namespace: ns.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ui = default
        .findings
        .iter()
        .find(|f| f.name == "backup-ui")
        .unwrap();
    assert!(!ui.prune_eligible);
    assert!(
        ui.prune_hold
            .as_deref()
            .is_some_and(|h| h.contains("younger than the stuck threshold")),
        "{ui:?}"
    );
    let text = longhorn_guard_stuck_backups::render::doctor_text(&default);
    assert!(text.contains("younger than the stuck threshold"), "{text}");
}

/// Issue 17 §2: the re-check right before a delete re-reads the Backup, the Snapshot and the
/// Engine, and leaves the Backup alone when any of them changed since the diagnosis. The two
/// phases are driven separately; the changes happen in between.
#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn a_snapshot_that_comes_back_between_diagnosis_and_delete_is_left_alone() {
    let cluster = TestCluster::connect().await.unwrap();
    let ns = cluster.namespace("prune-recheck").await.unwrap();
    seed_volume(&cluster, &ns, &["snap-older"]).await;
    // Lost by the engine, as the Snapshot object says.
    snapshot(&cluster, &ns, "snap-lost", true, true).await;
    // readyToUse, and the engine's list no longer has it: the two agree it is gone.
    snapshot(&cluster, &ns, "snap-dropped", true, false).await;
    backup(&cluster, &ns, "backup-missing", "snap-missing", "Pending").await;
    backup(&cluster, &ns, "backup-lost", "snap-lost", "Pending").await;
    backup(
        &cluster,
        &ns,
        "backup-dropped",
        "snap-dropped",
        "InProgress",
    )
    .await;
    backup(
        &cluster,
        &ns,
        "backup-steady",
        "snap-gone-for-good",
        "Pending",
    )
    .await;
    backup(&cluster, &ns, "backup-touched", "snap-gone-too", "Pending").await;
    let dir = temp_dir(&ns);
    let options = options(&ns, &dir, Duration::ZERO);

    let planned = plan(cluster.client(), &options).await.unwrap();
    let mut names: Vec<_> = planned.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "backup-dropped",
            "backup-lost",
            "backup-missing",
            "backup-steady",
            "backup-touched"
        ]
    );

    // Between the diagnosis and the delete:
    // - the missing Snapshot appears (created, taken, listed by the engine);
    snapshot(&cluster, &ns, "snap-missing", true, false).await;
    // - Longhorn finds the lost snapshot again: the object is healthy (same name);
    cluster
        .set_status::<Snapshot>(&ns, "snap-lost", snapshot_status(true, false))
        .await
        .unwrap();
    // - the engine status lists the dropped one again (its Snapshot object is unchanged);
    cluster
        .set_status::<Engine>(
            &ns,
            ENGINE,
            engine_status(&["snap-older", "snap-missing", "snap-lost", "snap-dropped"]),
        )
        .await
        .unwrap();
    // - Longhorn reconciles one Backup (its status changes).
    let mut touched = shapes::backup_status("Pending", "node-1", "vol-1", "snap-gone-too");
    touched["messages"] = json!({ "info": "Waiting for the engine vol-1-e-0 to be ready" });
    cluster
        .set_status::<Backup>(&ns, "backup-touched", touched)
        .await
        .unwrap();

    let out = delete_planned(cluster.client(), &options, planned)
        .await
        .unwrap();
    assert_eq!(out.deleted, ["backup-steady"], "{out:?}");
    for (name, why) in [
        ("backup-missing", "Snapshot snap-missing exists again"),
        (
            "backup-lost",
            "Snapshot snap-lost changed since the diagnosis",
        ),
        ("backup-dropped", "(does not list it -> lists it)"),
        (
            "backup-touched",
            "Backup backup-touched changed since the diagnosis",
        ),
    ] {
        assert!(
            out.skipped
                .iter()
                .any(|(n, reason)| n == name && reason.contains(why)),
            "{name} not left alone with {why:?}: {:?}",
            out.skipped
        );
    }
    for name in [
        "backup-missing",
        "backup-lost",
        "backup-dropped",
        "backup-touched",
    ] {
        assert!(exists(&cluster, &ns, name).await, "{name} was deleted");
    }
    assert!(!exists(&cluster, &ns, "backup-steady").await);
    let text = longhorn_guard_stuck_backups::render::prune_text(&out);
    assert!(
        text.contains("left alone backup-missing: Snapshot snap-missing exists again"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
