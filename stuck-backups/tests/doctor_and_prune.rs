//! `doctor` and `prune` against the real kube-apiserver with a seeded stuck state, shaped as
//! Longhorn v1.7.2 leaves it after the incident.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Api;
use kube::api::ListParams;
use longhorn_guard_stuck_backups::{DoctorOptions, PruneOptions, StuckReason, doctor, prune};
use longhorn_guard_testkit::TestCluster;
use longhorn_types::{Backup, shapes};
use serde_json::Value;

/// Seeds volumes, snapshots, a target and Backups in every interesting state.
async fn seed(cluster: &TestCluster, ns: &str) {
    common::target_and_volume(cluster, ns).await;
    let c = |obj, status| cluster.create_longhorn_object(ns, obj, status);
    c(
        shapes::snapshot(ns, "snap-ok", "vol-1"),
        Some(shapes::snapshot_status("node-1", "")),
    )
    .await
    .unwrap();
    let mut removed = shapes::snapshot_status("node-1", "");
    removed["markRemoved"] = Value::Bool(true);
    c(shapes::snapshot(ns, "snap-removed", "vol-1"), Some(removed))
        .await
        .unwrap();
    c(shapes::setting(ns, "failed-backup-ttl", "1440"), None)
        .await
        .unwrap();
    c(shapes::setting(ns, "backup-concurrent-limit", "2"), None)
        .await
        .unwrap();
    c(
        shapes::setting(ns, "storage-over-provisioning-percentage", "100"),
        None,
    )
    .await
    .unwrap();

    let backup = |name: &str, snap: &str, state: &str, url: &str| {
        let mut status = shapes::backup_status(state, "node-1", "vol-1", snap);
        status["url"] = Value::String(url.into());
        (
            shapes::backup(ns, name, "vol-1", snap, Some("daily-backup")),
            status,
        )
    };
    for (obj, status) in [
        backup("backup-gone-pending", "snap-gone", "Pending", ""),
        backup("backup-gone-new", "snap-gone-2", "", ""),
        backup("backup-removed", "snap-removed", "InProgress", ""),
        backup("backup-gone-error", "snap-gone", "Error", ""),
        backup(
            "backup-gone-with-url",
            "snap-gone",
            "Pending",
            "s3://bk@us-east-1/?backup=backup-gone-with-url&volume=vol-1",
        ),
        backup("backup-ok-pending", "snap-ok", "Pending", ""),
        backup(
            "backup-completed",
            "snap-gone",
            "Completed",
            "s3://bk@us-east-1/?backup=backup-completed&volume=vol-1",
        ),
        backup("backup-synced", "", "", ""),
    ] {
        c(obj, Some(status)).await.unwrap();
    }
}

async fn backups(cluster: &TestCluster, ns: &str) -> BTreeMap<String, String> {
    Api::<Backup>::namespaced(cluster.client(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|b| {
            (
                b.metadata.name.clone().unwrap(),
                b.metadata.resource_version.clone().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn doctor_reports_why_each_backup_is_stuck_and_writes_nothing() {
    let cluster = TestCluster::connect().await.unwrap();
    let ns = cluster.namespace("doctor").await.unwrap();
    seed(&cluster, &ns).await;
    let before = backups(&cluster, &ns).await;

    let options = DoctorOptions {
        namespace: ns.clone(),
        ..Default::default()
    };
    let report = doctor(cluster.client(), &options).await.unwrap();

    assert_eq!(
        backups(&cluster, &ns).await,
        before,
        "doctor changed a Backup"
    );
    assert_eq!(report.total_backups, 8);
    let reasons = |name: &str| {
        report
            .findings
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.reasons.clone())
    };
    assert_eq!(
        reasons("backup-gone-pending"),
        Some(vec![StuckReason::SnapshotMissing])
    );
    assert_eq!(
        reasons("backup-removed"),
        Some(vec![StuckReason::SnapshotMarkedRemoved])
    );
    assert!(
        matches!(reasons("backup-ok-pending").as_deref(), Some([StuckReason::Waiting { message }]) if message == "Failed to get the Snapshot snap-ok")
    );
    assert_eq!(
        reasons("backup-completed"),
        None,
        "terminal Backups are not findings"
    );
    assert_eq!(report.recurring_jobs.get("daily-backup"), Some(&6));
    assert_eq!(
        report.settings.get("failed-backup-ttl").map(String::as_str),
        Some("1440")
    );
    assert!(
        !report
            .settings
            .contains_key("storage-over-provisioning-percentage")
    );
    assert_eq!(report.needs_attention, 4, "{report:#?}");
    // Every Backup was created a moment ago: younger than the stuck threshold, none may go.
    assert_eq!(report.prune_eligible, 0, "{report:#?}");
    let held: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.prune_hold.is_some())
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(held.len(), 4, "{held:?}");
    // Counted apart by volume: the New and Pending ones whose snapshot is gone.
    let doomed: Vec<(&str, Vec<String>)> = report
        .doomed_volumes
        .iter()
        .map(|v| {
            let mut names = v.backups.clone();
            names.sort();
            (v.volume.as_str(), names)
        })
        .collect();
    assert_eq!(
        doomed,
        [(
            "vol-1",
            [
                "backup-gone-new",
                "backup-gone-pending",
                "backup-gone-with-url"
            ]
            .map(String::from)
            .to_vec()
        )]
    );
    let text = longhorn_guard_stuck_backups::render::doctor_text(&report);
    assert!(
        text.contains("backup-gone-pending") && text.contains("snapshot missing"),
        "{text}"
    );
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn prune_dry_run_deletes_nothing_and_yes_deletes_exactly_the_eligible_ones_restorably() {
    let cluster = TestCluster::connect().await.unwrap();
    let ns = cluster.namespace("prune").await.unwrap();
    seed(&cluster, &ns).await;
    let before = backups(&cluster, &ns).await;
    let dir = std::env::temp_dir().join(format!("lhg-prune-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let restore_file = dir.join("restore.yaml");
    let mut options = PruneOptions {
        doctor: DoctorOptions {
            namespace: ns.clone(),
            // The seeded Backups are seconds old: judge them as if they had waited long enough.
            stuck_after: Duration::ZERO,
        },
        yes: false,
        restore_file: restore_file.clone(),
        deletes_per_second: 50.0,
    };

    let dry = prune(cluster.client(), &options).await.unwrap();
    assert!(dry.dry_run && dry.deleted.is_empty());
    assert_eq!(
        backups(&cluster, &ns).await,
        before,
        "dry run changed something"
    );
    assert!(!restore_file.exists(), "dry run wrote a restore file");
    let mut planned: Vec<_> = dry.planned.iter().map(|f| f.name.clone()).collect();
    planned.sort();
    let eligible = [
        "backup-gone-error",
        "backup-gone-new",
        "backup-gone-pending",
        "backup-removed",
    ];
    assert_eq!(planned, eligible);

    options.yes = true;
    let done = prune(cluster.client(), &options).await.unwrap();
    let mut deleted = done.deleted.clone();
    deleted.sort();
    assert_eq!(deleted, eligible);
    let after = backups(&cluster, &ns).await;
    let kept: Vec<_> = after.keys().cloned().collect();
    assert_eq!(
        kept,
        [
            "backup-completed",
            "backup-gone-with-url",
            "backup-ok-pending",
            "backup-synced"
        ]
    );
    for name in &kept {
        assert_eq!(after[name], before[name], "{name} was modified");
    }

    // The restore recreates exactly what was deleted, marked as restored (no guard is
    // registered here; cli/tests/prune_restore.rs runs the procedure with the guard).
    let items = longhorn_guard_stuck_backups::restore::read_restore_file(&restore_file).unwrap();
    assert_eq!(items.len(), 4);
    let outcome = longhorn_guard_stuck_backups::restore(cluster.client(), &ns, &restore_file)
        .await
        .unwrap();
    let mut restored = outcome.restored.clone();
    restored.sort();
    assert_eq!(restored, eligible, "{outcome:?}");
    assert!(outcome.refused.is_empty() && outcome.already_present.is_empty());
    let api = Api::<Backup>::namespaced(cluster.client(), &ns);
    for item in items {
        let name = item["metadata"]["name"].as_str().unwrap().to_string();
        let back = serde_json::to_value(api.get(&name).await.unwrap()).unwrap();
        assert_eq!(back["spec"], item["spec"], "{name}: spec restored");
        let mut labels = item["metadata"]["labels"].clone();
        labels[longhorn_guard_stuck_backups::RESTORED_LABEL] = Value::String("true".into());
        assert_eq!(back["metadata"]["labels"], labels, "{name}: labels");
        assert!(
            back["metadata"]["annotations"][longhorn_guard_stuck_backups::RESTORED_FROM_ANNOTATION]
                .as_str()
                .is_some_and(|a| a.contains("--restore")),
            "{name}: {back}"
        );
    }
    assert_eq!(backups(&cluster, &ns).await.len(), 8);
    let again = longhorn_guard_stuck_backups::restore(cluster.client(), &ns, &restore_file)
        .await
        .unwrap();
    assert_eq!(again.already_present.len(), 4, "{again:?}");
    assert!(again.restored.is_empty() && again.refused.is_empty());

    // A second --yes run refuses to overwrite the restore file.
    let err = prune(cluster.client(), &options).await.unwrap_err();
    assert!(format!("{err:#}").contains("must not exist"), "{err:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}
