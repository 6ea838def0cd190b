//! The compact, watch-fed index the decisions read: per kind, (namespace, name) → the few
//! facts a decision needs, with every repeated string interned. Never the full objects.
//!
//! A relist ([`IndexEvent`]: `RelistStart` … `Listed`* … `RelistDone`) builds the kind's
//! table aside and swaps it in at `RelistDone`, so readers see either the old or the new
//! complete table.
//!
//! Each kind also records whether it can be trusted (`health`): not while it (re)lists, and
//! not once its watch has been failing for longer than the staleness bound. Readiness follows.

mod entries;
mod groups;
mod health;
mod list;
pub mod metrics;
mod table;
mod watch;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Instant;

pub use entries::{
    BackupEntry, EngineEntry, IndexedKind, MAX_GENERATED_BASE, NO_SNAPSHOT_GROUP, SnapshotEntry,
    SnapshotFacts, TargetEntry, VolumeEntry, generated_base, generated_key, is_generated_from,
    state_label,
};
pub use groups::{Grouped, Groups, Tallies};
pub use health::{Trust, WatchState};
pub use list::{ListError, Listed, cache_list_request, decode_list_into};
pub use metrics::IndexMetrics;
pub use table::{Interner, KindTable};
pub use watch::{WatchScope, apply_watch_event, run_watches};

/// Default staleness bound: how long a listed kind's watch may fail before the kind is no
/// longer trusted (policy `indexStalenessMs`).
pub const DEFAULT_STALENESS: std::time::Duration = std::time::Duration::from_secs(30);

/// The kinds the index follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Snapshot,
    Volume,
    Engine,
    Backup,
    BackupTarget,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Snapshot,
        Kind::Volume,
        Kind::Engine,
        Kind::Backup,
        Kind::BackupTarget,
    ];

    /// Lower-case name used in metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Snapshot => "snapshot",
            Kind::Volume => "volume",
            Kind::Engine => "engine",
            Kind::Backup => "backup",
            Kind::BackupTarget => "backuptarget",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Options fixed at start that change what is extracted from objects.
#[derive(Clone, Debug, Default)]
pub struct IndexOptions {
    /// Volume label (key, optional value) whose presence marks "always full backups".
    pub full_backup_label: Option<(String, Option<String>)>,
}

/// Everything the index holds, behind one lock.
#[derive(Debug, Default)]
pub struct IndexData {
    pub(crate) interner: Interner,
    pub snapshots: KindTable<SnapshotEntry>,
    pub volumes: KindTable<VolumeEntry>,
    pub engines: KindTable<EngineEntry>,
    pub backups: KindTable<BackupEntry>,
    pub targets: KindTable<TargetEntry>,
    deletes_since_purge: u64,
}

impl IndexData {
    /// Entries per kind.
    pub fn len(&self, kind: Kind) -> usize {
        match kind {
            Kind::Snapshot => self.snapshots.len(),
            Kind::Volume => self.volumes.len(),
            Kind::Engine => self.engines.len(),
            Kind::Backup => self.backups.len(),
            Kind::BackupTarget => self.targets.len(),
        }
    }

    /// Distinct strings held.
    pub fn interned_strings(&self) -> usize {
        self.interner.len()
    }
}

#[derive(Debug)]
struct KindSync {
    synced: AtomicBool,
    /// Milliseconds since the index was created at the last event that carried data from the
    /// API server (not `Init`, which the watcher emits before each list attempt), 0 = never.
    last_event_ms: AtomicU64,
    /// Same clock: when the current run of watch errors began, 0 = not failing.
    failing_since_ms: AtomicU64,
    inits: AtomicU64,
}

impl KindSync {
    fn new() -> Self {
        Self {
            synced: AtomicBool::new(false),
            last_event_ms: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(0),
            inits: AtomicU64::new(0),
        }
    }

    fn state(&self) -> WatchState {
        WatchState {
            synced: self.synced.load(Ordering::Acquire),
            failing_since_ms: self.failing_since_ms.load(Ordering::Acquire),
        }
    }
}

/// The index: written by the watches, read by the decisions.
#[derive(Debug)]
pub struct Index {
    data: RwLock<IndexData>,
    sync: [KindSync; 5],
    options: IndexOptions,
    /// Staleness bound in milliseconds (policy `indexStalenessMs`, hot-reloadable).
    staleness_ms: AtomicU64,
    created: Instant,
}

/// What the index's own list and watch (`list.rs`, `watch.rs`) feed it for one kind `K`: a
/// (re)list is `RelistStart`, one `Listed` per object, `RelistDone`; then the watch's
/// `Upsert`s and `Delete`s. The index's boundary type: it does not depend on how the objects
/// were fetched (kube-runtime's watcher is not used).
#[derive(Debug, Clone, PartialEq)]
pub enum IndexEvent<K> {
    /// A (re)list begins: the kind is not trusted until `RelistDone`.
    RelistStart,
    /// One object of the (re)list.
    Listed(K),
    /// The (re)list is complete: objects it did not list are gone.
    RelistDone,
    /// An object added or modified.
    Upsert(K),
    /// An object deleted.
    Delete(K),
}

/// What an event did, for the caller's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Object,
    Deleted,
    RelistStarted { restart: bool },
    RelistDone,
}

impl Default for Index {
    fn default() -> Self {
        Self::new(IndexOptions::default())
    }
}

impl Index {
    pub fn new(options: IndexOptions) -> Self {
        Self {
            data: RwLock::new(IndexData::default()),
            sync: [
                KindSync::new(),
                KindSync::new(),
                KindSync::new(),
                KindSync::new(),
                KindSync::new(),
            ],
            options,
            staleness_ms: AtomicU64::new(DEFAULT_STALENESS.as_millis() as u64),
            created: Instant::now(),
        }
    }

    /// Milliseconds on the index's clock, never 0 (0 means "unset" in [`KindSync`]).
    fn now_ms(&self) -> u64 {
        (self.created.elapsed().as_millis() as u64).max(1)
    }

    /// Sets the staleness bound (how long a listed kind's watch may fail and still be trusted).
    pub fn set_staleness(&self, bound: std::time::Duration) {
        self.staleness_ms.store(
            u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn staleness(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.staleness_ms.load(Ordering::Relaxed))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, IndexData> {
        // A panic while holding the lock cannot leave a table half-written in a way that
        // matters more than serving stale data, so poisoning is ignored.
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A read view for decisions. Hold it only for the synchronous decision.
    pub fn view(&self) -> IndexView<'_> {
        IndexView {
            data: self.data.read().unwrap_or_else(|p| p.into_inner()),
            live_snapshot: None,
        }
    }

    /// Applies one list or watch event for kind `K`.
    pub fn apply<K: IndexedKind>(&self, event: IndexEvent<K>) -> Applied {
        let sync = &self.sync[K::KIND.slot()];
        if !matches!(event, IndexEvent::RelistStart) {
            // Data from the API server: the watch works (again).
            self.watch_alive(K::KIND);
        }
        let mut data = self.write();
        let data = &mut *data;
        match event {
            IndexEvent::RelistStart => {
                // The watcher relists: events were missed (or this is the start), so the
                // kind is not trusted until the new list is complete.
                sync.synced.store(false, Ordering::Release);
                let new_relist = K::table(data).relist_start();
                let n = if new_relist {
                    sync.inits.fetch_add(1, Ordering::Relaxed)
                } else {
                    0
                };
                Applied::RelistStarted { restart: n > 0 }
            }
            IndexEvent::Listed(obj) => {
                if let Some((ns, name, entry)) = K::extract(&obj, &mut data.interner, &self.options)
                {
                    K::table(data).relist_apply(ns, name, entry);
                }
                Applied::Object
            }
            IndexEvent::RelistDone => {
                K::table(data).relist_done();
                data.interner.purge();
                data.deletes_since_purge = 0;
                sync.synced.store(true, Ordering::Release);
                Applied::RelistDone
            }
            IndexEvent::Upsert(obj) => {
                if let Some((ns, name, entry)) = K::extract(&obj, &mut data.interner, &self.options)
                {
                    K::table(data).apply(ns, name, entry);
                }
                Applied::Object
            }
            IndexEvent::Delete(obj) => {
                let ns = obj.meta().namespace.as_deref().unwrap_or_default();
                let name = obj.meta().name.as_deref().unwrap_or_default();
                if K::table(data).remove(ns, name) {
                    data.deletes_since_purge += 1;
                    if data.deletes_since_purge >= 4096 {
                        data.interner.purge();
                        data.deletes_since_purge = 0;
                    }
                }
                Applied::Deleted
            }
        }
    }

    /// Records that `kind`'s watch works though it brought no object (a bookmark): like an
    /// event with data, it ends a run of watch errors.
    pub fn watch_alive(&self, kind: Kind) {
        let sync = &self.sync[kind.slot()];
        sync.last_event_ms.store(self.now_ms(), Ordering::Relaxed);
        sync.failing_since_ms.store(0, Ordering::Release);
    }

    /// True when the last (re)list of `kind` is indexed and no relist has started since.
    pub fn synced(&self, kind: Kind) -> bool {
        self.sync[kind.slot()].synced.load(Ordering::Acquire)
    }

    /// True when every kind's last (re)list is indexed.
    pub fn all_synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced(*k))
    }

    /// Records a watch error of `kind`; the first of a run starts its failure clock.
    pub fn watch_failed(&self, kind: Kind) {
        let _ = self.sync[kind.slot()].failing_since_ms.compare_exchange(
            0,
            self.now_ms(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The kind's watch state now.
    pub fn watch_state(&self, kind: Kind) -> WatchState {
        self.sync[kind.slot()].state()
    }

    /// Whether `kind` can be trusted now (see [`Trust`]).
    pub fn trust(&self, kind: Kind) -> Trust {
        self.watch_state(kind)
            .trust(self.now_ms(), self.staleness_ms.load(Ordering::Relaxed))
    }

    /// True when every kind is listed and none has a watch failing past the staleness bound:
    /// what `/readyz` reports.
    pub fn all_trusted(&self) -> bool {
        Kind::ALL.iter().all(|k| self.trust(*k).is_trusted())
    }

    /// How long until `kind` turns stale if its watch keeps failing; `None` when it is not
    /// listed or its watch is not failing.
    pub fn until_stale(&self, kind: Kind) -> Option<std::time::Duration> {
        self.watch_state(kind)
            .ms_until_stale(self.now_ms(), self.staleness_ms.load(Ordering::Relaxed))
            .map(std::time::Duration::from_millis)
    }

    /// Seconds since the last watch event of `kind`, `None` before the first.
    pub fn last_event_age_seconds(&self, kind: Kind) -> Option<f64> {
        let at = self.sync[kind.slot()].last_event_ms.load(Ordering::Relaxed);
        (at > 0).then(|| self.now_ms().saturating_sub(at) as f64 / 1000.0)
    }

    /// Entries of `kind`.
    pub fn count(&self, kind: Kind) -> usize {
        self.view().data.len(kind)
    }

    /// Entry counts per kind.
    pub fn counts(&self) -> [(Kind, usize); 5] {
        let data = self.view();
        Kind::ALL.map(|k| (k, data.data.len(k)))
    }

    pub fn options(&self) -> &IndexOptions {
        &self.options
    }
}

/// The result of a live GET of a Snapshot the index did not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiveSnapshot {
    Found(SnapshotFacts),
    NotFound,
}

/// A read-locked view of the index, optionally overlaid with a live-GET result.
pub struct IndexView<'a> {
    data: RwLockReadGuard<'a, IndexData>,
    live_snapshot: Option<(String, String, LiveSnapshot)>,
}

/// Where a snapshot's facts came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotLookup {
    Indexed(SnapshotFacts),
    /// Not in the index, but the API server has it.
    Live(SnapshotFacts),
    /// Not in the index and the API server said 404.
    ConfirmedMissing,
    /// Not in the index; nobody asked the API server yet.
    NotIndexed,
}

impl<'a> IndexView<'a> {
    /// Overlays the answer of a live GET for one snapshot.
    pub fn with_live_snapshot(mut self, namespace: &str, name: &str, live: LiveSnapshot) -> Self {
        self.live_snapshot = Some((namespace.to_string(), name.to_string(), live));
        self
    }

    pub fn data(&self) -> &IndexData {
        &self.data
    }

    pub fn snapshot(&self, namespace: &str, name: &str) -> SnapshotLookup {
        if let Some(e) = self.data.snapshots.get(namespace, name) {
            return SnapshotLookup::Indexed(e.facts());
        }
        match &self.live_snapshot {
            Some((ns, n, live)) if ns == namespace && n == name => match live {
                LiveSnapshot::Found(f) => SnapshotLookup::Live(f.clone()),
                LiveSnapshot::NotFound => SnapshotLookup::ConfirmedMissing,
            },
            _ => SnapshotLookup::NotIndexed,
        }
    }

    pub fn volume(&self, namespace: &str, name: &str) -> Option<&VolumeEntry> {
        self.data.volumes.get(namespace, name)
    }

    /// The node a volume is on: the Volume's own, else its active Engine's.
    pub fn volume_node(&self, namespace: &str, volume: &str) -> Option<&str> {
        if let Some(node) = self
            .volume(namespace, volume)
            .and_then(|v| v.node.as_deref())
        {
            return Some(node);
        }
        self.data
            .engines
            .in_namespace(namespace)
            .filter(|(_, e)| &*e.volume == volume)
            .max_by_key(|(_, e)| e.active)
            .and_then(|(_, e)| e.node.as_deref())
    }

    pub fn target(&self, namespace: &str, name: &str) -> Option<&TargetEntry> {
        self.data.targets.get(namespace, name)
    }

    pub fn backup(&self, namespace: &str, name: &str) -> Option<&BackupEntry> {
        self.data.backups.get(namespace, name)
    }
}

#[cfg(test)]
mod tests;
