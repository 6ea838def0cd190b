//! Longhorn's `longhorn.io/v1beta2` custom resources as longhorn-guard reads them.
//!
//! Typed structs for the fields the guard reads, written from Longhorn's own Go types
//! (v1.7.2, with the v1.8+ additions it must understand). Every field has a default and
//! unknown fields are ignored, so objects from any Longhorn 1.7–1.11 deserialize.
//!
//! This crate must not talk to a cluster or hold policy: it is types, the label keys and
//! state strings Longhorn uses, the CRDs the local control plane installs ([`crds`]) and
//! object shapes exactly as Longhorn writes them ([`shapes`]) for tests and the demo.

pub mod crds;
pub mod release;
pub mod shapes;

pub use release::{LonghornVersion, Release};

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every Longhorn resource.
pub const GROUP: &str = "longhorn.io";
/// The storage version the guard reads.
pub const VERSION: &str = "v1beta2";
/// `apiVersion` of every Longhorn object.
pub const API_VERSION: &str = "longhorn.io/v1beta2";
/// Longhorn's default namespace. Only a default: look objects up in the Backup's own namespace.
pub const DEFAULT_NAMESPACE: &str = "longhorn-system";
/// Name of the default BackupTarget (the only one on 1.7.x).
pub const DEFAULT_BACKUP_TARGET: &str = "default";

/// Label and `spec.labels` keys exactly as Longhorn writes them.
pub mod labels {
    /// Backup `metadata.labels`: the volume (== BackupVolume name on 1.7.x). Unprefixed.
    pub const BACKUP_VOLUME: &str = "backup-volume";
    /// Backup `metadata.labels` on 1.8+: the BackupTarget name.
    pub const BACKUP_TARGET: &str = "backup-target";
    /// Snapshot and Engine `metadata.labels`: the volume.
    pub const LONGHORN_VOLUME: &str = "longhornvolume";
    /// Backup `spec.labels` of recurring backups: the RecurringJob name.
    pub const RECURRING_JOB: &str = "RecurringJob";
    /// Backup `spec.labels` added by Longhorn's mutator (default `rwo`).
    pub const VOLUME_ACCESS_MODE: &str = "longhorn.io/volume-access-mode";
    /// InstanceManager `metadata.labels`: the node.
    pub const NODE: &str = "longhorn.io/node";
    /// InstanceManager `metadata.labels`: `instance-manager`.
    pub const COMPONENT: &str = "longhorn.io/component";
    /// InstanceManager `metadata.labels`: the type (`aio`, `engine`, `replica`).
    pub const INSTANCE_MANAGER_TYPE: &str = "longhorn.io/instance-manager-type";
}

/// The finalizer Longhorn's mutator puts on Backups.
pub const FINALIZER: &str = "longhorn.io";

/// `Snapshot.status.error` once Longhorn has lost the snapshot in the engine.
pub const SNAPSHOT_LOST_TRACK_ERROR: &str =
    "lost track of the corresponding snapshot info inside volume engine";

// ---------------------------------------------------------------------------------------
// Backup
// ---------------------------------------------------------------------------------------

/// `Backup.spec`: a request to back up one snapshot of a volume.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "longhorn.io",
    version = "v1beta2",
    kind = "Backup",
    namespaced,
    status = "BackupStatus",
    shortname = "lhb"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BackupSpec {
    /// Snapshot CR name (== engine snapshot name). Empty for Backups Longhorn syncs from the target.
    #[serde(default)]
    pub snapshot_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `full`, `incremental` or `""` (Longhorn's mutator turns `""` into `incremental`).
    #[serde(default)]
    pub backup_mode: String,
    #[serde(default)]
    pub sync_requested_at: Option<String>,
}

/// `Backup.status`, as Longhorn's backup controller writes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct BackupStatus {
    #[serde(default, rename = "ownerID")]
    pub owner_id: String,
    /// See [`BackupState`]; `""` is a new Backup.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub progress: i64,
    #[serde(default)]
    pub replica_address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub snapshot_name: String,
    #[serde(default)]
    pub snapshot_created_at: String,
    #[serde(default)]
    pub backup_created_at: String,
    #[serde(default)]
    pub size: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Key `info` carries the reason a Backup is Pending.
    #[serde(default)]
    pub messages: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub last_synced_at: Option<String>,
    #[serde(default)]
    pub volume_name: String,
    #[serde(default)]
    pub volume_size: String,
    #[serde(default)]
    pub volume_created: String,
    #[serde(default)]
    pub volume_backing_image_name: String,
    #[serde(default)]
    pub compression_method: String,
    /// Longhorn spells this one without "ed" after "Upload".
    #[serde(default)]
    pub newly_upload_data_size: String,
    #[serde(default)]
    pub re_uploaded_data_size: String,
    /// 1.8+ only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup_target_name: String,
}

/// `Backup.status.state`. Terminal states free the Backup's slot; the rest are "in flight".
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackupState {
    /// `""`: just created, not yet seen by the backup controller.
    New,
    Pending,
    InProgress,
    Completed,
    Error,
    Unknown,
    /// 1.8+ only; considered final by Longhorn.
    Deleting,
    /// A state string this version of the guard does not know. Counted as in flight: a
    /// guard that under-counts would let a storm through.
    Other(String),
}

impl BackupState {
    pub fn parse(s: &str) -> Self {
        match s {
            "" => Self::New,
            "Pending" => Self::Pending,
            "InProgress" => Self::InProgress,
            "Completed" => Self::Completed,
            "Error" => Self::Error,
            "Unknown" => Self::Unknown,
            "Deleting" => Self::Deleting,
            other => Self::Other(other.to_string()),
        }
    }

    /// The string Longhorn writes.
    pub fn as_str(&self) -> &str {
        match self {
            Self::New => "",
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Completed => "Completed",
            Self::Error => "Error",
            Self::Unknown => "Unknown",
            Self::Deleting => "Deleting",
            Self::Other(s) => s,
        }
    }

    /// Completed, Error, Unknown and (1.8+) Deleting are final.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Error | Self::Unknown | Self::Deleting
        )
    }

    /// A name fit for logs and metric labels (`New` for `""`).
    pub fn label(&self) -> &str {
        match self {
            Self::New => "New",
            Self::Other(_) => "Other",
            other => other.as_str(),
        }
    }
}

impl fmt::Display for BackupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Backup {
    /// The state, `New` when there is no status yet.
    pub fn state(&self) -> BackupState {
        BackupState::parse(self.status.as_ref().map_or("", |s| s.state.as_str()))
    }

    /// The `backup-volume` label, if set.
    pub fn volume_label(&self) -> Option<&str> {
        label(&self.metadata, labels::BACKUP_VOLUME)
    }

    /// The `backup-target` label (1.8+), if set.
    pub fn backup_target_label(&self) -> Option<&str> {
        label(&self.metadata, labels::BACKUP_TARGET)
    }

    /// The BackupTarget this Backup goes to on 1.8+: the `backup-target` label, else
    /// `status.backupTargetName`. `None` on 1.7 objects (their target is `default`).
    pub fn backup_target(&self) -> Option<&str> {
        self.backup_target_label().or_else(|| {
            self.status
                .as_ref()
                .map(|s| s.backup_target_name.as_str())
                .filter(|s| !s.is_empty())
        })
    }

    /// The RecurringJob that asked for this Backup, from `spec.labels`.
    pub fn recurring_job(&self) -> Option<&str> {
        self.spec
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::RECURRING_JOB))
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

// ---------------------------------------------------------------------------------------
// Snapshot
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Volume
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Engine
// ---------------------------------------------------------------------------------------

/// `Engine.spec` (the fields the guard reads).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "longhorn.io",
    version = "v1beta2",
    kind = "Engine",
    namespaced,
    status = "EngineStatus",
    shortname = "lhe"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct EngineSpec {
    #[serde(default)]
    pub volume_name: String,
    #[serde(default, rename = "nodeID")]
    pub node_id: String,
    /// `v1` or `v2` (the CRD's enum); left out when empty, which the CRD would refuse.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_engine: String,
    /// The active engine of a volume during migration.
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub desire_state: String,
    #[serde(default)]
    pub image: String,
}

/// `Engine.status` (the fields the guard reads).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct EngineStatus {
    /// `running`, `stopped`, `error`, `starting`, `stopping`, `unknown`.
    #[serde(default)]
    pub current_state: String,
    /// The InstanceManager hosting this engine: dial its `status.ip:8501`.
    #[serde(default)]
    pub instance_manager_name: String,
    #[serde(default)]
    pub ip: String,
    /// With `port`, the engine address `ProxyEngineRequest.address` carries.
    #[serde(default, rename = "storageIP")]
    pub storage_ip: String,
    #[serde(default)]
    pub port: i64,
    #[serde(default, rename = "ownerID")]
    pub owner_id: String,
    /// Engine snapshots as synced by Longhorn's engine monitor, keyed by snapshot name.
    #[serde(default)]
    pub snapshots: Option<BTreeMap<String, EngineSnapshotInfo>>,
    #[serde(default)]
    pub snapshots_error: String,
}

/// One entry of `Engine.status.snapshots` (Longhorn writes these keys all lowercase).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct EngineSnapshotInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub children: Option<BTreeMap<String, bool>>,
    #[serde(default)]
    pub removed: bool,
    #[serde(default)]
    pub usercreated: bool,
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub size: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl Engine {
    /// `storageIP:port`, the address Longhorn puts in `ProxyEngineRequest.address`.
    pub fn address(&self) -> Option<String> {
        let st = self.status.as_ref()?;
        (!st.storage_ip.is_empty() && st.port > 0).then(|| format!("{}:{}", st.storage_ip, st.port))
    }

    pub fn is_running(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.current_state == "running")
    }
}

// ---------------------------------------------------------------------------------------
// InstanceManager
// ---------------------------------------------------------------------------------------

/// `InstanceManager.spec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "longhorn.io",
    version = "v1beta2",
    kind = "InstanceManager",
    namespaced,
    status = "InstanceManagerStatus",
    shortname = "lhim"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct InstanceManagerSpec {
    #[serde(default, rename = "nodeID")]
    pub node_id: String,
    #[serde(default)]
    pub image: String,
    /// `aio` (`engine`, `replica` deprecated): the CRD's enum; left out when empty, which
    /// the CRD would refuse.
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    #[serde(default)]
    pub data_engine: String,
}

/// `InstanceManager.status` (the fields the guard reads).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct InstanceManagerStatus {
    /// `error`, `running`, `stopped`, `starting`, `unknown`.
    #[serde(default)]
    pub current_state: String,
    /// Pod IP; the engine proxy listens on `<ip>:8501`.
    #[serde(default)]
    pub ip: String,
    #[serde(default, rename = "ownerID")]
    pub owner_id: String,
    #[serde(default)]
    pub api_min_version: i64,
    #[serde(default)]
    pub api_version: i64,
    #[serde(default)]
    pub proxy_api_min_version: i64,
    /// 0 = no proxy support.
    #[serde(default)]
    pub proxy_api_version: i64,
}

impl InstanceManager {
    /// `ip:8501` when Longhorn itself would dial this instance manager's proxy:
    /// running, with an IP, with proxy support.
    pub fn proxy_endpoint(&self, proxy_port: u16) -> Option<String> {
        let st = self.status.as_ref()?;
        (st.current_state == "running" && !st.ip.is_empty() && st.proxy_api_version > 0)
            .then(|| format!("{}:{proxy_port}", st.ip))
    }
}

// ---------------------------------------------------------------------------------------
// BackupTarget, BackupVolume
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Setting (no spec: `value` sits at the top level)
// ---------------------------------------------------------------------------------------

/// A Longhorn setting: `metadata.name` is the key, `value` is always a string.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Setting {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SettingStatus>,
}

/// `Setting.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SettingStatus {
    #[serde(default)]
    pub applied: bool,
}

impl kube::Resource for Setting {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Setting".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "settings".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_states_match_longhorn() {
        let cases = [
            ("", BackupState::New, false),
            ("Pending", BackupState::Pending, false),
            ("InProgress", BackupState::InProgress, false),
            ("Completed", BackupState::Completed, true),
            ("Error", BackupState::Error, true),
            ("Unknown", BackupState::Unknown, true),
            ("Deleting", BackupState::Deleting, true),
            ("Weird", BackupState::Other("Weird".into()), false),
        ];
        for (s, state, terminal) in cases {
            assert_eq!(BackupState::parse(s), state, "{s:?}");
            assert_eq!(state.is_terminal(), terminal, "{s:?}");
            assert_eq!(state.as_str(), s);
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_default() {
        let v = serde_json::json!({
            "apiVersion": "longhorn.io/v1beta2", "kind": "Engine",
            "metadata": {"name": "pvc-1-e-0", "namespace": "longhorn-system"},
            "spec": {"volumeName": "pvc-1", "nodeID": "node-1", "somethingNew": {"x": 1}},
            "status": {"storageIP": "10.42.1.17", "port": 10010, "currentState": "running"}
        });
        let e: Engine = serde_json::from_value(v).unwrap();
        assert_eq!(e.address().as_deref(), Some("10.42.1.17:10010"));
        assert!(e.is_running());
        assert!(!e.spec.active);
        assert_eq!(e.spec.data_engine, "");
    }

    #[test]
    fn instance_manager_proxy_endpoint_requires_running_ip_and_proxy_support() {
        let mut im = InstanceManager::new("im-1", InstanceManagerSpec::default());
        assert_eq!(im.proxy_endpoint(8501), None);
        im.status = Some(InstanceManagerStatus {
            current_state: "running".into(),
            ip: "10.42.1.5".into(),
            proxy_api_version: 0,
            ..Default::default()
        });
        assert_eq!(im.proxy_endpoint(8501), None, "no proxy support");
        if let Some(st) = im.status.as_mut() {
            st.proxy_api_version = 6;
        }
        assert_eq!(im.proxy_endpoint(8501).as_deref(), Some("10.42.1.5:8501"));
        if let Some(st) = im.status.as_mut() {
            st.current_state = "starting".into();
        }
        assert_eq!(im.proxy_endpoint(8501), None);
    }
}
