//! What the index keeps per object, and how each kind is reduced to it.

use std::fmt::Debug;
use std::sync::{Arc, LazyLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use longhorn_types::{
    Backup, BackupSpec, BackupState, BackupStatus, BackupTarget, BackupTargetSpec,
    BackupTargetStatus, Engine, EngineSpec, EngineStatus, Snapshot, SnapshotSpec, SnapshotStatus,
    Volume, VolumeSpec, VolumeStatus,
};
use serde::de::DeserializeOwned;

use super::{Grouped, IndexData, IndexOptions, Interner, Kind, KindTable};

const MARK_REMOVED: u8 = 1;
const READY_TO_USE: u8 = 1 << 1;
const LOST_IN_ENGINE: u8 = 1 << 2;

/// A Snapshot: its volume and three flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub volume: Option<Arc<str>>,
    flags: u8,
}

/// A Snapshot's facts, detached from the index (also built from a live GET).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotFacts {
    pub volume: Option<String>,
    pub mark_removed: bool,
    pub ready_to_use: bool,
    pub lost_in_engine: bool,
}

impl SnapshotFacts {
    pub fn of(s: &Snapshot) -> Self {
        Self {
            volume: s.volume().map(str::to_string),
            mark_removed: s.mark_removed(),
            ready_to_use: s.ready_to_use(),
            lost_in_engine: s.lost_in_engine(),
        }
    }
}

impl SnapshotEntry {
    pub fn facts(&self) -> SnapshotFacts {
        SnapshotFacts {
            volume: self.volume.as_deref().map(str::to_string),
            mark_removed: self.flags & MARK_REMOVED != 0,
            ready_to_use: self.flags & READY_TO_USE != 0,
            lost_in_engine: self.flags & LOST_IN_ENGINE != 0,
        }
    }
}

/// A Volume: that it exists, its node, its BackupTarget (1.8+), and whether its labels ask
/// for full backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeEntry {
    pub node: Option<Arc<str>>,
    pub full_backup_label: bool,
    /// `spec.backupTargetName` (1.8+); `None` on 1.7 volumes.
    pub backup_target: Option<Arc<str>>,
    /// `status.lastBackupAt` (the volume's last completed Backup) as unix seconds; 0 = none.
    pub last_backup_unix: i64,
    /// `metadata.uid`: what an Event about a refused Backup names as its regarding object
    /// (`crate::events`; `kubectl describe volume` matches Events by uid). Not interned: unique.
    pub uid: Option<Arc<str>>,
}

/// An Engine: its volume and node (for the node of a volume).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineEntry {
    pub volume: Arc<str>,
    pub node: Option<Arc<str>>,
    pub active: bool,
}

/// A Backup: volume, snapshot, state, creation time (unix seconds) and whether the API
/// server generated its name (`metadata.generateName`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupEntry {
    pub volume: Option<Arc<str>>,
    pub snapshot: Option<Arc<str>>,
    state: u8,
    /// Its name is `generateName` (cut to [`MAX_GENERATED_BASE`]) + 5 random characters; the
    /// entry is then also found by that base and its snapshot (`KindTable::generated_from`).
    /// Fits in the padding after `state`: entries stay the same size.
    pub generated: bool,
    pub created_unix: i64,
}

/// The longest `generateName` prefix the API server keeps: names are at most 63 characters
/// and it appends 5 random ones (apiserver `names.SimpleNameGenerator`).
pub const MAX_GENERATED_BASE: usize = 58;
/// Characters the API server appends to a `generateName`.
pub const GENERATED_SUFFIX_LEN: usize = 5;

/// The prefix of the names the API server generates from `generate_name`.
pub fn generated_base(generate_name: &str) -> &str {
    let mut end = generate_name.len().min(MAX_GENERATED_BASE);
    while !generate_name.is_char_boundary(end) {
        end -= 1;
    }
    &generate_name[..end]
}

/// The key of generated Backups: their `generateName` base and their snapshot (`/` is in
/// neither a name nor a snapshot name).
pub fn generated_key(base: &str, snapshot: &str) -> String {
    format!("{base}/{snapshot}")
}

/// True when `name` is one the API server generated from `generate_name`.
pub fn is_generated_from(name: &str, generate_name: &str) -> bool {
    let base = generated_base(generate_name);
    !base.is_empty() && name.len() == base.len() + GENERATED_SUFFIX_LEN && name.starts_with(base)
}

impl BackupEntry {
    pub fn state(&self) -> BackupState {
        match self.state {
            0 => BackupState::New,
            1 => BackupState::Pending,
            2 => BackupState::InProgress,
            3 => BackupState::Completed,
            4 => BackupState::Error,
            5 => BackupState::Unknown,
            6 => BackupState::Deleting,
            // The string is not kept; "Other" counts as in flight either way.
            _ => BackupState::Other(String::new()),
        }
    }
}

fn state_code(s: &BackupState) -> u8 {
    match s {
        BackupState::New => 0,
        BackupState::Pending => 1,
        BackupState::InProgress => 2,
        BackupState::Completed => 3,
        BackupState::Error => 4,
        BackupState::Unknown => 5,
        BackupState::Deleting => 6,
        BackupState::Other(_) => 7,
    }
}

impl Grouped for SnapshotEntry {}
impl Grouped for VolumeEntry {}
impl Grouped for TargetEntry {}

/// Engines are grouped by volume (the node of a volume without scanning every Engine).
impl Grouped for EngineEntry {
    fn group(&self) -> Option<Arc<str>> {
        Some(self.volume.clone())
    }
}

/// The group of non-terminal Backups without a snapshot name (synced from a target): never
/// a volume name (volume names cannot contain `/`), so no volume's lookup meets them.
pub const NO_SNAPSHOT_GROUP: &str = "/no-snapshot";

/// Non-terminal Backups are grouped: those in flight (with a snapshot name) by volume (`""`
/// when the Backup names none), the others under [`NO_SNAPSHOT_GROUP`]; terminal ones are
/// not grouped. Every Backup is counted by its state.
impl Grouped for BackupEntry {
    fn group(&self) -> Option<Arc<str>> {
        // Shared keys: grouping runs on every Backup event, no allocation for these two.
        static NO_VOLUME: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
        static NO_SNAPSHOT: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(NO_SNAPSHOT_GROUP));
        if self.in_flight() {
            Some(self.volume.clone().unwrap_or_else(|| NO_VOLUME.clone()))
        } else if !self.state().is_terminal() {
            Some(NO_SNAPSHOT.clone())
        } else {
            None
        }
    }

    fn tally(&self) -> Option<&'static str> {
        Some(state_label(&self.state()))
    }

    fn generated_key(&self, name: &str) -> Option<Arc<str>> {
        let snapshot = self.snapshot.as_deref().filter(|_| self.generated)?;
        let base = name
            .len()
            .checked_sub(GENERATED_SUFFIX_LEN)
            .and_then(|end| name.get(..end))?;
        Some(Arc::from(generated_key(base, snapshot)))
    }
}

/// A Backup state's metric label (`New` for the empty state, `Other` for unknown values).
pub fn state_label(s: &BackupState) -> &'static str {
    match s {
        BackupState::New => "New",
        BackupState::Pending => "Pending",
        BackupState::InProgress => "InProgress",
        BackupState::Completed => "Completed",
        BackupState::Error => "Error",
        BackupState::Unknown => "Unknown",
        BackupState::Deleting => "Deleting",
        BackupState::Other(_) => "Other",
    }
}

impl BackupEntry {
    /// Non-terminal and with a snapshot name: what the throttle counts.
    pub fn in_flight(&self) -> bool {
        self.snapshot.is_some() && !self.state().is_terminal()
    }
}

/// A BackupTarget: whether Longhorn says it is available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetEntry {
    pub available: bool,
}

/// A kind the index follows: how to reduce an object to its entry and where it goes.
pub trait IndexedKind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: Kind;
    type Entry: Grouped;
    /// The kind's spec and status types, for lists decoded without the object metadata the
    /// index never reads (see [`super::list`]).
    type Spec: DeserializeOwned + Default + Send;
    type Status: DeserializeOwned + Send;
    /// The object from its parts.
    fn assemble(metadata: ObjectMeta, spec: Self::Spec, status: Option<Self::Status>) -> Self;
    /// (namespace, name, entry), or `None` for an object without a name.
    fn extract(
        &self,
        interner: &mut Interner,
        options: &IndexOptions,
    ) -> Option<(Arc<str>, Arc<str>, Self::Entry)>;
    fn table(data: &mut IndexData) -> &mut KindTable<Self::Entry>;
}

/// The [`IndexedKind`] items that name a kind's spec and status and put an object together.
macro_rules! parts {
    ($spec:ty, $status:ty) => {
        type Spec = $spec;
        type Status = $status;
        fn assemble(metadata: ObjectMeta, spec: $spec, status: Option<$status>) -> Self {
            Self {
                metadata,
                spec,
                status,
            }
        }
    };
}

fn key<K: Resource>(obj: &K, interner: &mut Interner) -> Option<(Arc<str>, Arc<str>)> {
    let meta = obj.meta();
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    let ns = meta.namespace.as_deref().unwrap_or_default();
    Some((interner.intern(ns), interner.intern(name)))
}

fn opt_intern(interner: &mut Interner, s: &str) -> Option<Arc<str>> {
    (!s.is_empty()).then(|| interner.intern(s))
}

impl IndexedKind for Snapshot {
    const KIND: Kind = Kind::Snapshot;
    parts!(SnapshotSpec, SnapshotStatus);
    type Entry = SnapshotEntry;
    fn extract(
        &self,
        interner: &mut Interner,
        _: &IndexOptions,
    ) -> Option<(Arc<str>, Arc<str>, SnapshotEntry)> {
        let (ns, name) = key(self, interner)?;
        let mut flags = 0;
        if self.mark_removed() {
            flags |= MARK_REMOVED;
        }
        if self.ready_to_use() {
            flags |= READY_TO_USE;
        }
        if self.lost_in_engine() {
            flags |= LOST_IN_ENGINE;
        }
        let volume = self.volume().and_then(|v| opt_intern(interner, v));
        Some((ns, name, SnapshotEntry { volume, flags }))
    }
    fn table(data: &mut IndexData) -> &mut KindTable<SnapshotEntry> {
        &mut data.snapshots
    }
}

impl IndexedKind for Volume {
    const KIND: Kind = Kind::Volume;
    parts!(VolumeSpec, VolumeStatus);
    type Entry = VolumeEntry;
    fn extract(
        &self,
        interner: &mut Interner,
        options: &IndexOptions,
    ) -> Option<(Arc<str>, Arc<str>, VolumeEntry)> {
        let (ns, name) = key(self, interner)?;
        let node = self
            .status
            .as_ref()
            .map(|s| s.current_node_id.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(self.spec.node_id.as_str());
        let node = opt_intern(interner, node);
        let full_backup_label = match &options.full_backup_label {
            None => false,
            Some((k, want)) => match self.metadata.labels.as_ref().and_then(|l| l.get(k)) {
                None => false,
                Some(v) => want.as_ref().is_none_or(|w| w == v),
            },
        };
        let backup_target = opt_intern(interner, &self.spec.backup_target_name);
        let last_backup_unix = self
            .status
            .as_ref()
            .and_then(|s| {
                s.last_backup_at
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .ok()
            })
            .map_or(0, |t| t.as_second());
        Some((
            ns,
            name,
            VolumeEntry {
                node,
                full_backup_label,
                backup_target,
                last_backup_unix,
                uid: self.metadata.uid.as_deref().map(Arc::from),
            },
        ))
    }
    fn table(data: &mut IndexData) -> &mut KindTable<VolumeEntry> {
        &mut data.volumes
    }
}

impl IndexedKind for Engine {
    const KIND: Kind = Kind::Engine;
    parts!(EngineSpec, EngineStatus);
    type Entry = EngineEntry;
    fn extract(
        &self,
        interner: &mut Interner,
        _: &IndexOptions,
    ) -> Option<(Arc<str>, Arc<str>, EngineEntry)> {
        let (ns, name) = key(self, interner)?;
        let volume = interner.intern(&self.spec.volume_name);
        let node = opt_intern(interner, &self.spec.node_id);
        Some((
            ns,
            name,
            EngineEntry {
                volume,
                node,
                active: self.spec.active,
            },
        ))
    }
    fn table(data: &mut IndexData) -> &mut KindTable<EngineEntry> {
        &mut data.engines
    }
}

impl IndexedKind for Backup {
    const KIND: Kind = Kind::Backup;
    parts!(BackupSpec, BackupStatus);
    type Entry = BackupEntry;
    fn extract(
        &self,
        interner: &mut Interner,
        _: &IndexOptions,
    ) -> Option<(Arc<str>, Arc<str>, BackupEntry)> {
        let (ns, name) = key(self, interner)?;
        let volume = self.volume_label().and_then(|v| opt_intern(interner, v));
        let snapshot = opt_intern(interner, &self.spec.snapshot_name);
        let generated = self
            .metadata
            .generate_name
            .as_deref()
            .is_some_and(|g| is_generated_from(&name, g));
        let created_unix = self
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        Some((
            ns,
            name,
            BackupEntry {
                volume,
                snapshot,
                state: state_code(&self.state()),
                generated,
                created_unix,
            },
        ))
    }
    fn table(data: &mut IndexData) -> &mut KindTable<BackupEntry> {
        &mut data.backups
    }
}

impl IndexedKind for BackupTarget {
    const KIND: Kind = Kind::BackupTarget;
    parts!(BackupTargetSpec, BackupTargetStatus);
    type Entry = TargetEntry;
    fn extract(
        &self,
        interner: &mut Interner,
        _: &IndexOptions,
    ) -> Option<(Arc<str>, Arc<str>, TargetEntry)> {
        let (ns, name) = key(self, interner)?;
        Some((
            ns,
            name,
            TargetEntry {
                available: self.available(),
            },
        ))
    }
    fn table(data: &mut IndexData) -> &mut KindTable<TargetEntry> {
        &mut data.targets
    }
}
