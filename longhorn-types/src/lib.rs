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

mod backup;
mod backup_target;
mod engine;
mod instance_manager;
mod setting;
mod snapshot;
mod volume;

pub use backup::{Backup, BackupSpec, BackupState, BackupStatus};
pub use backup_target::{
    BackupTarget, BackupTargetSpec, BackupTargetStatus, BackupVolume, BackupVolumeSpec,
    BackupVolumeStatus,
};
pub use engine::{Engine, EngineSnapshotInfo, EngineSpec, EngineStatus};
pub use instance_manager::{InstanceManager, InstanceManagerSpec, InstanceManagerStatus};
pub use release::{LonghornVersion, Release};
pub use setting::{Setting, SettingStatus};
pub use snapshot::{Snapshot, SnapshotSpec, SnapshotStatus};
pub use volume::{Volume, VolumeSpec, VolumeStatus};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}
