//! Shared by the stuck-backups integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use longhorn_guard_testkit::TestCluster;
use longhorn_types::shapes;

/// An available `default` BackupTarget and volume `vol-1` attached to node-1.
pub async fn target_and_volume(cluster: &TestCluster, ns: &str) {
    for (obj, status) in [
        (
            shapes::backup_target(ns, "default", "s3://bk@us-east-1/"),
            shapes::backup_target_status("node-1", true),
        ),
        (
            shapes::volume(ns, "vol-1", "node-1"),
            shapes::volume_status("node-1"),
        ),
    ] {
        cluster
            .create_longhorn_object(ns, obj, Some(status))
            .await
            .unwrap();
    }
}
