//! Counting Backups in flight (non-terminal, with a snapshot name) per scope, from the
//! index plus this replica's reservations, and the figures exported at scrape time.
//!
//! The node of a Backup is the node of its volume's engine: the active Engine's
//! `spec.nodeID`, else the Volume's `status.currentNodeID` / `spec.nodeID`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use longhorn_types::BackupState;

use super::reservations::Reservations;
use crate::index::{IndexView, SnapshotLookup};

/// The node of each volume of a namespace, built once per decision.
#[derive(Debug, Default)]
pub struct NodeMap {
    by_volume: HashMap<Arc<str>, Arc<str>>,
}

impl NodeMap {
    pub fn build(view: &IndexView<'_>, namespace: &str) -> Self {
        let mut by_volume: HashMap<Arc<str>, (bool, Arc<str>)> = HashMap::new();
        for (_, e) in view.data().engines.in_namespace(namespace) {
            let Some(node) = &e.node else { continue };
            match by_volume.get(&e.volume) {
                Some((true, _)) => {}
                Some((false, _)) if !e.active => {}
                _ => {
                    by_volume.insert(e.volume.clone(), (e.active, node.clone()));
                }
            }
        }
        let mut out: HashMap<Arc<str>, Arc<str>> =
            by_volume.into_iter().map(|(v, (_, n))| (v, n)).collect();
        for (name, v) in view.data().volumes.in_namespace(namespace) {
            if let Some(node) = &v.node {
                out.entry(name.clone()).or_insert_with(|| node.clone());
            }
        }
        Self { by_volume: out }
    }

    pub fn node_of(&self, volume: &str) -> Option<&Arc<str>> {
        self.by_volume.get(volume)
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

    fn add(&mut self, h: &Holder) {
        self.count += 1;
        let pos = self
            .oldest
            .iter()
            .position(|o| o.age_seconds < h.age_seconds)
            .unwrap_or(self.oldest.len());
        if pos < Self::KEEP {
            self.oldest.insert(pos, h.clone());
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
}

fn state_name(s: &BackupState) -> String {
    match s {
        BackupState::New => "New".to_string(),
        BackupState::Other(o) if o.is_empty() => "unknown-state".to_string(),
        other => other.as_str().to_string(),
    }
}

/// Counts in-flight Backups in `namespace` against the request's volume, node and snapshot.
#[allow(clippy::too_many_arguments)]
pub fn count(
    view: &IndexView<'_>,
    nodes: &NodeMap,
    reservations: &Reservations,
    namespace: &str,
    volume: Option<&str>,
    node: Option<&str>,
    snapshot: &str,
    now_unix: i64,
    stuck_after_seconds: u64,
) -> Counts {
    let mut c = Counts::default();
    let stuck_after = i64::try_from(stuck_after_seconds).unwrap_or(i64::MAX);
    let mut visit = |h: Holder, b_volume: Option<&str>| {
        let b_node = b_volume.and_then(|v| nodes.node_of(v)).map(|n| &**n);
        c.cluster.add(&h);
        if volume.is_some() && b_volume == volume {
            c.volume.add(&h);
        }
        if node.is_some() && b_node == node {
            c.node.add(&h);
        }
        if h.snapshot == snapshot && c.duplicate.is_none() {
            c.duplicate = Some(h);
        }
    };
    for (name, b) in view.data().backups.in_namespace(namespace) {
        let state = b.state();
        if state.is_terminal() {
            continue;
        }
        let Some(snap) = b.snapshot.as_deref() else {
            continue; // synced from the target: never counted
        };
        let age = if b.created_unix > 0 {
            (now_unix - b.created_unix).max(0)
        } else {
            0
        };
        let snapshot_gone = match view.snapshot(namespace, snap) {
            SnapshotLookup::Indexed(f) | SnapshotLookup::Live(f) => {
                f.mark_removed || f.lost_in_engine
            }
            SnapshotLookup::NotIndexed | SnapshotLookup::ConfirmedMissing => true,
        };
        visit(
            Holder {
                name: name.to_string(),
                state: state_name(&state),
                age_seconds: age,
                snapshot: snap.to_string(),
                stuck: age >= stuck_after,
                snapshot_gone,
            },
            b.volume.as_deref(),
        );
    }
    for r in reservations.in_namespace(namespace) {
        visit(
            Holder {
                name: r.display(),
                state: "admitted".to_string(),
                age_seconds: (now_unix - r.at_unix).max(0),
                snapshot: r.snapshot.to_string(),
                stuck: false,
                snapshot_gone: false,
            },
            r.volume.as_deref(),
        );
    }
    c
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
}

fn state_label(s: &BackupState) -> &'static str {
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

/// Computes [`BackupFigures`] over the given namespaces of the index.
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
        let nodes = NodeMap::build(view, ns);
        for (_, b) in view.data().backups.in_namespace(ns) {
            let state = b.state();
            *f.by_state.entry(state_label(&state)).or_default() += 1;
            if state.is_terminal() {
                continue;
            }
            if b.created_unix > 0 {
                oldest = Some(oldest.map_or(b.created_unix, |o| o.min(b.created_unix)));
            }
            if b.snapshot.is_none() {
                continue;
            }
            f.in_flight += 1;
            let node = b
                .volume
                .as_deref()
                .and_then(|v| nodes.node_of(v))
                .map(|n| n.to_string())
                .unwrap_or_default();
            *f.in_flight_by_node.entry(node).or_default() += 1;
        }
    }
    f.oldest_non_terminal_age_seconds = oldest.map_or(0.0, |o| (now_unix - o).max(0) as f64);
    f
}
