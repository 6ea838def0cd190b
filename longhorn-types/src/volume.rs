//! Longhorn's Volume.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `Volume.spec` (the fields the guard reads).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "longhorn.io",
    version = "v1beta2",
    kind = "Volume",
    namespaced,
    status = "VolumeStatus",
    shortname = "lhv"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct VolumeSpec {
    /// Bytes, as a decimal string.
    #[serde(default)]
    pub size: String,
    #[serde(default, rename = "nodeID")]
    pub node_id: String,
    #[serde(default, rename = "migrationNodeID")]
    pub migration_node_id: String,
    /// `v1` or `v2` (the CRD's enum); left out when empty, which the CRD would refuse.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_engine: String,
    #[serde(default)]
    pub number_of_replicas: i64,
    #[serde(default)]
    pub frontend: String,
    /// 1.8+ only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup_target_name: String,
}

/// `Volume.status` (the fields the guard reads).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct VolumeStatus {
    /// `creating`, `attached`, `detached`, `attaching`, `detaching`, `deleting`.
    #[serde(default)]
    pub state: String,
    /// `healthy`, `degraded`, `faulted`, `unknown`.
    #[serde(default)]
    pub robustness: String,
    #[serde(default, rename = "ownerID")]
    pub owner_id: String,
    #[serde(default, rename = "currentNodeID")]
    pub current_node_id: String,
    #[serde(default)]
    pub last_backup: String,
    #[serde(default)]
    pub last_backup_at: String,
}
