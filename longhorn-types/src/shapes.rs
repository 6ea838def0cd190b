//! Longhorn objects shaped exactly as longhorn-manager v1.7.2 writes them: every field its Go
//! structs serialize without `omitempty`, `""` strings, `null` times and maps included.
//!
//! Tests, benchmarks and the demo create these on the local control plane; a compatibility
//! test checks that Longhorn's own v1.7.2 CRDs accept them unchanged. Status is returned
//! separately because it is written through the status subresource.
//!
//! The `*_of(release, ..)` variants give the same objects as a later release writes them
//! (the reference's **[1.8+]** / **[1.10+]** fields): the Backup's `backup-target` label
//! and `status.backupTargetName`, the Volume's `spec.backupTargetName`, BackupVolumes named
//! apart from their volume, `spec.backupBlockSize` on 1.10.

use serde_json::{Value, json};

use crate::release::Release;
use crate::{API_VERSION, labels};

/// A Backup as longhorn-manager's `snapshotBackup` action creates it (before the mutator
/// adds its finalizer and rewrites `backupMode`). `recurring_job` adds the `RecurringJob`
/// spec label recurring backups carry.
pub fn backup(
    namespace: &str,
    name: &str,
    volume: &str,
    snapshot: &str,
    recurring_job: Option<&str>,
) -> Value {
    let mut spec_labels = json!({ labels::VOLUME_ACCESS_MODE: "rwo" });
    if let Some(job) = recurring_job {
        spec_labels[labels::RECURRING_JOB] = json!(job);
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "Backup",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { labels::BACKUP_VOLUME: volume },
        },
        "spec": {
            "syncRequestedAt": null,
            "snapshotName": snapshot,
            "labels": spec_labels,
            "backupMode": "incremental",
        },
    })
}

/// [`backup`] as `release` stores it once Longhorn's mutator has run: on 1.8+ the
/// `backup-target` label names `target` (the mutator fills it from the volume's
/// `spec.backupTargetName`), on 1.10+ `spec.backupBlockSize` is set from the volume.
pub fn backup_of(
    release: Release,
    namespace: &str,
    name: &str,
    volume: &str,
    snapshot: &str,
    target: &str,
) -> Value {
    let mut b = backup(namespace, name, volume, snapshot, None);
    if release.has_backup_targets() {
        b["metadata"]["labels"][labels::BACKUP_TARGET] = json!(target);
    }
    if release >= Release::V1_10 {
        b["spec"]["backupBlockSize"] = json!("2097152");
    }
    b
}

/// [`backup_status`] as `release` writes it: 1.8+ adds `backupTargetName`.
pub fn backup_status_of(
    release: Release,
    state: &str,
    owner: &str,
    volume: &str,
    snapshot: &str,
    target: &str,
) -> Value {
    let mut st = backup_status(state, owner, volume, snapshot);
    if release.has_backup_targets() {
        st["backupTargetName"] = json!(if state.is_empty() { "" } else { target });
    }
    st
}

/// `Backup.status` in a given state, as the backup controller writes it. `""` is New.
pub fn backup_status(state: &str, owner: &str, volume: &str, snapshot: &str) -> Value {
    let progress = if state == "Completed" { 100 } else { 0 };
    let pending_info = if state == "Pending" {
        json!({ "info": format!("Failed to get the Snapshot {snapshot}") })
    } else {
        Value::Null
    };
    json!({
        "ownerID": owner,
        "state": state,
        "progress": progress,
        "url": "",
        "snapshotName": if state.is_empty() { "" } else { snapshot },
        "snapshotCreatedAt": "",
        "backupCreatedAt": "",
        "size": "",
        "labels": null,
        "messages": pending_info,
        "volumeName": if state.is_empty() { "" } else { volume },
        "volumeSize": "",
        "volumeCreated": "",
        "volumeBackingImageName": "",
        "lastSyncedAt": null,
        "compressionMethod": "",
        "newlyUploadDataSize": "",
        "reUploadedDataSize": "",
        "replicaAddress": "",
    })
}

/// A Snapshot CR of `volume` as longhorn-manager's snapshot controller creates it.
pub fn snapshot(namespace: &str, name: &str, volume: &str) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "Snapshot",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { labels::LONGHORN_VOLUME: volume },
        },
        "spec": {
            "volume": volume,
            "createSnapshot": false,
            "labels": null,
        },
    })
}

/// `Snapshot.status` of a healthy, user-created snapshot that is the newest in its chain.
pub fn snapshot_status(owner: &str, parent: &str) -> Value {
    json!({
        "parent": parent,
        "children": { "volume-head": true },
        "markRemoved": false,
        "userCreated": true,
        "creationTime": "2026-11-24T10:00:00Z",
        "labels": {},
        "ownerID": owner,
        "error": "",
        "size": 4096,
        "restoreSize": 4096,
        "readyToUse": true,
        "checksum": "",
    })
}

/// A v1 Volume of 20 GiB with 3 replicas, attached to `node`.
pub fn volume(namespace: &str, name: &str, node: &str) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "Volume",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "Standby": false,
            "accessMode": "rwo",
            "backendStoreDriver": "",
            "backingImage": "",
            "backupCompressionMethod": "lz4",
            "dataEngine": "v1",
            "dataLocality": "disabled",
            "dataSource": "",
            "disableFrontend": false,
            "diskSelector": [],
            "encrypted": false,
            "engineImage": "",
            "freezeFilesystemForSnapshot": "ignored",
            "fromBackup": "",
            "frontend": "blockdev",
            "image": "longhornio/longhorn-engine:v1.7.2",
            "lastAttachedBy": "",
            "migratable": false,
            "migrationNodeID": "",
            "nodeID": node,
            "nodeSelector": [],
            "numberOfReplicas": 3,
            "replicaAutoBalance": "ignored",
            "replicaDiskSoftAntiAffinity": "ignored",
            "replicaSoftAntiAffinity": "ignored",
            "replicaZoneSoftAntiAffinity": "ignored",
            "restoreVolumeRecurringJob": "ignored",
            "revisionCounterDisabled": true,
            "size": "21474836480",
            "snapshotDataIntegrity": "ignored",
            "snapshotMaxCount": 250,
            "snapshotMaxSize": "0",
            "staleReplicaTimeout": 30,
            "unmapMarkSnapChainRemoved": "ignored",
        },
    })
}

/// [`volume`] as `release` writes it: 1.8+ names the volume's BackupTarget.
pub fn volume_of(release: Release, namespace: &str, name: &str, node: &str, target: &str) -> Value {
    let mut v = volume(namespace, name, node);
    if release.has_backup_targets() {
        v["spec"]["backupTargetName"] = json!(target);
    }
    v
}

/// `Volume.status` of an attached, healthy volume.
pub fn volume_status(node: &str) -> Value {
    json!({
        "ownerID": node,
        "state": "attached",
        "robustness": "healthy",
        "currentNodeID": node,
        "currentImage": "longhornio/longhorn-engine:v1.7.2",
        "kubernetesStatus": {
            "pvName": "", "pvStatus": "", "namespace": "", "pvcName": "",
            "lastPVCRefAt": "", "lastPodRefAt": "", "workloadsStatus": null,
        },
        "frontendDisabled": false,
        "restoreRequired": false,
        "restoreInitiated": false,
        "cloneStatus": { "sourceVolume": "", "snapshot": "", "state": "", "attemptCount": 0, "nextAllowedAttemptAt": "" },
        "remountRequestedAt": "",
        "expansionRequired": false,
        "isStandby": false,
        "actualSize": 0,
        "lastDegradedAt": "",
        "pendingNodeID": "",
        "shareEndpoint": "",
        "shareState": "",
        "lastBackup": "",
        "lastBackupAt": "",
        "currentMigrationNodeID": "",
        "conditions": [],
    })
}

/// The running engine `<volume>-e-0` of `volume` on `node`.
pub fn engine(namespace: &str, volume: &str, node: &str) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "Engine",
        "metadata": {
            "name": format!("{volume}-e-0"),
            "namespace": namespace,
            "labels": { labels::LONGHORN_VOLUME: volume, "longhornnode": node },
        },
        "spec": {
            "volumeName": volume,
            "volumeSize": "21474836480",
            "nodeID": node,
            "engineImage": "",
            "image": "longhornio/longhorn-engine:v1.7.2",
            "desireState": "running",
            "logRequested": false,
            "salvageRequested": false,
            "backendStoreDriver": "",
            "dataEngine": "v1",
            "frontend": "blockdev",
            "disableFrontend": false,
            "replicaAddressMap": {},
            "upgradedReplicaAddressMap": {},
            "backupVolume": "",
            "requestedBackupRestore": "",
            "requestedDataSource": "",
            "revisionCounterDisabled": true,
            "unmapMarkSnapChainRemovedEnabled": false,
            "active": true,
            "snapshotMaxCount": 250,
            "snapshotMaxSize": "0",
        },
    })
}

/// `Engine.status` of a running engine at `storage_ip:port`, hosted by `instance_manager`.
pub fn engine_status(node: &str, instance_manager: &str, storage_ip: &str, port: i64) -> Value {
    json!({
        "ownerID": node,
        "instanceManagerName": instance_manager,
        "currentState": "running",
        "currentImage": "longhornio/longhorn-engine:v1.7.2",
        "ip": storage_ip,
        "storageIP": storage_ip,
        "port": port,
        "started": true,
        "logFetched": false,
        "salvageExecuted": false,
        "currentSize": "21474836480",
        "currentReplicaAddressMap": {},
        "replicaModeMap": {},
        "replicaTransitionTimeMap": {},
        "endpoint": "",
        "lastRestoredBackup": "",
        "backupStatus": null,
        "restoreStatus": null,
        "purgeStatus": null,
        "rebuildStatus": null,
        "cloneStatus": null,
        "snapshots": null,
        "snapshotsError": "",
        "isExpanding": false,
        "lastExpansionError": "",
        "lastExpansionFailedAt": "",
        "unmapMarkSnapChainRemovedEnabled": false,
        "snapshotMaxCount": 250,
        "snapshotMaxSize": "0",
        "conditions": [],
    })
}

/// The v1 `aio` instance manager of `node`.
pub fn instance_manager(namespace: &str, name: &str, node: &str) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "InstanceManager",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                labels::COMPONENT: "instance-manager",
                labels::INSTANCE_MANAGER_TYPE: "aio",
                labels::NODE: node,
                "longhorn.io/data-engine": "v1",
                "longhorn.io/managed-by": "longhorn-manager",
            },
        },
        "spec": {
            "image": "longhornio/longhorn-instance-manager:v1.7.2",
            "nodeID": node,
            "type": "aio",
            "dataEngine": "v1",
        },
    })
}

/// `InstanceManager.status` of a running instance manager with pod IP `ip`.
pub fn instance_manager_status(node: &str, ip: &str) -> Value {
    json!({
        "ownerID": node,
        "currentState": "running",
        "instanceEngines": {},
        "instanceReplicas": {},
        "instances": {},
        "ip": ip,
        "apiMinVersion": 1,
        "apiVersion": 4,
        "proxyApiMinVersion": 1,
        "proxyApiVersion": 6,
    })
}

/// The `default` BackupTarget with an S3 URL.
pub fn backup_target(namespace: &str, name: &str, url: &str) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "BackupTarget",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "backupTargetURL": url,
            "credentialSecret": "",
            "pollInterval": "5m0s",
            "syncRequestedAt": null,
        },
    })
}

/// `BackupTarget.status`.
pub fn backup_target_status(owner: &str, available: bool) -> Value {
    json!({
        "ownerID": owner,
        "available": available,
        "conditions": [],
        "lastSyncedAt": "2026-11-24T10:00:00Z",
    })
}

/// A BackupVolume named after its volume (1.7.x naming).
pub fn backup_volume(namespace: &str, volume: &str) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "BackupVolume",
        "metadata": { "name": volume, "namespace": namespace },
        "spec": { "syncRequestedAt": null },
    })
}

/// The BackupVolume of `volume` in `target` as `release` writes it: named after the volume
/// on 1.7; on 1.8+ named apart from it (`<volume>-<target>` here: the reference only says
/// the names differ) with `spec.backupTargetName` and `spec.volumeName`.
pub fn backup_volume_of(release: Release, namespace: &str, volume: &str, target: &str) -> Value {
    let mut bv = backup_volume(namespace, volume);
    if release.has_backup_targets() {
        bv["metadata"]["name"] = json!(format!("{volume}-{target}"));
        bv["spec"]["backupTargetName"] = json!(target);
        bv["spec"]["volumeName"] = json!(volume);
    }
    bv
}

/// A Setting: `value` at the top level, always a string.
pub fn setting(namespace: &str, name: &str, value: &str) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "Setting",
        "metadata": { "name": name, "namespace": namespace },
        "value": value,
    })
}

/// `obj` with `status` set: the whole object as a watch or a list delivers it (for objects
/// built here, whose status is returned separately).
pub fn with_status(mut obj: Value, status: Value) -> Value {
    obj["status"] = status;
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    #[test]
    fn shapes_read_back_as_typed_objects() {
        let b: Backup = serde_json::from_value(with_status(
            backup(
                "ns",
                "backup-1a2b3c4d5e6f7a8b",
                "vol-1",
                "snap-1",
                Some("daily"),
            ),
            backup_status("Pending", "node-1", "vol-1", "snap-1"),
        ))
        .unwrap();
        assert_eq!(b.spec.snapshot_name, "snap-1");
        assert_eq!(b.volume_label(), Some("vol-1"));
        assert_eq!(b.recurring_job(), Some("daily"));
        assert_eq!(b.state(), BackupState::Pending);

        let s: Snapshot = serde_json::from_value(with_status(
            snapshot("ns", "snap-1", "vol-1"),
            snapshot_status("node-1", ""),
        ))
        .unwrap();
        assert_eq!(s.volume(), Some("vol-1"));
        assert!(s.ready_to_use() && !s.mark_removed() && !s.lost_in_engine());

        let e: Engine = serde_json::from_value(with_status(
            engine("ns", "vol-1", "node-1"),
            engine_status("node-1", "im-1", "10.42.1.17", 10010),
        ))
        .unwrap();
        assert_eq!(e.address().as_deref(), Some("10.42.1.17:10010"));

        let im: InstanceManager = serde_json::from_value(with_status(
            instance_manager("ns", "im-1", "node-1"),
            instance_manager_status("node-1", "10.42.1.5"),
        ))
        .unwrap();
        assert_eq!(im.proxy_endpoint(8501).as_deref(), Some("10.42.1.5:8501"));

        let st: Setting = serde_json::from_value(setting("ns", "backup-target", "")).unwrap();
        assert_eq!(st.value, "");
    }

    #[test]
    fn release_shapes_carry_their_release_fields() {
        for release in Release::ALL {
            let b: Backup = serde_json::from_value(with_status(
                backup_of(release, "ns", "backup-1", "vol-1", "snap-1", "offsite"),
                backup_status_of(release, "Pending", "node-1", "vol-1", "snap-1", "offsite"),
            ))
            .unwrap();
            let v: Volume =
                serde_json::from_value(volume_of(release, "ns", "vol-1", "node-1", "offsite"))
                    .unwrap();
            let bv: BackupVolume =
                serde_json::from_value(backup_volume_of(release, "ns", "vol-1", "offsite"))
                    .unwrap();
            assert_eq!(b.volume_label(), Some("vol-1"), "{release}");
            if release == Release::V1_7 {
                assert_eq!(b.backup_target(), None);
                assert_eq!(v.spec.backup_target_name, "");
                assert_eq!(bv.metadata.name.as_deref(), Some("vol-1"));
            } else {
                assert_eq!(b.backup_target(), Some("offsite"), "{release}");
                let st = b.status.as_ref().unwrap();
                assert_eq!(st.backup_target_name, "offsite");
                assert_eq!(v.spec.backup_target_name, "offsite");
                assert_ne!(bv.metadata.name.as_deref(), Some("vol-1"), "{release}");
                assert_eq!(bv.spec.volume_name, "vol-1");
            }
            let raw = backup_of(release, "ns", "b", "v", "s", "t");
            assert_eq!(
                raw["spec"].get("backupBlockSize").is_some(),
                release == Release::V1_10
            );
        }
    }
}
