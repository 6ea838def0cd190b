//! Objects shaped exactly as Longhorn v1.7.2 writes them (`""` and `null` fields included)
//! are stored unchanged by the real kube-apiserver under longhorn-guard's own CRDs, and read
//! back as the typed structs the webhook and agent use.

use kube::Api;
use longhorn_guard_testkit::{TestCluster, longhorn_fixture_objects};
use longhorn_types::{Backup, BackupState, Engine, InstanceManager, Setting, Snapshot, Volume};
use serde_json::Value;

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn longhorn_shaped_objects_round_trip_through_our_crds() {
    let cluster = TestCluster::connect().await.unwrap();
    let ns = cluster.namespace("crd-roundtrip").await.unwrap();
    for (obj, status) in longhorn_fixture_objects(&ns) {
        let stored = cluster
            .create_longhorn_object(&ns, obj.clone(), status.clone())
            .await
            .unwrap();
        let stored = serde_json::to_value(&stored).unwrap();
        let what = format!("{} {}", obj["kind"], obj["metadata"]["name"]);
        for part in ["spec", "value"] {
            if let Some(sent) = obj.get(part) {
                assert_eq!(
                    &stored[part], sent,
                    "{what}: {part} changed by the API server"
                );
            }
        }
        if let Some(status) = status {
            assert_eq!(
                stored["status"], status,
                "{what}: status changed by the API server"
            );
        }
        assert_eq!(
            stored["metadata"]["labels"], obj["metadata"]["labels"],
            "{what}: labels"
        );
    }

    let client = cluster.client();
    let backup = Api::<Backup>::namespaced(client.clone(), &ns)
        .get("backup-1a2b3c4d5e6f7a8b")
        .await
        .unwrap();
    assert_eq!(backup.state(), BackupState::Pending);
    assert_eq!(backup.spec.snapshot_name, "snap-a");
    assert_eq!(backup.volume_label(), Some("pvc-1"));
    assert_eq!(backup.recurring_job(), Some("daily"));
    let info = backup
        .status
        .as_ref()
        .and_then(|s| s.messages.as_ref())
        .and_then(|m| m.get("info"));
    assert_eq!(
        info.map(String::as_str),
        Some("Failed to get the Snapshot snap-a")
    );

    let new = Api::<Backup>::namespaced(client.clone(), &ns)
        .get("backup-new0000000000000")
        .await
        .unwrap();
    assert_eq!(new.state(), BackupState::New, "state \"\" is New");
    assert_eq!(new.spec.snapshot_name, "");

    let snap = Api::<Snapshot>::namespaced(client.clone(), &ns)
        .get("snap-a")
        .await
        .unwrap();
    assert_eq!(snap.volume(), Some("pvc-1"));
    assert!(snap.ready_to_use() && !snap.mark_removed() && !snap.lost_in_engine());

    let vol = Api::<Volume>::namespaced(client.clone(), &ns)
        .get("pvc-1")
        .await
        .unwrap();
    assert_eq!(vol.status.unwrap().current_node_id, "node-1");

    let engine = Api::<Engine>::namespaced(client.clone(), &ns)
        .get("pvc-1-e-0")
        .await
        .unwrap();
    assert_eq!(engine.address().as_deref(), Some("10.42.1.17:10010"));
    assert_eq!(engine.spec.node_id, "node-1");
    assert!(engine.spec.active && engine.is_running());

    let im = Api::<InstanceManager>::namespaced(client.clone(), &ns)
        .get("instance-manager-0123456789abcdef")
        .await
        .unwrap();
    assert_eq!(im.proxy_endpoint(8501).as_deref(), Some("10.42.1.5:8501"));

    let setting = Api::<Setting>::namespaced(client, &ns)
        .get("backup-target")
        .await
        .unwrap();
    assert_eq!(setting.value, "");
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn status_is_only_written_through_the_status_subresource() {
    // Longhorn's CRDs have the status subresource: a create carrying a status drops it.
    let cluster = TestCluster::connect().await.unwrap();
    let ns = cluster.namespace("crd-status").await.unwrap();
    let mut obj =
        longhorn_types::shapes::backup(&ns, "backup-with-status", "pvc-1", "snap-a", None);
    obj["status"] = longhorn_types::shapes::backup_status("Completed", "node-1", "pvc-1", "snap-a");
    let stored = cluster
        .create_longhorn_object(&ns, obj, None)
        .await
        .unwrap();
    let stored = serde_json::to_value(stored).unwrap();
    assert!(
        matches!(stored.get("status"), None | Some(Value::Null)),
        "status kept: {stored}"
    );
}
