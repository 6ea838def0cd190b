//! The compact, watch-fed index the decisions read: per kind, (namespace, name) → the few
//! facts a decision needs, with every repeated string interned. Never the full objects.
//!
//! A relist (`Init` … `InitApply`* … `InitDone`) builds the kind's table aside and swaps it
//! in at `InitDone`, so readers see either the old or the new complete table.
//!
//! Each kind also records whether it can be trusted (`health`): not while it (re)lists, and
//! not once its watch has been failing for longer than the staleness bound. Readiness follows.

mod entries;
mod groups;
mod health;
mod list;
pub mod metrics;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Instant;

pub use entries::{
    BackupEntry, EngineEntry, IndexedKind, MAX_GENERATED_BASE, NO_SNAPSHOT_GROUP, SnapshotEntry,
    SnapshotFacts, TargetEntry, VolumeEntry, generated_base, generated_key, is_generated_from,
    state_label,
};
pub use groups::{Grouped, Groups, Tallies};
pub use health::{Trust, WatchState};
pub use list::cache_list_request;
pub use metrics::IndexMetrics;
pub use watch::{WatchScope, run_watches};

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

/// Shares repeated strings (namespaces, volume, node and object names). Strings no entry
/// holds any more are dropped by [`Interner::purge`], run after relists and every few
/// thousand deletions, so churn does not grow it.
#[derive(Default, Debug)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.strings.get(s) {
            return Arc::clone(found);
        }
        let new: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&new));
        new
    }

    pub fn purge(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

type Table<V> = HashMap<Arc<str>, HashMap<Arc<str>, V>>;

/// One kind's entries by namespace then name, plus the table a relist is building.
#[derive(Debug)]
pub struct KindTable<V> {
    live: Table<V>,
    len: usize,
    relist: Option<(Table<V>, usize)>,
    /// The live entries by their [`Grouped::group`] key.
    groups: Groups,
    /// The live entries with a generated name, by [`Grouped::generated_key`].
    generated: Groups,
    /// The live entries counted by their [`Grouped::tally`] label.
    tallies: Tallies,
}

impl<V> Default for KindTable<V> {
    fn default() -> Self {
        Self {
            live: HashMap::new(),
            len: 0,
            relist: None,
            groups: Groups::default(),
            generated: Groups::default(),
            tallies: Tallies::default(),
        }
    }
}

impl<V: Grouped> KindTable<V> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&V> {
        self.live.get(namespace)?.get(name)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Namespaces with at least one entry.
    pub fn namespaces(&self) -> impl Iterator<Item = &Arc<str>> {
        self.live.keys()
    }

    /// Entries of one namespace.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = (&Arc<str>, &V)> {
        self.live.get(namespace).into_iter().flat_map(|m| m.iter())
    }

    /// Entries of one group of a namespace (see [`Grouped`]).
    pub fn in_group<'a>(
        &'a self,
        namespace: &'a str,
        group: &str,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a V)> {
        self.groups
            .names(namespace, group)
            .filter_map(move |n| Some((n, self.get(namespace, n)?)))
    }

    /// Entries of a namespace of `snapshot` whose names the API server generated from
    /// `generate_name` (see [`Grouped::generated_key`]): an index lookup, not a scan.
    pub fn generated_from<'a>(
        &'a self,
        namespace: &'a str,
        generate_name: &str,
        snapshot: &str,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a V)> {
        let key = generated_key(generated_base(generate_name), snapshot);
        self.generated
            .names(namespace, &key)
            .filter_map(move |n| Some((n, self.get(namespace, n)?)))
    }

    /// (label, count) of the entries of a namespace (see [`Grouped::tally`]).
    pub fn tallies(&self, namespace: &str) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.tallies.in_namespace(namespace)
    }

    /// (group, name, entry) of every grouped entry of a namespace.
    pub fn grouped<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a Arc<str>, &'a V)> {
        self.groups
            .in_namespace(namespace)
            .filter_map(move |(g, n)| Some((g, n, self.get(namespace, n)?)))
    }

    fn insert_into(table: &mut Table<V>, len: &mut usize, ns: Arc<str>, name: Arc<str>, v: V) {
        if table.entry(ns).or_default().insert(name, v).is_none() {
            *len += 1;
        }
    }

    fn apply(&mut self, ns: Arc<str>, name: Arc<str>, v: V) {
        if let Some(old) = self.live.get(&ns).and_then(|m| m.get(&name)) {
            if let Some(g) = old.group() {
                self.groups.remove(&ns, &g, &name);
            }
            if let Some(key) = old.generated_key(&name) {
                self.generated.remove(&ns, &key, &name);
            }
            if let Some(label) = old.tally() {
                self.tallies.remove(&ns, label);
            }
        }
        if let Some(g) = v.group() {
            self.groups.add(&ns, g, &name);
        }
        if let Some(key) = v.generated_key(&name) {
            self.generated.add(&ns, key, &name);
        }
        if let Some(label) = v.tally() {
            self.tallies.add(&ns, label);
        }
        Self::insert_into(&mut self.live, &mut self.len, ns, name, v);
    }

    fn remove(&mut self, ns: &str, name: &str) -> bool {
        let Some(m) = self.live.get_mut(ns) else {
            return false;
        };
        let removed = match m.remove(name) {
            Some(old) => {
                if let Some(g) = old.group() {
                    self.groups.remove(ns, &g, name);
                }
                if let Some(key) = old.generated_key(name) {
                    self.generated.remove(ns, &key, name);
                }
                if let Some(label) = old.tally() {
                    self.tallies.remove(ns, label);
                }
                true
            }
            None => false,
        };
        if removed {
            self.len -= 1;
            if m.is_empty() {
                self.live.remove(ns);
            }
        }
        removed
    }

    /// Starts building a relist aside; true when none was in progress (a retry of a failed
    /// list is not a new relist).
    fn relist_start(&mut self) -> bool {
        self.relist.replace((HashMap::new(), 0)).is_none()
    }

    fn relist_apply(&mut self, ns: Arc<str>, name: Arc<str>, v: V) {
        match &mut self.relist {
            Some((table, len)) => Self::insert_into(table, len, ns, name, v),
            // InitApply without Init: treat as a plain apply rather than lose it.
            None => self.apply(ns, name, v),
        }
    }

    fn relist_done(&mut self) {
        if let Some((table, len)) = self.relist.take() {
            self.groups = Groups::of(&table, |_, v| v.group());
            self.generated = Groups::of(&table, |name, v| v.generated_key(name));
            self.tallies = Tallies::of(&table);
            self.live = table;
            self.len = len;
        }
    }
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
