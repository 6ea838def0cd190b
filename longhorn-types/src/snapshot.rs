//! Longhorn's Snapshot.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{SNAPSHOT_LOST_TRACK_ERROR, label, labels};

/// `Snapshot.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "longhorn.io",
    version = "v1beta2",
    kind = "Snapshot",
    namespaced,
    status = "SnapshotStatus",
    shortname = "lhsnap"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct SnapshotSpec {
    /// The volume; required and immutable in Longhorn.
    #[serde(default)]
    pub volume: String,
    #[serde(default)]
    pub create_snapshot: bool,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `Snapshot.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct SnapshotStatus {
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub children: Option<BTreeMap<String, bool>>,
    #[serde(default)]
    pub mark_removed: bool,
    #[serde(default)]
    pub user_created: bool,
    #[serde(default)]
    pub creation_time: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "ownerID")]
    pub owner_id: String,
    /// [`SNAPSHOT_LOST_TRACK_ERROR`] once the engine has lost it.
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub restore_size: i64,
    #[serde(default)]
    pub ready_to_use: bool,
    #[serde(default)]
    pub checksum: String,
}

impl Snapshot {
    /// The snapshot's volume: `spec.volume`, else the `longhornvolume` label.
    pub fn volume(&self) -> Option<&str> {
        Some(self.spec.volume.as_str())
            .filter(|v| !v.is_empty())
            .or_else(|| label(&self.metadata, labels::LONGHORN_VOLUME))
    }

    pub fn mark_removed(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.mark_removed)
    }

    pub fn ready_to_use(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.ready_to_use)
    }

    /// True when Longhorn says the engine no longer has this snapshot.
    pub fn lost_in_engine(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.error.contains(SNAPSHOT_LOST_TRACK_ERROR))
    }
}
