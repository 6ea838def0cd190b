//! Longhorn's BackupTarget, BackupVolume.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `BackupTarget.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "longhorn.io",
    version = "v1beta2",
    kind = "BackupTarget",
    namespaced,
    status = "BackupTargetStatus",
    shortname = "lhbt"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BackupTargetSpec {
    #[serde(default, rename = "backupTargetURL")]
    pub backup_target_url: String,
    #[serde(default)]
    pub credential_secret: String,
    #[serde(default)]
    pub poll_interval: String,
    #[serde(default)]
    pub sync_requested_at: Option<String>,
}

/// `BackupTarget.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BackupTargetStatus {
    #[serde(default)]
    pub available: bool,
    #[serde(default, rename = "ownerID")]
    pub owner_id: String,
    #[serde(default)]
    pub last_synced_at: Option<String>,
}

impl BackupTarget {
    pub fn available(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.available)
    }
}

/// `BackupVolume.spec` (1.8+ adds the target and volume names).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "longhorn.io",
    version = "v1beta2",
    kind = "BackupVolume",
    namespaced,
    status = "BackupVolumeStatus",
    shortname = "lhbv"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BackupVolumeSpec {
    #[serde(default)]
    pub sync_requested_at: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup_target_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub volume_name: String,
}

/// `BackupVolume.status` (the fields the guard reads).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BackupVolumeStatus {
    #[serde(default, rename = "ownerID")]
    pub owner_id: String,
    #[serde(default)]
    pub last_backup_name: String,
    #[serde(default)]
    pub last_backup_at: String,
    #[serde(default)]
    pub size: String,
}
