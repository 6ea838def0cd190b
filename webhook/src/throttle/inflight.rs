//! Counting Backups in flight (non-terminal, with a snapshot name) per scope, from the
//! index plus this replica's reservations, and the figures exported at scrape time.
//!
//! A Backup that cannot finish ([`is_doomed`]: New or Pending, its snapshot gone, marked
//! removed or lost in the engine) holds its *volume's* slot only until it is
//! `stuckAfterSeconds` old; it always counts for its node and the cluster. So one such Backup
//! no longer stops its volume's backups for good, and a volume whose snapshots keep vanishing
//! after admission gains at most one per `stuckAfterSeconds` (THROTTLING.md, "Backups that
//! cannot finish").
//!
//! The node of a Backup is the node of its volume's engine: the active Engine's
//! `spec.nodeID`, else the Volume's `status.currentNodeID` / `spec.nodeID`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use longhorn_types::BackupState;

use super::reservations::Reservations;
use crate::index::{EngineEntry, IndexView, SnapshotLookup, state_label};

/// The node of a volume: its engines' (the active one's first), else the Volume's own.
/// `Built` holds a whole namespace (scrape-time figures); `Lookup` answers from the index's
/// Engines-by-volume grouping, a few hash lookups per volume (decisions).
pub enum NodeMap<'v, 'a> {
    Built(HashMap<Arc<str>, Arc<str>>),
    Lookup {
        view: &'v IndexView<'a>,
        namespace: &'v str,
    },
}

/// The node of one volume from its engines (the active one's first, else any with a node).
fn engine_node<'e>(engines: impl Iterator<Item = &'e EngineEntry>) -> Option<Arc<str>> {
    let mut pick: Option<(bool, &Arc<str>)> = None;
    for e in engines {
        let Some(node) = &e.node else { continue };
        match pick {
            Some((true, _)) => {}
            Some((false, _)) if !e.active => {}
            _ => pick = Some((e.active, node)),
        }
    }
    pick.map(|(_, n)| n.clone())
}

impl<'v, 'a> NodeMap<'v, 'a> {
    /// Every volume of `namespace` (a scan of its Engines and Volumes).
    pub fn build(view: &IndexView<'_>, namespace: &str) -> Self {
        let mut engines: HashMap<&Arc<str>, Vec<&EngineEntry>> = HashMap::new();
        for (_, e) in view.data().engines.in_namespace(namespace) {
            engines.entry(&e.volume).or_default().push(e);
        }
        let mut out: HashMap<Arc<str>, Arc<str>> = engines
            .into_iter()
            .filter_map(|(v, es)| Some((v.clone(), engine_node(es.into_iter())?)))
            .collect();
        for (name, v) in view.data().volumes.in_namespace(namespace) {
            if let Some(node) = &v.node {
                out.entry(name.clone()).or_insert_with(|| node.clone());
            }
        }
        NodeMap::Built(out)
    }

    /// Answers per volume from the index, without a scan.
    pub fn lookup(view: &'v IndexView<'a>, namespace: &'v str) -> Self {
        NodeMap::Lookup { view, namespace }
    }

    pub fn node_of(&self, volume: &str) -> Option<Arc<str>> {
        match self {
            NodeMap::Built(m) => m.get(volume).cloned(),
            NodeMap::Lookup { view, namespace } => engine_node(
                view.data()
                    .engines
                    .in_group(namespace, volume)
                    .map(|(_, e)| e),
            )
            .or_else(|| view.volume(namespace, volume)?.node.clone()),
        }
    }
}

/// A Backup holding a slot, for denial messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    /// `New`, `Pending`, `InProgress`, another state string, or `admitted` for a
    /// reservation not yet seen by the watch.
    pub state: String,
    pub age_seconds: i64,
    pub snapshot: String,
    /// Older than the policy's stuck threshold.
    pub stuck: bool,
    /// Its snapshot is not in the index any more.
    pub snapshot_gone: bool,
}

/// The count of one scope and its oldest holders (at most [`ScopeCount::KEEP`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeCount {
    pub count: u32,
    pub oldest: Vec<Holder>,
}

impl ScopeCount {
    pub const KEEP: usize = 3;

    /// Counts a holder of `age_seconds`; builds it (strings, a snapshot lookup) only when it
    /// is among the oldest kept.
    fn add(&mut self, age_seconds: i64, holder: &dyn Fn() -> Holder) {
        self.count += 1;
        let pos = self
            .oldest
            .iter()
            .position(|o| o.age_seconds < age_seconds)
            .unwrap_or(self.oldest.len());
        if pos < Self::KEEP {
            self.oldest.insert(pos, holder());
            self.oldest.truncate(Self::KEEP);
        }
    }
}

/// What one request is counted against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub volume: ScopeCount,
    pub node: ScopeCount,
    pub cluster: ScopeCount,
    /// A non-terminal Backup of the same snapshot.
    pub duplicate: Option<Holder>,
    /// Backups of the volume that cannot finish and no longer hold its slot.
    pub released: ScopeCount,
}

/// Whether a snapshot is gone for a Backup: not in the index (nor found by a live GET),
/// marked removed, or lost in the engine.
pub fn snapshot_gone(view: &IndexView<'_>, namespace: &str, snapshot: &str) -> bool {
    match view.snapshot(namespace, snapshot) {
        SnapshotLookup::Indexed(f) | SnapshotLookup::Live(f) => f.mark_removed || f.lost_in_engine,
        SnapshotLookup::NotIndexed | SnapshotLookup::ConfirmedMissing => true,
    }
}

/// A Backup that cannot finish: waiting to start (New, Pending or a state the guard does not
/// know) while its snapshot is gone. Longhorn v1.7.2 keeps it Pending forever. InProgress
/// Backups are not: their replica is already sending data and ends them either way.
pub fn is_doomed(state: &BackupState, snapshot_gone: impl FnOnce() -> bool) -> bool {
    !state.is_terminal() && *state != BackupState::InProgress && snapshot_gone()
}

fn state_name(s: &BackupState) -> String {
    match s {
        BackupState::New => "New".to_string(),
        BackupState::Other(o) if o.is_empty() => "unknown-state".to_string(),
        other => other.as_str().to_string(),
    }
}

/// Seconds since `created_unix`, 0 when the creation time is unknown (0) or in the future.
fn age_since(created_unix: i64, now_unix: i64) -> i64 {
    if created_unix > 0 {
        (now_unix - created_unix).max(0)
    } else {
        0
    }
}

/// The request's scopes (volume, node, snapshot) and what is counted against them so far.
struct Tally<'r, 'x> {
    counts: Counts,
    nodes: &'r NodeMap<'r, 'r>,
    volume: Option<&'r str>,
    node: Option<&'r str>,
    snapshot: &'r str,
    /// Many Backups in flight may share a volume: each volume's node is looked up once.
    node_of: HashMap<&'x str, Option<Arc<str>>>,
}

impl<'x> Tally<'_, 'x> {
    /// Counts one holder (a Backup or a reservation) against the cluster and, when they
    /// match the request's, its volume (or the released ones), node and snapshot.
    fn visit(
        &mut self,
        age: i64,
        b_snapshot: &str,
        b_volume: Option<&'x str>,
        releases_volume_slot: &dyn Fn() -> bool,
        holder: &dyn Fn() -> Holder,
    ) {
        let c = &mut self.counts;
        c.cluster.add(age, holder);
        if self.volume.is_some() && b_volume == self.volume {
            if releases_volume_slot() {
                c.released.add(age, holder);
            } else {
                c.volume.add(age, holder);
            }
        }
        let nodes = self.nodes;
        if let (Some(node), Some(v)) = (self.node, b_volume)
            && self
                .node_of
                .entry(v)
                .or_insert_with(|| nodes.node_of(v))
                .as_deref()
                == Some(node)
        {
            c.node.add(age, holder);
        }
        if b_snapshot == self.snapshot && c.duplicate.is_none() {
            c.duplicate = Some(holder());
        }
    }
}

/// Counts in-flight Backups in `namespace` against the request's volume, node and snapshot.
/// Backups of the volume that cannot finish and are `stuck_after_seconds` old are left out of
/// the volume's count (see the module docs) and listed in `Counts::released`.
#[allow(clippy::too_many_arguments)]
pub fn count<'x>(
    view: &'x IndexView<'_>,
    nodes: &NodeMap,
    reservations: &'x Reservations,
    namespace: &'x str,
    volume: Option<&str>,
    node: Option<&str>,
    snapshot: &str,
    now_unix: i64,
    stuck_after_seconds: u64,
) -> Counts {
    let stuck_after = i64::try_from(stuck_after_seconds).unwrap_or(i64::MAX);
    let mut tally = Tally {
        counts: Counts::default(),
        nodes,
        volume,
        node,
        snapshot,
        node_of: HashMap::new(),
    };
    count_indexed_backups(&mut tally, view, namespace, now_unix, stuck_after);
    count_reservations(&mut tally, reservations, namespace, now_unix);
    tally.counts
}

/// Visits the Backups in flight, from the index's grouping (not a scan of the namespace).
fn count_indexed_backups<'x>(
    tally: &mut Tally<'_, 'x>,
    view: &'x IndexView<'_>,
    namespace: &'x str,
    now_unix: i64,
    stuck_after: i64,
) {
    for (_, name, b) in view.data().backups.grouped(namespace) {
        let state = b.state();
        if state.is_terminal() {
            continue;
        }
        let Some(snap) = b.snapshot.as_deref() else {
            continue; // synced from the target: never counted
        };
        let age = age_since(b.created_unix, now_unix);
        let holder = || Holder {
            name: name.to_string(),
            state: state_name(&state),
            age_seconds: age,
            snapshot: snap.to_string(),
            stuck: age >= stuck_after,
            snapshot_gone: snapshot_gone(view, namespace, snap),
        };
        // Looked up only for old Backups of the request's volume.
        let releases =
            || age >= stuck_after && is_doomed(&state, || snapshot_gone(view, namespace, snap));
        tally.visit(age, snap, b.volume.as_deref(), &releases, &holder);
    }
}

/// Visits this replica's reservations: admitted Backups the watch has not shown yet.
fn count_reservations<'x>(
    tally: &mut Tally<'_, 'x>,
    reservations: &'x Reservations,
    namespace: &'x str,
    now_unix: i64,
) {
    for r in reservations.in_namespace(namespace) {
        let age = (now_unix - r.at_unix).max(0);
        let holder = || Holder {
            name: r.display(),
            state: "admitted".to_string(),
            age_seconds: age,
            snapshot: r.snapshot.to_string(),
            stuck: false,
            snapshot_gone: false,
        };
        tally.visit(age, &r.snapshot, r.volume.as_deref(), &|| false, &holder);
    }
}

/// Index-wide Backup figures for the metrics, computed at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackupFigures {
    /// Backups by state name (`New`, `Pending`, ..., `Other`).
    pub by_state: BTreeMap<&'static str, u64>,
    /// In-flight Backups (non-terminal, with a snapshot name), all namespaces.
    pub in_flight: u64,
    /// In-flight Backups per node (node of the volume's engine); `""` = unknown node.
    pub in_flight_by_node: BTreeMap<String, u64>,
    /// Age of the oldest non-terminal Backup (0 when there is none).
    pub oldest_non_terminal_age_seconds: f64,
    /// Volumes with Backups that cannot finish ([`is_doomed`]), by (namespace, volume);
    /// `unknown` for Backups without a volume label.
    pub doomed_by_volume: BTreeMap<(String, String), DoomedVolume>,
}

/// A volume's Backups that cannot finish, for the metrics and the alert.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DoomedVolume {
    pub backups: u64,
    /// Seconds since the volume's last completed Backup (`Volume.status.lastBackupAt`); when
    /// it has none (or the Volume is not indexed), the age of its oldest Backup that cannot
    /// finish, a lower bound.
    pub last_backup_age_seconds: f64,
}

/// Computes [`BackupFigures`] over the given namespaces of the index, without a scan: the
/// counts by state are the index's tallies, and only non-terminal Backups (the index's
/// grouping) are visited, their nodes looked up per volume.
pub fn figures<'n>(
    view: &IndexView<'_>,
    namespaces: impl IntoIterator<Item = &'n str>,
    now_unix: i64,
) -> BackupFigures {
    let mut f = BackupFigures::default();
    for s in [
        BackupState::New,
        BackupState::Pending,
        BackupState::InProgress,
        BackupState::Completed,
        BackupState::Error,
        BackupState::Unknown,
        BackupState::Deleting,
        BackupState::Other(String::new()),
    ] {
        f.by_state.insert(state_label(&s), 0);
    }
    let mut oldest: Option<i64> = None;
    for ns in namespaces {
        add_namespace_figures(&mut f, &mut oldest, view, ns, now_unix);
    }
    f.oldest_non_terminal_age_seconds = oldest.map_or(0.0, |o| (now_unix - o).max(0) as f64);
    f
}

/// Adds one namespace's Backups to `f`; `oldest` keeps the earliest creation time of a
/// non-terminal Backup seen so far.
fn add_namespace_figures(
    f: &mut BackupFigures,
    oldest: &mut Option<i64>,
    view: &IndexView<'_>,
    ns: &str,
    now_unix: i64,
) {
    let backups = &view.data().backups;
    for (label, n) in backups.tallies(ns) {
        *f.by_state.entry(label).or_default() += n;
    }
    let nodes = NodeMap::lookup(view, ns);
    let mut node_of_volume: HashMap<&str, Option<Arc<str>>> = HashMap::new();
    // Per volume with Backups that cannot finish: their count and the oldest one's age.
    let mut doomed: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for (_, _, b) in backups.grouped(ns) {
        let state = b.state();
        if state.is_terminal() {
            continue;
        }
        if b.created_unix > 0 {
            *oldest = Some(oldest.map_or(b.created_unix, |o| o.min(b.created_unix)));
        }
        let Some(snap) = b.snapshot.as_deref() else {
            continue;
        };
        if is_doomed(&state, || snapshot_gone(view, ns, snap)) {
            let age = age_since(b.created_unix, now_unix);
            let d = doomed
                .entry(b.volume.as_deref().unwrap_or("unknown"))
                .or_default();
            d.0 += 1;
            d.1 = d.1.max(age);
        }
        f.in_flight += 1;
        let node = match b.volume.as_deref() {
            Some(v) => node_of_volume
                .entry(v)
                .or_insert_with(|| nodes.node_of(v))
                .as_deref()
                .map(str::to_string),
            None => None,
        }
        .unwrap_or_default();
        *f.in_flight_by_node.entry(node).or_default() += 1;
    }
    for (volume, (n, oldest_doomed_age)) in doomed {
        let last_backup_age = view
            .volume(ns, volume)
            .map(|v| v.last_backup_unix)
            .filter(|t| *t > 0)
            .map_or(oldest_doomed_age, |t| (now_unix - t).max(0));
        f.doomed_by_volume.insert(
            (ns.to_string(), volume.to_string()),
            DoomedVolume {
                backups: n,
                last_backup_age_seconds: last_backup_age as f64,
            },
        );
    }
}
