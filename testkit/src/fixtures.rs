//! Longhorn-shaped objects for tests: one of every kind the guard reads, and what an index
//! holds for an admissible Backup.

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One object of every Longhorn kind the guard reads, each with its status, shaped exactly
/// as Longhorn v1.7.2 writes them (`longhorn_types::shapes`). `(object, status)`.
pub fn longhorn_fixture_objects(ns: &str) -> Vec<(Value, Option<Value>)> {
    use longhorn_types::shapes as s;
    vec![
        (
            s::volume(ns, "pvc-1", "node-1"),
            Some(s::volume_status("node-1")),
        ),
        (
            s::snapshot(ns, "snap-a", "pvc-1"),
            Some(s::snapshot_status("node-1", "")),
        ),
        (
            s::engine(ns, "pvc-1", "node-1"),
            Some(s::engine_status(
                "node-1",
                "instance-manager-0123456789abcdef",
                "10.42.1.17",
                10010,
            )),
        ),
        (
            s::instance_manager(ns, "instance-manager-0123456789abcdef", "node-1"),
            Some(s::instance_manager_status("node-1", "10.42.1.5")),
        ),
        (
            s::backup_target(ns, "default", "s3://backupbucket@us-east-1/"),
            Some(s::backup_target_status("node-1", true)),
        ),
        (s::backup_volume(ns, "pvc-1"), None),
        (
            s::backup(
                ns,
                "backup-1a2b3c4d5e6f7a8b",
                "pvc-1",
                "snap-a",
                Some("daily"),
            ),
            Some(s::backup_status("Pending", "node-1", "pvc-1", "snap-a")),
        ),
        (
            s::backup(ns, "backup-new0000000000000", "pvc-1", "", None),
            Some(s::backup_status("", "", "", "")),
        ),
        (s::setting(ns, "backup-target", ""), None),
    ]
}

/// `obj` with `status`, as the typed object a watch delivers.
pub fn typed_with_status<K: DeserializeOwned>(obj: Value, status: Value) -> Result<K> {
    Ok(serde_json::from_value(
        longhorn_types::shapes::with_status(obj, status),
    )?)
}

/// What an index holds for an admissible Backup of `snapshot` in `ns`: Volume `vol-1`
/// attached to node-1, its ready Snapshot `snapshot`, the available BackupTarget `default`
/// (`s3://bk@us-east-1/`), each with its status.
pub fn admissible_backup_objects(
    ns: &str,
    snapshot: &str,
) -> Result<(
    longhorn_types::Volume,
    longhorn_types::Snapshot,
    longhorn_types::BackupTarget,
)> {
    use longhorn_types::shapes as s;
    Ok((
        typed_with_status(s::volume(ns, "vol-1", "node-1"), s::volume_status("node-1"))?,
        typed_with_status(
            s::snapshot(ns, snapshot, "vol-1"),
            s::snapshot_status("node-1", ""),
        )?,
        typed_with_status(
            s::backup_target(ns, "default", "s3://bk@us-east-1/"),
            s::backup_target_status("node-1", true),
        )?,
    ))
}
